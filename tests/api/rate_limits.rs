//! The request rate limits: per client address on every request, per user on authenticated
//! writes, one limit for every instance when the counters live in Redis, and still a limit when
//! Redis is gone.

use reqwest::Response;
use serde_json::json;
use shop::config::{RateLimitBackend, Settings};

use crate::helpers::{Session, TestApp, assert_problem, metric_value};

/// An app whose rate limits count in the test's Redis (under keys of the test's own), with
/// `configure` applied on top.
async fn spawn_counting_in_redis(configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(
        |s| {
            s.rate_limit.backend = RateLimitBackend::Redis;
            configure(s);
        },
        |_| Vec::new(),
    )
    .await
}

/// A write that needs nothing but the database (so a standby instance serves it too): logging
/// out is idempotent, 204 each time.
async fn write_as(app: &TestApp, session: &Session) -> Response {
    app.post_json_as(
        &session.access_token,
        "/api/v1/auth/logout",
        &json!({"refresh_token": session.refresh_token}),
    )
    .await
}

/// A counter of the process-wide recorder, which every test in this binary (and every app it
/// spawns) shares: a test can only say how much it added at least.
fn counter(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series).unwrap_or(0.0)
}

/// Asserts a 429 problem with a `Retry-After` of 1..=`max` seconds.
async fn assert_limited(response: Response, max: u64) {
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=max).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_problem(response, 429).await;
}

#[tokio::test]
async fn one_user_s_writes_share_one_limit_across_two_instances() {
    // A burst of 4 and then one write a minute: nothing refills while the test runs.
    let first = spawn_counting_in_redis(|s| {
        s.rate_limit.per_user_writes_per_minute = 1;
        s.rate_limit.per_user_write_burst = 4;
    })
    .await;
    let second = first.spawn_beside().await;
    let alice = first.login_as_customer().await;
    let bob = first.login_as_customer().await;
    let limited_before = counter(&first.metrics().await, "rate_limited_total{scope=\"user\"}");

    let mut statuses = Vec::new();
    for attempt in 0..8 {
        let instance = if attempt % 2 == 0 { &first } else { &second };
        let response = write_as(instance, &alice).await;
        statuses.push(response.status().as_u16());
        if attempt == 7 {
            assert_limited(response, 60).await;
        }
    }
    assert_eq!(statuses, [204, 204, 204, 204, 429, 429, 429, 429]);

    // Another user has a limit of their own, on either instance; reads are not writes.
    for instance in [&second, &first, &second, &first] {
        assert_eq!(write_as(instance, &bob).await.status(), 204);
    }
    assert_eq!(
        second
            .get_as(&alice.access_token, "/api/v1/users/me")
            .await
            .status(),
        200
    );
    let limited_after = counter(&first.metrics().await, "rate_limited_total{scope=\"user\"}");
    assert!(
        limited_after - limited_before >= 4.0,
        "rate_limited_total{{scope=\"user\"}} went from {limited_before} to {limited_after}"
    );
}

#[tokio::test]
async fn one_address_shares_one_limit_across_two_instances() {
    let first = spawn_counting_in_redis(|s| {
        s.rate_limit.per_ip_per_second = 1;
        s.rate_limit.per_ip_burst = 3;
    })
    .await;
    let second = first.spawn_beside().await;

    let mut statuses = Vec::new();
    for attempt in 0..5 {
        let instance = if attempt % 2 == 0 { &first } else { &second };
        let response = instance.get("/health/live").await;
        statuses.push(response.status().as_u16());
        if attempt == 4 {
            assert_limited(response, 1).await;
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn with_redis_unreachable_the_in_process_limit_still_applies() {
    let app = spawn_counting_in_redis(|s| {
        // Nothing listens on port 1: every Redis call fails at once.
        s.redis.url = "redis://127.0.0.1:1".to_owned().into();
        s.rate_limit.per_user_writes_per_minute = 1;
        s.rate_limit.per_user_write_burst = 3;
    })
    .await;
    let errors_before = counter(
        &app.metrics().await,
        "rate_limit_backend_errors_total{scope=\"user\"}",
    );
    let customer = app.login_as_customer().await;

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(write_as(&app, &customer).await.status().as_u16());
    }
    assert_eq!(statuses, [204, 204, 204, 429, 429]);
    assert_limited(write_as(&app, &customer).await, 60).await;

    let errors_after = counter(
        &app.metrics().await,
        "rate_limit_backend_errors_total{scope=\"user\"}",
    );
    assert!(
        errors_after - errors_before >= 6.0,
        "rate_limit_backend_errors_total{{scope=\"user\"}} went from {errors_before} to {errors_after}"
    );
}
