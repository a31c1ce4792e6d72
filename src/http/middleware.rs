//! Middleware that every request passes through: HTTP metrics by matched route, and the guarantee
//! that any error response, whoever made it (a tower layer, axum's router, a rate limiter), leaves
//! as problem+json.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{PROBLEM_JSON, Problem};

/// `http_requests_total`, `http_request_duration_seconds` and `http_requests_in_flight`, labelled by matched route (never the
/// raw path, which would let clients mint label values), method and status.
pub async fn record_http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let in_flight = InFlight::enter(&route);
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Counts a request as in flight until it is answered or its future is dropped (client gone).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(route: &str) -> Self {
        let gauge = metrics::gauge!("http_requests_in_flight", "route" => route.to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Rewrites an error response that is not already problem+json (a timeout, a 405 from the router,
/// a body-limit 413) into one, keeping its status and headers such as `Allow` and `Retry-After`.
pub async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // Only bare errors are rewritten: no body type, or the plain text tower and axum use.
    // A deliberate body (problem+json, readiness JSON) passes untouched.
    let is_bare = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|value| value.as_bytes().starts_with(b"text/plain"));
    if !is_bare {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let problem = Problem::new(status).detail(default_detail(status));
    let body = problem.into_response().into_body();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::SERVICE_UNAVAILABLE && !parts.headers.contains_key(header::RETRY_AFTER)
    {
        parts.headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::error::UNAVAILABLE_RETRY_AFTER_SECS),
        );
    }
    Response::from_parts(parts, Body::new(body))
}

fn default_detail(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "The requested resource does not exist.",
        StatusCode::METHOD_NOT_ALLOWED => "This method is not allowed on this resource.",
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is too large.",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests; slow down.",
        StatusCode::SERVICE_UNAVAILABLE => "The request could not be completed in time.",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "The request body has an unsupported type.",
        s if s.is_server_error() => "An internal error occurred.",
        _ => "The request could not be processed.",
    }
}

/// The answer to a panicking handler: a 500 that says nothing about the panic.
pub fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
        .detail("An internal error occurred.")
        .into_response()
}

/// Refuses, with a 400 before any handler runs, a path or query whose percent-decoding holds a
/// NUL character or is not UTF-8: no route can use such a value, and PostgreSQL cannot store it.
pub async fn refuse_unreadable_uris(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let readable = |raw: &str| match percent_encoding::percent_decode_str(raw).decode_utf8() {
        Ok(text) => !text.contains('\0'),
        Err(_) => false,
    };
    if !readable(uri.path()) || !uri.query().is_none_or(readable) {
        return crate::error::AppError::bad_request(
            "The path or query string holds a NUL character or is not UTF-8.",
        )
        .into_response();
    }
    next.run(request).await
}
