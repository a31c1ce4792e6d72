//! The outbox table: [`enqueue`] for producers (inside their own transaction), and the relay's
//! claim/mark queries. The order-email payload, [`OrderEmail`], is defined here too, since it is
//! the contract between the order saga and the email dispatcher.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The channel the outbox trigger notifies on every insert.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// Writes one message to the outbox inside the caller's transaction and returns its id (the
/// message id consumers de-duplicate by). It is published only if the transaction commits; the
/// relay is woken by the commit.
///
/// ```ignore
/// let mut tx = pool.begin().await?;
/// // ... mark the order paid ...
/// outbox::enqueue(&mut tx, OrderEmail::PAID_TOPIC, &email).await?;
/// tx.commit().await?;
/// ```
pub async fn enqueue(
    tx: &mut PgConnection,
    topic: &str,
    payload: &impl Serialize,
) -> Result<Uuid, sqlx::Error> {
    let payload = serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let id = Uuid::now_v7();
    sqlx::query(r#"INSERT INTO outbox (id, topic, payload, traceparent) VALUES ($1, $2, $3, $4)"#)
        .bind(id)
        .bind(topic)
        .bind(payload)
        // The trace of whatever wrote the row: its consumer's span joins it.
        .bind(crate::telemetry::traceparent())
        .execute(tx)
        .await?;
    Ok(id)
}

/// Which order event an email tells the customer about. The routing key is `order.{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderEmailKind {
    Paid,
    Cancelled,
    Refunded,
}

impl OrderEmailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }

    /// The outbox topic (AMQP routing key) of this kind of email.
    pub fn topic(self) -> &'static str {
        match self {
            Self::Paid => "order.paid",
            Self::Cancelled => "order.cancelled",
            Self::Refunded => "order.refunded",
        }
    }
}

/// Everything an order email shows, frozen at the moment of the event. Money is in minor units of
/// `currency` (lower-case ISO 4217, e.g. `usd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEmail {
    pub order_id: Uuid,
    /// What the customer sees, e.g. `SO-2024-000123`.
    pub order_number: String,
    pub kind: OrderEmailKind,
    pub customer_email: String,
    pub customer_name: String,
    pub lines: Vec<OrderEmailLine>,
    pub subtotal: i64,
    pub discount_total: i64,
    pub total: i64,
    pub currency: String,
    pub shipping_address: ShippingAddress,
}

impl OrderEmail {
    /// The outbox topic to enqueue this email under.
    pub fn topic(&self) -> &'static str {
        self.kind.topic()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEmailLine {
    pub name: String,
    pub sku: String,
    /// Chosen options, e.g. `Size: M, Colour: blue`; empty for a simple product.
    #[serde(default)]
    pub options: String,
    pub quantity: i32,
    pub unit_price: i64,
    pub line_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `US`.
    pub country: String,
}

/// Which account email a token asks for; also the purpose of the token (`account_tokens.purpose`).
/// The routing key is `account.{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AccountEmailKind {
    PasswordReset,
    VerifyEmail,
}

impl AccountEmailKind {
    pub const ALL: [Self; 2] = [Self::PasswordReset, Self::VerifyEmail];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::VerifyEmail => "verify_email",
        }
    }

    /// The outbox topic (AMQP routing key) of this kind of email.
    pub fn topic(self) -> &'static str {
        match self {
            Self::PasswordReset => "account.password_reset",
            Self::VerifyEmail => "account.verify_email",
        }
    }
}

/// The verification email of an account: only the id of its `account_tokens` row. The token's
/// value is minted by the email dispatcher when it sends, so neither the outbox nor the broker
/// ever carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEmail {
    pub token_id: Uuid,
}

/// A password-reset request, as it was asked for: the email, whether or not it has an account
/// (the request does the same work either way). The dispatcher looks the account up, writes its
/// token row under this message's id, and sends; for an email without an account it sends
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordResetEmail {
    pub email: String,
    /// When the token stops working: the request's time plus `auth.password_reset_ttl_secs`.
    pub expires_at: DateTime<Utc>,
}

/// One outbox row on its way out.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub topic: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    /// The W3C trace context of the transaction that wrote it, when traces were exported.
    pub traceparent: Option<String>,
}

/// Locks up to `limit` due, unpublished rows for this transaction. `SKIP LOCKED` lets another
/// relay (another process) take the rows this one holds, so two relays never publish the same
/// row concurrently.
pub async fn claim_due(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT id, topic, payload, created_at, attempts, traceparent
        FROM outbox
        WHERE published_at IS NULL AND available_at <= now()
        ORDER BY available_at, created_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        "#,
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// How many seconds the oldest row not yet published has waited since it was committed (0 when
/// every row is out). Rows postponed after a failed attempt count too: they are still owed to
/// their consumers.
pub async fn oldest_unpublished_age(db: impl PgExecutor<'_>) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        r#"
        SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
        FROM outbox
        WHERE published_at IS NULL
        "#,
    )
    .fetch_one(db)
    .await
}

/// Marks rows published (after the broker confirmed them, or the in-process consumer took them).
pub async fn mark_published(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        UPDATE outbox
        SET published_at = now(), last_error = COALESCE($2, last_error)
        WHERE id = ANY($1)
        "#,
    )
    .bind(ids)
    .bind(note)
    .execute(executor)
    .await?;
    Ok(())
}

/// Records a failed attempt and postpones the rows by `retry_in`.
pub async fn mark_failed(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
    error: &str,
    retry_in: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        UPDATE outbox
        SET attempts = attempts + 1, last_error = $2,
            available_at = now() + make_interval(secs => $3)
        WHERE id = ANY($1) AND published_at IS NULL
        "#,
    )
    .bind(ids)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(())
}
