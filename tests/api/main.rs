//! The API test suite: every test runs the real app on port 0 against a fresh PostgreSQL database.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod helpers;

mod carts;
mod catalog;
mod chaos;
mod cli;
mod coupons;
mod deploy_files;
mod emails;
mod hardening;
mod headers;
mod idempotency;
mod identity;
mod images;
mod inventory;
mod lifecycle;
mod media;
mod object_access;
mod openapi;
mod operations;
mod order_failures;
mod orders;
mod ownership;
mod payments;
mod pg_proxy;
mod platform;
mod promotions;
mod promotions_checkout;
mod rate_limits;
mod recovery;
mod supervision;
mod traces;
