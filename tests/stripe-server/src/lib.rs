//! A stateful Stripe-compatible server for the test suite: the real async-stripe client talks to
//! it over HTTP, and it sends signed webhooks back, so payments are tested end to end without
//! Stripe.
//!
//! Modelled: PaymentIntents (create, retrieve, confirm, cancel) with Stripe's test payment methods
//! (`pm_card_visa` succeeds, `pm_card_chargeDeclined` is declined, ...), refunds, charges,
//! `Authorization` checks, `Idempotency-Key` replay and conflicts, Stripe-shaped errors, and
//! webhook events (`payment_intent.succeeded`, `charge.refunded`, ...) signed as Stripe signs
//! them, delivered asynchronously and retried. Every object starts from Stripe's own published
//! fixture, so the client deserializes full-fidelity payloads.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use shop_stripe_testserver::{StripeTestServer, WebhookTarget};
//!
//! let stripe = StripeTestServer::start(WebhookTarget {
//!     url: "http://127.0.0.1:8080/api/v1/payments/webhook".into(),
//!     secret: "whsec_test".into(),
//! })
//! .await?;
//! // stripe::ClientBuilder::new("sk_test_...").url(stripe.base_url()).build()?
//! # Ok(())
//! # }
//! ```

mod api;
mod error;
mod faults;
mod fixtures;
mod ledger;
mod objects;
mod params;
mod server;
mod webhooks;

pub use faults::{Fault, FaultAction};
pub use fixtures::{FIXTURES_ENV, FixturesError};
pub use server::{
    RecordedRequest, ServerOptions, StartError, StripeTestServer, UnknownEvent, WaitTimeout,
};
pub use webhooks::{
    API_VERSION, DeliveryAttempt, DeliveryPolicy, DeliveryState, StripeEvent, WebhookTarget, sign,
};
