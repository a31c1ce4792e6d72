//! Provider events: parsed just enough to route them, stored once by id in `stripe_events` (a
//! repeat is a no-op, concurrent repeats included: the primary key decides), recorded as a
//! `payment_transactions` outcome in the same transaction, and handed to the payment router.
//! Stripe's webhook and the simulated provider both end here, so the saga has one code path.
//!
//! Routed types: `payment_intent.succeeded`, `payment_intent.payment_failed`,
//! `payment_intent.canceled` and `charge.refunded` (mapped back to its PaymentIntent). Any other
//! type is stored, marked processed at once and not forwarded; an event about a refund
//! (`refund.*`, `charge.refund.updated`) also moves its refund row to the provider's status in
//! that transaction ([`super::refunds`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::router::PaymentRouter;
use super::transactions::{self, NewTransaction, TransactionKind};
use super::{PaymentEvent, PaymentEventKind};

/// The `payment_transactions.kind` an event of this kind is recorded as.
fn transaction_kind(kind: PaymentEventKind) -> TransactionKind {
    match kind {
        PaymentEventKind::Succeeded => TransactionKind::Succeeded,
        PaymentEventKind::Failed => TransactionKind::Failed,
        PaymentEventKind::Canceled => TransactionKind::Canceled,
        PaymentEventKind::Refunded => TransactionKind::Refund,
    }
}

/// Why a verified body is not an event we can store.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the event is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the event has no {0}")]
    Missing(&'static str),
}

/// The facts of a routed event type, read from `data.object`.
#[derive(Debug, Clone)]
struct Outcome {
    kind: PaymentEventKind,
    intent_id: String,
    amount: i64,
    currency: String,
    status: String,
    error: Option<String>,
}

/// An event read from its JSON, before it is stored.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub id: String,
    pub event_type: String,
    /// `stripe` or `simulated`.
    pub provider: &'static str,
    pub intent_id: Option<String>,
    pub order_id: Option<Uuid>,
    pub payload: Value,
    outcome: Option<Outcome>,
}

fn text(value: &Value, pointer: &str) -> Option<String> {
    value.pointer(pointer)?.as_str().map(str::to_owned)
}

/// An id field that may be expanded into its object (`"pi_..."` or `{"id": "pi_..."}`).
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(id) => Some(id.clone()),
        Value::Object(object) => object.get("id")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl ReceivedEvent {
    /// Reads a verified body.
    pub fn from_slice(body: &[u8], provider: &'static str) -> Result<Self, EventError> {
        Self::from_json(serde_json::from_slice(body)?, provider)
    }

    pub fn from_json(payload: Value, provider: &'static str) -> Result<Self, EventError> {
        let id = text(&payload, "/id").ok_or(EventError::Missing("id"))?;
        let event_type = text(&payload, "/type").ok_or(EventError::Missing("type"))?;
        let object = payload
            .pointer("/data/object")
            .filter(|object| object.is_object())
            .ok_or(EventError::Missing("data.object"))?;
        let intent_id = match object.get("object").and_then(Value::as_str) {
            Some("payment_intent") => id_of(object.get("id")),
            // Charges and refunds point at their PaymentIntent.
            _ => id_of(object.get("payment_intent")),
        };
        let order_id = object
            .pointer("/metadata/order_id")
            .and_then(Value::as_str)
            .and_then(|id| id.parse().ok());
        let outcome = PaymentEventKind::from_event_type(&event_type)
            .and_then(|kind| Self::outcome(kind, object, intent_id.clone()));
        Ok(Self {
            id,
            event_type,
            provider,
            intent_id,
            order_id,
            outcome,
            payload,
        })
    }

    fn outcome(
        kind: PaymentEventKind,
        object: &Value,
        intent_id: Option<String>,
    ) -> Option<Outcome> {
        let number = |field: &str| object.get(field).and_then(Value::as_i64);
        let amount = match kind {
            PaymentEventKind::Succeeded => number("amount_received")
                .filter(|received| *received > 0)
                .or_else(|| number("amount")),
            PaymentEventKind::Failed | PaymentEventKind::Canceled => number("amount"),
            PaymentEventKind::Refunded => number("amount_refunded"),
        }?;
        let status = match kind {
            PaymentEventKind::Refunded => {
                if object.get("refunded").and_then(Value::as_bool) == Some(true) {
                    "refunded".to_owned()
                } else {
                    "partially_refunded".to_owned()
                }
            }
            _ => text(object, "/status").unwrap_or_default(),
        };
        let error = (kind == PaymentEventKind::Failed).then(|| {
            text(object, "/last_payment_error/message")
                .or_else(|| text(object, "/last_payment_error/decline_code"))
                .or_else(|| text(object, "/last_payment_error/code"))
                .unwrap_or_else(|| "the payment failed".to_owned())
        });
        Some(Outcome {
            kind,
            intent_id: intent_id?,
            amount,
            currency: text(object, "/currency")?,
            status,
            error,
        })
    }

    /// The event to forward: a routed type about a known order.
    pub fn payment_event(&self) -> Option<PaymentEvent> {
        let outcome = self.outcome.as_ref()?;
        Some(PaymentEvent {
            event_id: self.id.clone(),
            kind: outcome.kind,
            intent_id: outcome.intent_id.clone(),
            order_id: self.order_id?,
            amount: outcome.amount,
            currency: outcome.currency.clone(),
            error: outcome.error.clone(),
            payload: self.payload.clone(),
        })
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The id was already stored: nothing was done.
    pub duplicate: bool,
}

/// Stores `event` (unless its id is already stored), records its outcome, and forwards it to the
/// router once committed. A forward that fails leaves the event unprocessed, to be replayed.
pub async fn receive(
    db: &PgPool,
    router: &PaymentRouter,
    mut event: ReceivedEvent,
) -> Result<Receipt, sqlx::Error> {
    let mut tx = db.begin().await?;
    let stored = store(&mut tx, &mut event).await?;
    tx.commit().await?;
    if stored {
        forward(router, &event);
    }
    Ok(Receipt { duplicate: !stored })
}

/// Inserts the event by id in the caller's transaction; `false` when the id was already there
/// (concurrent inserts of one id wait on each other; one wins). A routed event is recorded as a
/// `payment_transactions` outcome in the same transaction. An event with no order to go to, or
/// of a type nobody acts on, is stored already processed.
pub(crate) async fn store(
    tx: &mut PgConnection,
    event: &mut ReceivedEvent,
) -> Result<bool, sqlx::Error> {
    if event.order_id.is_none()
        && event.outcome.is_some()
        && let Some(intent_id) = &event.intent_id
    {
        // Stripe copies the intent's metadata onto its charges, but an older charge may lack it:
        // the order is then the one this intent was made for.
        event.order_id = order_of_intent(&mut *tx, intent_id).await?;
    }
    let routed = event.payment_event();
    let inserted: Option<String> = sqlx::query_scalar(
        r#"
        INSERT INTO stripe_events (id, type, provider, intent_id, order_id, payload, processed_at)
        VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7 THEN NULL ELSE now() END)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        "#,
    )
    .bind(&event.id)
    .bind(&event.event_type)
    .bind(event.provider)
    .bind(&event.intent_id)
    .bind(event.order_id)
    .bind(&event.payload)
    .bind(routed.is_some())
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        metrics::counter!("payment_events_duplicate_total").increment(1);
        return Ok(false);
    }
    metrics::counter!("payment_events_total", "type" => event.event_type.clone()).increment(1);
    // `refund.*` and `charge.refund.updated`: the refund row takes the provider's status in the
    // transaction that stores the event.
    if let Some(object) = event.payload.pointer("/data/object")
        && object.get("object").and_then(Value::as_str) == Some("refund")
    {
        super::refunds::observe(&mut *tx, object).await?;
    }
    if let (Some(routed), Some(outcome)) = (&routed, &event.outcome) {
        let row = NewTransaction {
            order_id: routed.order_id,
            provider: event.provider,
            intent_id: routed.intent_id.clone(),
            kind: transaction_kind(outcome.kind),
            amount: routed.amount,
            currency: routed.currency.clone(),
            status: outcome.status.clone(),
            raw: event.payload.clone(),
            dedup_key: format!("event:{}", event.id),
        };
        transactions::record(&mut *tx, &row).await?;
    } else if event.outcome.is_some() {
        tracing::warn!(event = %event.id, kind = %event.event_type, "payment event for no known order: stored, not forwarded");
    }
    Ok(true)
}

/// Hands a stored event to the router, if it is one to forward.
pub(crate) fn forward(router: &PaymentRouter, event: &ReceivedEvent) {
    if let Some(routed) = event.payment_event()
        && let Err(error) = router.deliver(routed)
    {
        // Stored unprocessed: the router replays it when it (re)starts or a subscriber joins.
        tracing::warn!(event = %event.id, %error, "payment router unavailable; event kept for replay");
    }
}

async fn order_of_intent(
    tx: &mut PgConnection,
    intent_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        r#"
        SELECT order_id FROM payment_transactions WHERE intent_id = $1
        UNION ALL
        SELECT order_id FROM stripe_events WHERE intent_id = $1 AND order_id IS NOT NULL
        LIMIT 1
        "#,
    )
    .bind(intent_id)
    .fetch_optional(tx)
    .await
}

#[derive(sqlx::FromRow)]
struct UnprocessedRow {
    id: String,
    provider: String,
    order_id: Option<Uuid>,
    payload: Value,
}

/// The provider a stored row names. Anything else is refused, not read as Stripe's: an event
/// attributed to the wrong provider would be checked against the wrong intents.
fn stored_provider(stored: &str) -> Option<&'static str> {
    match stored {
        "simulated" => Some("simulated"),
        "stripe" => Some("stripe"),
        _ => None,
    }
}

/// The payment router's view of the stored events.
pub struct StoredEvents(pub PgPool);

impl shop_actors::payment_router::PaymentEventStore for StoredEvents {
    fn unprocessed(
        &self,
        age: std::time::Duration,
    ) -> futures::future::BoxFuture<'_, Result<Vec<PaymentEvent>, String>> {
        Box::pin(async move {
            let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
            unprocessed_events_older_than(&self.0, age)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Every routed event not yet marked processed, oldest first: what the saga has not acted on.
pub async fn unprocessed_events(db: &PgPool) -> Result<Vec<PaymentEvent>, sqlx::Error> {
    unprocessed_events_older_than(db, chrono::Duration::zero()).await
}

/// The unprocessed events received more than `age` ago, oldest first.
pub async fn unprocessed_events_older_than(
    db: &PgPool,
    age: chrono::Duration,
) -> Result<Vec<PaymentEvent>, sqlx::Error> {
    let rows: Vec<UnprocessedRow> = sqlx::query_as(
        r#"
        SELECT id, provider, order_id, payload
        FROM stripe_events
        WHERE processed_at IS NULL AND received_at <= now() - $1::interval
        ORDER BY received_at, id
        LIMIT 1000
        "#,
    )
    .bind(age)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let Some(provider) = stored_provider(&row.provider) else {
                tracing::error!(event = %row.id, provider = %row.provider, "stored payment event names an unknown provider");
                return None;
            };
            match ReceivedEvent::from_json(row.payload, provider) {
                Ok(mut event) => {
                    event.order_id = row.order_id.or(event.order_id);
                    event.payment_event()
                }
                Err(error) => {
                    tracing::error!(event = %row.id, %error, "stored payment event unreadable");
                    None
                }
            }
        })
        .collect())
}

/// Marks an event acted on, so that it is not replayed again; meant to run in the transaction of
/// the saga step it caused. `false` when it was already marked (or is unknown).
pub async fn mark_processed<'e>(
    executor: impl PgExecutor<'e>,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query(
        "UPDATE stripe_events SET processed_at = now() WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(event_id)
    .execute(executor)
    .await?;
    Ok(marked.rows_affected() == 1)
}

/// One stored event, for an order's payment history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub provider: String,
    pub intent_id: Option<String>,
    pub payload: Value,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// Every event stored for an order, oldest first.
pub async fn for_order<'e>(
    executor: impl PgExecutor<'e>,
    order_id: Uuid,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT id, type, provider, intent_id, payload, received_at, processed_at
        FROM stripe_events
        WHERE order_id = $1
        ORDER BY received_at, id
        "#,
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_two_providers_are_read_from_a_stored_row() {
        assert_eq!(stored_provider("stripe"), Some("stripe"));
        assert_eq!(stored_provider("simulated"), Some("simulated"));
        for unknown in ["paypal", "", "Stripe", "stripe "] {
            assert_eq!(stored_provider(unknown), None, "{unknown:?}");
        }
    }

    fn event(event_type: &str, object: Value) -> Value {
        json!({"id": "evt_1", "object": "event", "type": event_type, "data": {"object": object}})
    }

    #[test]
    fn a_failed_intent_carries_its_order_amount_and_error() {
        let order = Uuid::new_v4();
        let payload = event(
            "payment_intent.payment_failed",
            json!({"id": "pi_1", "object": "payment_intent", "amount": 4200, "currency": "usd",
                   "status": "requires_payment_method", "metadata": {"order_id": order.to_string()},
                   "last_payment_error": {"message": "Your card was declined.", "code": "card_declined"}}),
        );
        let routed = ReceivedEvent::from_json(payload, "stripe")
            .unwrap()
            .payment_event()
            .unwrap();
        assert_eq!(routed.kind, PaymentEventKind::Failed);
        assert_eq!(routed.order_id, order);
        assert_eq!(routed.intent_id, "pi_1");
        assert_eq!(routed.amount, 4200);
        assert_eq!(routed.error.as_deref(), Some("Your card was declined."));
    }

    #[test]
    fn a_refunded_charge_is_mapped_to_its_intent() {
        let order = Uuid::new_v4();
        let payload = event(
            "charge.refunded",
            json!({"id": "ch_1", "object": "charge", "payment_intent": "pi_9", "amount": 3000,
                   "amount_refunded": 1000, "refunded": false, "currency": "eur",
                   "metadata": {"order_id": order.to_string()}}),
        );
        let routed = ReceivedEvent::from_json(payload, "stripe")
            .unwrap()
            .payment_event()
            .unwrap();
        assert_eq!(routed.kind, PaymentEventKind::Refunded);
        assert_eq!(routed.intent_id, "pi_9");
        assert_eq!(routed.amount, 1000);
        assert_eq!(routed.currency, "eur");
    }

    #[test]
    fn other_types_and_events_without_an_order_are_not_forwarded() {
        let created = event(
            "payment_intent.created",
            json!({"id": "pi_1", "object": "payment_intent", "amount": 1, "currency": "usd",
                   "metadata": {"order_id": Uuid::new_v4().to_string()}}),
        );
        let created = ReceivedEvent::from_json(created, "stripe").unwrap();
        assert_eq!(created.intent_id.as_deref(), Some("pi_1"));
        assert!(created.payment_event().is_none());
        let orphan = event(
            "payment_intent.succeeded",
            json!({"id": "pi_2", "object": "payment_intent", "amount": 1, "amount_received": 1,
                   "currency": "usd", "metadata": {}}),
        );
        assert!(
            ReceivedEvent::from_json(orphan, "stripe")
                .unwrap()
                .payment_event()
                .is_none()
        );
    }

    #[test]
    fn a_body_without_id_type_or_object_is_refused() {
        assert!(ReceivedEvent::from_slice(b"not json", "stripe").is_err());
        assert!(
            ReceivedEvent::from_json(json!({"type": "x", "data": {"object": {}}}), "stripe")
                .is_err()
        );
        assert!(
            ReceivedEvent::from_json(json!({"id": "evt", "data": {"object": {}}}), "stripe")
                .is_err()
        );
        assert!(ReceivedEvent::from_json(json!({"id": "evt", "type": "x"}), "stripe").is_err());
    }
}
