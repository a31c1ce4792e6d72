//! Refunds the shop owes, as durable intentions. Whoever decides a refund (the order saga for a
//! late or mismatched payment, an admin) writes it with [`owe`] in the transaction that decides
//! it; the refund worker actor (`shop_actors::refunds`) then runs [`Ledger::settle_due`], which
//! asks the provider with the row's own idempotency key (`order:{id}:refund:{n}`, so a retry
//! never refunds twice) until the provider takes it, backing off after each failure. A settled
//! refund raises the order's `refunded_amount` in the same transaction that marks it settled.

use std::time::Duration;

use futures::future::BoxFuture;
pub use shop_actors::refunds::RefundReason;
use shop_actors::refunds::{RefundLedger, RefundPass};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{IdempotencyKey, PaymentError, PaymentProvider};
use crate::orders::store::{self, TransitionError};

/// A refund to decide.
pub struct Owed<'a> {
    pub order_id: Uuid,
    pub intent_id: &'a str,
    /// Minor units, > 0.
    pub amount: i64,
    pub currency: &'a str,
    pub reason: RefundReason,
    /// Makes the decision once-only (a replayed event decides nothing new): `payment:{intent}`,
    /// `admin:{order}:{key}`.
    pub dedup_key: String,
}

/// Writes a refund the shop owes, in the caller's transaction; `false` when the same decision
/// was already written.
pub async fn owe(tx: &mut PgConnection, refund: Owed<'_>) -> Result<bool, sqlx::Error> {
    // The order row is locked so that two refunds decided at once get different numbers.
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(refund.order_id)
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO refunds (id, order_id, seq, intent_id, amount, currency, reason, dedup_key)
         SELECT $1, $2, coalesce(max(seq), 0) + 1, $3, $4, $5, $6, $7 FROM refunds WHERE order_id = $2
         ON CONFLICT (dedup_key) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(refund.order_id)
    .bind(refund.intent_id)
    .bind(refund.amount)
    .bind(refund.currency)
    .bind(refund.reason.as_str())
    .bind(&refund.dedup_key)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        metrics::counter!("refunds_decided_total", "reason" => refund.reason.as_str()).increment(1);
    }
    Ok(inserted.rows_affected() == 1)
}

/// Minor units of the order already refunded (by the shop or, as the provider reported, by other
/// means) or decided and still owed: what an admin can no longer refund.
pub async fn committed_for(db: &mut PgConnection, order: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (GREATEST(o.refunded_amount,
                          coalesce(sum(r.amount) FILTER (WHERE r.status = 'succeeded'), 0))
                 + coalesce(sum(r.amount) FILTER (WHERE r.status = 'owed'), 0))::bigint
         FROM orders o LEFT JOIN refunds r ON r.order_id = o.id
         WHERE o.id = $1 GROUP BY o.refunded_amount",
    )
    .bind(order)
    .fetch_one(db)
    .await
}

/// How many refunds this order has (the next admin refund's number is one more).
pub async fn count_for(db: &mut PgConnection, order: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM refunds WHERE order_id = $1")
        .bind(order)
        .fetch_one(db)
        .await
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    order_id: Uuid,
    seq: i32,
    intent_id: String,
    amount: i64,
    attempts: i32,
}

/// Settles owed refunds against the provider: the refund worker's [`RefundLedger`].
#[derive(Clone)]
pub struct Ledger {
    db: PgPool,
    provider: PaymentProvider,
}

/// The longest wait between two attempts at one refund.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Ledger {
    pub fn new(db: PgPool, provider: PaymentProvider) -> Self {
        Self { db, provider }
    }

    /// Tries every refund that is due once, oldest first.
    pub async fn settle_due(&self) -> Result<RefundPass, TransitionError> {
        let due: Vec<Due> = sqlx::query_as(
            "SELECT id, order_id, seq, intent_id, amount, attempts FROM refunds
             WHERE status = 'owed' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT 100",
        )
        .fetch_all(&self.db)
        .await?;
        let mut settled = 0;
        for refund in due {
            let key = IdempotencyKey::refund(refund.order_id, refund.seq.max(1) as u32);
            match self
                .provider
                .refund(&refund.intent_id, Some(refund.amount), &key)
                .await
            {
                Ok(done) => {
                    self.settled(&refund, Some(&done.id), "succeeded").await?;
                    settled += 1;
                }
                // Refunded meanwhile by other means (the provider's dashboard): the money is back,
                // and the provider's `charge.refunded` event carries the amount.
                Err(PaymentError::Refused { code, .. }) if code == "charge_already_refunded" => {
                    tracing::warn!(order = %refund.order_id, refund = %refund.id, "charge already refunded at the provider");
                    self.settled(&refund, None, "already_refunded").await?;
                    settled += 1;
                }
                Err(error) => self.failed(&refund, &error).await?,
            }
        }
        let owed: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'owed'")
            .fetch_one(&self.db)
            .await?;
        Ok(RefundPass {
            settled,
            owed: owed.max(0) as u64,
        })
    }

    /// Marks the refund done: `succeeded` (it counts in the order's `refunded_amount`) or
    /// `already_refunded` (the provider's own event carries that money).
    async fn settled(
        &self,
        refund: &Due,
        provider_id: Option<&str>,
        status: &str,
    ) -> Result<(), TransitionError> {
        let mut tx = self.db.begin().await?;
        let marked = sqlx::query(
            "UPDATE refunds SET status = $3, provider_refund_id = $2, completed_at = now(),
                    attempts = attempts + 1, last_error = NULL
             WHERE id = $1 AND status = 'owed'",
        )
        .bind(refund.id)
        .bind(provider_id)
        .bind(status)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 1 {
            store::record_refunded(&mut tx, refund.order_id, 0).await?;
        }
        tx.commit().await?;
        tracing::info!(order = %refund.order_id, refund = %refund.id, amount = refund.amount, "refund settled");
        Ok(())
    }

    async fn failed(&self, refund: &Due, error: &PaymentError) -> Result<(), sqlx::Error> {
        let backoff = Duration::from_secs(1u64 << refund.attempts.clamp(0, 10)).min(MAX_BACKOFF);
        tracing::error!(order = %refund.order_id, refund = %refund.id, attempts = refund.attempts + 1,
            retry_in = ?backoff, %error, "refund not taken by the provider; it stays owed");
        metrics::counter!("refund_attempts_failed_total").increment(1);
        sqlx::query(
            "UPDATE refunds SET attempts = attempts + 1, last_error = $2,
                    next_attempt_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND status = 'owed'",
        )
        .bind(refund.id)
        .bind(error.to_string())
        .bind(backoff.as_secs_f64())
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

impl RefundLedger for Ledger {
    fn settle_due(&self) -> BoxFuture<'static, Result<RefundPass, String>> {
        let ledger = self.clone();
        Box::pin(async move { ledger.settle_due().await.map_err(|e| e.to_string()) })
    }
}
