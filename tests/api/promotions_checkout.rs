//! Promotions from the customer's side: a coupon on the cart (every refusal reason, guessing
//! throttled), discounts to the cent in the cart and in the order, the coupon limiter at checkout
//! (the usage limit under 200 concurrent checkouts, release on cancel, commit on payment), the
//! discounted amount at Stripe, and gift lines.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_problem, eventually};
use crate::orders::{DEADLINE, checkout, fill_cart, pay, stripe_app, variant, wait_status};

async fn coupon(app: &TestApp, admin: &Session, body: Value) -> Value {
    app.created(&admin.access_token, "/api/v1/admin/coupons", &body)
        .await
}

async fn apply(app: &TestApp, who: &Session, code: &str) -> reqwest::Response {
    app.post_json_as(
        &who.access_token,
        "/api/v1/cart/coupon",
        &json!({"code": code}),
    )
    .await
}

async fn cart(app: &TestApp, who: &Session) -> Value {
    app.get_as(&who.access_token, "/api/v1/cart")
        .await
        .json()
        .await
        .unwrap()
}

/// Sets the quantity of a cart line; the cart as it then is.
async fn set_quantity(app: &TestApp, who: &Session, line: &str, quantity: i64) -> Value {
    app.patch_json_as(
        &who.access_token,
        &format!("/api/v1/cart/items/{line}"),
        &json!({"quantity": quantity}),
    )
    .await
    .json()
    .await
    .unwrap()
}

/// The gift lines of a cart or an order.
fn gift_lines(lines_of: &Value) -> Vec<&Value> {
    lines_of["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["gift"] == true)
        .collect()
}

async fn refused(response: reqwest::Response, reason: &str) -> Value {
    let body = assert_problem(response, 422).await;
    assert_eq!(body["reason"], reason, "{body}");
    body
}

fn order_coupon(code: &str, kind: &str, value: i64) -> Value {
    json!({"code": code, "kind": kind, "value": value, "scope": "order", "active": true})
}

/// An order-wide coupon that can be used `usage_limit` times in all.
fn limited_coupon(code: &str, kind: &str, value: i64, usage_limit: i32) -> Value {
    let mut body = order_coupon(code, kind, value);
    body["usage_limit"] = json!(usage_limit);
    body
}

/// The id of what an admin route created.
fn id_of(created: &Value) -> Uuid {
    Uuid::parse_str(created["id"].as_str().unwrap()).unwrap()
}

/// A new customer with `quantity` of `variant` in the cart.
async fn customer_with_cart(app: &TestApp, variant: &str, quantity: i64) -> Session {
    let customer = app.login_as_customer().await;
    fill_cart(app, &customer, variant, quantity).await;
    customer
}

/// A new customer with `quantity` of `variant` in the cart and the coupon `code` applied to it.
async fn customer_with_coupon(app: &TestApp, variant: &str, quantity: i64, code: &str) -> Session {
    let customer = customer_with_cart(app, variant, quantity).await;
    assert_eq!(apply(app, &customer, code).await.status(), 200, "{code}");
    customer
}

#[tokio::test]
async fn ten_percent_off_25_times_19_99_is_exactly_49_98_in_the_cart_and_at_stripe() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG-1999", 1999, 100).await;
    coupon(&app, &admin, order_coupon("TENOFF", "percent", 10)).await;
    let customer = customer_with_cart(&app, &mug, 25).await;
    let applied: Value = apply(&app, &customer, "tenoff").await.json().await.unwrap();
    assert_eq!(applied["subtotal"], 49975);
    assert_eq!(applied["discount_total"], 4998);
    assert_eq!(applied["total"], 44977);
    assert_eq!(applied["items"][0]["discount"], 4998);
    assert_eq!(applied["coupon"]["applied"], true);

    let order: Value = checkout(&app, &customer).await.json().await.unwrap();
    assert_eq!(order["discount_total"], 4998);
    assert_eq!(order["total"], 44977);
    assert_eq!(order["coupon_code"], "TENOFF");
    assert_eq!(order["items"][0]["discount"], 4998);
    let intent = order["payment"]["payment_intent_id"].as_str().unwrap();
    let at_stripe = stripe
        .payment_intents()
        .into_iter()
        .find(|pi| pi["id"] == intent)
        .unwrap();
    assert_eq!(
        at_stripe["amount"], 44977,
        "Stripe is asked for the discounted total"
    );
    // The cart is empty and its coupon gone with the checkout.
    let after = cart(&app, &customer).await;
    assert_eq!(after["coupon"], Value::Null);
}

#[tokio::test]
async fn line_discounts_add_up_to_the_order_discount_and_a_fixed_coupon_never_goes_below_zero() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let a = variant(&app, &admin, "L-333A", 333, 10).await;
    let b = variant(&app, &admin, "L-333B", 333, 10).await;
    let c = variant(&app, &admin, "L-334", 334, 10).await;
    coupon(&app, &admin, order_coupon("TEN-ORDER", "percent", 10)).await;
    coupon(&app, &admin, order_coupon("HUGE", "fixed", 100_000)).await;
    let customer = app.login_as_customer().await;
    for v in [&a, &b, &c] {
        fill_cart(&app, &customer, v, 1).await;
    }
    let priced: Value = apply(&app, &customer, "TEN-ORDER")
        .await
        .json()
        .await
        .unwrap();
    let discounts: Vec<i64> = priced["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["discount"].as_i64().unwrap())
        .collect();
    assert_eq!(priced["discount_total"], 100);
    assert_eq!(discounts.iter().sum::<i64>(), 100);
    let mut sorted = discounts.clone();
    sorted.sort();
    assert_eq!(sorted, vec![33, 33, 34]);

    let free: Value = apply(&app, &customer, "HUGE").await.json().await.unwrap();
    assert_eq!(free["discount_total"], 1000);
    assert_eq!(free["total"], 0, "never negative");
    assert_eq!(
        free["coupon"]["code"], "HUGE",
        "one coupon per cart: it replaced the other"
    );
}

#[tokio::test]
async fn a_product_coupon_leaves_other_lines_untouched_and_follows_the_category_tree() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let parent = app
        .created(
            &admin.access_token,
            "/api/v1/categories",
            &json!({"name": "Kitchen"}),
        )
        .await;
    let child = app
        .created(
            &admin.access_token,
            "/api/v1/categories",
            &json!({"name": "Mugs", "parent_id": parent["id"]}),
        )
        .await;
    let mug = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Mug", "sku": "CAT-MUG", "price": 1000, "stock": 10,
                    "status": "active", "category_id": child["id"]}),
        )
        .await;
    let mug_variant = mug["variants"][0]["id"].as_str().unwrap().to_owned();
    let pen = variant(&app, &admin, "CAT-PEN", 500, 10).await;
    coupon(
        &app,
        &admin,
        json!({"code": "KITCHEN20", "kind": "percent", "value": 20, "scope": "product",
               "category_ids": [parent["id"]], "active": true}),
    )
    .await;
    let customer = customer_with_cart(&app, &mug_variant, 1).await;
    fill_cart(&app, &customer, &pen, 2).await;
    let priced: Value = apply(&app, &customer, "KITCHEN20")
        .await
        .json()
        .await
        .unwrap();
    for item in priced["items"].as_array().unwrap() {
        let expected = if item["variant_id"] == mug_variant.as_str() {
            200
        } else {
            0
        };
        assert_eq!(item["discount"], expected, "{item}");
    }
    assert_eq!(priced["discount_total"], 200);
    assert_eq!(priced["total"], 1800);
}

#[tokio::test]
async fn every_refusal_has_its_reason_and_unknown_and_inactive_codes_look_alike() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "R-MUG", 1000, 10).await;
    let other = variant(&app, &admin, "R-OTHER", 1000, 10).await;
    let past = chrono::Utc::now() - chrono::Duration::days(2);
    let future = chrono::Utc::now() + chrono::Duration::days(2);
    coupon(
        &app,
        &admin,
        json!({"code": "OLD", "kind": "percent", "value": 10, "scope": "order",
               "starts_at": past - chrono::Duration::days(1), "expires_at": past, "active": true}),
    )
    .await;
    coupon(
        &app,
        &admin,
        json!({"code": "SOON", "kind": "percent", "value": 10, "scope": "order",
               "starts_at": future, "active": true}),
    )
    .await;
    coupon(
        &app,
        &admin,
        json!({"code": "BIGSPEND", "kind": "percent", "value": 10, "scope": "order",
               "min_order_total": 5000, "active": true}),
    )
    .await;
    let other_product: Value = app
        .get("/api/v1/products?q=R-OTHER")
        .await
        .json()
        .await
        .unwrap();
    let other_product_id = other_product["items"][0]["id"].clone();
    coupon(
        &app,
        &admin,
        json!({"code": "OTHERONLY", "kind": "percent", "value": 10, "scope": "product",
               "product_ids": [other_product_id], "active": true}),
    )
    .await;
    let off = coupon(&app, &admin, order_coupon("SWITCHEDOFF", "percent", 10)).await;
    let deleted = app
        .delete_as(
            &admin.access_token,
            &format!("/api/v1/admin/coupons/{}", off["id"].as_str().unwrap()),
        )
        .await;
    assert!(deleted.status().is_success());
    let used_up = coupon(&app, &admin, limited_coupon("ONCE", "percent", 10, 1)).await;
    let _ = other;

    let customer = customer_with_cart(&app, &mug, 1).await;
    refused(apply(&app, &customer, "OLD").await, "expired").await;
    refused(apply(&app, &customer, "SOON").await, "not_started").await;
    refused(
        apply(&app, &customer, "BIGSPEND").await,
        "min_order_not_met",
    )
    .await;
    refused(apply(&app, &customer, "OTHERONLY").await, "not_applicable").await;
    let unknown = refused(apply(&app, &customer, "NOSUCHCODE").await, "unknown").await;
    let inactive = refused(apply(&app, &customer, "SWITCHEDOFF").await, "unknown").await;
    assert_eq!(unknown, inactive, "no enumeration: the same body");
    // The one use of ONCE taken by another customer's order.
    let first = customer_with_coupon(&app, &mug, 1, "ONCE").await;
    assert_eq!(checkout(&app, &first).await.status(), 201);
    let _ = used_up;
    refused(apply(&app, &customer, "ONCE").await, "usage_limit_reached").await;
    // Nothing of it stuck to the cart.
    assert_eq!(cart(&app, &customer).await["coupon"], Value::Null);
}

#[tokio::test]
async fn guessing_codes_is_429_with_retry_after() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    for n in 0..10 {
        refused(
            apply(&app, &customer, &format!("GUESS{n}")).await,
            "unknown",
        )
        .await;
    }
    let throttled = apply(&app, &customer, "GUESS10").await;
    assert_eq!(throttled.status(), 429);
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 15 * 60);
    // Another customer is not affected.
    let other = app.login_as_customer().await;
    refused(apply(&app, &other, "GUESS0").await, "unknown").await;
}

#[tokio::test]
async fn a_coupon_that_stops_applying_stays_on_the_cart_with_its_reason() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "KEEP-MUG", 1000, 10).await;
    coupon(
        &app,
        &admin,
        json!({"code": "OVER20", "kind": "fixed", "value": 500, "scope": "order",
               "min_order_total": 2000, "active": true}),
    )
    .await;
    let customer = customer_with_coupon(&app, &mug, 2, "OVER20").await;
    let line = cart(&app, &customer).await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let below = set_quantity(&app, &customer, &line, 1).await;
    assert_eq!(below["coupon"]["code"], "OVER20");
    assert_eq!(below["coupon"]["applied"], false);
    assert_eq!(below["coupon"]["reason"], "min_order_not_met");
    assert_eq!(below["discount_total"], 0);
    // Checkout does not drop it silently.
    refused(checkout(&app, &customer).await, "min_order_not_met").await;
}

/// 200 customers, 200 concurrent checkouts, a coupon with usage_limit 10: exactly 10 orders carry
/// it; the rest are 422 and hold nothing.
#[tokio::test]
async fn two_hundred_checkouts_for_a_coupon_limited_to_ten_make_exactly_ten_discounted_orders() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "RUSH", 1000, 1000).await;
    let rush = coupon(&app, &admin, limited_coupon("RUSH10", "percent", 50, 10)).await;
    let mut customers = Vec::new();
    for _ in 0..200 {
        customers.push(customer_with_coupon(&app, &mug, 1, "RUSH10").await);
    }
    let answers = futures::future::join_all(customers.iter().map(|c| checkout(&app, c))).await;
    let mut made = 0;
    for answer in answers {
        match answer.status().as_u16() {
            201 => made += 1,
            422 => {
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["reason"], "usage_limit_reached");
            }
            other => panic!("checkout answered {other}"),
        }
    }
    assert_eq!(made, 10);
    let discounted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE coupon_id = $1 AND discount_total = 500",
    )
    .bind(id_of(&rush))
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(discounted, 10);
    assert_eq!(
        app.stock_ledger(Uuid::parse_str(&mug).unwrap()).await,
        (1000, 10, 0)
    );
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM coupon_redemptions WHERE status = 'held'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(held, 10);
}

#[tokio::test]
async fn cancel_releases_the_use_and_payment_commits_it() {
    let (app, _stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "SOLO", 1000, 10).await;
    let solo = coupon(&app, &admin, limited_coupon("SOLO", "fixed", 100, 1)).await;
    let coupon_id = id_of(&solo);
    let first = customer_with_coupon(&app, &mug, 1, "SOLO").await;
    let order: Value = checkout(&app, &first).await.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    assert_eq!(order["total"], 900);
    // The one use is held: nobody else gets it.
    let second = customer_with_cart(&app, &mug, 1).await;
    refused(apply(&app, &second, "SOLO").await, "usage_limit_reached").await;
    // Cancelled: the use is back, and the second customer takes it and pays.
    app.post_json_as(
        &first.access_token,
        &format!("/api/v1/orders/{id}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(app.state.actors.coupons.used(coupon_id).await.unwrap(), 0);
    assert_eq!(apply(&app, &second, "SOLO").await.status(), 200);
    let paid: Value = checkout(&app, &second).await.json().await.unwrap();
    let paid_id = paid["id"].as_str().unwrap();
    app.post_json_as(
        &second.access_token,
        &format!("/api/v1/orders/{paid_id}/pay"),
        &json!({"payment_method": "pm_card_visa"}),
    )
    .await;
    wait_status(&app, &second, paid_id, "paid").await;
    let status: String = eventually(DEADLINE, "the use to be committed", || async {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM coupon_redemptions WHERE coupon_id = $1 AND order_id = $2",
        )
        .bind(coupon_id)
        .bind(Uuid::parse_str(paid_id).unwrap())
        .fetch_optional(&app.db)
        .await
        .unwrap();
        status.filter(|s| s == "committed")
    })
    .await;
    assert_eq!(status, "committed");
    assert_eq!(app.state.actors.coupons.used(coupon_id).await.unwrap(), 1);
}

#[tokio::test]
async fn a_gift_line_comes_and_goes_with_its_rule_and_cannot_be_touched() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "GIFT-MUG", 1000, 10).await;
    let pen = variant(&app, &admin, "GIFT-PEN", 200, 1).await;
    let rule = app
        .created(
            &admin.access_token,
            "/api/v1/admin/gift-rules",
            &json!({"name": "A pen over 20.00", "gift_variant_id": pen, "gift_quantity": 1,
                    "min_order_total": 2000, "active": true}),
        )
        .await;
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    let customer = customer_with_cart(&app, &mug, 1).await;
    let below = cart(&app, &customer).await;
    assert_eq!(
        below["items"].as_array().unwrap().len(),
        1,
        "no gift below the threshold"
    );
    fill_cart(&app, &customer, &mug, 1).await;
    let above = cart(&app, &customer).await;
    let gifts = gift_lines(&above);
    assert_eq!(gifts.len(), 1, "{above}");
    let gift = gifts[0];
    assert_eq!(gift["variant_id"], pen.as_str());
    assert_eq!(gift["unit_price"], 0);
    assert_eq!(gift["id"], rule_id.as_str());
    assert_eq!(above["total"], 2000, "the gift costs nothing");
    // The customer cannot change or remove it.
    let patch = app
        .patch_json_as(
            &customer.access_token,
            &format!("/api/v1/cart/items/{rule_id}"),
            &json!({"quantity": 3}),
        )
        .await;
    assert_problem(patch, 409).await;
    assert_problem(
        app.delete_as(
            &customer.access_token,
            &format!("/api/v1/cart/items/{rule_id}"),
        )
        .await,
        409,
    )
    .await;
    // Checkout carries it and holds its stock.
    let order: Value = checkout(&app, &customer).await.json().await.unwrap();
    assert_eq!(gift_lines(&order).len(), 1, "{order}");
    assert_eq!(
        app.stock_ledger(Uuid::parse_str(&pen).unwrap()).await,
        (1, 1, 0)
    );

    // The only pen is held: the next customer's checkout goes ahead without the gift.
    let next = customer_with_cart(&app, &mug, 2).await;
    assert_eq!(gift_lines(&cart(&app, &next).await).len(), 1);
    let without: Value = checkout(&app, &next).await.json().await.unwrap();
    assert!(gift_lines(&without).is_empty(), "{without}");
    let said = without["status_history"][0]["reason"].as_str().unwrap();
    assert!(said.contains("gift"), "the order says so: {said}");

    // Dropping below the threshold removes the line.
    let later = customer_with_cart(&app, &mug, 2).await;
    let line = cart(&app, &later).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["gift"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reduced = set_quantity(&app, &later, &line, 1).await;
    assert!(gift_lines(&reduced).is_empty(), "{reduced}");
}

/// A coupon worth the whole cart: the order costs 0, asks the provider for nothing, and is paid
/// at once with its stock sold and its coupon use committed.
#[tokio::test]
async fn a_free_order_is_paid_at_once_without_a_payment_intent() {
    let (app, stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "FREE-MUG", 1200, 5).await;
    let gift_card = coupon(&app, &admin, limited_coupon("ALLOFIT", "fixed", 5000, 5)).await;
    let customer = customer_with_coupon(&app, &mug, 2, "ALLOFIT").await;
    let order: Value = checkout(&app, &customer).await.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    assert_eq!(order["total"], 0);
    assert_eq!(order["payment"]["payment_intent_id"], Value::Null);
    let paid = wait_status(&app, &customer, id, "paid").await;
    assert_eq!(paid["discount_total"], 2400);
    assert_eq!(
        app.stock_ledger(Uuid::parse_str(&mug).unwrap()).await,
        (3, 0, 2)
    );
    let coupon_id = id_of(&gift_card);
    let status: String =
        sqlx::query_scalar("SELECT status FROM coupon_redemptions WHERE coupon_id = $1")
            .bind(coupon_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "committed");
    assert!(
        stripe
            .requests()
            .iter()
            .all(|r| r.path != "/v1/payment_intents"),
        "nothing was asked of the provider"
    );
}

/// An order that expires unpaid gives its coupon use back.
#[tokio::test]
async fn expiry_releases_the_coupon_use() {
    let app = TestApp::spawn_with(
        |settings| settings.checkout.reservation_ttl_secs = 1,
        |_| Vec::new(),
    )
    .await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "EXPIRE-MUG", 1000, 5).await;
    let once = coupon(
        &app,
        &admin,
        json!({"code": "ONCEONLY", "kind": "percent", "value": 10, "scope": "order",
               "usage_limit": 1, "active": true}),
    )
    .await;
    let coupon_id = Uuid::parse_str(once["id"].as_str().unwrap()).unwrap();
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 1).await;
    apply(&app, &customer, "ONCEONLY").await;
    let order: Value = checkout(&app, &customer).await.json().await.unwrap();
    assert_eq!(app.state.actors.coupons.used(coupon_id).await.unwrap(), 1);
    wait_status(&app, &customer, order["id"].as_str().unwrap(), "cancelled").await;
    // Given back right after the cancel is decided.
    eventually(
        DEADLINE,
        "the expired order's use to be released",
        || async { (app.state.actors.coupons.used(coupon_id).await.unwrap() == 0).then_some(()) },
    )
    .await;
    let next = app.login_as_customer().await;
    fill_cart(&app, &next, &mug, 1).await;
    assert_eq!(apply(&app, &next, "ONCEONLY").await.status(), 200);
}

/// Held uses of `coupon` whose order is missing or not pending: what would lock the coupon up.
async fn stranded_uses(app: &TestApp, coupon: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM coupon_redemptions r LEFT JOIN orders o ON o.id = r.order_id
         WHERE r.coupon_id = $1 AND r.status = 'held' AND o.status IS DISTINCT FROM 'pending'",
    )
    .bind(coupon)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// The limiter's insert of a use is stalled (a lock on `coupon_redemptions`) past its callers'
/// timeout: both checkouts are 503. The insert in flight then commits and its use is released
/// again; the reservation queued behind it, whose caller had given up, is never written. Both uses
/// of the coupon go to the next customers.
#[tokio::test]
async fn a_reservation_that_outlives_its_checkout_gives_the_use_back() {
    let app = TestApp::spawn_with(
        // The limiter's callers give up well before the statement timeout cuts the insert.
        |settings| settings.actors.call_timeout_ms = 1500,
        |_| Vec::new(),
    )
    .await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "STALL-MUG", 1000, 5).await;
    let pair = coupon(&app, &admin, limited_coupon("STALLED", "fixed", 100, 2)).await;
    let coupon_id = id_of(&pair);
    let first = customer_with_coupon(&app, &mug, 1, "STALLED").await;
    let second = customer_with_coupon(&app, &mug, 1, "STALLED").await;

    let lock = app
        .lock_table("coupon_redemptions", "SHARE ROW EXCLUSIVE")
        .await;
    // The second reservation comes only once the first one's insert waits on the lock: it is
    // queued behind that batch, not written in it.
    let second_checkout = async {
        app.wait_for_one_waiting("INSERT INTO coupon_redemptions")
            .await;
        checkout(&app, &second).await
    };
    let (one, two) = tokio::join!(checkout(&app, &first), second_checkout);
    assert_problem(one, 503).await;
    assert_problem(two, 503).await;
    // The insert that was waiting on the lock now commits, for a checkout that failed.
    lock.commit().await.unwrap();

    eventually(
        DEADLINE,
        "no use held for a checkout that failed",
        || async {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM coupon_redemptions WHERE coupon_id = $1 AND status = 'held'",
            )
            .bind(coupon_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
            let used = app.state.actors.coupons.used(coupon_id).await.ok()?;
            (held == 0 && used == 0).then_some(())
        },
    )
    .await;
    assert_eq!(stranded_uses(&app, coupon_id).await, 0);
    let written: Vec<String> =
        sqlx::query_scalar("SELECT status FROM coupon_redemptions WHERE coupon_id = $1")
            .bind(coupon_id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        written,
        ["released"],
        "the stalled insert, released; the abandoned reservation never written"
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 0, "a 503 creates nothing");
    // The next customers get both uses.
    for _ in 0..2 {
        let next = customer_with_coupon(&app, &mug, 1, "STALLED").await;
        let placed = checkout(&app, &next).await;
        assert_eq!(placed.status(), 201);
        let placed: Value = placed.json().await.unwrap();
        assert_eq!(placed["total"], 900);
    }
}

/// Uses no saga will end (held for an order that was never written, or for one paid before its
/// use was committed, as a crash leaves them) are ended by the limiter's periodic reconciliation:
/// released or committed, counted, and `shop reconcile` names them until then.
#[tokio::test]
async fn the_limiter_ends_stranded_uses_and_shop_reconcile_names_them() {
    use crate::cli::{row_of, run_shop};
    const GRACE: u64 = 120;
    const AGE: f64 = (GRACE - 8) as f64;
    let app = TestApp::spawn_with(
        |settings| settings.checkout.coupon_orphan_grace_secs = GRACE,
        |_| Vec::new(),
    )
    .await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "STRAND-MUG", 1000, 5).await;
    let pair = coupon(&app, &admin, limited_coupon("STRANDED", "fixed", 100, 2)).await;
    let coupon_id = id_of(&pair);
    // A paid order with the coupon.
    let buyer = customer_with_coupon(&app, &mug, 1, "STRANDED").await;
    let paid: Value = checkout(&app, &buyer).await.json().await.unwrap();
    let paid_id = paid["id"].as_str().unwrap();
    assert_eq!(pay(&app, &buyer, paid_id).await.status(), 200);
    wait_status(&app, &buyer, paid_id, "paid").await;
    let (code, stdout, stderr) = run_shop(&app.database, &["reconcile"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        row_of(&stdout, "STRANDED"),
        ["STRANDED", &coupon_id.to_string(), "0", "1", "ok"]
    );

    // What a crash leaves, written behind the limiter's back (triggers off, so the timestamps
    // stay) 8 s short of the grace period: the paid order's use held again, and a use for an order
    // never written. `shop reconcile` sees them at once; the limiter once their grace is over.
    let user: Uuid = sqlx::query_scalar("SELECT user_id FROM orders WHERE id = $1")
        .bind(Uuid::parse_str(paid_id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE coupon_redemptions SET status = 'held', updated_at = now() - make_interval(secs => $2)
         WHERE coupon_id = $1",
    )
    .bind(coupon_id)
    .bind(AGE)
    .execute(&mut *tx)
    .await
    .unwrap();
    let never_written = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO coupon_redemptions (id, coupon_id, order_id, user_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5), now() - make_interval(secs => $5))",
    )
    .bind(Uuid::now_v7())
    .bind(coupon_id)
    .bind(never_written)
    .bind(user)
    .bind(AGE)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (code, stdout, stderr) = run_shop(&app.database, &["reconcile"]).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    let row = row_of(&stdout, "STRANDED").join(" ");
    assert!(
        row.contains("MISMATCH: 2 use(s) held for no pending order")
            && row.contains("0 use(s) committed, 1 sold order(s) with the coupon"),
        "{row}"
    );
    assert!(
        stderr.contains(&format!("coupon STRANDED ({coupon_id}) does not reconcile")),
        "{stderr}"
    );

    // The periodic pass (every second in the test profile) ends both once their grace is over.
    eventually(2 * DEADLINE, "the stranded uses to be ended", || async {
        (stranded_uses(&app, coupon_id).await == 0).then_some(())
    })
    .await;
    let statuses: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT order_id, status FROM coupon_redemptions WHERE coupon_id = $1 ORDER BY order_id",
    )
    .bind(coupon_id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let status_of = |order: Uuid| {
        statuses
            .iter()
            .find(|(o, _)| *o == order)
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(
        status_of(Uuid::parse_str(paid_id).unwrap()),
        Some("committed")
    );
    assert_eq!(status_of(never_written), Some("released"));
    let text = app.metrics().await;
    for to in ["released", "committed"] {
        let repaired = crate::helpers::metric_value(
            &text,
            &format!("coupon_uses_repaired_total{{to=\"{to}\"}}"),
        );
        assert!(repaired.is_some_and(|n| n >= 1.0), "{to}: {repaired:?}");
    }
    assert_eq!(run_shop(&app.database, &["reconcile"]).await.0, 0);
    // The second use is free again: the next customer takes it, and the limit holds after.
    assert_eq!(app.state.actors.coupons.used(coupon_id).await.unwrap(), 1);
    let next = customer_with_coupon(&app, &mug, 1, "STRANDED").await;
    assert_eq!(checkout(&app, &next).await.status(), 201);
    let late = customer_with_cart(&app, &mug, 1).await;
    refused(apply(&app, &late, "STRANDED").await, "usage_limit_reached").await;
}

/// A free order whose settlement fails after its stock and coupon use are committed (marking it
/// paid is refused for a while): its saga retries, a saga resumed after a crash retries too, and
/// the order ends paid with its units and its use committed once, not cancelled at its deadline.
#[tokio::test]
async fn a_free_order_that_could_not_be_settled_is_settled_later_even_after_a_crash() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "LATE-FREE", 1200, 5).await;
    let gift_card = coupon(&app, &admin, limited_coupon("FREELATER", "fixed", 5000, 5)).await;
    let coupon_id = id_of(&gift_card);
    let customer = customer_with_coupon(&app, &mug, 2, "FREELATER").await;
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse_paid() RETURNS trigger AS $$
         BEGIN
             IF NEW.status = 'paid' THEN RAISE EXCEPTION 'test: marking paid is refused'; END IF;
             RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER test_refuse_paid BEFORE UPDATE ON orders
             FOR EACH ROW EXECUTE FUNCTION test_refuse_paid();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let placed = checkout(&app, &customer).await;
    assert_eq!(placed.status(), 201);
    let order: Value = placed.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["total"], 0);
    // Units and use committed, the order still pending: what a crash before `paid` leaves.
    let variant_id = Uuid::parse_str(&mug).unwrap();
    assert_eq!(app.stock_ledger(variant_id).await, (3, 0, 2));
    eventually(DEADLINE, "the saga to try again", || async {
        let text = app.metrics().await;
        crate::helpers::metric_value(&text, "order_free_settle_retries_total").filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(
        crate::orders::order(&app, &customer, &id).await["status"],
        "pending"
    );
    // The saga dies; the supervisor's sweep resumes one, which settles the order once it can.
    let saga_name = format!("{}order-{id}", app.settings.actors.name_prefix);
    shop_actors::ractor::registry::where_is(saga_name)
        .expect("the saga runs")
        .kill();
    sqlx::raw_sql("DROP TRIGGER test_refuse_paid ON orders")
        .execute(&app.db)
        .await
        .unwrap();

    let paid = wait_status(&app, &customer, &id, "paid").await;
    assert_eq!(paid["total"], 0);
    assert_eq!(app.stock_ledger(variant_id).await, (3, 0, 2));
    let uses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM coupon_redemptions WHERE coupon_id = $1")
            .bind(coupon_id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(uses, ["committed"]);
    assert_eq!(app.state.actors.inventory.reconcile().await.unwrap(), 0);
}
