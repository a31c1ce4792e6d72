//! The payment router: a child of the root supervisor that forwards every stored payment event
//! to its subscribers (the order supervisor, which hands each to the right saga).
//!
//! - Subscribing is a plain call on the handle ([`PaymentRouter::subscribe`]), valid before the
//!   router runs and kept across its restarts: the subscriber list lives in the handle, not in
//!   the actor's state.
//! - An event nobody acts on is not lost: it stays in `stripe_events` with `processed_at NULL`
//!   until the saga marks it processed (through its ledger) in the transaction that commits
//!   its effect. The router replays such events to a new subscriber, to every subscriber when it
//!   (re)starts, and on a timer: an event still unprocessed one interval after it was received
//!   (its saga stopped, crashed, or was restarted with the event queued) is handed over again.
//! - Forwarding never waits on a subscriber: a [`PaymentEventSink`] hands the event to a mailbox.
//!   Replays overlap live deliveries at the edges, so a subscriber may see an event twice across
//!   a restart; the saga acts on events as triggers and only moves forward.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorProcessingErr;

use crate::instrument::{ActorError, Mailbox, ShopActor, Slot};
use crate::payments::PaymentEvent;
use crate::root::ChildSpec;

/// Where the router finds the events not acted on yet: the server's stored events.
pub trait PaymentEventStore: Send + Sync + 'static {
    /// Every event not yet processed that was received at least `age` ago, oldest first.
    fn unprocessed(&self, age: Duration) -> BoxFuture<'_, Result<Vec<PaymentEvent>, String>>;
}

/// The subscriber is gone for good (its mailbox is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the payment event subscriber is not running")]
pub struct SinkClosed;

/// Where the router forwards events. Must not block: hand the event over and return.
pub trait PaymentEventSink: Send + Sync + 'static {
    fn deliver(&self, event: PaymentEvent) -> Result<(), SinkClosed>;
}

/// A sink that casts each event, wrapped by `wrap`, to the actor currently in `slot` (for the
/// order supervisor: `MailboxSink::new(slot, OrderSupervisorMsg::Payment)`).
pub struct MailboxSink<M> {
    slot: Slot<M>,
    wrap: fn(PaymentEvent) -> M,
}

impl<M: Send + 'static> MailboxSink<M> {
    pub fn new(slot: Slot<M>, wrap: fn(PaymentEvent) -> M) -> Self {
        Self { slot, wrap }
    }
}

impl<M: Send + 'static> PaymentEventSink for MailboxSink<M> {
    fn deliver(&self, event: PaymentEvent) -> Result<(), SinkClosed> {
        let mailbox = self.slot.get().map_err(|_| SinkClosed)?;
        mailbox.cast((self.wrap)(event)).map_err(|_| SinkClosed)
    }
}

/// Names one subscription, to [`PaymentRouter::unsubscribe`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Subscribers = Arc<RwLock<Vec<(SubscriptionId, Arc<dyn PaymentEventSink>)>>>;

pub enum PaymentRouterMsg {
    /// A stored event: forward it to every subscriber.
    Deliver(PaymentEvent),
    /// Forward every unprocessed event to one subscriber (`None`: to all).
    Replay(Option<SubscriptionId>),
    /// Forward again, to everyone, every event still unprocessed one interval after it was
    /// received (the router's own timer).
    Redeliver,
}

impl fmt::Debug for PaymentRouterMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deliver(event) => write!(f, "Deliver({})", event.event_id),
            Self::Replay(to) => write!(f, "Replay({to:?})"),
            Self::Redeliver => f.write_str("Redeliver"),
        }
    }
}

/// The handle: cheap to clone, usable before the router runs.
#[derive(Clone)]
pub struct PaymentRouter {
    slot: Slot<PaymentRouterMsg>,
    subscribers: Subscribers,
    next_id: Arc<AtomicU64>,
}

impl Default for PaymentRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl PaymentRouter {
    pub const SLOT: &'static str = "payment_router";

    pub fn new() -> Self {
        Self {
            slot: Slot::empty(RouterActor::KIND),
            subscribers: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// The root supervisor's child spec: registered as `name`, reading unprocessed events from
    /// `events`, redelivering those still unprocessed every `redeliver_every`.
    pub fn child_spec(
        &self,
        name: String,
        events: Arc<dyn PaymentEventStore>,
        redeliver_every: Duration,
    ) -> ChildSpec {
        let subscribers = self.subscribers.clone();
        ChildSpec::new::<RouterActor, _>(name, self.slot.clone(), move || {
            (
                RouterActor,
                RouterArgs {
                    events: events.clone(),
                    subscribers: subscribers.clone(),
                    redeliver_every,
                },
            )
        })
    }

    /// Hands a stored event to the router.
    pub fn deliver(&self, event: PaymentEvent) -> Result<(), ActorError> {
        self.slot.get()?.cast(PaymentRouterMsg::Deliver(event))
    }

    /// Adds a subscriber; every event still unprocessed is replayed to it. Works whether or not
    /// the router runs yet (it replays to every subscriber when it starts).
    pub fn subscribe(&self, sink: Arc<dyn PaymentEventSink>) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.subscribers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((id, sink));
        if let Ok(router) = self.slot.get() {
            // Not running: its start replays to everyone, this subscriber included.
            let _ = router.cast(PaymentRouterMsg::Replay(Some(id)));
        }
        id
    }

    pub fn unsubscribe(&self, id: SubscriptionId) {
        self.subscribers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|(subscribed, _)| *subscribed != id);
    }

    /// Asks the router to replay every unprocessed event to every subscriber.
    pub fn replay(&self) -> Result<(), ActorError> {
        self.slot.get()?.cast(PaymentRouterMsg::Replay(None))
    }
}

pub struct RouterActor;

pub struct RouterArgs {
    events: Arc<dyn PaymentEventStore>,
    subscribers: Subscribers,
    redeliver_every: Duration,
}

/// How many (subscriber, event) pairs the router remembers having forwarded, so that a replay
/// overlapping a live delivery does not forward the same event twice.
const REMEMBERED: usize = 4096;

pub struct RouterState {
    events: Arc<dyn PaymentEventStore>,
    subscribers: Subscribers,
    redeliver_every: Duration,
    forwarded: HashSet<(SubscriptionId, String)>,
    order: VecDeque<(SubscriptionId, String)>,
}

impl RouterState {
    fn sinks(
        &self,
        only: Option<SubscriptionId>,
    ) -> Vec<(SubscriptionId, Arc<dyn PaymentEventSink>)> {
        self.subscribers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|(id, _)| only.is_none_or(|only| only == *id))
            .cloned()
            .collect()
    }

    fn forward(&mut self, event: &PaymentEvent, only: Option<SubscriptionId>) {
        for (id, sink) in self.sinks(only) {
            let key = (id, event.event_id.clone());
            if self.forwarded.contains(&key) {
                continue;
            }
            match sink.deliver(event.clone()) {
                Ok(()) => {
                    self.forwarded.insert(key.clone());
                    self.order.push_back(key);
                    if self.order.len() > REMEMBERED
                        && let Some(oldest) = self.order.pop_front()
                    {
                        self.forwarded.remove(&oldest);
                    }
                }
                // The event stays unprocessed; it is replayed when the subscriber comes back.
                Err(SinkClosed) => {
                    tracing::warn!(event = %event.event_id, subscriber = ?id, "payment event subscriber not running")
                }
            }
        }
    }

    /// Events unprocessed for longer than an interval were forwarded and not acted on: forget
    /// having forwarded them, and forward them again.
    async fn redeliver(&mut self) {
        if self.sinks(None).is_empty() {
            return;
        }
        match self.events.unprocessed(self.redeliver_every).await {
            Ok(stale) => {
                for event in &stale {
                    self.forwarded.retain(|(_, id)| *id != event.event_id);
                    metrics::counter!("payment_events_redelivered_total").increment(1);
                    self.forward(event, None);
                }
            }
            // Still stored; the next tick finds them.
            Err(error) => tracing::error!(%error, "payment events could not be redelivered"),
        }
    }

    async fn replay(&mut self, only: Option<SubscriptionId>) {
        if self.sinks(only).is_empty() {
            return;
        }
        match self.events.unprocessed(Duration::ZERO).await {
            Ok(pending) => {
                for event in &pending {
                    self.forward(event, only);
                }
            }
            // The events are still stored; the next replay will find them.
            Err(error) => tracing::error!(%error, "payment events could not be replayed"),
        }
    }
}

impl ShopActor for RouterActor {
    const KIND: &'static str = "payment_router";
    type Msg = PaymentRouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<PaymentRouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        // Replayed once running rather than here, so that a slow database does not hold up the
        // start of the tree.
        myself.cast(PaymentRouterMsg::Replay(None))?;
        myself.cast_every(args.redeliver_every, || PaymentRouterMsg::Redeliver);
        Ok(RouterState {
            events: args.events,
            subscribers: args.subscribers,
            redeliver_every: args.redeliver_every,
            forwarded: HashSet::new(),
            order: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        _myself: Mailbox<PaymentRouterMsg>,
        message: PaymentRouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PaymentRouterMsg::Deliver(event) => {
                metrics::counter!("payment_events_forwarded_total", "kind" => kind_label(&event))
                    .increment(1);
                state.forward(&event, None);
            }
            PaymentRouterMsg::Replay(only) => state.replay(only).await,
            PaymentRouterMsg::Redeliver => state.redeliver().await,
        }
        Ok(())
    }
}

fn kind_label(event: &PaymentEvent) -> &'static str {
    use crate::payments::PaymentEventKind::*;
    match event.kind {
        Succeeded => "succeeded",
        Failed => "failed",
        Canceled => "canceled",
        Refunded => "refunded",
    }
}
