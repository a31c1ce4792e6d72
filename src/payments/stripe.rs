//! The Stripe provider: async-stripe 1.0 against `stripe.api_base` (Stripe itself by default, a
//! local Stripe-compatible server in tests), with `stripe.secret_key`. Each call is sent once with
//! the caller's idempotency key (never async-stripe's random-key retries: the saga retries with
//! the same key) and bounded by `payments.timeout_secs`.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use stripe::{
    Client, ClientBuilder, IdempotencyKey as StripeKey, RequestStrategy, StripeError, StripeRequest,
};
use stripe_core::PaymentIntentStatus;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CancelPaymentIntentCancellationReason, ConfirmPaymentIntent,
    CreatePaymentIntent, CreatePaymentIntentAutomaticPaymentMethods,
    CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects, RetrievePaymentIntent,
};
use stripe_core::refund::CreateRefund;
use stripe_types::Currency;

use super::{IdempotencyKey, IntentStatus, PaymentError, PaymentIntent, Refund};
use crate::config::StripeSettings;

#[derive(Clone)]
pub struct StripeProvider {
    // Shared: the client is large (its connection pool and configuration) and cloned with the
    // provider into every holder.
    client: Arc<Client>,
    timeout: Duration,
    db: PgPool,
}

impl StripeProvider {
    pub fn new(settings: &StripeSettings, timeout: Duration, db: PgPool) -> anyhow::Result<Self> {
        let key = settings
            .secret_key
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("payments.provider = stripe needs stripe.secret_key"))?;
        let mut builder = ClientBuilder::new(key.expose_secret())
            .timeout(timeout)
            .request_strategy(RequestStrategy::Once);
        if let Some(base) = &settings.api_base {
            builder = builder.url(base.as_str());
        }
        let client = builder
            .build()
            .map_err(|error| anyhow::anyhow!("the Stripe client: {error}"))?;
        Ok(Self {
            client: Arc::new(client),
            timeout,
            db,
        })
    }

    pub(super) fn db(&self) -> &PgPool {
        &self.db
    }

    pub(super) async fn create_intent(
        &self,
        amount: i64,
        currency: &str,
        metadata: BTreeMap<String, String>,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        // Infallible: an unknown code becomes `Currency::Unknown` and Stripe judges it.
        let Ok(currency) = Currency::from_str(currency);
        // Cards are confirmed server-side (`POST /orders/{id}/pay`) without a return URL, so no
        // redirect-based method may be offered; Stripe.js can still confirm with any other.
        let mut automatic = CreatePaymentIntentAutomaticPaymentMethods::new(true);
        automatic.allow_redirects =
            Some(CreatePaymentIntentAutomaticPaymentMethodsAllowRedirects::Never);
        let request = CreatePaymentIntent::new(amount, currency)
            .metadata(
                metadata
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
            .automatic_payment_methods(automatic);
        let intent = self
            .send(
                request
                    .customize()
                    .request_strategy(strategy(key)?)
                    .send(&*self.client),
            )
            .await?;
        convert_intent(&intent)
    }

    pub(super) async fn confirm(
        &self,
        intent_id: &str,
        payment_method: &str,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        let request = ConfirmPaymentIntent::new(intent_id).payment_method(payment_method);
        let sent = tokio::time::timeout(
            self.timeout,
            request
                .customize()
                .request_strategy(strategy(key)?)
                .send(&*self.client),
        )
        .await
        .map_err(|_| PaymentError::Timeout(self.timeout))?;
        match sent {
            Ok(intent) => convert_intent(&intent),
            // A declined card is an answer, not a failure: Stripe says 402 card_error and the
            // intent (in the error, or fetched) shows `last_payment_error`.
            Err(StripeError::Stripe(error, 402)) => match &error.payment_intent {
                Some(intent) => convert_intent(intent),
                None => self.retrieve(intent_id).await,
            },
            Err(error) => Err(self.error(error)),
        }
    }

    pub(super) async fn cancel(
        &self,
        intent_id: &str,
        key: &IdempotencyKey,
    ) -> Result<PaymentIntent, PaymentError> {
        let request = CancelPaymentIntent::new(intent_id)
            .cancellation_reason(CancelPaymentIntentCancellationReason::Abandoned);
        let intent = self
            .send(
                request
                    .customize()
                    .request_strategy(strategy(key)?)
                    .send(&*self.client),
            )
            .await?;
        convert_intent(&intent)
    }

    pub(super) async fn refund(
        &self,
        intent_id: &str,
        amount: Option<i64>,
        metadata: BTreeMap<String, String>,
        key: &IdempotencyKey,
    ) -> Result<Refund, PaymentError> {
        let mut request = CreateRefund::new().payment_intent(intent_id).metadata(
            metadata
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if let Some(amount) = amount {
            request = request.amount(amount);
        }
        let refund = self
            .send(
                request
                    .customize()
                    .request_strategy(strategy(key)?)
                    .send(&*self.client),
            )
            .await?;
        Ok(Refund {
            id: refund.id.to_string(),
            intent_id: refund
                .payment_intent
                .as_ref()
                .map_or_else(|| intent_id.to_owned(), |intent| intent.id().to_string()),
            amount: refund.amount,
            currency: refund.currency.to_string(),
            status: refund.status.clone(),
            raw: serde_json::to_value(&refund)
                .map_err(|error| PaymentError::Unexpected(error.to_string()))?,
        })
    }

    pub(super) async fn retrieve(&self, intent_id: &str) -> Result<PaymentIntent, PaymentError> {
        let intent = self
            .send(RetrievePaymentIntent::new(intent_id).send(&*self.client))
            .await?;
        convert_intent(&intent)
    }

    /// Bounds the call by the timeout (async-stripe's own covers each HTTP attempt; this covers
    /// everything, connection set-up included) and maps its error.
    async fn send<T>(
        &self,
        call: impl Future<Output = Result<T, StripeError>>,
    ) -> Result<T, PaymentError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| PaymentError::Timeout(self.timeout))?
            .map_err(|error| self.error(error))
    }

    fn error(&self, error: StripeError) -> PaymentError {
        match error {
            StripeError::Stripe(error, status) => {
                let message = error.message.clone().unwrap_or_default();
                let code = error.code.as_ref().map_or_else(
                    || error.type_.as_str().to_owned(),
                    |code| code.as_str().to_owned(),
                );
                match status {
                    404 => PaymentError::NotFound(message),
                    429 | 500.. => PaymentError::Unavailable(format!("{status} {code}: {message}")),
                    _ => PaymentError::Refused {
                        status,
                        code,
                        message,
                    },
                }
            }
            StripeError::Timeout => PaymentError::Timeout(self.timeout),
            StripeError::ClientError(why) => PaymentError::Unavailable(why),
            StripeError::JSONDeserialize(why) | StripeError::ConfigError(why) => {
                PaymentError::Unexpected(why)
            }
        }
    }
}

fn strategy(key: &IdempotencyKey) -> Result<RequestStrategy, PaymentError> {
    let key = StripeKey::new(key.as_str())
        .map_err(|error| PaymentError::Invalid(format!("idempotency key: {error}")))?;
    Ok(RequestStrategy::Idempotent(key))
}

fn convert_intent(intent: &stripe_core::PaymentIntent) -> Result<PaymentIntent, PaymentError> {
    let status = match &intent.status {
        PaymentIntentStatus::RequiresPaymentMethod => IntentStatus::RequiresPaymentMethod,
        PaymentIntentStatus::RequiresConfirmation => IntentStatus::RequiresConfirmation,
        PaymentIntentStatus::RequiresAction => IntentStatus::RequiresAction,
        PaymentIntentStatus::RequiresCapture => IntentStatus::RequiresCapture,
        PaymentIntentStatus::Processing => IntentStatus::Processing,
        PaymentIntentStatus::Succeeded => IntentStatus::Succeeded,
        PaymentIntentStatus::Canceled => IntentStatus::Canceled,
        // `#[non_exhaustive]`: `Unknown(..)` and whatever a later API version adds.
        other => {
            return Err(PaymentError::Unexpected(format!(
                "PaymentIntent status {}",
                other.as_str()
            )));
        }
    };
    let last_payment_error = intent.last_payment_error.as_ref().map(|error| {
        error
            .message
            .clone()
            .or_else(|| error.decline_code.clone())
            .or_else(|| error.code.as_ref().map(|code| code.as_str().to_owned()))
            .unwrap_or_else(|| "the payment failed".to_owned())
    });
    Ok(PaymentIntent {
        id: intent.id.to_string(),
        client_secret: intent.client_secret.clone(),
        status,
        amount: intent.amount,
        amount_received: intent.amount_received,
        currency: intent.currency.to_string(),
        last_payment_error,
        latest_charge: intent
            .latest_charge
            .as_ref()
            .map(|charge| charge.id().to_string()),
        metadata: intent
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        raw: serde_json::to_value(intent)
            .map_err(|error| PaymentError::Unexpected(error.to_string()))?,
    })
}
