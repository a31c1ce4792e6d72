//! The actor root: a failed child is restarted and counted; a child that keeps failing is not
//! restarted forever, and the server then exits with an error (for an orchestrator to restart
//! it); a child whose restart fails while PostgreSQL is away comes back with it.

use std::time::Duration;

use secrecy::ExposeSecret;
use shop_actors::ractor::{ActorCell, ActorProcessingErr};
use shop_actors::{ChildSpec, Mailbox, ShopActor, Slot};

use crate::helpers::{TcpRelay, TestApp, eventually, metric_value, postgres_server_url};

/// A child that does nothing but exist, so the tests can kill it.
struct Probe;

impl ShopActor for Probe {
    const KIND: &'static str = "test_probe";
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: Mailbox<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(&self, _: Mailbox<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

async fn spawn_with_probe(slot: &Slot<()>, max_restarts: usize) -> TestApp {
    let slot = slot.clone();
    TestApp::spawn_with(
        |settings| settings.actors.max_restarts = max_restarts,
        move |settings| {
            let name = format!("{}probe", settings.actors.name_prefix);
            vec![ChildSpec::new(name, slot, || (Probe, ()))]
        },
    )
    .await
}

async fn restarted(app: &TestApp, previous: &ActorCell) -> ActorCell {
    let system = app.state.actors.system().expect("the tree runs");
    eventually(
        Duration::from_secs(5),
        "the probe to be restarted",
        || async {
            system
                .child("probe")
                .await
                .ok()
                .flatten()
                .filter(|cell| cell.get_id() != previous.get_id())
        },
    )
    .await
}

fn restarts(metrics: &str) -> f64 {
    metric_value(metrics, "actor_restarts_total{kind=\"test_probe\"}").unwrap_or(0.0)
}

#[tokio::test]
async fn a_killed_child_is_restarted_and_counted() {
    let slot = Slot::empty(Probe::KIND);
    let app = spawn_with_probe(&slot, 5).await;
    let before = restarts(&app.metrics().await);

    let first = app
        .state
        .actors
        .system()
        .expect("the tree runs")
        .child("probe")
        .await
        .unwrap()
        .expect("probe running");
    first.kill();
    let second = restarted(&app, &first).await;

    assert_eq!(
        second.get_name(),
        Some(format!(
            "{}probe",
            app.state.actors.system().expect("the tree runs").prefix()
        ))
    );
    // Holders of the slot now reach the new incarnation.
    assert_eq!(slot.get().unwrap().cell().get_id(), second.get_id());
    slot.get()
        .unwrap()
        .cast(())
        .expect("the restarted probe takes messages");
    let text = app.metrics().await;
    assert!(
        restarts(&text) >= before + 1.0,
        "restart not counted:\n{text}"
    );
    assert!(app.state.actors.is_running());
}

#[tokio::test]
async fn a_child_that_keeps_failing_stops_the_tree_and_the_server_exits_with_an_error() {
    let slot = Slot::empty(Probe::KIND);
    let app = spawn_with_probe(&slot, 2).await;
    let mut current = app
        .state
        .actors
        .system()
        .expect("the tree runs")
        .child("probe")
        .await
        .unwrap()
        .expect("probe");
    for _ in 0..2 {
        current.kill();
        current = restarted(&app, &current).await;
    }
    current.kill();
    // Not left running unready: the server shuts down and reports why, so `shop serve` exits
    // non-zero.
    let mut app = app;
    let exit = app.exited(Duration::from_secs(20)).await;
    let error = exit.expect_err("the server ends with an error").to_string();
    assert!(error.contains("actor tree stopped"), "{error}");
    assert!(error.contains("probe"), "{error}");
    assert!(!app.state.actors.is_running());
}

/// The PostgreSQL server's host:port, which a [`TcpRelay`] forwards to.
fn postgres_address() -> String {
    let url = reqwest::Url::parse(&postgres_server_url()).expect("a PostgreSQL URL");
    format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port().unwrap_or(5432)
    )
}

fn restart_failures(metrics: &str) -> f64 {
    metric_value(
        metrics,
        "actor_restart_failures_total{kind=\"inventory_shard\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_shard_whose_restart_fails_while_postgres_is_away_comes_back_with_it() {
    let relay = TcpRelay::start(postgres_address()).await;
    let through = relay.address.clone();
    let app = TestApp::spawn_with(
        move |settings| {
            let mut url = reqwest::Url::parse(settings.database.url.expose_secret())
                .expect("the database URL");
            let (host, port) = through.split_once(':').expect("host:port");
            url.set_host(Some(host)).expect("host");
            url.set_port(Some(port.parse().expect("port")))
                .expect("port");
            settings.database.url = url.to_string().into();
            // A refused connection fails an acquire in a second, not five.
            settings.database.acquire_timeout_secs = 1;
            // The ownership lease's connection would go through the relay too, and an owner that
            // loses it exits by design (tests/api/ownership.rs): this test is about the shards.
            settings.actors.ownership_lease = false;
        },
        |_| Vec::new(),
    )
    .await;
    assert_eq!(app.get("/health/ready").await.status(), 200);
    let inventory = &app.state.actors.inventory;
    let before = restart_failures(&app.metrics().await);

    // PostgreSQL goes away and a shard dies: its restart reloads from PostgreSQL, and fails.
    relay.cut();
    let killed = inventory.shard_cell(0).expect("shard 0 runs");
    killed.kill();
    eventually(
        Duration::from_secs(20),
        "two failed restarts of the shard",
        || async { (restart_failures(&app.metrics().await) >= before + 2.0).then_some(()) },
    )
    .await;
    // Meanwhile the shard is unavailable (callers get a 503), and the tree still runs.
    assert!(inventory.shard_cell(0).is_none());
    assert!(app.state.actors.is_running());

    relay.restore();
    let back = eventually(
        Duration::from_secs(30),
        "the shard to run again",
        || async { inventory.shard_cell(0) },
    )
    .await;
    assert_ne!(back.get_id(), killed.get_id());
    eventually(Duration::from_secs(30), "readiness back to 200", || async {
        (app.get("/health/ready").await.status() == 200).then_some(())
    })
    .await;
    assert!(app.state.actors.is_running());
    app.stop().await;
}
