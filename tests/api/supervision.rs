//! The actor root: a failed child is restarted and counted; a child that keeps failing is not
//! restarted forever.

use std::time::Duration;

use shop_actors::ractor::{ActorCell, ActorProcessingErr};
use shop_actors::{ChildSpec, Mailbox, ShopActor, Slot};

use crate::helpers::{TestApp, eventually, metric_value};

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
    let system = app.state.actors.system();
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
        .child("probe")
        .await
        .unwrap()
        .expect("probe running");
    first.kill();
    let second = restarted(&app, &first).await;

    assert_eq!(
        second.get_name(),
        Some(format!("{}probe", app.state.actors.system().prefix()))
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
async fn a_child_that_keeps_failing_stops_the_tree_and_readiness_says_so() {
    let slot = Slot::empty(Probe::KIND);
    let app = spawn_with_probe(&slot, 2).await;
    let mut current = app
        .state
        .actors
        .system()
        .child("probe")
        .await
        .unwrap()
        .expect("probe");
    for _ in 0..2 {
        current.kill();
        current = restarted(&app, &current).await;
    }
    current.kill();
    eventually(Duration::from_secs(5), "the tree to stop", || async {
        (!app.state.actors.is_running()).then_some(())
    })
    .await;
    assert_eq!(app.get("/health/ready").await.status(), 503);
}
