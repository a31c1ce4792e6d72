//! The test server driven by the real async-stripe client, as the shop will drive Stripe: one
//! binary, so async-stripe is linked once.

// Helpers outside `#[test]` functions panic on purpose too; clippy.toml only covers the latter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod errors;
mod idempotency;
mod payments;
mod support;
mod webhooks;
