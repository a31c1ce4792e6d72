//! The platform's promises: one error format, request ids, body limits, panics contained, metrics.

use serde_json::json;

use crate::helpers::{TestApp, assert_problem, metric_value};

#[tokio::test]
async fn unknown_route_is_a_404_problem() {
    let app = TestApp::spawn().await;
    assert_problem(app.get("/api/v1/no-such-thing").await, 404).await;
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_with_allow() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .delete(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("allow").is_some());
    assert_problem(response, 405).await;
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/__test/echo"))
        .header("content-type", "application/json")
        .body("{\"oops\": ")
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("Malformed JSON"));
}

#[tokio::test]
async fn json_with_another_content_type_is_a_415_problem() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/__test/echo"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(response, 415).await;
}

#[tokio::test]
async fn a_two_mebibyte_body_is_a_413_problem() {
    let app = TestApp::spawn().await;
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let response = app
        .client
        .post(app.url("/__test/echo"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_problem(response, 413).await;
    // Just under the limit is accepted, so the 413 is the limit and not something else.
    let fits = json!({"blob": "x".repeat(1000 * 1000)});
    assert_eq!(app.post_json("/__test/echo", &fits).await.status(), 200);
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_without_internals_and_the_server_keeps_serving() {
    let app = TestApp::spawn().await;
    let response = app.get("/__test/panic").await;
    let body = assert_problem(response, 500).await;
    let text = body.to_string();
    assert!(
        !text.contains("secret internal detail"),
        "panic message leaked: {text}"
    );
    assert!(!text.contains("src/"), "source location leaked: {text}");
    assert_eq!(app.get("/health/live").await.status(), 200);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_clients() {
    let app = TestApp::spawn().await;
    for path in ["/health/live", "/nope", "/__test/panic"] {
        let response = app.get(path).await;
        let id = response
            .headers()
            .get("x-request-id")
            .expect("x-request-id");
        assert!(!id.is_empty(), "{path}");
    }
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "client-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chose-this");
}

#[tokio::test]
async fn metrics_carry_http_and_actor_series() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/health/live").await.status(), 200);
    let text = app.metrics().await;
    let served = metric_value(
        &text,
        "http_requests_total{route=\"/health/live\",method=\"GET\",status=\"200\"}",
    );
    assert!(
        served.is_some_and(|n| n >= 1.0),
        "no HTTP counter in:\n{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket{route=\"/health/live\""));
    // The root supervisor is an actor like any other: it reports alive and its messages.
    assert!(
        metric_value(&text, "actor_alive{kind=\"root_supervisor\"}").is_some_and(|n| n >= 1.0),
        "no actor series in:\n{text}"
    );
}

#[tokio::test]
async fn readiness_reports_postgres_and_the_actor_tree() {
    let app = TestApp::spawn().await;
    let response = app.get("/health/ready").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["actors"], "ok");

    // With the database gone, readiness says so (and liveness does not care).
    app.state.db.close().await;
    let response = app.get("/health/ready").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_ne!(body["checks"]["postgres"], "ok");
    assert_eq!(app.get("/health/live").await.status(), 200);
}

#[tokio::test]
async fn swagger_ui_and_its_assets_are_served_locally() {
    let app = TestApp::spawn().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page loads assets from the internet"
    );
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        assert_eq!(app.get(asset).await.status(), 200, "{asset}");
    }
}
