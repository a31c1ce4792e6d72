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
pub mod signature;
mod simulated;
mod stripe;
pub mod transactions;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::{self, Settings};

pub use shop_actors::payment_router::{
    self as router, MailboxSink, PaymentEventSink, PaymentRouter, SinkClosed, SubscriptionId,
};
pub use shop_actors::payments::{
    IdempotencyKey, IntentStatus, PaymentError, PaymentEvent, PaymentEventKind, PaymentIntent,
};
pub use simulated::SimulatedProvider;
pub use stripe::StripeProvider;
pub use transactions::{NewTransaction, TransactionKind};

/// A refund as the provider answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refund {
    /// `re_...`
    pub id: String,
    pub intent_id: String,
    /// Minor units refunded by this refund.
    pub amount: i64,
    pub currency: String,
    /// `succeeded`, `pending`, `failed`... as the provider spelled it; read with
    /// [`refunds::ProviderStatus::parse`].
    pub status: Option<String>,
    pub raw: serde_json::Value,
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
    #[tracing::instrument(name = "payment provider create_intent", skip_all, fields(provider = self.name(), otel.kind = "client"))]
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
    #[tracing::instrument(name = "payment provider confirm", skip_all, fields(provider = self.name(), otel.kind = "client"))]
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
    #[tracing::instrument(name = "payment provider cancel", skip_all, fields(provider = self.name(), otel.kind = "client"))]
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

    /// Refunds `amount` (minor units) of a succeeded intent, or all that is left when `None`,
    /// with `metadata` on the refund (its events carry it back). The `refund` transaction is
    /// recorded when the `charge.refunded` event arrives.
    #[tracing::instrument(name = "payment provider refund", skip_all, fields(provider = self.name(), otel.kind = "client"))]
    pub async fn refund(
        &self,
        intent_id: &str,
        amount: Option<i64>,
        metadata: BTreeMap<String, String>,
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
            Self::Stripe(stripe) => stripe.refund(intent_id, amount, metadata, key).await,
            Self::Simulated(simulated) => simulated.refund(intent_id, amount, metadata, key).await,
        }
    }

    #[tracing::instrument(name = "payment provider retrieve", skip_all, fields(provider = self.name(), otel.kind = "client"))]
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

/// The order saga's view of the provider (see `shop_actors::payments`).
impl shop_actors::payments::PaymentGateway for PaymentProvider {
    fn name(&self) -> &'static str {
        PaymentProvider::name(self)
    }

    fn create_intent<'a>(
        &'a self,
        order_id: Uuid,
        attempt: u32,
        amount: i64,
        currency: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<PaymentIntent, PaymentError>> {
        Box::pin(PaymentProvider::create_intent(
            self,
            order_id,
            attempt,
            amount,
            currency,
            BTreeMap::new(),
        ))
    }

    fn confirm<'a>(
        &'a self,
        intent_id: &'a str,
        payment_method: &'a str,
        key: &'a IdempotencyKey,
    ) -> futures::future::BoxFuture<'a, Result<PaymentIntent, PaymentError>> {
        Box::pin(PaymentProvider::confirm(
            self,
            intent_id,
            payment_method,
            key,
        ))
    }

    fn cancel<'a>(
        &'a self,
        intent_id: &'a str,
        key: &'a IdempotencyKey,
    ) -> futures::future::BoxFuture<'a, Result<PaymentIntent, PaymentError>> {
        Box::pin(PaymentProvider::cancel(self, intent_id, key))
    }

    fn retrieve<'a>(
        &'a self,
        intent_id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<PaymentIntent, PaymentError>> {
        Box::pin(PaymentProvider::retrieve(self, intent_id))
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
