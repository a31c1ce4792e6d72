//! The root supervisor: starts the children of the supervision tree in order, restarts one that
//! fails (at a bounded rate), and stops them last-started-first when the process shuts down.
//!
//! The child slots, in start order, are those of `docs/ARCHITECTURE.md`: inventory supervisor,
//! coupon limiter, cart supervisor, order supervisor, payment router, outbox relay, email
//! dispatcher. Each domain adds its [`ChildSpec`] when it lands.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr, RpcReplyPort, SpawnErr, SupervisionEvent};

use crate::instrument::{self, ActorError, Mailbox, ShopActor, Slot};

/// How often a child may fail before the supervisor gives up on it and stops the tree: more than
/// `max_restarts` within `within` means the failure is not transient.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub within: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(10),
        }
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
                (children.clone(), policy, stop_timeout),
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
    /// The actor that currently fills the named child slot.
    WhereIs(String, RpcReplyPort<Option<ActorCell>>),
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    restarts: VecDeque<Instant>,
}

pub struct RootState {
    children: Vec<Child>,
    policy: RestartPolicy,
    stop_timeout: Duration,
    stopping: bool,
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
    type Arguments = (Vec<ChildSpec>, RestartPolicy, Duration);

    async fn pre_start(
        &self,
        myself: Mailbox<RootMsg>,
        (specs, policy, stop_timeout): Self::Arguments,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut children = Vec::with_capacity(specs.len());
        for spec in specs {
            let cell = spec.start(myself.cell()).await?;
            tracing::debug!(child = spec.name(), "started");
            children.push(Child {
                spec,
                cell: Some(cell),
                restarts: VecDeque::new(),
            });
        }
        Ok(RootState {
            children,
            policy,
            stop_timeout,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        _myself: Mailbox<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::Shutdown(reply) => {
                state.stopping = true;
                for child in state.children.iter_mut().rev() {
                    if let Some(cell) = child.cell.take() {
                        let stopped = cell
                            .stop_and_wait(Some("shutdown".into()), Some(state.stop_timeout))
                            .await;
                        if stopped.is_err() {
                            tracing::warn!(
                                child = child.spec.name(),
                                "did not stop in time; killed"
                            );
                            cell.kill();
                        }
                    }
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
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: Mailbox<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            _ => return Ok(()),
        };
        let Some(child) = state
            .children
            .iter_mut()
            .find(|child| child.cell.as_ref().map(ActorCell::get_id) == Some(cell.get_id()))
        else {
            return Ok(());
        };
        child.cell = None;
        if state.stopping {
            return Ok(());
        }
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|at| now.duration_since(*at) > state.policy.within)
        {
            child.restarts.pop_front();
        }
        if child.restarts.len() >= state.policy.max_restarts {
            tracing::error!(
                child = child.spec.name(),
                reason = %why,
                "restart intensity exceeded; stopping the actor tree"
            );
            myself
                .cell()
                .stop(Some(format!("{} keeps failing", child.spec.name())));
            return Ok(());
        }
        tracing::warn!(child = child.spec.name(), reason = %why, "child exited; restarting");
        child.restarts.push_back(now);
        metrics::counter!("actor_restarts_total", "kind" => child.spec.kind).increment(1);
        child.cell = Some(child.spec.start(myself.cell()).await?);
        Ok(())
    }
}

/// The running supervision tree, as the server holds it.
pub struct ActorSystem {
    root: Mailbox<RootMsg>,
    join: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
        let (root, join) = instrument::spawn(
            Some(format!("{}root", config.name_prefix)),
            RootSupervisor::default(),
            (children, config.restart, stop_timeout),
            None,
        )
        .await?;
        Ok(Self {
            root,
            join: Mutex::new(Some(join)),
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

    /// The actor now filling the child slot `slot` (tests use it to kill children).
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
