//! Stripe-shaped errors: unknown ids, missing or live keys, unknown parameters and URLs.

use stripe::StripeError;
use stripe_core::payment_intent::{
    ConfirmPaymentIntent, CreatePaymentIntent, RetrievePaymentIntent,
};
use stripe_types::Currency;

use crate::support::{SECRET_KEY, client_for, start};

#[tokio::test]
async fn an_unknown_intent_is_a_resource_missing_404() {
    let stripe = start().await;

    let error = RetrievePaymentIntent::new("pi_doesnotexist")
        .send(&stripe.client)
        .await
        .unwrap_err();

    let StripeError::Stripe(error, 404) = error else {
        panic!("expected a 404, got {error:?}");
    };
    assert_eq!(error.type_.as_str(), "invalid_request_error");
    assert_eq!(error.code.unwrap().as_str(), "resource_missing");
    assert_eq!(
        error.message.as_deref(),
        Some("No such payment_intent: 'pi_doesnotexist'")
    );
}

#[tokio::test]
async fn an_unknown_payment_method_is_a_404_and_changes_nothing() {
    let stripe = start().await;
    let intent = CreatePaymentIntent::new(1_000, Currency::USD)
        .send(&stripe.client)
        .await
        .unwrap();

    let error = ConfirmPaymentIntent::new(intent.id.clone())
        .payment_method("pm_card_doesnotexist")
        .send(&stripe.client)
        .await
        .unwrap_err();

    assert!(matches!(error, StripeError::Stripe(_, 404)), "{error:?}");
    assert_eq!(
        stripe.server.payment_intents()[0]["status"],
        "requires_payment_method"
    );
}

#[tokio::test]
async fn a_request_without_an_api_key_is_a_401_in_stripes_shape() {
    let stripe = start().await;

    let response = reqwest::Client::new()
        .get(format!(
            "{}v1/payment_intents/pi_x",
            stripe.server.base_url()
        ))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You did not provide an API key")
    );
}

#[tokio::test]
async fn a_live_key_is_refused() {
    let stripe = start().await;
    let live = client_for(&stripe.server, "sk_live_0123456789");

    let error = RetrievePaymentIntent::new("pi_x")
        .send(&live)
        .await
        .unwrap_err();

    let StripeError::Stripe(error, 401) = error else {
        panic!("expected a 401, got {error:?}");
    };
    assert!(!error.message.unwrap().contains("0123456789"));
}

#[tokio::test]
async fn unknown_parameters_and_urls_are_refused_as_stripe_does() {
    let stripe = start().await;
    let http = reqwest::Client::new();
    let base = stripe.server.base_url();

    let response = http
        .post(format!("{base}v1/payment_intents"))
        .bearer_auth(SECRET_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=1000&currency=usd&amout=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "amout");

    let response = http
        .get(format!("{base}v1/customers"))
        .bearer_auth(SECRET_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unrecognized request URL (GET: /v1/customers)")
    );
}

#[tokio::test]
async fn the_client_speaks_the_api_version_events_are_stamped_with() {
    let stripe = start().await;
    CreatePaymentIntent::new(1_000, Currency::USD)
        .send(&stripe.client)
        .await
        .unwrap();

    // If async-stripe moves to another API version, events must follow: this says so.
    let request = &stripe.server.requests()[0];
    assert_eq!(
        request.stripe_version.as_deref(),
        Some(shop_stripe_testserver::API_VERSION)
    );
    assert_eq!(request.api_key.as_deref(), Some(SECRET_KEY));
}
