//! The Stripe test server as a process, for scripts (`scripts/e2e`): listens on a free port of
//! 127.0.0.1, prints `stripe test server listening on http://127.0.0.1:PORT` (the API base), delivers
//! signed webhooks to the endpoint given, prints one line per event once delivered or given up on,
//! and runs until SIGTERM or Ctrl-C.
//!
//! ```text
//! stripe-test-server --webhook-url URL --webhook-secret whsec_...
//! ```
//! Either may come from STRIPE_TEST_WEBHOOK_URL / STRIPE_TEST_WEBHOOK_SECRET instead. The fixtures
//! are read from $STRIPE_FIXTURES, else `shared/stripe/fixtures3.json` beside the repository.

#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use shop_stripe_testserver::{DeliveryState, ServerOptions, StripeTestServer, WebhookTarget};

const USAGE: &str = "usage: stripe-test-server --webhook-url URL --webhook-secret SECRET \
                     (or STRIPE_TEST_WEBHOOK_URL and STRIPE_TEST_WEBHOOK_SECRET)";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stripe-test-server: {error}");
            ExitCode::FAILURE
        }
    }
}

fn webhook_target() -> Result<WebhookTarget, String> {
    let mut url = std::env::var("STRIPE_TEST_WEBHOOK_URL").ok();
    let mut secret = std::env::var("STRIPE_TEST_WEBHOOK_SECRET").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--webhook-url" => url = Some(value(&mut args)?),
            "--webhook-secret" => secret = Some(value(&mut args)?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    match (url, secret) {
        (Some(url), Some(secret)) if !url.is_empty() && !secret.is_empty() => {
            Ok(WebhookTarget { url, secret })
        }
        _ => Err(USAGE.to_owned()),
    }
}

async fn run() -> Result<(), String> {
    let webhook = webhook_target()?;
    let server = StripeTestServer::start_with(ServerOptions {
        webhook: Some(webhook.clone()),
        ..ServerOptions::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "stripe test server listening on {} (webhooks to {})",
        server.base_url(),
        webhook.url
    );
    flush();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    tokio::select! {
        () = report_settled_events(&server) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// One line per event once its delivery settled: what the person running the script watches.
async fn report_settled_events(server: &StripeTestServer) {
    let mut reported = HashSet::new();
    loop {
        let settled = server
            .wait_for(Duration::from_secs(3600), |server| {
                let fresh: Vec<_> = server
                    .events()
                    .into_iter()
                    .filter(|e| e.state != DeliveryState::Pending && !reported.contains(&e.id))
                    .collect();
                (!fresh.is_empty()).then_some(fresh)
            })
            .await;
        for event in settled.unwrap_or_default() {
            let last = event.attempts.last();
            let answer = last
                .and_then(|a| a.status.map(|s| s.to_string()).or_else(|| a.error.clone()))
                .unwrap_or_default();
            let outcome = match event.state {
                DeliveryState::Delivered => "delivered",
                _ => "FAILED",
            };
            println!(
                "webhook {} {} {outcome} after {} attempt(s) (answer {answer})",
                event.event_type,
                event.id,
                event.attempts.len()
            );
            reported.insert(event.id);
        }
        flush();
    }
}

fn flush() {
    let _ = std::io::stdout().flush();
}
