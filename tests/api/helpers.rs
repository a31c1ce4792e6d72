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
