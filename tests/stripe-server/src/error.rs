//! Stripe's error envelope (`{"error": {"type", "code", "message", "param", ...}}`) and the
//! statuses Stripe pairs with each kind, so the client sees exactly the errors it would in test mode.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

/// One API error as Stripe reports it. Built by the handlers, rendered once by the router.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
    /// Fields only some errors carry: `decline_code`, `charge`, `payment_intent`, `payment_method`.
    extra: Map<String, Value>,
    /// Stripe saves an idempotent result only once the endpoint started executing; a request
    /// rejected while its parameters were checked can be retried with the same key.
    pub(crate) saved_for_idempotency: bool,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message,
            param: None,
            extra: Map::new(),
            saved_for_idempotency: true,
        }
    }

    pub(crate) fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub(crate) fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// A request whose parameters failed validation: nothing ran, so nothing is saved.
    pub(crate) fn unsaved(mut self) -> Self {
        self.saved_for_idempotency = false;
        self
    }

    pub(crate) fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "You did not provide an API key. You need to provide your API key in the Authorization \
             header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
                .to_owned(),
        )
        .unsaved()
    }

    pub(crate) fn invalid_api_key(key: &str) -> Self {
        // Stripe never echoes a whole key: only its prefix and last four characters.
        let tail: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let prefix: String = key.chars().take(8).collect();
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("api_key_invalid"),
            format!("Invalid API Key provided: {prefix}****{tail}"),
        )
        .unsaved()
    }

    pub(crate) fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
                 or we can help at https://support.stripe.com/."
            ),
        )
        .unsaved()
    }

    pub(crate) fn resource_missing(object: &str, id: &str, param: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such {object}: '{id}'"),
        )
        .with_param(param)
    }

    pub(crate) fn parameter_missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            format!("Missing required param: {param}."),
        )
        .with_param(param)
        .unsaved()
    }

    pub(crate) fn parameter_unknown(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_unknown"),
            format!("Received unknown parameter: {param}"),
        )
        .with_param(param)
        .unsaved()
    }

    pub(crate) fn parameter_invalid_integer(param: &str, value: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_invalid_integer"),
            format!("Invalid integer: {value}"),
        )
        .with_param(param)
        .unsaved()
    }

    /// A value outside what the parameter accepts (an unknown enum value, a non-boolean):
    /// Stripe names the parameter but gives no code.
    pub(crate) fn parameter_invalid(param: &str, message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
        .with_param(param)
        .unsaved()
    }

    pub(crate) fn invalid_request(code: &'static str, message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(code),
            message,
        )
    }

    pub(crate) fn card_error(code: &'static str, message: String) -> Self {
        Self::new(
            StatusCode::PAYMENT_REQUIRED,
            "card_error",
            Some(code),
            message,
        )
    }

    pub(crate) fn idempotency_mismatch(key: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            None,
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were \
                 first used with. Try using a key other than '{key}' if you meant to execute a \
                 different request."
            ),
        )
        .unsaved()
    }

    /// The `error` object alone, as it also appears in a PaymentIntent's `last_payment_error`.
    pub(crate) fn error_object(&self) -> Value {
        let mut error = Map::new();
        error.insert("type".into(), json!(self.kind));
        error.insert("message".into(), json!(self.message));
        if let Some(code) = self.code {
            error.insert("code".into(), json!(code));
            error.insert(
                "doc_url".into(),
                json!(format!(
                    "https://stripe.com/docs/error-codes/{}",
                    code.replace('_', "-")
                )),
            );
        }
        if let Some(param) = &self.param {
            error.insert("param".into(), json!(param));
        }
        for (key, value) in &self.extra {
            error.insert(key.clone(), value.clone());
        }
        Value::Object(error)
    }

    pub(crate) fn body(&self) -> Value {
        json!({ "error": self.error_object() })
    }
}
