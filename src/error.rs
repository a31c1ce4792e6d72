//! The one error type of the http layer. Handlers return `Result<_, AppError>`; every error, and
//! every rejection of a request axum or tower makes, leaves as RFC 9457 `application/problem+json`.
//!
//! Which error goes where: domain code (`shop-actors`, read models) returns its own `thiserror`
//! enums; handlers convert them into [`AppError`] with `From` or [`ResultExt`]. `anyhow` is for
//! `main` and the CLI only. An [`AppError::Internal`] is logged with its cause chain and shown to the
//! client as a generic 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid input field.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request, e.g. `email` or `shipping_address.city`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// RFC 9457 problem details, the body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field-level validation errors, or a list of objects specific to the problem type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<serde_json::Value>,
    /// Why a coupon was refused: `expired`, `not_started`, `usage_limit_reached`,
    /// `min_order_not_met`, `not_applicable` or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: None,
            errors: None,
            reason: None,
        }
    }

    pub fn kind(mut self, kind: &str) -> Self {
        self.kind = format!("/problems/{kind}");
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field_errors(mut self, errors: Vec<FieldError>) -> Self {
        if !errors.is_empty() {
            self.errors = serde_json::to_value(errors).ok();
        }
        self
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed syntax or wrong types.
    #[error("bad request: {detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Well-formed but invalid values.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {detail}")]
    Conflict {
        kind: &'static str,
        detail: String,
        errors: Option<serde_json::Value>,
    },
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A coupon that does not apply (422 with its `reason`).
    #[error("coupon refused: {}", .0.as_str())]
    CouponRefused(crate::promotions::CouponRefusal),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            kind,
            detail: detail.into(),
            errors: None,
        }
    }

    fn to_problem(&self) -> Problem {
        match self {
            Self::BadRequest { detail, errors } => Problem::new(StatusCode::BAD_REQUEST)
                .kind("bad-request")
                .detail(detail.clone())
                .field_errors(errors.clone()),
            Self::Validation(errors) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .kind("validation-error")
                .detail("The request has invalid fields.")
                .field_errors(errors.clone()),
            Self::Unauthorized(detail) => Problem::new(StatusCode::UNAUTHORIZED).detail(*detail),
            Self::Forbidden => {
                Problem::new(StatusCode::FORBIDDEN).detail("You are not allowed to do this.")
            }
            Self::NotFound => {
                Problem::new(StatusCode::NOT_FOUND).detail("The requested resource does not exist.")
            }
            Self::MethodNotAllowed => Problem::new(StatusCode::METHOD_NOT_ALLOWED)
                .detail("This method is not allowed on this resource."),
            Self::Conflict {
                kind,
                detail,
                errors,
            } => {
                let mut problem = Problem::new(StatusCode::CONFLICT)
                    .kind(kind)
                    .detail(detail.clone());
                problem.errors = errors.clone();
                problem
            }
            Self::PayloadTooLarge(detail) => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE).detail(detail.clone())
            }
            Self::UnsupportedMediaType(detail) => {
                Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE).detail(detail.clone())
            }
            Self::RateLimited { retry_after_secs } => Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .detail(format!("Too many requests; retry in {retry_after_secs} s.")),
            Self::CouponRefused(reason) => {
                use crate::promotions::CouponRefusal::*;
                let detail = match reason {
                    Expired => "The coupon has expired.",
                    NotStarted => "The coupon is not valid yet.",
                    UsageLimitReached => "The coupon has been used as often as it may be.",
                    MinOrderNotMet => "The cart does not reach the coupon's minimum order total.",
                    NotApplicable => "The coupon applies to nothing in the cart.",
                    Unknown => "No such coupon.",
                };
                let mut problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                    .kind("coupon-refused")
                    .detail(detail);
                problem.reason = Some(reason.as_str().to_owned());
                problem
            }
            Self::Unavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .detail("The service is temporarily unavailable; retry shortly."),
            Self::Internal(_) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                .detail("An internal error occurred."),
        }
    }
}

impl AppError {
    /// This error for one more of the callers that waited on the same work (a coalesced cache
    /// load): the same answer, with the cause kept as text.
    pub fn shared(self: std::sync::Arc<Self>) -> Self {
        match std::sync::Arc::try_unwrap(self) {
            Ok(error) => error,
            Err(shared) => match &*shared {
                Self::NotFound => Self::NotFound,
                Self::Unavailable(why) => Self::Unavailable(why.clone()),
                other => Self::Internal(anyhow::anyhow!("{other:#}")),
            },
        }
    }
}

/// The `Retry-After` of a 503, in seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 1;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(error) => tracing::error!(error = ?error, "internal error"),
            Self::Unavailable(why) => tracing::warn!(%why, "service unavailable"),
            _ => {}
        }
        let mut response = self.to_problem().into_response();
        match self {
            Self::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // Nothing was done: a retry is safe, and soon may find the key's new owner (a
            // handover), the provider back, or the pool free.
            Self::Unavailable(_) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        response
    }
}

/// One field that does not parse: a 422 naming it.
impl From<FieldError> for AppError {
    fn from(error: FieldError) -> Self {
        Self::Validation(vec![error])
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut => Self::Unavailable("database pool timed out".into()),
            other if shop_actors::partition::is_not_owner(&other) => {
                Self::Unavailable(shop_actors::ActorError::NotOwner.to_string())
            }
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<crate::orders::store::TransitionError> for AppError {
    fn from(error: crate::orders::store::TransitionError) -> Self {
        use crate::orders::store::TransitionError;
        match error {
            TransitionError::Illegal { .. } => {
                Self::conflict("illegal-transition", error.to_string())
            }
            TransitionError::Database(error) => error.into(),
        }
    }
}

impl From<shop_actors::ActorError> for AppError {
    fn from(error: shop_actors::ActorError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Turns a unique or check violation of a named constraint into a chosen [`AppError`].
pub trait ResultExt<T> {
    fn on_constraint(
        self,
        name: &str,
        map: impl FnOnce(Box<dyn sqlx::error::DatabaseError>) -> AppError,
    ) -> Result<T, AppError>;
}

impl<T, E: Into<AppError>> ResultExt<T> for Result<T, E> {
    fn on_constraint(
        self,
        name: &str,
        map: impl FnOnce(Box<dyn sqlx::error::DatabaseError>) -> AppError,
    ) -> Result<T, AppError> {
        self.map_err(|error| match error.into() {
            AppError::Internal(error) => match error.downcast::<sqlx::Error>() {
                Ok(sqlx::Error::Database(db)) if db.constraint() == Some(name) => map(db),
                Ok(other) => AppError::Internal(other.into()),
                Err(error) => AppError::Internal(error),
            },
            other => other,
        })
    }
}
