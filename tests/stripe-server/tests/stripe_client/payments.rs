//! The payment flows the shop uses: pay with a card that succeeds, one that is declined, cancel,
//! refund; each checked through the client's answers and the signed webhook the endpoint gets.

use std::collections::HashMap;

use stripe::StripeError;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CancelPaymentIntentCancellationReason, ConfirmPaymentIntent,
    CreatePaymentIntent, CreatePaymentIntentAutomaticPaymentMethods, RetrievePaymentIntent,
};
use stripe_core::refund::CreateRefund;
use stripe_core::{ChargeStatus, PaymentIntent, PaymentIntentStatus};
use stripe_types::Currency;
use stripe_webhook::EventObject;

use crate::support::{Stripe, start};

async fn create_intent(stripe: &Stripe, amount: i64, order_id: &str) -> PaymentIntent {
    CreatePaymentIntent::new(amount, Currency::USD)
        .metadata(HashMap::from([(
            "order_id".to_owned(),
            order_id.to_owned(),
        )]))
        .automatic_payment_methods(CreatePaymentIntentAutomaticPaymentMethods::new(true))
        .send(&stripe.client)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_visa_payment_succeeds_and_the_signed_succeeded_event_reaches_the_endpoint() {
    let stripe = start().await;

    let created = create_intent(&stripe, 2_500, "order-1").await;
    assert_eq!(created.status, PaymentIntentStatus::RequiresPaymentMethod);
    assert_eq!(created.amount, 2_500);
    assert_eq!(created.currency, Currency::USD);
    assert_eq!(created.metadata["order_id"], "order-1");
    assert!(!created.livemode);
    let secret = created.client_secret.clone().unwrap();
    assert!(secret.starts_with(&format!("{}_secret_", created.id)));

    let confirmed = ConfirmPaymentIntent::new(created.id.clone())
        .payment_method("pm_card_visa")
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(confirmed.status, PaymentIntentStatus::Succeeded);
    assert_eq!(confirmed.amount_received, 2_500);
    assert!(confirmed.last_payment_error.is_none());
    let charge_id = confirmed.latest_charge.as_ref().unwrap().id().clone();
    assert!(charge_id.as_str().starts_with("ch_"));

    let retrieved = RetrievePaymentIntent::new(created.id.clone())
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(retrieved.status, PaymentIntentStatus::Succeeded);
    assert_eq!(retrieved.latest_charge.unwrap().id(), &charge_id);

    let delivery = stripe
        .receiver
        .event("payment_intent.succeeded", created.id.as_str())
        .await;
    let event = delivery.verify();
    assert_eq!(event.type_.as_str(), "payment_intent.succeeded");
    assert!(event.id.as_str().starts_with("evt_"));
    assert!(!event.livemode);
    match event.data.object {
        EventObject::PaymentIntentSucceeded(intent) => {
            assert_eq!(intent.id, created.id);
            assert_eq!(intent.status, PaymentIntentStatus::Succeeded);
            assert_eq!(intent.amount_received, 2_500);
            assert_eq!(intent.metadata["order_id"], "order-1");
        }
        other => panic!("unexpected event object {other:?}"),
    }

    let charge = stripe
        .receiver
        .event("charge.succeeded", charge_id.as_str())
        .await;
    match charge.verify().data.object {
        EventObject::ChargeSucceeded(charge) => {
            assert_eq!(charge.status, ChargeStatus::Succeeded);
            assert_eq!(charge.amount, 2_500);
            assert!(charge.paid);
            assert_eq!(charge.metadata["order_id"], "order-1");
        }
        other => panic!("unexpected event object {other:?}"),
    }
}

#[tokio::test]
async fn creating_with_confirm_and_a_payment_method_charges_at_once() {
    let stripe = start().await;

    let intent = CreatePaymentIntent::new(1_000, Currency::EUR)
        .payment_method("pm_card_mastercard")
        .confirm(true)
        .send(&stripe.client)
        .await
        .unwrap();

    assert_eq!(intent.status, PaymentIntentStatus::Succeeded);
    assert_eq!(intent.currency, Currency::EUR);
    let payment_method = intent.payment_method.unwrap();
    assert!(payment_method.id().as_str().starts_with("pm_"));
    assert_ne!(payment_method.id().as_str(), "pm_card_mastercard");
}

#[tokio::test]
async fn a_declined_card_answers_402_and_leaves_the_intent_awaiting_a_payment_method() {
    let stripe = start().await;
    let created = create_intent(&stripe, 4_200, "order-2").await;

    let error = ConfirmPaymentIntent::new(created.id.clone())
        .payment_method("pm_card_chargeDeclined")
        .send(&stripe.client)
        .await
        .unwrap_err();
    let StripeError::Stripe(error, status) = error else {
        panic!("expected a Stripe error, got {error:?}");
    };
    assert_eq!(status, 402);
    assert_eq!(error.type_.as_str(), "card_error");
    assert_eq!(error.code.as_ref().unwrap().as_str(), "card_declined");
    assert_eq!(error.decline_code.as_deref(), Some("generic_decline"));
    let in_error = error.payment_intent.as_ref().unwrap();
    assert_eq!(in_error.id, created.id);
    assert_eq!(in_error.status, PaymentIntentStatus::RequiresPaymentMethod);

    let intent = RetrievePaymentIntent::new(created.id.clone())
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(intent.status, PaymentIntentStatus::RequiresPaymentMethod);
    assert!(intent.payment_method.is_none());
    let last_error = intent.last_payment_error.unwrap();
    assert_eq!(last_error.code.unwrap().as_str(), "card_declined");
    assert_eq!(last_error.decline_code.as_deref(), Some("generic_decline"));
    assert_eq!(
        last_error.payment_method.unwrap().card.unwrap().last4,
        "0002"
    );

    let delivery = stripe
        .receiver
        .event("payment_intent.payment_failed", created.id.as_str())
        .await;
    match delivery.verify().data.object {
        EventObject::PaymentIntentPaymentFailed(intent) => {
            let error = intent.last_payment_error.unwrap();
            assert_eq!(error.decline_code.as_deref(), Some("generic_decline"));
        }
        other => panic!("unexpected event object {other:?}"),
    }

    // A declined intent can be paid with another card, as at Stripe.
    let retried = ConfirmPaymentIntent::new(created.id.clone())
        .payment_method("pm_card_visa")
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(retried.status, PaymentIntentStatus::Succeeded);
    assert!(retried.last_payment_error.is_none());
}

#[tokio::test]
async fn a_canceled_intent_cannot_be_confirmed() {
    let stripe = start().await;
    let created = create_intent(&stripe, 1_500, "order-3").await;

    let canceled = CancelPaymentIntent::new(created.id.clone())
        .cancellation_reason(CancelPaymentIntentCancellationReason::Abandoned)
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(canceled.status, PaymentIntentStatus::Canceled);
    assert!(canceled.canceled_at.is_some());
    assert_eq!(canceled.cancellation_reason.unwrap().as_str(), "abandoned");

    let delivery = stripe
        .receiver
        .event("payment_intent.canceled", created.id.as_str())
        .await;
    assert!(matches!(
        delivery.verify().data.object,
        EventObject::PaymentIntentCanceled(intent) if intent.status == PaymentIntentStatus::Canceled
    ));

    let error = ConfirmPaymentIntent::new(created.id.clone())
        .payment_method("pm_card_visa")
        .send(&stripe.client)
        .await
        .unwrap_err();
    let StripeError::Stripe(error, status) = error else {
        panic!("expected a Stripe error, got {error:?}");
    };
    assert_eq!(status, 400);
    assert_eq!(error.type_.as_str(), "invalid_request_error");
    assert_eq!(
        error.code.unwrap().as_str(),
        "payment_intent_unexpected_state"
    );

    let error = CancelPaymentIntent::new(created.id.clone())
        .send(&stripe.client)
        .await
        .unwrap_err();
    assert!(matches!(error, StripeError::Stripe(_, 400)));
}

#[tokio::test]
async fn a_refund_refunds_the_charge_and_sends_charge_refunded() {
    let stripe = start().await;
    let created = create_intent(&stripe, 3_000, "order-4").await;
    let paid = ConfirmPaymentIntent::new(created.id.clone())
        .payment_method("pm_card_visa")
        .send(&stripe.client)
        .await
        .unwrap();
    let charge_id = paid.latest_charge.unwrap().id().clone();

    let partial = CreateRefund::new()
        .payment_intent(created.id.as_str())
        .amount(1_000)
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(partial.amount, 1_000);
    assert_eq!(partial.status.as_deref(), Some("succeeded"));
    assert_eq!(partial.charge.as_ref().unwrap().id(), &charge_id);
    assert_eq!(partial.payment_intent.as_ref().unwrap().id(), &created.id);

    let first = stripe
        .receiver
        .wait_for(|deliveries| {
            deliveries
                .iter()
                .find(|delivery| delivery.json()["type"] == "charge.refunded")
                .cloned()
        })
        .await;
    match first.verify().data.object {
        EventObject::ChargeRefunded(charge) => {
            assert_eq!(charge.id, charge_id);
            assert_eq!(charge.amount_refunded, 1_000);
            assert!(!charge.refunded);
        }
        other => panic!("unexpected event object {other:?}"),
    }

    // The rest: no amount means whatever is left.
    let rest = CreateRefund::new()
        .payment_intent(created.id.as_str())
        .send(&stripe.client)
        .await
        .unwrap();
    assert_eq!(rest.amount, 2_000);

    let full = stripe
        .receiver
        .wait_for(|deliveries| {
            deliveries
                .iter()
                .filter(|delivery| delivery.json()["type"] == "charge.refunded")
                .nth(1)
                .cloned()
        })
        .await;
    match full.verify().data.object {
        EventObject::ChargeRefunded(charge) => {
            assert_eq!(charge.amount_refunded, 3_000);
            assert!(charge.refunded);
            assert_eq!(charge.refunds.unwrap().data.len(), 2);
        }
        other => panic!("unexpected event object {other:?}"),
    }

    let error = CreateRefund::new()
        .payment_intent(created.id.as_str())
        .send(&stripe.client)
        .await
        .unwrap_err();
    let StripeError::Stripe(error, 400) = error else {
        panic!("expected a 400, got {error:?}");
    };
    assert_eq!(error.code.unwrap().as_str(), "charge_already_refunded");
}

#[tokio::test]
async fn an_unpaid_intent_has_nothing_to_refund() {
    let stripe = start().await;
    let created = create_intent(&stripe, 3_000, "order-5").await;

    let error = CreateRefund::new()
        .payment_intent(created.id.as_str())
        .send(&stripe.client)
        .await
        .unwrap_err();

    assert!(matches!(error, StripeError::Stripe(_, 400)), "{error:?}");
}
