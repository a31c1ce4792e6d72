//! The outbox relay: publishes committed outbox rows and marks them published only once they are
//! safe. With RabbitMQ that means after the broker's publisher confirm; in memory mode, after the
//! email dispatcher has settled the row. Rows are claimed with `FOR UPDATE SKIP LOCKED` inside the
//! transaction that marks them, so several relays (processes) share the work without publishing a
//! row twice at the same time; a crash before the commit republishes, which consumers de-duplicate.
//!
//! A watcher task wakes the actor on `NOTIFY outbox` (sent by the insert trigger at commit) and on
//! a short poll, the backstop for a lost notification. When the broker is unreachable the relay
//! backs off exponentially and leaves the rows where they are.
//!
//! Publishes are `mandatory`: a message no queue is bound for comes back (`basic.return`) before
//! its confirm. The broker still acks it, but nobody will ever read it, so a returned row is not
//! published: it stays in the outbox and is retried with the row's backoff until a binding exists
//! (`outbox_returned_total` counts the returns).
//!
//! After every pass the relay sets `outbox_oldest_unpublished_seconds`, the age of the oldest row
//! still waiting, which the outbox-lag alert watches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use shop_actors::ractor::ActorProcessingErr;
use shop_actors::{ActorError, Mailbox, ShopActor, Slot};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::time::Instant;
use uuid::Uuid;

use super::broker::{BrokerError, Topology};
use super::dispatcher::{DispatchMsg, Handover};
use super::outbox::{self, NOTIFY_CHANNEL, OutboxMessage};
use super::{Messaging, RetryPolicy, TaskGuard};

pub enum RelayMsg {
    /// There may be rows to publish.
    Wake,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Dispatcher(#[from] ActorError),
}

/// Where published rows go.
#[derive(Clone)]
pub enum Route {
    Broker(Topology),
    /// `jobs.backend = memory`: straight to the dispatcher's mailbox.
    InProcess(Slot<DispatchMsg>),
}

pub struct RelayArgs {
    pub db: PgPool,
    pub route: Route,
    pub poll: Duration,
    pub batch_size: i64,
    /// How long a handed-over row may take (one send, with its timeout).
    pub handover_timeout: Duration,
    pub retry: RetryPolicy,
}

impl RelayArgs {
    pub fn new(
        db: PgPool,
        messaging: &Messaging,
        dispatcher: Slot<DispatchMsg>,
        settings: &crate::config::Settings,
    ) -> Self {
        let route = match &messaging.broker {
            Some(topology) => Route::Broker(topology.clone()),
            None => Route::InProcess(dispatcher),
        };
        Self {
            db,
            route,
            poll: Duration::from_millis(settings.outbox.poll_interval_ms),
            batch_size: settings.outbox.batch_size,
            handover_timeout: Duration::from_secs(settings.smtp.timeout_secs + 5),
            retry: messaging.retry,
        }
    }
}

/// An open publishing channel in confirm mode.
struct Link {
    _connection: Connection,
    channel: Channel,
}

pub struct RelayState {
    args: RelayArgs,
    link: Option<Link>,
    failures: u32,
    retry_at: Option<Instant>,
    wake_pending: Arc<AtomicBool>,
    _watcher: TaskGuard,
}

pub struct OutboxRelay;

impl ShopActor for OutboxRelay {
    const KIND: &'static str = "outbox_relay";
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<RelayMsg>,
        args: RelayArgs,
    ) -> Result<RelayState, ActorProcessingErr> {
        let wake_pending = Arc::new(AtomicBool::new(false));
        let watcher = TaskGuard(tokio::spawn(watch_outbox(
            args.db.clone(),
            args.poll,
            myself.clone(),
            wake_pending.clone(),
        )));
        // Rows committed while no relay ran.
        wake(&myself, &wake_pending);
        Ok(RelayState {
            args,
            link: None,
            failures: 0,
            retry_at: None,
            wake_pending,
            _watcher: watcher,
        })
    }

    async fn handle(
        &self,
        myself: Mailbox<RelayMsg>,
        RelayMsg::Wake: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        state.wake_pending.store(false, Ordering::Release);
        if let Some(at) = state.retry_at {
            if Instant::now() < at {
                // Backing off; the wake scheduled with the backoff comes later. The backlog is
                // still measured: a broker that stays away is what the lag alert is for.
                state.report_backlog().await;
                return Ok(());
            }
            state.retry_at = None;
        }
        match state.relay_batch().await {
            Ok(more) => {
                state.failures = 0;
                if more {
                    wake(&myself, &state.wake_pending);
                }
            }
            Err(error) => {
                state.link = None;
                state.failures += 1;
                let delay = state.args.retry.backoff(state.failures);
                tracing::warn!(%error, ?delay, "outbox relay failed; retrying");
                metrics::counter!("outbox_relay_failures_total").increment(1);
                state.retry_at = Some(Instant::now() + delay);
                let pending = state.wake_pending.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    wake(&myself, &pending);
                });
            }
        }
        state.report_backlog().await;
        Ok(())
    }
}

/// Casts one `Wake` unless one is already waiting; false when the actor is gone.
fn wake(myself: &Mailbox<RelayMsg>, pending: &AtomicBool) -> bool {
    if pending.swap(true, Ordering::AcqRel) {
        return true;
    }
    myself.cast(RelayMsg::Wake).is_ok()
}

impl RelayState {
    /// Sets `outbox_oldest_unpublished_seconds` (the outbox-lag alert's figure) after each pass,
    /// and so at least once per poll. A failed read keeps the last value: the database being away
    /// is what readiness reports.
    async fn report_backlog(&self) {
        match outbox::oldest_unpublished_age(&self.args.db).await {
            Ok(age) => metrics::gauge!("outbox_oldest_unpublished_seconds").set(age),
            Err(error) => tracing::warn!(%error, "measuring the outbox backlog failed"),
        }
    }

    /// Relays one batch of due rows; true when there may be more.
    async fn relay_batch(&mut self) -> Result<bool, RelayError> {
        match self.args.route.clone() {
            Route::Broker(topology) => self.publish_batch(&topology).await,
            Route::InProcess(dispatcher) => self.hand_over_batch(&dispatcher).await,
        }
    }

    async fn publish_batch(&mut self, topology: &Topology) -> Result<bool, RelayError> {
        let channel = match &self.link {
            Some(link) if link.channel.status().connected() => link.channel.clone(),
            _ => {
                let connection = topology.connect().await?;
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(BrokerError::from)?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(BrokerError::from)?;
                topology.declare(&channel).await?;
                tracing::info!(exchange = %topology.exchange, "outbox relay connected");
                self.link = Some(Link {
                    _connection: connection,
                    channel: channel.clone(),
                });
                channel
            }
        };
        let mut tx = self.args.db.begin().await?;
        let rows = outbox::claim_due(&mut tx, self.args.batch_size).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(false);
        }
        let mut failure: Option<BrokerError> = None;
        let mut pending = Vec::with_capacity(rows.len());
        // Mandatory: a message no queue is bound for comes back instead of being dropped.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        for row in &rows {
            match channel
                .basic_publish(
                    topology.exchange.as_str().into(),
                    row.topic.as_str().into(),
                    options,
                    &serde_json::to_vec(&row.payload).unwrap_or_default(),
                    properties(row),
                )
                .await
            {
                Ok(confirm) => pending.push((row, confirm)),
                Err(error) => {
                    failure = Some(error.into());
                    break;
                }
            }
        }
        let deadline = Instant::now() + topology.timeout;
        let (mut confirmed, mut refused, mut returned) = (Vec::new(), Vec::new(), Vec::new());
        for (row, confirm) in pending {
            if failure.is_some() {
                break;
            }
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => confirmed.push(row.id),
                // Acked, but routed to no queue: as good as lost.
                Ok(Ok(Confirmation::Ack(Some(message)))) => returned.push((row, message)),
                Ok(Ok(_)) => refused.push(row.id),
                Ok(Err(error)) => failure = Some(error.into()),
                Err(_) => failure = Some(BrokerError::Timeout(topology.timeout)),
            }
        }
        // What the broker confirmed is marked even if the rest failed; what it did not confirm
        // stays unpublished and goes out again.
        outbox::mark_published(&mut *tx, &confirmed, None).await?;
        if !refused.is_empty() {
            let retry_in = self.args.retry.backoff(1);
            outbox::mark_failed(&mut *tx, &refused, "nacked by the broker", retry_in).await?;
        }
        for (row, message) in &returned {
            self.postpone_returned(&mut tx, topology, row, message)
                .await?;
        }
        tx.commit().await?;
        metrics::counter!("outbox_published_total").increment(confirmed.len() as u64);
        metrics::counter!("outbox_returned_total").increment(returned.len() as u64);
        if let Some(error) = failure {
            return Err(error.into());
        }
        if let Some(id) = refused.first() {
            return Err(BrokerError::Nacked(*id).into());
        }
        Ok(rows.len() as i64 >= self.args.batch_size)
    }

    /// Leaves a returned row unpublished, postponed by its own backoff (it may stay unroutable
    /// until someone binds a queue, and must not hold up the rows behind it).
    async fn postpone_returned(
        &self,
        tx: &mut sqlx::PgConnection,
        topology: &Topology,
        row: &OutboxMessage,
        message: &BasicReturnMessage,
    ) -> Result<(), RelayError> {
        let failures = row.attempts.unsigned_abs().saturating_add(1);
        let retry_in = self.args.retry.backoff(failures);
        tracing::error!(
            id = %row.id,
            topic = %row.topic,
            exchange = %topology.exchange,
            reply_code = message.reply_code,
            reply_text = %message.reply_text,
            attempt = failures,
            ?retry_in,
            "the broker returned an outbox message: no queue is bound for its topic"
        );
        let error = format!(
            "returned by the broker: {} {}",
            message.reply_code, message.reply_text
        );
        outbox::mark_failed(tx, &[row.id], &error, retry_in).await?;
        Ok(())
    }

    async fn hand_over_batch(
        &mut self,
        dispatcher: &Slot<DispatchMsg>,
    ) -> Result<bool, RelayError> {
        let dispatcher = dispatcher.get()?;
        let mut tx = self.args.db.begin().await?;
        let rows = outbox::claim_due(&mut tx, self.args.batch_size).await?;
        let count = rows.len();
        let mut failure = None;
        for row in rows {
            let (id, attempt) = (row.id, u32::try_from(row.attempts).unwrap_or(0) + 1);
            let answer = dispatcher
                .call(
                    |reply| DispatchMsg::Handover {
                        message: row,
                        attempt,
                        reply,
                    },
                    self.args.handover_timeout,
                )
                .await;
            match answer {
                Ok(Handover::Done) => outbox::mark_published(&mut *tx, &[id], None).await?,
                Ok(Handover::Retry { after, error }) => {
                    outbox::mark_failed(&mut *tx, &[id], &error, after).await?
                }
                Ok(Handover::DeadLettered { reason }) => {
                    let note = format!("dead-lettered: {reason}");
                    outbox::mark_published(&mut *tx, &[id], Some(&note)).await?
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        tx.commit().await?;
        if let Some(error) = failure {
            return Err(error.into());
        }
        Ok(count as i64 >= self.args.batch_size)
    }
}

/// Persistent, JSON, identified by the outbox id (consumers de-duplicate by it), with the
/// `traceparent` of the transaction that wrote it as a header when it has one.
fn properties(row: &OutboxMessage) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_message_id(row.id.to_string().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0))
        .with_type(row.topic.as_str().into());
    match &row.traceparent {
        Some(traceparent) => {
            let mut headers = FieldTable::default();
            headers.insert(
                TRACEPARENT.into(),
                AMQPValue::LongString(traceparent.as_str().into()),
            );
            properties.with_headers(headers)
        }
        None => properties,
    }
}

/// The header that carries a message's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Wakes the relay on every `NOTIFY outbox` and every `poll`, until the relay is gone.
async fn watch_outbox(
    db: PgPool,
    poll: Duration,
    myself: Mailbox<RelayMsg>,
    pending: Arc<AtomicBool>,
) {
    let mut listener = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if db.is_closed() {
            // The pool is closing (shutdown): holding its connection would keep close() waiting.
            return;
        }
        if listener.is_none() {
            listener = listen(&db).await;
        }
        match listener.as_mut() {
            Some(active) => tokio::select! {
                received = active.recv() => {
                    if let Err(error) = received {
                        // Dropped, so its connection goes back to the pool (which may be closing);
                        // the next round listens afresh, meanwhile the poll carries on.
                        tracing::warn!(%error, "outbox listener failed");
                        listener = None;
                        tick.tick().await;
                    }
                }
                _ = tick.tick() => {}
            },
            None => {
                tick.tick().await;
            }
        }
        if !wake(&myself, &pending) {
            return;
        }
    }
}

async fn listen(db: &PgPool) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(db).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "cannot LISTEN for outbox rows; polling");
            return None;
        }
    };
    match listener.listen(NOTIFY_CHANNEL).await {
        Ok(()) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "cannot LISTEN for outbox rows; polling");
            None
        }
    }
}

/// For tests and tools: the ids of rows not yet published.
pub async fn unpublished(db: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM outbox WHERE published_at IS NULL ORDER BY created_at")
        .fetch_all(db)
        .await
}
