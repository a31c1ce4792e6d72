//! Payments: the real async-stripe client inside the app against the Stripe-compatible test
//! server, whose signed webhooks come back to `POST /api/v1/webhooks/stripe`; and the simulated
//! provider, whose events take the same path. A recording subscriber on the payment router
//! stands in for the order saga.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use shop::config::PaymentProvider as ProviderKind;
use shop::payments::events::{mark_processed, unprocessed_events};
use shop::payments::{
    IdempotencyKey, IntentStatus, PaymentEvent, PaymentEventKind, PaymentEventSink,
    PaymentProvider, SinkClosed,
};
use shop_stripe_testserver::{
    DeliveryState, ServerOptions, StripeEvent, StripeTestServer, WebhookTarget, sign,
};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, eventually, metric_value};

const SECRET_KEY: &str = "sk_test_shop_payments";
const WEBHOOK_SECRET: &str = "whsec_shop_payments";
const WEBHOOK: &str = "/api/v1/webhooks/stripe";
/// A deadline, not a delay: every wait ends as soon as its condition holds.
const DEADLINE: Duration = Duration::from_secs(15);

/// Stands in for the order supervisor: keeps every event the router forwards.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<PaymentEvent>>,
}

impl PaymentEventSink for Recorder {
    fn deliver(&self, event: PaymentEvent) -> Result<(), SinkClosed> {
        self.events.lock().unwrap().push(event);
        Ok(())
    }
}

impl Recorder {
    fn all(&self) -> Vec<PaymentEvent> {
        self.events.lock().unwrap().clone()
    }

    /// How many times the event `id` was forwarded.
    fn count(&self, id: &str) -> usize {
        self.all()
            .iter()
            .filter(|event| event.event_id == id)
            .count()
    }

    /// Waits for the first forwarded event of `kind` about `intent_id`.
    async fn received(&self, kind: PaymentEventKind, intent_id: &str) -> PaymentEvent {
        eventually(
            DEADLINE,
            &format!("a {kind:?} event for {intent_id}"),
            || {
                let found = self
                    .all()
                    .into_iter()
                    .find(|event| event.kind == kind && event.intent_id == intent_id);
                async move { found }
            },
        )
        .await
    }

    /// Waits for the event `id` to have been forwarded.
    async fn received_id(&self, id: &str) {
        eventually(DEADLINE, &format!("event {id} forwarded"), || {
            let found = (self.count(id) > 0).then_some(());
            async move { found }
        })
        .await
    }
}

/// The app, the router's recording subscriber and, with Stripe, the test server.
struct Shop {
    app: TestApp,
    recorder: Arc<Recorder>,
    stripe: Option<StripeTestServer>,
}

impl Shop {
    /// The app on `payments.provider = stripe`, talking to the test server, which delivers its
    /// webhooks to the app once the app's port is known.
    async fn with_stripe() -> Self {
        let stripe = StripeTestServer::start_with(ServerOptions::default())
            .await
            .expect("the Stripe test server starts");
        let base = stripe.base_url();
        let app = TestApp::spawn_with(
            |settings| {
                settings.payments.provider = ProviderKind::Stripe;
                settings.stripe.secret_key = Some(SECRET_KEY.to_owned().into());
                settings.stripe.webhook_secret = Some(WEBHOOK_SECRET.to_owned().into());
                settings.stripe.api_base = Some(base);
            },
            |_| Vec::new(),
        )
        .await;
        stripe.set_webhook_target(WebhookTarget {
            url: app.url(WEBHOOK),
            secret: WEBHOOK_SECRET.to_owned(),
        });
        Self::subscribed(app, Some(stripe))
    }

    /// The app on the embedded default, the simulated provider.
    async fn simulated() -> Self {
        Self::subscribed(TestApp::spawn().await, None)
    }

    fn subscribed(app: TestApp, stripe: Option<StripeTestServer>) -> Self {
        let recorder = Arc::new(Recorder::default());
        // These tests are about the payments layer alone, with order ids no order has: the
        // order sagas, which would settle such events as orphans, do not listen.
        app.state.actors.detach_orders_from_payments();
        app.state.actors.payment_router.subscribe(recorder.clone());
        Self {
            app,
            recorder,
            stripe,
        }
    }

    fn stripe(&self) -> &StripeTestServer {
        self.stripe.as_ref().expect("a Stripe shop")
    }

    fn payments(&self) -> &PaymentProvider {
        &self.app.state.actors.payments
    }

    /// A fresh order's first intent for `amount` usd.
    async fn intent_for_new_order(&self, amount: i64) -> (Uuid, shop::payments::PaymentIntent) {
        let order = Uuid::new_v4();
        let intent = self
            .payments()
            .create_intent(order, 1, amount, "usd", BTreeMap::new())
            .await
            .expect("intent created");
        (order, intent)
    }

    /// Waits until the test server has delivered the event `event_type` about `object_id`.
    async fn delivered(&self, event_type: &str, object_id: &str) -> StripeEvent {
        self.stripe()
            .wait_for_delivered(event_type, object_id, DEADLINE)
            .await
            .unwrap_or_else(|_| panic!("{event_type} for {object_id} not delivered"))
    }

    /// POSTs `payload` to the webhook with `signature` as the `Stripe-Signature` header.
    async fn post_event(&self, payload: &str, signature: Option<&str>) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .post(self.app.url(WEBHOOK))
            .header("content-type", "application/json; charset=utf-8")
            .body(payload.to_owned());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        request.send().await.expect("POST webhook")
    }

    /// POSTs `payload` signed now with the webhook secret.
    async fn post_signed(&self, payload: &str) -> reqwest::Response {
        let signature = sign(payload.as_bytes(), WEBHOOK_SECRET, now());
        self.post_event(payload, Some(&signature)).await
    }

    /// Every event the router forwarded before this call has reached the recorder: a fresh
    /// event is forwarded after them (the router handles its mailbox in order).
    async fn router_drained(&self) {
        let barrier = succeeded_event(Uuid::new_v4(), 100);
        let id = event_id(&barrier);
        assert_eq!(self.post_signed(&barrier).await.status(), 200);
        self.recorder.received_id(&id).await;
    }

    async fn stored_events(&self, id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE id = $1")
            .bind(id)
            .fetch_one(&self.app.db)
            .await
            .unwrap()
    }

    async fn all_stored_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM stripe_events")
            .fetch_one(&self.app.db)
            .await
            .unwrap()
    }

    /// Asserts the kinds of the order's `payment_transactions`, in any order: a call's row and
    /// its outcome's (recorded when the event arrives) may land either way round.
    async fn assert_transactions(&self, order: Uuid, expected: &[&str]) {
        let mut kinds: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM payment_transactions WHERE order_id = $1")
                .bind(order)
                .fetch_all(&self.app.db)
                .await
                .unwrap();
        kinds.sort();
        let mut expected: Vec<&str> = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(kinds, expected, "payment_transactions of {order}");
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A `payment_intent.succeeded` event for `order`, with ids of its own, as Stripe would send it.
fn succeeded_event(order: Uuid, amount: i64) -> String {
    json!({
        "id": format!("evt_test_{}", Uuid::new_v4().simple()),
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": now(),
        "livemode": false,
        "pending_webhooks": 1,
        "data": {"object": {
            "id": format!("pi_test_{}", Uuid::new_v4().simple()),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": amount,
            "currency": "usd",
            "status": "succeeded",
            "metadata": {"order_id": order.to_string()},
        }},
    })
    .to_string()
}

fn event_id(payload: &str) -> String {
    serde_json::from_str::<Value>(payload).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_visa_payment_is_stored_once_and_forwarded_with_its_order_amount_and_currency() {
    let shop = Shop::with_stripe().await;
    let (order, intent) = shop.intent_for_new_order(2_500).await;
    assert_eq!(intent.status, IntentStatus::RequiresPaymentMethod);
    assert!(
        intent
            .client_secret
            .as_deref()
            .unwrap()
            .starts_with(&intent.id)
    );
    assert_eq!(intent.order_id(), Some(order));

    let paid = shop
        .payments()
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .unwrap();
    assert_eq!(paid.status, IntentStatus::Succeeded);
    assert!(paid.latest_charge.is_some());
    assert_eq!(paid.raw["id"], intent.id.as_str());

    let delivered = shop.delivered("payment_intent.succeeded", &intent.id).await;
    let event = shop
        .recorder
        .received(PaymentEventKind::Succeeded, &intent.id)
        .await;
    assert_eq!(event.event_id, delivered.id);
    assert_eq!(event.order_id, order);
    assert_eq!(event.amount, 2_500);
    assert_eq!(event.currency, "usd");
    assert_eq!(event.error, None);
    assert_eq!(event.payload["id"], delivered.id.as_str());
    assert_eq!(shop.stored_events(&delivered.id).await, 1);

    // Types nobody acts on are stored, already processed, and not forwarded.
    let charge = paid.latest_charge.unwrap();
    let charge_event = shop.delivered("charge.succeeded", &charge).await;
    let processed: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT processed_at FROM stripe_events WHERE id = $1")
            .bind(&charge_event.id)
            .fetch_one(&shop.app.db)
            .await
            .unwrap();
    assert!(processed.is_some());
    shop.router_drained().await;
    assert_eq!(shop.recorder.count(&delivered.id), 1);
    assert_eq!(shop.recorder.count(&charge_event.id), 0);
    // The saga has not acted on the succeeded event yet: it would be replayed.
    let pending = unprocessed_events(&shop.app.db).await.unwrap();
    assert!(pending.iter().any(|event| event.event_id == delivered.id));

    shop.assert_transactions(order, &["create", "confirm", "succeeded"])
        .await;
    let metrics = shop.app.metrics().await;
    let series = "payment_events_total{type=\"payment_intent.succeeded\"}";
    assert!(metric_value(&metrics, series).unwrap() >= 1.0, "{series}");
}

#[tokio::test]
async fn a_declined_card_is_an_answer_and_the_failed_event_carries_the_error() {
    let shop = Shop::with_stripe().await;
    let (order, intent) = shop.intent_for_new_order(4_200).await;

    let declined = shop
        .payments()
        .confirm(
            &intent.id,
            "pm_card_chargeDeclined",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .expect("a decline is an answer, not an error");
    assert!(declined.declined());
    assert_eq!(declined.status, IntentStatus::RequiresPaymentMethod);
    let reason = declined.last_payment_error.clone().unwrap();
    assert!(reason.to_lowercase().contains("declined"), "{reason}");

    let event = shop
        .recorder
        .received(PaymentEventKind::Failed, &intent.id)
        .await;
    assert_eq!(event.order_id, order);
    assert_eq!(event.amount, 4_200);
    assert_eq!(event.error.as_deref(), Some(reason.as_str()));
    assert_eq!(shop.stored_events(&event.event_id).await, 1);

    // Another card is another attempt, with a key of its own.
    let paid = shop
        .payments()
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 2),
        )
        .await
        .unwrap();
    assert_eq!(paid.status, IntentStatus::Succeeded);
    shop.recorder
        .received(PaymentEventKind::Succeeded, &intent.id)
        .await;
    shop.assert_transactions(
        order,
        &["create", "confirm", "failed", "confirm", "succeeded"],
    )
    .await;
}

#[tokio::test]
async fn the_same_event_delivered_five_times_is_stored_once_and_forwarded_once() {
    let shop = Shop::with_stripe().await;
    let (order, intent) = shop.intent_for_new_order(1_800).await;
    shop.payments()
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .unwrap();
    let event = shop.delivered("payment_intent.succeeded", &intent.id).await;

    // Stripe resends it (same id and body, signed afresh), one after another.
    for attempts in 2..=6 {
        shop.stripe().redeliver(&event.id).unwrap();
        shop.stripe()
            .wait_for(DEADLINE, |server| {
                server.event(&event.id).filter(|event| {
                    event.attempts.len() == attempts && event.state == DeliveryState::Delivered
                })
            })
            .await
            .expect("redelivered and acknowledged");
    }
    let resent = shop.stripe().event(&event.id).unwrap();
    assert!(
        resent
            .attempts
            .iter()
            .all(|attempt| attempt.status == Some(200))
    );

    // The same signed body POSTed again, one after another and all at once.
    for _ in 0..5 {
        let response = shop.post_signed(&event.payload).await;
        assert_eq!(response.status(), 200);
        let receipt: Value = response.json().await.unwrap();
        assert_eq!(receipt["duplicate"], true);
    }
    let at_once = futures::future::join_all((0..5).map(|_| shop.post_signed(&event.payload))).await;
    let statuses: Vec<u16> = at_once.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200; 5]);

    shop.router_drained().await;
    assert_eq!(shop.stored_events(&event.id).await, 1);
    assert_eq!(shop.recorder.count(&event.id), 1);
    shop.assert_transactions(order, &["create", "confirm", "succeeded"])
        .await;
}

#[tokio::test]
async fn five_concurrent_first_deliveries_of_an_event_store_it_once_and_forward_it_once() {
    let shop = Shop::with_stripe().await;
    let (order, intent) = shop.intent_for_new_order(2_200).await;
    // Held back at the server, so that the five below are the first deliveries.
    shop.stripe().pause_webhooks();
    shop.payments()
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .unwrap();
    let event = shop
        .stripe()
        .events()
        .into_iter()
        .find(|event| event.event_type == "payment_intent.succeeded")
        .unwrap();

    let responses =
        futures::future::join_all((0..5).map(|_| shop.post_signed(&event.payload))).await;
    let mut first_deliveries = 0;
    for response in responses {
        assert_eq!(response.status(), 200);
        let receipt: Value = response.json().await.unwrap();
        if receipt["duplicate"] == false {
            first_deliveries += 1;
        }
    }
    assert_eq!(first_deliveries, 1);

    // Stripe's own delivery comes after: a sixth, acknowledged and ignored.
    shop.stripe().resume_webhooks();
    shop.delivered("payment_intent.succeeded", &intent.id).await;
    shop.router_drained().await;
    assert_eq!(shop.stored_events(&event.id).await, 1);
    assert_eq!(shop.recorder.count(&event.id), 1);
    shop.assert_transactions(order, &["create", "confirm", "succeeded"])
        .await;
}

#[tokio::test]
async fn forged_stale_modified_or_unsigned_deliveries_are_refused_and_nothing_is_stored() {
    let shop = Shop::with_stripe().await;
    let payload = succeeded_event(Uuid::new_v4(), 5_000);
    let now = now();

    let forged = sign(payload.as_bytes(), "whsec_someone_else", now);
    let stale = sign(payload.as_bytes(), WEBHOOK_SECRET, now - 301);
    let early = sign(payload.as_bytes(), WEBHOOK_SECRET, now + 301);
    let genuine = sign(payload.as_bytes(), WEBHOOK_SECRET, now);
    let modified = payload.replace("5000", "1");
    assert_ne!(modified, payload);

    for (what, body, signature) in [
        ("another secret", payload.as_str(), Some(forged.as_str())),
        ("301 s old", payload.as_str(), Some(stale.as_str())),
        ("301 s ahead", payload.as_str(), Some(early.as_str())),
        ("a modified body", modified.as_str(), Some(genuine.as_str())),
        ("no v1", payload.as_str(), Some(&*format!("t={now}"))),
        ("garbage", payload.as_str(), Some("garbage")),
        ("no header", payload.as_str(), None),
    ] {
        let response = shop.post_event(body, signature).await;
        let problem = assert_problem(response, 400).await;
        assert!(problem["detail"].is_string(), "{what}: {problem}");
    }
    assert_eq!(shop.all_stored_events().await, 0);
    assert!(shop.recorder.all().is_empty());

    // The same body, signed right, is taken: the refusals were about the signature alone.
    let response = shop.post_event(&payload, Some(&genuine)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(shop.stored_events(&event_id(&payload)).await, 1);

    // Signed but not an event: refused, nothing stored.
    let not_an_event = r#"{"hello": "world"}"#;
    let response = shop.post_signed(not_an_event).await;
    assert_problem(response, 400).await;
    assert_eq!(shop.all_stored_events().await, 1);
}

#[tokio::test]
async fn cancel_and_refund_are_forwarded_for_the_right_intent() {
    let shop = Shop::with_stripe().await;

    let (abandoned, unpaid) = shop.intent_for_new_order(1_500).await;
    let canceled = shop
        .payments()
        .cancel(&unpaid.id, &IdempotencyKey::cancel(abandoned, 1))
        .await
        .unwrap();
    assert_eq!(canceled.status, IntentStatus::Canceled);
    let event = shop
        .recorder
        .received(PaymentEventKind::Canceled, &unpaid.id)
        .await;
    assert_eq!(event.order_id, abandoned);
    assert_eq!(event.amount, 1_500);

    let (order, intent) = shop.intent_for_new_order(3_000).await;
    shop.payments()
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .unwrap();
    let partial = shop
        .payments()
        .refund(
            &intent.id,
            Some(1_000),
            Default::default(),
            &IdempotencyKey::refund(order, 1),
        )
        .await
        .unwrap();
    assert_eq!(partial.amount, 1_000);
    assert_eq!(partial.intent_id, intent.id);
    let refunded = shop
        .recorder
        .received(PaymentEventKind::Refunded, &intent.id)
        .await;
    assert_eq!(refunded.order_id, order);
    assert_eq!(refunded.amount, 1_000);
    assert_eq!(refunded.payload["data"]["object"]["object"], "charge");

    let rest = shop
        .payments()
        .refund(
            &intent.id,
            None,
            Default::default(),
            &IdempotencyKey::refund(order, 2),
        )
        .await
        .unwrap();
    assert_eq!(rest.amount, 2_000);
    let total = eventually(DEADLINE, "the second refund forwarded", || {
        let second = shop
            .recorder
            .all()
            .into_iter()
            .filter(|event| {
                event.kind == PaymentEventKind::Refunded && event.intent_id == intent.id
            })
            .nth(1);
        async move { second }
    })
    .await;
    assert_eq!(total.amount, 3_000, "the total refunded so far");

    // Nothing is left to refund: the provider says so, as an error.
    let error = shop
        .payments()
        .refund(
            &intent.id,
            None,
            Default::default(),
            &IdempotencyKey::refund(order, 3),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            shop::payments::PaymentError::Refused { status: 400, .. }
        ),
        "{error:?}"
    );
    shop.assert_transactions(abandoned, &["create", "canceled"])
        .await;
    shop.assert_transactions(
        order,
        &["create", "confirm", "succeeded", "refund", "refund"],
    )
    .await;
}

#[tokio::test]
async fn every_call_carries_its_idempotency_key_and_a_repeated_create_answers_the_same_intent() {
    let shop = Shop::with_stripe().await;
    let order = Uuid::new_v4();
    let create = || {
        shop.payments()
            .create_intent(order, 1, 2_000, "usd", BTreeMap::new())
    };
    let first = create().await.unwrap();
    let again = create().await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.client_secret, first.client_secret);
    assert_eq!(shop.stripe().payment_intents().len(), 1);

    let confirm_key = IdempotencyKey::confirm(order, 1);
    let paid = shop
        .payments()
        .confirm(&first.id, "pm_card_visa", &confirm_key)
        .await
        .unwrap();
    // A retried confirm (after a timeout, say) charges once.
    let replayed = shop
        .payments()
        .confirm(&first.id, "pm_card_visa", &confirm_key)
        .await
        .unwrap();
    assert_eq!(replayed.latest_charge, paid.latest_charge);
    shop.payments()
        .refund(
            &first.id,
            Some(500),
            Default::default(),
            &IdempotencyKey::refund(order, 1),
        )
        .await
        .unwrap();
    let other = shop
        .payments()
        .create_intent(order, 2, 2_000, "usd", BTreeMap::new())
        .await
        .unwrap();
    assert_ne!(other.id, first.id, "another attempt, another intent");
    shop.payments()
        .cancel(&other.id, &IdempotencyKey::cancel(order, 2))
        .await
        .unwrap();

    let posts: Vec<_> = shop
        .stripe()
        .requests()
        .into_iter()
        .filter(|request| request.method == "POST")
        .collect();
    let keyed: Vec<(String, String, bool)> = posts
        .iter()
        .map(|request| {
            (
                request.path.clone(),
                request
                    .idempotency_key
                    .clone()
                    .expect("every POST is keyed"),
                request.replayed,
            )
        })
        .collect();
    let prefix = format!("order:{order}");
    assert_eq!(
        keyed,
        [
            (
                "/v1/payment_intents".into(),
                format!("{prefix}:attempt:1:create"),
                false
            ),
            (
                "/v1/payment_intents".into(),
                format!("{prefix}:attempt:1:create"),
                true
            ),
            (
                format!("/v1/payment_intents/{}/confirm", first.id),
                format!("{prefix}:attempt:1:confirm"),
                false
            ),
            (
                format!("/v1/payment_intents/{}/confirm", first.id),
                format!("{prefix}:attempt:1:confirm"),
                true
            ),
            ("/v1/refunds".into(), format!("{prefix}:refund:1"), false),
            (
                "/v1/payment_intents".into(),
                format!("{prefix}:attempt:2:create"),
                false
            ),
            (
                format!("/v1/payment_intents/{}/cancel", other.id),
                format!("{prefix}:attempt:2:cancel"),
                false
            ),
        ]
    );
    assert_eq!(
        posts[0].param("metadata[order_id]"),
        Some(order.to_string().as_str())
    );
    assert_eq!(posts[0].param("amount"), Some("2000"));
}

#[tokio::test]
async fn the_simulated_provider_sends_its_outcomes_through_the_same_router() {
    let shop = Shop::simulated().await;
    assert_eq!(shop.payments().name(), "simulated");

    let (order, intent) = shop.intent_for_new_order(2_500).await;
    assert_eq!(intent.status, IntentStatus::RequiresPaymentMethod);
    let again = shop
        .payments()
        .create_intent(order, 1, 2_500, "usd", BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(again.id, intent.id, "same order and attempt, same intent");

    let key = IdempotencyKey::confirm(order, 1);
    let paid = shop
        .payments()
        .confirm(&intent.id, "pm_card_visa", &key)
        .await
        .unwrap();
    assert_eq!(paid.status, IntentStatus::Succeeded);
    let event = shop
        .recorder
        .received(PaymentEventKind::Succeeded, &intent.id)
        .await;
    assert_eq!(event.order_id, order);
    assert_eq!(event.amount, 2_500);
    assert_eq!(event.currency, "usd");
    let provider: String = sqlx::query_scalar("SELECT provider FROM stripe_events WHERE id = $1")
        .bind(&event.event_id)
        .fetch_one(&shop.app.db)
        .await
        .unwrap();
    assert_eq!(provider, "simulated");
    // A retried confirm answers the first response and charges once.
    let replayed = shop
        .payments()
        .confirm(&intent.id, "pm_card_visa", &key)
        .await
        .unwrap();
    assert_eq!(replayed.latest_charge, paid.latest_charge);
    // ...but a key reused for something else is refused.
    let reused = shop
        .payments()
        .confirm(&intent.id, "pm_card_mastercard", &key)
        .await
        .unwrap_err();
    assert!(matches!(
        reused,
        shop::payments::PaymentError::Refused { .. }
    ));

    let (declined_order, declined) = shop.intent_for_new_order(900).await;
    let answer = shop
        .payments()
        .confirm(
            &declined.id,
            "pm_card_chargeDeclined",
            &IdempotencyKey::confirm(declined_order, 1),
        )
        .await
        .unwrap();
    assert!(answer.declined());
    let failed = shop
        .recorder
        .received(PaymentEventKind::Failed, &declined.id)
        .await;
    assert_eq!(failed.order_id, declined_order);
    assert_eq!(failed.error.as_deref(), Some("Your card was declined."));

    shop.payments()
        .refund(
            &intent.id,
            Some(1_000),
            Default::default(),
            &IdempotencyKey::refund(order, 1),
        )
        .await
        .unwrap();
    let refunded = shop
        .recorder
        .received(PaymentEventKind::Refunded, &intent.id)
        .await;
    assert_eq!(refunded.amount, 1_000);
    shop.payments()
        .cancel(&declined.id, &IdempotencyKey::cancel(declined_order, 1))
        .await
        .unwrap();
    shop.recorder
        .received(PaymentEventKind::Canceled, &declined.id)
        .await;

    shop.router_drained_simulated().await;
    assert_eq!(shop.recorder.count(&event.event_id), 1);
    shop.assert_transactions(order, &["create", "confirm", "succeeded", "refund"])
        .await;
    shop.assert_transactions(declined_order, &["create", "confirm", "failed", "canceled"])
        .await;
    let retrieved = shop.payments().retrieve(&intent.id).await.unwrap();
    assert_eq!(retrieved.status, IntentStatus::Succeeded);
    assert_eq!(retrieved.amount_received, 2_500);
}

#[tokio::test]
async fn events_nobody_took_are_replayed_to_a_new_subscriber_until_marked_processed() {
    let app = TestApp::spawn().await;
    app.state.actors.detach_orders_from_payments();
    let payments = &app.state.actors.payments;
    let order = Uuid::new_v4();
    let intent = payments
        .create_intent(order, 1, 1_200, "usd", BTreeMap::new())
        .await
        .unwrap();
    payments
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .unwrap();
    // No subscriber yet: the event waits in stripe_events.
    let pending = unprocessed_events(&app.db).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].intent_id, intent.id);
    assert_eq!(pending[0].kind, PaymentEventKind::Succeeded);

    let late = Arc::new(Recorder::default());
    app.state.actors.payment_router.subscribe(late.clone());
    let replayed = late.received(PaymentEventKind::Succeeded, &intent.id).await;
    assert_eq!(replayed.order_id, order);

    assert!(mark_processed(&app.db, &replayed.event_id).await.unwrap());
    assert!(!mark_processed(&app.db, &replayed.event_id).await.unwrap());
    assert!(unprocessed_events(&app.db).await.unwrap().is_empty());
}

/// Finding 12: a stored event naming a provider outside the two is refused (and logged), not
/// replayed as Stripe's (it used to be).
#[tokio::test]
async fn a_stored_event_of_an_unknown_provider_is_not_read_as_stripe() {
    let app = TestApp::spawn().await;
    app.state.actors.detach_orders_from_payments();
    let payments = &app.state.actors.payments;
    let order = Uuid::new_v4();
    let intent = payments
        .create_intent(order, 1, 1_200, "usd", BTreeMap::new())
        .await
        .unwrap();
    payments
        .confirm(
            &intent.id,
            "pm_card_visa",
            &IdempotencyKey::confirm(order, 1),
        )
        .await
        .unwrap();
    let pending = unprocessed_events(&app.db).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].intent_id, intent.id);
    sqlx::query("ALTER TABLE stripe_events DROP CONSTRAINT stripe_events_provider_check")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE stripe_events SET provider = 'paypal'")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(unprocessed_events(&app.db).await.unwrap().is_empty());
}

impl Shop {
    /// [`Shop::router_drained`] for a shop without a webhook secret: a fresh simulated event.
    async fn router_drained_simulated(&self) {
        let order = Uuid::new_v4();
        let intent = self
            .payments()
            .create_intent(order, 1, 100, "usd", BTreeMap::new())
            .await
            .unwrap();
        self.payments()
            .confirm(
                &intent.id,
                "pm_card_visa",
                &IdempotencyKey::confirm(order, 1),
            )
            .await
            .unwrap();
        self.recorder
            .received(PaymentEventKind::Succeeded, &intent.id)
            .await;
    }
}
