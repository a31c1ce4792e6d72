//! One customer's cart.

use crate::partition::Fence;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{ActorProcessingErr, RpcReplyPort};
use sqlx::PgPool;
use uuid::Uuid;

use super::checkout::Handoff;
use super::journal::Journal;
use super::{CartError, CartLine, CartSnapshot, KeyClaim, MAX_LINES, MAX_QUANTITY, store};
use crate::instrument::{Mailbox, ShopActor};
use crate::inventory::Inventory;

type Reply = RpcReplyPort<Result<CartSnapshot, CartError>>;

/// How long past its `place_timeout` the cart still waits for a placer before it stops waiting,
/// keeps its lines and serves the next calls (a placer that never answers must not freeze the
/// cart).
const PLACER_OVERRUN: Duration = Duration::from_secs(5);

pub enum CartMsg {
    Get(Reply),
    /// A change to the lines; not made when its ticket's deadline passed or its caller gave up.
    Change {
        change: Change,
        /// The request's Idempotency-Key claim, marked applied in the change's transaction.
        claim: Option<KeyClaim>,
        ticket: Ticket,
        reply: Reply,
    },
    /// Checkout: hand the lines to an order placer; once the order exists (its transaction
    /// emptied the cart's rows), forget the lines.
    CheckOut {
        ticket: Ticket,
        place_timeout: Duration,
        handoff: Box<dyn Handoff>,
    },
    /// The idle timer: stop when nothing happened for the idle timeout.
    IdleCheck,
}

pub enum Change {
    Add {
        variant: Uuid,
        quantity: i32,
        unit_price: i64,
    },
    SetQuantity {
        line: Uuid,
        quantity: i32,
    },
    Remove {
        line: Uuid,
    },
    /// Empties the lines and drops the coupon.
    Clear,
    SetCoupon {
        code: Option<String>,
    },
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// What a caller and the cart share about one call: the deadline by which the cart must have
/// done it, and who moved first, the cart (it started on the call) or the caller (it gave up).
/// Exactly one of them wins, so a caller that gave up knows the call will never be made, and a
/// call that was started is never taken for one that was not.
#[derive(Clone)]
pub struct Ticket {
    deadline: Instant,
    state: Arc<AtomicU8>,
}

impl Ticket {
    pub(super) fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            state: Arc::new(AtomicU8::new(WAITING)),
        }
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The cart starts on the call: false when the deadline passed or the caller gave up.
    fn start(&self) -> bool {
        Instant::now() < self.deadline
            && self
                .state
                .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The caller gives up: true when the cart had not started on the call, and now never will.
    pub(super) fn abandon(&self) -> bool {
        self.state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

pub struct CartArgs {
    pub user: Uuid,
    pub db: PgPool,
    /// This node's partitions: every cart write proves it still owns the cart's.
    pub fence: Fence,
    /// Where line writes are group-committed with other carts'.
    pub journal: Arc<Journal>,
    pub inventory: Inventory,
    pub idle_timeout: Duration,
}

pub struct CartState {
    /// Read from PostgreSQL by the first call (see `loaded`), not at start: the supervisor
    /// spawns carts one at a time, and a start that waited on the database made every new
    /// customer wait behind every other one's read.
    cart: CartSnapshot,
    loaded: bool,
    db: PgPool,
    fence: Fence,
    journal: Arc<Journal>,
    inventory: Inventory,
    idle_timeout: Duration,
    last_touched: Instant,
}

pub struct CartActor;

impl CartActor {
    pub const KIND_NAME: &'static str = "cart";
}

impl CartState {
    /// Checks that `wanted` units can be sold, giving up at `deadline` (a read: cutting it off
    /// changes nothing).
    async fn check_stock(
        &self,
        variant: Uuid,
        wanted: i32,
        deadline: Instant,
    ) -> Result<(), CartError> {
        let available =
            tokio::time::timeout_at(deadline.into(), self.inventory.available_for(variant))
                .await
                .map_err(|_| CartError::Expired)??;
        if wanted > available {
            return Err(CartError::NotEnoughStock {
                requested: wanted,
                available,
            });
        }
        Ok(())
    }

    async fn change(
        &mut self,
        change: Change,
        claim: Option<&KeyClaim>,
        deadline: Instant,
    ) -> Result<(), CartError> {
        match change {
            Change::Add {
                variant,
                quantity,
                unit_price,
            } => {
                self.add(variant, quantity, unit_price, claim, deadline)
                    .await
            }
            Change::SetQuantity { line, quantity } => {
                self.set_quantity(line, quantity, claim, deadline).await
            }
            Change::Remove { line } => self.remove(line, claim, deadline).await,
            Change::Clear => self.clear(claim, deadline).await,
            Change::SetCoupon { code } => {
                let cart = self.cart.cart_id;
                let write = store::Write::new(&self.db, &self.fence, cart, claim, deadline);
                store::set_coupon(write, code.as_deref()).await?;
                self.cart.coupon_code = code;
                Ok(())
            }
        }
    }

    async fn add(
        &mut self,
        variant: Uuid,
        quantity: i32,
        unit_price: i64,
        claim: Option<&KeyClaim>,
        deadline: Instant,
    ) -> Result<(), CartError> {
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(CartError::QuantityTooLarge);
        }
        let existing = self.cart.lines.iter().position(|l| l.variant_id == variant);
        let wanted = existing.map_or(0, |at| self.cart.lines[at].quantity) + quantity;
        if wanted > MAX_QUANTITY {
            return Err(CartError::QuantityTooLarge);
        }
        if existing.is_none() && self.cart.lines.len() >= MAX_LINES {
            return Err(CartError::TooManyLines);
        }
        self.check_stock(variant, wanted, deadline).await?;
        let line = match existing {
            Some(at) => CartLine {
                quantity: wanted,
                ..self.cart.lines[at].clone()
            },
            None => CartLine {
                id: Uuid::now_v7(),
                variant_id: variant,
                quantity: wanted,
                unit_price_at_add: unit_price,
                added_at: Utc::now(),
            },
        };
        self.journal
            .upsert(self.cart.cart_id, &line, claim, deadline)
            .await?;
        match existing {
            Some(at) => self.cart.lines[at] = line,
            None => self.cart.lines.push(line),
        }
        Ok(())
    }

    async fn set_quantity(
        &mut self,
        line: Uuid,
        quantity: i32,
        claim: Option<&KeyClaim>,
        deadline: Instant,
    ) -> Result<(), CartError> {
        let at = self
            .cart
            .lines
            .iter()
            .position(|l| l.id == line)
            .ok_or(CartError::NoSuchLine)?;
        if quantity == 0 {
            return self.remove(line, claim, deadline).await;
        }
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(CartError::QuantityTooLarge);
        }
        if quantity > self.cart.lines[at].quantity {
            self.check_stock(self.cart.lines[at].variant_id, quantity, deadline)
                .await?;
        }
        let updated = CartLine {
            quantity,
            ..self.cart.lines[at].clone()
        };
        self.journal
            .upsert(self.cart.cart_id, &updated, claim, deadline)
            .await?;
        self.cart.lines[at] = updated;
        Ok(())
    }

    async fn remove(
        &mut self,
        line: Uuid,
        claim: Option<&KeyClaim>,
        deadline: Instant,
    ) -> Result<(), CartError> {
        if !self.cart.lines.iter().any(|l| l.id == line) {
            return Err(CartError::NoSuchLine);
        }
        let write = store::Write::new(&self.db, &self.fence, self.cart.cart_id, claim, deadline);
        store::delete_line(write, line).await?;
        self.cart.lines.retain(|l| l.id != line);
        Ok(())
    }

    async fn clear(
        &mut self,
        claim: Option<&KeyClaim>,
        deadline: Instant,
    ) -> Result<(), CartError> {
        let write = store::Write::new(&self.db, &self.fence, self.cart.cart_id, claim, deadline);
        store::clear(write).await?;
        self.cart.lines.clear();
        self.cart.coupon_code = None;
        Ok(())
    }

    /// Hands the lines to the placer; once the order exists, forgets them (the placer's
    /// transaction emptied the rows). Runs as one message, so adds sent meanwhile wait in the
    /// mailbox and land in the emptied cart: no line is both ordered and kept, none is neither.
    /// The placer answers the caller itself.
    async fn check_out(&mut self, handoff: Box<dyn Handoff>, place_timeout: Duration) {
        // The placer is never cut off within its `place_timeout`: stopping an order half-made
        // would leave unknown whether it exists. Past the overrun the caller has long given up;
        // the cart keeps its lines (the customer still sees them) rather than freeze.
        let placing = handoff.place(self.cart.clone());
        match tokio::time::timeout(place_timeout + PLACER_OVERRUN, placing).await {
            Ok(true) => {
                self.cart.lines.clear();
                self.cart.coupon_code = None;
                self.cart.updated_at = Utc::now();
            }
            // Refused: the cart keeps its lines; the caller has the placer's error. A placer
            // may refuse without knowing its order's fate (its answer came too late), so the
            // cart reads its rows again before its next call rather than trust memory.
            Ok(false) => self.loaded = false,
            Err(_) => {
                metrics::counter!("cart_checkout_placer_overran_total").increment(1);
                tracing::error!(
                    cart = %self.cart.cart_id,
                    ?place_timeout,
                    "an order placer overran its timeout; the cart keeps its lines, the order may exist"
                );
                self.loaded = false;
            }
        }
    }

    fn answer(&mut self, reply: Reply, result: Result<(), CartError>) {
        if result.is_ok() {
            self.cart.updated_at = Utc::now();
        }
        // A caller that stopped listening has already told its client "unknown" (the ticket
        // says it gave up only before the cart started): nothing to undo here.
        let _ = reply.send(result.map(|()| self.cart.clone()));
    }
}

impl ShopActor for CartActor {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = CartMsg;
    type State = CartState;
    type Arguments = CartArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<CartMsg>,
        args: CartArgs,
    ) -> Result<CartState, ActorProcessingErr> {
        let cart = CartSnapshot {
            cart_id: Uuid::nil(),
            user_id: args.user,
            lines: Vec::new(),
            coupon_code: None,
            updated_at: Utc::now(),
        };
        let every =
            (args.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        myself.cast_every(every, || CartMsg::IdleCheck);
        Ok(CartState {
            cart,
            loaded: false,
            db: args.db,
            fence: args.fence,
            journal: args.journal,
            inventory: args.inventory,
            idle_timeout: args.idle_timeout,
            last_touched: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: Mailbox<CartMsg>,
        message: CartMsg,
        state: &mut CartState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, CartMsg::IdleCheck) {
            state.last_touched = Instant::now();
            if !state.loaded {
                match store::load(&state.db, state.cart.user_id).await {
                    Ok(cart) => {
                        state.cart = cart;
                        state.loaded = true;
                    }
                    // This call is answered unmade; the next one reads again.
                    Err(error) => {
                        let error = CartError::from(error);
                        match message {
                            CartMsg::Get(reply) | CartMsg::Change { reply, .. } => {
                                let _ = reply.send(Err(error));
                            }
                            CartMsg::CheckOut { handoff, .. } => handoff.refuse(error),
                            CartMsg::IdleCheck => {}
                        }
                        return Ok(());
                    }
                }
            }
        }
        match message {
            CartMsg::Get(reply) => state.answer(reply, Ok(())),
            CartMsg::Change {
                change,
                claim,
                ticket,
                reply,
            } => {
                let result = if ticket.start() {
                    state
                        .change(change, claim.as_ref(), ticket.deadline())
                        .await
                } else {
                    // Its caller gave up (or is about to): making it now would be the change
                    // the client's retry makes again.
                    Err(CartError::Expired)
                };
                let unknown = matches!(result, Err(CartError::Interrupted(_)));
                state.answer(reply, result);
                if unknown {
                    // PostgreSQL may hold the change while memory does not: restart, reloading.
                    return Err("a cart write's outcome is unknown; reloading the cart".into());
                }
            }
            CartMsg::CheckOut {
                ticket,
                place_timeout,
                handoff,
            } => {
                if ticket.start() {
                    state.check_out(handoff, place_timeout).await;
                } else {
                    handoff.refuse(CartError::Expired);
                }
            }
            CartMsg::IdleCheck => {
                if state.last_touched.elapsed() >= state.idle_timeout {
                    // Everything is already in PostgreSQL: stopping loses nothing. Drain rather
                    // than stop: calls already in the mailbox are still answered (a stop would
                    // drop them unanswered, and a caller could not tell whether its change was
                    // made), while new ones are refused at once and go to the next incarnation.
                    if let Err(error) = myself.cell().drain() {
                        tracing::debug!(%error, "the idle cart was already stopping");
                    }
                }
            }
        }
        Ok(())
    }
}
