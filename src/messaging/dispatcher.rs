//! The email dispatcher: turns each order event, and each account token, into exactly one email. With RabbitMQ it consumes
//! the email queue (manual acks, bounded prefetch) through a consumer task that hands deliveries
//! to the actor; in memory mode the relay hands rows over directly. Either way a delivery is
//! recorded under the unique `(order_id, kind)` in the transaction that is committed right after
//! the send succeeds, and acknowledged only after that commit; an already recorded pair is
//! acknowledged without sending. An account email is recorded on its token's row instead, where
//! the token's value is minted as it is sent (see [`DispatcherState::send_account_once`]). Transient failures are retried with backoff up to
//! `email.max_attempts`, then dead-lettered; a malformed message is dead-lettered at once.

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use shop_actors::ractor::{ActorProcessingErr, RpcReplyPort};
use shop_actors::{Mailbox, ShopActor};
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::broker::{BrokerError, Topology};
use super::email::{AccountMessage, EmailError, EmailRenderer, Mailer};
use super::outbox::{
    AccountEmail, AccountEmailKind, OrderEmail, OrderEmailKind, OutboxMessage, PasswordResetEmail,
};
use super::{Messaging, RetryPolicy, TaskGuard};
use crate::opaque_token::new_opaque_token;

pub enum DispatchMsg {
    /// A delivery from the email queue; `attempt` counts from 1.
    Delivery {
        delivery: Box<Delivery>,
        attempt: u32,
    },
    /// An outbox row from the relay (memory mode), answered once it is settled or to be retried.
    Handover {
        message: OutboxMessage,
        attempt: u32,
        reply: RpcReplyPort<Handover>,
    },
}

/// What the relay should do with a handed-over row.
#[derive(Debug)]
pub enum Handover {
    /// Sent, already sent, or not an email: mark it published.
    Done,
    /// Failed for now: try again after `after`.
    Retry { after: Duration, error: String },
    /// Given up on: mark it published with the reason; counted in `email_dead_lettered_total`.
    DeadLettered { reason: String },
}

/// What handling one message came to.
enum Outcome {
    Sent,
    AlreadySent,
    NotAnEmail,
    /// An account email that is no longer wanted: its token was spent or expired before it could
    /// be sent, or its user was deleted.
    Moot,
    Failed(EmailError),
}

enum Verdict {
    Settled,
    Retry(Duration, String),
    DeadLetter(String),
}

pub struct EmailDispatcher;

pub struct DispatcherState {
    db: PgPool,
    renderer: std::sync::Arc<EmailRenderer>,
    mailer: Mailer,
    retry: RetryPolicy,
    _consumer: Option<TaskGuard>,
}

impl ShopActor for EmailDispatcher {
    const KIND: &'static str = "email_dispatcher";
    type Msg = DispatchMsg;
    type State = DispatcherState;
    type Arguments = (PgPool, Messaging);

    async fn pre_start(
        &self,
        myself: Mailbox<DispatchMsg>,
        (db, messaging): Self::Arguments,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        // The broker may be down at start: the consumer task connects (and reconnects) on its
        // own, so the tree starts regardless.
        let consumer = messaging
            .broker
            .clone()
            .map(|topology| TaskGuard(tokio::spawn(consume(topology, messaging.retry, myself))));
        Ok(DispatcherState {
            db,
            renderer: messaging.renderer,
            mailer: messaging.mailer,
            retry: messaging.retry,
            _consumer: consumer,
        })
    }

    async fn handle(
        &self,
        myself: Mailbox<DispatchMsg>,
        message: DispatchMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatchMsg::Delivery { delivery, attempt } => {
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| Uuid::parse_str(id.as_str()).ok());
                let traceparent = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|headers| headers.inner().get(super::relay::TRACEPARENT))
                    .and_then(|value| value.as_long_string())
                    .map(|value| value.to_string());
                let outcome = match message_id {
                    Some(id) => {
                        let topic = delivery.routing_key.as_str();
                        state
                            .deliver(id, topic, &delivery.data)
                            .instrument(email_span(topic, traceparent.as_deref()))
                            .await
                    }
                    None => Outcome::Failed(EmailError::Permanent(
                        "the message has no uuid message_id".into(),
                    )),
                };
                match state.verdict(outcome, attempt) {
                    Verdict::Settled => {
                        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                            // The broker redelivers it; the delivery record makes that a no-op.
                            tracing::warn!(%error, "ack failed");
                        }
                    }
                    Verdict::Retry(after, error) => {
                        tracing::warn!(?message_id, attempt, %error, ?after, "email failed; retrying");
                        // Kept unacked (it counts against the prefetch) and handed back later, so
                        // the actor serves other messages meanwhile.
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let _ = myself.cast(DispatchMsg::Delivery {
                                delivery,
                                attempt: attempt + 1,
                            });
                        });
                    }
                    Verdict::DeadLetter(reason) => {
                        tracing::error!(?message_id, %reason, "email dead-lettered");
                        // The email queue's x-dead-letter-exchange routes it to the DLQ.
                        let nack = BasicNackOptions {
                            requeue: false,
                            multiple: false,
                        };
                        if let Err(error) = delivery.acker.nack(nack).await {
                            tracing::warn!(%error, "nack failed");
                        }
                    }
                }
            }
            DispatchMsg::Handover {
                message,
                attempt,
                reply,
            } => {
                let payload = serde_json::to_vec(&message.payload).unwrap_or_default();
                let outcome = state
                    .deliver(message.id, &message.topic, &payload)
                    .instrument(email_span(&message.topic, message.traceparent.as_deref()))
                    .await;
                let answer = match state.verdict(outcome, attempt) {
                    Verdict::Settled => Handover::Done,
                    Verdict::Retry(after, error) => Handover::Retry { after, error },
                    Verdict::DeadLetter(reason) => {
                        tracing::error!(message_id = %message.id, %reason, "email dead-lettered");
                        Handover::DeadLettered { reason }
                    }
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

/// The span of one message's email, in the trace of the transaction that wrote the message.
fn email_span(topic: &str, traceparent: Option<&str>) -> tracing::Span {
    if !crate::telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("email send", topic);
    crate::telemetry::continue_trace(&span, &crate::telemetry::Traceparent(traceparent));
    span
}

impl DispatcherState {
    /// Sends the email of one message unless its `(order_id, kind)` (or its account token) was
    /// already sent.
    async fn deliver(&self, message_id: Uuid, topic: &str, payload: &[u8]) -> Outcome {
        if let Some(kind) = AccountEmailKind::ALL
            .into_iter()
            .find(|kind| kind.topic() == topic)
        {
            return self.deliver_account(message_id, kind, payload).await;
        }
        if ![
            OrderEmailKind::Paid,
            OrderEmailKind::Cancelled,
            OrderEmailKind::Refunded,
        ]
        .iter()
        .any(|kind| kind.topic() == topic)
        {
            tracing::debug!(topic, "not an email topic; acknowledged");
            return Outcome::NotAnEmail;
        }
        let email: OrderEmail = match serde_json::from_slice(payload) {
            Ok(email) => email,
            Err(e) => {
                return Outcome::Failed(EmailError::Permanent(format!("payload: {e}")));
            }
        };
        match self.send_once(message_id, &email).await {
            Ok(true) => {
                metrics::counter!("emails_sent_total", "kind" => email.kind.as_str()).increment(1);
                Outcome::Sent
            }
            Ok(false) => {
                metrics::counter!("email_duplicates_total").increment(1);
                Outcome::AlreadySent
            }
            Err(error) => Outcome::Failed(error),
        }
    }

    /// The delivery row is inserted first and committed after the send: a concurrent duplicate
    /// (another process) waits on the unique key and then finds it taken, so it never sends too.
    /// Only a crash between the SMTP answer and the commit can send twice.
    async fn send_once(&self, message_id: Uuid, email: &OrderEmail) -> Result<bool, EmailError> {
        let db = |e: sqlx::Error| EmailError::Transient(format!("database: {e}"));
        let mut tx = self.db.begin().await.map_err(db)?;
        let claimed: Option<i32> = sqlx::query_scalar(
            r#"
            INSERT INTO email_deliveries (order_id, kind, message_id, recipient)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (order_id, kind) DO NOTHING
            RETURNING 1
            "#,
        )
        .bind(email.order_id)
        .bind(email.kind.as_str())
        .bind(message_id)
        .bind(&email.customer_email)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if claimed.is_none() {
            return Ok(false);
        }
        let message = self.renderer.message(message_id, email)?;
        self.mailer.send(message_id, &message).await?;
        if let Err(e) = tx.commit().await {
            tracing::error!(%message_id, error = %e, "email sent but its delivery was not recorded; a redelivery will send it again");
            return Err(db(e));
        }
        Ok(true)
    }

    async fn deliver_account(
        &self,
        message_id: Uuid,
        kind: AccountEmailKind,
        payload: &[u8],
    ) -> Outcome {
        let sent = match kind {
            AccountEmailKind::VerifyEmail => {
                match serde_json::from_slice::<AccountEmail>(payload) {
                    Ok(email) => {
                        self.send_account_once(message_id, kind, email.token_id)
                            .await
                    }
                    Err(e) => Err(EmailError::Permanent(format!("payload: {e}"))),
                }
            }
            AccountEmailKind::PasswordReset => {
                match serde_json::from_slice::<PasswordResetEmail>(payload) {
                    Ok(request) => self.send_reset_once(message_id, &request).await,
                    Err(e) => Err(EmailError::Permanent(format!("payload: {e}"))),
                }
            }
        };
        let outcome = match sent {
            Ok(outcome) => outcome,
            Err(error) => return Outcome::Failed(error),
        };
        match outcome {
            Outcome::Sent => {
                metrics::counter!("emails_sent_total", "kind" => kind.as_str()).increment(1)
            }
            Outcome::AlreadySent => metrics::counter!("email_duplicates_total").increment(1),
            Outcome::Moot => {
                metrics::counter!("account_emails_moot_total", "kind" => kind.as_str())
                    .increment(1);
                tracing::info!(%message_id, kind = kind.as_str(), "account email not wanted (no such account, or its token spent or expired); not sent");
            }
            Outcome::NotAnEmail | Outcome::Failed(_) => {}
        }
        outcome
    }

    /// A password reset: the token row is written under the message's id (so a redelivery finds
    /// it) in the transaction that sends it, and only if the email has an account.
    async fn send_reset_once(
        &self,
        message_id: Uuid,
        request: &PasswordResetEmail,
    ) -> Result<Outcome, EmailError> {
        let db = |e: sqlx::Error| EmailError::Transient(format!("database: {e}"));
        let mut tx = self.db.begin().await.map_err(db)?;
        let written = sqlx::query(
            r#"
            INSERT INTO account_tokens (id, user_id, purpose, expires_at)
            SELECT $1, id, $3, $4 FROM users WHERE email = $2::citext
            ON CONFLICT (id) DO NOTHING
            "#,
        )
        .bind(message_id)
        .bind(&request.email)
        .bind(AccountEmailKind::PasswordReset)
        .bind(request.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let known: bool = written.rows_affected() == 1
            || sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM account_tokens WHERE id = $1)")
                .bind(message_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        if !known {
            return Ok(Outcome::Moot);
        }
        self.send_token_in(tx, message_id, AccountEmailKind::PasswordReset, message_id)
            .await
    }

    /// Sends the email of one account token, minting the token's value as it goes: the row is
    /// locked, the value's hash and `sent_at` are written, the email is sent, and only then is
    /// the transaction committed. A concurrent duplicate waits on the row and then finds it sent;
    /// a send that fails rolls the hash back; an email whose commit is lost carries a value that
    /// was never stored, and its redelivery sends one that works. The value is never written
    /// anywhere but the email.
    async fn send_account_once(
        &self,
        message_id: Uuid,
        kind: AccountEmailKind,
        token_id: Uuid,
    ) -> Result<Outcome, EmailError> {
        let tx = self
            .db
            .begin()
            .await
            .map_err(|e| EmailError::Transient(format!("database: {e}")))?;
        self.send_token_in(tx, message_id, kind, token_id).await
    }

    async fn send_token_in(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        message_id: Uuid,
        kind: AccountEmailKind,
        token_id: Uuid,
    ) -> Result<Outcome, EmailError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            purpose: AccountEmailKind,
            expires_at: chrono::DateTime<chrono::Utc>,
            sent: bool,
            moot: bool,
            email: String,
            name: String,
        }
        let db = |e: sqlx::Error| EmailError::Transient(format!("database: {e}"));
        let row: Option<Row> = sqlx::query_as(
            r#"
            SELECT t.purpose, t.expires_at, t.sent_at IS NOT NULL AS sent,
                   (t.spent_at IS NOT NULL OR t.expires_at <= now()) AS moot,
                   u.email::text AS email, u.name
            FROM account_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.id = $1
            FOR UPDATE OF t
            "#,
        )
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            // Deleted with its user (ON DELETE CASCADE): nobody to write to.
            return Ok(Outcome::Moot);
        };
        if row.purpose != kind {
            return Err(EmailError::Permanent(format!(
                "token {token_id} is for {}, the message for {}",
                row.purpose.as_str(),
                kind.as_str()
            )));
        }
        if row.sent {
            return Ok(Outcome::AlreadySent);
        }
        if row.moot {
            return Ok(Outcome::Moot);
        }
        let token = new_opaque_token();
        sqlx::query("UPDATE account_tokens SET token_hash = $2, sent_at = now() WHERE id = $1")
            .bind(token_id)
            .bind(&token.hash)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let message = self.renderer.account_message(
            message_id,
            &AccountMessage {
                kind,
                email: &row.email,
                name: &row.name,
                token: &token.token,
                expires_at: row.expires_at,
            },
        )?;
        self.mailer.send(message_id, &message).await?;
        if let Err(e) = tx.commit().await {
            tracing::error!(%message_id, error = %e, "account email sent but its token was not stored; a redelivery will send a new one");
            return Err(db(e));
        }
        Ok(Outcome::Sent)
    }

    fn verdict(&self, outcome: Outcome, attempt: u32) -> Verdict {
        match outcome {
            Outcome::Sent | Outcome::AlreadySent | Outcome::NotAnEmail | Outcome::Moot => {
                Verdict::Settled
            }
            Outcome::Failed(EmailError::Transient(error)) if attempt < self.retry.max_attempts => {
                metrics::counter!("email_send_failures_total").increment(1);
                Verdict::Retry(self.retry.backoff(attempt), error)
            }
            Outcome::Failed(error) => {
                metrics::counter!("email_dead_lettered_total").increment(1);
                Verdict::DeadLetter(format!("after {attempt} attempt(s): {error}"))
            }
        }
    }
}

/// The consumer task: connects, declares the topology, consumes the email queue with a bounded
/// prefetch and hands each delivery to the actor; reconnects with backoff whenever the broker goes
/// away. Unacked deliveries of a lost channel are redelivered by the broker.
async fn consume(topology: Topology, retry: RetryPolicy, myself: Mailbox<DispatchMsg>) {
    let mut failures = 0u32;
    loop {
        match consume_once(&topology, &myself, &mut failures).await {
            Ok(Stopped::ActorGone) => return,
            Ok(Stopped::StreamEnded) => tracing::warn!("email consumer ended; reconnecting"),
            Err(error) => tracing::warn!(%error, "email consumer lost the broker; reconnecting"),
        }
        failures += 1;
        metrics::counter!("amqp_reconnects_total", "role" => "email_dispatcher").increment(1);
        tokio::time::sleep(retry.backoff(failures)).await;
    }
}

enum Stopped {
    ActorGone,
    StreamEnded,
}

async fn consume_once(
    topology: &Topology,
    myself: &Mailbox<DispatchMsg>,
    failures: &mut u32,
) -> Result<Stopped, BrokerError> {
    let connection = topology.connect().await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .basic_qos(topology.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            topology.email_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    *failures = 0;
    tracing::info!(queue = %topology.email_queue, "consuming emails");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let handed = myself.cast(DispatchMsg::Delivery {
            delivery: Box::new(delivery),
            attempt: 1,
        });
        if handed.is_err() {
            return Ok(Stopped::ActorGone);
        }
    }
    Ok(Stopped::StreamEnded)
}
