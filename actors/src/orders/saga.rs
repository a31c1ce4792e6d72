//! The order saga: one actor per order in flight, the only one that moves a pending order. The
//! whole walk, as persisted in `orders.saga_step`:
//!
//! 1. `reserved`: the stock is held in the inventory shards (nothing else exists yet; a short
//!    line ends the checkout with nothing left behind).
//! 2. The payment intent is created (idempotency key from the order id). If the provider does not
//!    answer, the stock is released and the checkout answers 503: nothing was created.
//! 3. `awaiting_payment`: the order is written, with its intent, in one transaction. Only now
//!    does the order exist; past the caller's deadline no order is written.
//! 4. A payment event (a trigger: the saga re-reads the order and only moves forward), the
//!    reservation deadline, or a cancel:
//!    - succeeded, matching the order: the stock is committed (retried until every shard has
//!      answered), then `paid` in the transaction that marks the event processed;
//!    - succeeded but the holds were gone, or the amount or currency does not match: the order
//!      is cancelled, what stock it had goes back, and a refund is owed (a durable row the refund
//!      worker settles), all in one transaction with the event;
//!    - succeeded for an order already cancelled: a refund is owed;
//!    - the deadline or a cancel: the intent is cancelled first; if the provider says it already
//!      succeeded, the order is paid instead; then the stock is released and the order cancelled.
//! 5. `done`: the order is final and the saga stops.
//!
//! An event is processed only in the transaction that commits its effect; an event whose effect
//! could not be committed stays unprocessed and the payment router hands it over again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{ActorProcessingErr, RpcReplyPort};
use tracing::Instrument;

use super::{LedgerError, NewOrder, OrderLedger, OrderSnapshot, OrderStatus, OwedRefund};
use crate::coupons::{CouponError, CouponLimiter, Limits};
use crate::instrument::{Mailbox, ShopActor};
use crate::inventory::{Demand, Holding, Inventory, InventoryError, Shortage};
use crate::payments::{
    IdempotencyKey, IntentStatus, PaymentError, PaymentEvent, PaymentEventKind, PaymentGateway,
    PaymentIntent,
};
use crate::refunds::{RefundReason, Refunds};
use uuid::Uuid;

/// Why a checkout did not produce an order. In every case nothing was created.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckoutError {
    #[error("not enough stock")]
    Short(Vec<Shortage>),
    #[error("the same idempotency key was used for another order")]
    KeyReused(Uuid),
    #[error("the coupon has been used as often as it may be")]
    CouponLimitReached,
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of `POST /orders/{id}/pay`.
#[derive(Debug, Clone)]
pub struct PaymentAttempt {
    pub status: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SagaError {
    #[error("the order is {0:?}, not pending")]
    NotPending(OrderStatus),
    #[error("no such order")]
    NotFound,
    #[error("{0}")]
    Unavailable(String),
    /// The provider refused the payment method itself (unknown, or not usable for this intent):
    /// nothing was charged, and another payment method may still pay the order.
    #[error("{0}")]
    PaymentMethodRefused(String),
}

impl From<LedgerError> for SagaError {
    fn from(error: LedgerError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// The coupon a checkout uses, with its limits as read from PostgreSQL for this checkout.
#[derive(Debug, Clone)]
pub struct CouponClaim {
    pub coupon_id: Uuid,
    pub usage_limit: Option<i32>,
    pub per_customer_limit: Option<i32>,
}

pub struct Checkout {
    pub order: NewOrder,
    pub coupon: Option<CouponClaim>,
    pub idempotency: Option<(String, Vec<u8>)>,
    pub ttl: Duration,
    /// Past this, the saga writes no order: its caller is about to give up.
    pub deadline: Instant,
}

pub enum SagaMsg {
    /// Run the checkout steps of a new order, then answer.
    Begin(Box<Checkout>, RpcReplyPort<Result<Uuid, CheckoutError>>),
    /// A verified payment event for this order.
    Payment(PaymentEvent),
    /// Confirm the payment with a payment method.
    Pay {
        payment_method: String,
        deadline: Instant,
        reply: RpcReplyPort<Result<PaymentAttempt, SagaError>>,
    },
    /// Cancel on behalf of `actor` (customer or admin).
    Cancel {
        actor: &'static str,
        reason: String,
        deadline: Instant,
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
    /// The reservation deadline has come (or a cancel at it is tried again).
    Expire,
    /// Settle a free order (total 0) that is still pending: at its checkout's first failure to
    /// settle, and when a saga is resumed for one. `attempt` sets the wait before the next try.
    SettleFree { attempt: u32 },
}

#[derive(Clone)]
pub struct SagaDeps {
    pub ledger: Arc<dyn OrderLedger>,
    pub inventory: Inventory,
    pub payments: Arc<dyn PaymentGateway>,
    pub refunds: Refunds,
    pub coupons: CouponLimiter,
}

pub struct SagaArgs {
    pub order_id: Uuid,
    pub deps: SagaDeps,
    /// A saga for a checkout about to begin: no order exists yet, so there is nothing to read
    /// back at start.
    pub fresh: bool,
    /// The span that started the saga (a checkout's, or whatever woke a sleeping order):
    /// the parent of the saga's own span.
    pub parent: tracing::Span,
}

pub struct SagaState {
    order_id: Uuid,
    deps: SagaDeps,
    myself: Mailbox<SagaMsg>,
    /// The shards holding the order's stock: those its checkout reserved on, or every shard for
    /// a resumed saga.
    holding: Holding,
    /// The order as this saga last wrote or read it. The saga is the only writer of a pending
    /// order (and one process at a time runs sagas, see the ownership lease), so what it wrote
    /// stands until it writes again: paying and cancelling right after a checkout start from it
    /// instead of reading it back. Forgotten by anything whose outcome it does not track (a
    /// payment event, the deadline), then read afresh.
    known: Mutex<Option<OrderSnapshot>>,
    /// The saga's span, open as long as it runs (when traces are exported): the parent of what
    /// happens to the order without a caller (payment events, its deadline), so that the
    /// webhook's payment and the email it sends stay in the trace of the checkout.
    span: tracing::Span,
}

pub struct OrderSaga;

impl OrderSaga {
    pub const KIND_NAME: &'static str = "order_saga";
}

/// How long a stock commit is retried before the event is left for the router to hand over
/// again (the commit is idempotent: the next try answers what this one did).
const COMMIT_BUDGET: Duration = Duration::from_secs(15);
/// How soon an expiry whose cancel could not be decided (the provider did not answer) is tried
/// again.
const EXPIRY_RETRY: Duration = Duration::from_secs(5);
/// The first and the longest wait before a free order's settlement is tried again.
const FREE_RETRY_FIRST: Duration = Duration::from_millis(500);
const FREE_RETRY_MAX: Duration = Duration::from_secs(30);

/// A payment the provider reports as taken: from an event, or read back from the intent when a
/// cancel found it had succeeded.
struct Taken<'a> {
    intent_id: &'a str,
    amount: i64,
    currency: &'a str,
    /// The event to mark processed with the effect, if an event brought it.
    event_id: Option<&'a str>,
}

/// How long a checkout whose order write failed keeps trying to read the order back: within the
/// margin its caller waits beyond the saga's deadline.
const READ_BACK_BUDGET: Duration = Duration::from_secs(1);

/// A cancel that went through, and what the order held that is to be given back.
struct Cancelled {
    coupon: Option<Uuid>,
}

/// Why checkout's order write did not succeed.
enum NotWritten {
    /// The order is not written: what was taken for it is given back.
    Refused(CheckoutError),
    /// The write failed and the order could not be read back: it may exist.
    Unknown(String),
}

/// Retries `step` with doubling pauses until it succeeds or `budget` is spent.
async fn with_retries<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    budget: Duration,
    mut step: impl FnMut() -> F,
) -> Result<T, E> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() + pause < budget => {
                tracing::warn!(%error, retry_in = ?pause, "{what} failed; retrying");
                metrics::counter!("order_saga_step_retries_total", "step" => what.to_owned())
                    .increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}

impl SagaState {
    fn known(&self) -> Option<OrderSnapshot> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn remember(&self, order: Option<OrderSnapshot>) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = order;
    }

    /// The order: as last known, or read.
    async fn order(&self) -> Result<OrderSnapshot, SagaError> {
        if let Some(order) = self.known() {
            return Ok(order);
        }
        let order = self
            .deps
            .ledger
            .snapshot(self.order_id)
            .await?
            .ok_or(SagaError::NotFound)?;
        self.remember(Some(order.clone()));
        Ok(order)
    }

    fn schedule_expiry(&self, at: DateTime<Utc>) {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        self.expire_in(wait);
    }

    fn expire_in(&self, wait: Duration) {
        let myself = self.myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // A saga that has stopped has nothing left to expire.
            if myself.cast(SagaMsg::Expire).is_err() {
                tracing::debug!("the order settled before its deadline");
            }
        });
    }

    /// Stops the saga once its order is final (or does not exist): nothing more to walk.
    async fn stop_if_settled(&self) -> Result<(), LedgerError> {
        let status = match self.known() {
            Some(order) => Some(order.status),
            None => self.deps.ledger.status_of(self.order_id).await?,
        };
        if status.is_none_or(OrderStatus::is_final) {
            self.myself.cell().stop(Some("order settled".into()));
        }
        Ok(())
    }

    // ---- steps 1 to 3: checkout ----

    #[tracing::instrument(name = "saga checkout", skip_all, fields(order = %self.order_id))]
    async fn begin(&mut self, mut checkout: Checkout) -> Result<Uuid, CheckoutError> {
        let demand = |gift: bool| -> Vec<Demand> {
            checkout
                .order
                .lines
                .iter()
                .filter(|l| l.gift == gift)
                .map(|l| Demand {
                    variant_id: l.variant_id,
                    quantity: l.quantity,
                })
                .collect()
        };
        let (paid, gifts) = (demand(false), demand(true));
        let (owner, ttl) = (checkout.order.id, checkout.ttl);
        // 1. Stock first: a short order leaves nothing behind.
        let reserve = self.deps.inventory.reserve_holding(owner, &paid, ttl);
        let reserved = reserve
            .instrument(tracing::info_span!("saga reserve stock"))
            .await;
        let mut units = match reserved {
            Ok((units, holding)) => {
                self.holding = holding;
                units
            }
            Err(InventoryError::Short(short)) => return Err(CheckoutError::Short(short)),
            Err(error) => return Err(CheckoutError::Unavailable(error.to_string())),
        };
        // Gifts after: a gift out of stock does not stop the checkout; the order goes without it
        // and says so.
        if !gifts.is_empty() {
            match self
                .deps
                .inventory
                .reserve_holding(owner, &gifts, ttl)
                .await
            {
                Ok((more, holding)) => {
                    self.holding = std::mem::take(&mut self.holding).and(holding);
                    units += more;
                }
                Err(InventoryError::Short(_)) => {
                    checkout.order.lines.retain(|l| !l.gift);
                    checkout.order.note =
                        Some("checkout; a gift was out of stock and left out".into());
                    metrics::counter!("order_gifts_left_out_total").increment(1);
                }
                Err(error) => {
                    // A gift's shard may still hold what its failed reservation could not take
                    // back: released on every shard, as the paid lines are.
                    self.holding = Holding::anywhere();
                    self.release_stock().await;
                    return Err(CheckoutError::Unavailable(error.to_string()));
                }
            }
        }
        // 2. The coupon's use, with the global and the customer's limits together.
        if let Some(coupon) = &checkout.coupon
            && let Err(error) = self.reserve_coupon(&checkout, coupon).await
        {
            // A reservation that timed out or failed in storage may still be written: its use is
            // released as the stock is. A release that fails too leaves the use to the limiter's
            // reconciliation (no order will exist for it).
            if matches!(error, CheckoutError::Unavailable(_))
                && let Err(release) = self.release_coupon(coupon.coupon_id).await
            {
                tracing::error!(order = %checkout.order.id, coupon = %coupon.coupon_id, %release,
                    "a coupon use may be held for a checkout that failed; the limiter's reconciliation releases it");
            }
            self.release_stock().await;
            return Err(error);
        }
        let order = &checkout.order;
        match self.create_order(&checkout, units).await {
            Ok((id, intent)) => {
                self.remember(Some(OrderSnapshot {
                    status: OrderStatus::Pending,
                    total: order.subtotal - order.discount_total,
                    currency: order.currency.clone(),
                    expires_at: order.expires_at,
                    payment_intent_id: intent,
                    // As the column starts (the intent's own creation is attempt 1).
                    payment_attempt: 1,
                    reserved_units: units,
                    coupon_id: checkout.coupon.as_ref().map(|c| c.coupon_id),
                }));
                self.schedule_expiry(order.expires_at);
                if order.subtotal - order.discount_total == 0
                    && let Err(error) = self.settle_free_order().await
                {
                    // Nobody pays a free order: this saga settles it, until it is settled.
                    tracing::warn!(order = %id, %error, "a free order is not settled yet; retrying");
                    self.settle_free_in(1);
                }
                Ok(id)
            }
            Err(NotWritten::Unknown(why)) => {
                // Perhaps written: nothing is undone. If the order exists, this saga's expiry
                // cancels it at its deadline like any unpaid order (and it can be paid until
                // then); if not, its holds expire, the limiter's reconciliation gives the coupon
                // use back, and the intent is never confirmed.
                tracing::error!(order = %order.id, %why, "the order's write has an unknown outcome; nothing is undone");
                self.schedule_expiry(order.expires_at);
                Err(CheckoutError::Unavailable(why))
            }
            Err(NotWritten::Refused(error)) => {
                self.release_stock().await;
                if let Some(coupon) = &checkout.coupon
                    && let Err(release) = self.release_coupon(coupon.coupon_id).await
                {
                    // Held for an order that does not exist: the limiter's reconciliation
                    // releases it after its grace period.
                    tracing::error!(order = %order.id, coupon = %coupon.coupon_id, %release,
                        "a coupon use is still held for a checkout that failed; the limiter's reconciliation releases it");
                }
                // A concurrent checkout with the same key won: answer with its order.
                if let Some((key, _)) = &checkout.idempotency
                    && let Ok(Some(existing)) =
                        self.deps.ledger.checkout_by_key(order.user_id, key).await
                {
                    return Err(CheckoutError::KeyReused(existing));
                }
                Err(error)
            }
        }
    }

    #[tracing::instrument(name = "saga reserve coupon", skip_all, fields(order = %self.order_id))]
    async fn reserve_coupon(
        &self,
        checkout: &Checkout,
        coupon: &CouponClaim,
    ) -> Result<(), CheckoutError> {
        let limits = Limits {
            usage_limit: coupon.usage_limit,
            per_customer_limit: coupon.per_customer_limit,
        };
        let order = &checkout.order;
        match self
            .deps
            .coupons
            .reserve(coupon.coupon_id, order.id, order.user_id, limits)
            .await
        {
            Ok(()) => Ok(()),
            Err(CouponError::LimitReached | CouponError::CustomerLimitReached) => {
                Err(CheckoutError::CouponLimitReached)
            }
            Err(error) => Err(CheckoutError::Unavailable(format!("{error:?}"))),
        }
    }

    /// Gives the order's coupon use back (cancel, expiry, a failed checkout); idempotent.
    async fn release_coupon(&self, coupon: Uuid) -> Result<(), SagaError> {
        let (coupons, order) = (&self.deps.coupons, self.order_id);
        with_retries("releasing the coupon use", Duration::from_secs(3), || {
            coupons.release(coupon, order)
        })
        .await
        .map_err(|e| SagaError::Unavailable(format!("coupon release: {e:?}")))
    }

    /// Steps 2 and 3: the intent, then the order with it, before the deadline. Answers the order
    /// and its intent.
    #[tracing::instrument(name = "saga create order", skip_all, fields(order = %self.order_id))]
    async fn create_order(
        &self,
        checkout: &Checkout,
        units: i32,
    ) -> Result<(Uuid, Option<String>), NotWritten> {
        let order = &checkout.order;
        let late = || {
            NotWritten::Refused(CheckoutError::Unavailable(
                "checkout took too long; nothing was kept".into(),
            ))
        };
        let amount = order.subtotal - order.discount_total;
        // A free order (a coupon worth the whole cart) has nothing to pay: no intent.
        let intent = if amount > 0 {
            let created = self
                .deps
                .payments
                .create_intent(order.id, 1, amount, &order.currency)
                .await
                .map_err(|e| NotWritten::Refused(CheckoutError::Unavailable(e.to_string())))?;
            Some(created)
        } else {
            None
        };
        // Past the deadline no order is written: the caller is about to answer 503. The write
        // itself is not cut short (a commit cut mid-way has an unknown outcome); each of its
        // statements is bounded by the database's statement timeout.
        if Instant::now() >= checkout.deadline {
            if let Some(intent) = &intent {
                self.abandon_intent(intent).await;
            }
            return Err(late());
        }
        let written = self
            .deps
            .ledger
            .create_order(order, intent.as_ref(), units, checkout.idempotency.as_ref())
            .await;
        let Err(error) = written else {
            return Ok((order.id, intent.map(|i| i.id)));
        };
        // The error may be the lost answer to a COMMIT that went through: the order is read back
        // before anything is undone.
        let ledger = &self.deps.ledger;
        match with_retries("reading the order back", READ_BACK_BUDGET, || {
            ledger.status_of(order.id)
        })
        .await
        {
            Ok(Some(_)) => {
                tracing::warn!(order = %order.id, %error, "the order's write reported an error, yet the order is written; it stands");
                metrics::counter!("order_writes_read_back_total", "written" => "true").increment(1);
                Ok((order.id, intent.map(|i| i.id)))
            }
            Ok(None) => {
                metrics::counter!("order_writes_read_back_total", "written" => "false")
                    .increment(1);
                if let Some(intent) = &intent {
                    self.abandon_intent(intent).await;
                }
                Err(NotWritten::Refused(CheckoutError::Unavailable(
                    error.to_string(),
                )))
            }
            Err(read) => Err(NotWritten::Unknown(format!(
                "{error}; the order could not be read back: {read}"
            ))),
        }
    }

    /// A free order is paid as soon as it exists: its stock and coupon use are committed as for
    /// a payment. If that cannot finish now, the order stays pending and its deadline (or the
    /// next sweep) takes it from there.
    #[tracing::instrument(name = "saga settle free order", skip_all, fields(order = %self.order_id))]
    async fn settle_free_order(&self) -> Result<(), SagaError> {
        let order = self.order().await?;
        let currency = order.currency.clone();
        let nothing = Taken {
            intent_id: "",
            amount: 0,
            currency: &currency,
            event_id: None,
        };
        self.on_taken(&order, &nothing).await
    }

    /// Tries to settle the free order again after the backoff of `attempt`.
    fn settle_free_in(&self, attempt: u32) {
        let wait = FREE_RETRY_FIRST
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(FREE_RETRY_MAX);
        let myself = self.myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if myself.cast(SagaMsg::SettleFree { attempt }).is_err() {
                tracing::debug!("the saga has stopped; a resumed one settles the free order");
            }
        });
    }

    /// Settles the order if it is free and still pending; on failure, tries again later.
    async fn retry_free(&self, attempt: u32) -> Result<(), SagaError> {
        self.remember(None);
        let order = self.order().await?;
        if order.status != OrderStatus::Pending || order.total != 0 {
            return Ok(());
        }
        metrics::counter!("order_free_settle_retries_total").increment(1);
        if let Err(error) = self.settle_free_order().await {
            tracing::warn!(order = %self.order_id, attempt, %error, "a free order is not settled yet; retrying");
            self.settle_free_in(attempt.saturating_add(1));
        }
        Ok(())
    }

    /// An intent whose order was never written: nobody has its client secret, so it cannot be
    /// paid; cancelling it keeps the provider's dashboard clean.
    async fn abandon_intent(&self, intent: &PaymentIntent) {
        let key = IdempotencyKey::cancel(self.order_id, 1);
        if let Err(error) = self.deps.payments.cancel(&intent.id, &key).await {
            tracing::warn!(order = %self.order_id, intent = %intent.id, %error,
                "an unused payment intent was not cancelled; it cannot be paid without its order");
        }
    }

    /// Releases the order's holds. A release that keeps failing is not lost: the shards release
    /// every hold at its `expires_at` on their own.
    async fn release_stock(&self) {
        let inventory = &self.deps.inventory;
        let order = self.order_id;
        let holding = &self.holding;
        if let Err(error) = with_retries("releasing stock", Duration::from_secs(3), || {
            inventory.release_holding(order, holding)
        })
        .await
        {
            tracing::error!(%order, %error, "release failed; the holds expire on their own");
        }
    }

    // ---- step 4: payment events ----

    #[tracing::instrument(name = "saga payment event", skip_all, fields(order = %self.order_id))]
    async fn on_payment(&self, event: PaymentEvent) -> Result<(), SagaError> {
        let ledger = &self.deps.ledger;
        let order = match self.order().await {
            Ok(order) => order,
            Err(SagaError::NotFound) => {
                // Not an order of this shop (another system on the same account): nothing to do.
                tracing::error!(order = %self.order_id, event = %event.event_id, "payment event for an unknown order");
                metrics::counter!("payment_events_orphaned_total").increment(1);
                ledger.mark_processed(&event.event_id).await?;
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        // What follows may move the order; only a payment taken says where to (paid), anything
        // else is read afresh.
        self.remember(None);
        match (event.kind, order.status) {
            (PaymentEventKind::Succeeded, OrderStatus::Pending) => {
                let taken = Taken {
                    intent_id: &event.intent_id,
                    amount: event.amount,
                    currency: &event.currency,
                    event_id: Some(&event.event_id),
                };
                self.on_taken(&order, &taken).await?;
            }
            (PaymentEventKind::Succeeded, OrderStatus::Cancelled) => {
                if ledger.refund_late_payment(self.order_id, &event).await? {
                    tracing::warn!(order = %self.order_id, amount = event.amount, "late payment; refund owed");
                    metrics::counter!("late_payments_total").increment(1);
                }
                self.deps.refunds.kick();
            }
            (PaymentEventKind::Failed, OrderStatus::Pending) => {
                ledger.record_failed_payment(self.order_id, &event).await?;
            }
            (PaymentEventKind::Refunded, _) => {
                ledger.record_refunded(self.order_id, &event).await?;
            }
            // Anything else is stale or a repeat: events only move an order forward.
            _ => ledger.mark_processed(&event.event_id).await?,
        }
        Ok(())
    }

    /// A pending order's payment was taken: paid if it matches and its stock is still held,
    /// else cancelled with the money owed back.
    async fn on_taken(&self, order: &OrderSnapshot, taken: &Taken<'_>) -> Result<(), SagaError> {
        if taken.amount != order.total || taken.currency != order.currency {
            tracing::error!(order = %self.order_id, amount = taken.amount, currency = %taken.currency,
                expected = order.total, expected_currency = %order.currency,
                "a payment does not match its order; cancelling the order and refunding it");
            metrics::counter!("payment_mismatches_total").increment(1);
            self.release_stock().await;
            return self
                .cancel_and_refund(
                    order,
                    taken,
                    RefundReason::Mismatch,
                    "the payment did not match the order",
                )
                .await;
        }
        let inventory = &self.deps.inventory;
        let owner = self.order_id;
        // Retried until every shard has answered: an error is not "no stock held".
        let holding = &self.holding;
        let sold = with_retries("committing stock", COMMIT_BUDGET, || {
            inventory.commit_holding(owner, holding)
        })
        .await
        .map_err(|e| SagaError::Unavailable(format!("stock commit: {e}")))?;
        if sold == order.reserved_units {
            if let Some(coupon) = order.coupon_id {
                let coupons = &self.deps.coupons;
                let committed = with_retries("committing the coupon use", COMMIT_BUDGET, || {
                    let commit = coupons.commit(coupon, owner);
                    async move {
                        match commit.await {
                            // Nothing to retry: decided below.
                            Err(CouponError::NotHeld) => Ok(Err(CouponError::NotHeld)),
                            other => other.map(Ok),
                        }
                    }
                })
                .await
                .map_err(|e| SagaError::Unavailable(format!("coupon commit: {e:?}")))?;
                if let Err(not_held) = committed {
                    // The customer paid the discounted price; the use was not on record (a
                    // bug, not a race): paid all the same, and loud.
                    tracing::error!(order = %owner, %coupon, ?not_held, "paid order whose coupon use was not held");
                    metrics::counter!("coupon_uses_unrecorded_total").increment(1);
                }
            }
            if !self
                .deps
                .ledger
                .mark_paid(self.order_id, taken.event_id)
                .await?
            {
                // Someone moved it meanwhile: the event is handed over again and meets the new
                // status.
                return Err(SagaError::Unavailable("the order changed meanwhile".into()));
            }
            self.remember(Some(OrderSnapshot {
                status: OrderStatus::Paid,
                ..order.clone()
            }));
            return Ok(());
        }
        // Some holds were gone (expired or released) before the payment: the goods may be sold
        // to someone else, so what was sold goes back to the shelf and the money back.
        tracing::warn!(order = %self.order_id, sold, held = order.reserved_units,
            "paid after its stock was released; cancelling and refunding");
        with_retries("restocking", COMMIT_BUDGET, || {
            inventory.restock_holding(owner, holding)
        })
        .await
        .map_err(|e| SagaError::Unavailable(format!("restock: {e}")))?;
        self.release_stock().await;
        self.cancel_and_refund(
            order,
            taken,
            RefundReason::LatePayment,
            "paid after the reservation expired",
        )
        .await
    }

    /// Cancels the pending order and owes its payment back, with the event, in one transaction.
    async fn cancel_and_refund(
        &self,
        order: &OrderSnapshot,
        taken: &Taken<'_>,
        reason: RefundReason,
        why: &str,
    ) -> Result<(), SagaError> {
        if let Some(coupon) = order.coupon_id {
            self.release_coupon(coupon).await?;
        }
        let refund = OwedRefund {
            intent_id: taken.intent_id,
            amount: taken.amount,
            currency: taken.currency,
            reason,
        };
        let moved = self
            .deps
            .ledger
            .cancel_and_refund(self.order_id, refund, why, taken.event_id)
            .await?;
        if !moved {
            return Err(SagaError::Unavailable("the order changed meanwhile".into()));
        }
        self.deps.refunds.kick();
        Ok(())
    }

    // ---- step 4: deadline and cancels ----

    /// Cancels a pending order: the intent first (if it already succeeded, the order is paid
    /// instead), then the status, which decides it. `NotPending` when it was not (or no longer)
    /// pending. With a caller's `deadline`, a provider that has not answered the cancel by then
    /// leaves the order as it is (`Unavailable`). What the order held is given back afterwards,
    /// by [`give_back`](Self::give_back): a caller waits for that until its deadline, not past it.
    #[tracing::instrument(name = "saga cancel", skip_all, fields(order = %self.order_id))]
    async fn cancel(
        &self,
        actor: &str,
        reason: &str,
        deadline: Option<Instant>,
    ) -> Result<Cancelled, SagaError> {
        let ledger = &self.deps.ledger;
        let order = self.order().await?;
        // Whatever happens below, the order is read afresh after it.
        self.remember(None);
        if order.status != OrderStatus::Pending {
            return Err(SagaError::NotPending(order.status));
        }
        if let Some(intent) = &order.payment_intent_id {
            let cancelling = self.cancel_intent(&order, intent);
            let cancelled = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), cancelling)
                    .await
                    .map_err(|_| {
                        SagaError::Unavailable(
                            "the provider did not answer the cancel in time; the order is unchanged"
                                .into(),
                        )
                    })?,
                None => cancelling.await,
            };
            if let Some(paid) = cancelled? {
                // Taken before we could cancel: the order is paid (or refunded) instead.
                let taken = Taken {
                    intent_id: &paid.id,
                    amount: paid.amount_received,
                    currency: &paid.currency,
                    event_id: None,
                };
                self.on_taken(&order, &taken).await?;
                let now = ledger
                    .status_of(self.order_id)
                    .await?
                    .ok_or(SagaError::NotFound)?;
                return Err(SagaError::NotPending(now));
            }
        }
        if !ledger.cancel(self.order_id, actor, reason).await? {
            let now = ledger
                .status_of(self.order_id)
                .await?
                .ok_or(SagaError::NotFound)?;
            return Err(SagaError::NotPending(now));
        }
        Ok(Cancelled {
            coupon: order.coupon_id,
        })
    }

    /// Gives back what a cancelled order held: its stock (a release that keeps failing leaves
    /// the holds to expire) and its coupon use (one that cannot be released now is released by
    /// the limiter's reconciliation, the order being cancelled).
    async fn give_back(&self, cancelled: Cancelled) {
        self.release_stock().await;
        if let Some(coupon) = cancelled.coupon
            && let Err(error) = self.release_coupon(coupon).await
        {
            tracing::error!(order = %self.order_id, %coupon, %error,
                "a cancelled order's coupon use is still held; the limiter's reconciliation releases it");
        }
    }

    /// Cancels the order's intent. `Some(intent)` when the provider says the money was already
    /// taken; an error when it cannot say (the order must then stay as it is).
    async fn cancel_intent(
        &self,
        order: &OrderSnapshot,
        intent: &str,
    ) -> Result<Option<PaymentIntent>, SagaError> {
        let key = IdempotencyKey::cancel(self.order_id, order.payment_attempt.max(1) as u32);
        let refused = match self.deps.payments.cancel(intent, &key).await {
            Ok(_) => return Ok(None),
            Err(error) => error,
        };
        // Refused (already succeeded or canceled) or no answer: ask what the intent is.
        let now = self.deps.payments.retrieve(intent).await.map_err(|e| {
            SagaError::Unavailable(format!("cancelling the payment: {refused}; {e}"))
        })?;
        match now.status {
            IntentStatus::Canceled => Ok(None),
            IntentStatus::Succeeded => Ok(Some(now)),
            // Still cancellable: the refusal was of its time (the intent was processing) and the
            // provider keeps answering that key with it. Cancelling twice is harmless, so a key
            // of its own for this try.
            IntentStatus::RequiresPaymentMethod
            | IntentStatus::RequiresConfirmation
            | IntentStatus::RequiresAction => {
                let again = IdempotencyKey::cancel_again(self.order_id);
                match self.deps.payments.cancel(intent, &again).await {
                    Ok(_) => Ok(None),
                    Err(error) => Err(SagaError::Unavailable(format!(
                        "the payment could not be cancelled: {error}"
                    ))),
                }
            }
            // Money in flight or an intent that can still be paid: not cancellable now.
            _ => Err(SagaError::Unavailable(format!(
                "the payment could not be cancelled ({}): {refused}",
                now.status
            ))),
        }
    }

    #[tracing::instrument(name = "saga expire", skip_all, fields(order = %self.order_id))]
    async fn expire(&self) -> Result<(), SagaError> {
        self.remember(None);
        match self.cancel("system", "reservation expired", None).await {
            Ok(cancelled) => {
                metrics::counter!("orders_expired_total").increment(1);
                self.give_back(cancelled).await;
                Ok(())
            }
            Err(SagaError::NotPending(_) | SagaError::NotFound) => Ok(()),
            // Cancelling pays nothing, so the provider never judges a payment method here.
            Err(SagaError::Unavailable(why) | SagaError::PaymentMethodRefused(why)) => {
                // Nothing was changed; the deadline is tried again shortly.
                tracing::warn!(order = %self.order_id, %why, "expiry postponed");
                self.expire_in(EXPIRY_RETRY);
                Ok(())
            }
        }
    }

    // ---- paying ----

    #[tracing::instrument(name = "saga pay", skip_all, fields(order = %self.order_id))]
    async fn pay(
        &self,
        payment_method: &str,
        deadline: Instant,
    ) -> Result<PaymentAttempt, SagaError> {
        let ledger = &self.deps.ledger;
        let order = self.order().await?;
        if order.status != OrderStatus::Pending {
            return Err(SagaError::NotPending(order.status));
        }
        let intent = order
            .payment_intent_id
            .clone()
            .ok_or_else(|| SagaError::Unavailable("the order has no payment intent".into()))?;
        // Each attempt has a key of its own: a retry after a decline is a new confirmation.
        let attempt = ledger.next_payment_attempt(self.order_id).await?;
        self.remember(Some(OrderSnapshot {
            payment_attempt: attempt,
            ..order
        }));
        let key = IdempotencyKey::confirm(self.order_id, attempt as u32);
        let payments = self.deps.payments.as_ref();
        let unknown = |why: String| {
            SagaError::Unavailable(format!(
                "the payment's outcome is not known yet ({why}); the order will show it"
            ))
        };
        let confirm = payments.confirm(&intent, payment_method, &key);
        let confirmed = match tokio::time::timeout_at(deadline.into(), confirm).await {
            Err(_) => return Err(unknown("no answer before the deadline".into())),
            Ok(Ok(confirmed)) => confirmed,
            // No answer, or refused (e.g. already succeeded): the intent itself says where the
            // money is, so the answer is never "unavailable" for a payment that went through.
            Ok(Err(error)) => {
                let retrieve = payments.retrieve(&intent);
                match tokio::time::timeout_at(deadline.into(), retrieve).await {
                    Ok(Ok(now)) if now.status == IntentStatus::Succeeded => now,
                    // The provider judged the request and said no: nothing was charged.
                    Ok(Ok(_))
                        if matches!(
                            error,
                            PaymentError::NotFound(_)
                                | PaymentError::Invalid(_)
                                | PaymentError::Refused { .. }
                        ) =>
                    {
                        return Err(SagaError::PaymentMethodRefused(error.to_string()));
                    }
                    _ => return Err(unknown(error.to_string())),
                }
            }
        };
        let status = if confirmed.declined() {
            "failed".to_owned()
        } else {
            confirmed.status.as_str().to_owned()
        };
        if confirmed.status != IntentStatus::Succeeded {
            ledger
                .record_attempt(
                    self.order_id,
                    &status,
                    confirmed.last_payment_error.as_deref(),
                )
                .await?;
        }
        Ok(PaymentAttempt {
            status,
            error: confirmed.last_payment_error,
        })
    }
}

fn too_late() -> SagaError {
    SagaError::Unavailable(
        "the order was busy past the request's deadline; nothing was done".into(),
    )
}

impl ShopActor for OrderSaga {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = SagaMsg;
    type State = SagaState;
    type Arguments = SagaArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<SagaMsg>,
        args: SagaArgs,
    ) -> Result<SagaState, ActorProcessingErr> {
        let span = if args.parent.is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(parent: &args.parent, "order saga", order = %args.order_id)
        };
        let state = SagaState {
            order_id: args.order_id,
            deps: args.deps,
            myself,
            holding: Holding::anywhere(),
            known: Mutex::new(None),
            span,
        };
        // A resumed saga (the order exists) picks its deadline up again.
        if !args.fresh
            && let Some(order) = state.deps.ledger.snapshot(state.order_id).await?
            && order.status == OrderStatus::Pending
        {
            state.schedule_expiry(order.expires_at);
            // A free order waits for nobody: a saga resumed for one (its checkout's saga failed
            // or crashed before it was paid) settles it.
            if order.total == 0 {
                state.myself.cast(SagaMsg::SettleFree { attempt: 0 })?;
            }
        }
        Ok(state)
    }

    /// A command is handled in its caller's trace; what happens to the order on its own (a
    /// payment event, the deadline, settling a free order) in the saga's.
    fn span<'a>(&self, message: &SagaMsg, state: &'a SagaState) -> Option<&'a tracing::Span> {
        match message {
            SagaMsg::Payment(_) | SagaMsg::Expire | SagaMsg::SettleFree { .. } => Some(&state.span),
            SagaMsg::Begin(..) | SagaMsg::Pay { .. } | SagaMsg::Cancel { .. } => None,
        }
    }

    async fn handle(
        &self,
        _myself: Mailbox<SagaMsg>,
        message: SagaMsg,
        state: &mut SagaState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SagaMsg::Begin(checkout, reply) => {
                let result = state.begin(*checkout).await;
                let failed = result.is_err();
                // The caller may have given up: the order (or nothing) stands either way, and a
                // retried checkout finds it.
                let _ = reply.send(result);
                if failed {
                    // Whatever row may yet appear is adopted by the supervisor's sweep, with a
                    // saga that arms its deadline; this one has none.
                    state.myself.cell().stop(Some("checkout failed".into()));
                    return Ok(());
                }
            }
            // An effect that could not be committed fails the saga: its supervisor resumes it
            // and the router hands the still unprocessed event over again.
            SagaMsg::Payment(event) => state.on_payment(event).await?,
            SagaMsg::Pay {
                payment_method,
                deadline,
                reply,
            } => {
                let _ = reply.send(state.pay(&payment_method, deadline).await);
            }
            SagaMsg::Cancel {
                actor,
                reason,
                deadline,
                reply,
            } => {
                let answer = if Instant::now() >= deadline {
                    Err(too_late())
                } else {
                    state.cancel(actor, &reason, Some(deadline)).await
                };
                match answer {
                    Ok(cancelled) => {
                        // Answered once the stock and coupon are back, or at the deadline if
                        // giving them back takes longer (the cancel is decided either way);
                        // then they follow.
                        let giving_back = state.give_back(cancelled);
                        tokio::pin!(giving_back);
                        let in_time =
                            tokio::time::timeout_at(deadline.into(), &mut giving_back).await;
                        let _ = reply.send(Ok(()));
                        if in_time.is_err() {
                            giving_back.await;
                        }
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            SagaMsg::Expire => state.expire().await?,
            SagaMsg::SettleFree { attempt } => state.retry_free(attempt).await?,
        }
        state.stop_if_settled().await?;
        Ok(())
    }
}
