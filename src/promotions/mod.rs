//! Promotions: coupons (one per cart; percent or fixed, on the order or on some products) and
//! gift rules (a free line while the cart meets their conditions). The domain types live here;
//! the admin's store and routes, the pricing module and the coupon limiter actor build on them.

pub mod admin;
pub mod guesses;
pub mod lookup;
pub mod pricing;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::ToSchema;
use uuid::Uuid;

// `CouponKind` and `CouponScope` are read from their TEXT columns through `sqlx::Type`: a value
// outside the enum is a decode error (a logged 500), never a default.

/// How a coupon takes money off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum CouponKind {
    /// `value` percent (1 to 100) of what the coupon applies to, rounded once, half up.
    Percent,
    /// `value` minor units, at most what the coupon applies to.
    Fixed,
}

impl CouponKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Percent => "percent",
            Self::Fixed => "fixed",
        }
    }
}

/// What a coupon applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum CouponScope {
    /// The whole order (every line but gifts).
    Order,
    /// The lines of `product_ids`, and of products in `category_ids` or their descendants.
    Product,
}

impl CouponScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Product => "product",
        }
    }
}

/// A coupon as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, FromRow)]
pub struct Coupon {
    pub id: Uuid,
    /// 3 to 32 letters, digits, `-` or `_`; unique without regard to case.
    pub code: String,
    pub kind: CouponKind,
    /// Percent: 1 to 100. Fixed: minor units, > 0.
    pub value: i64,
    pub scope: CouponScope,
    pub product_ids: Vec<Uuid>,
    pub category_ids: Vec<Uuid>,
    /// The cart's subtotal (before discounts, gifts excluded) must reach this.
    pub min_order_total: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Uses in all (held or committed).
    pub usage_limit: Option<i32>,
    /// Uses per customer (held or committed).
    pub per_customer_limit: Option<i32>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A gift rule as stored: while a cart meets its conditions, it carries `gift_quantity` of
/// `gift_variant_id` at no cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, FromRow)]
pub struct GiftRule {
    pub id: Uuid,
    pub name: String,
    pub gift_variant_id: Uuid,
    pub gift_quantity: i32,
    /// The cart's subtotal (gifts excluded) must reach this.
    pub min_order_total: Option<i64>,
    /// The cart must hold every one of these variants.
    pub required_variant_ids: Vec<Uuid>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a coupon does not apply: the `reason` codes of the contract (`POST /cart/coupon` answers
/// 422 with one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponRefusal {
    Expired,
    NotStarted,
    UsageLimitReached,
    MinOrderNotMet,
    NotApplicable,
    /// No such code, or an inactive one: the same answer, so codes cannot be enumerated.
    Unknown,
}

impl CouponRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotStarted => "not_started",
            Self::UsageLimitReached => "usage_limit_reached",
            Self::MinOrderNotMet => "min_order_not_met",
            Self::NotApplicable => "not_applicable",
            Self::Unknown => "unknown",
        }
    }
}
