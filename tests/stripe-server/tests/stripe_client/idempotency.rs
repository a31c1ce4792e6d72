//! `Idempotency-Key`: a retried request gets the first answer and has no second effect; the same
//! key with other parameters is refused.

use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::PaymentIntentStatus;
use stripe_core::payment_intent::{ConfirmPaymentIntent, CreatePaymentIntent};
use stripe_types::Currency;

use crate::support::start;

fn key(value: &str) -> RequestStrategy {
    RequestStrategy::Idempotent(IdempotencyKey::new(value).unwrap())
}

#[tokio::test]
async fn replaying_a_create_with_its_key_returns_the_same_intent_and_creates_no_other() {
    let stripe = start().await;
    let create = || {
        CreatePaymentIntent::new(2_000, Currency::USD)
            .customize()
            .request_strategy(key("order-7-attempt-1"))
    };

    let first = create().send(&stripe.client).await.unwrap();
    let replay = create().send(&stripe.client).await.unwrap();

    assert_eq!(replay.id, first.id);
    assert_eq!(replay.client_secret, first.client_secret);
    assert_eq!(stripe.server.payment_intents().len(), 1);
    let created_events = stripe
        .server
        .events()
        .into_iter()
        .filter(|event| event.event_type == "payment_intent.created")
        .count();
    assert_eq!(created_events, 1);

    let requests = stripe.server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|request| {
        request.idempotency_key.as_deref() == Some("order-7-attempt-1")
            && request.param("amount") == Some("2000")
    }));
    assert!(!requests[0].replayed);
    assert!(requests[1].replayed);
}

#[tokio::test]
async fn a_replayed_confirm_charges_once() {
    let stripe = start().await;
    let intent = CreatePaymentIntent::new(2_000, Currency::USD)
        .send(&stripe.client)
        .await
        .unwrap();
    let confirm = || {
        ConfirmPaymentIntent::new(intent.id.clone())
            .payment_method("pm_card_visa")
            .customize()
            .request_strategy(key("order-8-confirm"))
    };

    let first = confirm().send(&stripe.client).await.unwrap();
    let replay = confirm().send(&stripe.client).await.unwrap();

    assert_eq!(first.status, PaymentIntentStatus::Succeeded);
    assert_eq!(
        replay.latest_charge.unwrap().id(),
        first.latest_charge.unwrap().id()
    );
    let succeeded = stripe
        .server
        .events()
        .into_iter()
        .filter(|event| event.event_type == "payment_intent.succeeded")
        .count();
    assert_eq!(succeeded, 1);
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_an_idempotency_error() {
    let stripe = start().await;
    CreatePaymentIntent::new(2_000, Currency::USD)
        .customize()
        .request_strategy(key("order-9"))
        .send(&stripe.client)
        .await
        .unwrap();

    let error = CreatePaymentIntent::new(2_001, Currency::USD)
        .customize()
        .request_strategy(key("order-9"))
        .send(&stripe.client)
        .await
        .unwrap_err();

    let StripeError::Stripe(error, 400) = error else {
        panic!("expected a 400, got {error:?}");
    };
    assert_eq!(error.type_.as_str(), "idempotency_error");
    assert_eq!(stripe.server.payment_intents().len(), 1);
}

#[tokio::test]
async fn a_request_refused_for_its_parameters_can_be_retried_with_the_same_key() {
    let stripe = start().await;
    // Below Stripe's minimum: refused before anything runs, so nothing is saved under the key.
    let error = CreatePaymentIntent::new(10, Currency::USD)
        .customize()
        .request_strategy(key("order-10"))
        .send(&stripe.client)
        .await
        .unwrap_err();
    assert!(matches!(error, StripeError::Stripe(_, 400)), "{error:?}");

    let intent = CreatePaymentIntent::new(1_000, Currency::USD)
        .customize()
        .request_strategy(key("order-10"))
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(intent.amount, 1_000);
}
