//! Identity: users, their roles, passwords (argon2id), access tokens (JWT) and rotating refresh
//! tokens with reuse detection. Inputs are parsed into the types here before anything else
//! happens (parse, don't validate).

pub mod password;
pub mod recovery;
pub mod service;
pub mod store;
pub mod tokens;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{AppError, FieldError};

// Read from its TEXT column through `sqlx::Type`: an unknown role is a decode error (a logged
// 500), never a guess, which for a role could grant or take away admin rights. (Not a doc
// comment: that would become the API's description.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Self::Customer),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// An email address as given, checked for shape; comparisons are case-insensitive in the
/// database (`citext`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.len() > 254 {
            return Err(FieldError::new("email", "must be at most 254 characters"));
        }
        // Only the addr-spec form: no display names, and the domain must have a dot.
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal();
        match email_address::EmailAddress::parse_with_options(trimmed, options) {
            Ok(address) if address.domain().contains('.') => Ok(Self(trimmed.to_owned())),
            _ => Err(FieldError::new("email", "is not a valid email address")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's display name: 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if raw.chars().count() > 200 {
            return Err(FieldError::new("name", "must be at most 200 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password: 8 to 1024 characters (so argon2's work is bounded).
pub struct NewPassword(secrecy::SecretString);

impl NewPassword {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(raw: secrecy::SecretString) -> Result<Self, FieldError> {
        use secrecy::ExposeSecret;
        let text = raw.expose_secret();
        if text.chars().count() < Self::MIN_CHARS {
            return Err(FieldError::new(
                "password",
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if text.chars().count() > Self::MAX_CHARS {
            return Err(FieldError::new(
                "password",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        Ok(Self(raw))
    }

    pub fn into_secret(self) -> secrecy::SecretString {
        self.0
    }
}

/// Collects every field error of a request before failing, so the client sees them all at once.
pub fn all_valid<A, B, C>(
    a: Result<A, FieldError>,
    b: Result<B, FieldError>,
    c: Result<C, FieldError>,
) -> Result<(A, B, C), AppError> {
    match (a, b, c) {
        (Ok(a), Ok(b), Ok(c)) => Ok((a, b, c)),
        (a, b, c) => Err(AppError::Validation(
            [a.err(), b.err(), c.err()].into_iter().flatten().collect(),
        )),
    }
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Whether the account has confirmed its email address (`POST /auth/verify-email`, or a
    /// password reset, which proves the same).
    pub email_verified: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_parsed() {
        assert!(Email::parse("ada@example.com").is_ok());
        assert!(Email::parse("  Ada.Lovelace+shop@Example.co.uk ").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "Ada <ada@example.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_have_bounds_in_characters_and_bytes() {
        let parse = |s: &str| NewPassword::parse(secrecy::SecretString::from(s.to_owned()));
        assert!(parse("short").is_err());
        assert!(parse("long enough").is_ok());
        assert!(parse(&"x".repeat(1024)).is_ok());
        assert!(parse(&"x".repeat(1025)).is_err());
        // Eight characters of two bytes each: counted in characters, not bytes.
        assert!(parse("éééééééé").is_ok());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"a".repeat(201)).is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
    }
}
