//! Reservations per second for one hot variant at 256 concurrent callers: through the inventory
//! shard actor (single writer, group commit) and the naive way in PostgreSQL (every caller runs
//! `UPDATE product_variants SET stock = stock - 1 WHERE id = $1 AND stock >= 1`), in one run.
//!
//! `cargo bench --bench reservations` (PostgreSQL on 127.0.0.1:5432, or BENCH_POSTGRES_URL).
//! Writes nothing: paste the printed table into docs/benchmarks.md.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shop::config::{DatabaseSettings, Profile, Settings};
use shop_actors::inventory::{Demand, Inventory, InventoryConfig};
use shop_actors::{ActorSystem, ActorSystemConfig, RestartPolicy, Slot};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
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

    let max_connections: i64 =
        sqlx::query_scalar("SELECT current_setting('max_connections')::bigint")
            .fetch_one(&db)
            .await
            .unwrap();
    let naive_connections = (CALLERS as i64).min(max_connections - 20).max(1) as u32;

    // The actor way.
    let variant = hot_variant(&db).await;
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
        },
        RestartPolicy::default(),
        Slot::empty("inventory_supervisor"),
    );
    let system = ActorSystem::start(&system_config, vec![spec])
        .await
        .unwrap();
    let actor_inventory = inventory.clone();
    let (actor_ops, actor_secs, actor_p99) = hammer(move || {
        let inventory = actor_inventory.clone();
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

    // The naive way: row locks on one hot row.
    let naive_variant = hot_variant(&db).await;
    let pool = PgPoolOptions::new()
        .max_connections(naive_connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&format!("{server}/{name}"))
        .await
        .unwrap();
    let naive_pool = pool.clone();
    let (naive_ops, naive_secs, naive_p99) = hammer(move || {
        let pool = naive_pool.clone();
        async move {
            sqlx::query(
                "UPDATE product_variants SET stock = stock - 1 WHERE id = $1 AND stock >= 1",
            )
            .bind(naive_variant)
            .execute(&pool)
            .await
            .is_ok_and(|done| done.rows_affected() == 1)
        }
    })
    .await;
    pool.close().await;
    db.close().await;
    let mut admin = sqlx::PgConnection::connect_with(
        &format!("{server}/postgres")
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap(),
    )
    .await
    .unwrap();
    use sqlx::Connection;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;

    let actor_rate = actor_ops as f64 / actor_secs;
    let naive_rate = naive_ops as f64 / naive_secs;
    println!(
        "| approach | callers | connections | reservations | seconds | per second | p99 latency |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| inventory shard actor (group commit, inserts a reservation row each) | {CALLERS} | pool of 20 | {actor_ops} | {actor_secs:.1} | {actor_rate:.0} | {actor_p99:.1} ms |"
    );
    println!(
        "| naive `UPDATE ... WHERE stock >= 1` | {CALLERS} | {naive_connections} | {naive_ops} | {naive_secs:.1} | {naive_rate:.0} | {naive_p99:.1} ms |"
    );
    println!(
        "\nratio actor / naive: {:.2}x (reconciliation mismatches after the actor run: {mismatches})",
        actor_rate / naive_rate
    );
}
