//! The catalog: a category tree, products whose sellable units are variants, bundles made of
//! component variants, and the searchable, cached listing.

pub mod categories;
pub mod facets;
pub mod listing;
pub mod products;
pub mod seed;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AppError, FieldError};

/// A URL-safe identifier: lower-case ASCII letters, digits and single hyphens, 1 to 200 long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let valid = !raw.is_empty()
            && raw.len() <= 200
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-')
            && !raw.contains("--");
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be lower-case letters, digits and single hyphens",
            ))
        }
    }

    /// The given slug, or one derived from `name` when none was given.
    pub fn given_or_derived(
        field: &str,
        given: Option<&str>,
        name: &str,
    ) -> Result<Self, FieldError> {
        match given {
            Some(slug) => Self::parse(field, slug),
            None => {
                let derived: String = slug::slugify(name).chars().take(200).collect();
                Self::parse(field, derived.trim_end_matches('-')).map_err(|_| {
                    FieldError::new(field, "cannot be derived from the name; give one")
                })
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: at most `max` characters, not blank, no control characters; kept trimmed.
pub fn parse_name(field: &str, raw: &str, max: usize) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || raw.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// An amount of money in minor units of the store currency.
pub fn parse_money(field: &str, amount: i64) -> Result<i64, FieldError> {
    // 10^12 minor units is ten billion in a two-decimal currency: far beyond any price.
    if (0..=1_000_000_000_000).contains(&amount) {
        Ok(amount)
    } else {
        Err(FieldError::new(
            field,
            "must be between 0 and 1000000000000 minor units",
        ))
    }
}

pub fn parse_non_negative(field: &str, value: i64, max: i64) -> Result<i64, FieldError> {
    if (0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("must be between 0 and {max}"),
        ))
    }
}

/// The longest description, of a category or a product, in characters.
pub const MAX_DESCRIPTION: usize = 10_000;

/// A free text (a description): at most `max` characters.
pub fn parse_text(field: &str, raw: &str, max: usize) -> Result<String, FieldError> {
    if raw.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(raw.to_owned())
}

/// Collects field errors while a request is parsed, so the client sees all of them at once.
#[derive(Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    pub fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(error);
                None
            }
        }
    }

    pub fn error(&mut self, field: &str, message: &str) {
        self.errors.push(FieldError::new(field, message));
    }

    pub fn finish(self) -> Result<(), AppError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.errors))
        }
    }
}

// Read from its TEXT column through `sqlx::Type`: a value outside the enum is a decode error (a
// logged 500), never a default. (Not a doc comment: that would become the API's description.)
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ProductType {
    #[default]
    Simple,
    Variable,
    Bundle,
}

impl ProductType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Variable => "variable",
            Self::Bundle => "bundle",
        }
    }
}

// Read from its TEXT column through `sqlx::Type`: a value outside the enum is a decode error (a
// logged 500), never a default. (Not a doc comment: that would become the API's description.)
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ProductStatus {
    #[default]
    Draft,
    Active,
    Archived,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }
}

/// Maps a unique violation to a 409 naming what clashed; anything else stays an internal error.
pub fn conflict_on(error: sqlx::Error, clashes: &[(&str, &'static str, &str)]) -> AppError {
    if let sqlx::Error::Database(db) = &error
        && let Some(constraint) = db.constraint()
        && let Some((_, kind, detail)) = clashes.iter().find(|(name, _, _)| *name == constraint)
    {
        return AppError::conflict(kind, *detail);
    }
    AppError::from(error)
}

/// `Option<Option<T>>` for PATCH bodies: absent leaves a field alone, `null` clears it.
pub fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_derived_and_checked() {
        let derived = Slug::given_or_derived("slug", None, "Café Crème — Large!").unwrap();
        assert_eq!(derived.as_str(), "cafe-creme-large");
        assert!(Slug::parse("slug", "Bad Slug").is_err());
        assert!(Slug::parse("slug", "-x").is_err());
        assert!(Slug::parse("slug", "a--b").is_err());
        assert!(Slug::given_or_derived("slug", None, "!!!").is_err());
    }

    #[test]
    fn money_is_bounded() {
        assert!(parse_money("price", -1).is_err());
        assert!(parse_money("price", 0).is_ok());
        assert!(parse_money("price", 1_000_000_000_001).is_err());
    }
}
