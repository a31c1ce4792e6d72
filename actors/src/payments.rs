//! What the order saga knows of payments, and what it asks of the payment provider: the provider
//! (Stripe, or the server's simulated one) lives in the server and implements
//! [`PaymentGateway`]; its events arrive as [`PaymentEvent`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Where a PaymentIntent stands, in Stripe's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    /// Only with manual capture, which the shop does not use; kept so that such an intent is
    /// read rather than refused.
    RequiresCapture,
    Processing,
    Succeeded,
    Canceled,
}

impl IntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::RequiresConfirmation => "requires_confirmation",
            Self::RequiresAction => "requires_action",
            Self::RequiresCapture => "requires_capture",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(status: &str) -> Option<Self> {
        Some(match status {
            "requires_payment_method" => Self::RequiresPaymentMethod,
            "requires_confirmation" => Self::RequiresConfirmation,
            "requires_action" => Self::RequiresAction,
            "requires_capture" => Self::RequiresCapture,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }
}

impl fmt::Display for IntentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PaymentIntent as the provider answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaymentIntent {
    /// `pi_...`
    pub id: String,
    /// For the client to confirm with (Stripe.js); always present for intents made with a
    /// secret key.
    pub client_secret: Option<String>,
    pub status: IntentStatus,
    /// Minor units.
    pub amount: i64,
    /// What was actually charged (minor units): `amount` once succeeded, else 0.
    pub amount_received: i64,
    /// Lower-case ISO 4217.
    pub currency: String,
    /// Why the last attempt failed (a declined card), as the provider put it.
    pub last_payment_error: Option<String>,
    /// `ch_...` of the last charge, once there is one.
    pub latest_charge: Option<String>,
    /// `order_id` and `attempt` are always there; anything the caller added too.
    pub metadata: BTreeMap<String, String>,
    /// The provider's object, as JSON.
    pub raw: serde_json::Value,
}

impl PaymentIntent {
    /// The last confirmation was declined and the intent awaits another payment method.
    pub fn declined(&self) -> bool {
        self.status == IntentStatus::RequiresPaymentMethod && self.last_payment_error.is_some()
    }

    /// The order this intent was made for (`metadata.order_id`).
    pub fn order_id(&self) -> Option<Uuid> {
        self.metadata.get("order_id")?.parse().ok()
    }
}

/// What a call that changes something is, in its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Confirm,
    Cancel,
}

/// The `Idempotency-Key` of a call: derived from the order and attempt, never random, so the same
/// call made again (a retry after a timeout, a saga resumed after a crash) has the same key and the
/// provider answers it without acting twice. The same key with other parameters is refused by the
/// provider: a new card is a new attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    fn new(order_id: Uuid, attempt: u32, operation: Operation) -> Self {
        let operation = match operation {
            Operation::Create => "create",
            Operation::Confirm => "confirm",
            Operation::Cancel => "cancel",
        };
        Self(format!("order:{order_id}:attempt:{attempt}:{operation}"))
    }

    /// `order:{id}:attempt:{n}:create`; [`PaymentProvider::create_intent`] derives it itself.
    pub fn create(order_id: Uuid, attempt: u32) -> Self {
        Self::new(order_id, attempt, Operation::Create)
    }

    /// `order:{id}:attempt:{n}:confirm`: one per payment attempt (each `POST /orders/{id}/pay`).
    pub fn confirm(order_id: Uuid, attempt: u32) -> Self {
        Self::new(order_id, attempt, Operation::Confirm)
    }

    /// `order:{id}:attempt:{n}:cancel`, `n` being the attempt whose intent is canceled.
    pub fn cancel(order_id: Uuid, attempt: u32) -> Self {
        Self::new(order_id, attempt, Operation::Cancel)
    }

    /// `order:{id}:cancel:{random}`: a cancel tried again after the provider refused one whose
    /// key it keeps answering with that refusal. Cancelling twice is harmless.
    pub fn cancel_again(order_id: Uuid) -> Self {
        Self(format!(
            "order:{order_id}:cancel:{}",
            Uuid::new_v4().simple()
        ))
    }

    /// `order:{id}:refund:{n}`: the `n`-th refund of the order (1, 2, ... for partial refunds).
    pub fn refund(order_id: Uuid, refund: u32) -> Self {
        Self(format!("order:{order_id}:refund:{refund}"))
    }

    /// The key of try `failed_tries` of the `n`-th refund: [`refund`](Self::refund) for the
    /// first, `order:{id}:refund:{n}:retry:{tries}` once the provider's refunds of the earlier
    /// tries failed (the provider answers a repeated key with the refund that failed).
    pub fn refund_try(order_id: Uuid, refund: u32, failed_tries: u32) -> Self {
        match failed_tries {
            0 => Self::refund(order_id, refund),
            tries => Self(format!("order:{order_id}:refund:{refund}:retry:{tries}")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a provider call did not give an answer. A declined card is not one of these (see the
/// module doc).
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// Refused before anything was sent: a non-positive amount, a malformed currency.
    #[error("invalid payment request: {0}")]
    Invalid(String),
    #[error("no such payment object: {0}")]
    NotFound(String),
    /// The provider refused the request: an intent in the wrong state, an idempotency key reused
    /// with other parameters, nothing left to refund.
    #[error("the payment provider refused the request ({status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer in time: the call may or may not have taken effect; repeat it with the same key.
    #[error("the payment provider did not answer within {0:?}")]
    Timeout(Duration),
    /// Network trouble or a 5xx/429: repeat the call with the same key.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected answer from the payment provider: {0}")]
    Unexpected(String),
    #[error("payments database: {0}")]
    Database(#[from] sqlx::Error),
}

impl PaymentError {
    /// Whether the same call, with the same key, may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Unavailable(_) | Self::Database(_)
        )
    }
}

/// What happened to a payment, as the order saga needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentEventKind {
    /// `payment_intent.succeeded`: the money is taken.
    Succeeded,
    /// `payment_intent.payment_failed`: the attempt was declined; the intent can be confirmed
    /// again with another payment method.
    Failed,
    /// `payment_intent.canceled`.
    Canceled,
    /// `charge.refunded`: some or all of the charge went back.
    Refunded,
}

impl PaymentEventKind {
    pub fn from_event_type(event_type: &str) -> Option<Self> {
        Some(match event_type {
            "payment_intent.succeeded" => Self::Succeeded,
            "payment_intent.payment_failed" => Self::Failed,
            "payment_intent.canceled" => Self::Canceled,
            "charge.refunded" => Self::Refunded,
            _ => return None,
        })
    }
}

/// A verified, stored event about an order's payment, as the router forwards it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaymentEvent {
    /// `evt_...`: the key to [`mark_processed`] it with.
    pub event_id: String,
    pub kind: PaymentEventKind,
    /// `pi_...`; for `Refunded`, the intent the refunded charge belongs to.
    pub intent_id: String,
    /// From the intent's (or charge's) `metadata.order_id`.
    pub order_id: Uuid,
    /// Minor units. `Succeeded`: the amount received; `Failed`, `Canceled`: the intent's amount;
    /// `Refunded`: the total refunded so far on the charge (not only this refund).
    pub amount: i64,
    /// Lower-case ISO 4217.
    pub currency: String,
    /// `Failed`: why (`last_payment_error.message`, else its code).
    pub error: Option<String>,
    /// The whole event as received.
    pub payload: Value,
}

/// The calls the order saga makes to the payment provider. Every call that changes something
/// carries an [`IdempotencyKey`] derived from the order, so a repeated call never acts twice.
pub trait PaymentGateway: Send + Sync + 'static {
    /// `stripe` or `simulated`.
    fn name(&self) -> &'static str;

    /// Creates the intent of attempt `attempt` of an order (keyed `order:{id}:attempt:{n}:create`).
    fn create_intent<'a>(
        &'a self,
        order_id: Uuid,
        attempt: u32,
        amount: i64,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntent, PaymentError>>;

    /// Confirms the intent with a payment method; a decline is `Ok` with
    /// [`PaymentIntent::declined`] true.
    fn confirm<'a>(
        &'a self,
        intent_id: &'a str,
        payment_method: &'a str,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<PaymentIntent, PaymentError>>;

    /// Cancels an intent that has not succeeded.
    fn cancel<'a>(
        &'a self,
        intent_id: &'a str,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<PaymentIntent, PaymentError>>;

    fn retrieve<'a>(
        &'a self,
        intent_id: &'a str,
    ) -> BoxFuture<'a, Result<PaymentIntent, PaymentError>>;
}
