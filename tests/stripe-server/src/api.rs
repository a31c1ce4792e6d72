//! The HTTP face: one handler that authenticates, records, applies idempotency and routes each
//! `/v1/...` call to the ledger, answering in Stripe's shapes and headers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::faults::FaultAction;
use crate::fixtures::Fixtures;
use crate::ledger::Effect;
use crate::objects::new_id;
use crate::params::Params;
use crate::server::{RecordedRequest, SavedResponse, Shared, State, unix_now};
use crate::webhooks::API_VERSION;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // One fallback rather than a route table: every request, unknown URLs included, goes through
    // the same authentication, recording and idempotency, as at Stripe.
    Router::new().fallback(handle).with_state(shared)
}

/// The parts of a request the server reads.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    params: &'a Params,
    api_key: Option<&'a str>,
    idempotency_key: Option<&'a str>,
}

/// The answer to one call.
struct Reply {
    status: StatusCode,
    body: Value,
    request_id: String,
    /// For a replay: the request whose saved response this is.
    original_request: Option<String>,
}

impl Reply {
    fn error(error: &ApiError, request_id: String) -> Self {
        Self {
            status: error.status,
            body: error.body(),
            request_id,
            original_request: None,
        }
    }
}

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = if method == Method::POST {
        Params::parse(&body)
    } else {
        Params::parse(uri.query().unwrap_or_default().as_bytes())
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let api_key = header(header::AUTHORIZATION.as_str())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .map(|key| key.trim().to_owned())
        })
        .filter(|key| !key.is_empty());
    let idempotency_key = header("idempotency-key");
    let call = Call {
        method: &method,
        path: uri.path(),
        params: &params,
        api_key: api_key.as_deref(),
        idempotency_key: idempotency_key.as_deref(),
    };

    let fault = shared.state().take_fault(method.as_str(), uri.path());
    if let Some(FaultAction::Fail(status)) = fault {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        shared.state().requests.push(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            api_key: api_key.clone(),
            idempotency_key: idempotency_key.clone(),
            stripe_version: header("stripe-version"),
            params: params.pairs().to_vec(),
            status: status.as_u16(),
            replayed: false,
            request_id: new_id("req"),
        });
        shared.notify_changed();
        return injected_error(status);
    }
    if let Some(FaultAction::Delay(wait)) = fault {
        tokio::time::sleep(wait).await;
    }
    let reply = {
        let mut state = shared.state();
        let reply = state.serve(&shared.fixtures, &call);
        state.requests.push(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            api_key: api_key.clone(),
            idempotency_key: idempotency_key.clone(),
            stripe_version: header("stripe-version"),
            params: params.pairs().to_vec(),
            status: reply.status.as_u16(),
            replayed: reply.original_request.is_some(),
            request_id: reply.request_id.clone(),
        });
        reply
    };
    shared.notify_changed();
    if fault == Some(FaultAction::LoseAnswer) {
        return injected_error(StatusCode::INTERNAL_SERVER_ERROR);
    }

    let mut response = (reply.status, Json(reply.body)).into_response();
    let response_headers = response.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            response_headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("request-id", &reply.request_id);
    set("stripe-version", API_VERSION);
    if method == Method::POST
        && let Some(key) = &idempotency_key
    {
        set("idempotency-key", key);
    }
    if let Some(original) = &reply.original_request {
        set("idempotent-replayed", "true");
        set("original-request", original);
    }
    response
}

/// What an injected failure answers: Stripe's shape for its own trouble.
fn injected_error(status: StatusCode) -> Response {
    let body = serde_json::json!({"error": {"type": "api_error",
        "message": "An injected fault of the test server."}});
    (status, Json(body)).into_response()
}

impl State {
    fn serve(&mut self, fixtures: &Fixtures, call: &Call<'_>) -> Reply {
        let request_id = new_id("req");
        let api_key = match authenticate(call.api_key) {
            Ok(key) => key,
            Err(error) => return Reply::error(&error, request_id),
        };
        // Stripe applies idempotency keys to POST requests only; GET and DELETE are idempotent.
        let idempotency = call
            .idempotency_key
            .filter(|_| *call.method == Method::POST)
            .map(|key| (api_key.to_owned(), key.to_owned()));
        let fingerprint = (
            call.method.to_string(),
            call.path.to_owned(),
            call.params.fingerprint(),
        );
        if let Some(slot) = &idempotency
            && let Some(saved) = self.idempotency.get(slot)
        {
            if saved.fingerprint != fingerprint {
                return Reply::error(&ApiError::idempotency_mismatch(&slot.1), request_id);
            }
            return Reply {
                status: StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK),
                body: saved.body.clone(),
                request_id,
                original_request: Some(saved.request_id.clone()),
            };
        }

        let now = unix_now();
        let (status, body, saved) = match self.route(fixtures, call, now) {
            Ok(Effect {
                status,
                body,
                events,
            }) => {
                for occurrence in events {
                    self.outbox.publish(
                        fixtures,
                        occurrence,
                        &request_id,
                        call.idempotency_key,
                        now,
                    );
                }
                (status, body, true)
            }
            Err(error) => (error.status, error.body(), error.saved_for_idempotency),
        };
        if let Some(slot) = idempotency
            && saved
        {
            self.idempotency.insert(
                slot,
                SavedResponse {
                    fingerprint,
                    status: status.as_u16(),
                    body: body.clone(),
                    request_id: request_id.clone(),
                },
            );
        }
        Reply {
            status,
            body,
            request_id,
            original_request: None,
        }
    }

    fn route(
        &mut self,
        fixtures: &Fixtures,
        call: &Call<'_>,
        now: i64,
    ) -> Result<Effect, ApiError> {
        let segments: Vec<&str> = call.path.trim_matches('/').split('/').collect();
        let params = call.params;
        let ledger = &mut self.ledger;
        match (call.method, segments.as_slice()) {
            (&Method::POST, ["v1", "payment_intents"]) => {
                ledger.create_intent(fixtures, params, now)
            }
            (&Method::GET, ["v1", "payment_intents", id]) => {
                ledger.retrieve_intent(fixtures, id, params)
            }
            (&Method::POST, ["v1", "payment_intents", id, "confirm"]) => {
                ledger.confirm_intent(fixtures, id, params, now)
            }
            (&Method::POST, ["v1", "payment_intents", id, "cancel"]) => {
                ledger.cancel_intent(fixtures, id, params, now)
            }
            (&Method::POST, ["v1", "refunds"]) => ledger.create_refund(fixtures, params, now),
            (&Method::GET, ["v1", "refunds", id]) => ledger.retrieve_refund(fixtures, id),
            (&Method::GET, ["v1", "charges", id]) => ledger.retrieve_charge(fixtures, id),
            (&Method::GET, ["v1", "events", id]) => {
                let event = self
                    .outbox
                    .event(id)
                    .ok_or_else(|| ApiError::resource_missing("event", id, "id"))?;
                Ok(Effect {
                    status: StatusCode::OK,
                    body: event.json(),
                    events: Vec::new(),
                })
            }
            _ => Err(ApiError::unrecognized_url(call.method.as_str(), call.path)),
        }
    }
}

/// Test-mode secret or restricted keys only: a live key in a test is a mistake worth a 401.
fn authenticate(api_key: Option<&str>) -> Result<&str, ApiError> {
    let key = api_key.ok_or_else(ApiError::missing_api_key)?;
    if key.starts_with("sk_test_") || key.starts_with("rk_test_") {
        Ok(key)
    } else {
        Err(ApiError::invalid_api_key(key))
    }
}
