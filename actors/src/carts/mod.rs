//! Carts: one actor per active customer, spawned on first touch by the cart supervisor under a
//! predictable name, serving that customer's cart calls one at a time (two tabs adding at once
//! cannot lose an update), writing every change through to PostgreSQL before it answers, and
//! stopping after an idle timeout (revived from PostgreSQL on the next touch).

mod actor;
mod store;
mod supervisor;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::instrument::{ActorError, Slot};
use crate::inventory::Inventory;
use crate::root::ChildSpec;
pub use actor::{CartActor, CartMsg};
pub use supervisor::{CartSupervisor, CartSupervisorMsg};

/// Most lines a cart may have, and most units per line.
pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i32 = 99;

#[derive(Debug, Clone, Serialize)]
pub struct CartLine {
    pub id: Uuid,
    pub variant_id: Uuid,
    pub quantity: i32,
    pub unit_price_at_add: i64,
    pub added_at: DateTime<Utc>,
}

/// What the cart actor holds: the customer's lines, as persisted.
#[derive(Debug, Clone, Serialize)]
pub struct CartSnapshot {
    pub cart_id: Uuid,
    pub user_id: Uuid,
    pub lines: Vec<CartLine>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CartError {
    #[error("only {available} can be sold")]
    NotEnoughStock { requested: i32, available: i32 },
    #[error("a cart holds at most {MAX_LINES} lines")]
    TooManyLines,
    #[error("at most {MAX_QUANTITY} units per line")]
    QuantityTooLarge,
    #[error("no such cart line")]
    NoSuchLine,
    #[error(transparent)]
    Actor(#[from] ActorError),
    #[error("cart storage: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for CartError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.to_string())
    }
}

impl From<crate::inventory::InventoryError> for CartError {
    fn from(error: crate::inventory::InventoryError) -> Self {
        match error {
            crate::inventory::InventoryError::Actor(actor) => Self::Actor(actor),
            other => Self::Storage(other.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CartConfig {
    pub idle_timeout: Duration,
    pub call_timeout: Duration,
}

/// The typed handle to every cart.
#[derive(Clone)]
pub struct Carts {
    supervisor: Slot<CartSupervisorMsg>,
    timeout: Duration,
}

/// How many times a call is retried when it reaches a cart that is just stopping (idle).
const ATTEMPTS: usize = 5;

impl Carts {
    pub fn new(
        prefix: &str,
        db: sqlx::PgPool,
        inventory: Inventory,
        config: &CartConfig,
    ) -> (Self, ChildSpec) {
        let slot = Slot::empty(CartSupervisor::KIND_NAME);
        let args = supervisor::SupervisorArgs {
            prefix: prefix.to_owned(),
            db,
            inventory,
            idle_timeout: config.idle_timeout,
        };
        let spec = ChildSpec::new(format!("{prefix}carts"), slot.clone(), move || {
            (CartSupervisor, args.clone())
        });
        (
            Self {
                supervisor: slot,
                timeout: config.call_timeout,
            },
            spec,
        )
    }

    async fn cart(&self, user: Uuid) -> Result<crate::instrument::Mailbox<CartMsg>, CartError> {
        self.supervisor
            .get()?
            .call(|reply| CartSupervisorMsg::CartOf(user, reply), self.timeout)
            .await?
            .map_err(CartError::Storage)
    }

    /// Sends one call to `user`'s cart, reviving it if it had stopped.
    async fn ask<R: Send + 'static>(
        &self,
        user: Uuid,
        build: impl Fn(ractor::RpcReplyPort<Result<R, CartError>>) -> CartMsg,
    ) -> Result<R, CartError> {
        let mut last = CartError::Actor(ActorError::Unavailable { kind: "cart" });
        for attempt in 0..ATTEMPTS {
            match self.cart(user).await {
                Ok(cart) => match cart.call(&build, self.timeout).await {
                    Ok(answer) => return answer,
                    // Stopping for idleness as we called: ask the supervisor again.
                    Err(error @ ActorError::Unavailable { .. }) => last = error.into(),
                    Err(error) => return Err(error.into()),
                },
                Err(error) => last = error,
            }
            tokio::time::sleep(Duration::from_millis(10 * (attempt as u64 + 1))).await;
        }
        Err(last)
    }

    pub async fn get(&self, user: Uuid) -> Result<CartSnapshot, CartError> {
        self.ask(user, CartMsg::Get).await
    }

    /// Adds units of a variant (to its line if there is one). `unit_price` is today's price,
    /// remembered so the cart can say when it changes.
    pub async fn add(
        &self,
        user: Uuid,
        variant: Uuid,
        quantity: i32,
        unit_price: i64,
    ) -> Result<CartSnapshot, CartError> {
        self.ask(user, |reply| CartMsg::Add {
            variant,
            quantity,
            unit_price,
            reply,
        })
        .await
    }

    /// Sets a line's quantity; 0 removes it.
    pub async fn set_quantity(
        &self,
        user: Uuid,
        line: Uuid,
        quantity: i32,
    ) -> Result<CartSnapshot, CartError> {
        self.ask(user, |reply| CartMsg::SetQuantity {
            line,
            quantity,
            reply,
        })
        .await
    }

    pub async fn remove(&self, user: Uuid, line: Uuid) -> Result<CartSnapshot, CartError> {
        self.ask(user, |reply| CartMsg::Remove { line, reply })
            .await
    }

    pub async fn clear(&self, user: Uuid) -> Result<CartSnapshot, CartError> {
        self.ask(user, CartMsg::Clear).await
    }

    /// How many cart actors are alive (tests and metrics).
    pub async fn active(&self) -> Result<usize, CartError> {
        Ok(self
            .supervisor
            .get()?
            .call(CartSupervisorMsg::Active, self.timeout)
            .await?)
    }

    /// The actor serving `user`'s cart, if one runs (tests crash it).
    pub async fn actor_of(&self, user: Uuid) -> Result<Option<ractor::ActorCell>, CartError> {
        Ok(self
            .supervisor
            .get()?
            .call(
                |reply| CartSupervisorMsg::Running(user, reply),
                self.timeout,
            )
            .await?)
    }
}
