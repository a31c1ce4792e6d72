//! Extractors whose rejections are [`AppError`]s, so a bad request is problem+json like any other
//! error: malformed JSON or wrong types are 400, missing or unknown fields 422, a body over the
//! limit 413, a body that is not JSON 415.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{AppError, FieldError};

/// `axum::Json` with the app's rejections and the failing field named.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(AppError::UnsupportedMediaType(
                "Expected a body with Content-Type: application/json.".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_unreadable)?;
        parse_json(&bytes).map(Json)
    }
}

/// A body that could not be read: over the route's limit (413), or cut off.
pub fn body_unreadable(rejection: axum::extract::rejection::BytesRejection) -> AppError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge("The request body is too large.".into())
    } else {
        AppError::bad_request("The request body could not be read.")
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserializes a JSON body, naming the field that failed.
///
/// The body is read as JSON first and then given its type, so that two things hold for every
/// request type at once: a number with no fractional part is an integer whatever its spelling
/// (`5.0` is `5`, as JSON Schema's `integer` says), and no string, key or value, may hold a NUL
/// character (PostgreSQL cannot store one).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
        AppError::bad_request(format!(
            "Malformed JSON: {}.",
            strip_position(&error.to_string())
        ))
    })?;
    let mut path = Vec::new();
    if let Some(field) = normalize(&mut value, &mut path) {
        return Err(AppError::BadRequest {
            detail: "A string holds a NUL character.".into(),
            errors: vec![FieldError::new(field, "must not contain NUL characters")],
        });
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = strip_position(&error.into_inner().to_string());
        let (field, message) = name_the_field(&path, message);
        let errors = vec![FieldError::new(field, message.clone())];
        if message.starts_with("invalid type") {
            AppError::BadRequest {
                detail: "A field has the wrong type.".into(),
                errors,
            }
        } else {
            AppError::Validation(errors)
        }
    })
}

/// Turns whole floats into integers in place; answers the path of the first string (or key)
/// holding a NUL character, if any.
fn normalize(value: &mut serde_json::Value, path: &mut Vec<String>) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) if text.contains('\0') => Some(path.join(".")),
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
                && float.abs() < 9.007_199_254_740_992e15
            {
                // Below 2^53 every whole float is exactly an i64.
                *value = Value::from(float as i64);
            }
            None
        }
        Value::Array(items) => items.iter_mut().enumerate().find_map(|(index, item)| {
            path.push(index.to_string());
            let found = normalize(item, path);
            path.pop();
            found
        }),
        Value::Object(fields) => fields.iter_mut().find_map(|(key, item)| {
            path.push(key.clone());
            let found = if key.contains('\0') {
                Some(path.join("."))
            } else {
                normalize(item, path)
            };
            path.pop();
            found
        }),
        _ => None,
    }
}

/// serde reports a missing field at its parent's path; name the field itself.
fn name_the_field(path: &str, message: String) -> (String, String) {
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(marker)
            && let Some(name) = rest.split('`').next()
        {
            let field = if path == "." || path.is_empty() {
                name.to_string()
            } else if path == name || path.ends_with(&format!(".{name}")) {
                path.to_string()
            } else {
                format!("{path}.{name}")
            };
            let message = if marker.starts_with("missing") {
                "is required".to_string()
            } else {
                "is not a known field".to_string()
            };
            return (field, message);
        }
    }
    let field = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    (field, message)
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        AppError::bad_request(rejection.body_text())
    }
}

/// `axum::extract::Path` with problem+json rejections. A segment that cannot be the id it stands
/// for (`/orders/0`) names no resource: 404, like an id that does not exist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(AppError::NotFound),
            Err(other) => Err(AppError::Internal(anyhow::anyhow!(
                "path extraction: {}",
                other.body_text()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Signup {
        email: String,
        age: u32,
    }

    fn field_of(error: &AppError) -> String {
        match error {
            AppError::Validation(errors) | AppError::BadRequest { errors, .. } => {
                errors.first().map(|e| e.field.clone()).unwrap_or_default()
            }
            _ => String::new(),
        }
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let error = parse_json::<Signup>(b"{\"email\": ").unwrap_err();
        assert!(matches!(error, AppError::BadRequest { .. }));
    }

    #[test]
    fn wrong_type_is_a_bad_request_naming_the_field() {
        let error = parse_json::<Signup>(br#"{"email": "a@b.c", "age": "old"}"#).unwrap_err();
        assert!(matches!(error, AppError::BadRequest { .. }));
        assert_eq!(field_of(&error), "age");
    }

    #[test]
    fn missing_and_unknown_fields_are_validation_errors_naming_the_field() {
        let missing = parse_json::<Signup>(br#"{"email": "a@b.c"}"#).unwrap_err();
        assert!(matches!(missing, AppError::Validation(_)));
        assert_eq!(field_of(&missing), "age");
        let unknown =
            parse_json::<Signup>(br#"{"email": "a@b.c", "age": 3, "role": "admin"}"#).unwrap_err();
        assert!(matches!(unknown, AppError::Validation(_)));
        assert_eq!(field_of(&unknown), "role");
    }
}
