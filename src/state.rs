//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::actors::Actors;
use crate::config::Settings;
use crate::identity::service::Identity;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub actors: Arc<Actors>,
    pub identity: Arc<Identity>,
    pub metrics: PrometheusHandle,
}
