//! Refunds the shop owes, as durable intentions. Whoever decides a refund (the order saga for a
//! late or mismatched payment, an admin) writes it with [`owe`] in the transaction that decides
//! it; the refund worker actor (`shop_actors::refunds`) then runs [`Ledger::settle_due`], which
//! asks the provider with the row's own idempotency key (`order:{id}:refund:{n}`, so a retry
//! never refunds twice) until the provider takes it, backing off after each failure. A settled
//! refund raises the order's `refunded_amount` in the same transaction that marks it settled.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
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
                 + coalesce(sum(r.amount) FILTER (WHERE r.status IN ('owed', 'pending')), 0))::bigint
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

/// A refund's status as the provider reports it (Stripe's `refund.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderStatus {
    /// Taken, not settled yet.
    Pending,
    /// Taken; the customer has to act before it settles.
    RequiresAction,
    Succeeded,
    /// Final: the money did not go back (an expired card, a closed account).
    Failed,
    /// Final: canceled before it settled.
    Canceled,
}

impl ProviderStatus {
    pub fn parse(status: &str) -> Option<Self> {
        Some(match status {
            "pending" => Self::Pending,
            "requires_action" => Self::RequiresAction,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }
}

/// A refund row's `status` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowStatus {
    Owed,
    Pending,
    Succeeded,
    AlreadyRefunded,
}

impl RowStatus {
    /// An unknown value fails the read: never guessed.
    fn decode(raw: &str) -> Result<Self, sqlx::Error> {
        Ok(match raw {
            "owed" => Self::Owed,
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "already_refunded" => Self::AlreadyRefunded,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown refund status {other:?}").into(),
                ));
            }
        })
    }
}

/// What the provider said about one try of a refund row: its answer to the worker's call, or an
/// event about the refund.
#[derive(Debug)]
struct Report<'a> {
    refund_id: Uuid,
    /// The row's `failed_tries` when this try was asked for.
    try_: i32,
    provider_refund_id: &'a str,
    status: ProviderStatus,
    /// `failure_reason`, for a failed refund.
    reason: Option<&'a str>,
}

/// The metadata on every refund the shop asks for: its events carry it back, so they find
/// their row and try even before the worker has recorded the provider's answer.
fn metadata(refund: &Due) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("order_id".to_owned(), refund.order_id.to_string()),
        ("refund_id".to_owned(), refund.id.to_string()),
        ("refund_try".to_owned(), refund.failed_tries.to_string()),
    ])
}

/// Applies what the provider says of a refund (`object`, a `refund` object from an event) in the
/// caller's transaction, the one that stores the event. A refund the shop did not ask for (made
/// in the provider's dashboard) changes nothing here: `charge.refunded` carries its amount.
pub(crate) async fn observe(tx: &mut PgConnection, object: &Value) -> Result<(), sqlx::Error> {
    let text = |field: &str| object.get(field).and_then(Value::as_str);
    let Some(provider_refund_id) = text("id") else {
        tracing::warn!("a refund event without a refund id; nothing to apply");
        return Ok(());
    };
    let Some(status) = text("status").and_then(ProviderStatus::parse) else {
        // Not guessed: the row keeps what it was, and the worker's own call reads the status.
        tracing::error!(refund = provider_refund_id, status = ?text("status"),
            "a refund event with an unknown status; not applied");
        metrics::counter!("refund_events_unreadable_total").increment(1);
        return Ok(());
    };
    let tagged = object
        .pointer("/metadata/refund_id")
        .and_then(Value::as_str)
        .and_then(|id| id.parse::<Uuid>().ok())
        .zip(
            object
                .pointer("/metadata/refund_try")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<i32>().ok()),
        );
    let (refund_id, try_) = match tagged {
        Some(tagged) => tagged,
        None => {
            let row: Option<(Uuid, i32)> = sqlx::query_as(
                "SELECT id, failed_tries FROM refunds WHERE provider_refund_id = $1",
            )
            .bind(provider_refund_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(());
            };
            row
        }
    };
    let report = Report {
        refund_id,
        try_,
        provider_refund_id,
        status,
        reason: text("failure_reason"),
    };
    match apply(tx, &report).await {
        Ok(_) => Ok(()),
        Err(TransitionError::Database(error)) => Err(error),
        // The event is not stored either, so the provider delivers it again.
        Err(illegal) => Err(sqlx::Error::Protocol(illegal.to_string())),
    }
}

/// Moves a refund row to what the provider says of its try `report.try_`, once: a report about
/// an earlier try (whose refund failed) or a repeat changes nothing. `succeeded` counts in the
/// order's `refunded_amount`; `failed` and `canceled` make the row owed again with one more
/// failed try (a new idempotency key) and take a succeeded amount back out. `true` when the row
/// moved.
async fn apply(tx: &mut PgConnection, report: &Report<'_>) -> Result<bool, TransitionError> {
    let row: Option<(String, i32, Uuid, i64)> = sqlx::query_as(
        "SELECT status, failed_tries, order_id, amount FROM refunds WHERE id = $1 FOR UPDATE",
    )
    .bind(report.refund_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, tries, order_id, amount)) = row else {
        tracing::warn!(refund = %report.refund_id, "a provider refund names no refund row");
        return Ok(false);
    };
    let status = RowStatus::decode(&status)?;
    if tries != report.try_ || status == RowStatus::AlreadyRefunded {
        return Ok(false);
    }
    let moved = match report.status {
        ProviderStatus::Succeeded if matches!(status, RowStatus::Owed | RowStatus::Pending) => {
            sqlx::query(
                "UPDATE refunds SET status = 'succeeded', provider_refund_id = $2,
                        completed_at = now(), last_error = NULL
                 WHERE id = $1",
            )
            .bind(report.refund_id)
            .bind(report.provider_refund_id)
            .execute(&mut *tx)
            .await?;
            store::record_refunded(tx, order_id, 0).await?;
            tracing::info!(order = %order_id, refund = %report.refund_id, amount, "refund settled");
            true
        }
        ProviderStatus::Pending | ProviderStatus::RequiresAction if status == RowStatus::Owed => {
            sqlx::query(
                "UPDATE refunds SET status = 'pending', provider_refund_id = $2 WHERE id = $1",
            )
            .bind(report.refund_id)
            .bind(report.provider_refund_id)
            .execute(&mut *tx)
            .await?;
            true
        }
        ProviderStatus::Failed | ProviderStatus::Canceled => {
            let why = format!(
                "the provider's refund {} {}{}",
                report.provider_refund_id,
                if report.status == ProviderStatus::Failed {
                    "failed"
                } else {
                    "was canceled"
                },
                report
                    .reason
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default()
            );
            let backoff = backoff(tries + 1);
            sqlx::query(
                "UPDATE refunds SET status = 'owed', failed_tries = failed_tries + 1,
                        provider_refund_id = NULL, completed_at = NULL, last_error = $2,
                        next_attempt_at = now() + make_interval(secs => $3)
                 WHERE id = $1",
            )
            .bind(report.refund_id)
            .bind(&why)
            .bind(backoff.as_secs_f64())
            .execute(&mut *tx)
            .await?;
            if status == RowStatus::Succeeded {
                // What the provider gave back counts no more; a later try counts it again.
                sqlx::query(
                    "UPDATE orders SET refunded_amount = GREATEST(refunded_amount - $2,
                            (SELECT coalesce(sum(amount), 0)::bigint FROM refunds
                             WHERE order_id = $1 AND status = 'succeeded'))
                     WHERE id = $1",
                )
                .bind(order_id)
                .bind(amount)
                .execute(&mut *tx)
                .await?;
            }
            tracing::error!(order = %order_id, refund = %report.refund_id, amount, retry_in = ?backoff,
                "{why}; the refund is owed again");
            metrics::counter!("refunds_failed_total").increment(1);
            true
        }
        // A repeat, or a report behind what the row already knows.
        _ => false,
    };
    Ok(moved)
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    order_id: Uuid,
    seq: i32,
    intent_id: String,
    amount: i64,
    attempts: i32,
    failed_tries: i32,
}

/// Settles owed refunds against the provider: the refund worker's [`RefundLedger`].
#[derive(Clone)]
pub struct Ledger {
    db: PgPool,
    provider: PaymentProvider,
}

/// The longest wait between two attempts at one refund.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The wait before the next attempt after `failures` of them: 1 s doubling, at most
/// [`MAX_BACKOFF`].
fn backoff(failures: i32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(0, 10)).min(MAX_BACKOFF)
}

impl Ledger {
    pub fn new(db: PgPool, provider: PaymentProvider) -> Self {
        Self { db, provider }
    }

    /// Asks the provider for every refund that is due once, oldest first, and records what it
    /// answers (`succeeded`, `pending`, or owed again when it failed).
    pub async fn settle_due(&self) -> Result<RefundPass, TransitionError> {
        let due: Vec<Due> = sqlx::query_as(
            "SELECT id, order_id, seq, intent_id, amount, attempts, failed_tries FROM refunds
             WHERE status = 'owed' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT 100",
        )
        .fetch_all(&self.db)
        .await?;
        let mut settled = 0;
        for refund in due {
            let key = IdempotencyKey::refund_try(
                refund.order_id,
                refund.seq.max(1) as u32,
                refund.failed_tries.max(0) as u32,
            );
            let answer = self
                .provider
                .refund(
                    &refund.intent_id,
                    Some(refund.amount),
                    metadata(&refund),
                    &key,
                )
                .await;
            match answer {
                Ok(done) => {
                    let Some(status) = done.status.as_deref().and_then(ProviderStatus::parse)
                    else {
                        let error = PaymentError::Unexpected(format!(
                            "refund {} has status {:?}",
                            done.id, done.status
                        ));
                        self.failed(&refund, &error).await?;
                        continue;
                    };
                    let report = Report {
                        refund_id: refund.id,
                        try_: refund.failed_tries,
                        provider_refund_id: &done.id,
                        status,
                        reason: done.raw.get("failure_reason").and_then(Value::as_str),
                    };
                    let mut tx = self.db.begin().await?;
                    sqlx::query("UPDATE refunds SET attempts = attempts + 1 WHERE id = $1")
                        .bind(refund.id)
                        .execute(&mut *tx)
                        .await?;
                    apply(&mut tx, &report).await?;
                    tx.commit().await?;
                    if status == ProviderStatus::Succeeded {
                        settled += 1;
                    }
                }
                // Refunded meanwhile by other means (the provider's dashboard): the money is back,
                // and the provider's `charge.refunded` event carries the amount.
                Err(PaymentError::Refused { code, .. }) if code == "charge_already_refunded" => {
                    tracing::warn!(order = %refund.order_id, refund = %refund.id, "charge already refunded at the provider");
                    self.already_refunded(&refund).await?;
                    settled += 1;
                }
                Err(error) => self.failed(&refund, &error).await?,
            }
        }
        // Pending refunds are not money back yet: they count as owed until the provider settles
        // them.
        let owed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status IN ('owed', 'pending')")
                .fetch_one(&self.db)
                .await?;
        Ok(RefundPass {
            settled,
            owed: owed.max(0) as u64,
        })
    }

    /// Marks the refund `already_refunded`: the provider's own event carries that money.
    async fn already_refunded(&self, refund: &Due) -> Result<(), TransitionError> {
        let mut tx = self.db.begin().await?;
        let marked = sqlx::query(
            "UPDATE refunds SET status = 'already_refunded', completed_at = now(),
                    attempts = attempts + 1, last_error = NULL
             WHERE id = $1 AND status = 'owed' AND failed_tries = $2",
        )
        .bind(refund.id)
        .bind(refund.failed_tries)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 1 {
            store::record_refunded(&mut tx, refund.order_id, 0).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn failed(&self, refund: &Due, error: &PaymentError) -> Result<(), sqlx::Error> {
        let backoff = backoff(refund.attempts);
        tracing::error!(order = %refund.order_id, refund = %refund.id, attempts = refund.attempts + 1,
            retry_in = ?backoff, %error, "refund not taken by the provider; it stays owed");
        metrics::counter!("refund_attempts_failed_total").increment(1);
        sqlx::query(
            "UPDATE refunds SET attempts = attempts + 1, last_error = $2,
                    next_attempt_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND status = 'owed' AND failed_tries = $4",
        )
        .bind(refund.id)
        .bind(error.to_string())
        .bind(backoff.as_secs_f64())
        .bind(refund.failed_tries)
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
