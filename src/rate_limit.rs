//! The request rate limits: per client address on every request, and per user on authenticated
//! writes. Each (scope, key) is a GCRA cell (the algorithm of governor and redis-cell: one
//! "theoretical arrival time" per key, a burst of `burst` then one request per emission interval).
//!
//! With `rate_limit.backend = "redis"` the cells live in Redis and are updated by one atomic Lua
//! script ([`GCRA_SCRIPT`], timed by Redis's own clock), so every instance enforces one limit.
//! Redis is never a hole in the limit: a request for which Redis errs or does not answer within
//! the cache's short timeout is checked against this process's own cells (governor) instead, and
//! counted in `rate_limit_backend_errors_total`. With `"memory"` the governor cells are the only
//! ones.

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use secrecy::ExposeSecret;

use crate::cache::{CacheError, RedisBackend};
use crate::config::{RateLimitBackend, RateLimitSettings, RedisSettings};

/// Which limit a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every request, by the client's address.
    Ip,
    /// Authenticated writes, by the user in the access token.
    User,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::User => "user",
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit: the next request of this key conforms after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// A configuration the limits cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitConfigError {
    #[error("rate_limit.{0} must be at least 1")]
    Zero(&'static str),
    #[error("rate_limit.{0} allows less than a microsecond between requests")]
    TooFast(&'static str),
    #[error("redis.url: {0}")]
    RedisUrl(#[from] redis::RedisError),
}

/// One scope's quota: `burst` requests at once, then one per `interval`.
#[derive(Debug, Clone, Copy)]
struct Cell {
    interval: Duration,
    /// The interval as Redis is told it; at least 1.
    interval_us: u64,
    burst: NonZeroU32,
}

impl Cell {
    fn new(
        period: Duration,
        per_period: u32,
        per_period_name: &'static str,
        burst: u32,
        burst_name: &'static str,
    ) -> Result<Self, RateLimitConfigError> {
        let per_period =
            NonZeroU32::new(per_period).ok_or(RateLimitConfigError::Zero(per_period_name))?;
        let burst = NonZeroU32::new(burst).ok_or(RateLimitConfigError::Zero(burst_name))?;
        let interval = period / per_period.get();
        let interval_us = u64::try_from(interval.as_micros())
            .ok()
            .filter(|&us| us > 0)
            .ok_or(RateLimitConfigError::TooFast(per_period_name))?;
        Ok(Self {
            interval,
            interval_us,
            burst,
        })
    }

    fn in_process(self) -> Result<Arc<DefaultKeyedRateLimiter<String>>, RateLimitConfigError> {
        let quota = Quota::with_period(self.interval)
            .ok_or(RateLimitConfigError::TooFast("rate"))?
            .allow_burst(self.burst);
        Ok(Arc::new(DefaultKeyedRateLimiter::keyed(quota)))
    }
}

/// Sets the cell `KEYS[1]` for one request and says whether it conforms.
/// ARGV[1]: the emission interval in microseconds; ARGV[2]: the burst.
/// Returns `{1, 0}` (allowed, recorded) or `{0, microseconds until the next one conforms}`.
/// The time is Redis's, so instances whose clocks differ still share one cell.
pub const GCRA_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local next_tat = tat + interval
local allow_at = next_tat - burst * interval
if now < allow_at then
  return {0, allow_at - now}
end
local ttl_ms = math.ceil((next_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', ttl_ms)
return {1, 0}
";

struct SharedCells {
    redis: RedisBackend,
    script: redis::Script,
    prefix: String,
}

struct ScopeLimits {
    cell: Cell,
    local: Arc<DefaultKeyedRateLimiter<String>>,
}

/// Both scopes' limits; cheap to clone.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

struct Inner {
    ip: ScopeLimits,
    user: ScopeLimits,
    shared: Option<SharedCells>,
}

impl RateLimits {
    /// The limits of `settings`; `None` when they are off (load tests).
    pub fn from_settings(
        settings: &RateLimitSettings,
        redis: &RedisSettings,
    ) -> Result<Option<Self>, RateLimitConfigError> {
        if !settings.enabled {
            return Ok(None);
        }
        let ip = Cell::new(
            Duration::from_secs(1),
            settings.per_ip_per_second,
            "per_ip_per_second",
            settings.per_ip_burst,
            "per_ip_burst",
        )?;
        let user = Cell::new(
            Duration::from_secs(60),
            settings.per_user_writes_per_minute,
            "per_user_writes_per_minute",
            settings.per_user_write_burst,
            "per_user_write_burst",
        )?;
        let shared = match settings.backend {
            RateLimitBackend::Memory => None,
            RateLimitBackend::Redis => Some(SharedCells {
                redis: RedisBackend::new(redis::Client::open(redis.url.expose_secret())?),
                script: redis::Script::new(GCRA_SCRIPT),
                prefix: settings.key_prefix.clone(),
            }),
        };
        let inner = Arc::new(Inner {
            ip: ScopeLimits {
                cell: ip,
                local: ip.in_process()?,
            },
            user: ScopeLimits {
                cell: user,
                local: user.in_process()?,
            },
            shared,
        });
        forget_idle_keys(Arc::downgrade(&inner));
        Ok(Some(Self { inner }))
    }

    pub fn backend_name(&self) -> &'static str {
        if self.inner.shared.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Counts one request of `key` against `scope`'s limit.
    pub async fn check(&self, scope: Scope, key: &str) -> Decision {
        let limits = match scope {
            Scope::Ip => &self.inner.ip,
            Scope::User => &self.inner.user,
        };
        if let Some(shared) = &self.inner.shared {
            match shared.check(scope, key, limits.cell).await {
                Ok(decision) => return decision,
                Err(error) => {
                    metrics::counter!("rate_limit_backend_errors_total", "scope" => scope.as_str())
                        .increment(1);
                    tracing::warn!(%error, scope = scope.as_str(), "rate limit store unavailable; counting in this process");
                }
            }
        }
        check_in_process(&limits.local, key)
    }
}

fn check_in_process(limiter: &DefaultKeyedRateLimiter<String>, key: &str) -> Decision {
    match limiter.check_key(&key.to_owned()) {
        Ok(()) => Decision::Allowed,
        Err(not_until) => Decision::Limited {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        },
    }
}

impl SharedCells {
    async fn check(&self, scope: Scope, key: &str, cell: Cell) -> Result<Decision, CacheError> {
        let redis_key = format!("{}{}:{key}", self.prefix, scope.as_str());
        let (interval_us, burst) = (cell.interval_us, cell.burst.get());
        let (allowed, wait_us): (i64, i64) = self
            .redis
            .run(async |connection| {
                self.script
                    .key(&redis_key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(connection)
                    .await
            })
            .await?;
        Ok(if allowed == 1 {
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after: Duration::from_micros(wait_us.unsigned_abs()),
            }
        })
    }
}

/// The in-process limiters keep a cell per key; drop the ones that have been quiet, for as long
/// as the limits live.
fn forget_idle_keys(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else {
                break;
            };
            inner.ip.local.retain_recent();
            inner.user.local.retain_recent();
        }
    });
}
