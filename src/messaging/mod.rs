//! Messages that leave the process: the transactional outbox, the relay that publishes it (to
//! RabbitMQ with publisher confirms, or straight to the dispatcher in memory mode), and the email
//! dispatcher that turns order events and account tokens into exactly one email each.
//!
//! ```text
//! producer tx ──enqueue──▶ outbox ──NOTIFY/poll──▶ OutboxRelay ──confirm──▶ exchange ──order.*──▶ email queue
//!                                                      │ (jobs.backend = memory)                  │
//!                                                      └────────────handover──────────▶ EmailDispatcher ──▶ SMTP / .eml
//! ```

pub mod broker;
pub mod dispatcher;
pub mod email;
pub mod outbox;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

pub use dispatcher::{DispatchMsg, EmailDispatcher};
pub use outbox::{
    AccountEmail, AccountEmailKind, OrderEmail, OrderEmailKind, OrderEmailLine, PasswordResetEmail,
    ShippingAddress, enqueue,
};
pub use relay::{OutboxRelay, RelayMsg};

use crate::config::{JobsBackend, Settings};
use broker::Topology;
use email::{EmailRenderer, Mailer};

/// What the messaging actors share, built once from the settings: the broker topology (when
/// `jobs.backend = rabbitmq`), the renderer and the mailer. Readiness checks go through it too.
#[derive(Clone)]
pub struct Messaging {
    pub broker: Option<Topology>,
    pub renderer: Arc<EmailRenderer>,
    pub mailer: Mailer,
    pub retry: RetryPolicy,
}

impl Messaging {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            broker: (settings.jobs.backend == JobsBackend::Rabbitmq)
                .then(|| Topology::from_settings(&settings.amqp)),
            renderer: Arc::new(EmailRenderer::new(
                &settings.email.from,
                &settings.email.link_base_url,
            )?),
            mailer: Mailer::from_settings(settings)?,
            retry: RetryPolicy {
                max_attempts: settings.email.max_attempts.max(1),
                base: Duration::from_millis(settings.email.retry_base_ms),
                max: Duration::from_millis(settings.email.retry_max_ms),
            },
        })
    }

    /// Readiness of RabbitMQ: `None` when the jobs backend is in process.
    pub async fn check_broker(&self) -> Option<Result<(), String>> {
        let broker = self.broker.as_ref()?;
        Some(broker.check().await.map_err(|e| e.to_string()))
    }

    /// Readiness of the SMTP server: `None` when emails go to files.
    pub async fn check_smtp(&self) -> Option<Result<(), String>> {
        self.mailer.check().await
    }
}

/// How often and how patiently a failing email (or broker) is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per email before it is dead-lettered.
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Exponential: base, 2·base, 4·base, ... capped at `max`, after failure number `failures`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A background task that ends with the state that owns it, however the actor ends (ractor drops
/// the state after a stop, a kill or a panic).
pub(crate) struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
