//! The test harness: [`TestApp::spawn`] builds the real application from the `test` profile with
//! a fresh, migrated database of its own (dropped when the test ends), an actor name prefix of its
//! own, and port 0, so tests run in parallel without interfering.

use std::future::Future;
use std::time::Duration;

use reqwest::Response;
use serde_json::Value;
use shop::config::{Profile, Settings};
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
    settings
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the database outlives the app's connections.
    pub database: TestDatabase,
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
        let app = Application::build_with(settings, children)
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
