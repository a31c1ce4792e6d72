//! The built-in simulated provider (`payments.provider = simulated`, the embedded default): a
//! stateful stand-in for Stripe that needs no account. Its intents live in Postgres, so a saga
//! resumed after a restart finds what it created. Stripe's test payment methods keep their
//! meaning (`pm_card_visa` succeeds, `pm_card_chargeDeclined` is declined, ...), idempotency keys
//! are honoured as Stripe honours them (a repeat answers the first response; the same key with
//! other parameters is refused), and every outcome is a Stripe-shaped event stored and routed by
//! [`super::events`] exactly as a verified webhook is: the saga has one code path.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::events::{self, ReceivedEvent};
use super::router::PaymentRouter;
use super::{IdempotencyKey, IntentStatus, PaymentError, PaymentIntent, Refund};

const PROVIDER: &str = "simulated";

/// What a test payment method does when an intent is confirmed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Succeeds,
    Declined {
        code: &'static str,
        decline_code: &'static str,
        message: &'static str,
    },
}

const DECLINED: &str = "Your card was declined.";

/// Stripe's test PaymentMethods (docs.stripe.com/testing), by the ids the API accepts.
fn test_card(payment_method: &str) -> Option<Card> {
    let declined = |code, decline_code, message| {
        Some(Card::Declined {
            code,
            decline_code,
            message,
        })
    };
    match payment_method {
        "pm_card_visa"
        | "pm_card_visa_debit"
        | "pm_card_mastercard"
        | "pm_card_mastercard_debit"
        | "pm_card_amex"
        | "pm_card_discover"
        | "pm_card_us" => Some(Card::Succeeds),
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => {
            declined("card_declined", "generic_decline", DECLINED)
        }
        "pm_card_chargeDeclinedInsufficientFunds" => declined(
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        "pm_card_chargeDeclinedFraudulent" => declined("card_declined", "fraudulent", DECLINED),
        "pm_card_chargeDeclinedLostCard" => declined("card_declined", "lost_card", DECLINED),
        "pm_card_chargeDeclinedStolenCard" => declined("card_declined", "stolen_card", DECLINED),
        "pm_card_chargeDeclinedExpiredCard" => {
            declined("expired_card", "expired_card", "Your card has expired.")
        }
        "pm_card_chargeDeclinedIncorrectCvc" => declined(
            "incorrect_cvc",
            "incorrect_cvc",
            "Your card's security code is incorrect.",
        ),
        "pm_card_chargeDeclinedProcessingError" => declined(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        _ => None,
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_sim_{}", Uuid::new_v4().simple())
}

#[derive(Clone)]
pub struct SimulatedProvider {
    db: PgPool,
    router: PaymentRouter,
    timeout: Duration,
}

#[derive(Debug, sqlx::FromRow)]
struct IntentRow {
    id: String,
    client_secret: String,
    amount: i64,
    amount_received: i64,
    amount_refunded: i64,
    currency: String,
    status: String,
    payment_method: Option<String>,
    last_payment_error: Option<Value>,
    latest_charge: Option<String>,
    metadata: Value,
    created_at: DateTime<Utc>,
}

const INTENT_COLUMNS: &str = "id, client_secret, amount, amount_received, amount_refunded, \
    currency, status, payment_method, last_payment_error, latest_charge, metadata, created_at";

impl IntentRow {
    /// The intent as Stripe's API would show it.
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_received": self.amount_received,
            "client_secret": self.client_secret,
            "created": self.created_at.timestamp(),
            "currency": self.currency,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": false,
            "metadata": self.metadata,
            "payment_method": self.payment_method,
            "status": self.status,
        })
    }

    /// The intent's charge as Stripe would show it in `charge.refunded`.
    fn charge_json(&self) -> Value {
        json!({
            "id": self.latest_charge,
            "object": "charge",
            "amount": self.amount_received,
            "amount_captured": self.amount_received,
            "amount_refunded": self.amount_refunded,
            "currency": self.currency,
            "livemode": false,
            "metadata": self.metadata,
            "paid": true,
            "payment_intent": self.id,
            "refunded": self.amount_refunded == self.amount_received,
            "status": "succeeded",
        })
    }
}

/// A PaymentIntent from its Stripe-shaped JSON (a row's, or a response kept for a key).
fn intent_from_json(raw: Value) -> Result<PaymentIntent, PaymentError> {
    let text = |field: &str| raw.get(field).and_then(Value::as_str).map(str::to_owned);
    let number = |field: &str| raw.get(field).and_then(Value::as_i64).unwrap_or_default();
    let status = text("status")
        .and_then(|status| IntentStatus::parse(&status))
        .ok_or_else(|| PaymentError::Unexpected("simulated intent without a status".into()))?;
    let metadata = raw
        .get("metadata")
        .and_then(Value::as_object)
        .map(|metadata| {
            metadata
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(PaymentIntent {
        id: text("id").unwrap_or_default(),
        client_secret: text("client_secret"),
        status,
        amount: number("amount"),
        amount_received: number("amount_received"),
        currency: text("currency").unwrap_or_default(),
        last_payment_error: raw
            .pointer("/last_payment_error/message")
            .and_then(Value::as_str)
            .map(str::to_owned),
        latest_charge: text("latest_charge"),
        metadata,
        raw,
    })
}

fn refused(code: &str, message: impl Into<String>) -> PaymentError {
    PaymentError::Refused {
        status: 400,
        code: code.to_owned(),
        message: message.into(),
    }
}

fn idempotency_mismatch(key: &IdempotencyKey) -> PaymentError {
    refused(
        "idempotency_key_in_use",
        format!(
            "Keys for idempotent requests can only be used with the same parameters they were first used with ({key})."
        ),
    )
}

/// A Stripe-shaped event about `object`.
fn event(
    event_type: &str,
    object: Value,
    key: &IdempotencyKey,
) -> Result<ReceivedEvent, PaymentError> {
    let payload = json!({
        "id": new_id("evt"),
        "object": "event",
        "type": event_type,
        "created": Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 0,
        "request": {"id": null, "idempotency_key": key.as_str()},
        "data": {"object": object},
    });
    ReceivedEvent::from_json(payload, PROVIDER)
        .map_err(|error| PaymentError::Unexpected(error.to_string()))
}

impl SimulatedProvider {
    pub fn new(db: PgPool, router: PaymentRouter, timeout: Duration) -> Self {
        Self {
            db,
            router,
            timeout,
        }
    }

    pub(super) fn db(&self) -> &PgPool {
        &self.db
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, PaymentError>>,
    ) -> Result<T, PaymentError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| PaymentError::Timeout(self.timeout))?
    }

    pub(super) async fn create_intent(
        &self,
        amount: i64,
        currency: &str,
        metadata: BTreeMap<String, String>,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        self.bounded(async {
            let id = new_id("pi");
            let secret = format!("{id}_secret_{}", Uuid::new_v4().simple());
            let metadata = json!(metadata);
            let created: Option<IntentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                r#"
                INSERT INTO simulated_payment_intents
                    (id, create_key, client_secret, amount, currency, status, metadata)
                VALUES ($1, $2, $3, $4, $5, 'requires_payment_method', $6)
                ON CONFLICT (create_key) DO NOTHING
                RETURNING {INTENT_COLUMNS}
                "#
            )))
            .bind(&id)
            .bind(key.as_str())
            .bind(&secret)
            .bind(amount)
            .bind(currency)
            .bind(&metadata)
            .fetch_optional(&self.db)
            .await?;
            let row = match created {
                Some(row) => row,
                // The key was used before: the same request answers the same intent.
                None => {
                    let row: IntentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {INTENT_COLUMNS} FROM simulated_payment_intents WHERE create_key = $1"
                    )))
                    .bind(key.as_str())
                    .fetch_one(&self.db)
                    .await?;
                    if row.amount != amount || row.currency != currency || row.metadata != metadata
                    {
                        return Err(idempotency_mismatch(key));
                    }
                    row
                }
            };
            intent_from_json(row.to_json())
        })
        .await
    }

    pub(super) async fn retrieve(&self, intent_id: &str) -> Result<PaymentIntent, PaymentError> {
        self.bounded(async {
            let row: Option<IntentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {INTENT_COLUMNS} FROM simulated_payment_intents WHERE id = $1"
            )))
            .bind(intent_id)
            .fetch_optional(&self.db)
            .await?;
            let row = row.ok_or_else(|| no_such_intent(intent_id))?;
            intent_from_json(row.to_json())
        })
        .await
    }

    pub(super) async fn confirm(
        &self,
        intent_id: &str,
        payment_method: &str,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        let fingerprint = format!("confirm:{intent_id}:{payment_method}");
        let response = self
            .change(intent_id, key, "confirm", &fingerprint, |row| {
                if !matches!(
                    row.status.as_str(),
                    "requires_payment_method" | "requires_confirmation"
                ) {
                    return Err(unexpected_state("confirm", &row.status));
                }
                let card = test_card(payment_method).ok_or_else(|| {
                    PaymentError::NotFound(format!("No such PaymentMethod: '{payment_method}'"))
                })?;
                row.payment_method = Some(payment_method.to_owned());
                row.latest_charge = Some(new_id("ch"));
                let event_type = match card {
                    Card::Succeeds => {
                        row.status = "succeeded".into();
                        row.amount_received = row.amount;
                        row.last_payment_error = None;
                        "payment_intent.succeeded"
                    }
                    // As at Stripe: the intent goes back to awaiting a payment method, with the
                    // reason, and the failed method is detached.
                    Card::Declined {
                        code,
                        decline_code,
                        message,
                    } => {
                        row.status = "requires_payment_method".into();
                        row.payment_method = None;
                        row.last_payment_error = Some(json!({
                            "type": "card_error",
                            "code": code,
                            "decline_code": decline_code,
                            "message": message,
                            "charge": row.latest_charge,
                        }));
                        "payment_intent.payment_failed"
                    }
                };
                let response = row.to_json();
                Ok((response.clone(), event_type, response))
            })
            .await?;
        intent_from_json(response)
    }

    pub(super) async fn cancel(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        let fingerprint = format!("cancel:{intent_id}");
        let response = self
            .change(intent_id, key, "cancel", &fingerprint, |row| {
                if matches!(row.status.as_str(), "succeeded" | "canceled") {
                    return Err(unexpected_state("cancel", &row.status));
                }
                row.status = "canceled".into();
                let response = row.to_json();
                Ok((response.clone(), "payment_intent.canceled", response))
            })
            .await?;
        intent_from_json(response)
    }

    pub(super) async fn refund(
        &self,
        intent_id: &str,
        amount: Option<i64>,
        metadata: BTreeMap<String, String>,
        key: &IdempotencyKey,
    ) -> Result<Refund, PaymentError> {
        let fingerprint = format!(
            "refund:{intent_id}:{}",
            amount.map_or_else(|| "rest".to_owned(), |amount| amount.to_string())
        );
        let response = self
            .change(intent_id, key, "refund", &fingerprint, |row| {
                if row.status != "succeeded" {
                    return Err(refused(
                        "charge_not_refundable",
                        format!("This PaymentIntent ({}) does not have a successful charge to refund.", row.id),
                    ));
                }
                let left = row.amount_received - row.amount_refunded;
                if left == 0 {
                    return Err(refused(
                        "charge_already_refunded",
                        format!("Charge {} has already been refunded.", row.latest_charge.clone().unwrap_or_default()),
                    ));
                }
                let refunded = amount.unwrap_or(left);
                if refunded > left {
                    return Err(refused(
                        "amount_too_large",
                        format!("Refund amount ({refunded}) is greater than unrefunded amount on charge ({left})."),
                    ));
                }
                row.amount_refunded += refunded;
                let refund = json!({
                    "id": new_id("re"),
                    "object": "refund",
                    "amount": refunded,
                    "charge": row.latest_charge,
                    "currency": row.currency,
                    "payment_intent": row.id,
                    "metadata": metadata,
                    "status": "succeeded",
                    "created": Utc::now().timestamp(),
                });
                Ok((refund, "charge.refunded", row.charge_json()))
            })
            .await?;
        let text = |field: &str| {
            response
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Refund {
            id: text("id"),
            intent_id: text("payment_intent"),
            amount: response
                .get("amount")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            currency: text("currency"),
            status: response
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_owned),
            raw: response,
        })
    }

    /// One change to an intent, under its row lock, in one transaction with the response kept
    /// for `key` and the event it causes; the event is routed once committed. `apply` returns
    /// the response, the event type and the event's object. A key already used answers its
    /// first response (or is refused if used with other parameters) and changes nothing.
    async fn change(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
        operation: &str,
        fingerprint: &str,
        apply: impl FnOnce(&mut IntentRow) -> Result<(Value, &'static str, Value), PaymentError>,
    ) -> Result<Value, PaymentError> {
        self.bounded(async {
            let mut tx = self.db.begin().await?;
            let row: Option<IntentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {INTENT_COLUMNS} FROM simulated_payment_intents WHERE id = $1 FOR UPDATE"
            )))
            .bind(intent_id)
            .fetch_optional(&mut *tx)
            .await?;
            let mut row = row.ok_or_else(|| no_such_intent(intent_id))?;
            // Checked under the lock, so two concurrent calls with one key act once.
            if let Some(response) = saved_response(&mut tx, key, fingerprint).await? {
                return Ok(response);
            }
            let (response, event_type, object) = apply(&mut row)?;
            save(&mut tx, &row).await?;
            sqlx::query(
                r#"
                INSERT INTO simulated_payment_requests
                    (idempotency_key, intent_id, operation, fingerprint, response)
                VALUES ($1, $2, $3, $4, $5)
                "#,
            )
            .bind(key.as_str())
            .bind(&row.id)
            .bind(operation)
            .bind(fingerprint)
            .bind(&response)
            .execute(&mut *tx)
            .await?;
            let mut event = event(event_type, object, key)?;
            events::store(&mut tx, &mut event).await?;
            tx.commit().await?;
            events::forward(&self.router, &event);
            Ok(response)
        })
        .await
    }
}

fn no_such_intent(intent_id: &str) -> PaymentError {
    PaymentError::NotFound(format!("No such payment_intent: '{intent_id}'"))
}

fn unexpected_state(operation: &str, status: &str) -> PaymentError {
    refused(
        "payment_intent_unexpected_state",
        format!("You cannot {operation} this PaymentIntent because it has a status of {status}."),
    )
}

async fn saved_response(
    tx: &mut PgConnection,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Option<Value>, PaymentError> {
    let saved: Option<(String, Value)> = sqlx::query_as(
        "SELECT fingerprint, response FROM simulated_payment_requests WHERE idempotency_key = $1",
    )
    .bind(key.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    match saved {
        None => Ok(None),
        Some((saved, response)) if saved == fingerprint => Ok(Some(response)),
        Some(_) => Err(idempotency_mismatch(key)),
    }
}

async fn save(tx: &mut PgConnection, row: &IntentRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        UPDATE simulated_payment_intents
        SET status = $2, amount_received = $3, amount_refunded = $4, payment_method = $5,
            last_payment_error = $6, latest_charge = $7
        WHERE id = $1
        "#,
    )
    .bind(&row.id)
    .bind(&row.status)
    .bind(row.amount_received)
    .bind(row.amount_refunded)
    .bind(&row.payment_method)
    .bind(&row.last_payment_error)
    .bind(&row.latest_charge)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_test_cards_keep_their_meaning() {
        assert_eq!(test_card("pm_card_visa"), Some(Card::Succeeds));
        assert!(matches!(
            test_card("pm_card_chargeDeclined"),
            Some(Card::Declined {
                decline_code: "generic_decline",
                ..
            })
        ));
        assert_eq!(test_card("pm_card_doesnotexist"), None);
    }

    #[test]
    fn a_row_reads_back_as_the_intent_it_describes() {
        let row = IntentRow {
            id: "pi_sim_1".into(),
            client_secret: "pi_sim_1_secret_x".into(),
            amount: 2500,
            amount_received: 0,
            amount_refunded: 0,
            currency: "usd".into(),
            status: "requires_payment_method".into(),
            payment_method: None,
            last_payment_error: Some(json!({"message": DECLINED})),
            latest_charge: Some("ch_sim_1".into()),
            metadata: json!({"order_id": Uuid::nil().to_string()}),
            created_at: Utc::now(),
        };
        let intent = intent_from_json(row.to_json()).unwrap();
        assert_eq!(intent.id, "pi_sim_1");
        assert!(intent.declined());
        assert_eq!(intent.order_id(), Some(Uuid::nil()));
        assert_eq!(intent.latest_charge.as_deref(), Some("ch_sim_1"));
    }
}
