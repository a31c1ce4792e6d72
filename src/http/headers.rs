//! Headers every response carries, whoever made it (a handler, the 404/405 fallbacks, a rate
//! limiter, a timeout, a caught panic, `/metrics`, `/docs`): `X-Content-Type-Options: nosniff`,
//! so a browser never second-guesses a declared type (an upload served as an image stays one).
//! Nothing names the server or its version: hyper adds no `Server` header and nothing here does.
//! CORS headers go only to the origins `server.cors_allowed_origins` lists.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::set_header::SetResponseHeaderLayer;

/// The outermost layer of the stack, so it also covers responses the other layers make.
pub fn nosniff() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    )
}

/// The origins `server.cors_allowed_origins` lists.
#[derive(Clone)]
pub struct AllowedOrigins(Arc<[HeaderValue]>);

impl AllowedOrigins {
    pub fn new(origins: &[HeaderValue]) -> Self {
        Self(origins.into())
    }

    fn allow(&self, origin: Option<&HeaderValue>) -> bool {
        origin.is_some_and(|origin| self.0.contains(origin))
    }
}

/// tower-http's `CorsLayer` answers every preflight with the methods, headers and max-age it
/// allows, whatever the origin (it withholds only `Access-Control-Allow-Origin`). A browser would
/// refuse the response anyway, but a request from an origin outside the list learns nothing:
/// no `Access-Control-*` header leaves for it. Sits just outside the `CorsLayer`.
pub async fn withhold_cors_from_other_origins(
    State(allowed): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let allow = allowed.allow(request.headers().get(header::ORIGIN));
    let mut response = next.run(request).await;
    if !allow {
        let headers = response.headers_mut();
        let cors: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in cors {
            headers.remove(name);
        }
    }
    response
}
