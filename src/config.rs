//! Configuration: `config/default.toml` → `config/$SHOP_ENV.toml` → `SHOP__SECTION__KEY` environment
//! variables (and `DATABASE_URL`). Both files are embedded in the binary, so it runs from any
//! directory; copies in `$SHOP_CONFIG_DIR` (default `./config`) override the embedded ones.
//! Secrets are [`SecretString`]s: they never appear in `Debug` output or logs.

use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The dev value of `auth.jwt_secret` shipped in `config/default.toml`.
const DEV_JWT_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";
const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Dev,
    Test,
    Production,
}

impl Profile {
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var("SHOP_ENV").as_deref() {
            Err(_) | Ok("dev") | Ok("") => Ok(Self::Dev),
            Ok("test") => Ok(Self::Test),
            Ok("production") => Ok(Self::Production),
            Ok(other) => Err(ConfigError::Invalid(format!(
                "SHOP_ENV must be dev, test or production, not {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Test => "test",
            Self::Production => "production",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(skip_deserializing, default = "default_profile")]
    pub profile: Profile,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    #[serde(default)]
    pub bootstrap: BootstrapSettings,
    pub cache: CacheSettings,
    pub redis: RedisSettings,
    pub jobs: JobsSettings,
    pub amqp: AmqpSettings,
    pub outbox: OutboxSettings,
    pub storage: StorageSettings,
    #[serde(default)]
    pub s3: S3Settings,
    pub payments: PaymentsSettings,
    #[serde(default)]
    pub stripe: StripeSettings,
    pub checkout: CheckoutSettings,
    pub email: EmailSettings,
    pub smtp: SmtpSettings,
    pub store: StoreSettings,
    pub actors: ActorSettings,
    pub cluster: ClusterSettings,
    pub inventory: InventorySettings,
    pub carts: CartSettings,
    pub rate_limit: RateLimitSettings,
    pub log: LogSettings,
    pub traces: TraceSettings,
    #[serde(default)]
    pub testing: TestingSettings,
}

fn default_profile() -> Profile {
    Profile::Dev
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub request_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
    /// How long a request whose `Idempotency-Key` is in use by a request still running waits for
    /// its answer before it is 409 (`src/http/idempotency.rs`); shorter than the request timeout.
    pub idempotency_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_secs: u64,
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub issuer: String,
    pub audience: String,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub hash_concurrency: usize,
    /// How long a password-reset token works after it was asked for.
    pub password_reset_ttl_secs: u64,
    /// How long the email-verification token sent at registration works.
    pub email_verification_ttl_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BootstrapSettings {
    pub admin_email: Option<String>,
    pub admin_password: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheSettings {
    pub backend: CacheBackend,
    pub listing_ttl_secs: u64,
    /// Prepended to every cache key, so several shops (or tests) can share one Redis.
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: SecretString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobsBackend {
    Memory,
    Rabbitmq,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobsSettings {
    pub backend: JobsBackend,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: SecretString,
    /// The durable topic exchange outbox rows are published to, routed by their topic.
    pub exchange: String,
    /// The queue the email dispatcher consumes, bound to `order.*`.
    pub email_queue: String,
    /// Where rejected emails go (a fanout exchange and its queue).
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Unacknowledged deliveries the dispatcher may hold at once.
    pub prefetch: u16,
    /// Deadline for connecting, declaring and each batch of publisher confirms.
    pub timeout_secs: u64,
}

/// The outbox relay.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// The backstop poll; new rows normally wake the relay at once through LISTEN/NOTIFY.
    pub poll_interval_ms: u64,
    /// Rows claimed per transaction.
    pub batch_size: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    pub local_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentProvider {
    Simulated,
    Stripe,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentsSettings {
    pub provider: PaymentProvider,
    /// How long one call to the provider may take before it counts as failed (and is retried
    /// with the same idempotency key).
    #[serde(default = "default_payment_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_payment_timeout_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StripeSettings {
    pub secret_key: Option<SecretString>,
    pub webhook_secret: Option<SecretString>,
    pub api_base: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSettings {
    pub reservation_ttl_secs: u64,
    /// How long a checkout, payment or cancel request waits for its order saga. The layers nest:
    /// a provider call (`payments.timeout_secs`) < the saga's own deadline (this less
    /// [`SAGA_MARGIN`]) < this < `server.request_timeout_secs`, so the saga decides (and undoes
    /// what it did) before anyone outside gives up on it.
    #[serde(default = "default_checkout_call_timeout_secs")]
    pub call_timeout_secs: u64,
    /// How often payment events not yet acted on are handed to their sagas again.
    #[serde(default = "default_redeliver_interval_secs")]
    pub redeliver_interval_secs: u64,
    /// How often the order supervisor makes sure every pending order has a running saga.
    #[serde(default = "default_sweep_interval_secs")]
    pub sweep_interval_secs: u64,
    /// How often the refund worker retries the refunds still owed.
    #[serde(default = "default_refund_interval_secs")]
    pub refund_interval_secs: u64,
    /// A coupon use held this long for an order that does not exist or is no longer pending is
    /// stranded: the coupon limiter's reconciliation (every `inventory.reconcile_interval_secs`)
    /// releases it, or commits it for a paid order. Must exceed the longest a checkout can take
    /// to write its order: `call_timeout_secs` + 2 × `database.statement_timeout_ms` + 5 s.
    #[serde(default = "default_coupon_orphan_grace_secs")]
    pub coupon_orphan_grace_secs: u64,
}

fn default_coupon_orphan_grace_secs() -> u64 {
    120
}

pub use shop_actors::orders::SAGA_MARGIN;

fn default_checkout_call_timeout_secs() -> u64 {
    20
}

fn default_redeliver_interval_secs() -> u64 {
    5
}

fn default_sweep_interval_secs() -> u64 {
    5
}

fn default_refund_interval_secs() -> u64 {
    5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailBackend {
    File,
    Smtp,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmailSettings {
    pub backend: EmailBackend,
    pub from: String,
    pub file_dir: PathBuf,
    /// Sending attempts per email before it is dead-lettered.
    pub max_attempts: u32,
    /// Backoff between attempts: doubles from `retry_base_ms` up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// The storefront pages the account emails link to: `{link_base_url}/reset-password?token=..`
    /// and `{link_base_url}/verify-email?token=..`.
    pub link_base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpSettings {
    pub url: SecretString,
    /// Per SMTP command.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    pub currency: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActorSettings {
    pub name_prefix: String,
    /// How long the http layer waits for an actor's answer before a 503.
    pub call_timeout_ms: u64,
    pub max_restarts: usize,
    pub restart_window_secs: u64,
    /// Run the actor tree only while holding the database's ownership lease (a PostgreSQL
    /// advisory lock), so two instances on one database never both own stock, carts and coupon
    /// uses; the other waits as a standby. Off only for setups that guarantee one instance.
    pub ownership_lease: bool,
    /// How often a standby tries to take the lease, and how often the owner checks it still
    /// holds it.
    pub lease_check_ms: u64,
}

/// How the actor keys are split between the nodes on one database (`[cluster]`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// Several nodes sharing the partitions. Not built yet: one node owns every partition (the
    /// others are standbys), so `true` is refused rather than ignored.
    pub enabled: bool,
    /// How many partitions the actor keys are spread over (`partition = hash(key) mod P`); the
    /// node that runs the tree takes every one, at a new fencing epoch, before loading state.
    /// Fixed for a database once set: a node with another count refuses to start.
    pub partitions: u32,
    /// This node's name in `partition_leases.owner`; unset means host name and port.
    #[serde(default)]
    pub node_name: Option<String>,
}

impl ClusterSettings {
    /// [`ClusterSettings::node_name`], or `{host name}:{port}` (the process id when the port is
    /// 0, any free port).
    pub fn node(&self, port: u16) -> String {
        if let Some(name) = self.node_name.as_ref().filter(|name| !name.is_empty()) {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|host| host.trim().to_owned())
            .ok()
            .filter(|host| !host.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "shop".into());
        if port == 0 {
            format!("{host}-pid{}", std::process::id())
        } else {
            format!("{host}:{port}")
        }
    }
}

/// The most partitions a shop may be split into (each is a row of `partition_leases`).
pub const MAX_PARTITIONS: u32 = 4096;

#[derive(Debug, Clone, Deserialize)]
pub struct InventorySettings {
    /// Shard actors; 0 means two per core.
    pub shards: usize,
    pub expiry_interval_ms: u64,
    pub reconcile_interval_secs: u64,
}

impl InventorySettings {
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CartSettings {
    /// A cart actor with nothing to do for this long stops (its cart stays in PostgreSQL).
    pub idle_timeout_secs: u64,
}

/// Where the request rate limits keep their counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// In this process (governor): each instance counts on its own.
    Memory,
    /// In Redis (`redis.url`), shared by every instance; in-process for a request Redis fails.
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub backend: RateLimitBackend,
    /// Prepended to every rate-limit key in Redis, so several shops (or tests) can share one.
    pub key_prefix: String,
    pub per_ip_per_second: u32,
    pub per_ip_burst: u32,
    /// Writes (POST, PUT, PATCH, DELETE) with a valid access token, per user, on top of the
    /// per-IP limit.
    pub per_user_writes_per_minute: u32,
    pub per_user_write_burst: u32,
    pub login_failures_per_email: u32,
    /// Wrong coupon codes a customer may try in 15 minutes before `POST /cart/coupon` is 429.
    #[serde(default = "default_coupon_failures")]
    pub coupon_failures_per_customer: u32,
    /// Password-reset requests per email per hour, counted whether or not the email has an
    /// account.
    pub recovery_requests_per_email: u32,
    /// Password-reset requests per client address per hour.
    pub recovery_requests_per_ip: u32,
    /// Reset and verification tokens that did not verify, per client address per hour.
    pub bad_recovery_tokens_per_ip: u32,
}

fn default_coupon_failures() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// OpenTelemetry traces, exported over OTLP/HTTP (protobuf) to a collector.
#[derive(Debug, Clone, Deserialize)]
pub struct TraceSettings {
    pub enabled: bool,
    /// The collector's OTLP/HTTP base URL; spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    /// The share of new traces kept, 0.0 to 1.0; a caller's `traceparent` decides for its own.
    pub sampling_ratio: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TestingSettings {
    pub test_routes: bool,
}

fn embedded(profile: Profile) -> &'static str {
    match profile {
        Profile::Dev => include_str!("../config/dev.toml"),
        Profile::Test => include_str!("../config/test.toml"),
        Profile::Production => include_str!("../config/production.toml"),
    }
}

impl Settings {
    /// Loads the profile named by `SHOP_ENV` and validates it.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_profile(Profile::from_env()?)
    }

    pub fn load_profile(profile: Profile) -> Result<Self, ConfigError> {
        Self::load_layers(profile, None, std::env::var("DATABASE_URL").ok())
    }

    /// Loads `profile` as the process would with exactly `env` for its environment (instead of
    /// the real one), so a deployment's variables can be checked without setting them.
    pub fn load_profile_with_env(
        profile: Profile,
        env: &config::Map<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::load_layers(profile, Some(env.clone()), env.get("DATABASE_URL").cloned())
    }

    fn load_layers(
        profile: Profile,
        env: Option<config::Map<String, String>>,
        database_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        let dir = std::env::var_os("SHOP_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let mut builder = Config::builder()
            .add_source(File::from_str(
                include_str!("../config/default.toml"),
                FileFormat::Toml,
            ))
            .add_source(File::from_str(embedded(profile), FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false))
            .add_source(File::from(dir.join(format!("{}.toml", profile.as_str()))).required(false))
            .add_source(
                Environment::with_prefix("SHOP")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("server.cors_allowed_origins")
                    .source(env),
            );
        if let Some(url) = database_url {
            builder = builder.set_override("database.url", url)?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.profile = profile;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings that are unsafe or inconsistent. Runs at every start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secret = self.auth.jwt_secret.expose_secret();
        if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError::Invalid(format!(
                "auth.jwt_secret must be at least {MIN_JWT_SECRET_BYTES} bytes"
            )));
        }
        if self.profile == Profile::Production {
            if secret == DEV_JWT_SECRET {
                return Err(ConfigError::Invalid(
                    "auth.jwt_secret is the dev default; set SHOP__AUTH__JWT_SECRET".into(),
                ));
            }
            if self.testing.test_routes {
                return Err(ConfigError::Invalid(
                    "testing.test_routes cannot be enabled in production".into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.traces.sampling_ratio) {
            return Err(ConfigError::Invalid(
                "traces.sampling_ratio must be between 0.0 and 1.0".into(),
            ));
        }
        if self.traces.enabled && !self.traces.endpoint.starts_with("http://") {
            return Err(ConfigError::Invalid(
                "traces.endpoint must be an http:// URL (OTLP/HTTP to a collector beside the shop)"
                    .into(),
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.cluster.partitions) {
            return Err(ConfigError::Invalid(format!(
                "cluster.partitions must be between 1 and {MAX_PARTITIONS}"
            )));
        }
        if self.cluster.enabled {
            return Err(ConfigError::Invalid(
                "cluster.enabled: several nodes sharing the partitions is not built yet; one node \
                 owns every partition and the others are standbys (leave it false)"
                    .into(),
            ));
        }
        if self.auth.argon2_memory_kib < 19456
            || self.auth.argon2_iterations < 2
            || self.auth.argon2_parallelism < 1
        {
            return Err(ConfigError::Invalid(
                "argon2 parameters below the OWASP minimum (m = 19456 KiB, t = 2, p = 1)".into(),
            ));
        }
        if self.actors.ownership_lease && self.actors.lease_check_ms == 0 {
            return Err(ConfigError::Invalid(
                "actors.lease_check_ms must be above 0".into(),
            ));
        }
        let idempotency_wait = Duration::from_millis(self.server.idempotency_wait_ms);
        if idempotency_wait.is_zero() || idempotency_wait >= self.request_timeout() {
            return Err(ConfigError::Invalid(format!(
                "server.idempotency_wait_ms ({}) must be above 0 and below server.request_timeout_secs ({})",
                self.server.idempotency_wait_ms, self.server.request_timeout_secs
            )));
        }
        if self.outbox.batch_size < 1 || self.outbox.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "outbox.batch_size and outbox.poll_interval_ms must be positive".into(),
            ));
        }
        // Inner timeouts shorter than outer ones (see `CheckoutSettings::call_timeout_secs`).
        // A checkout waits for the cart actor (`actors.call_timeout_ms`), which waits for the saga
        // (`checkout.call_timeout_secs` + 1 s), and then up to 2 s to empty the cart.
        let saga = Duration::from_secs(self.checkout.call_timeout_secs).saturating_sub(SAGA_MARGIN);
        let checkout = Duration::from_millis(self.actors.call_timeout_ms)
            + Duration::from_secs(self.checkout.call_timeout_secs + 3);
        if Duration::from_secs(self.payments.timeout_secs) >= saga
            || checkout >= self.request_timeout()
        {
            return Err(ConfigError::Invalid(format!(
                "timeouts must nest: payments.timeout_secs ({}) < checkout.call_timeout_secs ({}) - {} s, and actors.call_timeout_ms ({}) + checkout.call_timeout_secs + 3 s < server.request_timeout_secs ({})",
                self.payments.timeout_secs,
                self.checkout.call_timeout_secs,
                SAGA_MARGIN.as_secs(),
                self.actors.call_timeout_ms,
                self.server.request_timeout_secs
            )));
        }
        let checkout_writes = Duration::from_secs(self.checkout.call_timeout_secs + 5)
            + 2 * Duration::from_millis(self.database.statement_timeout_ms);
        if Duration::from_secs(self.checkout.coupon_orphan_grace_secs) <= checkout_writes {
            return Err(ConfigError::Invalid(format!(
                "checkout.coupon_orphan_grace_secs ({}) must exceed checkout.call_timeout_secs + 2 × database.statement_timeout_ms + 5 s ({} s): a use held for a checkout still writing its order is not stranded",
                self.checkout.coupon_orphan_grace_secs,
                checkout_writes.as_secs_f64()
            )));
        }
        if self.payments.provider == PaymentProvider::Stripe
            && (self.stripe.secret_key.is_none() || self.stripe.webhook_secret.is_none())
        {
            return Err(ConfigError::Invalid(
                "payments.provider = stripe needs stripe.secret_key and stripe.webhook_secret"
                    .into(),
            ));
        }
        if let Some(origin) = self
            .server
            .cors_allowed_origins
            .iter()
            .find(|origin| !is_origin(origin))
        {
            return Err(ConfigError::Invalid(format!(
                "server.cors_allowed_origins: {origin:?} is not an origin such as https://shop.example (scheme and host, no path, no wildcard)"
            )));
        }
        let currency = &self.store.currency;
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(ConfigError::Invalid(
                "store.currency must be a lower-case ISO 4217 code such as usd".into(),
            ));
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.server.request_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }
}

/// `scheme://host[:port]`, exactly as a browser sends it in `Origin`.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_must_be_origins() {
        let mut s = settings();
        s.server.cors_allowed_origins = vec![
            "https://shop.example".into(),
            "http://localhost:3000".into(),
        ];
        assert!(s.validate().is_ok());
        for bad in [
            "*",
            "shop.example",
            "https://shop.example/",
            "https://",
            "ftp://x",
            "https://a b",
        ] {
            s.server.cors_allowed_origins = vec![bad.into()];
            assert!(s.validate().is_err(), "{bad} accepted");
        }
    }

    fn settings() -> Settings {
        Settings::load_profile(Profile::Test).expect("test profile loads")
    }

    #[test]
    fn a_coupon_use_is_not_stranded_while_its_checkout_may_still_write_the_order() {
        let mut s = settings();
        // 20 s of checkout, 2 × 5 s of statements, 5 s of margin.
        s.checkout.coupon_orphan_grace_secs = 36;
        assert!(s.validate().is_ok());
        s.checkout.coupon_orphan_grace_secs = 35;
        let error = s.validate().unwrap_err().to_string();
        assert!(error.contains("coupon_orphan_grace_secs"), "{error}");
    }

    #[test]
    fn short_jwt_secret_is_refused() {
        let mut s = settings();
        s.auth.jwt_secret = SecretString::from("short");
        assert!(s.validate().is_err());
    }

    #[test]
    fn production_refuses_the_dev_secret_and_test_routes() {
        let mut s = settings();
        s.profile = Profile::Production;
        s.testing.test_routes = false;
        assert!(s.validate().is_err(), "dev secret accepted in production");
        s.auth.jwt_secret = SecretString::from("x".repeat(48));
        assert!(s.validate().is_ok());
        s.testing.test_routes = true;
        assert!(s.validate().is_err(), "test routes accepted in production");
    }

    #[test]
    fn secrets_never_print() {
        let s = settings();
        let printed = format!("{s:?}");
        assert!(!printed.contains(DEV_JWT_SECRET));
        assert!(!printed.contains("postgres://"));
    }

    #[test]
    fn the_stripe_provider_needs_its_secret_key_and_webhook_secret() {
        let mut s = settings();
        s.payments.provider = PaymentProvider::Stripe;
        assert!(s.validate().is_err());
        s.stripe.secret_key = Some(SecretString::from("sk_test_x"));
        assert!(s.validate().is_err(), "no webhook secret accepted");
        s.stripe.webhook_secret = Some(SecretString::from("whsec_x"));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn weak_argon2_params_are_refused() {
        let mut s = settings();
        s.auth.argon2_memory_kib = 4096;
        assert!(s.validate().is_err());
    }
}
