//! Orders: a snapshot of the cart at checkout, walked through its life by an order saga actor
//! (reserve stock → create the payment intent → wait for the payment event or the deadline →
//! commit or release), with every status change kept in its history.

pub mod checkout;
pub mod ledger;
pub mod notify;
pub mod store;

pub use shop_actors::orders::{NewLine, NewOrder, OrderStatus, UnknownStatus, saga, supervisor};

/// The email the customer gets when an order reaches `status`, if any.
pub fn email_for(status: OrderStatus) -> Option<crate::messaging::OrderEmailKind> {
    use crate::messaging::OrderEmailKind;
    match status {
        OrderStatus::Paid => Some(OrderEmailKind::Paid),
        OrderStatus::Cancelled => Some(OrderEmailKind::Cancelled),
        OrderStatus::Refunded => Some(OrderEmailKind::Refunded),
        OrderStatus::Pending | OrderStatus::Shipped | OrderStatus::Delivered => None,
    }
}

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::catalog::{Fields, parse_name};
use crate::error::AppError;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub line1: String,
    /// Left out when blank.
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub line2: Option<String>,
    #[schema(
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub city: String,
    #[schema(
        max_length = 20,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 in either case, e.g. `US`.
    #[schema(pattern = r"^[A-Za-z]{2}$", example = "US")]
    pub country: String,
}

impl ShippingAddress {
    /// Trims every field and checks lengths and the country code.
    pub fn parse(raw: ShippingAddress) -> Result<Self, AppError> {
        let mut fields = Fields::default();
        let name = fields.check(parse_name("shipping_address.name", &raw.name, 200));
        let line1 = fields.check(parse_name("shipping_address.line1", &raw.line1, 200));
        let line2 = match raw.line2.as_deref().filter(|l| !l.trim().is_empty()) {
            Some(line) => fields.check(parse_name("shipping_address.line2", line, 200)),
            None => None,
        };
        let city = fields.check(parse_name("shipping_address.city", &raw.city, 100));
        let postal_code = fields.check(parse_name(
            "shipping_address.postal_code",
            &raw.postal_code,
            20,
        ));
        let country = raw.country.to_ascii_uppercase();
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
    /// What the order's coupon took off this line.
    pub discount: i64,
    /// A gift from a gift rule (unit price 0).
    pub gift: bool,
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
    /// The coupon the order used, as it was applied.
    pub coupon_code: Option<String>,
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
