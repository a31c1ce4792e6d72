//! Checkout: the customer's cart becomes an order in one hand-off. The cart actor gives its lines
//! to [`place`] inside one message (`Carts::check_out`), so an item added meanwhile waits behind
//! the checkout and lands in the emptied cart; [`place`] prices the lines into a [`NewOrder`] and
//! starts its saga, whose order transaction empties the cart's rows too: the order exists and
//! the cart is empty, or neither.
//!
//! A checkout whose answer was lost (the client gave up, the connection dropped) is not made
//! twice: its cart is empty by then, and a checkout of an empty cart right after answers with the
//! pending order the first attempt made.

use std::time::Duration;

use shop_actors::carts::{CartSnapshot, CheckoutError as HandoffError};
use shop_actors::inventory::Shortage;
use uuid::Uuid;

use super::ShippingAddress;
use super::saga::{Checkout, CheckoutError, CouponClaim};
use super::store;
use super::{NewLine, NewOrder};
use crate::error::AppError;
use crate::state::AppState;

/// What a checkout asks for, besides the cart.
pub struct CheckoutRequest {
    pub user: Uuid,
    pub address: ShippingAddress,
    /// The `Idempotency-Key` and the hash of the body it came with.
    pub idempotency: Option<(String, Vec<u8>)>,
}

/// Why [`place`] made no order of the cart's lines.
enum NotPlaced {
    Empty,
    /// A concurrent checkout with the same idempotency key made this order.
    KeyReused(Uuid),
    Refused(AppError),
}

pub fn stock_conflict(short: Vec<Shortage>) -> AppError {
    AppError::Conflict {
        kind: "insufficient-stock",
        detail: "Some items are not available in the quantity asked.".into(),
        errors: serde_json::to_value(short).ok(),
    }
}

/// Checks out `request.user`'s cart; the id of the order made (or of the one an earlier attempt
/// made, see the module doc).
pub async fn check_out(state: &AppState, request: CheckoutRequest) -> Result<Uuid, AppError> {
    let user = request.user;
    // The saga answers within the orders' call timeout; the placer is given a little more.
    let place_timeout = Duration::from_secs(state.settings.checkout.call_timeout_secs + 1);
    let placing = state.clone();
    let handed = state
        .actors
        .carts
        .check_out(user, place_timeout, move |cart| async move {
            place(&placing, cart, request).await
        })
        .await;
    let earlier = || store::just_checked_out(&state.db, user);
    match handed {
        Ok(order) => Ok(order),
        Err(HandoffError::Refused(NotPlaced::KeyReused(order))) => Ok(order),
        Err(HandoffError::Refused(NotPlaced::Refused(error))) => Err(error),
        Err(HandoffError::Refused(NotPlaced::Empty)) => match earlier().await? {
            Some(order) => Ok(order),
            None => Err(AppError::invalid("cart", "is empty")),
        },
        Err(HandoffError::NotPlaced(error)) => Err(crate::carts::cart_error(error, None)),
        // The placer may still be writing an order: no guess at which, a retry queues behind it
        // in the cart and finds it.
        Err(HandoffError::Unanswered(error)) => Err(crate::carts::cart_error(error, None)),
    }
}

/// Prices the cart's lines into an order and runs the saga's checkout steps.
async fn place(
    state: &AppState,
    cart: CartSnapshot,
    request: CheckoutRequest,
) -> Result<Uuid, NotPlaced> {
    if cart.lines.is_empty() {
        return Err(NotPlaced::Empty);
    }
    let refused = NotPlaced::Refused;
    let cart_id = cart.cart_id;
    // Priced on the server with the pricing module, the coupon read fresh from PostgreSQL (its
    // limits decide the use): nothing of the price comes from the client.
    let coupon = match &cart.coupon_code {
        Some(code) => crate::promotions::store::find_by_code(&state.db, code)
            .await
            .map_err(|e| refused(e.into()))?,
        None => None,
    };
    let promotions = crate::carts::Promotions {
        coupon,
        gift_rules: crate::promotions::lookup::active_gift_rules(state)
            .await
            .map_err(refused)?,
    };
    let now = chrono::Utc::now();
    let currency = &state.settings.store.currency;
    let details = crate::carts::Details::Database;
    let cart = crate::carts::priced(state, details, cart, &promotions, currency, now)
        .await
        .map_err(refused)?;
    if let Some(gone) = cart.items.iter().find(|item| !item.available) {
        return Err(refused(AppError::Conflict {
            kind: "item-unavailable",
            detail: format!("{} is no longer sold; remove it from the cart.", gone.name),
            errors: Some(
                serde_json::json!([{"variant_id": gone.variant_id, "requested": gone.quantity, "available": 0}]),
            ),
        }));
    }
    // A coupon that does not apply now is not dropped silently: the customer decides.
    if let Some(reason) = cart.coupon.as_ref().and_then(|c| c.reason) {
        return Err(refused(AppError::CouponRefused(reason)));
    }
    let claim = promotions
        .coupon
        .as_ref()
        .filter(|_| cart.coupon.is_some())
        .map(|c| CouponClaim {
            coupon_id: c.id,
            usage_limit: c.usage_limit,
            per_customer_limit: c.per_customer_limit,
        });
    let coupon_code = cart.coupon.as_ref().map(|c| c.code.clone());
    let ttl = Duration::from_secs(state.settings.checkout.reservation_ttl_secs);
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(ttl).map_err(|e| refused(AppError::Internal(e.into())))?;
    let order = NewOrder {
        id: Uuid::now_v7(),
        user_id: request.user,
        lines: cart
            .items
            .iter()
            .map(|item| NewLine {
                variant_id: item.variant_id,
                product_id: item.product_id,
                sku: item.sku.clone(),
                name: item.name.clone(),
                options: item.options.clone(),
                unit_price: item.unit_price,
                quantity: item.quantity,
                discount: item.discount,
                gift: item.gift,
            })
            .collect(),
        subtotal: cart.subtotal,
        discount_total: cart.discount_total,
        currency: cart.currency.clone(),
        shipping_address: serde_json::to_value(&request.address)
            .map_err(|e| refused(AppError::Internal(e.into())))?,
        expires_at,
        payment_provider: state.actors.payments.name().to_owned(),
        coupon_id: claim.as_ref().map(|c| c.coupon_id),
        coupon_code,
        note: None,
        cart_id: Some(cart_id),
    };
    let order_id = order.id;
    let checkout = Checkout {
        order,
        coupon: claim,
        idempotency: request.idempotency,
        ttl,
        deadline: state.actors.orders.deadline(),
    };
    match state.actors.orders.checkout(checkout).await {
        Ok(order) => Ok(order),
        Err(CheckoutError::KeyReused(existing)) => Err(NotPlaced::KeyReused(existing)),
        Err(CheckoutError::Short(short)) => Err(refused(stock_conflict(short))),
        Err(CheckoutError::CouponLimitReached) => Err(refused(AppError::CouponRefused(
            crate::promotions::CouponRefusal::UsageLimitReached,
        ))),
        // The saga's answer did not come in time; the order may yet exist (then it stands, and
        // the cart goes): a 503 only when there is none.
        Err(CheckoutError::Unavailable(why)) => match store::status_of(&state.db, order_id).await {
            Ok(Some(_)) => Ok(order_id),
            _ => Err(refused(AppError::Unavailable(why))),
        },
    }
}
