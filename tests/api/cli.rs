//! The admin commands of the binary, and the promise that secrets never reach the logs.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDatabase};

fn shop(database: &TestDatabase) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    command
        .env("SHOP_ENV", "test")
        .env("DATABASE_URL", &database.url);
    command
}

#[tokio::test]
async fn create_admin_reads_the_password_from_stdin_and_the_admin_can_log_in() {
    let app = TestApp::spawn().await;
    let mut command = shop(&app.database);
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command
            .args([
                "create-admin",
                "--email",
                "boss@example.com",
                "--password-stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"stdin-password-1\n")
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !printed.contains("stdin-password-1"),
        "the password was echoed"
    );

    let tokens: Value = app
        .login("boss@example.com", "stdin-password-1")
        .await
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.get_as(token, "/api/v1/admin/users").await.status(), 200);

    // Run again for an existing customer: promoted, password untouched.
    let customer = app.login_as_customer().await;
    let mut command = shop(&app.database);
    let email = customer.email.clone();
    let status = tokio::task::spawn_blocking(move || {
        command
            .args(["create-admin", "--email", &email])
            .env_remove("SHOP_ADMIN_PASSWORD")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(customer.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(role, "admin");
}

#[tokio::test]
async fn no_response_or_log_line_carries_a_password_a_hash_or_a_refresh_token() {
    let database = TestDatabase::new();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .env("SHOP_ENV", "test")
        .env("DATABASE_URL", &database.url)
        .env("SHOP__SERVER__PORT", "0")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut logs = String::new();
    let address = loop {
        let line = stdout.next_line().await.unwrap().expect("a listening line");
        logs.push_str(&line);
        if let Some(start) = line.find("http://") {
            break line[start..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text).await;
        text
    });

    let client = reqwest::Client::new();
    let password = "a-very-distinctive-password";
    let mut responses = String::new();
    let register = client
        .post(format!("{address}/api/v1/auth/register"))
        .json(&json!({"email": "leak@example.com", "password": password, "name": "Lee"}))
        .send()
        .await
        .unwrap();
    responses.push_str(&register.text().await.unwrap());
    let login: Value = client
        .post(format!("{address}/api/v1/auth/login"))
        .json(&json!({"email": "leak@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh_token = login["refresh_token"].as_str().unwrap().to_owned();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let rotated: Value = client
        .post(format!("{address}/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = client
        .get(format!("{address}/api/v1/users/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    responses.push_str(&me.text().await.unwrap());
    let wrong = client
        .post(format!("{address}/api/v1/auth/login"))
        .json(&json!({"email": "leak@example.com", "password": "another-distinctive-guess"}))
        .send()
        .await
        .unwrap();
    responses.push_str(&wrong.text().await.unwrap());

    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;

    nix_kill_term(child.id().unwrap());
    child.wait().await.unwrap();
    while let Ok(Some(line)) = stdout.next_line().await {
        logs.push_str(&line);
    }
    logs.push_str(&stderr_task.await.unwrap());
    assert!(
        logs.contains("/api/v1/auth/login"),
        "trace logs were captured"
    );

    let salt_and_digest = hash.rsplit('$').next().unwrap();
    for (what, secret) in [
        ("password", password),
        ("wrong password", "another-distinctive-guess"),
        ("password hash", salt_and_digest),
        ("refresh token", refresh_token.as_str()),
        (
            "rotated refresh token",
            rotated["refresh_token"].as_str().unwrap(),
        ),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the logs");
        assert!(!responses.contains(secret), "the {what} is in a response");
    }
}

fn nix_kill_term(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn seed_demo_fills_a_catalog_once() {
    let database = TestDatabase::new();
    for _ in 0..2 {
        let mut command = shop(&database);
        let output =
            tokio::task::spawn_blocking(move || command.args(["seed", "--demo"]).output().unwrap())
                .await
                .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(count("SELECT count(*) FROM categories WHERE parent_id IS NULL").await >= 5);
    assert!(count("SELECT count(*) FROM categories WHERE parent_id IS NOT NULL").await >= 5);
    assert!(count("SELECT count(*) FROM products").await >= 50);
    assert!(count("SELECT count(*) FROM products WHERE type = 'variable'").await >= 1);
    assert_eq!(
        count("SELECT count(*) FROM products WHERE type = 'bundle'").await,
        1
    );
    assert!(
        count("SELECT count(*) FROM products WHERE product_available(id, type) = 0").await >= 1
    );
    // Run twice, created once.
    assert_eq!(
        count("SELECT count(*) FROM products").await,
        count("SELECT count(DISTINCT slug) FROM products").await
    );
    let before = count("SELECT count(*) FROM product_variants").await;
    assert_eq!(
        before,
        count("SELECT count(DISTINCT sku) FROM product_variants").await
    );
    pool.close().await;
}
