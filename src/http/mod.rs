//! The thin axum layer: one router per domain, merged here under `/api/v1`, behind one middleware
//! stack. Routes are registered through utoipa-axum's `routes!`, so a route cannot exist without
//! its OpenAPI entry.

pub mod auth;
mod cart;
mod catalog;
pub mod extract;
mod headers;
pub mod health;
pub mod idempotency;
mod identity;
pub mod images;
pub mod metrics;
pub mod middleware;
mod openapi;
mod orders;
pub mod pagination;
mod payments;
mod promotions;
#[cfg(test)]
mod properties;
mod rate_limit;
mod testing;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use opentelemetry_http::HeaderExtractor;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::AppError;
use crate::state::AppState;

/// JSON bodies larger than this are refused with 413.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// The largest body any route accepts (image uploads, 5 MiB, plus multipart framing).
pub const MAX_BODY_LIMIT: usize = 6 * 1024 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shop",
        description = "E-commerce backend: catalog, carts, orders, payments and promotions. \
            Errors are RFC 9457 problem details (`application/problem+json`). Money is an integer \
            in minor units of the store currency.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(
        crate::error::Problem,
        crate::error::FieldError,
        crate::catalog::listing::Sort,
        crate::catalog::ProductStatus,
    )),
    tags(
        (name = "operations", description = "Health, metrics and documentation"),
        (name = "identity", description = "Accounts and tokens"),
        (name = "catalog", description = "Categories and products"),
        (name = "cart", description = "The customer's persistent cart"),
        (name = "orders", description = "Checkout, orders and their payment"),
        (name = "payments", description = "Payment provider webhooks"),
        (name = "admin", description = "Administration (admin role only)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every documented route, with its OpenAPI entries.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(metrics::render))
        .nest(
            "/api/v1",
            identity::router()
                .merge(catalog::router())
                .merge(images::router())
                .merge(cart::router())
                .merge(orders::router())
                .merge(payments::router()),
        )
        .nest(
            "/api/v1/admin",
            identity::admin_router()
                .merge(orders::admin_router())
                .merge(promotions::admin_router())
                .route_layer(axum::middleware::from_fn(auth::require_admin)),
        )
}

/// The routes and their OpenAPI document, with what layers declare (the `Idempotency-Key`) and
/// what every operation shares (`openapi::finish`).
fn api_parts() -> (Router<AppState>, OpenApiDoc) {
    let (routes, mut api) = api_router().split_for_parts();
    idempotency::document(&mut api);
    openapi::finish(&mut api);
    (routes, api)
}

/// The OpenAPI document of the whole API.
pub fn openapi() -> OpenApiDoc {
    api_parts().1
}

/// The application: every route behind the middleware stack.
pub fn app(state: AppState) -> Router {
    let settings = state.settings.clone();
    let (mut routes, api) = api_parts();
    routes = routes.merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", api));
    if settings.storage.backend == crate::config::StorageBackend::Local {
        routes = routes.merge(crate::media::media_routes(&settings.storage.local_dir));
    }
    if settings.testing.test_routes {
        routes = routes.merge(testing::routes());
    }
    let mut routes = routes
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    if state.rate_limits.is_some() {
        routes = routes.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::enforce,
        ));
    }

    let origins = allowed_origins(&settings.server.cors_allowed_origins);
    let middleware = ServiceBuilder::new()
        .layer(headers::nosniff())
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(axum::middleware::from_fn(middleware::record_http_metrics))
        .layer(CompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            headers::AllowedOrigins::new(&origins),
            headers::withhold_cors_from_other_origins,
        ))
        .layer(cors(&origins))
        .layer(axum::middleware::from_fn(
            middleware::problem_for_bare_errors,
        ))
        .layer(axum::middleware::from_fn(
            middleware::refuse_unreadable_uris,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout(),
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_LIMIT))
        .layer(axum::Extension(state.clone()));

    routes.layer(middleware).with_state(state)
}

/// The span of one request; every log line inside it carries the request id and route.
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str())
        .unwrap_or("unmatched");
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        route = %route,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    if crate::telemetry::exporting() {
        // The trace's own names (OpenTelemetry's HTTP conventions), and the caller's trace when
        // its W3C `traceparent` says which.
        span.record("otel.name", format!("{} {route}", request.method()));
        span.record("otel.kind", "server");
        crate::telemetry::continue_trace(&span, &HeaderExtractor(request.headers()));
    }
    span
}

fn allowed_origins(origins: &[String]) -> Vec<HeaderValue> {
    // Settings::validate refused anything that is not a plain origin (ASCII), so none is dropped.
    origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect()
}

fn cors(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            REQUEST_ID.clone(),
        ])
        .expose_headers([REQUEST_ID.clone(), header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}
