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

/// Runs `shop <args>` against `database`: (exit code, stdout, stderr).
pub(crate) async fn run_shop(database: &TestDatabase, args: &[&str]) -> (i32, String, String) {
    let mut command = shop(database);
    command.args(args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().expect("an exit code, not a signal"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The table row of `needle` (a SKU, an order number) split into cells.
pub(crate) fn row_of(table: &str, needle: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|line| line.split_whitespace().any(|cell| cell == needle))
        .unwrap_or_else(|| panic!("no row for {needle} in\n{table}"));
    line.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn reconcile_passes_on_a_consistent_shop_and_names_the_variant_that_does_not_add_up() {
    use crate::orders::{checkout, fill_cart, stripe_app, variant, wait_status};
    let (app, _stripe) = stripe_app(|_| {}).await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "RECON-MUG", 1250, 10).await;
    // One paid order of 2, one pending order of 1.
    let buyer = app.login_as_customer().await;
    fill_cart(&app, &buyer, &mug, 2).await;
    let paid: Value = checkout(&app, &buyer).await.json().await.unwrap();
    let paid_id = paid["id"].as_str().unwrap();
    let response = app
        .post_json_as(
            &buyer.access_token,
            &format!("/api/v1/orders/{paid_id}/pay"),
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    wait_status(&app, &buyer, paid_id, "paid").await;
    let waiter = app.login_as_customer().await;
    fill_cart(&app, &waiter, &mug, 1).await;
    assert_eq!(checkout(&app, &waiter).await.status(), 201);

    let (code, stdout, stderr) = run_shop(&app.database, &["reconcile"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        row_of(&stdout, "RECON-MUG"),
        ["RECON-MUG", &mug, "8", "1", "2", "ok"],
        "on hand 10 - 2 sold, 1 held, 2 sold"
    );
    assert!(stdout.contains("0 mismatched"), "{stdout}");

    // A hold for an order that does not exist.
    sqlx::query(
        "INSERT INTO stock_reservations (id, owner_id, variant_id, quantity, expires_at)
         VALUES ($1, $2, $3, 3, now() + interval '1 hour')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(uuid::Uuid::new_v4())
    .bind(uuid::Uuid::parse_str(&mug).unwrap())
    .execute(&app.db)
    .await
    .unwrap();
    let (code, stdout, stderr) = run_shop(&app.database, &["reconcile"]).await;
    assert_eq!(code, 2, "a mismatch exits 2: {stdout}{stderr}");
    assert!(stdout.contains("1 mismatched"), "{stdout}");
    let row = row_of(&stdout, "RECON-MUG").join(" ");
    assert!(
        row.contains("MISMATCH: 3 held for no pending order"),
        "{row}"
    );
    assert!(
        stderr.contains(&format!("RECON-MUG ({mug}) does not reconcile")),
        "{stderr}"
    );
    sqlx::query("DELETE FROM stock_reservations WHERE owner_id <> ALL($1)")
        .bind(
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM orders")
                .fetch_all(&app.db)
                .await
                .unwrap(),
        )
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(run_shop(&app.database, &["reconcile"]).await.0, 0);

    // Sold units the paid order's lines do not account for.
    sqlx::query("UPDATE stock_reservations SET quantity = 5 WHERE status = 'committed'")
        .execute(&app.db)
        .await
        .unwrap();
    let (code, stdout, _) = run_shop(&app.database, &["reconcile"]).await;
    assert_eq!(code, 2);
    let row = row_of(&stdout, "RECON-MUG").join(" ");
    assert!(
        row.contains("5 sold by the inventory, 2 by sold orders' lines"),
        "{row}"
    );
}

#[tokio::test]
async fn refunds_lists_the_owed_refunds_and_outbox_counts_pending_and_dead_letters() {
    let app = TestApp::spawn().await;
    let (code, stdout, stderr) = run_shop(&app.database, &["refunds"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 refund(s) owed"), "{stdout}");

    let customer = app.login_as_customer().await;
    let order_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO orders (id, number, user_id, status, subtotal, total, currency,
                             shipping_address, expires_at, payment_provider)
         VALUES ($1, 'SO-OWED-1', $2, 'cancelled', 4200, 4200, 'usd', '{}', now(), 'simulated')",
    )
    .bind(order_id)
    .bind(customer.id)
    .execute(&app.db)
    .await
    .unwrap();
    // Not due for a day: the running app's refund worker leaves it alone.
    sqlx::query(
        "INSERT INTO refunds (id, order_id, seq, intent_id, amount, currency, reason, dedup_key,
                              attempts, next_attempt_at, last_error)
         VALUES ($1, $2, 1, 'pi_owed', 4200, 'usd', 'late_payment', 'payment:pi_owed', 3,
                 now() + interval '1 day', 'provider unavailable')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(order_id)
    .execute(&app.db)
    .await
    .unwrap();
    let (code, stdout, stderr) = run_shop(&app.database, &["refunds"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 refund(s) owed"), "{stdout}");
    let row = row_of(&stdout, "SO-OWED-1").join(" ");
    for cell in [
        order_id.to_string().as_str(),
        "$42.00",
        " owed ",
        "late_payment",
        " 3 ",
        "provider unavailable",
    ] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }

    // One row waiting (never due), one given up on by the in-process dispatcher.
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, available_at, attempts, last_error)
         VALUES ($1, 'order.oncall', '{}', now() + interval '1 day', 2, 'smtp down')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, published_at, attempts, last_error)
         VALUES ($1, 'order.oncall', '{}', now(), 5, 'dead-lettered: after 5 attempt(s): 550')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&app.db)
    .await
    .unwrap();
    let (code, stdout, stderr) = run_shop(&app.database, &["outbox"]).await;
    assert_eq!(code, 0, "{stderr}");
    let row = row_of(&stdout, "order.oncall");
    assert_eq!(row[..3], ["order.oncall", "1", "1"], "pending, retrying");
    assert_eq!(row.last().unwrap(), "1", "dead-lettered: {stdout}");
    assert!(stdout.contains("1 pending, 1 dead-lettered"), "{stdout}");
}
