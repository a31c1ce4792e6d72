//! What every scenario needs: the test server, the real async-stripe client pointed at it, and a
//! webhook receiver standing in for the app, which keeps each delivery's raw body and signature.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use shop_stripe_testserver::{StripeTestServer, WebhookTarget};
use stripe::{Client, ClientBuilder};
use stripe_webhook::{Event, Webhook};
use tokio::sync::watch;

pub const SECRET_KEY: &str = "sk_test_shop_stripe_testserver";
pub const WEBHOOK_SECRET: &str = "whsec_shop_stripe_testserver";
/// Generous: a deadline, not a delay; waits end as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signature: String,
    pub payload: String,
}

impl Delivery {
    /// Verified and parsed by async-stripe-webhook, as the app will do it.
    pub fn verify(&self) -> Event {
        Webhook::construct_event(&self.payload, &self.signature, WEBHOOK_SECRET)
            .unwrap_or_else(|error| panic!("webhook did not verify: {error:?}\n{}", self.payload))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap()
    }
}

#[derive(Clone)]
struct ReceiverState {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    changes: Arc<watch::Sender<()>>,
    failures_to_answer: Arc<AtomicU32>,
}

/// A tiny webhook endpoint: answers 200 (or 500 while told to fail) and keeps what it got.
pub struct Receiver {
    url: String,
    state: ReceiverState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if state
        .failures_to_answer
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
    {
        state.changes.send_replace(());
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.deliveries.lock().unwrap().push(Delivery {
        signature,
        payload: String::from_utf8(body.to_vec()).unwrap(),
    });
    state.changes.send_replace(());
    StatusCode::OK
}

impl Receiver {
    pub async fn start() -> Self {
        let state = ReceiverState {
            deliveries: Arc::default(),
            changes: Arc::new(watch::Sender::new(())),
            failures_to_answer: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/webhook", post(receive))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, task }
    }

    pub fn target(&self) -> WebhookTarget {
        WebhookTarget {
            url: self.url.clone(),
            secret: WEBHOOK_SECRET.to_owned(),
        }
    }

    /// Answers the next `count` deliveries with a 500.
    pub fn fail_next(&self, count: u32) {
        self.state.failures_to_answer.store(count, Ordering::SeqCst);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    /// Waits (until [`DEADLINE`]) for a delivery matching `probe`.
    pub async fn wait_for<T>(&self, mut probe: impl FnMut(&[Delivery]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut changes = self.state.changes.subscribe();
        loop {
            if let Some(found) = probe(&self.deliveries()) {
                return found;
            }
            tokio::time::timeout_at(deadline, changes.changed())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no matching delivery within {DEADLINE:?}: {:#?}",
                        self.deliveries()
                    )
                })
                .unwrap();
        }
    }

    /// Waits for the event of `event_type` about `object_id`.
    pub async fn event(&self, event_type: &str, object_id: &str) -> Delivery {
        self.wait_for(|deliveries| {
            deliveries
                .iter()
                .find(|delivery| {
                    let json = delivery.json();
                    json["type"] == event_type && json["data"]["object"]["id"] == object_id
                })
                .cloned()
        })
        .await
    }
}

/// The server, the client pointed at it and the receiver it delivers to.
pub struct Stripe {
    pub server: StripeTestServer,
    pub client: Client,
    pub receiver: Receiver,
}

pub async fn start() -> Stripe {
    let receiver = Receiver::start().await;
    let server = StripeTestServer::start(receiver.target()).await.unwrap();
    let client = client_for(&server, SECRET_KEY);
    Stripe {
        server,
        client,
        receiver,
    }
}

pub fn client_for(server: &StripeTestServer, secret_key: &str) -> Client {
    ClientBuilder::new(secret_key)
        .url(server.base_url())
        .build()
        .unwrap()
}
