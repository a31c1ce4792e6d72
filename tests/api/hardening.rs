//! The edges the fuzzer (scripts/api-fuzz) is told to leave alone or cannot see: NUL characters
//! and bytes that are not UTF-8 anywhere in a request, numbers spelled as whole floats, and
//! bounds the document states that the server must hold.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

async fn user_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn raw_json(app: &TestApp, token: Option<&str>, path: &str, body: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_nul_or_a_byte_that_is_not_utf8_in_a_path_or_query_is_a_400() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/products?category=a%00b",
        "/api/v1/products?q=%00",
        "/api/v1/products?brand=%FF%FE",
        "/api/v1/products/a%00b",
        "/api/v1/categories/%C3%28",
        "/api/v1/products?per_page=1&%00=1",
    ] {
        let problem = assert_problem(app.get(path).await, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{path}: {problem}"
        );
    }
}

#[tokio::test]
async fn a_nul_in_a_json_string_or_key_is_a_400_that_names_it_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let before = user_count(&app).await;
    let body = r#"{"email": "nul@example.com", "password": "long enough", "name": "A\u0000B"}"#;
    let problem = assert_problem(
        raw_json(&app, None, "/api/v1/auth/register", body).await,
        400,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "name");
    let body =
        r#"{"email": "nul@example.com", "password": "long enough", "name": "AB", "x\u0000": 1}"#;
    assert_problem(
        raw_json(&app, None, "/api/v1/auth/register", body).await,
        400,
    )
    .await;
    assert_eq!(user_count(&app).await, before);

    // The same name without the NUL is accepted, so the 400 above was the NUL's.
    let body = r#"{"email": "nul@example.com", "password": "long enough", "name": "AB"}"#;
    assert_eq!(
        raw_json(&app, None, "/api/v1/auth/register", body)
            .await
            .status(),
        201
    );
    assert_eq!(user_count(&app).await, before + 1);
}

#[tokio::test]
async fn a_whole_number_written_as_a_float_is_that_integer_and_a_fraction_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let product = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Float Mug", "sku": "FLOAT-MUG", "price": 1250.0, "stock": 10, "status": "active"}),
        )
        .await;
    assert_eq!(product["price"], 1250);
    let variant = product["variants"][0]["id"].as_str().unwrap().to_owned();
    let customer = app.login_as_customer().await;

    let body = format!(r#"{{"variant_id": "{variant}", "quantity": 2.0}}"#);
    let response = raw_json(
        &app,
        Some(&customer.access_token),
        "/api/v1/cart/items",
        &body,
    )
    .await;
    assert_eq!(response.status(), 200);
    let cart: Value = response.json().await.unwrap();
    assert_eq!(cart["items"][0]["quantity"], 2);

    let body = format!(r#"{{"variant_id": "{variant}", "quantity": 2.5}}"#);
    let problem = assert_problem(
        raw_json(
            &app,
            Some(&customer.access_token),
            "/api/v1/cart/items",
            &body,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "quantity");
    let cart: Value = app
        .get_as(&customer.access_token, "/api/v1/cart")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        cart["items"][0]["quantity"], 2,
        "the refused add changed nothing"
    );
}

#[tokio::test]
async fn the_bounds_the_document_states_are_held_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let token = &admin.access_token;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM products")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let before = count().await;
    let long_description = "d".repeat(10_001);
    for (body, field) in [
        (
            json!({"name": "Desc", "sku": "DESC-1", "price": 1, "description": long_description}),
            "description",
        ),
        (
            json!({"name": "N".repeat(301), "sku": "NAME-1", "price": 1}),
            "name",
        ),
        (json!({"name": "Sku", "sku": " SKU-1", "price": 1}), "sku"),
        (
            json!({"name": "Price", "sku": "PRICE-1", "price": 1_000_000_000_001_i64}),
            "price",
        ),
        (
            json!({"name": "Tags", "sku": "TAGS-1", "price": 1, "tags": ["t".repeat(51)]}),
            "tags",
        ),
    ] {
        let problem = assert_problem(
            app.post_json_as(token, "/api/v1/products", &body).await,
            422,
        )
        .await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{field}: {problem}");
    }
    assert_eq!(count().await, before);

    // A text filter over its maxLength, and a page past u32, are refused.
    let q = "q".repeat(201);
    assert_problem(app.get(&format!("/api/v1/products?q={q}")).await, 422).await;
    assert_problem(app.get("/api/v1/products?per_page=4294967296").await, 400).await;
    // Within the bounds, a large per_page is clamped, not refused (API.md).
    let page: Value = app
        .get("/api/v1/products?per_page=4294967295")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["per_page"], 100);
}

async fn upload(
    app: &TestApp,
    token: &str,
    product: &str,
    form: reqwest::multipart::Form,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/products/{product}/images")))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

fn png_part() -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("a.png")
}

#[tokio::test]
async fn an_image_upload_with_a_field_besides_file_is_a_422() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let product = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Framed", "sku": "FRAMED", "price": 100}),
        )
        .await;
    let product = product["id"].as_str().unwrap();
    // Before the file, and after it.
    let before = reqwest::multipart::Form::new()
        .text("caption", "hello")
        .part("file", png_part());
    let after = reqwest::multipart::Form::new()
        .part("file", png_part())
        .text("alt", "hello");
    for (form, field) in [(before, "caption"), (after, "alt")] {
        let response = upload(&app, &admin.access_token, product, form).await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let images: i64 = sqlx::query_scalar("SELECT count(*) FROM product_images")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(images, 0);
}

#[tokio::test]
async fn a_path_segment_that_cannot_be_an_id_names_nothing() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    assert_problem(
        app.get_as(&customer.access_token, "/api/v1/orders/0").await,
        404,
    )
    .await;
    assert_problem(
        app.delete_as(&customer.access_token, "/api/v1/cart/items/not-an-id")
            .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn checkout_reads_a_malformed_idempotency_key_as_every_route_does() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    for key in ["has space", ""] {
        let response = app
            .client
            .post(app.url("/api/v1/orders"))
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", key)
            .json(&json!({"shipping_address": {"name": "A", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400).await;
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key", "{key:?}");
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 0);
}
