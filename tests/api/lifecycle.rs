//! The process as an operator sees it: the real binary, configured through the environment,
//! stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{TestDatabase, eventually, metric_value};

/// The real binary serving the test profile on `database`, on a port of its own, with `env` on
/// top; answers the child and the address it printed once bound.
pub async fn spawn_binary(database: &TestDatabase, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .env("SHOP_ENV", "test")
        .env("DATABASE_URL", &database.url)
        .env("SHOP__SERVER__PORT", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the shop binary starts");
    // The binary prints the address it bound (port 0 in the settings: the environment won).
    let stdout = child.stdout.take().expect("stdout");
    let address = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let address = lines
            .find_map(|line| {
                let line = line.ok()?;
                let start = line.find("http://")?;
                let rest = &line[start..];
                Some(rest.split_whitespace().next()?.to_owned())
            })
            .expect("a listening line");
        // Keep reading, so that the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        address
    })
    .await
    .unwrap();
    (child, address)
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let database = TestDatabase::new();
    let (mut child, address) =
        spawn_binary(&database, &[("SHOP__SERVER__SHUTDOWN_GRACE_SECS", "20")]).await;

    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("{address}/__test/sleep?ms=1500");
        async move { client.get(url).send().await }
    });
    // SIGTERM only once the slow request is really being handled.
    eventually(
        Duration::from_secs(10),
        "the slow request to be in flight",
        || {
            let client = client.clone();
            let url = format!("{address}/metrics");
            async move {
                let text = client.get(url).send().await.ok()?.text().await.ok()?;
                metric_value(&text, "http_requests_in_flight{route=\"/__test/sleep\"}")
                    .filter(|n| *n >= 1.0)
            }
        },
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    let response = slow
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slept 1500 ms");

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("the process exits");
    assert!(status.success(), "exit status {status:?}");
    // And it no longer accepts connections.
    assert!(
        client
            .get(format!("{address}/health/live"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn production_refuses_to_start_with_the_dev_jwt_secret() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_shop"))
            .env("SHOP_ENV", "production")
            .env_remove("SHOP__AUTH__JWT_SECRET")
            .arg("migrate")
            .output()
            .expect("runs")
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("jwt_secret"), "{stderr}");
}

#[tokio::test]
async fn migrate_creates_the_database_and_applies_migrations() {
    let database = TestDatabase::new();
    let url = database.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_shop"))
            .env("SHOP_ENV", "test")
            .env("DATABASE_URL", url)
            .arg("migrate")
            .output()
            .expect("runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, shop::db::MIGRATOR.iter().count());
    pool.close().await;
}
