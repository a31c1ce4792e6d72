//! Response headers: `X-Content-Type-Options: nosniff` on every response, errors included, no
//! header naming the server, CORS exactly as `server.cors_allowed_origins` says, and
//! `Retry-After` on every 503.

use reqwest::{Method, Response};
use serde_json::json;

use crate::helpers::TestApp;

const ALLOWED: &str = "https://shop.example";
const OTHER: &str = "https://elsewhere.example";

fn assert_hardened(response: &Response, what: &str) {
    let headers = response.headers();
    assert_eq!(
        headers
            .get_all("x-content-type-options")
            .iter()
            .collect::<Vec<_>>(),
        ["nosniff"],
        "{what}: x-content-type-options"
    );
    for leak in ["server", "x-powered-by"] {
        assert!(headers.get(leak).is_none(), "{what}: {leak} header sent");
    }
}

#[tokio::test]
async fn every_response_says_nosniff_and_names_no_server() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    let requests: Vec<(Method, &str, u16)> = vec![
        (Method::GET, "/health/live", 200),
        (Method::GET, "/metrics", 200),
        (Method::GET, "/docs/", 200),
        (Method::GET, "/api-docs/openapi.json", 200),
        (Method::GET, "/api/v1/products", 200),
        (Method::GET, "/api/v1/no-such-route", 404),
        (Method::DELETE, "/health/live", 405),
        (Method::GET, "/api/v1/users/me", 401),
        (Method::GET, "/__test/panic", 500),
    ];
    for (method, path, status) in requests {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert_hardened(&response, &format!("{method} {path}"));
    }

    // Problem bodies made by the JSON extractor and by a handler.
    let malformed = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_hardened(&malformed, "malformed JSON");
    let not_yours = app
        .get_as(
            &customer.access_token,
            &format!("/api/v1/orders/{}", uuid::Uuid::new_v4()),
        )
        .await;
    assert_eq!(not_yours.status(), 404);
    assert_hardened(&not_yours, "unknown order");
    let invalid = app
        .post_json_as(
            &customer.access_token,
            "/api/v1/cart/items",
            &json!({"variant_id": uuid::Uuid::new_v4(), "quantity": 0}),
        )
        .await;
    assert_eq!(invalid.status(), 422);
    assert_hardened(&invalid, "invalid cart line");
}

#[tokio::test]
async fn a_rate_limited_answer_says_nosniff_too() {
    let app = TestApp::spawn_with(
        |s| {
            s.rate_limit.per_ip_per_second = 1;
            s.rate_limit.per_ip_burst = 1;
        },
        |_| Vec::new(),
    )
    .await;
    assert_eq!(app.get("/health/live").await.status(), 200);
    let limited = app.get("/health/live").await;
    assert_eq!(limited.status(), 429);
    assert_hardened(&limited, "429");
}

async fn preflight(app: &TestApp, origin: &str) -> Response {
    app.client
        .request(Method::OPTIONS, app.url("/api/v1/cart/items"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

fn cors_headers(response: &Response) -> Vec<String> {
    let mut names: Vec<String> = response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect();
    names.sort();
    names
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn cors_answers_exactly_the_configured_origins() {
    let app = TestApp::spawn_with(
        |s| s.server.cors_allowed_origins = vec![ALLOWED.to_owned()],
        |_| Vec::new(),
    )
    .await;

    let allowed = preflight(&app, ALLOWED).await;
    assert_eq!(allowed.status(), 200);
    assert_hardened(&allowed, "allowed preflight");
    assert_eq!(
        cors_headers(&allowed),
        [
            "access-control-allow-headers",
            "access-control-allow-methods",
            "access-control-allow-origin",
            "access-control-max-age",
        ]
    );
    assert_eq!(header(&allowed, "access-control-allow-origin"), ALLOWED);
    assert_eq!(
        header(&allowed, "access-control-allow-methods"),
        "GET,POST,PATCH,PUT,DELETE"
    );
    assert_eq!(
        header(&allowed, "access-control-allow-headers"),
        "authorization,content-type,idempotency-key,x-request-id"
    );
    assert_eq!(header(&allowed, "access-control-max-age"), "600");

    let other = preflight(&app, OTHER).await;
    assert_hardened(&other, "preflight from another origin");
    assert_eq!(cors_headers(&other), Vec::<String>::new());

    // A plain request: the allowed origin may read the response and its request id.
    let simple = app
        .client
        .get(app.url("/health/live"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&simple, "access-control-allow-origin"), ALLOWED);
    assert_eq!(
        header(&simple, "access-control-expose-headers"),
        "x-request-id,retry-after"
    );
    let elsewhere = app
        .client
        .get(app.url("/health/live"))
        .header("origin", OTHER)
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(&elsewhere), Vec::<String>::new());
}

#[tokio::test]
async fn with_no_origins_configured_cors_allows_none() {
    let app = TestApp::spawn().await;
    assert!(app.settings.server.cors_allowed_origins.is_empty());
    let response = preflight(&app, ALLOWED).await;
    assert_eq!(cors_headers(&response), Vec::<String>::new());
}

/// A request that outlives `server.request_timeout_secs` is answered 503 (nothing it did is
/// kept), as a problem, with `Retry-After: 1`, as every other 503 is.
#[tokio::test]
async fn a_request_past_the_request_timeout_is_a_503_problem_that_says_when_to_retry() {
    // The shortest request timeout the nesting of the timeouts allows.
    let app = TestApp::spawn_with(
        |settings| {
            settings.server.request_timeout_secs = 8;
            settings.checkout.call_timeout_secs = 4;
            settings.payments.timeout_secs = 1;
            settings.actors.call_timeout_ms = 500;
            settings.server.idempotency_wait_ms = 1000;
        },
        |_| Vec::new(),
    )
    .await;
    let started = std::time::Instant::now();
    let response = app.get("/__test/sleep?ms=20000").await;
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(8),
        "answered at the request timeout, not before: {waited:?}"
    );
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_hardened(&response, "a timed-out request");
    let problem = crate::helpers::assert_problem(response, 503).await;
    assert!(problem["detail"].is_string(), "{problem}");
}
