//! Object-level authorization (OWASP API1): every route that acts on a customer's own object,
//! found in the OpenAPI document, answers another customer with 404 (never 403, which would say
//! the object exists, and never 200) and leaves the object as it was.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, assert_problem};
use crate::orders::{checkout, fill_cart, variant};

/// Catalog objects belong to the shop, not to a customer: anyone reads them and only admins
/// write them, which `identity::every_admin_route_is_403_for_customers_and_401_for_anonymous`
/// checks for every write.
const SHOP_OWNED: &[&str] = &["/api/v1/categories/", "/api/v1/products/"];

/// Whose object a route acts on, and how its owner reads it back.
#[derive(Debug, Clone, Copy)]
enum Object {
    /// A line of the owner's cart (`{item_id}`), read back as the whole cart.
    CartItem,
    /// An order (`{id}`), read back as the order.
    Order,
}

/// Every owned-object route the matrix covers: (method, path, object, body).
fn matrix() -> Vec<(&'static str, &'static str, Object, Option<Value>)> {
    vec![
        (
            "patch",
            "/api/v1/cart/items/{item_id}",
            Object::CartItem,
            Some(json!({"quantity": 5})),
        ),
        (
            "delete",
            "/api/v1/cart/items/{item_id}",
            Object::CartItem,
            None,
        ),
        ("get", "/api/v1/orders/{id}", Object::Order, None),
        (
            "post",
            "/api/v1/orders/{id}/pay",
            Object::Order,
            Some(json!({"payment_method": "pm_card_visa"})),
        ),
        (
            "post",
            "/api/v1/orders/{id}/cancel",
            Object::Order,
            Some(json!({})),
        ),
    ]
}

/// Every operation of the document that names an object in its path and needs a customer's
/// token: not the admin tree, not the shop's catalog, not a public route.
fn owned_object_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/")
            || path.starts_with("/api/v1/admin/")
            || !path.contains('{')
            || SHOP_OWNED.iter().any(|shop| path.starts_with(shop))
        {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            let needs_token = operation["security"]
                .as_array()
                .is_some_and(|schemes| schemes.iter().any(|scheme| scheme.get("bearer").is_some()));
            if needs_token {
                operations.insert((method.clone(), path.clone()));
            }
        }
    }
    operations
}

#[test]
fn the_matrix_covers_every_owned_object_route_in_the_document() {
    let doc = serde_json::to_value(shop::http::openapi()).unwrap();
    let found = owned_object_operations(&doc);
    let covered: BTreeSet<(String, String)> = matrix()
        .into_iter()
        .map(|(method, path, _, _)| (method.to_owned(), path.to_owned()))
        .collect();
    assert_eq!(
        found, covered,
        "a route acting on a customer's object must be in the matrix of object_access.rs (and the \
         matrix lists only routes that exist)"
    );
}

/// `path` as `who` sees it. A cart's `updated_at` is left out: the cart actor sets it to the time
/// of every answer, reads included, so it moves between two reads with nothing changed.
async fn read(app: &TestApp, who: &Session, path: &str) -> Value {
    let response = app.get_as(&who.access_token, path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    let mut body: Value = response.json().await.unwrap();
    if path == "/api/v1/cart" {
        body.as_object_mut().unwrap().remove("updated_at");
    }
    body
}

#[tokio::test]
async fn another_customer_acting_on_a_customer_s_object_gets_404_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "MUG", 1000, 10).await;
    let tea = variant(&app, &admin, "TEA", 500, 10).await;
    let alice = app.login_as_customer().await;
    let bob = app.login_as_customer().await;

    // Alice has a pending order and, after it, a cart with one line; Bob has a cart of his own.
    fill_cart(&app, &alice, &tea, 1).await;
    let order = checkout(&app, &alice).await;
    assert_eq!(order.status(), 201);
    let order_id = order.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fill_cart(&app, &alice, &mug, 2).await;
    let alices_cart = read(&app, &alice, "/api/v1/cart").await;
    let item_id = alices_cart["items"][0]["id"].as_str().unwrap().to_owned();
    fill_cart(&app, &bob, &mug, 1).await;
    let bobs_cart = read(&app, &bob, "/api/v1/cart").await;
    let ledger = (
        app.stock_ledger(mug.parse().unwrap()).await,
        app.stock_ledger(tea.parse().unwrap()).await,
    );

    for (method, template, object, body) in matrix() {
        let path = template
            .replace("{item_id}", &item_id)
            .replace("{id}", &order_id);
        let owners_view = match object {
            Object::CartItem => "/api/v1/cart".to_owned(),
            Object::Order => format!("/api/v1/orders/{order_id}"),
        };
        let before = read(&app, &alice, &owners_view).await;

        let mut request = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(&path))
            .bearer_auth(&bob.access_token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let what = format!("{} {path} as another customer", method.to_uppercase());
        assert_eq!(response.status(), 404, "{what}");
        assert_problem(response, 404).await;

        assert_eq!(
            read(&app, &alice, &owners_view).await,
            before,
            "{what} changed the owner's {object:?}"
        );
    }
    assert_eq!(read(&app, &alice, "/api/v1/cart").await, alices_cart);
    assert_eq!(
        read(&app, &bob, "/api/v1/cart").await,
        bobs_cart,
        "acting on another's line touched the actor's own cart"
    );
    assert_eq!(
        (
            app.stock_ledger(mug.parse().unwrap()).await,
            app.stock_ledger(tea.parse().unwrap()).await,
        ),
        ledger,
        "stock moved"
    );
    let order = read(&app, &alice, &format!("/api/v1/orders/{order_id}")).await;
    assert_eq!(order["status"], "pending");
}
