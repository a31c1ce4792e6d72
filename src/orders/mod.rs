//! Orders: a snapshot of the cart at checkout, walked through its life by an order saga actor
//! (reserve stock → create the payment intent → wait for the payment event or the deadline →
//! commit or release), with every status change kept in its history.

pub mod checkout;
pub mod notify;
pub mod saga;
pub mod store;
pub mod supervisor;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::catalog::{Fields, parse_name};
use crate::error::AppError;

/// A status string that is none of [`OrderStatus`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }

    /// A stored or sent status; anything else is an error, never a default.
    pub fn parse(raw: &str) -> Result<Self, UnknownStatus> {
        Ok(match raw {
            "pending" => Self::Pending,
            "paid" => Self::Paid,
            "shipped" => Self::Shipped,
            "delivered" => Self::Delivered,
            "cancelled" => Self::Cancelled,
            "refunded" => Self::Refunded,
            _ => return Err(UnknownStatus(raw.to_owned())),
        })
    }

    /// [`parse`](Self::parse) for a column read from PostgreSQL: an unknown value fails the read.
    pub fn decode(raw: &str) -> Result<Self, sqlx::Error> {
        Self::parse(raw).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }

    /// The workflow: `pending → paid → shipped → delivered`, `pending → cancelled`,
    /// `paid | delivered → refunded`. Anything else is refused.
    pub fn can_become(self, next: Self) -> bool {
        matches!(
            (self, next),
            (Self::Pending, Self::Paid)
                | (Self::Pending, Self::Cancelled)
                | (Self::Paid, Self::Shipped)
                | (Self::Shipped, Self::Delivered)
                | (Self::Paid, Self::Refunded)
                | (Self::Delivered, Self::Refunded)
        )
    }

    /// No saga runs for an order in a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }

    /// The email the customer gets when an order reaches this status, if any.
    pub fn email(self) -> Option<crate::messaging::OrderEmailKind> {
        use crate::messaging::OrderEmailKind;
        match self {
            Self::Paid => Some(OrderEmailKind::Paid),
            Self::Cancelled => Some(OrderEmailKind::Cancelled),
            Self::Refunded => Some(OrderEmailKind::Refunded),
            Self::Pending | Self::Shipped | Self::Delivered => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `US`.
    pub country: String,
}

impl ShippingAddress {
    /// Trims every field and checks lengths and the country code.
    pub fn parse(raw: ShippingAddress) -> Result<Self, AppError> {
        let mut fields = Fields::default();
        let name = fields.check(parse_name("shipping_address.name", &raw.name, 200));
        let line1 = fields.check(parse_name("shipping_address.line1", &raw.line1, 200));
        let line2 = match raw
            .line2
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            Some(line) => fields.check(parse_name("shipping_address.line2", line, 200)),
            None => None,
        };
        let city = fields.check(parse_name("shipping_address.city", &raw.city, 100));
        let postal_code = fields.check(parse_name(
            "shipping_address.postal_code",
            &raw.postal_code,
            20,
        ));
        let country = raw.country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            fields.error(
                "shipping_address.country",
                "must be a two-letter ISO country code",
            );
        }
        fields.finish()?;
        match (name, line1, city, postal_code) {
            (Some(name), Some(line1), Some(city), Some(postal_code)) => Ok(Self {
                name,
                line1,
                line2,
                city,
                postal_code,
                country,
            }),
            _ => Err(AppError::Internal(anyhow::anyhow!(
                "validated address fields missing"
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderItem {
    pub id: Uuid,
    pub product_id: Uuid,
    pub variant_id: Uuid,
    pub sku: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub options: BTreeMap<String, String>,
    pub unit_price: i64,
    pub quantity: i32,
    pub line_total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    /// `stripe` or `simulated`.
    pub provider: String,
    pub payment_intent_id: Option<String>,
    /// For the client to confirm the payment (Stripe.js); only ever shown to the order's owner
    /// and admins.
    pub client_secret: Option<String>,
    /// The payment intent's status, or `failed` after a declined attempt.
    pub status: String,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusChange {
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub number: String,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub subtotal: i64,
    pub discount_total: i64,
    pub total: i64,
    /// Minor units refunded so far; the order is `refunded` only once this reaches `total` (a
    /// partial refund leaves the status as it was).
    pub refunded_amount: i64,
    pub currency: String,
    pub shipping_address: ShippingAddress,
    pub payment: Payment,
    /// Stock is held until then; an unpaid order is cancelled at that moment.
    pub expires_at: DateTime<Utc>,
    /// In the full order only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_history: Option<Vec<StatusChange>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;

    #[test]
    fn every_status_round_trips_and_an_unknown_one_is_an_error() {
        for status in [Pending, Paid, Shipped, Delivered, Cancelled, Refunded] {
            assert_eq!(super::OrderStatus::parse(status.as_str()), Ok(status));
        }
        assert!(super::OrderStatus::parse("payment_failed").is_err());
        assert!(super::OrderStatus::parse("").is_err());
        assert!(super::OrderStatus::parse("Pending").is_err());
    }

    #[test]
    fn only_the_workflow_transitions_are_allowed() {
        let all = [Pending, Paid, Shipped, Delivered, Cancelled, Refunded];
        let allowed: Vec<_> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Paid),
                (Pending, Cancelled),
                (Paid, Shipped),
                (Paid, Refunded),
                (Shipped, Delivered),
                (Delivered, Refunded),
            ]
        );
    }
}
