//! Carts: one actor per customer, written through to PostgreSQL, revived after idleness, a crash
//! or a restart of the whole app.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_actors::carts::{CartError, CartSnapshot, CheckoutError};
use uuid::Uuid;

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

async fn stored_quantity(app: &TestApp, cart: Uuid) -> Option<i32> {
    sqlx::query_scalar("SELECT quantity FROM cart_items WHERE cart_id = $1")
        .bind(cart)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

/// Finding 9 of issue 10: an add whose caller timed out used to stay in the actor's mailbox (or
/// blocked in its write) and be applied later, so the client's retry doubled the quantity.
#[tokio::test]
async fn an_add_whose_caller_gave_up_is_never_applied_so_a_retry_adds_once() {
    let app = TestApp::spawn_with(|s| s.actors.call_timeout_ms = 500, |_| Vec::new()).await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let variant: Uuid = variant_of(&pen).parse().unwrap();
    let customer = app.login_as_customer().await;
    let carts = &app.state.actors.carts;
    let cart_id = carts.get(customer.id).await.unwrap().cart_id;

    let blocker = app.hold_cart_row(cart_id).await;
    let started = Instant::now();
    let gave_up = carts.add(customer.id, variant, 1, 300).await;
    let waited = started.elapsed();
    assert!(
        matches!(gave_up, Err(CartError::Expired)),
        "the add could not be written in time, and says so: {gave_up:?}"
    );
    assert!(
        waited < Duration::from_millis(900),
        "the caller waits about its call timeout, not longer: {waited:?}"
    );
    // The write would go through now if the actor still meant to make it.
    blocker.rollback().await.unwrap();
    // A later call is answered only after the actor is done with the earlier one.
    let after = carts.get(customer.id).await.unwrap();
    assert!(
        after.lines.is_empty(),
        "applied after its caller gave up: {after:?}"
    );
    assert_eq!(stored_quantity(&app, cart_id).await, None);

    // The client's retry adds the unit exactly once.
    let retried = carts.add(customer.id, variant, 1, 300).await.unwrap();
    assert_eq!(retried.lines.len(), 1);
    assert_eq!(retried.lines[0].quantity, 1);
    assert_eq!(stored_quantity(&app, cart_id).await, Some(1));
}

/// Finding 9, the mailbox side: an add queued behind a long call is dropped unmade when its
/// caller's time is up before the cart gets to it.
#[tokio::test]
async fn an_add_queued_behind_a_slow_checkout_is_dropped_once_its_caller_gave_up() {
    let app = TestApp::spawn_with(|s| s.actors.call_timeout_ms = 500, |_| Vec::new()).await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let variant: Uuid = variant_of(&pen).parse().unwrap();
    let customer = app.login_as_customer().await;
    let carts = app.state.actors.carts.clone();
    let cart_id = carts.get(customer.id).await.unwrap().cart_id;

    // A placer that holds the cart actor until the test lets it go.
    let (placing, placer_started) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let checkout = tokio::spawn({
        let carts = carts.clone();
        async move {
            carts
                .check_out(customer.id, Duration::from_secs(10), move |_| async move {
                    placing.send(()).unwrap();
                    released.await.unwrap();
                    Err::<(), _>("declined")
                })
                .await
        }
    });
    placer_started.await.unwrap();

    let started = Instant::now();
    let gave_up = carts.add(customer.id, variant, 1, 300).await;
    assert!(
        matches!(gave_up, Err(CartError::Expired)),
        "the caller knows the add was not made: {gave_up:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(900));
    release.send(()).unwrap();
    assert!(matches!(
        checkout.await.unwrap(),
        Err(CheckoutError::Refused("declined"))
    ));

    assert!(carts.get(customer.id).await.unwrap().lines.is_empty());
    assert_eq!(stored_quantity(&app, cart_id).await, None);
    let retried = carts.add(customer.id, variant, 1, 300).await.unwrap();
    assert_eq!(retried.lines[0].quantity, 1);
    assert_eq!(stored_quantity(&app, cart_id).await, Some(1));
}

fn units(cart: &CartSnapshot) -> i64 {
    cart.lines.iter().map(|line| i64::from(line.quantity)).sum()
}

async fn stored_units(app: &TestApp, user: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(i.quantity), 0)::int8 FROM cart_items i
         JOIN carts c ON c.id = i.cart_id WHERE c.user_id = $1",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Finding 8 of issue 10 (the cart side): checkout read the cart, made the order, then cleared
/// the cart, so an add in between was neither ordered nor kept. Now the hand-off is one message:
/// every unit added ends in what the placer got or in the cart afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_and_concurrent_adds_lose_no_unit_in_50_rounds() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 10_000).await;
    let mug = product(&app, &admin, "Mug", "MUG", 1250, 10_000).await;
    let variants: [Uuid; 2] = [
        variant_of(&pen).parse().unwrap(),
        variant_of(&mug).parse().unwrap(),
    ];
    let customer = app.login_as_customer().await;
    let carts = app.state.actors.carts.clone();
    const ADDS: usize = 6;

    let (mut added, mut placed, mut split_rounds) = (0, 0, 0);
    let mut left_before = 0;
    for round in 0..50 {
        // Each call on a task of its own, the checkout sent among the adds at a different place
        // each round: the runtime's threads decide which reaches the cart first.
        let mut adds = Vec::new();
        let mut checkout = None;
        for i in 0..=ADDS {
            if i == round % (ADDS + 1) {
                let (carts, db) = (carts.clone(), app.db.clone());
                checkout = Some(tokio::spawn(async move {
                    carts
                        .check_out(customer.id, Duration::from_secs(5), |cart| async move {
                            // Creating an order takes a while; adds sent meanwhile queue behind.
                            // The order's transaction empties the cart, as the orders' does.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            let mut tx = db.begin().await.map_err(|e| e.to_string())?;
                            shop_actors::carts::empty_in(&mut tx, cart.cart_id)
                                .await
                                .map_err(|e| e.to_string())?;
                            tx.commit().await.map_err(|e| e.to_string())?;
                            Ok::<i64, String>(units(&cart))
                        })
                        .await
                }));
            }
            if i < ADDS {
                let carts = carts.clone();
                let variant = variants[i % 2];
                adds.push(tokio::spawn(async move {
                    carts.add(customer.id, variant, 1, 300).await
                }));
            }
        }
        for add in futures::future::join_all(adds).await {
            add.unwrap().expect("every add is made");
            added += 1;
        }
        let checkout = checkout.unwrap().await.unwrap();
        let got = checkout.expect("the order is placed");
        placed += got;
        // Whatever the placer did not get of this round's adds landed after it, in the cart.
        let left_now = units(&carts.get(customer.id).await.unwrap());
        assert_eq!(got + left_now, left_before + ADDS as i64, "round {round}");
        if left_now > 0 && got > left_before {
            split_rounds += 1;
        }
        left_before = left_now;
    }

    let left = units(&carts.get(customer.id).await.unwrap());
    assert_eq!(
        placed + left,
        added,
        "every unit is in an order or in the cart"
    );
    assert_eq!(stored_units(&app, customer.id).await, left, "as persisted");
    // The race was run: in some rounds the adds landed on both sides of the hand-off.
    assert!(
        split_rounds > 0,
        "no round had adds on both sides of a checkout"
    );
}

/// A placer may refuse without knowing its order's fate (the saga's answer came too late while
/// the order's transaction, which empties the cart, committed). The cart then does not trust its
/// memory: its next call reads the rows again, and shows what PostgreSQL holds.
#[tokio::test]
async fn after_a_refused_checkout_the_cart_shows_what_postgres_holds() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let pen: Uuid = variant_of(&pen).parse().unwrap();
    let customer = app.login_as_customer().await;
    let carts = &app.state.actors.carts;
    carts.add(customer.id, pen, 2, 300).await.unwrap();

    let db = app.db.clone();
    let refused = carts
        .check_out(customer.id, Duration::from_secs(5), |cart| async move {
            shop_actors::carts::empty_in(&mut db.acquire().await.unwrap(), cart.cart_id)
                .await
                .unwrap();
            Err::<(), _>("no answer in time")
        })
        .await;
    assert!(matches!(
        refused,
        Err(CheckoutError::Refused("no answer in time"))
    ));
    assert!(carts.get(customer.id).await.unwrap().lines.is_empty());
    assert_eq!(stored_units(&app, customer.id).await, 0);
    let added = carts.add(customer.id, pen, 1, 300).await.unwrap();
    assert_eq!(
        units(&added),
        1,
        "no line of the checked-out cart comes back"
    );
    assert_eq!(stored_units(&app, customer.id).await, 1);
}

/// A placer that fails leaves the cart as it was, and an add sent during the checkout is kept.
#[tokio::test]
async fn a_refused_checkout_leaves_the_cart_intact() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 50).await;
    let mug = product(&app, &admin, "Mug", "MUG", 1250, 50).await;
    let (pen, mug): (Uuid, Uuid) = (
        variant_of(&pen).parse().unwrap(),
        variant_of(&mug).parse().unwrap(),
    );
    let customer = app.login_as_customer().await;
    let carts = &app.state.actors.carts;
    carts.add(customer.id, pen, 2, 300).await.unwrap();

    let (placing, placer_started) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let refused = carts.check_out(
        customer.id,
        Duration::from_secs(5),
        move |cart| async move {
            placing.send(()).unwrap();
            released.await.unwrap();
            Err::<(), _>(format!("card declined for {} units", units(&cart)))
        },
    );
    let add_during = async {
        placer_started.await.unwrap();
        let added = carts.add(customer.id, mug, 1, 1250);
        tokio::pin!(added);
        // The add waits behind the checkout until the placer answers.
        assert!(futures::poll!(added.as_mut()).is_pending());
        release.send(()).unwrap();
        added.await
    };
    let (refused, added) = tokio::join!(refused, add_during);
    match refused {
        Err(CheckoutError::Refused(reason)) => assert_eq!(reason, "card declined for 2 units"),
        other => panic!("expected the placer's refusal, got {other:?}"),
    }
    added.unwrap();

    let cart = carts.get(customer.id).await.unwrap();
    let quantities: Vec<(Uuid, i32)> = cart
        .lines
        .iter()
        .map(|l| (l.variant_id, l.quantity))
        .collect();
    assert_eq!(quantities, vec![(pen, 2), (mug, 1)]);
    assert_eq!(stored_units(&app, customer.id).await, 3);
}

#[tokio::test]
async fn adds_of_many_carts_at_once_are_each_written_once_and_a_refused_line_fails_alone() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let pen = product(&app, &admin, "Pen", "PEN", 300, 10_000).await;
    let mut customers = Vec::new();
    for _ in 0..24 {
        let customer = app.login_as_customer().await;
        // Loads the cart into its actor.
        assert_eq!(cart(&app, &customer).await["items"], json!([]));
        customers.push(customer);
    }
    // One cart row disappears behind its actor's back: its next line breaks the foreign key, and
    // if it shares a batch with the others, the batch is refused as a whole.
    let victim = &customers[0];
    sqlx::query("DELETE FROM carts WHERE user_id = $1")
        .bind(victim.id)
        .execute(&app.db)
        .await
        .unwrap();
    let body = json!({"variant_id": variant_of(&pen), "quantity": 2});
    for round in 1..=3 {
        let adds = customers.iter().map(|c| add(&app, c, body.clone()));
        let statuses: Vec<u16> = futures::future::join_all(adds)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert!(
            statuses[0] >= 500,
            "the line of a vanished cart is refused: {statuses:?}"
        );
        assert_eq!(
            statuses[1..].iter().filter(|s| **s == 200).count(),
            23,
            "every other cart's add is made: {statuses:?}"
        );
        let stored: Vec<(i32,)> = sqlx::query_as("SELECT quantity FROM cart_items")
            .fetch_all(&app.db)
            .await
            .unwrap();
        assert_eq!(stored.len(), 23, "one line per cart, written once");
        assert!(stored.iter().all(|(q,)| *q == 2 * round), "{stored:?}");
    }
    for customer in &customers[1..] {
        assert_eq!(cart(&app, customer).await["items"][0]["quantity"], 6);
    }
}
