//! The supervisor when a restart itself fails: it retries with backoff without blocking its
//! mailbox, the child's slot says "unavailable" meanwhile, and a child that cannot come back makes
//! the tree stop with a reason instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shop_actors::ractor::ActorProcessingErr;
use shop_actors::{
    ActorError, ActorSystem, ActorSystemConfig, ChildSpec, Mailbox, RestartPolicy, ShopActor, Slot,
};
use uuid::Uuid;

/// What the flaky child's starts saw, shared with the test.
#[derive(Default)]
struct Record {
    /// Starts still to fail; `usize::MAX` fails for ever.
    failures_left: AtomicUsize,
    /// Every start, successful or not.
    starts: Mutex<Vec<Instant>>,
    /// Failed starts during which the child's slot answered `Unavailable`.
    saw_unavailable: AtomicUsize,
}

/// A child whose `pre_start` fails while `failures_left` says so, as a shard's does while
/// PostgreSQL is unreachable.
struct Flaky {
    record: Arc<Record>,
    slot: Slot<()>,
}

impl ShopActor for Flaky {
    const KIND: &'static str = "test_flaky";
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: Mailbox<()>, _: ()) -> Result<(), ActorProcessingErr> {
        self.record
            .starts
            .lock()
            .expect("starts")
            .push(Instant::now());
        let fail = self
            .record
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                usize::MAX => Some(usize::MAX),
                left => Some(left - 1),
            })
            .is_ok();
        if fail {
            if matches!(
                self.slot.get(),
                Err(ActorError::Unavailable { kind: "test_flaky" })
            ) {
                self.record.saw_unavailable.fetch_add(1, Ordering::SeqCst);
            }
            return Err("the database is unreachable".into());
        }
        Ok(())
    }

    async fn handle(&self, _: Mailbox<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

async fn start_with_flaky(policy: RestartPolicy) -> (ActorSystem, Slot<()>, Arc<Record>) {
    let prefix = format!("restart-{}-", Uuid::new_v4().simple());
    let slot = Slot::empty(Flaky::KIND);
    let record = Arc::new(Record::default());
    let (for_child, child_slot) = (record.clone(), slot.clone());
    let spec = ChildSpec::new(format!("{prefix}flaky"), slot.clone(), move || {
        let flaky = Flaky {
            record: for_child.clone(),
            slot: child_slot.clone(),
        };
        (flaky, ())
    });
    let config = ActorSystemConfig {
        name_prefix: prefix,
        restart: policy,
        stop_timeout: Duration::from_secs(5),
    };
    let system = ActorSystem::start(&config, vec![spec])
        .await
        .expect("the tree starts");
    (system, slot, record)
}

fn starts(record: &Record) -> Vec<Instant> {
    record.starts.lock().expect("starts").clone()
}

/// Polls `check` every 10 ms until it holds, or fails the test after `deadline`.
async fn wait_until(deadline: Duration, what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_child_whose_restart_fails_is_retried_with_backoff_until_it_runs() {
    let policy = RestartPolicy {
        max_restarts: 5,
        within: Duration::from_secs(30),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
    };
    let (system, slot, record) = start_with_flaky(policy).await;
    let first = system.child("flaky").await.unwrap().expect("flaky running");

    // The next four starts fail, as while PostgreSQL is unreachable.
    record.failures_left.store(4, Ordering::SeqCst);
    first.kill();
    wait_until(Duration::from_secs(5), "a failed restart", || {
        starts(&record).len() >= 2
    })
    .await;
    // The supervisor answers while it waits to retry: it is not sleeping in a handler, since the
    // child is still down when the answer is made.
    assert_eq!(system.child("flaky").await.unwrap(), None);
    assert!(matches!(
        slot.get(),
        Err(ActorError::Unavailable { kind: "test_flaky" })
    ));

    wait_until(Duration::from_secs(10), "the child to run again", || {
        slot.get().is_ok()
    })
    .await;
    let second = system.child("flaky").await.unwrap().expect("flaky back");
    assert_ne!(second.get_id(), first.get_id());
    // One first start, four failed restarts, one that worked.
    let starts = starts(&record);
    assert_eq!(starts.len(), 6);
    assert_eq!(record.saw_unavailable.load(Ordering::SeqCst), 4);
    // The first restart is immediate; the next ones wait 100, 200, 400 ms, less up to half.
    for (gap, at_least) in starts[2..]
        .iter()
        .zip(&starts[1..])
        .map(|(later, earlier)| later.duration_since(*earlier))
        .zip([50, 100, 200, 400])
    {
        assert!(
            gap >= Duration::from_millis(at_least),
            "retried after {gap:?}, before the backoff of {at_least} ms"
        );
    }
    assert!(system.is_running());
    assert_eq!(system.exit(), None);
    slot.get()
        .unwrap()
        .cast(())
        .expect("the child takes messages");

    system.shutdown().await;
    assert_eq!(system.exit(), Some(Ok(())));
    assert_eq!(system.stopped().await, Ok(()));
}

#[tokio::test]
async fn a_child_that_never_comes_back_stops_the_tree_with_a_reason() {
    let policy = RestartPolicy {
        max_restarts: 5,
        within: Duration::from_millis(800),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let (system, slot, record) = start_with_flaky(policy).await;
    let first = system.child("flaky").await.unwrap().expect("flaky running");

    record.failures_left.store(usize::MAX, Ordering::SeqCst);
    first.kill();
    let stopped = tokio::time::timeout(Duration::from_secs(10), system.stopped())
        .await
        .expect("the tree gives up instead of retrying for ever");

    let error = stopped.expect_err("giving up is an error");
    assert!(error.0.contains("flaky"), "{error}");
    assert!(error.0.contains("could not be restarted"), "{error}");
    assert_eq!(system.exit(), Some(Err(error)));
    // It kept trying until the restart window was over, not just once.
    assert!(starts(&record).len() >= 4, "{:?}", starts(&record).len());
    wait_until(Duration::from_secs(5), "the root to stop", || {
        !system.is_running()
    })
    .await;
    assert!(slot.get().is_err());
}

/// A child that records whether its `post_stop` ran (a shard writes what it decided there).
struct Drains {
    drained: Arc<AtomicUsize>,
}

impl ShopActor for Drains {
    const KIND: &'static str = "test_drains";
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: Mailbox<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(&self, _: Mailbox<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(&self, _: Mailbox<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        self.drained.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct DomainKind;
impl shop_actors::root::SupervisorKind for DomainKind {
    const KIND: &'static str = "test_domain_supervisor";
}

/// A shutdown stops the children of a domain supervisor too, so each runs its `post_stop`: ractor
/// would kill them when their supervisor stops, and a killed child does not.
#[tokio::test]
async fn a_shutdown_stops_the_children_of_domain_supervisors_so_they_drain() {
    let prefix = format!("drain-{}-", Uuid::new_v4().simple());
    let drained = Arc::new(AtomicUsize::new(0));
    let children = (0..3)
        .map(|i| {
            let drained = drained.clone();
            ChildSpec::new(
                format!("{prefix}child-{i}"),
                Slot::empty(Drains::KIND),
                move || {
                    (
                        Drains {
                            drained: drained.clone(),
                        },
                        (),
                    )
                },
            )
        })
        .collect();
    let domain = ChildSpec::supervisor::<DomainKind>(
        format!("{prefix}domain"),
        Slot::empty("test_domain_supervisor"),
        children,
        RestartPolicy::default(),
        Duration::from_secs(5),
    );
    let config = ActorSystemConfig {
        name_prefix: prefix,
        restart: RestartPolicy::default(),
        stop_timeout: Duration::from_secs(5),
    };
    let system = ActorSystem::start(&config, vec![domain])
        .await
        .expect("the tree starts");
    system.shutdown().await;
    assert_eq!(
        drained.load(Ordering::SeqCst),
        3,
        "every child ran its post_stop"
    );
}
