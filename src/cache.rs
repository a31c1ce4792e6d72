//! The read cache for the catalog and for promotions (coupon and gift-rule lookups): in-process
//! (moka) by default, Redis when configured.
//!
//! Keys carry the version of their [`Scope`], which every write to that scope bumps, so
//! invalidation is O(1) (no `KEYS`/`SCAN` sweeps) and a catalog edit leaves cached promotions
//! alone (and the other way round); entries also expire after a short TTL as a backstop. Redis is an
//! optimisation, never a dependency: any Redis error (or a Redis that is down) counts in
//! `cache_errors_total`, is treated as a miss, and the request is served from PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use crate::config::{CacheBackend, Settings};
use crate::error::AppError;

/// A Redis call that takes longer than this is abandoned (and counted as an error).
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed connection attempt, wait this long before trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// How long a load's result is shared with the requests that waited for it (see `Cache::flights`).
const FLIGHT_TTL: Duration = Duration::from_secs(1);

/// A family of cached reads with a version of its own: a write bumps only its own scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Listings and products.
    Catalog,
    /// Coupons by code and the active gift rules (never usage counts).
    Promotions,
}

impl Scope {
    const ALL: [Scope; 2] = [Scope::Catalog, Scope::Promotions];

    fn as_str(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Promotions => "promotions",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Catalog => 0,
            Self::Promotions => 1,
        }
    }
}

#[derive(Clone)]
pub struct Cache {
    backend: Arc<Backend>,
    /// Loads in flight, by entry key, so that concurrent misses of one key in this process wait
    /// for one load instead of each running it (an expiry or a version bump under load would
    /// otherwise send every waiting request to PostgreSQL at once). Entries live a second: with
    /// Redis they are also a short in-process copy, safe because an entry key carries its version.
    flights: moka::future::Cache<String, Bytes>,
    prefix: String,
    ttl: Duration,
}

enum Backend {
    Memory {
        entries: moka::future::Cache<String, Bytes>,
        /// One per [`Scope`], by [`Scope::index`].
        versions: [AtomicU64; Scope::ALL.len()],
    },
    Redis(RedisBackend),
}

/// One Redis connection shared by its users (the cache, the rate limits), every call bounded by
/// [`REDIS_TIMEOUT`].
pub(crate) struct RedisBackend {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("redis is not connected")]
    Disconnected,
}

impl RedisBackend {
    pub(crate) fn new(client: redis::Client) -> Self {
        Self {
            client,
            connection: Mutex::new(None),
            last_attempt: Mutex::new(None),
        }
    }

    /// The shared connection, (re)connecting at most once per backoff period, so a Redis that is
    /// down costs each request nothing but a lock.
    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        let mut connection = self.connection.lock().await;
        if let Some(existing) = connection.as_ref() {
            return Ok(existing.clone());
        }
        {
            let mut last = self.last_attempt.lock().await;
            if last.is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF) {
                return Err(CacheError::Disconnected);
            }
            *last = Some(Instant::now());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let manager = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| CacheError::Timeout)??;
        *connection = Some(manager.clone());
        Ok(manager)
    }

    pub(crate) async fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, redis::RedisError>,
    ) -> Result<T, CacheError> {
        let mut connection = self.connection().await?;
        tokio::time::timeout(REDIS_TIMEOUT, op(&mut connection))
            .await
            .map_err(|_| CacheError::Timeout)?
            .map_err(CacheError::from)
    }
}

impl Cache {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let backend = match settings.cache.backend {
            CacheBackend::Memory => Backend::Memory {
                entries: moka::future::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(Duration::from_secs(settings.cache.listing_ttl_secs.max(1)))
                    .build(),
                versions: Scope::ALL.map(|_| AtomicU64::new(0)),
            },
            CacheBackend::Redis => Backend::Redis(RedisBackend::new(redis::Client::open(
                settings.redis.url.expose_secret(),
            )?)),
        };
        Ok(Self {
            backend: Arc::new(backend),
            flights: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(FLIGHT_TTL)
                .build(),
            prefix: settings.cache.key_prefix.clone(),
            ttl: Duration::from_secs(settings.cache.listing_ttl_secs.max(1)),
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match *self.backend {
            Backend::Memory { .. } => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    fn version_key(&self, scope: Scope) -> String {
        format!("{}{}:version", self.prefix, scope.as_str())
    }

    fn entry_key(&self, scope: Scope, version: u64, namespace: &str, key: &str) -> String {
        format!(
            "{}{}:v{version}:{namespace}:{key}",
            self.prefix,
            scope.as_str()
        )
    }

    fn failed(&self, error: &CacheError) {
        metrics::counter!("cache_errors_total", "backend" => self.backend_name()).increment(1);
        tracing::warn!(%error, "cache unavailable; serving from the database");
    }

    /// Invalidates every cached catalog response at once.
    pub async fn bump_catalog_version(&self) {
        self.bump_version(Scope::Catalog).await;
    }

    /// The current version of `scope`, or `None` when the cache cannot be used right now.
    pub async fn version(&self, scope: Scope) -> Option<u64> {
        match &*self.backend {
            Backend::Memory { versions, .. } => {
                Some(versions[scope.index()].load(Ordering::Acquire))
            }
            Backend::Redis(redis) => {
                let key = self.version_key(scope);
                match redis
                    .run(async |c| c.get::<_, Option<u64>>(&key).await)
                    .await
                {
                    Ok(version) => Some(version.unwrap_or(0)),
                    Err(error) => {
                        self.failed(&error);
                        None
                    }
                }
            }
        }
    }

    /// Invalidates every cached entry of `scope` at once.
    pub async fn bump_version(&self, scope: Scope) {
        match &*self.backend {
            Backend::Memory { versions, .. } => {
                versions[scope.index()].fetch_add(1, Ordering::AcqRel);
            }
            Backend::Redis(redis) => {
                let key = self.version_key(scope);
                if let Err(error) = redis
                    .run(async |c| c.incr::<_, _, u64>(&key, 1).await)
                    .await
                {
                    // Entries written under the old version still expire within the TTL.
                    self.failed(&error);
                }
            }
        }
    }

    /// An entry of `scope` read under `version` (from [`Cache::version`]). `namespace` names the
    /// metric label; `key` must be normalized.
    pub async fn get_in(
        &self,
        scope: Scope,
        namespace: &'static str,
        version: u64,
        key: &str,
    ) -> Option<Bytes> {
        let key = self.entry_key(scope, version, namespace, key);
        let found = match &*self.backend {
            Backend::Memory { entries, .. } => entries.get(&key).await,
            Backend::Redis(redis) => {
                match redis
                    .run(async |c| c.get::<_, Option<Vec<u8>>>(&key).await)
                    .await
                {
                    Ok(found) => found.map(Bytes::from),
                    Err(error) => {
                        self.failed(&error);
                        return None;
                    }
                }
            }
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("cache_requests_total", "cache" => namespace, "result" => result)
            .increment(1);
        found
    }

    /// Stores an entry of `scope` under the `version` it was read with: if a write bumped the
    /// version meanwhile, the entry is simply never read.
    pub async fn put_in(
        &self,
        scope: Scope,
        namespace: &'static str,
        version: u64,
        key: &str,
        value: Bytes,
    ) {
        let key = self.entry_key(scope, version, namespace, key);
        match &*self.backend {
            Backend::Memory { entries, .. } => entries.insert(key, value).await,
            Backend::Redis(redis) => {
                let ttl = self.ttl.as_secs();
                let stored = redis
                    .run(async |c| c.set_ex::<_, _, ()>(&key, value.as_ref(), ttl).await)
                    .await;
                if let Err(error) = stored {
                    self.failed(&error);
                }
            }
        }
    }

    /// The entry of `scope` for `key` under the scope's current version, or what `load` (a future
    /// only polled on a miss) makes of PostgreSQL, stored for the next reader. Concurrent misses of one key in this
    /// process run `load` once and all get its result (one refresh per key at a time). A cache
    /// that cannot be used right now is bypassed: `load` answers.
    pub async fn get_or_load(
        &self,
        scope: Scope,
        namespace: &'static str,
        key: &str,
        load: impl Future<Output = Result<Bytes, AppError>> + Send,
    ) -> Result<Bytes, AppError> {
        // Read before the database: a write that lands meanwhile bumps the version, so what is
        // stored below under this (then old) version is never read again.
        let Some(version) = self.version(scope).await else {
            return load.await;
        };
        if let Some(found) = self.get_in(scope, namespace, version, key).await {
            return Ok(found);
        }
        let entry = self.entry_key(scope, version, namespace, key);
        let flight = async {
            metrics::counter!("cache_loads_total", "cache" => namespace).increment(1);
            let value = load.await?;
            if let Backend::Redis(_) = &*self.backend {
                self.put_in(scope, namespace, version, key, value.clone())
                    .await;
            }
            Ok::<_, AppError>(value)
        };
        // In memory the entry cache itself holds the flight; with Redis, `flights` does.
        let loaded = match &*self.backend {
            Backend::Memory { entries, .. } => entries.try_get_with(entry, flight).await,
            Backend::Redis(_) => self.flights.try_get_with(entry, flight).await,
        };
        loaded.map_err(|error| error.shared())
    }

    /// For readiness: `None` when there is nothing to check (in-process cache).
    pub async fn check(&self) -> Option<Result<(), String>> {
        match &*self.backend {
            Backend::Memory { .. } => None,
            Backend::Redis(redis) => Some(
                redis
                    .run(async |c| redis::cmd("PING").query_async::<String>(c).await)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn cache(backend: Backend) -> Cache {
        Cache {
            backend: Arc::new(backend),
            flights: moka::future::Cache::builder()
                .time_to_live(FLIGHT_TTL)
                .build(),
            prefix: format!("shop-cache-test-{}:", uuid::Uuid::now_v7()),
            ttl: Duration::from_secs(60),
        }
    }

    fn memory() -> Cache {
        cache(Backend::Memory {
            entries: moka::future::Cache::builder().build(),
            versions: Scope::ALL.map(|_| AtomicU64::new(0)),
        })
    }

    fn redis() -> Cache {
        let url = std::env::var("SHOP_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        cache(Backend::Redis(RedisBackend::new(
            redis::Client::open(url).expect("a Redis URL"),
        )))
    }

    /// 64 concurrent readers of one cold key: the loader runs once and every reader gets its
    /// bytes; after a version bump, once more.
    async fn one_load_per_key_and_version(cache: Cache) {
        let loads = Arc::new(AtomicUsize::new(0));
        let read = |round: u8| {
            let (cache, loads) = (cache.clone(), loads.clone());
            async move {
                cache
                    .get_or_load(Scope::Catalog, "listing", "hot", async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        // A slow query, so that the readers overlap it.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(Bytes::from(vec![round]))
                    })
                    .await
                    .expect("loaded")
            }
        };
        let answers = futures::future::join_all((0..64).map(|_| read(1))).await;
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|bytes| bytes.as_ref() == [1]));

        cache.bump_version(Scope::Catalog).await;
        let answers = futures::future::join_all((0..64).map(|_| read(2))).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert!(answers.iter().all(|bytes| bytes.as_ref() == [2]));
    }

    #[tokio::test]
    async fn in_memory_concurrent_misses_of_one_key_load_once() {
        one_load_per_key_and_version(memory()).await;
    }

    #[tokio::test]
    async fn with_redis_concurrent_misses_of_one_key_load_once() {
        let cache = redis();
        assert_eq!(cache.check().await, Some(Ok(())), "Redis on 127.0.0.1:6379");
        one_load_per_key_and_version(cache).await;
    }

    #[tokio::test]
    async fn a_failed_load_is_the_error_of_every_waiter_and_the_next_read_loads_again() {
        let cache = memory();
        let failing = futures::future::join_all((0..8).map(|_| {
            cache.get_or_load(Scope::Catalog, "listing", "k", async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Bytes, _>(AppError::Unavailable("pool timed out".into()))
            })
        }))
        .await;
        assert!(
            failing
                .iter()
                .all(|answer| matches!(answer, Err(AppError::Unavailable(_))))
        );
        let loaded = cache
            .get_or_load(Scope::Catalog, "listing", "k", async {
                Ok(Bytes::from_static(b"ok"))
            })
            .await
            .expect("loaded");
        assert_eq!(loaded.as_ref(), b"ok");
    }
}
