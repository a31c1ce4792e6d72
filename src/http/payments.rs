//! Routes of the payments table of the API: Stripe's webhook. The endpoint is authenticated by
//! its signature, not a bearer token: the raw body is verified before anything is parsed, then
//! the event is stored once by id and handed to the payment router ([`crate::payments::events`]).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{AppError, Problem};
use crate::payments::events::{self, ReceivedEvent};
use crate::payments::signature::{self, SignatureError};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stripe_webhook))
}

/// The answer to a delivery Stripe accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    pub received: bool,
    /// The event id was already stored: this delivery changed nothing.
    pub duplicate: bool,
}

fn refused(why: SignatureError) -> AppError {
    metrics::counter!("payment_webhook_refused_total").increment(1);
    AppError::bad_request(why.to_string())
}

/// Receive a Stripe event.
///
/// The `Stripe-Signature` header (`t=...,v1=...`) must be an HMAC-SHA256 of `"{t}.{raw body}"`
/// with the endpoint's secret, made within 300 s of now; an event id already received is
/// acknowledged and ignored.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "t={unix time},v1={hex HMAC-SHA256}")),
    request_body(content = Object, content_type = "application/json",
        description = "A Stripe event, exactly as Stripe sent it"),
    responses(
        (status = 200, description = "Stored (or already stored) and acknowledged", body = WebhookReceipt),
        (status = 400, description = "Missing, malformed, stale or wrong signature, or not an event",
            body = Problem),
    ))]
#[tracing::instrument(skip_all, fields(event_id))]
async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<WebhookReceipt>), AppError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge("The request body is too large.".into())
        } else {
            AppError::bad_request("The request body could not be read.")
        }
    })?;
    let Some(secret) = state.settings.stripe.webhook_secret.as_ref() else {
        // Only the simulated provider runs without one, and it sends no webhooks.
        tracing::warn!("a Stripe webhook arrived but stripe.webhook_secret is not set");
        return Err(AppError::bad_request(
            "This shop does not accept Stripe webhooks.",
        ));
    };
    let header = headers
        .get("stripe-signature")
        .map(|value| value.to_str().map_err(|_| SignatureError::Malformed))
        .transpose()
        .map_err(refused)?;
    signature::verify(
        &body,
        header,
        secret.expose_secret().as_bytes(),
        signature::unix_now(),
    )
    .map_err(refused)?;

    let event = ReceivedEvent::from_slice(&body, "stripe")
        .map_err(|error| AppError::bad_request(format!("Not a Stripe event: {error}.")))?;
    tracing::Span::current().record("event_id", event.id.as_str());
    let receipt = events::receive(&state.db, &state.actors.payment_router, event).await?;
    Ok((
        StatusCode::OK,
        axum::Json(WebhookReceipt {
            received: true,
            duplicate: receipt.duplicate,
        }),
    ))
}
