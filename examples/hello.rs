//! The same-run ceiling for `scripts/bench`: the smallest axum server on the shop's own tokio and
//! axum (same versions, same features, same release profile), answering `GET /` with a fixed body.
//! What the shop's list reaches is reported as a share of what this reaches on the same machine.
//!
//! `cargo run --release --example hello -- 8081` (or `PORT=8081`; 0 = any free port). It prints
//! the address it listens on.

use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
    {
        Some(port) => port.parse()?,
        None => 8081,
    };
    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    announce(listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The one line a caller reads to find the port: stdout is this example's interface.
#[allow(clippy::print_stdout)]
fn announce(address: std::net::SocketAddr) {
    println!("listening on http://{address}");
}
