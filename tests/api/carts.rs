//! Carts: one actor per customer, written through to PostgreSQL, revived after idleness, a crash
//! or a restart of the whole app.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, assert_problem, eventually};

async fn product(
    app: &TestApp,
    admin: &Session,
    name: &str,
    sku: &str,
    price: i64,
    stock: i64,
) -> Value {
    app.created(
        &admin.access_token,
        "/api/v1/products",
        &json!({"name": name, "sku": sku, "price": price, "stock": stock, "status": "active"}),
    )
    .await
}

fn variant_of(product: &Value) -> String {
    product["variants"][0]["id"].as_str().unwrap().to_owned()
}

async fn add(app: &TestApp, who: &Session, body: Value) -> reqwest::Response {
    app.post_json_as(&who.access_token, "/api/v1/cart/items", &body)
        .await
}

async fn cart(app: &TestApp, who: &Session) -> Value {
    let response = app.get_as(&who.access_token, "/api/v1/cart").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_cart_api_adds_updates_removes_and_totals() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = product(&app, &admin, "Mug", "MUG", 1250, 10).await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 100).await;
    let customer = app.login_as_customer().await;

    let empty = cart(&app, &customer).await;
    assert_eq!(empty["items"], json!([]));
    assert_eq!(
        (empty["subtotal"].as_i64(), empty["total"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(empty["currency"], "usd");

    // By product id (a simple product) and by variant id; the same variant again adds up.
    assert_eq!(
        add(
            &app,
            &customer,
            json!({"product_id": mug["id"], "quantity": 2})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        add(
            &app,
            &customer,
            json!({"variant_id": variant_of(&mug), "quantity": 1})
        )
        .await
        .status(),
        200
    );
    let body: Value = add(
        &app,
        &customer,
        json!({"variant_id": variant_of(&pen), "quantity": 4}),
    )
    .await
    .json()
    .await
    .unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["name"], "Mug");
    assert_eq!(items[0]["sku"], "MUG");
    assert_eq!(items[0]["quantity"], 3);
    assert_eq!(items[0]["unit_price"], 1250);
    assert_eq!(items[0]["line_total"], 3750);
    assert_eq!(body["subtotal"], 3750 + 1200);
    assert_eq!(body["discount_total"], 0);
    assert_eq!(body["total"], 4950);

    // More than can be sold: 409 with what is available; nothing changes.
    let too_many = add(
        &app,
        &customer,
        json!({"variant_id": variant_of(&mug), "quantity": 8}),
    )
    .await;
    let problem = assert_problem(too_many, 409).await;
    assert_eq!(problem["errors"][0]["available"], 10);
    assert_eq!(problem["errors"][0]["requested"], 11);
    assert_eq!(cart(&app, &customer).await["items"][0]["quantity"], 3);
    // Out of range quantities are 422.
    for quantity in [0, 100, -1] {
        let bad = add(
            &app,
            &customer,
            json!({"variant_id": variant_of(&pen), "quantity": quantity}),
        )
        .await;
        assert_problem(bad, 422).await;
    }

    let line = items[1]["id"].as_str().unwrap();
    let updated: Value = app
        .patch_json_as(
            &customer.access_token,
            &format!("/api/v1/cart/items/{line}"),
            &json!({"quantity": 1}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["items"][1]["quantity"], 1);
    let removed: Value = app
        .patch_json_as(
            &customer.access_token,
            &format!("/api/v1/cart/items/{line}"),
            &json!({"quantity": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(removed["items"].as_array().unwrap().len(), 1);

    // Another customer cannot touch this cart's lines.
    let other = app.login_as_customer().await;
    let mug_line = removed["items"][0]["id"].as_str().unwrap();
    let foreign = app
        .delete_as(
            &other.access_token,
            &format!("/api/v1/cart/items/{mug_line}"),
        )
        .await;
    assert_problem(foreign, 404).await;
    assert_eq!(
        cart(&app, &customer).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let deleted = app
        .delete_as(
            &customer.access_token,
            &format!("/api/v1/cart/items/{mug_line}"),
        )
        .await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        add(
            &app,
            &customer,
            json!({"variant_id": variant_of(&pen), "quantity": 1})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.delete_as(&customer.access_token, "/api/v1/cart")
            .await
            .status(),
        204
    );
    assert_eq!(cart(&app, &customer).await["items"], json!([]));
    assert_problem(app.get("/api/v1/cart").await, 401).await;
}

#[tokio::test]
async fn price_changes_and_archived_products_are_flagged_not_dropped() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = product(&app, &admin, "Mug", "MUG", 1000, 10).await;
    let lamp = product(&app, &admin, "Lamp", "LAMP", 5000, 10).await;
    let customer = app.login_as_customer().await;
    add(
        &app,
        &customer,
        json!({"product_id": mug["id"], "quantity": 1}),
    )
    .await;
    add(
        &app,
        &customer,
        json!({"product_id": lamp["id"], "quantity": 1}),
    )
    .await;
    let mug_id = mug["id"].as_str().unwrap();
    let lamp_id = lamp["id"].as_str().unwrap();
    app.patch_json_as(
        &admin.access_token,
        &format!("/api/v1/products/{mug_id}"),
        &json!({"price": 1200}),
    )
    .await;
    app.delete_as(&admin.access_token, &format!("/api/v1/products/{lamp_id}"))
        .await;

    let body = cart(&app, &customer).await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the archived line is still shown");
    assert_eq!(items[0]["price_changed"], true);
    assert_eq!(items[0]["price_at_add"], 1000);
    assert_eq!(items[0]["unit_price"], 1200);
    assert_eq!(items[1]["available"], false);
    assert_eq!(body["subtotal"], 1200, "an unavailable line does not count");
}

#[tokio::test]
async fn concurrent_adds_from_two_tabs_both_count() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 500).await;
    let customer = app.login_as_customer().await;
    let body = json!({"variant_id": variant_of(&pen), "quantity": 1});
    let adds = (0..20).map(|_| add(&app, &customer, body.clone()));
    for response in futures::future::join_all(adds).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(cart(&app, &customer).await["items"][0]["quantity"], 20);
    let stored: i32 = sqlx::query_scalar("SELECT quantity FROM cart_items")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 20);
}

#[tokio::test]
async fn the_cart_survives_an_app_restart() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let customer = app.login_as_customer().await;
    add(
        &app,
        &customer,
        json!({"variant_id": variant_of(&pen), "quantity": 7}),
    )
    .await;

    let app = app.restart().await;
    let body = cart(&app, &customer).await;
    assert_eq!(body["items"][0]["quantity"], 7);
    assert_eq!(body["total"], 2100);
}

#[tokio::test]
async fn an_idle_cart_actor_stops_and_revives_from_postgres() {
    let app = TestApp::spawn_with(|s| s.carts.idle_timeout_secs = 1, |_| Vec::new()).await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let customer = app.login_as_customer().await;
    add(
        &app,
        &customer,
        json!({"variant_id": variant_of(&pen), "quantity": 3}),
    )
    .await;
    let carts = &app.state.actors.carts;
    assert!(carts.actor_of(customer.id).await.unwrap().is_some());
    eventually(Duration::from_secs(10), "the idle cart to stop", || async {
        carts
            .actor_of(customer.id)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(cart(&app, &customer).await["items"][0]["quantity"], 3);
    assert!(
        carts.actor_of(customer.id).await.unwrap().is_some(),
        "revived on touch"
    );
}

#[tokio::test]
async fn a_crashed_cart_actor_is_restarted_with_its_state() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let customer = app.login_as_customer().await;
    add(
        &app,
        &customer,
        json!({"variant_id": variant_of(&pen), "quantity": 2}),
    )
    .await;
    let carts = &app.state.actors.carts;
    let first = carts.actor_of(customer.id).await.unwrap().expect("running");
    first.kill();
    // The next call reaches a fresh actor that reloaded the cart.
    eventually(Duration::from_secs(5), "a fresh cart actor", || async {
        let response = app.get_as(&customer.access_token, "/api/v1/cart").await;
        (response.status() == 200).then_some(())?;
        let now = carts.actor_of(customer.id).await.ok()??;
        (now.get_id() != first.get_id()).then_some(())
    })
    .await;
    assert_eq!(cart(&app, &customer).await["items"][0]["quantity"], 2);
}
