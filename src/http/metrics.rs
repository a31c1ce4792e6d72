//! The Prometheus recorder (one per process) and `/metrics`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder the first time it is called (tests build many apps in one
/// process) and returns its handle.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    DURATION_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            start_watched_counters_at_zero();
            Some(handle)
        })
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the metrics recorder could not be installed"))
}

/// Counters the alert rules and the dashboard watch for rare events. A counter otherwise appears
/// only at its first event, at 1, and `increase()` over a series that starts at 1 sees no
/// increase: the first dead letter or mismatch would not alert. Registered at 0 instead, they are
/// scraped from the start.
const WATCHED_COUNTERS: &[&str] = &[
    "payment_mismatches_total",
    "payment_webhook_refused_total",
    "refund_attempts_failed_total",
    "email_dead_lettered_total",
    "email_send_failures_total",
    "outbox_relay_failures_total",
];

/// Gauges the alert rules compare: absent until their first measurement, an alert on them could
/// not tell "no data" from 0. Each appears at once at 0 (`increment(0)` leaves a value already
/// set as it is) and takes its measured value at its reporter's first pass. Per-shard gauges
/// (`inventory_reconciliation_mismatches`, `coupon_uses_held`) are set by each shard as it starts.
const WATCHED_GAUGES: &[&str] = &[
    "refunds_owed",
    "outbox_oldest_unpublished_seconds",
    "orders_pending",
];

fn start_watched_counters_at_zero() {
    for name in WATCHED_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for name in WATCHED_GAUGES {
        metrics::gauge!(*name).increment(0.0);
    }
    for to in ["released", "committed"] {
        metrics::counter!("coupon_uses_repaired_total", "to" => to).increment(0);
    }
    metrics::counter!("coupon_reservations_abandoned_total").increment(0);
    // The saga-leak alert sums the sagas alive, which are none until the first checkout.
    metrics::gauge!("actor_alive", "kind" => "order_saga").increment(0.0);
    for scope in [crate::rate_limit::Scope::Ip, crate::rate_limit::Scope::User] {
        metrics::counter!("rate_limited_total", "scope" => scope.as_str()).increment(0);
        metrics::counter!("rate_limit_backend_errors_total", "scope" => scope.as_str())
            .increment(0);
    }
}

/// Prometheus text exposition of every HTTP and actor metric.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
