//! Fault-injection routes for the test suite, mounted under `/__test` only when
//! `testing.test_routes` is on (never in production: the configuration refuses it). They run
//! behind the same middleware as every real route, so tests of panics, timeouts, body limits and
//! graceful shutdown exercise the real stack.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::http::extract::{Json, Query};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/__test/panic", get(panic))
        .route("/__test/sleep", get(sleep))
        .route("/__test/echo", post(echo))
}

#[allow(clippy::panic)]
async fn panic() -> &'static str {
    panic!("secret internal detail: the test asked for a panic")
}

#[derive(Deserialize)]
struct SleepParams {
    ms: u64,
}

async fn sleep(Query(params): Query<SleepParams>) -> String {
    tokio::time::sleep(Duration::from_millis(params.ms)).await;
    format!("slept {} ms", params.ms)
}

async fn echo(Json(body): Json<serde_json::Value>) -> axum::Json<serde_json::Value> {
    axum::Json(body)
}
