//! Liveness and readiness, for orchestrators and load balancers.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The `actors` check of an instance waiting for the ownership lease (see `crate::lease`).
pub const STANDBY: &str = "standby: another instance owns the actor tree";

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok` while the process runs.
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    /// Each dependency checked, with `ok` or what went wrong.
    checks: BTreeMap<&'static str, String>,
}

/// The process is running.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, body = Liveness)))]
pub async fn live() -> axum::Json<Liveness> {
    axum::Json(Liveness { status: "ok" })
}

/// Every configured dependency answers: PostgreSQL, the actor tree, and each configured Redis,
/// RabbitMQ, SMTP server and S3. 503 names what failed; a standby instance (another one owns the
/// actor tree on this database) says so in its `actors` check.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (code, readiness) = readiness(&state).await;
    (code, axum::Json(readiness))
}

/// Checks every dependency and records the outcome as `app_ready` (1 ready, 0 not) and
/// `app_readiness_check{check}` (1 ok, 0 failing) for the readiness alert. The gauges are as fresh
/// as the last probe (the compose healthcheck and Kubernetes probe every few seconds); `/metrics`
/// does not probe, so a scrape stays fast while a dependency hangs.
async fn readiness(state: &AppState) -> (StatusCode, Readiness) {
    let mut checks = BTreeMap::new();
    let postgres = tokio::time::timeout(
        CHECK_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
    )
    .await;
    checks.insert(
        "postgres",
        match postgres {
            Ok(Ok(_)) => "ok".to_string(),
            Ok(Err(error)) => format!("error: {}", error_kind(&error)),
            Err(_) => "timed out".to_string(),
        },
    );
    checks.insert(
        "actors",
        if state.actors.is_running() {
            "ok".to_string()
        } else if state.actors.is_standby() {
            STANDBY.to_string()
        } else if state.actors.system().is_none() {
            "the actor tree is starting".to_string()
        } else {
            "the actor tree has stopped".to_string()
        },
    );
    if let Some(redis) = state.cache.check().await {
        checks.insert(
            "redis",
            match redis {
                Ok(()) => "ok".to_string(),
                Err(_) => "unreachable".to_string(),
            },
        );
    }
    if state.media.backend() == crate::config::StorageBackend::S3 {
        let s3 = tokio::time::timeout(CHECK_TIMEOUT, state.media.check()).await;
        checks.insert(
            "s3",
            match s3 {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(_)) => "unreachable".to_string(),
                Err(_) => "timed out".to_string(),
            },
        );
    }
    let messaging = &state.actors.messaging;
    for (name, check) in [
        ("rabbitmq", timed(messaging.check_broker()).await),
        ("smtp", timed(messaging.check_smtp()).await),
    ] {
        if let Some(outcome) = check {
            checks.insert(name, outcome);
        }
    }
    let all_ok = checks.values().all(|status| status == "ok");
    for (check, status) in &checks {
        metrics::gauge!("app_readiness_check", "check" => *check).set(if status == "ok" {
            1.0
        } else {
            0.0
        });
    }
    metrics::gauge!("app_ready").set(if all_ok { 1.0 } else { 0.0 });
    let (code, status) = if all_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (code, Readiness { status, checks })
}

/// Runs a readiness probe that may not apply (`None`) within [`CHECK_TIMEOUT`].
async fn timed(
    check: impl std::future::Future<Output = Option<Result<(), String>>>,
) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(None) => None,
        Ok(Some(Ok(()))) => Some("ok".to_string()),
        Ok(Some(Err(_))) => Some("unreachable".to_string()),
        Err(_) => Some("timed out".to_string()),
    }
}

/// A short, driver-text-free description of a database failure.
fn error_kind(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::PoolTimedOut => "pool timed out",
        sqlx::Error::Io(_) => "connection failed",
        sqlx::Error::PoolClosed => "pool closed",
        _ => "query failed",
    }
}
