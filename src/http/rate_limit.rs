//! The general per-IP limit on every route (tower_governor, keyed by the peer address). Failed
//! logins are throttled per email separately, in the identity service, through PostgreSQL so every
//! instance shares the count.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use governor::middleware::NoOpMiddleware;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

use crate::config::RateLimitSettings;
use crate::error::AppError;

type PerIpConfig = GovernorConfig<PeerIpKeyExtractor, NoOpMiddleware>;
pub type PerIpLayer = GovernorLayer<PeerIpKeyExtractor, NoOpMiddleware, Body>;

/// The layer, or `None` when rate limits are off (load tests).
pub fn per_ip(settings: &RateLimitSettings) -> Option<PerIpLayer> {
    if !settings.enabled {
        return None;
    }
    let period = Duration::from_secs(1) / settings.per_ip_per_second.max(1);
    let config: Arc<PerIpConfig> = Arc::new(
        GovernorConfigBuilder::default()
            .period(period)
            .burst_size(settings.per_ip_burst.max(1))
            .key_extractor(PeerIpKeyExtractor)
            .finish()?,
    );
    forget_idle_clients(Arc::downgrade(&config));
    Some(GovernorLayer::new(config).error_handler(|error| {
        match error {
            GovernorError::TooManyRequests { wait_time, .. } => AppError::RateLimited {
                retry_after_secs: wait_time.max(1),
            }
            .into_response(),
            GovernorError::UnableToExtractKey | GovernorError::Other { .. } => {
                AppError::Internal(anyhow::anyhow!("rate limiter: {error}")).into_response()
            }
        }
    }))
}

/// The limiter keeps a cell per client address; drop the ones that have been quiet, for as long
/// as the layer lives.
fn forget_idle_clients(config: std::sync::Weak<PerIpConfig>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(config) = config.upgrade() else {
                break;
            };
            config.limiter().retain_recent();
        }
    });
}
