//! Reservations per second for one hot variant at 256 concurrent callers through the inventory
//! shard actor (single writer, group commit, a reservation row each).
//!
//! `cargo bench --bench reservations` (PostgreSQL on 127.0.0.1:5432, or BENCH_POSTGRES_URL).
//! The row-lock design it is compared with is measured the way PostgreSQL measures itself:
//! `scripts/bench` runs pgbench's hot-row script (`scripts/bench.d/hot-row.sql`) at its best
//! client count and this bench in the same run, and writes the ratio to docs/benchmarks.md. With
//! BENCH_RESULTS=FILE the figures are also appended to FILE as one JSON line.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shop::config::{DatabaseSettings, Profile, Settings};
use shop_actors::inventory::{Demand, Inventory, InventoryConfig};
use shop_actors::{ActorSystem, ActorSystemConfig, RestartPolicy, Slot};
use sqlx::PgPool;
use uuid::Uuid;

const CALLERS: usize = 256;
const RUN_FOR: Duration = Duration::from_secs(10);

async fn hot_variant(db: &PgPool) -> Uuid {
    let product = Uuid::now_v7();
    let variant = Uuid::now_v7();
    sqlx::query("INSERT INTO products (id, type, name, slug, status, price) VALUES ($1, 'simple', 'Hot', $2, 'active', 100)")
        .bind(product)
        .bind(format!("hot-{product}"))
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO product_variants (id, product_id, sku, stock, is_default) VALUES ($1, $2, $3, 100000000, true)")
        .bind(variant)
        .bind(product)
        .bind(format!("HOT-{variant}"))
        .execute(db)
        .await
        .unwrap();
    variant
}

/// Runs `CALLERS` tasks calling `op` until `RUN_FOR` has passed; returns (ops, seconds, p99 ms).
async fn hammer<F, Fut>(op: F) -> (u64, f64, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < RUN_FOR {
                    let t = Instant::now();
                    if op().await {
                        done.fetch_add(1, Ordering::Relaxed);
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<f64> = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    (done.load(Ordering::Relaxed), seconds, p99)
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` builds and runs benches too; only `cargo bench` (which passes
    // --bench) measures.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("reservations: run with `cargo bench --bench reservations`");
        return;
    }
    let server = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("shop_bench_{}", Uuid::new_v4().simple());
    let mut settings: DatabaseSettings = Settings::load_profile(Profile::Test).unwrap().database;
    settings.url = format!("{server}/{name}").into();
    settings.max_connections = 20;
    let db = shop::db::prepare(&settings).await.expect("database");

    let variant = hot_variant(&db).await;
    // The fence as a node takes it: every batch of holds proves its epoch, as in production.
    let fence = shop_actors::partition::Fence::new(64, "bench");
    fence.take_all(&db).await.expect("partitions");
    let system_config = ActorSystemConfig {
        name_prefix: format!("{name}-"),
        restart: RestartPolicy::default(),
        stop_timeout: Duration::from_secs(10),
    };
    let (inventory, spec) = Inventory::new(
        &system_config.name_prefix,
        db.clone(),
        &InventoryConfig {
            shards: 4,
            expiry_interval: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(600),
            call_timeout: Duration::from_secs(30),
            fence,
        },
        RestartPolicy::default(),
        Slot::empty("inventory_supervisor"),
    );
    let system = ActorSystem::start(&system_config, vec![spec])
        .await
        .unwrap();
    let caller_inventory = inventory.clone();
    let (ops, secs, p99) = hammer(move || {
        let inventory = caller_inventory.clone();
        async move {
            inventory
                .reserve(
                    Uuid::new_v4(),
                    &[Demand {
                        variant_id: variant,
                        quantity: 1,
                    }],
                    Duration::from_secs(900),
                )
                .await
                .is_ok()
        }
    })
    .await;
    let mismatches = inventory.reconcile().await.unwrap();
    system.shutdown().await;

    db.close().await;
    let mut admin = sqlx::PgConnection::connect_with(
        &format!("{server}/postgres")
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap(),
    )
    .await
    .unwrap();
    use sqlx::Connection;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("dropping the bench database");

    let rate = ops as f64 / secs;
    println!(
        "| approach | callers | connections | reservations | seconds | per second | p99 latency |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| inventory shard actor (group commit, inserts a reservation row each) | {CALLERS} | pool of 20 | {ops} | {secs:.1} | {rate:.0} | {p99:.1} ms |"
    );
    println!("\nreconciliation mismatches after the run: {mismatches}");
    assert_eq!(
        mismatches, 0,
        "memory and PostgreSQL disagree after the run"
    );
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        let line = serde_json::json!({
            "kind": "reservations",
            "callers": CALLERS,
            "pool": 20,
            "reservations": ops,
            "seconds": secs,
            "per_s": rate,
            "p99_ms": p99,
            "mismatches": mismatches,
        });
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .expect("opening BENCH_RESULTS");
        use std::io::Write;
        writeln!(file, "{line}").expect("writing BENCH_RESULTS");
    }
}
