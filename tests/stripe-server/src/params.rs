//! Stripe's request parameters: form-encoded (or query) pairs with bracketed nesting
//! (`metadata[order_id]=42`, `expand[0]=latest_charge`), read the way Stripe reads them.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// The decoded pairs of one request, in the order they were sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(encoded: &[u8]) -> Self {
        Self(form_urlencoded::parse(encoded).into_owned().collect())
    }

    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// What identifies "the same request" for idempotency: the pairs regardless of their order.
    pub(crate) fn fingerprint(&self) -> Vec<(String, String)> {
        let mut pairs = self.0.clone();
        pairs.sort();
        pairs
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        // Stripe treats an empty value as "not given" (and, for metadata keys, as "unset").
        self.0
            .iter()
            .rev()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::parameter_missing(name))
    }

    pub(crate) fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| ApiError::parameter_invalid_integer(name, value))
            })
            .transpose()
    }

    pub(crate) fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|value| match value {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(ApiError::parameter_invalid(
                    name,
                    format!("Invalid boolean: {other}"),
                )),
            })
            .transpose()
    }

    /// One of a fixed set of values (an enum parameter such as `cancellation_reason`).
    pub(crate) fn one_of(
        &self,
        name: &str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, ApiError> {
        self.get(name)
            .map(|value| {
                allowed
                    .iter()
                    .find(|candidate| **candidate == value)
                    .copied()
                    .ok_or_else(|| {
                        ApiError::parameter_invalid(
                            name,
                            format!("Invalid {name}: must be one of {}", allowed.join(", ")),
                        )
                    })
            })
            .transpose()
    }

    /// The keys of `name[key]=value`, as Stripe's hashes (`metadata`) are sent.
    pub(crate) fn hash(&self, name: &str) -> BTreeMap<String, String> {
        let prefix = format!("{name}[");
        self.0
            .iter()
            .filter_map(|(key, value)| {
                let inner = key.strip_prefix(&prefix)?.strip_suffix(']')?;
                Some((inner.to_owned(), value.clone()))
            })
            .collect()
    }

    /// The items of a list, sent as `name[]`, `name[0]`, `name[1]`...
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}[");
        self.0
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(']'))
                    .is_some_and(|index| index.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|(_, value)| value.clone())
            .collect()
    }

    /// Stripe refuses a parameter it does not know rather than ignoring it; so does this server,
    /// which catches a misspelt name in the app before real Stripe would.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        for (key, _) in &self.0 {
            let top = key.split('[').next().unwrap_or(key);
            if !known.contains(&top) {
                return Err(ApiError::parameter_unknown(top));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_hashes_lists_and_scalars_as_stripe_sends_them() {
        let params = Params::parse(
            b"amount=2000&metadata%5Border_id%5D=42&metadata%5Bnote%5D=&expand%5B0%5D=latest_charge&confirm=true",
        );
        assert_eq!(params.integer("amount").unwrap(), Some(2000));
        assert_eq!(params.boolean("confirm").unwrap(), Some(true));
        let metadata = params.hash("metadata");
        assert_eq!(metadata.get("order_id").map(String::as_str), Some("42"));
        assert_eq!(metadata.get("note").map(String::as_str), Some(""));
        assert_eq!(params.list("expand"), vec!["latest_charge".to_owned()]);
        assert!(
            params
                .only(&["amount", "metadata", "expand", "confirm"])
                .is_ok()
        );
        assert!(params.only(&["amount"]).is_err());
    }

    #[test]
    fn the_fingerprint_ignores_parameter_order() {
        let a = Params::parse(b"amount=1&currency=usd");
        let b = Params::parse(b"currency=usd&amount=1");
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
