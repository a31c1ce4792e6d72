//! The order saga's failure paths, each reproduced by a fault: a shard that stalls mid-commit, a
//! saga killed mid-step, a payment that does not match its order, a refund the provider refuses,
//! a payment that succeeds as the reservation expires, a provider too slow for the checkout, a
//! checkout whose answer is lost. Money and stock must come out right every time.

use std::time::Duration;

use serde_json::{Value, json};
use shop_stripe_testserver::{Fault, FaultAction, sign};
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_problem, eventually, metric_value};
use crate::orders::{
    DEADLINE, WEBHOOK, WEBHOOK_SECRET, checkout, fill_cart, order, pay, stock, stripe_app, variant,
    wait_status,
};
use crate::pg_proxy::proxied_app;

/// A customer's pending order of `quantity` units of a fresh variant.
struct Ordered {
    admin: Session,
    customer: Session,
    variant: String,
    order: Value,
    id: String,
}

async fn ordered(app: &TestApp, sku: &str, price: i64, stock: i64, quantity: i64) -> Ordered {
    let admin = app.login_as_admin().await;
    let variant = variant(app, &admin, sku, price, stock).await;
    let customer = app.login_as_customer().await;
    fill_cart(app, &customer, &variant, quantity).await;
    let response = checkout(app, &customer).await;
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    Ordered {
        admin,
        customer,
        variant,
        order,
        id,
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// (reason, status, amount, attempts) of every refund row of an order, oldest first.
async fn refunds(app: &TestApp, order: &str) -> Vec<(String, String, i64, i32)> {
    sqlx::query_as(
        "SELECT reason, status, amount, attempts FROM refunds WHERE order_id = $1 ORDER BY seq",
    )
    .bind(Uuid::parse_str(order).unwrap())
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn post_signed(app: &TestApp, body: &str) {
    let now = chrono::Utc::now().timestamp();
    let response = app
        .client
        .post(app.url(WEBHOOK))
        .header(
            "stripe-signature",
            sign(body.as_bytes(), WEBHOOK_SECRET, now),
        )
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Two variants that live on different inventory shards, the first on the lower shard.
async fn variants_on_two_shards(app: &TestApp, admin: &Session) -> (String, String) {
    let inventory = &app.state.actors.inventory;
    let first = variant(app, admin, "TWO-SHARDS-A", 1000, 10).await;
    let shard_a = inventory.shard_of(Uuid::parse_str(&first).unwrap());
    for n in 0.. {
        let other = variant(app, admin, &format!("TWO-SHARDS-B{n}"), 500, 10).await;
        let shard_b = inventory.shard_of(Uuid::parse_str(&other).unwrap());
        if shard_b != shard_a {
            return if shard_a < shard_b {
                (first, other)
            } else {
                (other, first)
            };
        }
    }
    unreachable!()
}

/// Holds a row lock on an order's holds of one variant, as a stuck transaction would: the
/// shard's commit of that variant waits on it.
async fn lock_holds(app: &TestApp, order: &str, variant: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&app.database.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let locked: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM stock_reservations WHERE owner_id = $1 AND variant_id = $2 FOR UPDATE",
    )
    .bind(Uuid::parse_str(order).unwrap())
    .bind(Uuid::parse_str(variant).unwrap())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(locked.len(), 1);
    conn
}

/// Finding 1: the shard of the second line times out after the first shard committed. The
/// commit is retried until every shard has answered: the order is paid, nothing is refunded.
/// Finding 4 on top: the saga is killed while it waits, with the event unprocessed; the order
/// supervisor starts it again and the router hands the event over again.
#[tokio::test]
async fn a_shard_stalling_mid_commit_and_a_killed_saga_still_end_in_one_paid_order() {
    let (app, _stripe) = stripe_app(|settings| settings.actors.call_timeout_ms = 1500).await;
    let admin = app.login_as_admin().await;
    let (a, b) = variants_on_two_shards(&app, &admin).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &a, 2).await;
    fill_cart(&app, &customer, &b, 1).await;
    let created: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let lock = lock_holds(&app, &id, &b).await;

    assert_eq!(pay(&app, &customer, &id).await.status(), 200);
    // Shard A commits; shard B waits on the lock and the saga's call to it times out.
    eventually(DEADLINE, "the first shard to commit", || async {
        (stock(&app, &a).await == (8, 0, 2)).then_some(())
    })
    .await;
    eventually(DEADLINE, "the saga to retry the commit", || async {
        let metrics = app.metrics().await;
        let series = "order_saga_step_retries_total{step=\"committing stock\"}";
        (metric_value(&metrics, series).unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(order(&app, &customer, &id).await["status"], "pending");

    // Kill the saga mid-step: its event stays unprocessed.
    let saga_name = format!("{}order-{id}", app.settings.actors.name_prefix);
    let saga = shop_actors::ractor::registry::where_is(saga_name).expect("the saga runs");
    saga.kill();
    lock.close().await.unwrap();

    let paid = wait_status(&app, &customer, &id, "paid").await;
    assert_eq!(paid["refunded_amount"], 0);
    assert_eq!(stock(&app, &a).await, (8, 0, 2));
    assert_eq!(stock(&app, &b).await, (9, 0, 1));
    assert!(refunds(&app, &id).await.is_empty(), "nothing is refunded");
    let unprocessed = count(
        &app,
        "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL",
    )
    .await;
    assert_eq!(unprocessed, 0);
    assert_eq!(app.state.actors.inventory.reconcile().await.unwrap(), 0);
}

/// Finding 2: a succeeded payment whose amount is not the order's. The order is cancelled, its
/// stock released, and what was taken is refunded and recorded.
#[tokio::test]
async fn a_payment_that_does_not_match_its_order_is_refunded_and_the_order_cancelled() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let Ordered {
        customer,
        variant: mug,
        order: created,
        id,
        ..
    } = ordered(&app, "MISMATCH", 2500, 5, 2).await;
    let intent = created["payment"]["payment_intent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    stripe.pause_webhooks();
    assert_eq!(pay(&app, &customer, &id).await.status(), 200);
    let succeeded = stripe
        .wait_for(DEADLINE, |s| {
            s.events()
                .into_iter()
                .find(|e| e.event_type == "payment_intent.succeeded" && e.object_id == intent)
        })
        .await
        .unwrap();
    // The same payment as the provider might report it wrongly: 1000 less than the order.
    let mut event = succeeded.json();
    event["id"] = json!(format!("evt_mismatch_{}", Uuid::new_v4().simple()));
    event["data"]["object"]["amount_received"] = json!(4000);
    event["data"]["object"]["amount"] = json!(4000);
    post_signed(&app, &event.to_string()).await;

    let cancelled = wait_status(&app, &customer, &id, "cancelled").await;
    assert_eq!(stock(&app, &mug).await, (5, 0, 0), "the stock is back");
    eventually(DEADLINE, "the refund to be settled", || async {
        let rows = refunds(&app, &id).await;
        (rows.len() == 1 && rows[0].1 == "succeeded").then_some(())
    })
    .await;
    assert_eq!(
        refunds(&app, &id).await[0].0,
        "mismatch",
        "the refund says why"
    );
    assert_eq!(
        refunds(&app, &id).await[0].2,
        4000,
        "what was taken goes back"
    );
    let refund_calls: Vec<_> = stripe
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/refunds" && r.status == 200)
        .collect();
    assert_eq!(refund_calls.len(), 1);
    assert_eq!(refund_calls[0].param("amount"), Some("4000"));
    let reasons: Vec<Value> = cancelled["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].clone())
        .collect();
    assert!(reasons.contains(&json!("the payment did not match the order")));
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "payment_mismatches_total"),
        Some(1.0)
    );
}

/// Finding 3: a refund the provider refuses twice is owed, visible, retried with backoff, and
/// settled on the third attempt; the order becomes refunded only then.
#[tokio::test]
async fn a_refund_the_provider_refuses_stays_owed_and_is_retried_until_taken() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let Ordered {
        admin,
        customer,
        id,
        ..
    } = ordered(&app, "REFUND-RETRY", 1500, 5, 1).await;
    pay(&app, &customer, &id).await;
    wait_status(&app, &customer, &id, "paid").await;

    stripe.inject(Fault::new("POST", "/v1/refunds", 2, FaultAction::Fail(500)));
    let response = app
        .post_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/orders/{id}/status"),
            &json!({"status": "refunded"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["status"], "paid",
        "not refunded until the provider takes it"
    );
    let metrics = app.metrics().await;
    assert_eq!(metric_value(&metrics, "refunds_owed"), Some(1.0));

    let refunded = wait_status(&app, &customer, &id, "refunded").await;
    assert_eq!(refunded["refunded_amount"], 1500);
    // The provider's event and the worker's record of the refund may land in either order.
    let rows = eventually(DEADLINE, "the refund to be recorded settled", || async {
        let rows = refunds(&app, &id).await;
        (rows.len() == 1 && rows[0].1 == "succeeded").then_some(rows)
    })
    .await;
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2, rows[0].3),
        ("succeeded", 1500, 3)
    );
    let keys: Vec<Option<String>> = stripe
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/refunds")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3, "two refused attempts and the one taken");
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for every attempt"
    );
    eventually(DEADLINE, "nothing to be owed", || async {
        let metrics = app.metrics().await;
        (metric_value(&metrics, "refunds_owed") == Some(0.0)).then_some(())
    })
    .await;
}

async fn pay_with(app: &TestApp, who: &Session, id: &str, card: &str) {
    let response = app
        .post_json_as(
            &who.access_token,
            &format!("/api/v1/orders/{id}/pay"),
            &json!({"payment_method": card}),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    wait_status(app, who, id, "paid").await;
}

/// (status, failed_tries, the order's refunded_amount) of an order's only refund, read in one
/// snapshot.
async fn refund_state(app: &TestApp, order: &str) -> (String, i32, i64) {
    sqlx::query_as(
        "SELECT r.status, r.failed_tries, o.refunded_amount
         FROM refunds r JOIN orders o ON o.id = r.order_id WHERE r.order_id = $1",
    )
    .bind(Uuid::parse_str(order).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn admin_refund(app: &TestApp, admin: &Session, id: &str, amount: i64) -> reqwest::Response {
    app.post_json_as(
        &admin.access_token,
        &format!("/api/v1/admin/orders/{id}/refunds"),
        &json!({"amount": amount, "reason": "returned"}),
    )
    .await
}

/// Issue 21, finding 5: the provider answers a refund `succeeded` and reports later that it
/// failed (`pm_card_refundFail`). The money is not back: the refund is owed again, out of the
/// order's `refunded_amount`, asked for again under a new key, and still counts against what an
/// admin can refund.
#[tokio::test]
async fn a_refund_that_fails_at_the_provider_is_owed_again_and_asked_for_under_a_new_key() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let Ordered {
        admin,
        customer,
        id,
        ..
    } = ordered(&app, "REFUND-FAILS", 1500, 5, 1).await;
    pay_with(&app, &customer, &id, "pm_card_refundFail").await;

    // The provider's answer first, its later events held back.
    stripe.pause_webhooks();
    let response = admin_refund(&app, &admin, &id, 1000).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["refunded_amount"], 1000, "answered succeeded");
    assert_eq!(
        refund_state(&app, &id).await,
        ("succeeded".to_owned(), 0, 1000)
    );

    stripe.resume_webhooks();
    let state = eventually(DEADLINE, "the failed refund to be owed again", || async {
        let state = refund_state(&app, &id).await;
        (state.1 >= 1 && state.0 == "owed").then_some(state)
    })
    .await;
    assert_eq!(
        state.2, 0,
        "not counted as refunded once it failed: {state:?}"
    );
    // 1000 of 1500 is still owed: only 500 is left to refund.
    assert_problem(admin_refund(&app, &admin, &id, 600).await, 422).await;

    // Asked for again under its own key, which fails the same way.
    let state = eventually(DEADLINE, "the second try to fail too", || async {
        let state = refund_state(&app, &id).await;
        (state.1 >= 2 && state.0 == "owed").then_some(state)
    })
    .await;
    assert_eq!(state.2, 0, "{state:?}");
    let keys: Vec<String> = stripe
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/refunds" && r.status == 200)
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        keys[..2],
        [
            format!("order:{id}:refund:1"),
            format!("order:{id}:refund:1:retry:1")
        ]
    );
    let last_error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM refunds WHERE order_id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    let last_error = last_error.unwrap_or_default();
    assert!(
        last_error.contains("failed: expired_or_canceled_card"),
        "{last_error}"
    );
    let metrics = app.metrics().await;
    assert!(metric_value(&metrics, "refunds_failed_total") >= Some(2.0));
    let order = order(&app, &customer, &id).await;
    assert_eq!(
        (order["status"].clone(), order["refunded_amount"].clone()),
        (json!("paid"), json!(0))
    );
}

/// Issue 21, finding 5: a refund the provider takes as `pending` (`pm_card_pendingRefund`) is
/// not money back until the provider says it succeeded: the order shows it only then, and until
/// then it is owed in `refunds_owed` and counts against what an admin can refund.
#[tokio::test]
async fn a_pending_refund_counts_as_refunded_only_once_the_provider_settles_it() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let Ordered {
        admin,
        customer,
        id,
        ..
    } = ordered(&app, "REFUND-PENDS", 1500, 5, 1).await;
    pay_with(&app, &customer, &id, "pm_card_pendingRefund").await;

    stripe.pause_webhooks();
    let response = admin_refund(&app, &admin, &id, 1000).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["refunded_amount"], 0, "pending is not refunded");
    assert_eq!(refund_state(&app, &id).await, ("pending".to_owned(), 0, 0));
    let metrics = app.metrics().await;
    assert_eq!(metric_value(&metrics, "refunds_owed"), Some(1.0));
    assert_problem(admin_refund(&app, &admin, &id, 600).await, 422).await;

    stripe.resume_webhooks();
    let state = eventually(DEADLINE, "the pending refund to settle", || async {
        let state = refund_state(&app, &id).await;
        (state.0 == "succeeded").then_some(state)
    })
    .await;
    assert_eq!(state, ("succeeded".to_owned(), 0, 1000));
    assert_eq!(order(&app, &customer, &id).await["refunded_amount"], 1000);
    eventually(DEADLINE, "nothing to be owed", || async {
        let metrics = app.metrics().await;
        (metric_value(&metrics, "refunds_owed") == Some(0.0)).then_some(())
    })
    .await;
    // The rest can still be refunded, once.
    assert_eq!(admin_refund(&app, &admin, &id, 500).await.status(), 200);
}

/// Issue 21, finding 8: the answer to the COMMIT that writes the order is lost (the commit went
/// through; the connection dropped before the saga heard so). The saga reads the order back
/// instead of undoing it: the order stands with its stock held and its intent alive, and the
/// customer pays it.
#[tokio::test]
async fn an_order_whose_commit_answer_is_lost_stands_with_its_stock_and_is_paid() {
    let (app, proxy) = proxied_app().await;
    let admin = app.login_as_admin().await;
    let variant = variant(&app, &admin, "LOST-COMMIT", 1200, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &variant, 2).await;

    proxy.lose_commit_answers("INSERT INTO orders", 1);
    let response = checkout(&app, &customer).await;
    assert_eq!(proxy.lost(), 1, "the order's COMMIT answer was lost");
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    assert_eq!(order["status"], "pending");
    assert_eq!(
        stock(&app, &variant).await,
        (5, 2, 0),
        "its units stay held"
    );

    let paid = pay(&app, &customer, id).await;
    assert!(paid.status().is_success(), "{}", paid.status());
    let paid = wait_status(&app, &customer, id, "paid").await;
    assert_eq!(paid["refunded_amount"], 0);
    assert_eq!(stock(&app, &variant).await, (3, 0, 2));
    assert!(refunds(&app, id).await.is_empty(), "nothing to give back");
}

/// Issue 21, finding 6: the answer to the COMMIT that writes a checkout's holds is lost (the
/// rows landed). The shard does not take the write as refused: it reads the holds back, and the
/// checkout's compensating release includes that shard, so nothing stays held for an order that
/// never existed.
#[tokio::test]
async fn holds_whose_commit_answer_is_lost_are_read_back_and_released() {
    let (app, proxy) = proxied_app().await;
    let admin = app.login_as_admin().await;
    let variant = variant(&app, &admin, "LOST-HOLD", 800, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &variant, 2).await;

    proxy.lose_commit_answers("INSERT INTO stock_reservations", 1);
    let response = checkout(&app, &customer).await;
    assert_eq!(proxy.lost(), 1, "the holds' COMMIT answer was lost");
    assert_problem(response, 503).await;
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    let released = count(
        &app,
        "SELECT count(*) FROM stock_reservations WHERE status = 'released'",
    )
    .await;
    assert_eq!(released, 1, "the hold that landed is released");
    assert_eq!(stock(&app, &variant).await, (5, 0, 0), "nothing stays held");

    // Memory agrees: the next checkout of every unit is served, and the shard's count is right.
    fill_cart(&app, &customer, &variant, 3).await;
    let response = checkout(&app, &customer).await;
    assert_eq!(response.status(), 201);
    assert_eq!(stock(&app, &variant).await, (5, 5, 0));
    let other = app.login_as_customer().await;
    let more = app
        .post_json_as(
            &other.access_token,
            "/api/v1/cart/items",
            &json!({"variant_id": variant, "quantity": 1}),
        )
        .await;
    assert_problem(more, 409).await;
}

/// Finding 6: shipped cannot become refunded; a partial refund keeps the status and shows the
/// amount; refunds add up to the total and no further.
#[tokio::test]
async fn partial_refunds_keep_the_status_and_a_shipped_order_cannot_be_refunded() {
    let (app, _stripe) = stripe_app(|_| {}).await;
    let Ordered {
        admin,
        customer,
        id,
        ..
    } = ordered(&app, "PARTIAL", 1000, 5, 3).await;
    pay(&app, &customer, &id).await;
    wait_status(&app, &customer, &id, "paid").await;
    let refund = |amount: i64| {
        let (app, admin, id) = (&app, &admin, &id);
        async move {
            app.post_json_as(
                &admin.access_token,
                &format!("/api/v1/admin/orders/{id}/refunds"),
                &json!({"amount": amount, "reason": "a scratched mug"}),
            )
            .await
        }
    };
    // Sent twice with one Idempotency-Key (a retry after a lost answer): refunded once.
    for _ in 0..2 {
        let partial: Value = app
            .client
            .post(app.url(&format!("/api/v1/admin/orders/{id}/refunds")))
            .bearer_auth(&admin.access_token)
            .header("idempotency-key", "scratch-1")
            .json(&json!({"amount": 1000, "reason": "a scratched mug"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(partial["status"], "paid");
        assert_eq!(partial["refunded_amount"], 1000);
    }
    assert_eq!(refunds(&app, &id).await.len(), 1);
    assert_problem(refund(2001).await, 422).await;
    assert_problem(refund(0).await, 422).await;

    let ship = app
        .post_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/orders/{id}/status"),
            &json!({"status": "shipped"}),
        )
        .await;
    assert_eq!(ship.status(), 200);
    let shipped_refund = app
        .post_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/orders/{id}/status"),
            &json!({"status": "refunded"}),
        )
        .await;
    assert_problem(shipped_refund, 409).await;
    assert_problem(refund(500).await, 409).await;
    let still = order(&app, &customer, &id).await;
    assert_eq!(still["status"], "shipped");
    assert_eq!(still["refunded_amount"], 1000);

    // Delivered, the rest is refunded in two parts; the order is refunded at the last cent.
    app.post_json_as(
        &admin.access_token,
        &format!("/api/v1/admin/orders/{id}/status"),
        &json!({"status": "delivered"}),
    )
    .await;
    let second: Value = refund(1500).await.json().await.unwrap();
    assert_eq!(
        (
            second["status"].as_str(),
            second["refunded_amount"].as_i64()
        ),
        (Some("delivered"), Some(2500))
    );
    let last: Value = refund(500).await.json().await.unwrap();
    assert_eq!(last["status"], "refunded");
    assert_eq!(last["refunded_amount"], 3000);
    assert_problem(refund(1).await, 409).await;
}

/// The deadline comes after the payment was taken but before its event arrived: cancelling the
/// intent fails, so the order is not simply cancelled. Either it is paid (its holds were still
/// there) or cancelled with the whole payment refunded: never cancelled with the money kept.
#[tokio::test]
async fn a_payment_taken_as_the_reservation_expires_is_either_an_order_or_a_refund() {
    let (app, stripe) = stripe_app(|settings| settings.checkout.reservation_ttl_secs = 2).await;
    let Ordered {
        customer,
        variant: mug,
        id,
        ..
    } = ordered(&app, "LATE", 1200, 5, 1).await;
    stripe.pause_webhooks();
    assert_eq!(pay(&app, &customer, &id).await.status(), 200);
    let settled = eventually(DEADLINE, "the order to settle", || async {
        let body = order(&app, &customer, &id).await;
        (body["status"] != "pending").then_some(body)
    })
    .await;
    stripe.resume_webhooks();
    let status = settled["status"].as_str().unwrap().to_owned();
    match status.as_str() {
        "paid" => {
            assert_eq!(stock(&app, &mug).await, (4, 0, 1));
            assert!(refunds(&app, &id).await.is_empty());
        }
        "cancelled" => {
            eventually(DEADLINE, "the payment to be refunded", || async {
                let rows = refunds(&app, &id).await;
                (rows.len() == 1 && rows[0].1 == "succeeded" && rows[0].2 == 1200).then_some(())
            })
            .await;
            assert_eq!(stock(&app, &mug).await, (5, 0, 0));
        }
        other => panic!("unexpected status {other}"),
    }
    // The webhook, once it arrives, changes nothing.
    eventually(DEADLINE, "every event to be processed", || async {
        let unprocessed = count(
            &app,
            "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL",
        )
        .await;
        let delivered = stripe
            .delivered_events()
            .iter()
            .any(|e| e.event_type == "payment_intent.succeeded");
        (delivered && unprocessed == 0).then_some(())
    })
    .await;
    assert_eq!(order(&app, &customer, &id).await["status"], status.as_str());
    assert!(refunds(&app, &id).await.len() <= usize::from(status == "cancelled"));
}

/// Issue 21, finding 8: giving the stock back is slow (a lock stalls the shard's release past the
/// caller's wait). The cancel is decided by its status change and answered then: 200 and
/// cancelled, never a 503 for a cancel that goes through; the stock follows once the lock goes.
#[tokio::test]
async fn a_cancel_is_answered_when_it_is_decided_not_after_its_stock_is_back() {
    let (app, _stripe) = stripe_app(|settings| {
        settings.payments.timeout_secs = 1;
        settings.checkout.call_timeout_secs = 4;
        settings.actors.call_timeout_ms = 2500;
    })
    .await;
    let Ordered {
        customer,
        variant,
        id,
        ..
    } = ordered(&app, "SLOW-RELEASE", 900, 5, 2).await;
    assert_eq!(stock(&app, &variant).await, (5, 2, 0));

    let lock = app.lock_table("stock_reservations", "EXCLUSIVE").await;
    let response = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/cancel"),
            &json!({}),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    lock.rollback().await.unwrap();

    eventually(
        DEADLINE,
        "the cancelled order's stock to be back",
        || async { (stock(&app, &variant).await == (5, 0, 0)).then_some(()) },
    )
    .await;
    assert_eq!(order(&app, &customer, &id).await["status"], "cancelled");
}

/// Finding 7: the provider is slower than the checkout may wait. The answer is 503 and nothing
/// was created: no order, no stock held, the cart as it was.
#[tokio::test]
async fn a_checkout_the_provider_is_too_slow_for_answers_503_and_creates_nothing() {
    let (app, stripe) = stripe_app(|settings| {
        settings.payments.timeout_secs = 1;
        settings.checkout.call_timeout_secs = 4;
    })
    .await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "SLOW", 1000, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 2).await;
    stripe.inject(Fault::new(
        "POST",
        "/v1/payment_intents",
        1,
        FaultAction::Delay(Duration::from_secs(3)),
    ));
    assert_problem(checkout(&app, &customer).await, 503).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        0,
        "no order was created"
    );
    assert_eq!(stock(&app, &mug).await, (5, 0, 0), "no stock is held");
    let cart: Value = app
        .get_as(&customer.access_token, "/api/v1/cart")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"][0]["quantity"], 2, "the cart is kept");
    // And the retry works.
    assert_eq!(checkout(&app, &customer).await.status(), 201);
}

/// Finding 7, the other half: the client gives up before the answer comes back (a slow
/// provider), and retries without an Idempotency-Key. It gets the order the first attempt made,
/// not a second one.
#[tokio::test]
async fn a_checkout_retried_after_a_lost_answer_returns_the_order_already_made() {
    let (app, stripe) = stripe_app(|settings| {
        settings.payments.timeout_secs = 4;
        settings.checkout.call_timeout_secs = 8;
    })
    .await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "LOST", 1000, 5).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 1).await;
    stripe.inject(Fault::new(
        "POST",
        "/v1/payment_intents",
        1,
        FaultAction::Delay(Duration::from_secs(2)),
    ));
    let impatient = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&customer.access_token)
        .json(&crate::orders::address())
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up");
    eventually(DEADLINE, "the first attempt's order", || async {
        (count(&app, "SELECT count(*) FROM orders").await == 1).then_some(())
    })
    .await;
    let retry = checkout(&app, &customer).await;
    assert_eq!(retry.status(), 201);
    let body: Value = retry.json().await.unwrap();
    let first: Uuid = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(body["id"], first.to_string());
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        1,
        "exactly one order"
    );
    assert_eq!(stock(&app, &mug).await, (5, 1, 0));
}

/// Finding 5: sagas stop once their order is final. Paying or cancelling a final order, and a
/// payment event for an order that does not exist, leave no saga behind; the sagas alive are
/// the pending orders.
#[tokio::test]
async fn the_sagas_alive_are_the_pending_orders() {
    let (app, _stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "SAGAS", 1000, 10).await;
    let customer = app.login_as_customer().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        fill_cart(&app, &customer, &mug, 1).await;
        let created: Value = checkout(&app, &customer).await.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    pay(&app, &customer, &ids[0]).await;
    wait_status(&app, &customer, &ids[0], "paid").await;
    let cancel = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{}/cancel", ids[1]),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), 200);
    // Commands on final orders: 409, and no saga stays for them.
    assert_problem(pay(&app, &customer, &ids[0]).await, 409).await;
    let again = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{}/cancel", ids[1]),
            &json!({}),
        )
        .await;
    assert_problem(again, 409).await;
    // A payment event for an order that does not exist.
    let orphan = json!({"id": format!("evt_orphan_{}", Uuid::new_v4().simple()), "object": "event",
        "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_orphan", "object": "payment_intent",
        "amount": 100, "amount_received": 100, "currency": "usd", "status": "succeeded",
        "metadata": {"order_id": Uuid::new_v4().to_string()}}}});
    post_signed(&app, &orphan.to_string()).await;

    // The orphan event is settled, not replayed forever.
    eventually(DEADLINE, "every event to be processed", || async {
        let unprocessed = count(
            &app,
            "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL",
        )
        .await;
        (unprocessed == 0).then_some(())
    })
    .await;
    // Once every event is settled (a saga started for one stops after marking it processed),
    // exactly the pending order's saga runs.
    let pending = 1;
    eventually(DEADLINE, "only the pending order's saga to run", || async {
        let running = app.state.actors.orders.running().await.unwrap();
        let metrics = app.metrics().await;
        let alive = metric_value(&metrics, "actor_alive{kind=\"order_saga\"}");
        (running == pending && alive == Some(pending as f64)).then_some(())
    })
    .await;
}

/// Finding 8 through the API: 50 rounds of three adds racing one checkout. Every unit whose add
/// was answered 200 ends in exactly one place: an order or the cart.
#[tokio::test]
async fn checkout_racing_cart_adds_keeps_every_unit_in_an_order_or_the_cart() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let item = variant(&app, &admin, "RACE", 100, 10_000).await;
    let customer = app.login_as_customer().await;
    let one = json!({"variant_id": item, "quantity": 1});
    let mut added = 0;
    let mut orders = std::collections::HashSet::new();
    for _ in 0..50 {
        let adds =
            (0..3).map(|_| app.post_json_as(&customer.access_token, "/api/v1/cart/items", &one));
        let (adds, placed) =
            futures::future::join(futures::future::join_all(adds), checkout(&app, &customer)).await;
        added += adds.iter().filter(|r| r.status() == 200).count() as i64;
        match placed.status().as_u16() {
            201 => {
                let order: Value = placed.json().await.unwrap();
                orders.insert(Uuid::parse_str(order["id"].as_str().unwrap()).unwrap());
            }
            // The checkout came before every add of the round and no order was pending yet.
            422 => {}
            other => panic!("checkout answered {other}"),
        }
    }
    let orders: Vec<Uuid> = orders.into_iter().collect();
    let ordered: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(quantity), 0)::bigint FROM order_items WHERE order_id = ANY($1)",
    )
    .bind(&orders)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let cart: Value = app
        .get_as(&customer.access_token, "/api/v1/cart")
        .await
        .json()
        .await
        .unwrap();
    let in_cart: i64 = cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["quantity"].as_i64().unwrap())
        .sum();
    assert!(orders.len() > 1, "the rounds made orders");
    assert_eq!(
        ordered + in_cart,
        added,
        "{ordered} ordered + {in_cart} in the cart"
    );
}
