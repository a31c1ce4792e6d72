//! Webhook events: built from Stripe's event fixture, kept in the order they happened, signed as
//! Stripe signs them and delivered by one background worker, first attempts in the order the
//! events happened. A failed delivery (non-2xx or no answer) is retried with backoff until it
//! succeeds or runs out of attempts, and does not hold back the events after it: as at Stripe,
//! order is then not guaranteed.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::Instant;

use crate::fixtures::Fixtures;
use crate::ledger::Occurrence;
use crate::objects::new_id;
use crate::server::{Shared, UnknownEvent, unix_now};

/// The API version stamped on events: the one async-stripe is generated for (its
/// `stripe_shared::version::VERSION`), as a webhook endpoint created by the SDK would be pinned.
pub const API_VERSION: &str = "2026-09-30.endive";

/// The `Stripe-Signature` header value for `payload` signed with `secret` at `timestamp`:
/// `t={timestamp},v1={hex HMAC-SHA256(secret, "{timestamp}.{payload}")}`, exactly as Stripe signs.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    #[allow(
        clippy::expect_used,
        reason = "HMAC takes a key of any length; new_from_slice cannot fail"
    )]
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Where events are delivered, and the endpoint's signing secret (`whsec_...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// How hard delivery tries. Stripe retries for days; a test wants seconds.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_retry_after: Duration,
    /// Ceiling of the wait between attempts.
    pub max_retry_after: Duration,
    /// How long one POST may take before it counts as failed.
    pub attempt_timeout: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_retry_after: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl DeliveryPolicy {
    fn retry_after(&self, attempts_made: u32) -> Duration {
        let doublings = attempts_made.saturating_sub(1).min(16);
        self.first_retry_after
            .saturating_mul(1 << doublings)
            .min(self.max_retry_after)
    }
}

/// Where an event stands with its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet answered with a 2xx (queued, paused, no target yet, or between retries).
    Pending,
    /// The latest delivery was answered with a 2xx.
    Delivered,
    /// The latest delivery used up its attempts.
    Failed,
}

/// One POST of an event to the endpoint.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    /// The `t` of the signature: when the attempt was signed and sent (unix seconds).
    pub timestamp: i64,
    /// The `Stripe-Signature` header sent.
    pub signature: String,
    /// The endpoint's status code, if it answered.
    pub status: Option<u16>,
    /// Why there was no answer (connection refused, timeout).
    pub error: Option<String>,
}

impl DeliveryAttempt {
    pub fn succeeded(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// An event as Stripe would send it, with its delivery history.
#[derive(Debug, Clone)]
pub struct StripeEvent {
    pub id: String,
    /// `payment_intent.succeeded`, `charge.refunded`, ...
    pub event_type: String,
    /// The id of `data.object`.
    pub object_id: String,
    /// The exact body POSTed (and re-POSTed on redelivery).
    pub payload: String,
    pub state: DeliveryState,
    pub attempts: Vec<DeliveryAttempt>,
}

impl StripeEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    /// `data.object`: the object as it was when the event happened.
    pub fn object(&self) -> Value {
        self.json()
            .pointer("/data/object")
            .cloned()
            .unwrap_or(Value::Null)
    }
}

#[derive(Debug)]
struct Job {
    event_id: String,
    attempt: u32,
    due: Instant,
    seq: u64,
}

/// One POST the worker is to make, taken from the queue.
#[derive(Debug)]
pub(crate) struct Dispatch {
    event_id: String,
    attempt: u32,
    payload: String,
    target: WebhookTarget,
}

#[derive(Debug)]
pub(crate) enum Next {
    Deliver(Dispatch),
    /// Nothing due: wait until this instant, or until woken (`None`: only until woken).
    Wait(Option<Instant>),
}

/// Every event in order, and the queue of deliveries to make.
#[derive(Debug)]
pub(crate) struct Outbox {
    events: Vec<StripeEvent>,
    queue: Vec<Job>,
    next_seq: u64,
    paused: bool,
    target: Option<WebhookTarget>,
}

impl Outbox {
    pub(crate) fn new(target: Option<WebhookTarget>) -> Self {
        Self {
            events: Vec::new(),
            queue: Vec::new(),
            next_seq: 0,
            paused: false,
            target,
        }
    }

    /// Records the event and queues its delivery; its body is fixed now, as Stripe's is.
    pub(crate) fn publish(
        &mut self,
        fixtures: &Fixtures,
        occurrence: Occurrence,
        request_id: &str,
        idempotency_key: Option<&str>,
        created: i64,
    ) {
        let id = new_id("evt");
        let object_id = occurrence
            .object
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut event = fixtures.event();
        for (key, value) in [
            ("id", json!(id)),
            ("object", json!("event")),
            ("api_version", json!(API_VERSION)),
            ("created", json!(created)),
            ("data", json!({ "object": occurrence.object })),
            ("livemode", json!(false)),
            ("pending_webhooks", json!(u8::from(self.target.is_some()))),
            (
                "request",
                json!({ "id": request_id, "idempotency_key": idempotency_key }),
            ),
            ("type", json!(occurrence.event_type)),
        ] {
            event.insert(key.to_owned(), value);
        }
        self.events.push(StripeEvent {
            id: id.clone(),
            event_type: occurrence.event_type.to_owned(),
            object_id,
            payload: Value::Object(event).to_string(),
            state: DeliveryState::Pending,
            attempts: Vec::new(),
        });
        self.enqueue(id, 1, Instant::now());
    }

    /// Sends the event again: same id, same body, signed afresh when sent.
    pub(crate) fn redeliver(&mut self, event_id: &str) -> Result<(), UnknownEvent> {
        let event = self
            .events
            .iter_mut()
            .find(|event| event.id == event_id)
            .ok_or_else(|| UnknownEvent(event_id.to_owned()))?;
        event.state = DeliveryState::Pending;
        self.enqueue(event_id.to_owned(), 1, Instant::now());
        Ok(())
    }

    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub(crate) fn set_target(&mut self, target: WebhookTarget) {
        self.target = Some(target);
    }

    pub(crate) fn events(&self) -> &[StripeEvent] {
        &self.events
    }

    pub(crate) fn event(&self, id: &str) -> Option<&StripeEvent> {
        self.events.iter().find(|event| event.id == id)
    }

    /// The earliest due delivery (ties in the order queued), unless delivery is paused or there
    /// is no endpoint yet.
    pub(crate) fn next(&mut self, now: Instant) -> Next {
        let Some(target) = self.target.clone().filter(|_| !self.paused) else {
            return Next::Wait(None);
        };
        loop {
            let Some(index) = self
                .queue
                .iter()
                .enumerate()
                .min_by_key(|(_, job)| (job.due, job.seq))
                .map(|(index, _)| index)
            else {
                return Next::Wait(None);
            };
            let due = self.queue[index].due;
            if due > now {
                return Next::Wait(Some(due));
            }
            let job = self.queue.swap_remove(index);
            if let Some(event) = self.event(&job.event_id) {
                return Next::Deliver(Dispatch {
                    payload: event.payload.clone(),
                    event_id: job.event_id,
                    attempt: job.attempt,
                    target,
                });
            }
        }
    }

    pub(crate) fn record(
        &mut self,
        dispatch: Dispatch,
        attempt: DeliveryAttempt,
        policy: &DeliveryPolicy,
    ) {
        let succeeded = attempt.succeeded();
        let Some(event) = self
            .events
            .iter_mut()
            .find(|event| event.id == dispatch.event_id)
        else {
            return;
        };
        event.attempts.push(attempt);
        if succeeded {
            event.state = DeliveryState::Delivered;
        } else if dispatch.attempt < policy.max_attempts {
            let due = Instant::now() + policy.retry_after(dispatch.attempt);
            self.enqueue(dispatch.event_id, dispatch.attempt + 1, due);
        } else {
            event.state = DeliveryState::Failed;
        }
    }

    fn enqueue(&mut self, event_id: String, attempt: u32, due: Instant) {
        self.next_seq += 1;
        self.queue.push(Job {
            event_id,
            attempt,
            due,
            seq: self.next_seq,
        });
    }
}

/// The delivery worker: runs until the server is dropped. The API call that caused an event has
/// already been answered when the event goes out, as at Stripe.
pub(crate) async fn deliver_events(shared: Arc<Shared>, http: reqwest::Client) {
    loop {
        let next = shared.state().outbox.next(Instant::now());
        match next {
            Next::Deliver(dispatch) => {
                let attempt = post(&http, &dispatch).await;
                shared
                    .state()
                    .outbox
                    .record(dispatch, attempt, &shared.policy);
                shared.notify_changed();
            }
            Next::Wait(Some(due)) => {
                tokio::select! {
                    () = shared.wake_delivery.notified() => {}
                    () = tokio::time::sleep_until(due) => {}
                }
            }
            Next::Wait(None) => shared.wake_delivery.notified().await,
        }
    }
}

async fn post(http: &reqwest::Client, dispatch: &Dispatch) -> DeliveryAttempt {
    let timestamp = unix_now();
    let signature = sign(
        dispatch.payload.as_bytes(),
        &dispatch.target.secret,
        timestamp,
    );
    let sent = http
        .post(&dispatch.target.url)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .header(USER_AGENT, "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
        .header("Stripe-Signature", &signature)
        .body(dispatch.payload.clone())
        .send()
        .await;
    let (status, error) = match sent {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(error) => (None, Some(error.to_string())),
    };
    tracing::debug!(event = %dispatch.event_id, attempt = dispatch.attempt, ?status, ?error, "webhook delivery");
    DeliveryAttempt {
        timestamp,
        signature,
        status,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_timestamp_and_raw_body_like_stripe() {
        // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently with openssl:
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign(b"{}", "whsec_test", 1_700_000_000),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_ceiling() {
        let policy = DeliveryPolicy {
            max_attempts: 10,
            first_retry_after: Duration::from_millis(100),
            max_retry_after: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(1),
        };
        assert_eq!(policy.retry_after(1), Duration::from_millis(100));
        assert_eq!(policy.retry_after(2), Duration::from_millis(200));
        assert_eq!(policy.retry_after(3), Duration::from_millis(400));
        assert_eq!(policy.retry_after(4), Duration::from_millis(500));
        assert_eq!(policy.retry_after(40), Duration::from_millis(500));
    }
}
