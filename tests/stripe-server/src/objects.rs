//! The objects the server keeps (PaymentIntents, charges, refunds, payment methods), Stripe's
//! test cards, and how each object is rendered: the fixture with the modelled fields overridden
//! and the fixture's sample values that would mislead (a Connect transfer, a wallet, a past
//! cancellation) cleared.

use std::collections::BTreeMap;

use rand::{Rng, distr::Alphanumeric};
use serde_json::{Map, Value, json};

use crate::fixtures::Fixtures;

/// A fresh id in Stripe's shape: `{prefix}_` and 24 alphanumerics.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_alphanumerics(24))
}

pub(crate) fn random_alphanumerics(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A PaymentIntent status; only those this server can reach are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    Succeeded,
    Canceled,
}

impl IntentStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::RequiresConfirmation => "requires_confirmation",
            Self::Succeeded => "succeeded",
            Self::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Intent {
    pub(crate) id: String,
    pub(crate) client_secret: String,
    pub(crate) amount: i64,
    pub(crate) amount_received: i64,
    pub(crate) currency: String,
    pub(crate) status: IntentStatus,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) payment_method: Option<String>,
    pub(crate) payment_method_types: Vec<String>,
    pub(crate) automatic_payment_methods: bool,
    pub(crate) latest_charge: Option<String>,
    pub(crate) last_payment_error: Option<Value>,
    pub(crate) created: i64,
    pub(crate) canceled_at: Option<i64>,
    pub(crate) cancellation_reason: Option<&'static str>,
    /// Parameters the server does not model but reflects, as Stripe does (`description`, ...).
    pub(crate) echoed: Map<String, Value>,
}

impl Intent {
    pub(crate) fn render(&self, fixtures: &Fixtures, expanded_charge: Option<Value>) -> Value {
        let mut object = fixtures.payment_intent();
        for cleared in [
            "application",
            "application_fee_amount",
            "customer",
            "customer_account",
            "description",
            "excluded_payment_method_types",
            "managed_payments",
            "next_action",
            "on_behalf_of",
            "payment_method_configuration_details",
            "processing",
            "receipt_email",
            "review",
            "setup_future_usage",
            "shipping",
            "source",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "transfer_data",
            "transfer_group",
        ] {
            object.insert(cleared.into(), Value::Null);
        }
        let latest_charge = match (expanded_charge, &self.latest_charge) {
            (Some(charge), _) => charge,
            (None, Some(id)) => json!(id),
            (None, None) => Value::Null,
        };
        let fields = json!({
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": 0,
            "amount_received": self.amount_received,
            "automatic_payment_methods": if self.automatic_payment_methods {
                json!({ "enabled": true })
            } else {
                Value::Null
            },
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": "automatic",
            "client_secret": self.client_secret,
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "last_payment_error": self.last_payment_error,
            "latest_charge": latest_charge,
            "livemode": false,
            "metadata": self.metadata,
            "payment_method": self.payment_method,
            "payment_method_types": self.payment_method_types,
            "status": self.status.as_str(),
        });
        overlay(&mut object, fields);
        for (key, value) in &self.echoed {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Charge {
    pub(crate) id: String,
    pub(crate) amount: i64,
    pub(crate) amount_refunded: i64,
    pub(crate) currency: String,
    pub(crate) payment_intent: String,
    pub(crate) payment_method: String,
    pub(crate) card: &'static TestCard,
    pub(crate) balance_transaction: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) description: Option<Value>,
    pub(crate) receipt_email: Option<Value>,
    /// Newest first, as Stripe lists them.
    pub(crate) refunds: Vec<String>,
    pub(crate) created: i64,
}

impl Charge {
    pub(crate) fn succeeded(&self) -> bool {
        self.card.decline.is_none()
    }

    pub(crate) fn render(&self, fixtures: &Fixtures, refunds: Vec<Value>) -> Value {
        let mut object = fixtures.charge();
        for cleared in [
            "application",
            "application_fee",
            "application_fee_amount",
            "calculated_statement_descriptor",
            "customer",
            "failure_balance_transaction",
            "on_behalf_of",
            "receipt_number",
            "review",
            "shipping",
            "source",
            "source_transfer",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "transfer_data",
            "transfer_group",
        ] {
            object.insert(cleared.into(), Value::Null);
        }
        let succeeded = self.succeeded();
        let outcome = match &self.card.decline {
            None => json!({
                "network_status": "approved_by_network",
                "reason": null,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "Payment complete.",
                "type": "authorized",
            }),
            Some(decline) => json!({
                "advice_code": decline.advice_code,
                "network_status": "declined_by_network",
                "reason": decline.decline_code,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": decline.seller_message,
                "type": "issuer_declined",
            }),
        };
        let fields = json!({
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": if succeeded { self.amount } else { 0 },
            "amount_refunded": self.amount_refunded,
            "balance_transaction": self.balance_transaction,
            "billing_details": { "name": null },
            "captured": succeeded,
            "created": self.created,
            "currency": self.currency,
            "description": self.description,
            "failure_code": self.card.decline.as_ref().map(|decline| decline.code),
            "failure_message": self.card.decline.as_ref().map(|decline| decline.message),
            "livemode": false,
            "metadata": self.metadata,
            "outcome": outcome,
            "paid": succeeded,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "payment_method_details": {
                "card": {
                    "brand": self.card.brand,
                    "country": self.card.country,
                    "fingerprint": self.card.fingerprint,
                    "funding": self.card.funding,
                    "installments": null,
                    "last4": self.card.last4,
                    "network": self.card.brand,
                    "overcapture": { "maximum_amount_capturable": self.amount },
                    "three_d_secure": null,
                    "wallet": null,
                },
            },
            "receipt_email": self.receipt_email,
            "receipt_url": format!("https://pay.stripe.com/receipts/payment/{}", self.id),
            "refunded": succeeded && self.amount_refunded == self.amount,
            "refunds": {
                "object": "list",
                "data": refunds,
                "has_more": false,
                "url": format!("/v1/charges/{}/refunds", self.id),
            },
            "status": if succeeded { "succeeded" } else { "failed" },
        });
        overlay(&mut object, fields);
        Value::Object(object)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Refund {
    pub(crate) id: String,
    pub(crate) amount: i64,
    pub(crate) charge: String,
    pub(crate) payment_intent: String,
    pub(crate) currency: String,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) reason: Option<&'static str>,
    pub(crate) balance_transaction: String,
    pub(crate) created: i64,
    /// `succeeded`, `pending` or `failed`.
    pub(crate) status: &'static str,
    /// Why a `failed` refund failed.
    pub(crate) failure_reason: Option<&'static str>,
}

impl Refund {
    pub(crate) fn render(&self, fixtures: &Fixtures) -> Value {
        let mut object = fixtures.refund();
        let fields = json!({
            "id": self.id,
            "object": "refund",
            "amount": self.amount,
            "balance_transaction": self.balance_transaction,
            "charge": self.charge,
            "created": self.created,
            "currency": self.currency,
            "metadata": self.metadata,
            "payment_intent": self.payment_intent,
            "reason": self.reason,
            "status": self.status,
            "failure_reason": self.failure_reason,
        });
        overlay(&mut object, fields);
        Value::Object(object)
    }
}

/// A PaymentMethod made from a test token (`pm_card_visa`), as Stripe makes a fresh one each time
/// a token is used.
#[derive(Debug, Clone)]
pub(crate) struct PaymentMethod {
    pub(crate) id: String,
    pub(crate) card: &'static TestCard,
    pub(crate) created: i64,
}

impl PaymentMethod {
    pub(crate) fn render(&self, fixtures: &Fixtures) -> Value {
        let mut object = fixtures.payment_method();
        let fields = json!({
            "id": self.id,
            "object": "payment_method",
            "card": {
                "brand": self.card.brand,
                "country": self.card.country,
                "display_brand": self.card.brand,
                "fingerprint": self.card.fingerprint,
                "funding": self.card.funding,
                "generated_from": null,
                "last4": self.card.last4,
                "networks": { "available": [self.card.brand], "preferred": null },
                "wallet": null,
            },
            "created": self.created,
            "customer": null,
            "livemode": false,
            "metadata": {},
            "type": "card",
        });
        overlay(&mut object, fields);
        Value::Object(object)
    }
}

/// How a test card fails, with Stripe's codes and wording.
#[derive(Debug)]
pub(crate) struct Decline {
    pub(crate) code: &'static str,
    pub(crate) decline_code: &'static str,
    pub(crate) message: &'static str,
    pub(crate) seller_message: &'static str,
    pub(crate) advice_code: Option<&'static str>,
}

/// One of Stripe's test payment methods (https://docs.stripe.com/testing#cards).
#[derive(Debug)]
pub(crate) struct TestCard {
    pub(crate) token: &'static str,
    brand: &'static str,
    last4: &'static str,
    funding: &'static str,
    country: &'static str,
    fingerprint: &'static str,
    pub(crate) decline: Option<Decline>,
    pub(crate) refunds: RefundOutcome,
}

/// What becomes of a refund of a card's charge (https://docs.stripe.com/testing#refunds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefundOutcome {
    Succeeds,
    /// `pm_card_refundFail`: answered `succeeded`, then `failed` (`charge.refund.updated`,
    /// `refund.updated`, `refund.failed`).
    FailsLater,
    /// `pm_card_pendingRefund`: answered `pending`, then `succeeded` (`charge.refund.updated`,
    /// `refund.updated`).
    PendsThenSucceeds,
}

const GENERIC_DECLINE: Decline = Decline {
    code: "card_declined",
    decline_code: "generic_decline",
    message: "Your card was declined.",
    seller_message: "The bank did not return any further details with this decline.",
    advice_code: None,
};

pub(crate) static TEST_CARDS: &[TestCard] = &[
    TestCard {
        token: "pm_card_visa",
        brand: "visa",
        last4: "4242",
        funding: "credit",
        country: "US",
        fingerprint: "Xt5EWLLDS7FJjR1c",
        decline: None,
        refunds: RefundOutcome::Succeeds,
    },
    TestCard {
        token: "pm_card_mastercard",
        brand: "mastercard",
        last4: "4444",
        funding: "credit",
        country: "US",
        fingerprint: "8mB2iLOUbbuDSJwH",
        decline: None,
        refunds: RefundOutcome::Succeeds,
    },
    TestCard {
        token: "pm_card_chargeDeclined",
        brand: "visa",
        last4: "0002",
        funding: "credit",
        country: "US",
        fingerprint: "b3TuhWKT7ZXHWaNb",
        decline: Some(GENERIC_DECLINE),
        refunds: RefundOutcome::Succeeds,
    },
    TestCard {
        token: "pm_card_chargeDeclinedInsufficientFunds",
        brand: "visa",
        last4: "9995",
        funding: "credit",
        country: "US",
        fingerprint: "GQ6k0dEdC3TbWGAe",
        decline: Some(Decline {
            code: "card_declined",
            decline_code: "insufficient_funds",
            message: "Your card has insufficient funds.",
            seller_message: "The bank returned the decline code `insufficient_funds`.",
            advice_code: Some("try_again_later"),
        }),
        refunds: RefundOutcome::Succeeds,
    },
    TestCard {
        token: "pm_card_chargeDeclinedExpiredCard",
        brand: "visa",
        last4: "0069",
        funding: "credit",
        country: "US",
        fingerprint: "r8kxQ9OHOuGKzTBp",
        decline: Some(Decline {
            code: "expired_card",
            decline_code: "expired_card",
            message: "Your card has expired.",
            seller_message: "The bank returned the decline code `expired_card`.",
            advice_code: None,
        }),
        refunds: RefundOutcome::Succeeds,
    },
    TestCard {
        token: "pm_card_refundFail",
        brand: "visa",
        last4: "5126",
        funding: "credit",
        country: "US",
        fingerprint: "hT5cXoiOjRDzCWEg",
        decline: None,
        refunds: RefundOutcome::FailsLater,
    },
    TestCard {
        token: "pm_card_pendingRefund",
        brand: "visa",
        last4: "7726",
        funding: "credit",
        country: "US",
        fingerprint: "pQ2mWc7rLxUe0JsN",
        decline: None,
        refunds: RefundOutcome::PendsThenSucceeds,
    },
];

pub(crate) fn test_card(token: &str) -> Option<&'static TestCard> {
    TEST_CARDS.iter().find(|card| card.token == token)
}

/// Writes `fields` over `object`, merging nested objects key by key so a fixture's sub-fields
/// that are not overridden (a card's `checks`, `exp_month`...) stay. `metadata` is data, not
/// structure: it is always replaced whole.
fn overlay(object: &mut Map<String, Value>, fields: Value) {
    let Value::Object(fields) = fields else {
        return;
    };
    for (key, value) in fields {
        match (object.get_mut(&key), value) {
            (Some(Value::Object(existing)), Value::Object(nested)) if key != "metadata" => {
                overlay(existing, Value::Object(nested));
            }
            (_, value) => {
                object.insert(key, value);
            }
        }
    }
}
