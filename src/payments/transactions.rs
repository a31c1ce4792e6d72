//! `payment_transactions`: the audit trail of an order's payments. Calls that start something
//! (`create`, `confirm`) are recorded by [`super::PaymentProvider`] when the provider answers;
//! outcomes (`succeeded`, `failed`, `canceled`, `refund`) are recorded from their event, in the
//! transaction that stores the event. Each call (by its idempotency key) and each event (by its
//! id) is recorded once, however often it is retried or redelivered.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::{IdempotencyKey, PaymentIntent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionKind {
    Create,
    Confirm,
    Succeeded,
    Failed,
    Canceled,
    Refund,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Confirm => "confirm",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Refund => "refund",
        }
    }
}

/// A row to record.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub order_id: Uuid,
    /// `stripe` or `simulated`.
    pub provider: &'static str,
    pub intent_id: String,
    pub kind: TransactionKind,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    /// The intent's status as the provider reported it.
    pub status: String,
    pub raw: Value,
    /// One row per key: the call's idempotency key, or `event:{id}` for an outcome.
    pub dedup_key: String,
}

impl NewTransaction {
    /// A row describing `intent` as the provider answered the call made with `key`.
    pub fn from_intent(
        order_id: Uuid,
        provider: &'static str,
        kind: TransactionKind,
        intent: &PaymentIntent,
        key: &IdempotencyKey,
    ) -> Self {
        Self {
            order_id,
            provider,
            intent_id: intent.id.clone(),
            kind,
            amount: intent.amount,
            currency: intent.currency.clone(),
            status: intent.status.as_str().to_owned(),
            raw: intent.raw.clone(),
            dedup_key: key.as_str().to_owned(),
        }
    }
}

/// Inserts one row (in the caller's transaction, if it passes one); `false` when a row with its
/// `dedup_key` is already there (a retried call).
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    row: &NewTransaction,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        r#"
        INSERT INTO payment_transactions
            (id, order_id, provider, intent_id, kind, amount, currency, status, raw, dedup_key)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (dedup_key) DO NOTHING
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(row.order_id)
    .bind(row.provider)
    .bind(&row.intent_id)
    .bind(row.kind.as_str())
    .bind(row.amount)
    .bind(&row.currency)
    .bind(&row.status)
    .bind(&row.raw)
    .bind(&row.dedup_key)
    .execute(executor)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// One recorded row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Transaction {
    pub id: Uuid,
    pub order_id: Uuid,
    pub provider: String,
    pub intent_id: String,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub raw: Value,
    pub created_at: DateTime<Utc>,
}

/// Every row of an order, oldest first.
pub async fn for_order<'e>(
    executor: impl PgExecutor<'e>,
    order_id: Uuid,
) -> Result<Vec<Transaction>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT id, order_id, provider, intent_id, kind, amount, currency, status, raw, created_at
        FROM payment_transactions
        WHERE order_id = $1
        ORDER BY created_at, id
        "#,
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}
