//! Stripe's published example objects (`fixtures3.json`, the data stripe-mock serves), loaded once
//! at start. Every response and event body begins as one of them, so the client deserializes every
//! field Stripe sends, not just the few the server models.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Environment variable that overrides where the fixtures are read from.
pub const FIXTURES_ENV: &str = "STRIPE_FIXTURES";

/// Why the fixtures could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FixturesError {
    #[error("cannot read the Stripe fixtures at {path} (set {FIXTURES_ENV} to override): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Stripe fixtures at {path} are not JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the Stripe fixtures at {path} have no `resources.{resource}` object")]
    Missing {
        path: PathBuf,
        resource: &'static str,
    },
}

/// The templates the server builds its objects from; each accessor hands out a fresh copy.
#[derive(Debug)]
pub(crate) struct Fixtures {
    payment_intent: Map<String, Value>,
    charge: Map<String, Value>,
    refund: Map<String, Value>,
    payment_method: Map<String, Value>,
    event: Map<String, Value>,
}

impl Fixtures {
    /// `$STRIPE_FIXTURES`, else `shared/stripe/fixtures3.json` beside the repository.
    pub(crate) fn default_path() -> PathBuf {
        std::env::var_os(FIXTURES_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/stripe/fixtures3.json")
            })
    }

    pub(crate) fn load(path: &Path) -> Result<Self, FixturesError> {
        let text = std::fs::read_to_string(path).map_err(|source| FixturesError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut root: Value =
            serde_json::from_str(&text).map_err(|source| FixturesError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut take = |resource: &'static str| match root
            .get_mut("resources")
            .and_then(|resources| resources.get_mut(resource))
            .map(Value::take)
        {
            Some(Value::Object(object)) => Ok(object),
            _ => Err(FixturesError::Missing {
                path: path.to_owned(),
                resource,
            }),
        };
        Ok(Self {
            payment_intent: take("payment_intent")?,
            charge: take("charge")?,
            refund: take("refund")?,
            payment_method: take("payment_method")?,
            event: take("event")?,
        })
    }

    pub(crate) fn payment_intent(&self) -> Map<String, Value> {
        self.payment_intent.clone()
    }

    pub(crate) fn charge(&self) -> Map<String, Value> {
        self.charge.clone()
    }

    pub(crate) fn refund(&self) -> Map<String, Value> {
        self.refund.clone()
    }

    pub(crate) fn payment_method(&self) -> Map<String, Value> {
        self.payment_method.clone()
    }

    pub(crate) fn event(&self) -> Map<String, Value> {
        self.event.clone()
    }
}
