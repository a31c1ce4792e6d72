//! What every handler can reach.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::actors::Actors;
use crate::cache::Cache;
use crate::config::Settings;
use crate::identity::service::Identity;
use crate::media::MediaStore;
use crate::rate_limit::RateLimits;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub actors: Arc<Actors>,
    pub identity: Arc<Identity>,
    pub metrics: PrometheusHandle,
    pub cache: Cache,
    /// The request rate limits; `None` when `rate_limit.enabled` is off.
    pub rate_limits: Option<RateLimits>,
    pub media: MediaStore,
    /// Bounds concurrent image decodes (each may take up to 64 MiB).
    pub image_decodes: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Every catalog write ends here: cached catalog responses are invalidated at once.
    pub async fn catalog_changed(&self) {
        self.cache.bump_catalog_version().await;
    }

    /// Every admin edit of a coupon or a gift rule ends here: cached promotion lookups are
    /// invalidated at once.
    pub async fn promotions_changed(&self) {
        self.cache
            .bump_version(crate::cache::Scope::Promotions)
            .await;
    }
}
