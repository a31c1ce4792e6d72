//! shop: an e-commerce backend. A thin axum layer ([`http`]) in front of a supervision tree of
//! ractor actors (`shop-actors`) that owns contended state, with PostgreSQL as the durable truth.

pub mod actors;
pub mod cache;
pub mod carts;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod identity;
pub mod lease;
pub mod media;
pub mod messaging;
pub mod oncall;
pub mod opaque_token;
pub mod orders;
pub mod payments;
pub mod promotions;
pub mod rate_limit;
pub mod startup;
pub mod state;
pub mod telemetry;
