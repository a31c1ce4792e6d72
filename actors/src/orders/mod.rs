//! Orders in flight: one [`saga::OrderSaga`] per order not yet final, under the
//! [`supervisor::OrderSupervisor`], which resumes them after a crash or a restart. The saga owns
//! the walk of a pending order; the server gives it persistence ([`OrderLedger`]) and the payment
//! provider ([`crate::payments::PaymentGateway`]) through traits, so the whole walk reads in one
//! file ([`saga`]) and nothing here knows SQL tables or HTTP.

pub mod saga;
pub mod supervisor;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::payments::{PaymentEvent, PaymentIntent};
use crate::refunds::RefundReason;

/// How much earlier than its caller's timeout an order saga stops starting new steps.
pub const SAGA_MARGIN: Duration = Duration::from_secs(2);

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
}

/// An order about to be written: a snapshot of the cart at checkout.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub lines: Vec<NewLine>,
    pub subtotal: i64,
    pub discount_total: i64,
    pub currency: String,
    /// The address as the server validated it, kept as JSON.
    pub shipping_address: serde_json::Value,
    pub expires_at: DateTime<Utc>,
    pub payment_provider: String,
    /// The coupon used, as the order keeps it.
    pub coupon_id: Option<Uuid>,
    pub coupon_code: Option<String>,
    /// The first history row's reason when not plain `checkout` (a gift left out).
    pub note: Option<String>,
    /// The cart whose lines these are: emptied in the transaction that writes the order.
    pub cart_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct NewLine {
    pub variant_id: Uuid,
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub options: BTreeMap<String, String>,
    pub unit_price: i64,
    pub quantity: i32,
    /// What the coupon takes off this line (minor units).
    pub discount: i64,
    /// A gift: unit price 0, left out when out of stock.
    pub gift: bool,
}

/// What the saga reads of its order before each decision.
#[derive(Debug, Clone)]
pub struct OrderSnapshot {
    pub status: OrderStatus,
    pub total: i64,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
    pub payment_intent_id: Option<String>,
    pub payment_attempt: i32,
    /// Units held in the inventory for it, bundles as their components.
    pub reserved_units: i32,
    /// The coupon whose use it holds.
    pub coupon_id: Option<Uuid>,
}

/// A payment to give back, decided with the order's cancellation.
#[derive(Debug, Clone)]
pub struct OwedRefund<'a> {
    pub intent_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub reason: RefundReason,
}

/// The ledger could not do what was asked; nothing of that step was written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("order ledger: {0}")]
pub struct LedgerError(pub String);

type Ledger<'a, T> = BoxFuture<'a, Result<T, LedgerError>>;

/// The saga's persistence, as whole steps: each method is one transaction, and a method that
/// settles a payment event marks it processed in that same transaction, so an event is processed
/// exactly when its effect is committed. Methods that move a status answer `false` when the order
/// was no longer in the status they move it from.
pub trait OrderLedger: Send + Sync + 'static {
    fn snapshot(&self, order: Uuid) -> Ledger<'_, Option<OrderSnapshot>>;

    fn status_of(&self, order: Uuid) -> Ledger<'_, Option<OrderStatus>>;

    /// Orders not final yet: each needs a running saga.
    fn unfinished(&self) -> Ledger<'_, Vec<Uuid>>;

    /// Checkout step 3: the order, awaiting the payment of `intent` (none for a free order), and
    /// the idempotency key that now names it.
    fn create_order<'a>(
        &'a self,
        order: &'a NewOrder,
        intent: Option<&'a PaymentIntent>,
        reserved_units: i32,
        idempotency: Option<&'a (String, Vec<u8>)>,
    ) -> Ledger<'a, ()>;

    /// The order an earlier checkout with this idempotency key made.
    fn checkout_by_key<'a>(&'a self, user: Uuid, key: &'a str) -> Ledger<'a, Option<Uuid>>;

    /// pending → paid, the payment recorded as succeeded, `event` processed.
    fn mark_paid<'a>(&'a self, order: Uuid, event: Option<&'a str>) -> Ledger<'a, bool>;

    /// pending → cancelled for `why`, `refund` owed, `event` processed.
    fn cancel_and_refund<'a>(
        &'a self,
        order: Uuid,
        refund: OwedRefund<'a>,
        why: &'a str,
        event: Option<&'a str>,
    ) -> Ledger<'a, bool>;

    /// A payment taken for an order already cancelled: owed back, with the event. `true` when
    /// this event decided the refund (not a repeat).
    fn refund_late_payment<'a>(&'a self, order: Uuid, event: &'a PaymentEvent) -> Ledger<'a, bool>;

    /// A declined attempt reported by `event`, while the order is pending.
    fn record_failed_payment<'a>(&'a self, order: Uuid, event: &'a PaymentEvent) -> Ledger<'a, ()>;

    /// A refund reported by the provider (`event.amount` is the charge's running total).
    fn record_refunded<'a>(&'a self, order: Uuid, event: &'a PaymentEvent) -> Ledger<'a, ()>;

    /// An event with nothing (more) to do.
    fn mark_processed<'a>(&'a self, event: &'a str) -> Ledger<'a, ()>;

    /// pending → cancelled on behalf of `actor`.
    fn cancel<'a>(&'a self, order: Uuid, actor: &'a str, reason: &'a str) -> Ledger<'a, bool>;

    /// Counts a new payment attempt; its number.
    fn next_payment_attempt(&self, order: Uuid) -> Ledger<'_, i32>;

    /// What the last attempt came to (`failed`, `processing`...), while the order is pending.
    fn record_attempt<'a>(
        &'a self,
        order: Uuid,
        status: &'a str,
        error: Option<&'a str>,
    ) -> Ledger<'a, ()>;
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
