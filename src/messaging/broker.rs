//! RabbitMQ through lapin: connecting (with a deadline) and declaring the topology both the relay
//! and the dispatcher rely on. Declarations are idempotent, so every (re)connection declares again
//! and either side may start first.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};

use crate::config::AmqpSettings;

/// The routing keys of the email queue: every order event and every account email.
pub const EMAIL_BINDINGS: [&str; 2] = ["order.*", "account.*"];

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("amqp: no answer within {0:?}")]
    Timeout(Duration),
    #[error("amqp: the broker refused message {0}")]
    Nacked(uuid::Uuid),
}

/// Names and limits of the AMQP side, from `[amqp]`.
#[derive(Debug, Clone)]
pub struct Topology {
    pub url: SecretString,
    pub exchange: String,
    pub email_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub prefetch: u16,
    pub timeout: Duration,
}

impl Topology {
    pub fn from_settings(amqp: &AmqpSettings) -> Self {
        Self {
            url: amqp.url.clone(),
            exchange: amqp.exchange.clone(),
            email_queue: amqp.email_queue.clone(),
            dead_letter_exchange: amqp.dead_letter_exchange.clone(),
            dead_letter_queue: amqp.dead_letter_queue.clone(),
            prefetch: amqp.prefetch,
            timeout: Duration::from_secs(amqp.timeout_secs),
        }
    }

    /// Opens a connection, or fails within `timeout` (a half-open broker must not hang the relay).
    pub async fn connect(&self) -> Result<Connection, BrokerError> {
        let connect = Connection::connect(
            self.url.expose_secret(),
            ConnectionProperties::default().with_connection_name("shop".into()),
        );
        within(self.timeout, connect).await
    }

    /// Declares the exchange, the email queue (dead-lettering into the DLX) bound to `order.*`
    /// and `account.*`,
    /// and the dead-letter exchange and queue. All durable.
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declare = async {
            channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            // Fanout: whatever is dead-lettered lands in the one dead-letter queue, whatever its
            // routing key.
            channel
                .exchange_declare(
                    self.dead_letter_exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_declare(
                    self.dead_letter_queue.as_str().into(),
                    queue,
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    self.dead_letter_queue.as_str().into(),
                    self.dead_letter_exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
            );
            channel
                .queue_declare(self.email_queue.as_str().into(), queue, arguments)
                .await?;
            for binding in EMAIL_BINDINGS {
                channel
                    .queue_bind(
                        self.email_queue.as_str().into(),
                        self.exchange.as_str().into(),
                        binding.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        };
        within(self.timeout, declare).await
    }

    /// Messages waiting in the dead-letter queue (a passive declare: nothing is created). For
    /// `shop outbox`; the queue exists once the shop has run against this broker.
    pub async fn dead_letter_depth(&self) -> Result<u32, BrokerError> {
        let connection = self.connect().await?;
        let depth = async {
            let channel = connection.create_channel().await?;
            let queue = channel
                .queue_declare(
                    self.dead_letter_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>(queue.message_count())
        };
        let depth = within(self.timeout, depth).await;
        let _ = connection.close(200, "shop outbox".into()).await;
        depth
    }

    /// Readiness: a connection can be opened now.
    pub async fn check(&self) -> Result<(), BrokerError> {
        let connection = self.connect().await?;
        let _ = connection.close(200, "readiness check".into()).await;
        Ok(())
    }
}

async fn within<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BrokerError::Timeout(timeout)),
    }
}
