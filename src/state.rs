//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::actors::Actors;
use crate::cache::Cache;
use crate::config::Settings;
use crate::identity::service::Identity;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub actors: Arc<Actors>,
    pub identity: Arc<Identity>,
    pub metrics: PrometheusHandle,
    pub cache: Cache,
}

impl AppState {
    /// Every catalog write ends here: cached catalog responses are invalidated at once.
    pub async fn catalog_changed(&self) {
        self.cache.bump_catalog_version().await;
    }
}
