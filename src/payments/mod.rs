//! Payments: the provider the order saga pays through (Stripe, or the built-in simulated provider,
//! chosen by `payments.provider`), the events it reports (verified, stored once by id, routed to a
//! subscriber by the payment router), and the record of every call and outcome
//! (`payment_transactions`).
//!
//! The saga's side of it:
//! - [`PaymentProvider`]: `create_intent`, `confirm`, `cancel`, `refund`, `retrieve`. Every call
//!   that changes something carries an [`IdempotencyKey`] derived from the order (and attempt),
//!   so a retried call never charges or refunds twice, and every call has a deadline
//!   (`payments.timeout_secs`).
//! - A declined card is **not** an error: `confirm` answers `Ok` with the intent as the provider
//!   left it (`requires_payment_method`) and `last_payment_error` set ([`PaymentIntent::declined`]);
//!   the `payment_intent.payment_failed` event follows through the router as for any outcome.
//! - Outcomes arrive as [`events::PaymentEvent`]s through [`router::PaymentRouter`], from Stripe's
//!   webhook or from the simulated provider alike.

pub mod events;
pub mod refunds;
pub mod router;
pub mod signature;
mod simulated;
mod stripe;
pub mod transactions;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::{self, Settings};

pub use events::{PaymentEvent, PaymentEventKind};
pub use router::{MailboxSink, PaymentEventSink, PaymentRouter, SinkClosed, SubscriptionId};
pub use simulated::SimulatedProvider;
pub use stripe::StripeProvider;
pub use transactions::{NewTransaction, TransactionKind};

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

/// A refund as the provider answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refund {
    /// `re_...`
    pub id: String,
    pub intent_id: String,
    /// Minor units refunded by this refund.
    pub amount: i64,
    pub currency: String,
    /// `succeeded`, `pending`, `failed`...
    pub status: String,
    pub raw: serde_json::Value,
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

    /// `order:{id}:refund:{n}`: the `n`-th refund of the order (1, 2, ... for partial refunds).
    pub fn refund(order_id: Uuid, refund: u32) -> Self {
        Self(format!("order:{order_id}:refund:{refund}"))
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

/// Amount and currency as every provider wants them: a positive amount in minor units, a
/// lower-case ISO 4217 code.
fn check_money(amount: i64, currency: &str) -> Result<(), PaymentError> {
    if amount <= 0 {
        return Err(PaymentError::Invalid(format!(
            "amount must be positive minor units, not {amount}"
        )));
    }
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(PaymentError::Invalid(format!(
            "currency must be a lower-case ISO 4217 code, not {currency:?}"
        )));
    }
    Ok(())
}

/// The metadata every intent carries, so that an event about it finds its order.
fn intent_metadata(
    order_id: Uuid,
    attempt: u32,
    mut extra: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    extra.insert("order_id".into(), order_id.to_string());
    extra.insert("attempt".into(), attempt.to_string());
    extra
}

/// The configured payment provider. Cheap to clone.
#[derive(Clone)]
pub enum PaymentProvider {
    Stripe(StripeProvider),
    Simulated(SimulatedProvider),
}

impl fmt::Debug for PaymentProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PaymentProvider {
    /// The provider `payments.provider` names. `stripe` needs `stripe.secret_key` (checked at
    /// start); the simulated one delivers its events through `router`.
    pub fn from_settings(
        settings: &Settings,
        db: PgPool,
        router: PaymentRouter,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(settings.payments.timeout_secs.max(1));
        Ok(match settings.payments.provider {
            config::PaymentProvider::Stripe => {
                Self::Stripe(StripeProvider::new(&settings.stripe, timeout, db)?)
            }
            config::PaymentProvider::Simulated => {
                Self::Simulated(SimulatedProvider::new(db, router, timeout))
            }
        })
    }

    /// `stripe` or `simulated`, as in `payment_transactions.provider`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stripe(_) => "stripe",
            Self::Simulated(_) => "simulated",
        }
    }

    /// Creates the intent of attempt `attempt` of an order, keyed `order:{id}:attempt:{n}:create`:
    /// the same order and attempt always answer the same intent. `metadata` gets `order_id` and
    /// `attempt`. Records a `create` transaction.
    pub async fn create_intent(
        &self,
        order_id: Uuid,
        attempt: u32,
        amount: i64,
        currency: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<PaymentIntent, PaymentError> {
        check_money(amount, currency)?;
        let key = IdempotencyKey::create(order_id, attempt);
        let metadata = intent_metadata(order_id, attempt, metadata);
        let intent = match self {
            Self::Stripe(stripe) => {
                stripe
                    .create_intent(amount, currency, metadata, &key)
                    .await?
            }
            Self::Simulated(simulated) => {
                simulated
                    .create_intent(amount, currency, metadata, &key)
                    .await?
            }
        };
        self.record(order_id, TransactionKind::Create, &intent, &key)
            .await;
        Ok(intent)
    }

    /// Confirms the intent with `payment_method` (`pm_card_visa`, ...). A decline is `Ok`, with
    /// [`PaymentIntent::declined`] true. Records a `confirm` transaction; the outcome follows as
    /// an event.
    pub async fn confirm(
        &self,
        intent_id: &str,
        payment_method: &str,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        let intent = match self {
            Self::Stripe(stripe) => stripe.confirm(intent_id, payment_method, key).await?,
            Self::Simulated(simulated) => simulated.confirm(intent_id, payment_method, key).await?,
        };
        if let Some(order_id) = intent.order_id() {
            self.record(order_id, TransactionKind::Confirm, &intent, key)
                .await;
        }
        Ok(intent)
    }

    /// Cancels an intent that has not succeeded. The `canceled` transaction is recorded when the
    /// `payment_intent.canceled` event arrives.
    pub async fn cancel(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        match self {
            Self::Stripe(stripe) => stripe.cancel(intent_id, key).await,
            Self::Simulated(simulated) => simulated.cancel(intent_id, key).await,
        }
    }

    /// Refunds `amount` (minor units) of a succeeded intent, or all that is left when `None`. The
    /// `refund` transaction is recorded when the `charge.refunded` event arrives.
    pub async fn refund(
        &self,
        intent_id: &str,
        amount: Option<i64>,
        key: &IdempotencyKey,
    ) -> Result<Refund, PaymentError> {
        if let Some(amount) = amount
            && amount <= 0
        {
            return Err(PaymentError::Invalid(format!(
                "a refund must be positive, not {amount}"
            )));
        }
        match self {
            Self::Stripe(stripe) => stripe.refund(intent_id, amount, key).await,
            Self::Simulated(simulated) => simulated.refund(intent_id, amount, key).await,
        }
    }

    pub async fn retrieve(&self, intent_id: &str) -> Result<PaymentIntent, PaymentError> {
        match self {
            Self::Stripe(stripe) => stripe.retrieve(intent_id).await,
            Self::Simulated(simulated) => simulated.retrieve(intent_id).await,
        }
    }

    fn db(&self) -> &PgPool {
        match self {
            Self::Stripe(stripe) => stripe.db(),
            Self::Simulated(simulated) => simulated.db(),
        }
    }

    /// The call happened at the provider whatever becomes of this row: a failure to record it is
    /// logged, not returned, so that the caller does not act as if the call had failed.
    async fn record(
        &self,
        order_id: Uuid,
        kind: TransactionKind,
        intent: &PaymentIntent,
        key: &IdempotencyKey,
    ) {
        let row = NewTransaction::from_intent(order_id, self.name(), kind, intent, key);
        if let Err(error) = transactions::record(self.db(), &row).await {
            tracing::error!(%order_id, intent = %intent.id, ?kind, %error, "payment transaction not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_derived_from_the_order_and_attempt() {
        let order = Uuid::nil();
        assert_eq!(
            IdempotencyKey::create(order, 2).as_str(),
            "order:00000000-0000-0000-0000-000000000000:attempt:2:create"
        );
        assert_ne!(
            IdempotencyKey::confirm(order, 1),
            IdempotencyKey::confirm(order, 2)
        );
        assert!(
            IdempotencyKey::refund(order, 1)
                .as_str()
                .ends_with(":refund:1")
        );
    }

    #[test]
    fn money_is_positive_minor_units_in_a_lower_case_currency() {
        assert!(check_money(1, "usd").is_ok());
        assert!(check_money(0, "usd").is_err());
        assert!(check_money(100, "USD").is_err());
        assert!(check_money(100, "usdx").is_err());
    }
}
