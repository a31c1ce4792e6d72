//! `Idempotency-Key` on the customer's mutating routes (src/http/idempotency.rs): a repeat gets the
//! first answer and changes nothing, for every route; the key is bound to its request and its
//! user; concurrent first uses have one effect; a failed, timed-out or dropped request frees the
//! key; entries expire after 24 hours; malformed keys are 400; the OpenAPI document says so.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use shop_stripe_testserver::{Fault, FaultAction, StripeTestServer};
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_problem, eventually, metric_value};
use crate::orders::{DEADLINE, checkout, fill_cart, stripe_app, variant, wait_status};
use crate::pg_proxy::proxied_app;

/// What came back, kept whole so two answers can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
    replayed: bool,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// Same status, type and body; whether it was replayed aside.
    fn same_as(&self, other: &Answer) -> bool {
        (self.status, &self.content_type, &self.body)
            == (other.status, &other.content_type, &other.body)
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type");
    let replayed = match header("idempotent-replayed").as_deref() {
        None => false,
        Some("true") => true,
        Some(other) => panic!("idempotent-replayed: {other}"),
    };
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    Answer {
        status,
        content_type,
        body,
        replayed,
    }
}

/// `method path` as `who`, with `key` as the Idempotency-Key if given, and a JSON body if given.
async fn send(
    app: &TestApp,
    who: &Session,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    answer(
        request(app, who, method, path, key, body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn request(
    app: &TestApp,
    who: &Session,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> reqwest::RequestBuilder {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&who.access_token);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request
}

/// Sends the same request twice with `key`: the first runs, the second is its replay.
async fn twice(
    app: &TestApp,
    who: &Session,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (Answer, Answer) {
    let first = send(app, who, method.clone(), path, Some(key), body).await;
    let again = send(app, who, method, path, Some(key), body).await;
    assert!(!first.replayed, "the first use runs: {first:?}");
    assert!(again.replayed, "the repeat is a replay: {again:?}");
    assert!(again.same_as(&first), "{first:?} then {again:?}");
    (first, again)
}

async fn cart(app: &TestApp, who: &Session) -> Value {
    let response = app.get_as(&who.access_token, "/api/v1/cart").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn quantities(cart: &Value) -> Vec<i64> {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["quantity"].as_i64().unwrap())
        .collect()
}

fn add_body(variant: &str, quantity: i64) -> Value {
    json!({"variant_id": variant, "quantity": quantity})
}

async fn entries(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn entry_state(app: &TestApp, who: &Session, key: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM idempotency_keys WHERE user_id = $1 AND key = $2")
        .bind(who.id)
        .bind(key)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

/// A catalog with one product and a customer with an empty cart.
async fn shop_with_a_mug(app: &TestApp, stock: i64) -> (String, Session) {
    let admin = app.login_as_admin().await;
    let mug = variant(app, &admin, "MUG", 1250, stock).await;
    (mug, app.login_as_customer().await)
}

/// The customer's cart row, held: the cart actor's next write waits behind it.
async fn hold_cart_row(app: &TestApp, who: &Session) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let cart = app.state.actors.carts.get(who.id).await.unwrap().cart_id;
    app.hold_cart_row(cart).await
}

async fn wait_for_claim(app: &TestApp, who: &Session, key: &str) {
    eventually(DEADLINE, &format!("{key} to be claimed"), || async {
        (entry_state(app, who, key).await.as_deref() == Some("in_progress")).then_some(())
    })
    .await;
}

// ---- every route: a replay is the first answer and changes nothing ----

#[tokio::test]
async fn replaying_an_add_returns_the_first_cart_and_adds_once() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 2);
    let (first, _) = twice(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        "add-1",
        Some(&body),
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(quantities(&first.json()), [2]);
    assert_eq!(quantities(&cart(&app, &customer).await), [2], "not 4");
    // A new key is a new request.
    let other = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("add-2"),
        Some(&body),
    )
    .await;
    assert!(!other.replayed);
    assert_eq!(quantities(&cart(&app, &customer).await), [4]);
    // Replays are counted by route.
    let metrics = app.metrics().await;
    let replays = metric_value(
        &metrics,
        "idempotency_replays_total{route=\"/api/v1/cart/items\"}",
    );
    assert!(replays.is_some_and(|n| n >= 1.0), "{replays:?}");
}

#[tokio::test]
async fn replaying_an_update_returns_the_first_cart_and_undoes_no_later_change() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    fill_cart(&app, &customer, &mug, 1).await;
    let line = cart(&app, &customer).await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/cart/items/{line}");
    let three = json!({"quantity": 3});
    let first = send(
        &app,
        &customer,
        Method::PATCH,
        &path,
        Some("set-3"),
        Some(&three),
    )
    .await;
    assert_eq!((first.status, quantities(&first.json())), (200, vec![3]));
    // Changed meanwhile without a key; the replay answers as before and sets nothing.
    let five = app
        .patch_json_as(&customer.access_token, &path, &json!({"quantity": 5}))
        .await;
    assert_eq!(five.status(), 200);
    let again = send(
        &app,
        &customer,
        Method::PATCH,
        &path,
        Some("set-3"),
        Some(&three),
    )
    .await;
    assert!(again.replayed && again.same_as(&first), "{again:?}");
    assert_eq!(quantities(&cart(&app, &customer).await), [5]);
}

#[tokio::test]
async fn replaying_a_remove_returns_the_first_cart_not_a_404() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    fill_cart(&app, &customer, &mug, 1).await;
    let line = cart(&app, &customer).await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/cart/items/{line}");
    let (first, _) = twice(&app, &customer, Method::DELETE, &path, "remove-1", None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["items"], json!([]));
    // Without the key, the line is gone: removed once.
    let unkeyed = app.delete_as(&customer.access_token, &path).await;
    assert_problem(unkeyed, 404).await;
}

#[tokio::test]
async fn replaying_a_clear_returns_204_and_leaves_what_was_added_since() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    fill_cart(&app, &customer, &mug, 2).await;
    let first = send(
        &app,
        &customer,
        Method::DELETE,
        "/api/v1/cart",
        Some("clear-1"),
        None,
    )
    .await;
    assert_eq!((first.status, first.body.as_str()), (204, ""));
    assert_eq!(cart(&app, &customer).await["items"], json!([]));
    fill_cart(&app, &customer, &mug, 1).await;
    let again = send(
        &app,
        &customer,
        Method::DELETE,
        "/api/v1/cart",
        Some("clear-1"),
        None,
    )
    .await;
    assert!(again.replayed && again.same_as(&first), "{again:?}");
    assert_eq!(
        quantities(&cart(&app, &customer).await),
        [1],
        "not emptied again"
    );
}

#[tokio::test]
async fn replaying_a_coupon_apply_or_remove_changes_nothing_and_a_wrong_code_counts_once() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 10).await;
    app.created(
        &admin.access_token,
        "/api/v1/admin/coupons",
        &json!({"code": "TENOFF", "kind": "percent", "value": 10, "scope": "order", "active": true}),
    )
    .await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 1).await;
    let code = json!({"code": "TENOFF"});

    let applied = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/coupon",
        Some("apply-1"),
        Some(&code),
    )
    .await;
    assert_eq!(applied.status, 200);
    assert_eq!(applied.json()["discount_total"], 100);
    let removed = send(
        &app,
        &customer,
        Method::DELETE,
        "/api/v1/cart/coupon",
        Some("remove-1"),
        None,
    )
    .await;
    assert_eq!(
        (removed.status, &removed.json()["coupon"]),
        (200, &Value::Null)
    );
    // Replaying the apply answers as it did, and does not apply the coupon again.
    let again = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/coupon",
        Some("apply-1"),
        Some(&code),
    )
    .await;
    assert!(again.replayed && again.same_as(&applied), "{again:?}");
    assert_eq!(cart(&app, &customer).await["discount_total"], 0);
    // Applied again without a key, then replaying the remove leaves it on.
    let reapplied = app
        .post_json_as(&customer.access_token, "/api/v1/cart/coupon", &code)
        .await;
    assert_eq!(reapplied.status(), 200);
    let again = send(
        &app,
        &customer,
        Method::DELETE,
        "/api/v1/cart/coupon",
        Some("remove-1"),
        None,
    )
    .await;
    assert!(again.replayed && again.same_as(&removed), "{again:?}");
    assert_eq!(cart(&app, &customer).await["discount_total"], 100);

    // A refusal (4xx) is kept too: the wrong code is counted once towards the guessing limit.
    let wrong = json!({"code": "NOPE"});
    let (refused, _) = twice(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/coupon",
        "wrong-1",
        Some(&wrong),
    )
    .await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        refused.content_type.as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(refused.json()["reason"], "unknown");
    let guesses: i64 =
        sqlx::query_scalar("SELECT count(*) FROM coupon_failures WHERE user_id = $1")
            .bind(customer.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(guesses, 1);
}

fn confirms(stripe: &StripeTestServer) -> Vec<u16> {
    stripe
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/confirm"))
        .map(|r| r.status)
        .collect()
}

/// A customer's pending order at the Stripe test server: (customer, order id).
async fn pending_order(app: &TestApp) -> (Session, String) {
    let (mug, customer) = shop_with_a_mug(app, 10).await;
    fill_cart(app, &customer, &mug, 1).await;
    let response = checkout(app, &customer).await;
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    (customer, order["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn replaying_a_payment_confirms_once_at_stripe() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let (customer, id) = pending_order(&app).await;
    let path = format!("/api/v1/orders/{id}/pay");
    let visa = json!({"payment_method": "pm_card_visa"});
    let (first, _) = twice(&app, &customer, Method::POST, &path, "pay-1", Some(&visa)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["status"], "succeeded");
    wait_status(&app, &customer, &id, "paid").await;
    let again = send(
        &app,
        &customer,
        Method::POST,
        &path,
        Some("pay-1"),
        Some(&visa),
    )
    .await;
    assert!(again.replayed && again.same_as(&first), "{again:?}");
    assert_eq!(confirms(&stripe), [200], "one confirmation at Stripe");
}

#[tokio::test]
async fn replaying_a_cancel_returns_the_cancelled_order_not_a_409() {
    let app = TestApp::spawn().await;
    let (customer, id) = pending_order(&app).await;
    let path = format!("/api/v1/orders/{id}/cancel");
    let (first, _) = twice(
        &app,
        &customer,
        Method::POST,
        &path,
        "cancel-1",
        Some(&json!({})),
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["status"], "cancelled");
    let cancellations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_status_history WHERE order_id = $1 AND to_status = 'cancelled'",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(cancellations, 1);
    // Without the key, a second cancel is the illegal move it is.
    let unkeyed = app
        .post_json_as(&customer.access_token, &path, &json!({}))
        .await;
    assert_problem(unkeyed, 409).await;
}

// ---- what a key is bound to ----

#[tokio::test]
async fn the_same_key_with_another_body_or_route_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let first = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("bound-1"),
        Some(&add_body(&mug, 1)),
    )
    .await;
    assert_eq!(first.status, 200);
    let other_body = request(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("bound-1"),
        Some(&add_body(&mug, 2)),
    )
    .send()
    .await
    .unwrap();
    let problem = assert_problem(other_body, 422).await;
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    let other_route = request(
        &app,
        &customer,
        Method::DELETE,
        "/api/v1/cart",
        Some("bound-1"),
        None,
    )
    .send()
    .await
    .unwrap();
    let problem = assert_problem(other_route, 422).await;
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(quantities(&cart(&app, &customer).await), [1]);
    // The entry still answers its own request.
    let again = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("bound-1"),
        Some(&add_body(&mug, 1)),
    )
    .await;
    assert!(again.replayed && again.same_as(&first));
}

#[tokio::test]
async fn keys_are_per_user() {
    let app = TestApp::spawn().await;
    let (mug, alice) = shop_with_a_mug(&app, 10).await;
    let bob = app.login_as_customer().await;
    let body = add_body(&mug, 1);
    let path = "/api/v1/cart/items";
    let for_alice = send(
        &app,
        &alice,
        Method::POST,
        path,
        Some("shared"),
        Some(&body),
    )
    .await;
    let for_bob = send(&app, &bob, Method::POST, path, Some("shared"), Some(&body)).await;
    assert!(!for_alice.replayed && !for_bob.replayed);
    assert_eq!((for_alice.status, for_bob.status), (200, 200));
    assert_ne!(
        for_alice.json()["id"],
        for_bob.json()["id"],
        "each their own cart"
    );
    // Another body for bob is his own business, not a reuse of alice's key.
    let bobs_other = send(
        &app,
        &bob,
        Method::POST,
        path,
        Some("shared-2"),
        Some(&add_body(&mug, 3)),
    )
    .await;
    assert_eq!(bobs_other.status, 200);
    assert_eq!(quantities(&cart(&app, &alice).await), [1]);
    assert_eq!(quantities(&cart(&app, &bob).await), [4]);
    assert_eq!(entries(&app).await, 3);
}

#[tokio::test]
async fn without_a_bearer_token_the_key_changes_nothing_and_the_answer_is_401() {
    let app = TestApp::spawn().await;
    let anonymous = app
        .client
        .post(app.url("/api/v1/cart/items"))
        .header("idempotency-key", "anon-1")
        .json(&add_body(&Uuid::now_v7().to_string(), 1))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401).await;
    // A token whose user is gone keys nothing either.
    let (mug, gone) = shop_with_a_mug(&app, 10).await;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(gone.id)
        .execute(&app.db)
        .await
        .unwrap();
    let orphan = request(
        &app,
        &gone,
        Method::POST,
        "/api/v1/cart/items",
        Some("orphan-1"),
        Some(&add_body(&mug, 1)),
    )
    .send()
    .await
    .unwrap();
    assert_problem(orphan, 401).await;
    assert_eq!(entries(&app).await, 0);
}

// ---- concurrency ----

#[tokio::test]
async fn two_concurrent_first_uses_of_a_key_have_one_effect() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 100).await;
    let body = add_body(&mug, 1);
    for round in 1..=10 {
        let key = format!("race-{round}");
        let (a, b) = tokio::join!(
            send(
                &app,
                &customer,
                Method::POST,
                "/api/v1/cart/items",
                Some(&key),
                Some(&body)
            ),
            send(
                &app,
                &customer,
                Method::POST,
                "/api/v1/cart/items",
                Some(&key),
                Some(&body)
            ),
        );
        let answered = [a.status, b.status];
        assert!(
            a.same_as(&b) || answered.contains(&409),
            "round {round}: {a:?} and {b:?}"
        );
        assert!(answered.contains(&200), "round {round}: {answered:?}");
        assert_eq!(
            [a.replayed, b.replayed].iter().filter(|r| **r).count(),
            usize::from(a.same_as(&b)),
            "round {round}: one ran, the other waited for it"
        );
        assert_eq!(
            quantities(&cart(&app, &customer).await),
            [round],
            "round {round}: one add"
        );
    }
}

#[tokio::test]
async fn a_repeat_while_the_first_still_runs_is_409_then_replays_once_it_is_done() {
    let app = TestApp::spawn_with(
        |settings| settings.server.idempotency_wait_ms = 300,
        |_| Vec::new(),
    )
    .await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let blocker = hold_cart_row(&app, &customer).await;
    let slow = tokio::spawn(
        request(
            &app,
            &customer,
            Method::POST,
            "/api/v1/cart/items",
            Some("slow-1"),
            Some(&body),
        )
        .send(),
    );
    wait_for_claim(&app, &customer, "slow-1").await;
    let busy = request(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("slow-1"),
        Some(&body),
    )
    .send()
    .await
    .unwrap();
    let problem = assert_problem(busy, 409).await;
    assert_eq!(problem["type"], "/problems/idempotency-key-in-use");

    blocker.rollback().await.unwrap();
    let first = answer(slow.await.unwrap().unwrap()).await;
    assert_eq!(first.status, 200);
    let again = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("slow-1"),
        Some(&body),
    )
    .await;
    assert!(again.replayed && again.same_as(&first), "{again:?}");
    assert_eq!(quantities(&cart(&app, &customer).await), [1]);
}

// ---- failures free the key ----

#[tokio::test]
async fn a_503_frees_the_key_and_the_retry_adds_once() {
    let app = TestApp::spawn_with(|s| s.actors.call_timeout_ms = 500, |_| Vec::new()).await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let blocker = hold_cart_row(&app, &customer).await;
    let failed = request(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("retry-1"),
        Some(&body),
    )
    .send()
    .await
    .unwrap();
    assert_problem(failed, 503).await;
    assert_eq!(
        entry_state(&app, &customer, "retry-1").await,
        None,
        "released"
    );
    blocker.rollback().await.unwrap();

    let retried = send(
        &app,
        &customer,
        Method::POST,
        "/api/v1/cart/items",
        Some("retry-1"),
        Some(&body),
    )
    .await;
    assert_eq!(retried.status, 200);
    assert!(!retried.replayed, "the retry ran");
    assert_eq!(quantities(&cart(&app, &customer).await), [1]);
    assert_eq!(
        entry_state(&app, &customer, "retry-1").await.as_deref(),
        Some("completed")
    );
}

#[tokio::test]
async fn a_payment_the_provider_fails_frees_the_key_and_the_retry_pays_once() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let (customer, id) = pending_order(&app).await;
    let intent: String = sqlx::query_scalar("SELECT payment_intent_id FROM orders WHERE id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    stripe.inject(Fault::new(
        "POST",
        &format!("/v1/payment_intents/{intent}/confirm"),
        1,
        FaultAction::Fail(500),
    ));
    let path = format!("/api/v1/orders/{id}/pay");
    let visa = json!({"payment_method": "pm_card_visa"});
    let failed = request(
        &app,
        &customer,
        Method::POST,
        &path,
        Some("pay-retry"),
        Some(&visa),
    )
    .send()
    .await
    .unwrap();
    assert_problem(failed, 503).await;
    assert_eq!(
        entry_state(&app, &customer, "pay-retry").await,
        None,
        "released"
    );

    let retried = send(
        &app,
        &customer,
        Method::POST,
        &path,
        Some("pay-retry"),
        Some(&visa),
    )
    .await;
    assert_eq!((retried.status, retried.replayed), (200, false));
    assert_eq!(retried.json()["status"], "succeeded");
    wait_status(&app, &customer, &id, "paid").await;
    assert_eq!(
        confirms(&stripe),
        [500, 200],
        "refused once, confirmed once"
    );
}

/// A request whose client gave up (or that timed out) is not cancelled half-way: it finishes and
/// keeps its answer, so the retry gets it instead of adding a second time.
#[tokio::test]
async fn a_request_its_client_gave_up_on_still_finishes_once_and_the_retry_gets_its_answer() {
    let app = TestApp::spawn_with(
        |settings| settings.server.idempotency_wait_ms = 300,
        |_| Vec::new(),
    )
    .await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let path = "/api/v1/cart/items";
    let blocker = hold_cart_row(&app, &customer).await;
    let impatient = request(
        &app,
        &customer,
        Method::POST,
        path,
        Some("gone-1"),
        Some(&body),
    )
    .timeout(Duration::from_millis(500))
    .send()
    .await;
    assert!(impatient.is_err(), "the client gave up");
    assert_eq!(
        entry_state(&app, &customer, "gone-1").await.as_deref(),
        Some("in_progress")
    );
    let too_soon = request(
        &app,
        &customer,
        Method::POST,
        path,
        Some("gone-1"),
        Some(&body),
    )
    .send()
    .await
    .unwrap();
    assert_problem(too_soon, 409).await;

    blocker.rollback().await.unwrap();
    eventually(DEADLINE, "the abandoned request to finish", || async {
        (entry_state(&app, &customer, "gone-1").await.as_deref() == Some("completed")).then_some(())
    })
    .await;
    let retried = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("gone-1"),
        Some(&body),
    )
    .await;
    assert_eq!((retried.status, retried.replayed), (200, true));
    assert_eq!(quantities(&retried.json()), [1]);
    assert_eq!(quantities(&cart(&app, &customer).await), [1], "added once");
}

/// Issue 21, finding 7: the answer to the COMMIT of an add is lost (the line landed). The add
/// is read back through its claim, which the change marked in its own transaction: the client
/// is answered with the cart that has the line, and the retry with the key replays it instead of
/// adding again. (Before, the answer was 503, the key was freed and the retry added twice.)
#[tokio::test]
async fn an_add_whose_commit_answer_is_lost_is_read_back_as_made_and_its_retry_adds_nothing() {
    let (app, proxy) = proxied_app().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let path = "/api/v1/cart/items";

    proxy.lose_commit_answers("INSERT INTO cart_items", 1);
    let first = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("lost-1"),
        Some(&body),
    )
    .await;
    assert_eq!(proxy.lost(), 1, "the add's COMMIT answer was lost");
    assert_eq!((first.status, first.replayed), (200, false), "{first:?}");
    assert_eq!(quantities(&first.json()), [1]);

    let again = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("lost-1"),
        Some(&body),
    )
    .await;
    assert!(again.replayed && again.same_as(&first), "{again:?}");
    assert_eq!(quantities(&cart(&app, &customer).await), [1], "added once");
}

/// The other side of the read-back: the COMMIT of an add never reaches PostgreSQL, so the
/// outcome is as unknown to the shop, but nothing landed. The read-back releases the claim (so
/// the change could no longer be marked) and answers 503; the retry with the key adds once.
#[tokio::test]
async fn an_add_whose_commit_is_lost_is_read_back_as_not_made_and_its_retry_adds_once() {
    let (app, proxy) = proxied_app().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 2);
    let path = "/api/v1/cart/items";

    proxy.lose_commits("INSERT INTO cart_items", 1);
    let first = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("lost-2"),
        Some(&body),
    )
    .await;
    assert_eq!(proxy.lost(), 1, "the add's COMMIT was lost");
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(
        entry_state(&app, &customer, "lost-2").await,
        None,
        "released"
    );
    assert!(quantities(&cart(&app, &customer).await).is_empty());

    let retried = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("lost-2"),
        Some(&body),
    )
    .await;
    assert_eq!(
        (retried.status, retried.replayed),
        (200, false),
        "{retried:?}"
    );
    assert_eq!(quantities(&cart(&app, &customer).await), [2], "added once");
}

/// Issue 21, finding 7, the failed save: the add is made, but keeping its answer fails. Its claim
/// is applied, so it is not released: a retry waits for it (409) until it counts as abandoned,
/// then takes it over and answers with the cart as it is. The add is made once; the same key with
/// another body is still 422. (Before, the claim was deleted and the retry added again.)
#[tokio::test]
async fn an_applied_claim_outlives_a_failed_save_and_its_retry_answers_with_the_cart() {
    let app = TestApp::spawn_with(
        |settings| settings.server.idempotency_wait_ms = 300,
        |_| Vec::new(),
    )
    .await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let path = "/api/v1/cart/items";
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'keeping answers is down'; END $$;
         CREATE TRIGGER refuse_completion BEFORE UPDATE ON idempotency_keys
             FOR EACH ROW WHEN (NEW.state = 'completed') EXECUTE FUNCTION refuse_completion();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let first = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("kept-1"),
        Some(&body),
    )
    .await;
    assert_eq!(first.status, 200, "the caller gets its answer: {first:?}");
    assert_eq!(
        entry_state(&app, &customer, "kept-1").await.as_deref(),
        Some("in_progress"),
        "the applied claim is kept"
    );
    sqlx::raw_sql("DROP TRIGGER refuse_completion ON idempotency_keys")
        .execute(&app.db)
        .await
        .unwrap();
    let too_soon = request(
        &app,
        &customer,
        Method::POST,
        path,
        Some("kept-1"),
        Some(&body),
    )
    .send()
    .await
    .unwrap();
    assert_problem(too_soon, 409).await;

    // As if the request timeout and its margin had passed.
    let aged = sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '1 hour'
         WHERE key = 'kept-1' AND applied_at IS NOT NULL",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1);
    let other = add_body(&mug, 3);
    let misused = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("kept-1"),
        Some(&other),
    )
    .await;
    assert_eq!(misused.status, 422, "{misused:?}");

    let retried = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("kept-1"),
        Some(&body),
    )
    .await;
    assert_eq!(
        (retried.status, retried.replayed),
        (200, false),
        "{retried:?}"
    );
    assert_eq!(quantities(&retried.json()), [1], "the cart as it is");
    assert_eq!(quantities(&cart(&app, &customer).await), [1], "added once");
    assert_eq!(
        entry_state(&app, &customer, "kept-1").await.as_deref(),
        Some("completed")
    );
    let replayed = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("kept-1"),
        Some(&body),
    )
    .await;
    assert!(
        replayed.replayed && replayed.same_as(&retried),
        "{replayed:?}"
    );
}

// ---- expiry ----

#[tokio::test]
async fn an_entry_older_than_24_hours_is_not_replayed_and_is_swept() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let path = "/api/v1/cart/items";
    for key in ["old-1", "old-2"] {
        let first = send(&app, &customer, Method::POST, path, Some(key), Some(&body)).await;
        assert_eq!(first.status, 200);
    }
    let aged = sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 second',
                                     completed_at = now() - interval '24 hours'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 2);

    // Past its 24 hours an entry is not replayed, even before the sweep: the request runs.
    let later = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("old-1"),
        Some(&body),
    )
    .await;
    assert_eq!((later.status, later.replayed), (200, false));
    assert_eq!(quantities(&cart(&app, &customer).await), [3]);

    // The sweep deletes what is past 24 hours (old-2), not the entry just made anew (old-1).
    assert_eq!(shop::http::idempotency::sweep(&app.db).await.unwrap(), 1);
    assert_eq!(entry_state(&app, &customer, "old-2").await, None);
    assert_eq!(
        entry_state(&app, &customer, "old-1").await.as_deref(),
        Some("completed")
    );
    let replayed = send(
        &app,
        &customer,
        Method::POST,
        path,
        Some("old-1"),
        Some(&body),
    )
    .await;
    assert!(replayed.replayed && replayed.same_as(&later));
}

// ---- the header itself ----

#[tokio::test]
async fn a_malformed_key_is_400_naming_the_header_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (mug, customer) = shop_with_a_mug(&app, 10).await;
    let body = add_body(&mug, 1);
    let too_long = "k".repeat(256);
    let malformed: [&[u8]; 5] = [
        b"",
        too_long.as_bytes(),
        b"two words",
        b"tab\there",
        b"caf\xe9",
    ];
    for key in malformed {
        let response = app
            .client
            .post(app.url("/api/v1/cart/items"))
            .bearer_auth(&customer.access_token)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(key).unwrap(),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400).await;
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key", "{key:?}");
    }
    // Sent twice, it is ambiguous.
    let twice = app
        .client
        .post(app.url("/api/v1/cart/items"))
        .bearer_auth(&customer.access_token)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(twice, 400).await;
    assert_eq!(cart(&app, &customer).await["items"], json!([]));
    assert_eq!(entries(&app).await, 0);
    // The longest and the oddest allowed keys work.
    for key in ["k".repeat(255), "!~#$%&'*+-.^_`|".to_owned()] {
        let ok = send(
            &app,
            &customer,
            Method::POST,
            "/api/v1/cart/items",
            Some(&key),
            Some(&body),
        )
        .await;
        assert_eq!(ok.status, 200, "{key}");
    }
}

// ---- the contract ----

const COVERED: [(&str, &str); 8] = [
    ("post", "/api/v1/cart/items"),
    ("patch", "/api/v1/cart/items/{item_id}"),
    ("delete", "/api/v1/cart/items/{item_id}"),
    ("delete", "/api/v1/cart"),
    ("post", "/api/v1/cart/coupon"),
    ("delete", "/api/v1/cart/coupon"),
    ("post", "/api/v1/orders/{id}/pay"),
    ("post", "/api/v1/orders/{id}/cancel"),
];

fn key_parameter(operation: &Value) -> Option<&Value> {
    operation["parameters"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
}

#[tokio::test]
async fn the_served_document_declares_the_key_and_its_answers_on_exactly_the_covered_routes() {
    let app = TestApp::spawn().await;
    let served: Value = app
        .get("/api-docs/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let built = serde_json::to_value(shop::http::openapi()).unwrap();
    assert_eq!(served, built, "the served document is the one built");
    for (method, path) in COVERED {
        let operation = &served["paths"][path][method];
        let parameter = key_parameter(operation).unwrap_or_else(|| panic!("{method} {path}"));
        assert_eq!(parameter["required"], false);
        assert_eq!(parameter["schema"]["minLength"], 1);
        assert_eq!(parameter["schema"]["maxLength"], 255);
        for status in ["400", "409", "422"] {
            assert_eq!(
                operation["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{status} of {method} {path}"
            );
        }
        let success = operation["responses"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(status, _)| status.starts_with('2'))
            .unwrap()
            .1;
        assert!(
            success["headers"]["idempotent-replayed"].is_object(),
            "{method} {path}"
        );
    }
    // Reads are not covered, and checkout keeps its own key.
    assert!(key_parameter(&served["paths"]["/api/v1/cart"]["get"]).is_none());
    let checkout = key_parameter(&served["paths"]["/api/v1/orders"]["post"]).unwrap();
    assert_eq!(checkout["description"], "Makes the checkout safe to retry");
    let declared = served["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .filter(|(_, operation)| {
                    key_parameter(operation).is_some_and(|p| p["schema"]["maxLength"] == 255)
                })
                .map(move |(method, _)| (method.clone(), path.clone()))
        })
        .count();
    // The layer's routes, and the two that keep a key of their own (checkout, admin refunds),
    // read and declare it alike.
    assert_eq!(declared, COVERED.len() + 2);
}

#[tokio::test]
async fn every_covered_route_honours_the_key() {
    let app = TestApp::spawn().await;
    let (customer, id) = pending_order(&app).await;
    let item = Uuid::now_v7();
    // A malformed key is refused by the layer before any handler runs: the layer is on the route.
    for (method, path) in COVERED {
        let path = path
            .replace("{item_id}", &item.to_string())
            .replace("{id}", &id);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let refused = request(
            &app,
            &customer,
            method.clone(),
            &path,
            None,
            Some(&json!({})),
        )
        .header("idempotency-key", "not visible")
        .send()
        .await
        .unwrap();
        assert_problem(refused, 400).await;
    }
    // Not on reads, nor on checkout (which has its own).
    let read = request(
        &app,
        &customer,
        Method::GET,
        "/api/v1/cart",
        Some("not visible"),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(entries(&app).await, 0);
}
