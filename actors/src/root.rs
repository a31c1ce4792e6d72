//! The root supervisor: starts the children of the supervision tree in order, restarts one that
//! fails (at a bounded rate), and stops them last-started-first when the process shuts down.
//!
//! A restart can fail too (a shard reloads from PostgreSQL in its `pre_start`, and PostgreSQL may
//! be briefly unreachable). The supervisor then retries with exponential backoff, by a message to
//! itself so its mailbox keeps answering, while the child's [`Slot`] reports it unavailable. A child
//! that cannot be brought back, or keeps failing, makes the supervisor give up: the root then
//! stops the tree and [`ActorSystem::stopped`] resolves with the reason, so the process exits
//! non-zero and an orchestrator restarts it.
//!
//! The child slots, in start order, are those of `docs/ARCHITECTURE.md`: inventory supervisor,
//! coupon limiter, cart supervisor, order supervisor, payment router, outbox relay, email
//! dispatcher. Each domain adds its [`ChildSpec`] when it lands.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr, RpcReplyPort, SpawnErr, SupervisionEvent};
use tokio::sync::watch;

use crate::instrument::{self, ActorError, Mailbox, ShopActor, Slot};

/// How often a child may fail before the supervisor gives up on it and stops the tree: more than
/// `max_restarts` exits within `within` means the failure is not transient, and so does a child
/// that stays down (every restart attempt failing) for longer than `within`.
///
/// Failed restart attempts are bounded by that time rather than by `max_restarts`: they are spaced
/// by a backoff that doubles from `backoff` to `max_backoff`, so their number only says how long
/// the outage lasted, and a dependency down for a few seconds must not stop the tree.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub within: Duration,
    /// The wait before the second attempt to restart a child (the first is immediate).
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// The wait after failed attempt number `failures` (1-based): `backoff` doubling up to
    /// `max_backoff`, then jittered down by up to half, so that siblings that failed together
    /// do not retry in lockstep against the same database.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        let full = self.backoff.saturating_mul(factor).min(self.max_backoff);
        // A randomly keyed hasher is the standard library's source of randomness.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter = (random % 1_000) as f64 / 2_000.0;
        full.mul_f64(1.0 - jitter)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ActorSystemConfig {
    /// Prepended to every registered actor name, so parallel tests don't collide in ractor's
    /// global registry.
    pub name_prefix: String,
    pub restart: RestartPolicy,
    /// How long the shutdown waits for each child to stop.
    pub stop_timeout: Duration,
}

type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// How to (re)start one child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    name: String,
    kind: &'static str,
    start: StartFn,
    /// Empties the child's slot, so callers get `Unavailable` at once while it is down.
    clear: Arc<dyn Fn() + Send + Sync>,
}

impl ChildSpec {
    /// A supervisor of kind `K` over `children`, itself a child of another supervisor.
    pub fn supervisor<K: SupervisorKind>(
        name: String,
        slot: Slot<RootMsg>,
        children: Vec<ChildSpec>,
        policy: RestartPolicy,
        stop_timeout: Duration,
    ) -> Self {
        Self::new(name, slot, move || {
            (
                Supervisor::<K>::default(),
                SupervisorArgs {
                    children: children.clone(),
                    policy,
                    stop_timeout,
                    exit: None,
                },
            )
        })
    }

    /// A child registered as `name`, built afresh by `make` on every (re)start; its current handle
    /// is written to `slot`.
    pub fn new<A, F>(name: String, slot: Slot<A::Msg>, make: F) -> Self
    where
        A: ShopActor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let registered = name.clone();
        let make = Arc::new(make);
        let emptied = slot.clone();
        let start: StartFn = Arc::new(move |supervisor: ActorCell| {
            let (name, slot, make) = (registered.clone(), slot.clone(), make.clone());
            Box::pin(async move {
                let (actor, args) = make();
                let (mailbox, _join) =
                    instrument::spawn(Some(name), actor, args, Some(supervisor)).await?;
                let cell = mailbox.cell();
                slot.fill(mailbox);
                Ok(cell)
            })
        });
        Self {
            name,
            kind: A::KIND,
            start,
            clear: Arc::new(move || emptied.clear()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        (self.start)(supervisor).await
    }
}

pub enum RootMsg {
    /// Stop every child, last started first, then answer.
    Shutdown(RpcReplyPort<()>),
    /// The actor that currently fills the named child slot (`None` while it is down).
    WhereIs(String, RpcReplyPort<Option<ActorCell>>),
    /// The supervisor's own timer: try again to start child number `child`, after `attempt`
    /// failed attempts. Stale ones (the child is up, or another attempt came first) are ignored.
    Retry { child: usize, attempt: u32 },
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    /// When the child exited, within the restart window.
    restarts: VecDeque<Instant>,
    /// Since when the child has been down, while it is.
    down_since: Option<Instant>,
    /// Failed attempts to restart it in the current outage.
    failed_attempts: u32,
}

/// How the actor tree ended: `Ok` after an orderly shutdown, else why the root stopped.
type Exit = Option<Result<(), String>>;

/// Held by the root's state, which ractor drops however the root ends (stop, kill or panic), so
/// [`ActorSystem::stopped`] always learns that the tree is gone and why.
struct ExitReport {
    sender: watch::Sender<Exit>,
    outcome: Result<(), String>,
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        self.sender.send_replace(Some(self.outcome.clone()));
    }
}

/// The arguments of a [`Supervisor`]: its children in start order and how to restart them.
pub struct SupervisorArgs {
    children: Vec<ChildSpec>,
    policy: RestartPolicy,
    stop_timeout: Duration,
    /// The root's report to [`ActorSystem`]; `None` for the supervisors below it.
    exit: Option<watch::Sender<Exit>>,
}

pub struct RootState {
    children: Vec<Child>,
    policy: RestartPolicy,
    stop_timeout: Duration,
    stopping: bool,
    exit: Option<ExitReport>,
}

/// Names a supervisor kind for its metrics.
pub trait SupervisorKind: Send + Sync + 'static {
    const KIND: &'static str;
}

pub struct Root;
impl SupervisorKind for Root {
    const KIND: &'static str = "root_supervisor";
}

/// A supervisor over a fixed, ordered list of children: the root, and domain supervisors such as
/// the inventory supervisor over its shards.
pub struct Supervisor<K>(std::marker::PhantomData<K>);

impl<K> Default for Supervisor<K> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

pub type RootSupervisor = Supervisor<Root>;

impl<K: SupervisorKind> ShopActor for Supervisor<K> {
    const KIND: &'static str = K::KIND;
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<RootMsg>,
        args: SupervisorArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut children = Vec::with_capacity(args.children.len());
        for spec in args.children {
            let cell = spec.start(myself.cell()).await?;
            tracing::debug!(child = spec.name(), "started");
            children.push(Child {
                spec,
                cell: Some(cell),
                restarts: VecDeque::new(),
                down_since: None,
                failed_attempts: 0,
            });
        }
        Ok(RootState {
            children,
            policy: args.policy,
            stop_timeout: args.stop_timeout,
            stopping: false,
            exit: args.exit.map(|sender| ExitReport {
                sender,
                outcome: Err("the root supervisor stopped unexpectedly".into()),
            }),
        })
    }

    async fn handle(
        &self,
        myself: Mailbox<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::Shutdown(reply) => {
                state.stop_children().await;
                if let Some(exit) = state.exit.as_mut() {
                    exit.outcome = Ok(());
                }
                let _ = reply.send(());
            }
            RootMsg::WhereIs(name, reply) => {
                let cell = state
                    .children
                    .iter()
                    .find(|child| child.spec.name() == name)
                    .and_then(|child| child.cell.clone());
                let _ = reply.send(cell);
            }
            RootMsg::Retry { child, attempt } => {
                let due = state
                    .children
                    .get(child)
                    .is_some_and(|child| child.cell.is_none() && child.failed_attempts == attempt);
                if due && !state.stopping {
                    Self::restart(&myself, state, child).await;
                }
            }
        }
        Ok(())
    }

    /// A supervisor that is stopped (not killed) stops its children first, last started first,
    /// each within the stop timeout: ractor would otherwise kill them once the supervisor is gone,
    /// and a killed child does not run its own `post_stop` (a shard would not write what it has
    /// decided). Children already stopped (a shutdown, a give-up) are not stopped twice.
    async fn post_stop(
        &self,
        _myself: Mailbox<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_children().await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: Mailbox<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, last_state, reason) => {
                // The old incarnation's state goes before the new one starts: what it holds (a
                // shard's locked connection, say) must not outlive it into the restart.
                drop(last_state);
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            _ => return Ok(()),
        };
        let Some(index) = state
            .children
            .iter()
            .position(|child| child.cell.as_ref().map(ActorCell::get_id) == Some(cell.get_id()))
        else {
            return Ok(());
        };
        let policy = state.policy;
        let child = &mut state.children[index];
        child.cell = None;
        (child.spec.clear)();
        if state.stopping {
            return Ok(());
        }
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|at| now.duration_since(*at) > policy.within)
        {
            child.restarts.pop_front();
        }
        if child.restarts.len() >= policy.max_restarts {
            let why = format!(
                "{} exited {} times within {:?}, last: {why}",
                child.spec.name(),
                child.restarts.len() + 1,
                policy.within
            );
            Self::give_up(&myself, state, why).await;
            return Ok(());
        }
        tracing::warn!(child = child.spec.name(), reason = %why, "child exited; restarting");
        child.restarts.push_back(now);
        child.down_since = Some(now);
        child.failed_attempts = 0;
        Self::restart(&myself, state, index).await;
        Ok(())
    }
}

impl<K: SupervisorKind> Supervisor<K> {
    /// One attempt to start child `index` again. A failure schedules the next attempt after a
    /// backoff (a message to itself, so the mailbox keeps answering meanwhile), or gives up once
    /// the child has been down for longer than the restart window.
    async fn restart(myself: &Mailbox<RootMsg>, state: &mut RootState, index: usize) {
        let policy = state.policy;
        let child = &mut state.children[index];
        metrics::counter!("actor_restarts_total", "kind" => child.spec.kind).increment(1);
        let error = match child.spec.start(myself.cell()).await {
            Ok(cell) => {
                if child.failed_attempts > 0 {
                    tracing::info!(
                        child = child.spec.name(),
                        failed_attempts = child.failed_attempts,
                        "child restarted"
                    );
                }
                child.cell = Some(cell);
                child.down_since = None;
                child.failed_attempts = 0;
                return;
            }
            Err(error) => error,
        };
        child.failed_attempts += 1;
        metrics::counter!("actor_restart_failures_total", "kind" => child.spec.kind).increment(1);
        let down_for = child.down_since.map_or(Duration::ZERO, |at| at.elapsed());
        if down_for > policy.within {
            let why = format!(
                "{} could not be restarted for {down_for:?} ({} attempts), last: {error}",
                child.spec.name(),
                child.failed_attempts
            );
            Self::give_up(myself, state, why).await;
            return;
        }
        let delay = policy.delay(child.failed_attempts);
        tracing::warn!(
            child = child.spec.name(),
            %error,
            attempt = child.failed_attempts,
            ?delay,
            "restarting the child failed; retrying"
        );
        let (mailbox, attempt) = (myself.clone(), child.failed_attempts);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The supervisor may be gone by then: nothing left to restart.
            let _ = mailbox.cast(RootMsg::Retry {
                child: index,
                attempt,
            });
        });
    }

    /// The failure is not transient: stop the other children in order, then this supervisor. Its
    /// own supervisor decides next; for the root, [`ActorSystem::stopped`] reports `why`.
    async fn give_up(myself: &Mailbox<RootMsg>, state: &mut RootState, why: String) {
        tracing::error!(
            supervisor = K::KIND,
            reason = %why,
            "restart intensity exceeded; giving up and stopping"
        );
        state.stop_children().await;
        if let Some(exit) = state.exit.as_mut() {
            exit.outcome = Err(why.clone());
        }
        myself.cell().stop(Some(why));
    }
}

impl RootState {
    /// Stops every child, last started first; one that does not stop in time is killed.
    async fn stop_children(&mut self) {
        self.stopping = true;
        for child in self.children.iter_mut().rev() {
            if let Some(cell) = child.cell.take() {
                let stopped = cell
                    .stop_and_wait(Some("shutdown".into()), Some(self.stop_timeout))
                    .await;
                if stopped.is_err() {
                    tracing::warn!(child = child.spec.name(), "did not stop in time; killed");
                    cell.kill();
                }
                (child.spec.clear)();
            }
        }
    }
}

/// The actor tree stopped without being asked to: the root gave up on a child that kept failing,
/// or died itself. The process should exit non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the actor tree stopped: {0}")]
pub struct TreeStopped(pub String);

/// The running supervision tree, as the server holds it.
pub struct ActorSystem {
    root: Mailbox<RootMsg>,
    join: Mutex<Option<tokio::task::JoinHandle<()>>>,
    exit: watch::Receiver<Exit>,
    prefix: String,
}

impl ActorSystem {
    pub async fn start(
        config: &ActorSystemConfig,
        children: Vec<ChildSpec>,
    ) -> Result<Self, SpawnErr> {
        let stop_timeout = if config.stop_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            config.stop_timeout
        };
        let (exit, exited) = watch::channel(None);
        let (root, join) = instrument::spawn(
            Some(format!("{}root", config.name_prefix)),
            RootSupervisor::default(),
            SupervisorArgs {
                children,
                policy: config.restart,
                stop_timeout,
                exit: Some(exit),
            },
            None,
        )
        .await?;
        Ok(Self {
            root,
            join: Mutex::new(Some(join)),
            exit: exited,
            prefix: config.name_prefix.clone(),
        })
    }

    /// The registered name of a child slot, e.g. `child_name("inventory")`.
    pub fn child_name(prefix: &str, slot: &str) -> String {
        format!("{prefix}{slot}")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The actor now filling the child slot `slot` (tests use it to kill children); `None`
    /// while the child is down.
    pub async fn child(&self, slot: &str) -> Result<Option<ActorCell>, ActorError> {
        let name = Self::child_name(&self.prefix, slot);
        self.root
            .call(
                |reply| RootMsg::WhereIs(name, reply),
                Duration::from_secs(5),
            )
            .await
    }

    /// Whether the root is still running (it stops itself when a child keeps failing).
    pub fn is_running(&self) -> bool {
        self.join
            .lock()
            .map(|join| join.as_ref().is_some_and(|join| !join.is_finished()))
            .unwrap_or(false)
    }

    /// Resolves once the tree has stopped: `Ok` after [`ActorSystem::shutdown`], an error with
    /// the reason when the root gave up on a child (or died).
    pub async fn stopped(&self) -> Result<(), TreeStopped> {
        let mut exit = self.exit.clone();
        let outcome = match exit.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            // The report is sent before its sender goes, so this is not expected.
            Err(_) => Some(Err("the root supervisor is gone".into())),
        };
        match outcome {
            Some(Err(why)) => Err(TreeStopped(why)),
            _ => Ok(()),
        }
    }

    /// How the tree ended, once it has: `Some(Err)` when it stopped without being asked to.
    pub fn exit(&self) -> Option<Result<(), TreeStopped>> {
        self.exit
            .borrow()
            .clone()
            .map(|outcome| outcome.map_err(TreeStopped))
    }

    /// Stops the children last-started-first, then the root, and waits for it.
    pub async fn shutdown(&self) {
        let _ = self
            .root
            .call(RootMsg::Shutdown, Duration::from_secs(60))
            .await;
        self.root.cell().stop(Some("shutdown".into()));
        let join = self.join.lock().ok().and_then(|mut join| join.take());
        if let Some(join) = join {
            let _ = join.await;
        }
    }
}
