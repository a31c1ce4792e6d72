//! The order saga: one actor per order in flight. It walks reserve stock → persist the order →
//! create the payment intent → wait for the payment event or the deadline → commit the stock and
//! mark the order paid, or release the stock and cancel. Every step is persisted, so a saga
//! resumed after a restart continues from the step the order reached; payment events are
//! triggers, the saga re-reads the order and only moves forward.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{ActorProcessingErr, RpcReplyPort};
use shop_actors::inventory::{Demand, Inventory, InventoryError, Shortage};
use shop_actors::{Mailbox, ShopActor};
use sqlx::PgPool;
use uuid::Uuid;

use super::OrderStatus;
use super::store::{self, NewOrder};
use crate::messaging::OrderEmailKind;
use crate::payments::{
    IdempotencyKey, IntentStatus, PaymentEvent, PaymentEventKind, PaymentProvider,
};

/// Why a checkout did not produce an order.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckoutError {
    #[error("not enough stock")]
    Short(Vec<Shortage>),
    #[error("the same idempotency key was used for another order")]
    KeyReused(Uuid),
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
    #[error("{0}")]
    Unavailable(String),
}

pub struct Checkout {
    pub order: NewOrder,
    pub idempotency: Option<(String, Vec<u8>)>,
    pub ttl: Duration,
}

pub enum SagaMsg {
    /// Run the checkout steps of a new order, then answer.
    Begin(Box<Checkout>, RpcReplyPort<Result<Uuid, CheckoutError>>),
    /// A verified payment event for this order.
    Payment(PaymentEvent),
    /// Confirm the payment with a payment method.
    Pay {
        payment_method: String,
        reply: RpcReplyPort<Result<PaymentAttempt, SagaError>>,
    },
    /// Cancel on behalf of `actor` (customer or admin).
    Cancel {
        actor: &'static str,
        reason: String,
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
    /// The reservation deadline has come.
    Expire,
}

#[derive(Clone)]
pub struct SagaDeps {
    pub db: PgPool,
    pub inventory: Inventory,
    pub payments: PaymentProvider,
}

pub struct SagaArgs {
    pub order_id: Uuid,
    pub deps: SagaDeps,
}

pub struct SagaState {
    order_id: Uuid,
    deps: SagaDeps,
    myself: Mailbox<SagaMsg>,
}

pub struct OrderSaga;

impl OrderSaga {
    pub const KIND_NAME: &'static str = "order_saga";
}

/// What the saga reads of its order before each decision.
#[derive(sqlx::FromRow)]
struct Snapshot {
    status: String,
    total: i64,
    currency: String,
    expires_at: DateTime<Utc>,
    payment_intent_id: Option<String>,
    payment_attempt: i32,
    units: i64,
}

async fn snapshot(db: &PgPool, order: Uuid) -> Result<Option<Snapshot>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.status, o.total, o.currency, o.expires_at, o.payment_intent_id, o.payment_attempt,
                (SELECT coalesce(sum(i.quantity), 0) FROM order_items i WHERE i.order_id = o.id) AS units
         FROM orders o WHERE o.id = $1",
    )
    .bind(order)
    .fetch_optional(db)
    .await
}

impl SagaState {
    fn schedule_expiry(&self, at: DateTime<Utc>) {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        let myself = self.myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = myself.cast(SagaMsg::Expire);
        });
    }

    fn done(&self) {
        self.myself.cell().stop(Some("order settled".into()));
    }

    async fn begin(&self, checkout: Checkout) -> Result<Uuid, CheckoutError> {
        let db = &self.deps.db;
        let order = &checkout.order;
        let demand: Vec<Demand> = order
            .lines
            .iter()
            .map(|l| Demand {
                variant_id: l.variant_id,
                quantity: l.quantity,
            })
            .collect();
        // 1. Stock first: a short order leaves nothing behind.
        match self
            .deps
            .inventory
            .reserve(order.id, &demand, checkout.ttl)
            .await
        {
            Ok(()) => {}
            Err(InventoryError::Short(short)) => return Err(CheckoutError::Short(short)),
            Err(error) => return Err(CheckoutError::Unavailable(error.to_string())),
        }
        let unavailable = |e: sqlx::Error| CheckoutError::Unavailable(e.to_string());
        // 2. The order, as of step `reserved`.
        let persisted = async {
            let mut tx = db.begin().await?;
            store::insert(&mut tx, order).await?;
            tx.commit().await
        }
        .await;
        if let Err(error) = persisted {
            let _ = self.deps.inventory.release(order.id).await;
            return Err(unavailable(error));
        }
        // 3. The payment intent (idempotent by order and attempt).
        let intent = self
            .deps
            .payments
            .create_intent(
                order.id,
                1,
                order.subtotal - order.discount_total,
                &order.currency,
                Default::default(),
            )
            .await;
        let intent = match intent {
            Ok(intent) => intent,
            Err(error) => {
                self.cancel(
                    OrderStatus::Pending,
                    "system",
                    "the payment provider is unavailable",
                )
                .await;
                return Err(CheckoutError::Unavailable(error.to_string()));
            }
        };
        // 4. Step `awaiting_payment`, and the idempotency key now names this order.
        let recorded = async {
            let mut tx = db.begin().await?;
            sqlx::query(
                "UPDATE orders SET payment_intent_id = $2, payment_client_secret = $3,
                        payment_status = $4, saga_step = 'awaiting_payment' WHERE id = $1",
            )
            .bind(order.id)
            .bind(&intent.id)
            .bind(&intent.client_secret)
            .bind(intent.status.as_str())
            .execute(&mut *tx)
            .await?;
            if let Some((key, hash)) = &checkout.idempotency {
                store::remember_checkout(&mut tx, order.user_id, key, hash, order.id).await?;
            }
            tx.commit().await
        }
        .await;
        match recorded {
            Ok(()) => {
                self.schedule_expiry(order.expires_at);
                Ok(order.id)
            }
            Err(error) => {
                self.cancel(
                    OrderStatus::Pending,
                    "system",
                    "checkout could not be completed",
                )
                .await;
                // A concurrent checkout with the same key won: answer with its order.
                if let Some((key, _)) = &checkout.idempotency
                    && let Ok(Some((existing, _))) =
                        store::checkout_request(db, order.user_id, key).await
                {
                    return Err(CheckoutError::KeyReused(existing));
                }
                Err(unavailable(error))
            }
        }
    }

    /// Cancels a pending order: the intent is cancelled, the stock released, the status moved.
    async fn cancel(&self, expected: OrderStatus, actor: &str, reason: &str) -> bool {
        let db = &self.deps.db;
        let Ok(Some(order)) = snapshot(db, self.order_id).await else {
            return false;
        };
        if OrderStatus::parse(&order.status) != expected {
            return false;
        }
        if let Some(intent) = &order.payment_intent_id {
            let key = IdempotencyKey::cancel(self.order_id, order.payment_attempt.max(1) as u32);
            if let Err(error) = self.deps.payments.cancel(intent, &key).await {
                // Already succeeded or canceled: a late success is refunded when its event comes.
                tracing::warn!(order = %self.order_id, %error, "cancelling the payment intent failed");
            }
        }
        if let Err(error) = self.deps.inventory.release(self.order_id).await {
            tracing::warn!(order = %self.order_id, %error, "release failed; the holds expire on their own");
        }
        let moved = async {
            let mut tx = db.begin().await?;
            let moved = store::transition(
                &mut tx,
                self.order_id,
                expected,
                OrderStatus::Cancelled,
                actor,
                Some(reason),
            )
            .await?;
            if moved {
                sqlx::query("UPDATE orders SET saga_step = 'done' WHERE id = $1")
                    .bind(self.order_id)
                    .execute(&mut *tx)
                    .await?;
                crate::orders::notify::order_changed(
                    &mut tx,
                    self.order_id,
                    OrderEmailKind::Cancelled,
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(moved)
        }
        .await;
        matches!(moved, Ok(true))
    }

    async fn on_payment(&self, event: PaymentEvent) -> Result<(), sqlx::Error> {
        let db = self.deps.db.clone();
        let Some(order) = snapshot(&db, self.order_id).await? else {
            return Ok(());
        };
        let status = OrderStatus::parse(&order.status);
        match (event.kind, status) {
            (PaymentEventKind::Succeeded, OrderStatus::Pending) => {
                if event.amount != order.total || event.currency != order.currency {
                    tracing::error!(order = %self.order_id, amount = event.amount, currency = %event.currency,
                        "a payment does not match its order; it stays pending for a person to look at");
                    metrics::counter!("payment_mismatches_total").increment(1);
                } else {
                    let committed = self.deps.inventory.commit(self.order_id).await.unwrap_or(0);
                    if i64::from(committed) == order.units {
                        let mut tx = db.begin().await?;
                        if store::transition(
                            &mut tx,
                            self.order_id,
                            OrderStatus::Pending,
                            OrderStatus::Paid,
                            "system",
                            Some("payment succeeded"),
                        )
                        .await?
                        {
                            sqlx::query("UPDATE orders SET payment_status = 'succeeded', payment_error = NULL, saga_step = 'done' WHERE id = $1")
                                .bind(self.order_id)
                                .execute(&mut *tx)
                                .await?;
                            crate::orders::notify::order_changed(
                                &mut tx,
                                self.order_id,
                                OrderEmailKind::Paid,
                            )
                            .await?;
                        }
                        crate::payments::events::mark_processed(&mut *tx, &event.event_id).await?;
                        tx.commit().await?;
                        self.done();
                        return Ok(());
                    }
                    // The holds were gone (expired or released): the goods may be sold to someone
                    // else, so the money goes back.
                    tracing::warn!(order = %self.order_id, committed, "paid after its stock was released; refunding");
                    self.cancel(
                        OrderStatus::Pending,
                        "system",
                        "paid after the reservation expired",
                    )
                    .await;
                    self.refund_late(&event).await;
                }
            }
            (PaymentEventKind::Succeeded, OrderStatus::Cancelled) => self.refund_late(&event).await,
            (PaymentEventKind::Failed, OrderStatus::Pending) => {
                sqlx::query("UPDATE orders SET payment_status = 'failed', payment_error = $2 WHERE id = $1 AND status = 'pending'")
                    .bind(self.order_id)
                    .bind(&event.error)
                    .execute(&db)
                    .await?;
            }
            (
                PaymentEventKind::Refunded,
                OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered,
            ) => {
                let mut tx = db.begin().await?;
                if store::transition(
                    &mut tx,
                    self.order_id,
                    status,
                    OrderStatus::Refunded,
                    "system",
                    Some("charge refunded"),
                )
                .await?
                {
                    crate::orders::notify::order_changed(
                        &mut tx,
                        self.order_id,
                        OrderEmailKind::Refunded,
                    )
                    .await?;
                }
                tx.commit().await?;
            }
            // Anything else is stale or a repeat: events only move an order forward.
            _ => {}
        }
        crate::payments::events::mark_processed(&db, &event.event_id).await?;
        if status.is_final() {
            self.done();
        }
        Ok(())
    }

    /// A payment that succeeded for an order that will not ship is refunded, and logged.
    async fn refund_late(&self, event: &PaymentEvent) {
        let key = IdempotencyKey::refund(self.order_id, 1);
        match self
            .deps
            .payments
            .refund(&event.intent_id, None, &key)
            .await
        {
            Ok(refund) => {
                tracing::warn!(order = %self.order_id, refund = %refund.id, "late payment refunded");
                let _ = store::record_history(
                    &self.deps.db,
                    self.order_id,
                    Some(OrderStatus::Cancelled),
                    OrderStatus::Cancelled,
                    "system",
                    Some("a payment arrived after cancellation and was refunded"),
                )
                .await;
                metrics::counter!("late_payments_refunded_total").increment(1);
            }
            Err(error) => {
                tracing::error!(order = %self.order_id, %error, "refunding a late payment failed")
            }
        }
    }

    async fn pay(&self, payment_method: &str) -> Result<PaymentAttempt, SagaError> {
        let db = &self.deps.db;
        let order = snapshot(db, self.order_id)
            .await
            .map_err(|e| SagaError::Unavailable(e.to_string()))?
            .ok_or_else(|| SagaError::Unavailable("order vanished".into()))?;
        let status = OrderStatus::parse(&order.status);
        if status != OrderStatus::Pending {
            return Err(SagaError::NotPending(status));
        }
        let intent = order
            .payment_intent_id
            .ok_or_else(|| SagaError::Unavailable("the order has no payment intent".into()))?;
        // Each attempt has a key of its own: a retry after a decline is a new confirmation.
        let attempt: i32 = sqlx::query_scalar(
            "UPDATE orders SET payment_attempt = payment_attempt + 1 WHERE id = $1 RETURNING payment_attempt",
        )
        .bind(self.order_id)
        .fetch_one(db)
        .await
        .map_err(|e| SagaError::Unavailable(e.to_string()))?;
        let key = IdempotencyKey::confirm(self.order_id, attempt as u32);
        let confirmed = self
            .deps
            .payments
            .confirm(&intent, payment_method, &key)
            .await
            .map_err(|e| SagaError::Unavailable(e.to_string()))?;
        let status = if confirmed.declined() {
            "failed".to_owned()
        } else {
            confirmed.status.as_str().to_owned()
        };
        if confirmed.status != IntentStatus::Succeeded {
            let _ = sqlx::query("UPDATE orders SET payment_status = $2, payment_error = $3 WHERE id = $1 AND status = 'pending'")
                .bind(self.order_id)
                .bind(&status)
                .bind(&confirmed.last_payment_error)
                .execute(db)
                .await;
        }
        Ok(PaymentAttempt {
            status,
            error: confirmed.last_payment_error,
        })
    }
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
        let state = SagaState {
            order_id: args.order_id,
            deps: args.deps,
            myself,
        };
        // A resumed saga (the order exists) picks its deadline up again.
        if let Some(order) = snapshot(&state.deps.db, state.order_id).await?
            && OrderStatus::parse(&order.status) == OrderStatus::Pending
        {
            state.schedule_expiry(order.expires_at);
        }
        Ok(state)
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
                let _ = reply.send(result);
                if failed {
                    state.done();
                }
            }
            SagaMsg::Payment(event) => state.on_payment(event).await?,
            SagaMsg::Pay {
                payment_method,
                reply,
            } => {
                let _ = reply.send(state.pay(&payment_method).await);
            }
            SagaMsg::Cancel {
                actor,
                reason,
                reply,
            } => {
                let answer = if state.cancel(OrderStatus::Pending, actor, &reason).await {
                    state.done();
                    Ok(())
                } else {
                    let status = store::status_of(&state.deps.db, state.order_id)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(OrderStatus::Cancelled);
                    Err(SagaError::NotPending(status))
                };
                let _ = reply.send(answer);
            }
            SagaMsg::Expire => {
                if state
                    .cancel(OrderStatus::Pending, "system", "reservation expired")
                    .await
                {
                    metrics::counter!("orders_expired_total").increment(1);
                }
                if let Ok(Some(status)) = store::status_of(&state.deps.db, state.order_id).await
                    && status.is_final()
                {
                    state.done();
                }
            }
        }
        Ok(())
    }
}
