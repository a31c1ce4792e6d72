//! The one place where actors are measured. Every actor kind implements [`ShopActor`] and is run
//! inside [`Instrumented`], which reports `actor_messages_total`, `actor_message_duration_seconds`,
//! `actor_mailbox_depth` and `actor_alive`, all labelled by kind. ractor does not expose a mailbox's
//! length, so the depth is counted where messages are sent (the typed [`Mailbox`]) and where they are
//! received (the wrapper's `handle`). Messages are wrapped in an [`Envelope`] that only a `Mailbox`
//! can build, so no message can reach an actor without being counted.
//!
//! The envelope also carries the sender's span when traces are exported ([`trace_messages`]):
//! each message is handled in a span of its own (named by the actor kind) whose parent is the
//! span that sent it, so one checkout is one trace across the cart actor, the supervisors, the
//! saga and the shards. An actor may give its messages a parent of its own instead
//! ([`ShopActor::span`]), linked to the sender's.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use tracing::{Instrument, Span};

/// Whether messages carry their sender's span. Off, nothing is captured or created per message.
static TRACED: AtomicBool = AtomicBool::new(false);

/// Turns the spans of messages on: the server does once it exports traces.
pub fn trace_messages(on: bool) {
    TRACED.store(on, Ordering::Relaxed);
}

/// Whether traces are exported (what [`trace_messages`] last said): the one flag the server's
/// telemetry reads too.
pub fn traced() -> bool {
    TRACED.load(Ordering::Relaxed)
}

/// The current span when messages are traced, else [`Span::none`]: what an actor hands on to
/// work it starts outside a message (a child actor's own span).
pub fn sending_span() -> Span {
    if traced() {
        Span::current()
    } else {
        Span::none()
    }
}

/// Why a message could not be answered. The http layer turns each into 503.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ActorError {
    #[error("the {kind} actor did not answer within {timeout:?}")]
    Timeout {
        kind: &'static str,
        timeout: Duration,
    },
    #[error("the {kind} actor is not running")]
    Unavailable { kind: &'static str },
    /// The fence refused the write: another node took the partition of the key (see
    /// [`crate::partition`]). Nothing was written; the tree here is stopping.
    #[error("this node no longer owns the partition of this key; nothing was written")]
    NotOwner,
}

/// The behaviour of one actor kind. Mirrors [`ractor::Actor`], but every callback receives a
/// [`Mailbox`] to itself instead of a raw `ActorRef`, and the kind names its metrics.
pub trait ShopActor: Send + Sync + Sized + 'static {
    /// The `kind` label of this actor's metrics, e.g. `cart` or `inventory_shard`.
    const KIND: &'static str;
    type Msg: Send + 'static;
    type State: Send + 'static;
    type Arguments: Send + 'static;

    fn pre_start(
        &self,
        myself: Mailbox<Self::Msg>,
        args: Self::Arguments,
    ) -> impl Future<Output = Result<Self::State, ActorProcessingErr>> + Send;

    fn handle(
        &self,
        myself: Mailbox<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send;

    /// Runs on a clean stop (not after a kill or a panic); flush here.
    fn post_stop(
        &self,
        _myself: Mailbox<Self::Msg>,
        _state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        async { Ok(()) }
    }

    /// The span this actor's messages are handled under, when it is not their sender's: an order
    /// saga's, so that a payment event from a webhook joins the trace of the order's checkout.
    /// The sender's span is then a link ("follows from").
    fn span<'a>(&self, _message: &Self::Msg, _state: &'a Self::State) -> Option<&'a Span> {
        None
    }

    /// Supervisors override this; the default stops on any child exit, as ractor does.
    fn handle_supervisor_evt(
        &self,
        myself: Mailbox<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        async move {
            if matches!(
                event,
                SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..)
            ) {
                myself.cell().stop(None);
            }
            Ok(())
        }
    }
}

/// A message on its way to an actor. Only [`Mailbox`] builds one, so every delivery is counted.
pub struct Envelope<M> {
    message: M,
    /// The span the message was sent from ([`Span::none`] when traces are off).
    sender: Span,
}

impl<M> Envelope<M> {
    fn new(message: M) -> Self {
        Self {
            message,
            sender: sending_span(),
        }
    }
}

/// The typed handle of one running actor: the only way to send it messages.
pub struct Mailbox<M> {
    actor: ActorRef<Envelope<M>>,
    depth: Arc<AtomicI64>,
    kind: &'static str,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            depth: self.depth.clone(),
            kind: self.kind,
        }
    }
}

impl<M: Send + 'static> Mailbox<M> {
    fn enqueued(&self) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("actor_mailbox_depth", "kind" => self.kind).increment(1.0);
    }

    fn not_enqueued(&self) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("actor_mailbox_depth", "kind" => self.kind).decrement(1.0);
    }

    /// Fire and forget.
    pub fn cast(&self, message: M) -> Result<(), ActorError> {
        self.enqueued();
        self.actor.cast(Envelope::new(message)).map_err(|_| {
            self.not_enqueued();
            ActorError::Unavailable { kind: self.kind }
        })
    }

    /// Ask and wait for the answer, at most `timeout`.
    pub async fn call<R: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<R, ActorError> {
        self.enqueued();
        let sent = self
            .actor
            .call(|port| Envelope::new(build(port)), Some(timeout))
            .await;
        match sent {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(ActorError::Timeout {
                kind: self.kind,
                timeout,
            }),
            Ok(CallResult::SenderError) => Err(ActorError::Unavailable { kind: self.kind }),
            Err(_) => {
                self.not_enqueued();
                Err(ActorError::Unavailable { kind: self.kind })
            }
        }
    }

    /// Sends `message()` every `every` (first after one period) until the actor is gone: the
    /// timers of shards and carts.
    pub fn cast_every(&self, every: Duration, message: fn() -> M) {
        let mailbox = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                if mailbox.cast(message()).is_err() {
                    break;
                }
            }
        });
    }

    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// Runs a [`ShopActor`] as a ractor actor and measures it.
pub struct Instrumented<A>(pub A);

/// Lives exactly as long as the actor's state, which ractor drops however the actor ends (stop,
/// kill or panic), so `actor_alive` and the residual mailbox depth are settled even when
/// `post_stop` does not run.
struct AliveGuard {
    kind: &'static str,
    depth: Arc<AtomicI64>,
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        metrics::gauge!("actor_alive", "kind" => self.kind).decrement(1.0);
        let undelivered = self.depth.swap(0, Ordering::Relaxed);
        if undelivered != 0 {
            metrics::gauge!("actor_mailbox_depth", "kind" => self.kind)
                .decrement(undelivered as f64);
        }
    }
}

pub struct InstrumentedState<S> {
    inner: S,
    depth: Arc<AtomicI64>,
    _alive: AliveGuard,
}

impl<A: ShopActor> Instrumented<A> {
    fn mailbox(myself: &ActorRef<Envelope<A::Msg>>, depth: &Arc<AtomicI64>) -> Mailbox<A::Msg> {
        Mailbox {
            actor: myself.clone(),
            depth: depth.clone(),
            kind: A::KIND,
        }
    }
}

impl<A: ShopActor> Actor for Instrumented<A> {
    type Msg = Envelope<A::Msg>;
    type State = InstrumentedState<A::State>;
    type Arguments = (A::Arguments, Arc<AtomicI64>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (args, depth): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Not boxed here: ractor boxes pre_start and post_stop itself, only the handlers of
        // messages and supervision events run inline in its receive loop.
        let inner = self
            .0
            .pre_start(Self::mailbox(&myself, &depth), args)
            .await?;
        metrics::gauge!("actor_alive", "kind" => A::KIND).increment(1.0);
        // The kind's restart counter exists from its first start, at 0: a restart is then an
        // increase that `increase(actor_restarts_total[10m])` sees, not a series born at 1.
        metrics::counter!("actor_restarts_total", "kind" => A::KIND).increment(0);
        Ok(InstrumentedState {
            inner,
            depth: depth.clone(),
            _alive: AliveGuard {
                kind: A::KIND,
                depth,
            },
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let depth = &state.depth;
        depth.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("actor_mailbox_depth", "kind" => A::KIND).decrement(1.0);
        let started = Instant::now();
        // Boxed: ractor keeps each actor's receive loop as one future, sized for the largest
        // state it can be in. Inline, a handler's whole state machine (its SQL futures with
        // theirs) was part of every idle actor; boxed, it is allocated only while a message is
        // handled (one allocation per message, beside the reply channels it already makes).
        let Envelope { message, sender } = envelope;
        // A message nobody traced sent (a timer's tick, a broker delivery) gets no span of its
        // own: a trace per tick would bury the ones that matter.
        let span = match (traced(), self.0.span(&message, &state.inner)) {
            (false, _) => None,
            (true, Some(own)) if !own.is_none() => {
                let span = tracing::info_span!(parent: own, "actor", otel.name = A::KIND);
                span.follows_from(&sender);
                Some(span)
            }
            (true, _) if sender.is_none() => None,
            (true, _) => Some(tracing::info_span!(parent: &sender, "actor", otel.name = A::KIND)),
        };
        let handled = Box::pin(self.0.handle(
            Self::mailbox(&myself, depth),
            message,
            &mut state.inner,
        ));
        let result = match span {
            Some(span) => handled.instrument(span).await,
            None => handled.await,
        };
        metrics::histogram!("actor_message_duration_seconds", "kind" => A::KIND)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("actor_messages_total", "kind" => A::KIND).increment(1);
        result
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mailbox = Self::mailbox(&myself, &state.depth);
        self.0.post_stop(mailbox, &mut state.inner).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mailbox = Self::mailbox(&myself, &state.depth);
        Box::pin(
            self.0
                .handle_supervisor_evt(mailbox, event, &mut state.inner),
        )
        .await
    }
}

/// Spawns `actor` under `name`, linked to `supervisor` when given, and returns its typed handle.
pub async fn spawn<A: ShopActor>(
    name: Option<String>,
    actor: A,
    args: A::Arguments,
    supervisor: Option<ActorCell>,
) -> Result<(Mailbox<A::Msg>, tokio::task::JoinHandle<()>), SpawnErr> {
    let depth = Arc::new(AtomicI64::new(0));
    let wrapped = Instrumented(actor);
    let (actor, join) = match supervisor {
        Some(parent) => Actor::spawn_linked(name, wrapped, (args, depth.clone()), parent).await?,
        None => Actor::spawn(name, wrapped, (args, depth.clone())).await?,
    };
    Ok((
        Mailbox {
            actor,
            depth,
            kind: A::KIND,
        },
        join,
    ))
}

/// Where the current incarnation of a supervised actor lives. A supervisor writes the new handle
/// after each restart, so holders of the slot never talk to a dead actor for long.
pub struct Slot<M> {
    kind: &'static str,
    current: Arc<RwLock<Option<Mailbox<M>>>>,
}

impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            current: self.current.clone(),
        }
    }
}

impl<M: Send + 'static> Slot<M> {
    pub fn empty(kind: &'static str) -> Self {
        Self {
            kind,
            current: Arc::new(RwLock::new(None)),
        }
    }

    pub fn fill(&self, mailbox: Mailbox<M>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Some(mailbox);
    }

    /// The actor is down (its supervisor is restarting it): callers get `Unavailable` at once.
    pub fn clear(&self) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = None;
    }

    pub fn get(&self) -> Result<Mailbox<M>, ActorError> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current
            .clone()
            .ok_or(ActorError::Unavailable { kind: self.kind })
    }
}
