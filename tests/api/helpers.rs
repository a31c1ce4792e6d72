//! The test harness: [`TestApp::spawn`] builds the real application from the `test` profile with
//! a fresh, migrated database of its own (dropped when the test ends), an actor name prefix of its
//! own, and port 0, so tests run in parallel without interfering.

use std::future::Future;
use std::time::Duration;

use reqwest::Response;
use serde_json::{Value, json};
use shop::config::{Profile, Settings};
use shop::identity::{Email, NewPassword, UserName};
use shop::startup::Application;
use shop::state::AppState;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The PostgreSQL server the tests use; each test gets its own database on it.
/// A port free on 127.0.0.1 now, for a process that must know its port before it starts (a
/// webhook target given to the Stripe test server before the shop listens).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

pub fn postgres_server_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database that exists for one test and is dropped with this guard.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn new() -> Self {
        let name = format!("shop_test_{}", Uuid::new_v4().simple());
        let url = format!("{}/{}", postgres_server_url(), name);
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = postgres_server_url();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut conn) =
                    sqlx::PgConnection::connect(&format!("{server}/postgres")).await
                {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// Settings for a test: the `test` profile with a database and actor prefix of its own.
pub fn test_settings(db: &TestDatabase) -> Settings {
    let mut settings = Settings::load_profile(Profile::Test).expect("the test profile loads");
    settings.database.url = db.url.clone().into();
    settings.database.max_connections = 10;
    settings.actors.name_prefix = format!("{}-", db.name);
    // Real Redis, with keys of this test's own.
    settings.cache.backend = shop::config::CacheBackend::Redis;
    settings.redis.url = redis_url().into();
    settings.cache.key_prefix = format!("{}:", db.name);
    settings.rate_limit.key_prefix = format!("{}:rate:", db.name);
    settings
}

pub const CUSTOMER_PASSWORD: &str = "customer-password-1";
pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub settings: Settings,
    // Dropped last: the database outlives the app's connections. Shared with a restarted app.
    pub database: std::sync::Arc<TestDatabase>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}, |_| Vec::new()).await
    }

    /// Spawns the app with `configure` applied to its settings and the `children` it returns
    /// added under the root supervisor.
    pub async fn spawn_with(
        configure: impl FnOnce(&mut Settings),
        children: impl FnOnce(&Settings) -> Vec<shop_actors::ChildSpec>,
    ) -> Self {
        let database = TestDatabase::new();
        let mut settings = test_settings(&database);
        configure(&mut settings);
        let children = children(&settings);
        Self::launch(std::sync::Arc::new(database), settings, children).await
    }

    /// Stops this app the way SIGTERM would and starts a new one on the same database and
    /// settings: what survives is what was persisted.
    pub async fn restart(self) -> Self {
        let (database, settings) = (self.database.clone(), self.settings.clone());
        self.stop().await;
        Self::launch(database, settings, Vec::new()).await
    }

    /// Another instance on this app's database, with its own port and actor-name prefix: a
    /// second replica, or the new pod of a rolling update while the old one still runs.
    pub async fn spawn_beside(&self) -> Self {
        self.spawn_beside_with(|_| {}).await
    }

    /// [`TestApp::spawn_beside`] with `configure` applied to the new instance's settings.
    pub async fn spawn_beside_with(&self, configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.settings.clone();
        settings.actors.name_prefix =
            format!("{}-{}-", self.database.name, Uuid::new_v4().simple());
        configure(&mut settings);
        Self::launch(self.database.clone(), settings, Vec::new()).await
    }

    async fn launch(
        database: std::sync::Arc<TestDatabase>,
        settings: Settings,
        children: Vec<shop_actors::ChildSpec>,
    ) -> Self {
        let app = Application::build_with(settings.clone(), children)
            .await
            .expect("the app builds");
        let address = format!("http://{}", app.local_addr().expect("bound"));
        let state = app.state().clone();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stop.await;
        }));
        let db = PgPoolOptions::new()
            .max_connections(2)
            .connect(&database.url)
            .await
            .expect("test pool");
        Self {
            address,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            state,
            db,
            shutdown: Some(shutdown),
            server: Some(server),
            settings,
            database,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_json_as(&self, token: &str, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch_json_as(&self, token: &str, path: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Response {
        self.post_json(
            "/api/v1/auth/register",
            &json!({"email": email, "password": password, "name": name}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers a fresh customer and logs them in.
    pub async fn login_as_customer(&self) -> Session {
        let email = format!("customer-{}@example.com", Uuid::new_v4().simple());
        let registered = self
            .register(&email, CUSTOMER_PASSWORD, "Casey Customer")
            .await;
        assert_eq!(registered.status(), 201, "register");
        let id = registered.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        self.session(id, &email, CUSTOMER_PASSWORD).await
    }

    /// Creates a fresh admin (as `shop create-admin` would) and logs them in.
    pub async fn login_as_admin(&self) -> Session {
        let email = format!("admin-{}@example.com", Uuid::new_v4().simple());
        self.state
            .identity
            .ensure_admin(
                &self.state.db,
                Email::parse(&email).unwrap(),
                UserName::parse("Ada Admin").unwrap(),
                Some(NewPassword::parse(ADMIN_PASSWORD.to_owned().into()).unwrap()),
            )
            .await
            .expect("admin created");
        let id = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_one(&self.db)
            .await
            .unwrap();
        self.session(id, &email, ADMIN_PASSWORD).await
    }

    async fn session(&self, id: Uuid, email: &str, password: &str) -> Session {
        let response = self.login(email, password).await;
        assert_eq!(response.status(), 200, "login");
        let tokens: Value = response.json().await.unwrap();
        Session {
            id,
            email: email.to_owned(),
            access_token: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh_token: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn delete_as(&self, token: &str, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("DELETE")
    }

    /// POSTs as `token` and returns the JSON body, asserting `status`.
    pub async fn created(&self, token: &str, path: &str, body: &Value) -> Value {
        let response = self.post_json_as(token, path, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 201, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits (at most `deadline`) for the server to end without being asked to, and says how it
    /// ended: what `shop serve` would exit with.
    pub async fn exited(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let server = self.server.take().expect("the server is running");
        tokio::time::timeout(deadline, server)
            .await
            .expect("the server ends in time")
            .expect("server task")
    }

    /// Stops the server the way SIGTERM would and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("clean stop");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Waits until `check` yields `Some`, polling, or fails the test after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one Prometheus series in `metrics` text, e.g.
/// `metric_value(&text, "actor_restarts_total{kind=\"probe\"}")`.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

impl TestApp {
    /// A cart's row, held by a connection of the test: the cart actor's next write waits behind
    /// it (an honest way to make the actor slow, no test hook in the actor).
    pub async fn hold_cart_row(&self, cart: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut blocker = self.db.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM carts WHERE id = $1 FOR UPDATE")
            .bind(cart)
            .execute(&mut *blocker)
            .await
            .unwrap();
        blocker
    }

    /// `LOCK TABLE {table} IN {mode} MODE`, held by a transaction of the test until it ends: the
    /// writes that conflict with it wait (a slow database, with no test hook in the app).
    pub async fn lock_table(
        &self,
        table: &str,
        mode: &str,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut lock = self.db.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {table} IN {mode} MODE"
        )))
        .execute(&mut *lock)
        .await
        .unwrap();
        lock
    }

    /// Waits until exactly one statement starting with `prefix` waits on a lock.
    pub async fn wait_for_one_waiting(&self, prefix: &str) {
        eventually(
            Duration::from_secs(20),
            &format!("{prefix:?} to wait on a lock"),
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                     AND wait_event_type = 'Lock' AND starts_with(query, $1)",
                )
                .bind(prefix)
                .fetch_one(&self.db)
                .await
                .unwrap();
                (waiting == 1).then_some(())
            },
        )
        .await;
    }

    /// (on hand, held, sold) of a variant, from PostgreSQL: the inventory's ledger.
    pub async fn stock_ledger(&self, variant: Uuid) -> (i32, i32, i32) {
        sqlx::query_as(
            "SELECT v.stock,
                    coalesce(sum(r.quantity) FILTER (WHERE r.status = 'held'), 0)::int,
                    coalesce(sum(r.quantity) FILTER (WHERE r.status = 'committed'), 0)::int
             FROM product_variants v LEFT JOIN stock_reservations r ON r.variant_id = v.id
             WHERE v.id = $1 GROUP BY v.stock",
        )
        .bind(variant)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }
}

/// Asserts a problem+json error response with `status`, and returns its body.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string(), "title in {body}");
    assert!(body["type"].is_string(), "type in {body}");
    body
}

/// RabbitMQ for the messaging tests: `TEST_AMQP_ADDR` (host:port, default the local broker).
pub fn amqp_server() -> String {
    std::env::var("TEST_AMQP_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

pub fn amqp_url_via(address: &str) -> String {
    format!("amqp://guest:guest@{address}/%2f")
}

/// Points the app at RabbitMQ and the SMTP sink, with exchange and queue names of this test's own
/// (so parallel tests never consume each other's messages) and quick retries.
pub fn use_rabbitmq_and_smtp(settings: &mut Settings, amqp_address: &str, sink: &MailSink) {
    use shop::config::EmailBackend;
    use_rabbitmq(settings, amqp_address);
    settings.email.backend = EmailBackend::Smtp;
    settings.smtp.url = sink.smtp_url.clone().into();
    settings.smtp.timeout_secs = 5;
    quick_retries(settings);
}

/// Points the outbox at RabbitMQ with exchange and queue names of this test's own (emails keep
/// the profile's backend).
pub fn use_rabbitmq(settings: &mut Settings, amqp_address: &str) {
    let prefix = settings.actors.name_prefix.trim_end_matches('-').to_owned();
    settings.jobs.backend = shop::config::JobsBackend::Rabbitmq;
    settings.amqp.url = amqp_url_via(amqp_address).into();
    settings.amqp.exchange = format!("{prefix}.events");
    settings.amqp.email_queue = format!("{prefix}.emails");
    settings.amqp.dead_letter_exchange = format!("{prefix}.dead-letter");
    settings.amqp.dead_letter_queue = format!("{prefix}.emails.dead-letter");
    settings.amqp.timeout_secs = 3;
}

/// Retries and polls measured in milliseconds, so failure paths finish quickly.
pub fn quick_retries(settings: &mut Settings) {
    settings.email.max_attempts = 3;
    settings.email.retry_base_ms = 50;
    settings.email.retry_max_ms = 400;
    settings.outbox.poll_interval_ms = 200;
}

/// The SMTP sink `scripts/test` starts (`scripts/smtp_sink.py`): SMTP at `SHOP_TEST_SMTP_URL`,
/// what it received as JSON at `SHOP_TEST_SMTP_API`.
#[derive(Clone)]
pub struct MailSink {
    pub smtp_url: String,
    api: String,
    client: reqwest::Client,
}

impl MailSink {
    pub fn from_env() -> Self {
        let required = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: the email tests need an SMTP sink; run them with \
                     scripts/test, which starts one and sets SHOP_TEST_SMTP_URL and SHOP_TEST_SMTP_API"
                )
            })
        };
        Self {
            smtp_url: required("SHOP_TEST_SMTP_URL"),
            api: required("SHOP_TEST_SMTP_API"),
            client: reqwest::Client::new(),
        }
    }

    /// Every message the sink accepted for `address`.
    pub async fn messages_to(&self, address: &str) -> Vec<Value> {
        self.client
            // Test addresses are [a-z0-9-]@example.com: nothing to escape.
            .get(format!("{}/messages?to={address}", self.api))
            .send()
            .await
            .expect("the SMTP sink answers")
            .json()
            .await
            .expect("messages as JSON")
    }

    /// How often the sink refused `RCPT TO:address`.
    pub async fn refusals(&self, address: &str) -> u64 {
        let answer: Value = self
            .client
            .get(format!("{}/refusals?to={address}", self.api))
            .send()
            .await
            .expect("the SMTP sink answers")
            .json()
            .await
            .expect("refusals as JSON");
        answer["count"].as_u64().expect("count")
    }

    /// Waits for exactly `count` messages to `address` and returns them.
    pub async fn wait_for(&self, address: &str, count: usize) -> Vec<Value> {
        eventually(
            Duration::from_secs(20),
            &format!("{count} email(s) to {address}"),
            || async {
                let messages = self.messages_to(address).await;
                assert!(
                    messages.len() <= count,
                    "more than {count} email(s) to {address}: {messages:#?}"
                );
                (messages.len() == count).then_some(messages)
            },
        )
        .await
    }
}

/// A TCP relay in front of RabbitMQ that a test can cut and restore, standing in for a broker
/// outage without touching the shared broker. While cut, it closes every open connection and
/// refuses new ones (accepts and drops them), counting the attempts.
pub struct TcpRelay {
    pub address: String,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    pub async fn start(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay binds");
        let address = listener.local_addr().expect("relay address").to_string();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, count, open) = (up.clone(), refused.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().unwrap().push(forward.abort_handle());
            }
        });
        Self {
            address,
            up,
            refused,
            connections,
            accept,
        }
    }

    /// The broker becomes unreachable: open connections die, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections refused while cut.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl TestApp {
    /// Writes an outbox row in a transaction of its own, as the order saga will.
    pub async fn enqueue(&self, topic: &str, payload: &impl serde::Serialize) -> Uuid {
        let mut tx = self.db.begin().await.expect("begin");
        let id = shop::messaging::enqueue(&mut tx, topic, payload)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        id
    }

    /// Waits until every outbox row is published.
    pub async fn wait_for_outbox_drained(&self) {
        eventually(
            Duration::from_secs(20),
            "every outbox row to be published",
            || async {
                shop::messaging::relay::unpublished(&self.db)
                    .await
                    .unwrap()
                    .is_empty()
                    .then_some(())
            },
        )
        .await
    }
}

/// The real `shop` binary as an operator runs it: configured through the environment (the `test`
/// profile and `database`, plus `env`), its stderr in `log`, killed with SIGKILL on demand and on
/// drop.
pub struct ShopProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:{port}`, from the listening line it prints.
    pub base: String,
}

impl ShopProcess {
    pub fn start(database: &TestDatabase, env: &[(&str, String)], log: &std::path::Path) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let log = std::fs::File::create(log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
        command
            .env("SHOP_ENV", "test")
            .env("DATABASE_URL", &database.url)
            .env("SHOP__RATE_LIMIT__ENABLED", "false")
            .env("SHOP__LOG__LEVEL", "warn");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the shop binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = lines
            .find_map(|line| {
                let line = line.ok()?;
                let start = line.find("http://")?;
                Some(line[start..].split_whitespace().next()?.to_owned())
            })
            .expect("a listening line");
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    pub fn kill_9(&mut self) {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let _ = self.child.wait();
    }
}

impl Drop for ShopProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
