//! Orders: checkout into an order saga, payment through the real async-stripe client and the
//! Stripe test server's signed webhooks (or the simulated provider), cancellation, expiry,
//! crash-resume, and no oversell under concurrent checkouts.

use std::time::Duration;

use serde_json::{Value, json};
use shop::config::PaymentProvider as ProviderKind;
use shop_stripe_testserver::{ServerOptions, StripeTestServer, WebhookTarget, sign};
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_problem, eventually};

pub(crate) const SECRET_KEY: &str = "sk_test_shop_orders";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_shop_orders";
pub(crate) const WEBHOOK: &str = "/api/v1/webhooks/stripe";
pub(crate) const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn address() -> Value {
    json!({"shipping_address": {"name": "Ada Lovelace", "line1": "12 St James's Square",
        "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"}})
}

pub(crate) async fn stripe_app(
    configure: impl FnOnce(&mut shop::config::Settings),
) -> (TestApp, StripeTestServer) {
    let stripe = StripeTestServer::start_with(ServerOptions::default())
        .await
        .expect("stripe test server");
    let base = stripe.base_url();
    let app = TestApp::spawn_with(
        |settings| {
            settings.payments.provider = ProviderKind::Stripe;
            settings.stripe.secret_key = Some(SECRET_KEY.to_owned().into());
            settings.stripe.webhook_secret = Some(WEBHOOK_SECRET.to_owned().into());
            settings.stripe.api_base = Some(base);
            configure(settings);
        },
        |_| Vec::new(),
    )
    .await;
    stripe.set_webhook_target(WebhookTarget {
        url: app.url(WEBHOOK),
        secret: WEBHOOK_SECRET.to_owned(),
    });
    (app, stripe)
}

pub(crate) async fn variant(
    app: &TestApp,
    admin: &Session,
    sku: &str,
    price: i64,
    stock: i64,
) -> String {
    let product = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": sku, "sku": sku, "price": price, "stock": stock, "status": "active"}),
        )
        .await;
    product["variants"][0]["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn fill_cart(app: &TestApp, who: &Session, variant: &str, quantity: i64) {
    let response = app
        .post_json_as(
            &who.access_token,
            "/api/v1/cart/items",
            &json!({"variant_id": variant, "quantity": quantity}),
        )
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

pub(crate) async fn checkout(app: &TestApp, who: &Session) -> reqwest::Response {
    app.post_json_as(&who.access_token, "/api/v1/orders", &address())
        .await
}

pub(crate) async fn order(app: &TestApp, who: &Session, id: &str) -> Value {
    app.get_as(&who.access_token, &format!("/api/v1/orders/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Pays order `id` with a card that succeeds.
pub(crate) async fn pay(app: &TestApp, who: &Session, id: &str) -> reqwest::Response {
    pay_with(app, who, id, "pm_card_visa").await
}

/// Pays order `id` with `payment_method`.
pub(crate) async fn pay_with(
    app: &TestApp,
    who: &Session,
    id: &str,
    payment_method: &str,
) -> reqwest::Response {
    app.post_json_as(
        &who.access_token,
        &format!("/api/v1/orders/{id}/pay"),
        &json!({"payment_method": payment_method}),
    )
    .await
}

pub(crate) async fn wait_status(app: &TestApp, who: &Session, id: &str, status: &str) -> Value {
    eventually(DEADLINE, &format!("order {id} to be {status}"), || async {
        let body = order(app, who, id).await;
        (body["status"] == status).then_some(body)
    })
    .await
}

/// (on hand, held, sold) of a variant.
pub(crate) async fn stock(app: &TestApp, variant: &str) -> (i32, i32, i32) {
    app.stock_ledger(Uuid::parse_str(variant).unwrap()).await
}

#[tokio::test]
async fn checkout_pay_with_a_visa_and_the_signed_webhook_marks_it_paid() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1250, 10).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 2).await;

    let response = checkout(&app, &customer).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["total"], 2500);
    assert_eq!(created["currency"], "usd");
    assert!(created["number"].as_str().unwrap().starts_with("SO-"));
    assert_eq!(created["items"][0]["quantity"], 2);
    assert_eq!(created["payment"]["provider"], "stripe");
    let intent = created["payment"]["payment_intent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(intent.starts_with("pi_"));
    assert!(
        created["payment"]["client_secret"]
            .as_str()
            .unwrap()
            .contains("_secret_")
    );
    assert_eq!(stock(&app, &mug).await, (10, 2, 0), "stock held");
    let cart: Value = app
        .get_as(&customer.access_token, "/api/v1/cart")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!([]), "the cart is emptied");
    // The intent at Stripe carries the order id and the amount.
    let at_stripe = stripe
        .payment_intents()
        .into_iter()
        .find(|pi| pi["id"] == intent.as_str())
        .unwrap();
    assert_eq!(at_stripe["amount"], 2500);
    assert_eq!(at_stripe["metadata"]["order_id"], created["id"]);

    let id = created["id"].as_str().unwrap();
    let paid = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/pay"),
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(paid.status(), 200);
    assert_eq!(paid.json::<Value>().await.unwrap()["status"], "succeeded");
    let done = wait_status(&app, &customer, id, "paid").await;
    assert_eq!(done["payment"]["status"], "succeeded");
    let history: Vec<&str> = done["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["pending", "paid"]);
    assert_eq!(stock(&app, &mug).await, (8, 0, 2), "stock sold");

    let log: Value = app
        .get_as(
            &admin.access_token,
            &format!("/api/v1/admin/orders/{id}/transactions"),
        )
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = log["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    for kind in ["create", "confirm", "succeeded"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "payment_intent.succeeded")
    );
    assert_eq!(app.state.actors.inventory.reconcile().await.unwrap(), 0);
}

#[tokio::test]
async fn a_declined_card_leaves_the_order_pending_and_it_can_be_paid_again() {
    let (app, _stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 1).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let declined: Value = pay_with(&app, &customer, id, "pm_card_chargeDeclined")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(declined["status"], "failed");
    let pending = eventually(DEADLINE, "the failed payment to be recorded", || async {
        let body = order(&app, &customer, id).await;
        (body["payment"]["status"] == "failed" && body["payment"]["error"].is_string())
            .then_some(body)
    })
    .await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(stock(&app, &mug).await, (5, 1, 0), "still held");
    // Another card works.
    pay(&app, &customer, id).await;
    wait_status(&app, &customer, id, "paid").await;
}

#[tokio::test]
async fn the_same_event_five_times_has_one_effect_and_a_late_failure_changes_nothing() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 1).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let intent = created["payment"]["payment_intent_id"].as_str().unwrap();
    app.post_json_as(
        &customer.access_token,
        &format!("/api/v1/orders/{id}/pay"),
        &json!({"payment_method": "pm_card_visa"}),
    )
    .await;
    wait_status(&app, &customer, id, "paid").await;
    let succeeded = stripe
        .wait_for_delivered("payment_intent.succeeded", intent, DEADLINE)
        .await
        .unwrap();

    // Redelivered by Stripe, and posted five times at once.
    for _ in 0..2 {
        stripe.redeliver(&succeeded.id).unwrap();
    }
    let now = chrono::Utc::now().timestamp();
    let posts = (0..5).map(|_| {
        app.client
            .post(app.url(WEBHOOK))
            .header(
                "stripe-signature",
                sign(succeeded.payload.as_bytes(), WEBHOOK_SECRET, now),
            )
            .header("content-type", "application/json")
            .body(succeeded.payload.clone())
            .send()
    });
    for response in futures::future::join_all(posts).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    // A payment_failed that arrives after the success.
    let mut failed: Value = serde_json::from_str(&succeeded.payload).unwrap();
    failed["id"] = json!(format!("evt_late_{}", Uuid::new_v4().simple()));
    failed["type"] = json!("payment_intent.payment_failed");
    let body = failed.to_string();
    let response = app
        .client
        .post(app.url(WEBHOOK))
        .header(
            "stripe-signature",
            sign(body.as_bytes(), WEBHOOK_SECRET, now),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let late_id = failed["id"].as_str().unwrap().to_owned();
    eventually(DEADLINE, "the late event to be processed", || async {
        let processed: Option<bool> =
            sqlx::query_scalar("SELECT processed_at IS NOT NULL FROM stripe_events WHERE id = $1")
                .bind(&late_id)
                .fetch_optional(&app.db)
                .await
                .unwrap();
        processed.filter(|p| *p).map(|_| ())
    })
    .await;

    let body = order(&app, &customer, id).await;
    assert_eq!(body["status"], "paid");
    assert_eq!(body["payment"]["status"], "succeeded");
    let paid_rows = body["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["to"] == "paid")
        .count();
    assert_eq!(paid_rows, 1);
    assert_eq!(stock(&app, &mug).await, (4, 0, 1), "sold once");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE id = $1")
        .bind(&succeeded.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn cancelling_returns_the_stock_at_once_and_illegal_moves_are_409() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 3).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 3).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(stock(&app, &mug).await, (3, 3, 0));

    let cancelled = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        cancelled.json::<Value>().await.unwrap()["status"],
        "cancelled"
    );
    assert_eq!(stock(&app, &mug).await, (3, 0, 0), "released at once");

    let again = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_problem(again, 409).await;
    let pay = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/pay"),
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_problem(pay, 409).await;
    for status in ["shipped", "paid", "delivered", "pending"] {
        let moved = app
            .post_json_as(
                &admin.access_token,
                &format!("/api/v1/admin/orders/{id}/status"),
                &json!({"status": status}),
            )
            .await;
        assert_problem(moved, 409).await;
    }
}

#[tokio::test]
async fn the_admin_workflow_ships_delivers_and_refunds() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 3).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 1).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    app.post_json_as(
        &customer.access_token,
        &format!("/api/v1/orders/{id}/pay"),
        &json!({"payment_method": "pm_card_visa"}),
    )
    .await;
    wait_status(&app, &customer, id, "paid").await;
    let set = |status: &'static str| {
        let app = &app;
        let admin = &admin;
        async move {
            app.post_json_as(
                &admin.access_token,
                &format!("/api/v1/admin/orders/{id}/status"),
                &json!({"status": status}),
            )
            .await
        }
    };
    assert_problem(set("delivered").await, 409).await;
    assert_eq!(set("shipped").await.status(), 200);
    assert_eq!(set("delivered").await.status(), 200);
    let refunded = set("refunded").await;
    assert_eq!(refunded.status(), 200);
    let body: Value = refunded.json().await.unwrap();
    assert_eq!(body["status"], "refunded");
    let history: Vec<&str> = body["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["pending", "paid", "shipped", "delivered", "refunded"]
    );
    let listed: Value = app
        .get_as(&admin.access_token, "/api/v1/admin/orders?status=refunded")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1);
}

#[tokio::test]
async fn an_unpaid_order_expires_and_returns_its_stock() {
    let app = TestApp::spawn_with(|s| s.checkout.reservation_ttl_secs = 1, |_| Vec::new()).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 4).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 4).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let expired = wait_status(&app, &customer, id, "cancelled").await;
    assert_eq!(
        expired["status_history"][1]["reason"],
        "reservation expired"
    );
    eventually(DEADLINE, "the stock to return", || async {
        (stock(&app, &mug).await == (4, 0, 0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_order_resumes_after_a_restart_and_the_webhook_then_marks_it_paid() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 2).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let intent = created["payment"]["payment_intent_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The process goes away between checkout and payment; the customer pays meanwhile.
    stripe.pause_webhooks();
    let app = app.restart().await;
    let paid = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/pay"),
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(paid.status(), 200);
    assert_eq!(order(&app, &customer, &id).await["status"], "pending");
    stripe.set_webhook_target(WebhookTarget {
        url: app.url(WEBHOOK),
        secret: WEBHOOK_SECRET.to_owned(),
    });
    stripe.resume_webhooks();
    stripe
        .wait_for_delivered("payment_intent.succeeded", &intent, DEADLINE)
        .await
        .unwrap();
    wait_status(&app, &customer, &id, "paid").await;
    assert_eq!(stock(&app, &mug).await, (3, 0, 2));
}

#[tokio::test]
async fn two_hundred_concurrent_checkouts_for_twenty_units_make_twenty_orders() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let hot = variant(&app, &admin, "HOT", 500, 20).await;
    // 200 customers, made directly (hashing 200 passwords would only slow the test).
    let mut customers = Vec::new();
    for i in 0..200 {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, 'Buyer', 'x')",
        )
        .bind(id)
        .bind(format!("buyer{i}@example.com"))
        .execute(&app.db)
        .await
        .unwrap();
        let token = app
            .state
            .identity
            .tokens
            .issue_access(id, shop::identity::Role::Customer)
            .unwrap();
        customers.push(Session {
            id,
            email: String::new(),
            access_token: token,
            refresh_token: String::new(),
        });
    }
    futures::future::join_all(customers.iter().map(|c| fill_cart(&app, c, &hot, 1))).await;
    let responses = futures::future::join_all(customers.iter().map(|c| checkout(&app, c))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        180,
        "{statuses:?}"
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 20);
    assert_eq!(
        stock(&app, &hot).await,
        (20, 20, 0),
        "only the 20 orders hold stock"
    );
    assert_eq!(app.state.actors.inventory.reconcile().await.unwrap(), 0);
}

#[tokio::test]
async fn orders_are_private_and_checkout_is_idempotent() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 10).await;
    let alice = app.login_as_customer().await;
    let bob = app.login_as_customer().await;
    fill_cart(&app, &alice, &mug, 1).await;
    let first = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&alice.access_token)
        .header("idempotency-key", "alice-checkout-1")
        .json(&address())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let repeat: Value = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&alice.access_token)
        .header("idempotency-key", "alice-checkout-1")
        .json(&address())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        repeat["id"], first["id"],
        "the same key returns the same order"
    );
    let mut other = address();
    other["shipping_address"]["city"] = json!("Paris");
    let changed = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&alice.access_token)
        .header("idempotency-key", "alice-checkout-1")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_problem(changed, 422).await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 1);

    let id = first["id"].as_str().unwrap();
    assert_problem(
        app.get_as(&bob.access_token, &format!("/api/v1/orders/{id}"))
            .await,
        404,
    )
    .await;
    assert_problem(
        app.post_json_as(
            &bob.access_token,
            &format!("/api/v1/orders/{id}/cancel"),
            &json!({}),
        )
        .await,
        404,
    )
    .await;
    let bobs: Value = app
        .get_as(&bob.access_token, "/api/v1/orders")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["total"], 0);
    assert_eq!(
        app.get_as(&admin.access_token, &format!("/api/v1/orders/{id}"))
            .await
            .status(),
        200
    );
    // An empty cart cannot be checked out.
    assert_problem(checkout(&app, &bob).await, 422).await;
}

/// A saga stops once its order is final; a command that reaches it while it stops is answered as
/// the final order's 409, never 503 (nothing is unavailable: the order is simply over).
#[tokio::test]
async fn a_command_right_after_the_order_became_final_is_409_not_503() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "QUICK-MUG", 1000, 1000).await;
    let customer = app.login_as_customer().await;
    for round in 0..20 {
        fill_cart(&app, &customer, &mug, 1).await;
        let created: Value = checkout(&app, &customer).await.json().await.unwrap();
        let id = created["id"].as_str().unwrap();
        let path = format!("/api/v1/orders/{id}/cancel");
        let first = app
            .post_json_as(&customer.access_token, &path, &json!({}))
            .await;
        assert_eq!(first.status(), 200, "round {round}");
        let pay_path = format!("/api/v1/orders/{id}/pay");
        let cancel_body = json!({});
        let pay_body = json!({"payment_method": "pm_card_visa"});
        let (again, pay) = tokio::join!(
            app.post_json_as(&customer.access_token, &path, &cancel_body),
            app.post_json_as(&customer.access_token, &pay_path, &pay_body)
        );
        assert_eq!(
            (again.status().as_u16(), pay.status().as_u16()),
            (409, 409),
            "round {round}"
        );
    }
}

/// A payment method the provider does not know is the client's mistake, not an outage: 422 on
/// `payment_method`, nothing charged, the order still pending with its stock held, and a good card
/// then pays it. Both the simulated provider and the Stripe API (through its test server) say so.
#[tokio::test]
async fn a_payment_method_the_provider_does_not_know_is_a_422_and_another_one_pays() {
    let simulated = TestApp::spawn().await;
    let (stripe, _server) = stripe_app(|_| {}).await;
    for (provider, app) in [("simulated", &simulated), ("stripe", &stripe)] {
        let admin = app.login_as_admin().await;
        let mug = variant(app, &admin, "UNKNOWN-PM-MUG", 1000, 3).await;
        let customer = app.login_as_customer().await;
        fill_cart(app, &customer, &mug, 1).await;
        let created: Value = checkout(app, &customer).await.json().await.unwrap();
        let id = created["id"].as_str().unwrap();
        let refused = pay_with(app, &customer, id, "pm_no_such_method").await;
        let problem = assert_problem(refused, 422).await;
        assert_eq!(
            problem["errors"][0]["field"], "payment_method",
            "{provider}: {problem}"
        );
        let after = order(app, &customer, id).await;
        assert_eq!(after["status"], "pending", "{provider}: {after}");
        assert_eq!(stock(app, &mug).await, (3, 1, 0), "{provider}: still held");
        assert_eq!(pay(app, &customer, id).await.status(), 200, "{provider}");
        wait_status(app, &customer, id, "paid").await;
    }
}
