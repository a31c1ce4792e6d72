//! The order saga's persistence in PostgreSQL ([`OrderLedger`]): each step one transaction, and
//! the payment event it settles marked processed in that same transaction.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use shop_actors::orders::{LedgerError, NewOrder, OrderLedger, OrderSnapshot, OwedRefund};
use shop_actors::partition::Fence;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::OrderStatus;
use super::store::{self, TransitionError};
use crate::payments::events::mark_processed;
use crate::payments::refunds::{self, Owed, RefundReason};
use crate::payments::{PaymentEvent, PaymentIntent};

#[derive(Clone)]
pub struct PgOrderLedger {
    db: PgPool,
    /// Every step writes state of its order's partition: each transaction proves it first.
    fence: Fence,
}

impl PgOrderLedger {
    pub fn new(db: PgPool, fence: Fence) -> Self {
        Self { db, fence }
    }
}

fn failed(error: impl std::fmt::Display) -> LedgerError {
    LedgerError(error.to_string())
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    status: String,
    total: i64,
    currency: String,
    expires_at: DateTime<Utc>,
    payment_intent_id: Option<String>,
    payment_attempt: i32,
    reserved_units: i32,
    coupon_id: Option<Uuid>,
}

/// The refund of a payment that pays for nothing: one per payment, whichever path (a mismatch,
/// a late event, a cancel that found it taken) decides it first.
fn owed<'a>(
    order: Uuid,
    intent_id: &'a str,
    amount: i64,
    currency: &'a str,
    reason: RefundReason,
) -> Owed<'a> {
    Owed {
        order_id: order,
        intent_id,
        amount,
        currency,
        reason,
        dedup_key: format!("payment:{intent_id}"),
    }
}

async fn processed(tx: &mut PgConnection, event: Option<&str>) -> Result<(), sqlx::Error> {
    if let Some(event) = event {
        mark_processed(&mut *tx, event).await?;
    }
    Ok(())
}

impl PgOrderLedger {
    async fn mark_paid(&self, order: Uuid, event: Option<&str>) -> Result<bool, TransitionError> {
        let mut tx = self.db.begin().await?;
        self.fence.check(&mut tx, [order]).await?;
        let moved = store::transition(
            &mut tx,
            order,
            OrderStatus::Pending,
            OrderStatus::Paid,
            "system",
            Some("payment succeeded"),
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE orders SET payment_status = 'succeeded', payment_error = NULL WHERE id = $1",
        )
        .bind(order)
        .execute(&mut *tx)
        .await?;
        processed(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn cancel_and_refund(
        &self,
        order: Uuid,
        refund: OwedRefund<'_>,
        why: &str,
        event: Option<&str>,
    ) -> Result<bool, TransitionError> {
        let mut tx = self.db.begin().await?;
        self.fence.check(&mut tx, [order]).await?;
        let moved = store::transition(
            &mut tx,
            order,
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            "system",
            Some(why),
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        let decided = owed(
            order,
            refund.intent_id,
            refund.amount,
            refund.currency,
            refund.reason,
        );
        refunds::owe(&mut tx, decided).await?;
        sqlx::query("UPDATE orders SET payment_status = 'succeeded' WHERE id = $1")
            .bind(order)
            .execute(&mut *tx)
            .await?;
        processed(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn refund_late_payment(
        &self,
        order: Uuid,
        event: &PaymentEvent,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        self.fence.check(&mut tx, [order]).await?;
        let decided = owed(
            order,
            &event.intent_id,
            event.amount,
            &event.currency,
            RefundReason::LatePayment,
        );
        let owed = refunds::owe(&mut tx, decided).await?;
        mark_processed(&mut *tx, &event.event_id).await?;
        if owed {
            store::record_history(
                &mut *tx,
                order,
                Some(OrderStatus::Cancelled),
                OrderStatus::Cancelled,
                "system",
                Some("a payment arrived after cancellation; it is refunded"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(owed)
    }

    async fn record_failed_payment(
        &self,
        order: Uuid,
        event: &PaymentEvent,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        self.fence.check(&mut tx, [order]).await?;
        sqlx::query(
            "UPDATE orders SET payment_status = 'failed', payment_error = $2
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(order)
        .bind(&event.error)
        .execute(&mut *tx)
        .await?;
        mark_processed(&mut *tx, &event.event_id).await?;
        tx.commit().await
    }

    async fn record_refunded(
        &self,
        order: Uuid,
        event: &PaymentEvent,
    ) -> Result<(), TransitionError> {
        let mut tx = self.db.begin().await?;
        self.fence.check(&mut tx, [order]).await?;
        store::record_refunded(&mut tx, order, event.amount).await?;
        mark_processed(&mut *tx, &event.event_id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel(
        &self,
        order: Uuid,
        actor: &str,
        reason: &str,
    ) -> Result<bool, TransitionError> {
        let mut tx = self.db.begin().await?;
        self.fence.check(&mut tx, [order]).await?;
        let moved = store::transition(
            &mut tx,
            order,
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            actor,
            Some(reason),
        )
        .await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn create_order(
        &self,
        order: &NewOrder,
        intent: Option<&PaymentIntent>,
        reserved_units: i32,
        idempotency: Option<&(String, Vec<u8>)>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        // The order's partition, and its cart's, which this transaction empties.
        let keys = std::iter::once(order.id).chain(order.cart_id);
        self.fence.check(&mut tx, keys).await?;
        store::insert(&mut tx, order, intent, reserved_units).await?;
        if let Some(cart) = order.cart_id {
            shop_actors::carts::empty_in(&mut tx, cart).await?;
        }
        if let Some((key, hash)) = idempotency {
            store::remember_checkout(&mut tx, order.user_id, key, hash, order.id).await?;
        }
        tx.commit().await
    }
}

impl OrderLedger for PgOrderLedger {
    fn snapshot(&self, order: Uuid) -> BoxFuture<'_, Result<Option<OrderSnapshot>, LedgerError>> {
        Box::pin(async move {
            let row: Option<SnapshotRow> = sqlx::query_as(
                "SELECT status, total, currency, expires_at, payment_intent_id, payment_attempt,
                        reserved_units, coupon_id
                 FROM orders WHERE id = $1",
            )
            .bind(order)
            .fetch_optional(&self.db)
            .await
            .map_err(failed)?;
            row.map(|row| {
                Ok(OrderSnapshot {
                    status: OrderStatus::parse(&row.status).map_err(failed)?,
                    total: row.total,
                    currency: row.currency,
                    expires_at: row.expires_at,
                    payment_intent_id: row.payment_intent_id,
                    payment_attempt: row.payment_attempt,
                    reserved_units: row.reserved_units,
                    coupon_id: row.coupon_id,
                })
            })
            .transpose()
        })
    }

    fn status_of(&self, order: Uuid) -> BoxFuture<'_, Result<Option<OrderStatus>, LedgerError>> {
        Box::pin(async move { store::status_of(&self.db, order).await.map_err(failed) })
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Uuid>, LedgerError>> {
        Box::pin(async move { store::unfinished(&self.db).await.map_err(failed) })
    }

    fn create_order<'a>(
        &'a self,
        order: &'a NewOrder,
        intent: Option<&'a PaymentIntent>,
        reserved_units: i32,
        idempotency: Option<&'a (String, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::create_order(self, order, intent, reserved_units, idempotency)
                .await
                .map_err(failed)
        })
    }

    fn checkout_by_key<'a>(
        &'a self,
        user: Uuid,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, LedgerError>> {
        Box::pin(async move {
            let found = store::checkout_request(&self.db, user, key)
                .await
                .map_err(failed)?;
            Ok(found.map(|(order, _)| order))
        })
    }

    fn mark_paid<'a>(
        &'a self,
        order: Uuid,
        event: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::mark_paid(self, order, event)
                .await
                .map_err(failed)
        })
    }

    fn cancel_and_refund<'a>(
        &'a self,
        order: Uuid,
        refund: OwedRefund<'a>,
        why: &'a str,
        event: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::cancel_and_refund(self, order, refund, why, event)
                .await
                .map_err(failed)
        })
    }

    fn refund_late_payment<'a>(
        &'a self,
        order: Uuid,
        event: &'a PaymentEvent,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::refund_late_payment(self, order, event)
                .await
                .map_err(failed)
        })
    }

    fn record_failed_payment<'a>(
        &'a self,
        order: Uuid,
        event: &'a PaymentEvent,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::record_failed_payment(self, order, event)
                .await
                .map_err(failed)
        })
    }

    fn record_refunded<'a>(
        &'a self,
        order: Uuid,
        event: &'a PaymentEvent,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::record_refunded(self, order, event)
                .await
                .map_err(failed)
        })
    }

    fn mark_processed<'a>(&'a self, event: &'a str) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            mark_processed(&self.db, event).await.map_err(failed)?;
            Ok(())
        })
    }

    fn cancel<'a>(
        &'a self,
        order: Uuid,
        actor: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(async move {
            PgOrderLedger::cancel(self, order, actor, reason)
                .await
                .map_err(failed)
        })
    }

    fn next_payment_attempt(&self, order: Uuid) -> BoxFuture<'_, Result<i32, LedgerError>> {
        Box::pin(async move {
            let attempt = async {
                let mut tx = self.db.begin().await?;
                self.fence.check(&mut tx, [order]).await?;
                let attempt = sqlx::query_scalar(
                    "UPDATE orders SET payment_attempt = payment_attempt + 1 WHERE id = $1
                     RETURNING payment_attempt",
                )
                .bind(order)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<i32, sqlx::Error>(attempt)
            };
            attempt.await.map_err(failed)
        })
    }

    fn record_attempt<'a>(
        &'a self,
        order: Uuid,
        status: &'a str,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            let recorded = async {
                let mut tx = self.db.begin().await?;
                self.fence.check(&mut tx, [order]).await?;
                sqlx::query(
                    "UPDATE orders SET payment_status = $2, payment_error = $3
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(order)
                .bind(status)
                .bind(error)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            };
            recorded.await.map_err(failed)
        })
    }
}
