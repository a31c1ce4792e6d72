//! Webhook delivery: signatures async-stripe-webhook accepts (and forged ones it refuses),
//! redelivery, retries after failures, pause and resume, an endpoint known only later.

use std::time::Duration;

use shop_stripe_testserver::{
    DeliveryAttempt, DeliveryPolicy, DeliveryState, ServerOptions, StripeTestServer, WebhookTarget,
    sign,
};
use stripe_core::payment_intent::{ConfirmPaymentIntent, CreatePaymentIntent};
use stripe_types::Currency;
use stripe_webhook::{Webhook, WebhookError};

use crate::support::{DEADLINE, Receiver, SECRET_KEY, WEBHOOK_SECRET, client_for, start};

async fn pay(client: &stripe::Client) -> String {
    let intent = CreatePaymentIntent::new(1_200, Currency::USD)
        .send(client)
        .await
        .unwrap();
    ConfirmPaymentIntent::new(intent.id.clone())
        .payment_method("pm_card_visa")
        .send(client)
        .await
        .unwrap();
    intent.id.to_string()
}

#[tokio::test]
async fn a_redelivered_event_keeps_its_id_and_body_and_is_signed_afresh() {
    let stripe = start().await;
    let intent = pay(&stripe.client).await;
    let first = stripe
        .receiver
        .event("payment_intent.succeeded", &intent)
        .await;
    let event_id = first.verify().id.to_string();

    stripe.server.redeliver(&event_id).unwrap();

    let again = stripe
        .receiver
        .wait_for(|deliveries| {
            let mut same = deliveries
                .iter()
                .filter(|delivery| delivery.json()["id"] == event_id.as_str());
            same.nth(1).cloned()
        })
        .await;
    assert_eq!(again.payload, first.payload);
    assert_eq!(again.verify().id.as_str(), event_id);
    // The endpoint has answered; the server records the answer once it has read it.
    let event = stripe
        .server
        .wait_for(DEADLINE, |server| {
            server.event(&event_id).filter(|event| {
                event.attempts.len() == 2 && event.state == DeliveryState::Delivered
            })
        })
        .await
        .unwrap();
    assert!(event.attempts.iter().all(DeliveryAttempt::succeeded));
    assert!(stripe.server.redeliver("evt_unknown").is_err());
}

#[tokio::test]
async fn a_forged_or_stale_signature_is_refused_by_async_stripe() {
    let stripe = start().await;
    let intent = pay(&stripe.client).await;
    let delivery = stripe
        .receiver
        .event("payment_intent.succeeded", &intent)
        .await;
    let now = chrono_free_now();

    let forged = sign(delivery.payload.as_bytes(), "whsec_wrong", now);
    assert!(matches!(
        Webhook::construct_event(&delivery.payload, &forged, WEBHOOK_SECRET),
        Err(WebhookError::BadSignature)
    ));

    let stale = sign(delivery.payload.as_bytes(), WEBHOOK_SECRET, now - 301);
    assert!(matches!(
        Webhook::construct_event(&delivery.payload, &stale, WEBHOOK_SECRET),
        Err(WebhookError::BadTimestamp(_))
    ));

    let tampered = delivery.payload.replace("1200", "1");
    assert!(Webhook::construct_event(&tampered, &delivery.signature, WEBHOOK_SECRET).is_err());

    let resigned = sign(delivery.payload.as_bytes(), WEBHOOK_SECRET, now);
    assert!(Webhook::construct_event(&delivery.payload, &resigned, WEBHOOK_SECRET).is_ok());
}

fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_until_it_answers_2xx() {
    let stripe = start().await;
    stripe.receiver.fail_next(2);

    // One call, one event: it takes both failures.
    let intent = CreatePaymentIntent::new(1_000, Currency::USD)
        .send(&stripe.client)
        .await
        .unwrap();

    let created = stripe
        .server
        .wait_for_delivered("payment_intent.created", intent.id.as_str(), DEADLINE)
        .await
        .unwrap();
    let statuses: Vec<_> = created
        .attempts
        .iter()
        .map(|attempt| attempt.status)
        .collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(200)]);
    assert_eq!(stripe.receiver.deliveries().len(), 1);
    stripe
        .receiver
        .event("payment_intent.created", intent.id.as_str())
        .await
        .verify();
}

#[tokio::test]
async fn an_endpoint_that_never_answers_fails_after_the_bounded_attempts() {
    // Bound but never accepting: each POST times out. (A freed port could be taken by a
    // parallel test's receiver.)
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", silent.local_addr().unwrap());
    let server = StripeTestServer::start_with(ServerOptions {
        webhook: Some(WebhookTarget {
            url,
            secret: WEBHOOK_SECRET.to_owned(),
        }),
        delivery: DeliveryPolicy {
            max_attempts: 3,
            first_retry_after: Duration::from_millis(10),
            attempt_timeout: Duration::from_millis(100),
            ..DeliveryPolicy::default()
        },
        fixtures: None,
    })
    .await
    .unwrap();
    let client = client_for(&server, SECRET_KEY);

    CreatePaymentIntent::new(1_000, Currency::USD)
        .send(&client)
        .await
        .unwrap();

    let failed = server
        .wait_for(DEADLINE, |server| {
            server
                .events()
                .into_iter()
                .find(|event| event.state == DeliveryState::Failed)
        })
        .await
        .unwrap();
    assert_eq!(failed.attempts.len(), 3);
    assert!(
        failed
            .attempts
            .iter()
            .all(|attempt| attempt.error.is_some())
    );
}

#[tokio::test]
async fn paused_delivery_holds_events_until_resumed() {
    let stripe = start().await;
    stripe.server.pause_webhooks();

    let intent = pay(&stripe.client).await;

    // Every call has been answered, and nothing went out.
    assert_eq!(stripe.server.pending_events().len(), 3);
    assert!(stripe.server.delivered_events().is_empty());
    assert!(stripe.receiver.deliveries().is_empty());

    stripe.server.resume_webhooks();
    stripe
        .receiver
        .event("payment_intent.succeeded", &intent)
        .await;
    let types: Vec<_> = stripe
        .receiver
        .wait_for(|deliveries| (deliveries.len() == 3).then(|| deliveries.to_vec()))
        .await
        .iter()
        .map(|delivery| delivery.json()["type"].as_str().unwrap().to_owned())
        .collect();
    // Sent in the order they happened.
    assert_eq!(
        types,
        [
            "payment_intent.created",
            "charge.succeeded",
            "payment_intent.succeeded"
        ]
    );
}

#[tokio::test]
async fn events_wait_for_an_endpoint_set_after_start() {
    // The app under test listens on port 0 and learns Stripe's URL at start: the endpoint is
    // known only once both run.
    let server = StripeTestServer::start_with(ServerOptions::default())
        .await
        .unwrap();
    let client = client_for(&server, SECRET_KEY);
    let intent = pay(&client).await;
    assert_eq!(server.pending_events().len(), 3);

    let receiver = Receiver::start().await;
    server.set_webhook_target(receiver.target());

    receiver
        .event("payment_intent.succeeded", &intent)
        .await
        .verify();
}
