//! The running server and the handle a test holds: start on 127.0.0.1 port 0, the base URL for
//! the client, what was received and sent, webhook controls, and waiting on a condition with a
//! deadline. Stopped when the handle is dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::fixtures::{Fixtures, FixturesError};
use crate::ledger::Ledger;
use crate::webhooks::{
    DeliveryPolicy, DeliveryState, Outbox, StripeEvent, WebhookTarget, deliver_events,
};

/// How to start the server; `Default` has no webhook endpoint yet and the default policy.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Where events go. Events made before there is one wait for it (see
    /// [`StripeTestServer::set_webhook_target`]).
    pub webhook: Option<WebhookTarget>,
    pub delivery: DeliveryPolicy,
    /// `fixtures3.json`; default `$STRIPE_FIXTURES`, else `shared/stripe/` beside the repository.
    pub fixtures: Option<PathBuf>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Fixtures(#[from] FixturesError),
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// No event has this id.
#[derive(Debug, thiserror::Error)]
#[error("no event {0}")]
pub struct UnknownEvent(pub String);

/// The condition waited on did not hold before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("condition not met within {0:?}")]
pub struct WaitTimeout(pub Duration);

/// One API request as received, for tests to assert on (what the app sent, with which key).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The bearer token (`sk_test_...`).
    pub api_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    /// Form (POST) or query (GET) pairs, decoded, in the order sent.
    pub params: Vec<(String, String)>,
    pub status: u16,
    /// Answered from the idempotency store, without a second effect.
    pub replayed: bool,
    /// The `Request-Id` answered (`req_...`), also in the `request.id` of the events it caused.
    pub request_id: String,
}

impl RecordedRequest {
    /// The last value sent for `name` (e.g. `"amount"`, `"metadata[order_id]"`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A response kept for an idempotency key, with what identifies the request that made it.
#[derive(Debug)]
pub(crate) struct SavedResponse {
    pub(crate) fingerprint: (String, String, Vec<(String, String)>),
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) request_id: String,
}

/// Everything mutable, behind one lock: each API call runs whole under it, so two requests with
/// one idempotency key cannot both take effect and an event's snapshot matches the response.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) ledger: Ledger,
    pub(crate) outbox: Outbox,
    /// Keyed by (API key, idempotency key), as Stripe scopes keys to the account.
    pub(crate) idempotency: HashMap<(String, String), SavedResponse>,
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) faults: Vec<crate::faults::Fault>,
}

impl State {
    /// The action of the first armed fault matching the call, counting it down.
    pub(crate) fn take_fault(
        &mut self,
        method: &str,
        path: &str,
    ) -> Option<crate::faults::FaultAction> {
        let fault = self.faults.iter_mut().find(|f| f.matches(method, path))?;
        fault.times -= 1;
        Some(fault.action)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) fixtures: Fixtures,
    pub(crate) policy: DeliveryPolicy,
    state: Mutex<State>,
    pub(crate) wake_delivery: Notify,
    changes: watch::Sender<()>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the delivery worker and anyone in `wait_for`.
    pub(crate) fn notify_changed(&self) {
        self.wake_delivery.notify_one();
        self.changes.send_replace(());
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Aborts the task when dropped, so the server dies with its handle.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running Stripe-compatible server. Point the real client at [`base_url`](Self::base_url).
#[derive(Debug)]
pub struct StripeTestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: AbortOnDrop,
    _delivery: AbortOnDrop,
}

impl StripeTestServer {
    /// Starts the server delivering events to `webhook`.
    pub async fn start(webhook: WebhookTarget) -> Result<Self, StartError> {
        Self::start_with(ServerOptions {
            webhook: Some(webhook),
            ..ServerOptions::default()
        })
        .await
    }

    pub async fn start_with(options: ServerOptions) -> Result<Self, StartError> {
        let path = options.fixtures.unwrap_or_else(Fixtures::default_path);
        let fixtures = Fixtures::load(&path)?;
        let http = reqwest::Client::builder()
            .timeout(options.delivery.attempt_timeout)
            .build()
            .map_err(StartError::Http)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        let shared = Arc::new(Shared {
            fixtures,
            policy: options.delivery,
            state: Mutex::new(State {
                ledger: Ledger::default(),
                outbox: Outbox::new(options.webhook),
                idempotency: HashMap::new(),
                requests: Vec::new(),
                faults: Vec::new(),
            }),
            wake_delivery: Notify::new(),
            changes: watch::Sender::new(()),
        });
        let router = crate::api::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "stripe test server stopped");
            }
        });
        let delivery = tokio::spawn(deliver_events(Arc::clone(&shared), http));
        Ok(Self {
            shared,
            addr,
            _server: AbortOnDrop(server),
            _delivery: AbortOnDrop(delivery),
        })
    }

    /// Arms a fault (see [`crate::Fault`]); faults are tried in the order they were armed.
    pub fn inject(&self, fault: crate::Fault) {
        self.shared.state().faults.push(fault);
    }

    /// `http://127.0.0.1:{port}/`, for `ClientBuilder::new(key).url(base_url)`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (or changes) where events go; events waiting for an endpoint go out now.
    pub fn set_webhook_target(&self, target: WebhookTarget) {
        self.shared.state().outbox.set_target(target);
        self.shared.notify_changed();
    }

    /// Holds deliveries back (events still accumulate) until [`resume_webhooks`](Self::resume_webhooks).
    pub fn pause_webhooks(&self) {
        self.shared.state().outbox.set_paused(true);
        self.shared.notify_changed();
    }

    pub fn resume_webhooks(&self) {
        self.shared.state().outbox.set_paused(false);
        self.shared.notify_changed();
    }

    /// Sends an event again, as the Dashboard's "Resend" does: same id and body, a fresh signature.
    pub fn redeliver(&self, event_id: &str) -> Result<(), UnknownEvent> {
        self.shared.state().outbox.redeliver(event_id)?;
        self.shared.notify_changed();
        Ok(())
    }

    /// Every event, oldest first.
    pub fn events(&self) -> Vec<StripeEvent> {
        self.shared.state().outbox.events().to_vec()
    }

    pub fn event(&self, id: &str) -> Option<StripeEvent> {
        self.shared.state().outbox.event(id).cloned()
    }

    pub fn delivered_events(&self) -> Vec<StripeEvent> {
        self.events_in(DeliveryState::Delivered)
    }

    pub fn pending_events(&self) -> Vec<StripeEvent> {
        self.events_in(DeliveryState::Pending)
    }

    fn events_in(&self, state: DeliveryState) -> Vec<StripeEvent> {
        self.shared
            .state()
            .outbox
            .events()
            .iter()
            .filter(|event| event.state == state)
            .cloned()
            .collect()
    }

    /// Every API request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// Every PaymentIntent, oldest first, as `GET /v1/payment_intents/{id}` would show it.
    pub fn payment_intents(&self) -> Vec<Value> {
        let state = self.shared.state();
        state.ledger.intents(&self.shared.fixtures)
    }

    /// Waits until `probe` returns `Some`, re-checking at every change (a request served, an
    /// event made, a delivery attempted), for at most `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first probe, so a change between probe and wait is not missed.
        let mut changes = self.shared.changes.subscribe();
        loop {
            if let Some(found) = probe(self) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(WaitTimeout(timeout)),
            }
        }
    }

    /// Waits until an event of `event_type` about `object_id` has been delivered.
    pub async fn wait_for_delivered(
        &self,
        event_type: &str,
        object_id: &str,
        timeout: Duration,
    ) -> Result<StripeEvent, WaitTimeout> {
        self.wait_for(timeout, |server| {
            server
                .delivered_events()
                .into_iter()
                .find(|event| event.event_type == event_type && event.object_id == object_id)
        })
        .await
    }
}
