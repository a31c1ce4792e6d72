//! Carts: one actor per active customer, spawned on first touch by the cart supervisor under a
//! predictable name, serving that customer's cart calls one at a time (two tabs adding at once
//! cannot lose an update), writing every change through to PostgreSQL before it answers, and
//! stopping after an idle timeout (revived from PostgreSQL on the next touch). Adds and quantity
//! changes of many carts are group-committed ([`journal`]): one transaction for whatever lines
//! are waiting, each still bounded by its own call's deadline.
//!
//! # Timeouts, and why a change is made once or never
//! A caller waits at most `call_timeout` (the outer bound). Each change carries a [`Ticket`]
//! whose deadline is [`ANSWER_GRACE`] sooner (the inner bound):
//! - the cart does not start a change whose deadline passed or whose caller gave up (the ticket
//!   records which of the two moved first, so a caller that gave up knows the change will never
//!   be made, and the client's retry makes it exactly once);
//! - a change it starts is bounded by the deadline: the stock check is cut off at it, and the
//!   write runs under a `statement_timeout` of the time left, so PostgreSQL rolls back a write
//!   still waiting then. A change that is made is therefore answered within the grace, while its
//!   caller still listens.
//!
//! A call is sent again only when it certainly was not made: it was refused at the mailbox (the
//! cart was stopping), or the cart died before starting on it (the ticket says so). When the
//! outcome is unknown (the cart died mid-change, or a commit's connection broke) the caller gets
//! [`CartError::Interrupted`] and the cart restarts from PostgreSQL.
//!
//! Checkout ([`Carts::check_out`]) waits longer, in layers, each outer bound above the inner:
//! ```text
//! caller waits   call_timeout + place_timeout
//!  ├ the cart must start the hand-off by the ticket's deadline (call_timeout - grace), else
//!  │ nothing is handed over (NotPlaced);
//!  └ the placer must answer within place_timeout (its own inner timeouts shorter still); the
//!    cart never cuts it off within that time, as an order stopped half-made leaves unknown
//!    whether it exists. The placer empties the cart's rows in its order's transaction
//!    ([`empty_in`]), so there is no emptying left to wait for.
//! ```
//! Adds sent during a checkout wait behind it; if it outlasts their own deadline they are dropped
//! unmade and answered `Expired` (a 503 the client retries).

mod actor;
mod checkout;
mod journal;
mod store;
mod supervisor;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::instrument::{ActorError, Slot};
use crate::inventory::Inventory;
use crate::root::ChildSpec;
pub use actor::{CartActor, CartMsg, Change, Ticket};
pub use checkout::{CheckoutError, Handoff};
pub use store::empty_in;
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
    /// The coupon code the customer applied, kept even while it does not apply (the cart view
    /// says why); one per cart.
    pub coupon_code: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// The Idempotency-Key claim of the request a change answers (the server's `idempotency_keys`
/// row, migrations 0013 and 0016). The change marks it applied in its own transaction, and is
/// not made when the claim is no longer its request's, so that whether a change whose answer was
/// lost was made can be read back from that row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub user: Uuid,
    pub key: String,
    pub claim: Uuid,
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
    /// The call's deadline passed before the cart made the change: it was not made, and never
    /// will be.
    #[error("the cart change was not made in time")]
    Expired,
    /// The cart was interrupted while making the change: it may or may not have been made.
    #[error("the cart change was interrupted and may or may not have been made: {0}")]
    Interrupted(String),
    /// The request's claim on its Idempotency-Key was released or taken over before the change
    /// was written: it was not made, and never will be under that claim.
    #[error("the request no longer holds its Idempotency-Key; the change was not made")]
    ClaimLost,
}

impl From<sqlx::Error> for CartError {
    fn from(error: sqlx::Error) -> Self {
        if crate::partition::is_not_owner(&error) {
            return Self::Actor(ActorError::NotOwner);
        }
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
    /// This node's partitions (every cart write is fenced by them).
    pub fence: crate::partition::Fence,
}

/// The typed handle to every cart.
#[derive(Clone)]
pub struct Carts {
    supervisor: Slot<CartSupervisorMsg>,
    timeout: Duration,
    /// The claim the changes sent through this handle answer ([`Carts::under_claim`]).
    claim: Option<KeyClaim>,
}

/// How much sooner than its caller's timeout a call's deadline falls: the time a change made at
/// the very deadline needs to reach its caller (PostgreSQL's cancel, the commit, the reply).
pub const ANSWER_GRACE: Duration = Duration::from_millis(300);

/// What became of a call.
enum Asked<R> {
    Answered(R),
    /// The cart never made the call and never will.
    NotMade(CartError),
    /// The cart started on the call, but its answer did not reach us: it may have been made.
    Unknown(CartError),
}

impl<T> Asked<Result<T, CartError>> {
    fn into_result(self) -> Result<T, CartError> {
        match self {
            Self::Answered(answer) => answer,
            Self::NotMade(error) | Self::Unknown(error) => Err(error),
        }
    }
}

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
            journal: journal::Journal::new(db.clone(), config.fence.clone()),
            fence: config.fence.clone(),
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
                claim: None,
            },
            spec,
        )
    }

    /// This handle, with its changes marking `claim` applied in their own transactions (none:
    /// unmarked).
    pub fn under_claim(&self, claim: Option<KeyClaim>) -> Self {
        Self {
            claim,
            ..self.clone()
        }
    }

    /// The deadline of a call started at `started`: [`ANSWER_GRACE`] before its caller stops
    /// waiting (a quarter of the timeout when that is shorter).
    fn deadline(&self, started: Instant) -> Instant {
        started + self.timeout - ANSWER_GRACE.min(self.timeout / 4)
    }

    async fn cart(
        &self,
        user: Uuid,
        deadline: Instant,
    ) -> Result<crate::instrument::Mailbox<CartMsg>, CartError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.supervisor
            .get()?
            .call(|reply| CartSupervisorMsg::CartOf(user, reply), left)
            .await?
            .map_err(CartError::Storage)
    }

    /// Sends one call to `user`'s cart, reviving the cart if it had stopped, and waits for the
    /// answer until `wait_until`. The call is sent again only when it certainly was not made.
    async fn ask<R: Send + 'static>(
        &self,
        user: Uuid,
        deadline: Instant,
        wait_until: Instant,
        build: impl Fn(Ticket, ractor::RpcReplyPort<R>) -> CartMsg,
    ) -> Asked<R> {
        let started = Instant::now();
        let mut last = CartError::Actor(ActorError::Unavailable { kind: "cart" });
        for attempt in 1u32.. {
            if Instant::now() >= deadline {
                break;
            }
            match self.cart(user, deadline).await {
                Err(error) => last = error,
                Ok(cart) => {
                    let ticket = Ticket::new(deadline);
                    let (port, answer) = ractor::concurrency::oneshot();
                    // Refused at the mailbox (the cart is stopping) means not delivered: ask again.
                    if cart.cast(build(ticket.clone(), port.into())).is_ok() {
                        match tokio::time::timeout_at(wait_until.into(), answer).await {
                            Ok(Ok(answer)) => return Asked::Answered(answer),
                            // The cart died with the call still in its mailbox: ask its successor.
                            Ok(Err(_)) if ticket.abandon() => {}
                            Ok(Err(_)) => {
                                return Asked::Unknown(CartError::Interrupted(
                                    "the cart actor stopped during the call".into(),
                                ));
                            }
                            Err(_) if ticket.abandon() => {
                                return Asked::NotMade(CartError::Expired);
                            }
                            Err(_) => {
                                return Asked::Unknown(CartError::Actor(ActorError::Timeout {
                                    kind: CartActor::KIND_NAME,
                                    timeout: wait_until - started,
                                }));
                            }
                        }
                    }
                }
            }
            let pause = Duration::from_millis(10 * u64::from(attempt.min(10)));
            tokio::time::sleep_until((Instant::now() + pause).min(deadline).into()).await;
        }
        Asked::NotMade(last)
    }

    /// A call that changes the cart: made at most once, and only while its caller still waits.
    async fn change(
        &self,
        user: Uuid,
        change: impl Fn() -> Change,
    ) -> Result<CartSnapshot, CartError> {
        let started = Instant::now();
        let (deadline, wait_until) = (self.deadline(started), started + self.timeout);
        self.ask(user, deadline, wait_until, |ticket, reply| {
            CartMsg::Change {
                change: change(),
                claim: self.claim.clone(),
                ticket,
                reply,
            }
        })
        .await
        .into_result()
    }

    pub async fn get(&self, user: Uuid) -> Result<CartSnapshot, CartError> {
        let started = Instant::now();
        let (deadline, wait_until) = (self.deadline(started), started + self.timeout);
        self.ask(user, deadline, wait_until, |_, reply| CartMsg::Get(reply))
            .await
            .into_result()
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
        self.change(user, || Change::Add {
            variant,
            quantity,
            unit_price,
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
        self.change(user, || Change::SetQuantity { line, quantity })
            .await
    }

    pub async fn remove(&self, user: Uuid, line: Uuid) -> Result<CartSnapshot, CartError> {
        self.change(user, || Change::Remove { line }).await
    }

    pub async fn clear(&self, user: Uuid) -> Result<CartSnapshot, CartError> {
        self.change(user, || Change::Clear).await
    }

    /// Applies a coupon code to the cart (replacing any other), or removes it (`None`). Whether
    /// the code exists and applies is the caller's to check; the cart only keeps it.
    pub async fn set_coupon(
        &self,
        user: Uuid,
        code: Option<String>,
    ) -> Result<CartSnapshot, CartError> {
        self.change(user, || Change::SetCoupon { code: code.clone() })
            .await
    }

    /// Checks out `user`'s cart in one message to its actor: `place` gets the cart's lines and
    /// creates the order, emptying the cart's rows ([`empty_in`]) in the order's transaction;
    /// when it answers `Ok` the cart forgets its lines and the answer is `Ok(order)`. If it
    /// fails, the cart keeps its lines (reading them again from PostgreSQL before its next call)
    /// and the answer is [`CheckoutError::Refused`]. Adds sent meanwhile wait behind the checkout
    /// and land in the emptied cart, so every unit ends either in the order or in the cart.
    ///
    /// `place` runs inside the cart actor (a client that disconnects cannot cut it off) and must
    /// answer within `place_timeout`: the caller waits `call_timeout + place_timeout` in all (see
    /// the module doc for the layering). `place` gets the lines as they are, even none: the
    /// placer decides what an empty cart means.
    pub async fn check_out<T, E, P, Fut>(
        &self,
        user: Uuid,
        place_timeout: Duration,
        place: P,
    ) -> Result<T, CheckoutError<E>>
    where
        P: FnOnce(CartSnapshot) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let started = Instant::now();
        let deadline = self.deadline(started);
        let wait_until = started + self.timeout + place_timeout;
        let placer: checkout::PlacerSlot<P> = Arc::new(Mutex::new(Some(place)));
        let asked = self
            .ask(user, deadline, wait_until, |ticket, reply| {
                let handoff = checkout::TypedHandoff {
                    placer: placer.clone(),
                    reply,
                };
                CartMsg::CheckOut {
                    ticket,
                    place_timeout,
                    handoff: Box::new(handoff),
                }
            })
            .await;
        match asked {
            Asked::Answered(answer) => answer,
            Asked::NotMade(error) => Err(CheckoutError::NotPlaced(error)),
            Asked::Unknown(error) => Err(CheckoutError::Unanswered(error)),
        }
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
