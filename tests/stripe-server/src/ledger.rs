//! The account's state (PaymentIntents, charges, refunds, payment methods) and the transitions
//! the API drives, with Stripe's state rules. Synchronous and free of I/O: the router calls it
//! under one lock, and each operation returns the response together with the events it emits.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::fixtures::Fixtures;
use crate::objects::{
    Charge, Intent, IntentStatus, PaymentMethod, Refund, RefundOutcome, new_id,
    random_alphanumerics, test_card,
};
use crate::params::Params;

/// Something that happened to an object, to become an event: its type and the object as it is now.
#[derive(Debug)]
pub(crate) struct Occurrence {
    pub(crate) event_type: &'static str,
    pub(crate) object: Value,
}

/// What an operation answers and what it emits. A declined card is an effect too: Stripe answers
/// 402 yet the PaymentIntent changed and events go out.
#[derive(Debug)]
pub(crate) struct Effect {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) events: Vec<Occurrence>,
}

impl Effect {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            events: Vec::new(),
        }
    }

    fn emitting(mut self, event_type: &'static str, object: Value) -> Self {
        self.events.push(Occurrence { event_type, object });
        self
    }
}

const CREATE_INTENT_PARAMS: &[&str] = &[
    "amount",
    "automatic_payment_methods",
    "capture_method",
    "confirm",
    "confirmation_method",
    "currency",
    "customer",
    "description",
    "error_on_requires_action",
    "expand",
    "metadata",
    "off_session",
    "payment_method",
    "payment_method_options",
    "payment_method_types",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_group",
    "use_stripe_sdk",
];

/// Create parameters the server does not model but shows back on the object, as Stripe does.
const ECHOED_INTENT_PARAMS: &[&str] = &[
    "confirmation_method",
    "customer",
    "description",
    "receipt_email",
    "setup_future_usage",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_group",
];

const CONFIRM_INTENT_PARAMS: &[&str] = &[
    "error_on_requires_action",
    "expand",
    "mandate_data",
    "off_session",
    "payment_method",
    "payment_method_options",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "use_stripe_sdk",
];

const CONFIRMABLE: &str = "requires_confirmation, requires_action, requires_payment_method";
const CANCELABLE: &str =
    "requires_payment_method, requires_capture, requires_confirmation, requires_action, processing";

/// Stripe's smallest chargeable amount is about 50 cents in every currency; 50 minor units is
/// the usd/eur figure, which is what the shop uses.
const MINIMUM_AMOUNT: i64 = 50;

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    intents: HashMap<String, Intent>,
    intent_order: Vec<String>,
    charges: HashMap<String, Charge>,
    refunds: HashMap<String, Refund>,
    payment_methods: HashMap<String, PaymentMethod>,
}

impl Ledger {
    pub(crate) fn create_intent(
        &mut self,
        fixtures: &Fixtures,
        params: &Params,
        now: i64,
    ) -> Result<Effect, ApiError> {
        params.only(CREATE_INTENT_PARAMS)?;
        let amount = params
            .integer("amount")?
            .ok_or_else(|| ApiError::parameter_missing("amount"))?;
        let currency = params.required("currency")?.to_ascii_lowercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(ApiError::parameter_invalid(
                "currency",
                format!("Invalid currency: {currency}."),
            ));
        }
        if amount < MINIMUM_AMOUNT {
            return Err(ApiError::invalid_request(
                "amount_too_small",
                format!("Amount must be at least {MINIMUM_AMOUNT} {currency} minor units"),
            )
            .with_param("amount")
            .unsaved());
        }
        if params
            .get("capture_method")
            .is_some_and(|method| method != "automatic" && method != "automatic_async")
        {
            // Separate authorization and capture is not modelled: refuse it rather than
            // pretend, so a test relying on it fails loudly.
            return Err(ApiError::parameter_invalid(
                "capture_method",
                "shop-stripe-testserver models only automatic capture".to_owned(),
            ));
        }
        let confirm = params.boolean("confirm")?.unwrap_or(false);
        let automatic = params.boolean("automatic_payment_methods[enabled]")?;
        let mut payment_method_types = params.list("payment_method_types");
        let automatic_payment_methods = automatic.unwrap_or(payment_method_types.is_empty());
        if payment_method_types.is_empty() {
            payment_method_types.push("card".to_owned());
        }
        let payment_method = params
            .get("payment_method")
            .map(|token| self.resolve_payment_method(token, now))
            .transpose()?;
        if confirm && payment_method.is_none() {
            return Err(missing_payment_method());
        }

        let id = new_id("pi");
        let mut echoed = Map::new();
        for name in ECHOED_INTENT_PARAMS {
            if let Some(value) = params.get(name) {
                echoed.insert((*name).to_owned(), json!(value));
            }
        }
        let intent = Intent {
            client_secret: format!("{id}_secret_{}", random_alphanumerics(25)),
            id: id.clone(),
            amount,
            amount_received: 0,
            currency,
            status: if payment_method.is_some() {
                IntentStatus::RequiresConfirmation
            } else {
                IntentStatus::RequiresPaymentMethod
            },
            metadata: params
                .hash("metadata")
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect(),
            payment_method: payment_method.clone(),
            payment_method_types,
            automatic_payment_methods,
            latest_charge: None,
            last_payment_error: None,
            created: now,
            canceled_at: None,
            cancellation_reason: None,
            echoed,
        };
        let created = intent.render(fixtures, None);
        self.intents.insert(id.clone(), intent);
        self.intent_order.push(id.clone());

        let expand = params.list("expand");
        match payment_method {
            Some(payment_method) if confirm => {
                let mut effect =
                    self.attempt_payment(fixtures, &id, &payment_method, &expand, now)?;
                effect.events.insert(
                    0,
                    Occurrence {
                        event_type: "payment_intent.created",
                        object: created,
                    },
                );
                Ok(effect)
            }
            _ => Ok(Effect::ok(self.render_intent(fixtures, &id, &expand)?)
                .emitting("payment_intent.created", created)),
        }
    }

    pub(crate) fn retrieve_intent(
        &self,
        fixtures: &Fixtures,
        id: &str,
        params: &Params,
    ) -> Result<Effect, ApiError> {
        params.only(&["client_secret", "expand"])?;
        Ok(Effect::ok(self.render_intent(
            fixtures,
            id,
            &params.list("expand"),
        )?))
    }

    pub(crate) fn confirm_intent(
        &mut self,
        fixtures: &Fixtures,
        id: &str,
        params: &Params,
        now: i64,
    ) -> Result<Effect, ApiError> {
        params.only(CONFIRM_INTENT_PARAMS)?;
        let intent = self.intent(id)?;
        if !matches!(
            intent.status,
            IntentStatus::RequiresPaymentMethod | IntentStatus::RequiresConfirmation
        ) {
            let message = if intent.status == IntentStatus::Succeeded {
                "You cannot confirm this PaymentIntent because it has already succeeded after \
                 being previously confirmed."
                    .to_owned()
            } else {
                format!(
                    "You cannot confirm this PaymentIntent because it has a status of {}. Only a \
                     PaymentIntent with one of the following statuses may be confirmed: {CONFIRMABLE}.",
                    intent.status.as_str()
                )
            };
            return Err(self.unexpected_state(fixtures, id, message));
        }
        let existing = intent.payment_method.clone();
        let payment_method = match params.get("payment_method") {
            Some(token) => self.resolve_payment_method(token, now)?,
            None => existing.ok_or_else(missing_payment_method)?,
        };
        self.attempt_payment(fixtures, id, &payment_method, &params.list("expand"), now)
    }

    pub(crate) fn cancel_intent(
        &mut self,
        fixtures: &Fixtures,
        id: &str,
        params: &Params,
        now: i64,
    ) -> Result<Effect, ApiError> {
        params.only(&["cancellation_reason", "expand"])?;
        let reason = params.one_of(
            "cancellation_reason",
            &[
                "abandoned",
                "duplicate",
                "fraudulent",
                "requested_by_customer",
            ],
        )?;
        let status = self.intent(id)?.status;
        if matches!(status, IntentStatus::Succeeded | IntentStatus::Canceled) {
            let message = format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. Only a \
                 PaymentIntent with one of the following statuses may be canceled: {CANCELABLE}.",
                status.as_str()
            );
            return Err(self.unexpected_state(fixtures, id, message));
        }
        let intent = self.intent_mut(id)?;
        intent.status = IntentStatus::Canceled;
        intent.canceled_at = Some(now);
        intent.cancellation_reason = reason;
        let object = self.render_intent(fixtures, id, &[])?;
        Ok(
            Effect::ok(self.render_intent(fixtures, id, &params.list("expand"))?)
                .emitting("payment_intent.canceled", object),
        )
    }

    pub(crate) fn create_refund(
        &mut self,
        fixtures: &Fixtures,
        params: &Params,
        now: i64,
    ) -> Result<Effect, ApiError> {
        params.only(&[
            "amount",
            "charge",
            "currency",
            "customer",
            "expand",
            "instructions_email",
            "metadata",
            "origin",
            "payment_intent",
            "reason",
            "refund_application_fee",
            "reverse_transfer",
        ])?;
        let reason = params.one_of(
            "reason",
            &["duplicate", "fraudulent", "requested_by_customer"],
        )?;
        let requested = params.integer("amount")?;
        if requested.is_some_and(|amount| amount <= 0) {
            return Err(ApiError::parameter_invalid(
                "amount",
                "Invalid positive integer".to_owned(),
            ));
        }
        let charge_id = match (params.get("charge"), params.get("payment_intent")) {
            (Some(charge), _) => self.charge(charge)?.id.clone(),
            (None, Some(intent_id)) => {
                let intent = self.intents.get(intent_id).ok_or_else(|| {
                    ApiError::resource_missing("payment_intent", intent_id, "payment_intent")
                })?;
                match (&intent.latest_charge, intent.status) {
                    (Some(charge), IntentStatus::Succeeded) => charge.clone(),
                    _ => {
                        return Err(ApiError::invalid_request(
                            "payment_intent_unexpected_state",
                            format!(
                                "This PaymentIntent ({intent_id}) does not have a successful \
                                 charge to refund."
                            ),
                        )
                        .with_param("payment_intent"));
                    }
                }
            }
            (None, None) => {
                return Err(ApiError::parameter_missing("charge").with_message(
                    "One of the following params should be provided for this request: \
                     payment_intent or charge.",
                ));
            }
        };
        let charge = self.charge(&charge_id)?;
        let outcome = charge.card.refunds;
        if !charge.succeeded() {
            return Err(ApiError::invalid_request(
                "charge_not_refundable",
                format!("Charge {charge_id} has failed and cannot be refunded."),
            ));
        }
        let remaining = charge.amount - charge.amount_refunded;
        if remaining == 0 {
            return Err(ApiError::invalid_request(
                "charge_already_refunded",
                format!("Charge {charge_id} has already been refunded."),
            ));
        }
        let amount = requested.unwrap_or(remaining);
        if amount > remaining {
            return Err(ApiError::invalid_request(
                "amount_too_large",
                format!(
                    "Refund amount ({amount}) is greater than unrefunded amount on charge \
                     ({remaining})"
                ),
            )
            .with_param("amount"));
        }

        let refund = Refund {
            id: new_id("re"),
            amount,
            charge: charge_id.clone(),
            payment_intent: charge.payment_intent.clone(),
            currency: charge.currency.clone(),
            metadata: params
                .hash("metadata")
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect(),
            reason,
            balance_transaction: new_id("txn"),
            created: now,
            status: match outcome {
                RefundOutcome::PendsThenSucceeds => "pending",
                RefundOutcome::Succeeds | RefundOutcome::FailsLater => "succeeded",
            },
            failure_reason: None,
        };
        let refund_id = refund.id.clone();
        let body = refund.render(fixtures);
        self.refunds.insert(refund_id.clone(), refund);
        if let Some(charge) = self.charges.get_mut(&charge_id) {
            charge.amount_refunded += amount;
            charge.refunds.insert(0, refund_id.clone());
        }
        let charge = self.render_charge(fixtures, &charge_id)?;
        let effect = Effect::ok(body.clone())
            .emitting("refund.created", body)
            .emitting("charge.refunded", charge);
        // What Stripe does "some time later": here its events follow the creation's in the
        // webhook queue (a test holds them back with `pause_webhooks`).
        let later = match outcome {
            RefundOutcome::Succeeds => return Ok(effect),
            RefundOutcome::FailsLater => {
                // Failed at the card's bank: the amount is the charge's again.
                if let Some(charge) = self.charges.get_mut(&charge_id) {
                    charge.amount_refunded -= amount;
                }
                ("failed", Some("expired_or_canceled_card"))
            }
            RefundOutcome::PendsThenSucceeds => ("succeeded", None),
        };
        let refund = self
            .refunds
            .get_mut(&refund_id)
            .ok_or_else(|| ApiError::resource_missing("refund", &refund_id, "refund"))?;
        (refund.status, refund.failure_reason) = later;
        let updated = refund.render(fixtures);
        let effect = effect
            .emitting("charge.refund.updated", updated.clone())
            .emitting("refund.updated", updated.clone());
        Ok(if outcome == RefundOutcome::FailsLater {
            effect.emitting("refund.failed", updated)
        } else {
            effect
        })
    }

    pub(crate) fn retrieve_refund(
        &self,
        fixtures: &Fixtures,
        id: &str,
    ) -> Result<Effect, ApiError> {
        let refund = self
            .refunds
            .get(id)
            .ok_or_else(|| ApiError::resource_missing("refund", id, "refund"))?;
        Ok(Effect::ok(refund.render(fixtures)))
    }

    pub(crate) fn retrieve_charge(
        &self,
        fixtures: &Fixtures,
        id: &str,
    ) -> Result<Effect, ApiError> {
        Ok(Effect::ok(self.render_charge(fixtures, id)?))
    }

    /// Every PaymentIntent, oldest first, as the API would show it now.
    pub(crate) fn intents(&self, fixtures: &Fixtures) -> Vec<Value> {
        self.intent_order
            .iter()
            .filter_map(|id| self.render_intent(fixtures, id, &[]).ok())
            .collect()
    }

    /// Charges the card: the PaymentIntent succeeds, or the decline lands in `last_payment_error`
    /// and the PaymentIntent asks for another payment method (answered with a 402, as Stripe does).
    fn attempt_payment(
        &mut self,
        fixtures: &Fixtures,
        intent_id: &str,
        payment_method_id: &str,
        expand: &[String],
        now: i64,
    ) -> Result<Effect, ApiError> {
        let payment_method = self
            .payment_methods
            .get(payment_method_id)
            .cloned()
            .ok_or_else(|| {
                ApiError::resource_missing("PaymentMethod", payment_method_id, "payment_method")
            })?;
        let intent = self.intent(intent_id)?;
        let charge = Charge {
            id: new_id("ch"),
            amount: intent.amount,
            amount_refunded: 0,
            currency: intent.currency.clone(),
            payment_intent: intent.id.clone(),
            payment_method: payment_method.id.clone(),
            card: payment_method.card,
            balance_transaction: payment_method.card.decline.is_none().then(|| new_id("txn")),
            metadata: intent.metadata.clone(),
            description: intent.echoed.get("description").cloned(),
            receipt_email: intent.echoed.get("receipt_email").cloned(),
            refunds: Vec::new(),
            created: now,
        };
        let charge_id = charge.id.clone();
        self.charges.insert(charge_id.clone(), charge);
        let charge_object = self.render_charge(fixtures, &charge_id)?;

        match &payment_method.card.decline {
            None => {
                let intent = self.intent_mut(intent_id)?;
                intent.status = IntentStatus::Succeeded;
                intent.amount_received = intent.amount;
                intent.payment_method = Some(payment_method.id.clone());
                intent.latest_charge = Some(charge_id);
                intent.last_payment_error = None;
                let object = self.render_intent(fixtures, intent_id, &[])?;
                Ok(Effect::ok(self.render_intent(fixtures, intent_id, expand)?)
                    .emitting("charge.succeeded", charge_object)
                    .emitting("payment_intent.succeeded", object))
            }
            Some(decline) => {
                let mut error = ApiError::card_error(decline.code, decline.message.to_owned())
                    .with("charge", json!(charge_id))
                    .with("decline_code", json!(decline.decline_code))
                    .with("payment_method", payment_method.render(fixtures));
                if let Some(advice) = decline.advice_code {
                    error = error.with("advice_code", json!(advice));
                }
                let intent = self.intent_mut(intent_id)?;
                intent.status = IntentStatus::RequiresPaymentMethod;
                intent.payment_method = None;
                intent.latest_charge = Some(charge_id);
                intent.last_payment_error = Some(error.error_object());
                let object = self.render_intent(fixtures, intent_id, &[])?;
                let error = error.with("payment_intent", object.clone());
                Ok(Effect {
                    status: error.status,
                    body: error.body(),
                    events: Vec::new(),
                }
                .emitting("charge.failed", charge_object)
                .emitting("payment_intent.payment_failed", object))
            }
        }
    }

    /// A test token (`pm_card_visa`) becomes a fresh PaymentMethod each time it is used, as at
    /// Stripe; an id made that way can be used again.
    fn resolve_payment_method(&mut self, id: &str, now: i64) -> Result<String, ApiError> {
        if let Some(card) = test_card(id) {
            let payment_method = PaymentMethod {
                id: new_id("pm"),
                card,
                created: now,
            };
            let id = payment_method.id.clone();
            self.payment_methods.insert(id.clone(), payment_method);
            return Ok(id);
        }
        if self.payment_methods.contains_key(id) {
            return Ok(id.to_owned());
        }
        Err(ApiError::resource_missing(
            "PaymentMethod",
            id,
            "payment_method",
        ))
    }

    fn unexpected_state(&self, fixtures: &Fixtures, id: &str, message: String) -> ApiError {
        let error = ApiError::invalid_request("payment_intent_unexpected_state", message);
        match self.render_intent(fixtures, id, &[]) {
            Ok(object) => error.with("payment_intent", object),
            Err(_) => error,
        }
    }

    fn intent(&self, id: &str) -> Result<&Intent, ApiError> {
        self.intents
            .get(id)
            .ok_or_else(|| ApiError::resource_missing("payment_intent", id, "intent"))
    }

    fn intent_mut(&mut self, id: &str) -> Result<&mut Intent, ApiError> {
        self.intents
            .get_mut(id)
            .ok_or_else(|| ApiError::resource_missing("payment_intent", id, "intent"))
    }

    fn charge(&self, id: &str) -> Result<&Charge, ApiError> {
        self.charges
            .get(id)
            .ok_or_else(|| ApiError::resource_missing("charge", id, "charge"))
    }

    fn render_intent(
        &self,
        fixtures: &Fixtures,
        id: &str,
        expand: &[String],
    ) -> Result<Value, ApiError> {
        let intent = self.intent(id)?;
        let expanded_charge = match &intent.latest_charge {
            Some(charge) if expand.iter().any(|field| field == "latest_charge") => {
                Some(self.render_charge(fixtures, charge)?)
            }
            _ => None,
        };
        Ok(intent.render(fixtures, expanded_charge))
    }

    fn render_charge(&self, fixtures: &Fixtures, id: &str) -> Result<Value, ApiError> {
        let charge = self.charge(id)?;
        let refunds = charge
            .refunds
            .iter()
            .filter_map(|refund| self.refunds.get(refund))
            .map(|refund| refund.render(fixtures))
            .collect();
        Ok(charge.render(fixtures, refunds))
    }
}

fn missing_payment_method() -> ApiError {
    ApiError::invalid_request(
        "payment_intent_unexpected_state",
        "You cannot confirm this PaymentIntent because it's missing a payment method. You can \
         either update the PaymentIntent with a payment method and then confirm it again, or \
         confirm it again directly with a payment method."
            .to_owned(),
    )
}
