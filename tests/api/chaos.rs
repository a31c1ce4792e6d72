//! Chaos against the real binary: 200 customers check out at once through the real Stripe client
//! and the Stripe test server, with a random mix (seeded, printed) of successful, declined and
//! late payments, duplicate and out-of-order webhooks, customer cancels and short reservation
//! expiries, and the process killed with SIGKILL mid-run and started again. When everything has
//! settled, the promises of the shop must hold:
//! - every payment Stripe took is a paid order or a refund the provider confirmed;
//! - no order is paid twice;
//! - stock is conserved per variant (what was received = on hand now + sold), nothing held;
//! - one email per (order, kind), and exactly the emails the final statuses call for;
//! - `actor_alive{kind="order_saga"}` equals the orders still pending.
#![allow(
    clippy::print_stdout,
    reason = "the seed and the figures are the replay instructions"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shop_stripe_testserver::{
    DeliveryPolicy, ServerOptions, StripeTestServer, WebhookTarget, sign,
};
use uuid::Uuid;

use crate::helpers::{ShopProcess, TestDatabase, eventually, free_port, metric_value};

const CUSTOMERS: usize = 200;
const VARIANTS: usize = 8;
const STOCK: i64 = 30;
const TTL_SECS: u64 = 6;
/// A coupon fewer customers may use than try to: its limit is reached mid-run.
const COUPON: &str = "CHAOS10";
const COUPON_LIMIT: i64 = 30;
/// The shortest grace the settings allow (the test profile's checkout call and statement
/// timeouts), so that a use stranded by the kill -9 is repaired within the settling wait.
const COUPON_GRACE_SECS: u64 = 36;
const SECRET_KEY: &str = "sk_test_shop_chaos";
const WEBHOOK_SECRET: &str = "whsec_shop_chaos";
const ADMIN_EMAIL: &str = "chaos-admin@example.com";
const ADMIN_PASSWORD: &str = "chaos-admin-password-1";
const PASSWORD: &str = "chaos-customer-password-1";

/// The shop binary on Stripe's test server, with short reservations and emails as files.
fn start_shop(
    database: &TestDatabase,
    port: u16,
    stripe: &str,
    emails: &std::path::Path,
) -> ShopProcess {
    let env = [
        ("SHOP__SERVER__PORT", port.to_string()),
        ("SHOP__PAYMENTS__PROVIDER", "stripe".to_owned()),
        ("SHOP__STRIPE__SECRET_KEY", SECRET_KEY.to_owned()),
        ("SHOP__STRIPE__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("SHOP__STRIPE__API_BASE", stripe.to_owned()),
        ("SHOP__CHECKOUT__RESERVATION_TTL_SECS", TTL_SECS.to_string()),
        (
            "SHOP__CHECKOUT__COUPON_ORPHAN_GRACE_SECS",
            COUPON_GRACE_SECS.to_string(),
        ),
        ("SHOP__EMAIL__BACKEND", "file".to_owned()),
        ("SHOP__EMAIL__FILE_DIR", emails.display().to_string()),
        ("SHOP__BOOTSTRAP__ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
        ("SHOP__BOOTSTRAP__ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
    ];
    ShopProcess::start(database, &env, &emails.with_extension("log"))
}

/// An HTTP call retried through the restart: connection errors and 502/503 are tried again
/// (with the same Idempotency-Key where the route has one) until a deadline.
async fn call(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let started = tokio::time::Instant::now();
    loop {
        let mut request = client.request(method.clone(), format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        match request.send().await {
            Ok(response) if ![502, 503].contains(&response.status().as_u16()) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                return Some((status, body));
            }
            _ if started.elapsed() > Duration::from_secs(60) => return None,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// What one customer does after checking out.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Pay,
    DeclinedThenPay,
    Declined,
    Cancel,
    LetExpire,
    PayThenCancel,
}

fn plan(rng: &mut StdRng) -> Plan {
    match rng.random_range(0..100) {
        0..35 => Plan::Pay,
        35..50 => Plan::DeclinedThenPay,
        50..58 => Plan::Declined,
        58..72 => Plan::Cancel,
        72..86 => Plan::LetExpire,
        _ => Plan::PayThenCancel,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_chaotic_checkouts_and_a_kill_9_keep_every_promise() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed {seed} (replay: CHAOS_SEED={seed} cargo test -p shop --test api chaos::)");
    let database = TestDatabase::new();
    let port = free_port();
    let stripe = StripeTestServer::start_with(ServerOptions {
        webhook: Some(WebhookTarget {
            url: format!("http://127.0.0.1:{port}/api/v1/webhooks/stripe"),
            secret: WEBHOOK_SECRET.to_owned(),
        }),
        // Stripe retries for days; enough here to outlast a restart.
        delivery: DeliveryPolicy {
            max_attempts: 100,
            first_retry_after: Duration::from_millis(50),
            max_retry_after: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(10),
        },
        fixtures: None,
    })
    .await
    .unwrap();
    let stripe = Arc::new(stripe);
    let emails = tempfile::tempdir().unwrap();
    let email_dir = emails.path().join("emails");
    std::fs::create_dir_all(&email_dir).unwrap();
    let mut shop = start_shop(&database, port, &stripe.base_url(), &email_dir);
    let base = shop.base.clone();
    let client = reqwest::Client::new();

    // The catalog: a few scarce variants, so that some checkouts are short.
    let (status, login) = call(
        &client,
        &base,
        reqwest::Method::POST,
        "/api/v1/auth/login",
        None,
        Some(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{login}");
    let admin = login["access_token"].as_str().unwrap().to_owned();
    let mut variants = Vec::new();
    for n in 0..VARIANTS {
        let (status, product) = call(
            &client,
            &base,
            reqwest::Method::POST,
            "/api/v1/products",
            Some(&admin),
            Some(
                &json!({"name": format!("Chaos {n}"), "sku": format!("CHAOS-{n}"),
                "price": 1000 + 250 * n as i64, "stock": STOCK, "status": "active"}),
            ),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{product}");
        variants.push(product["variants"][0]["id"].as_str().unwrap().to_owned());
    }

    let (status, coupon) = call(
        &client,
        &base,
        reqwest::Method::POST,
        "/api/v1/admin/coupons",
        Some(&admin),
        Some(
            &json!({"code": COUPON, "kind": "percent", "value": 10, "scope": "order",
                     "usage_limit": COUPON_LIMIT, "active": true}),
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{coupon}");
    let coupon_id = Uuid::parse_str(coupon["id"].as_str().unwrap()).unwrap();

    // The customers, all at once.
    let checkouts_done = Arc::new(AtomicUsize::new(0));
    let customers = (0..CUSTOMERS).map(|n| {
        let (client, base, variants) = (client.clone(), base.clone(), variants.clone());
        let done = checkouts_done.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64));
            let post = |path: &str, token: Option<&str>, body: Value, key: Option<&str>| {
                let (client, base) = (client.clone(), base.clone());
                let (path, token, key) = (
                    path.to_owned(),
                    token.map(str::to_owned),
                    key.map(str::to_owned),
                );
                async move {
                    let (token, key) = (token.as_deref(), key.as_deref());
                    call(
                        &client,
                        &base,
                        reqwest::Method::POST,
                        &path,
                        token,
                        Some(&body),
                        key,
                    )
                    .await
                }
            };
            let email = format!("chaos-{n}-{seed}@example.com");
            post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": PASSWORD, "name": "Chaos Customer"}),
                None,
            )
            .await;
            let (_, login) = post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": PASSWORD}),
                None,
            )
            .await?;
            let token = login["access_token"].as_str()?.to_owned();
            for _ in 0..rng.random_range(1..=2) {
                let variant = &variants[rng.random_range(0..variants.len())];
                let quantity = rng.random_range(1..=2);
                post(
                    "/api/v1/cart/items",
                    Some(&token),
                    json!({"variant_id": variant, "quantity": quantity}),
                    None,
                )
                .await;
            }
            // A share of them try the coupon; once its limit is reached it is refused.
            if rng.random_bool(0.4) {
                post(
                    "/api/v1/cart/coupon",
                    Some(&token),
                    json!({"code": COUPON}),
                    None,
                )
                .await;
            }
            let key = Uuid::new_v4().to_string();
            let address = json!({"shipping_address": {"name": "Chaos", "line1": "1 Main St",
                "city": "Springfield", "postal_code": "12345", "country": "US"}});
            let checkout = post("/api/v1/orders", Some(&token), address, Some(&key)).await;
            done.fetch_add(1, Ordering::SeqCst);
            let (201, order) = checkout? else {
                return None;
            };
            let id = order["id"].as_str()?.to_owned();
            let pay = |method: &str| {
                post(
                    &format!("/api/v1/orders/{id}/pay"),
                    Some(&token),
                    json!({"payment_method": method}),
                    None,
                )
            };
            let cancel = || {
                post(
                    &format!("/api/v1/orders/{id}/cancel"),
                    Some(&token),
                    json!({}),
                    None,
                )
            };
            match plan(&mut rng) {
                Plan::Pay => drop(pay("pm_card_visa").await),
                Plan::DeclinedThenPay => {
                    pay("pm_card_chargeDeclined").await;
                    pay("pm_card_visa").await;
                }
                Plan::Declined => drop(pay("pm_card_chargeDeclined").await),
                Plan::Cancel => drop(cancel().await),
                Plan::LetExpire => {}
                Plan::PayThenCancel => {
                    pay("pm_card_visa").await;
                    cancel().await;
                }
            }
            Some(id)
        })
    });
    let customers: Vec<_> = customers.collect();

    // Webhook chaos beside them: duplicates, failures reported after successes, and a pause
    // longer than the reservation TTL (late deliveries).
    let chaos = {
        let stripe = stripe.clone();
        let client = client.clone();
        let url = format!("http://127.0.0.1:{port}/api/v1/webhooks/stripe");
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            for round in 0..60 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let delivered = stripe.delivered_events();
                if delivered.is_empty() {
                    continue;
                }
                let event = &delivered[rng.random_range(0..delivered.len())];
                // A duplicate delivery.
                let _ = stripe.redeliver(&event.id);
                if event.event_type == "payment_intent.succeeded" && rng.random_bool(0.3) {
                    // A failure reported after the success (out of order).
                    let mut failed = event.json();
                    failed["id"] = json!(format!("evt_chaos_{}", Uuid::new_v4().simple()));
                    failed["type"] = json!("payment_intent.payment_failed");
                    failed["data"]["object"]["status"] = json!("requires_payment_method");
                    let body = failed.to_string();
                    let now = chrono::Utc::now().timestamp();
                    let _ = client
                        .post(&url)
                        .header(
                            "stripe-signature",
                            sign(body.as_bytes(), WEBHOOK_SECRET, now),
                        )
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                }
                if round == 8 {
                    stripe.pause_webhooks();
                }
                if round == 8 + 4 * TTL_SECS as usize {
                    stripe.resume_webhooks();
                }
            }
            stripe.resume_webhooks();
        })
    };

    // SIGKILL mid-run, then the same binary again on the same port.
    eventually(
        Duration::from_secs(120),
        "half the checkouts to be made",
        || async { (checkouts_done.load(Ordering::SeqCst) >= CUSTOMERS / 2).then_some(()) },
    )
    .await;
    shop.kill_9();
    drop(shop);
    let shop = start_shop(&database, port, &stripe.base_url(), &email_dir);
    assert_eq!(shop.base, base);

    let mut orders = Vec::new();
    for customer in customers {
        if let Some(id) = customer.await.unwrap() {
            orders.push(id);
        }
    }
    chaos.await.unwrap();
    println!(
        "chaos: {} orders made by {CUSTOMERS} customers",
        orders.len()
    );
    assert!(
        orders.len() >= CUSTOMERS / 4,
        "enough orders to mean something"
    );

    // Settled: nothing pending, every event acted on, nothing owed, every email out.
    let db = sqlx::PgPool::connect(&database.url).await.unwrap();
    let scalar = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    eventually(Duration::from_secs(120), "everything to settle", || async {
        let pending = scalar("SELECT count(*) FROM orders WHERE status = 'pending'").await;
        let unprocessed =
            scalar("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL").await;
        let owed = scalar("SELECT count(*) FROM refunds WHERE status IN ('owed', 'pending')").await;
        let unpublished = scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
        let emails_due = scalar(
            "SELECT count(*) FROM orders o WHERE o.status IN ('paid', 'cancelled')
               AND NOT EXISTS (SELECT 1 FROM email_deliveries d WHERE d.order_id = o.id
                               AND d.kind = o.status)",
        )
        .await;
        let undelivered = stripe.pending_events().len();
        // A use the kill -9 stranded is repaired once its grace is over.
        let held_uses =
            scalar("SELECT count(*) FROM coupon_redemptions WHERE status = 'held'").await;
        (pending == 0
            && held_uses == 0
            && unprocessed == 0
            && owed == 0
            && unpublished == 0
            && emails_due == 0
            && undelivered == 0)
            .then_some(())
    })
    .await;

    // Every payment Stripe took is a paid order or a confirmed refund.
    let status_of: HashMap<String, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM orders")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, status)| (id.to_string(), status))
            .collect();
    let refunded: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT intent_id, sum(amount)::bigint FROM refunds WHERE status = 'succeeded' GROUP BY intent_id",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut taken = 0;
    for intent in stripe.payment_intents() {
        if intent["status"] != "succeeded" {
            continue;
        }
        taken += 1;
        let id = intent["id"].as_str().unwrap();
        let order = intent["metadata"]["order_id"].as_str().unwrap();
        let received = intent["amount_received"].as_i64().unwrap();
        let status = status_of.get(order).map(String::as_str);
        let refund = refunded.get(id).copied().unwrap_or(0);
        assert!(
            (status == Some("paid") && refund == 0)
                || (status == Some("cancelled") && refund == received),
            "payment {id} of order {order} ({status:?}): {received} taken, {refund} refunded"
        );
    }
    let refunds = scalar("SELECT count(*) FROM refunds").await;
    let paid = status_of.values().filter(|s| *s == "paid").count();
    let cancelled = status_of.values().filter(|s| *s == "cancelled").count();
    println!(
        "chaos: {taken} payments taken; {paid} orders paid, {cancelled} cancelled, {refunds} refunded"
    );

    // Every refund row says what the provider last said of its refund.
    let provider_status: HashMap<String, String> = stripe
        .events()
        .iter()
        .filter(|event| {
            event.event_type.starts_with("refund.") || event.event_type == "charge.refund.updated"
        })
        .filter_map(|event| {
            let object = event.json()["data"]["object"].clone();
            Some((
                object["id"].as_str()?.to_owned(),
                object["status"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let recorded: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT provider_refund_id, status FROM refunds")
            .fetch_all(&db)
            .await
            .unwrap();
    for (provider_id, status) in &recorded {
        if status == "already_refunded" {
            continue;
        }
        let provider_id = provider_id
            .as_deref()
            .expect("a settled refund has its provider id");
        assert_eq!(
            provider_status.get(provider_id).map(String::as_str),
            Some(status.as_str()),
            "refund {provider_id}"
        );
    }

    // Coupon uses: none held (nothing is pending), committed = paid orders with the coupon, and
    // never more than the limit.
    let committed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM coupon_redemptions WHERE coupon_id = $1 AND status = 'committed'",
    )
    .bind(coupon_id)
    .fetch_one(&db)
    .await
    .unwrap();
    let paid_with_coupon: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE coupon_id = $1 AND status = 'paid'")
            .bind(coupon_id)
            .fetch_one(&db)
            .await
            .unwrap();
    let with_coupon: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE coupon_id = $1")
        .bind(coupon_id)
        .fetch_one(&db)
        .await
        .unwrap();
    println!("chaos: {with_coupon} orders with the coupon, {committed} uses committed");
    assert_eq!(
        committed, paid_with_coupon,
        "committed uses = paid orders with the coupon"
    );
    assert!(
        committed <= COUPON_LIMIT,
        "{committed} uses of a coupon limited to {COUPON_LIMIT}"
    );
    let (code, stdout, stderr) = crate::cli::run_shop(&database, &["reconcile"]).await;
    assert_eq!(code, 0, "shop reconcile after the chaos:\n{stdout}{stderr}");

    // No order paid twice.
    let twice = scalar(
        "SELECT count(*) FROM (SELECT order_id FROM order_status_history WHERE to_status = 'paid'
                               GROUP BY order_id HAVING count(*) > 1) t",
    )
    .await;
    assert_eq!(twice, 0);

    // Stock conserved per variant; nothing held; the shard's view is Postgres's.
    let ledger: Vec<(Uuid, i32, i64, i64)> = sqlx::query_as(
        "SELECT v.id, v.stock,
                coalesce(sum(r.quantity) FILTER (WHERE r.status = 'held'), 0)::bigint,
                coalesce(sum(r.quantity) FILTER (WHERE r.status = 'committed'), 0)::bigint
         FROM product_variants v LEFT JOIN stock_reservations r ON r.variant_id = v.id
         GROUP BY v.id, v.stock",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let ordered: BTreeMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT i.variant_id, sum(i.quantity)::bigint FROM order_items i
         JOIN orders o ON o.id = i.order_id WHERE o.status = 'paid' GROUP BY i.variant_id",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for (variant, on_hand, held, sold) in ledger {
        assert_eq!(held, 0, "variant {variant}: nothing held once settled");
        assert_eq!(
            i64::from(on_hand) + sold,
            STOCK,
            "variant {variant} conserved"
        );
        assert_eq!(
            sold,
            ordered.get(&variant).copied().unwrap_or(0),
            "variant {variant}: sold = what paid orders hold"
        );
    }

    // One email per (order, kind), and the files written match.
    let sent = scalar("SELECT count(*) FROM email_deliveries").await;
    let expected =
        scalar("SELECT count(*) FROM orders WHERE status IN ('paid', 'cancelled')").await;
    assert_eq!(sent, expected, "one email per settled order");
    let files = std::fs::read_dir(&email_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|f| f.path().extension().is_some_and(|e| e == "eml"))
        .count();
    // Besides the order emails, each account's verification email.
    let account_emails =
        scalar("SELECT count(*) FROM account_tokens WHERE sent_at IS NOT NULL").await;
    let accounts = scalar("SELECT count(*) FROM users").await;
    assert_eq!(
        account_emails, accounts,
        "one verification email per account"
    );
    assert_eq!(
        files as i64,
        sent + account_emails,
        "no email written twice"
    );
    let kinds: HashSet<(Uuid, String)> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT order_id, kind FROM email_deliveries")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(kinds.len() as i64, sent);

    for order in &orders {
        assert!(
            status_of.contains_key(order),
            "order {order} was answered, so it exists"
        );
    }

    // The sagas alive are the orders pending (none), and the shards agree with Postgres.
    let metrics = client
        .get(format!("{}/metrics", shop.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(&metrics, "actor_alive{kind=\"order_saga\"}").unwrap_or(0.0),
        0.0
    );
    let mismatches: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("inventory_reconciliation_mismatches{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(mismatches, 0.0);
    db.close().await;
}
