//! Routes of the Orders and payments table of the API: checkout, the customer's orders, paying,
//! cancelling, and the admin's view and status workflow.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{AppError, Problem};
use crate::http::auth::AuthUser;
use crate::http::extract::{Json, Path, Query};
use crate::http::idempotency::IdempotencyKey;
use crate::http::pagination::{PageParams, Paged};
use crate::orders::saga::SagaError;
use crate::orders::store;
use crate::orders::{Order, OrderStatus, ShippingAddress};
use crate::state::AppState;
use std::time::Duration;

pub fn router() -> OpenApiRouter<AppState> {
    // Paying and cancelling honour an Idempotency-Key through the layer; checkout has its own,
    // bound to the order row.
    let changes = OpenApiRouter::new()
        .routes(routes!(cancel_order))
        .routes(routes!(pay_order))
        .route_layer(crate::http::idempotency::layer());
    OpenApiRouter::new()
        .routes(routes!(checkout, list_orders))
        .routes(routes!(get_order))
        .merge(changes)
}

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin_list_orders))
        .routes(routes!(admin_set_status))
        .routes(routes!(admin_transactions))
        .routes(routes!(admin_refund))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    shipping_address: ShippingAddress,
}

async fn load(state: &AppState, order: Uuid) -> Result<Order, AppError> {
    store::find(&state.db, order)
        .await?
        .ok_or(AppError::NotFound)
}

/// The `Idempotency-Key` header, if sent, read as every route that takes one reads it.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    Ok(IdempotencyKey::from_headers(headers)?.map(|key| key.as_str().to_owned()))
}

/// Who owns the order, if the caller may act on it (its owner or an admin): one indexed read, not
/// the whole order. Anyone else gets 404.
async fn owner(state: &AppState, user: &AuthUser, order: Uuid) -> Result<Uuid, AppError> {
    match store::owner_of(&state.db, order).await? {
        Some(owner) if owner == user.id || user.is_admin() => Ok(owner),
        _ => Err(AppError::NotFound),
    }
}

/// The order if the caller may see it: its owner or an admin. Anyone else gets 404.
async fn visible(state: &AppState, user: &AuthUser, order: Uuid) -> Result<Order, AppError> {
    let order = load(state, order).await?;
    if order.user_id != user.id && !user.is_admin() {
        return Err(AppError::NotFound);
    }
    Ok(order)
}

/// Check out the current cart: stock is held until `expires_at`, the payment intent is created,
/// and the cart is emptied. With an `Idempotency-Key` header, a repeat returns the same order.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = CheckoutRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "Makes the checkout safe to retry")),
    security(("bearer" = [])),
    responses((status = 201, body = Order),
              (status = 409, description = "Stock is short: `errors` lists `{variant_id, requested, available}`", body = Problem),
              (status = 422, description = "Empty cart, invalid address, or an idempotency key reused with another body", body = Problem),
              (status = 503, body = Problem)))]
async fn checkout(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<CheckoutRequest>,
) -> Result<(StatusCode, axum::Json<Order>), AppError> {
    let address = ShippingAddress::parse(body.shipping_address)?;
    let key = idempotency_key(&headers)?;
    let hash = Sha256::digest(
        serde_json::to_vec(&address).map_err(|error| AppError::Internal(error.into()))?,
    )
    .to_vec();
    if let Some(key) = &key
        && let Some((order, previous)) = store::checkout_request(&state.db, user.id, key).await?
    {
        if previous != hash {
            return Err(AppError::invalid(
                "Idempotency-Key",
                "was used with a different request",
            ));
        }
        return Ok((StatusCode::CREATED, axum::Json(load(&state, order).await?)));
    }

    let request = crate::orders::checkout::CheckoutRequest {
        user: user.id,
        address,
        idempotency: key.map(|key| (key, hash)),
    };
    let order = crate::orders::checkout::check_out(&state, request).await?;
    Ok((StatusCode::CREATED, axum::Json(load(&state, order).await?)))
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/orders", tag = "orders", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = Paged<Order>), (status = 401, body = Problem)))]
async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Paged<Order>>, AppError> {
    let (orders, total) =
        store::list(&state.db, Some(user.id), None, page.limit(), page.offset()).await?;
    Ok(axum::Json(page.wrap(orders, total)))
}

/// One order with its status history (its owner or an admin; 404 for anyone else).
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 404, body = Problem)))]
async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Order>, AppError> {
    Ok(axum::Json(visible(&state, &user, id).await?))
}

/// A saga that could not be reached may have just stopped because its order became final (it
/// stops once it has answered): then the answer is the final order's 409, as the saga gives it.
/// Otherwise 503, and nothing was changed.
async fn saga_error_of(state: &AppState, order: Uuid, error: SagaError) -> AppError {
    if let SagaError::Unavailable(_) = &error {
        match store::status_of(&state.db, order).await {
            Ok(Some(status)) if status.is_final() => {
                return saga_error(SagaError::NotPending(status));
            }
            Ok(_) => {}
            Err(read) => {
                tracing::warn!(%order, error = %read, "order status unreadable after a saga was unreachable")
            }
        }
    }
    saga_error(error)
}

fn saga_error(error: SagaError) -> AppError {
    match error {
        SagaError::NotPending(status) => AppError::conflict(
            "illegal-transition",
            format!(
                "The order is {}; only a pending order can be paid or cancelled.",
                status.as_str()
            ),
        ),
        SagaError::NotFound => AppError::NotFound,
        SagaError::Unavailable(why) => AppError::Unavailable(why),
        SagaError::PaymentMethodRefused(why) => AppError::invalid("payment_method", why),
    }
}

/// Cancel a pending order (its owner) or any pending order (an admin): the stock returns at once.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Order>, AppError> {
    let actor = if owner(&state, &user, id).await? == user.id {
        "customer"
    } else {
        "admin"
    };
    let cancelled = state
        .actors
        .orders
        .cancel(id, actor, format!("cancelled by the {actor}"))
        .await;
    if let Err(error) = cancelled {
        return Err(saga_error_of(&state, id, error).await);
    }
    Ok(axum::Json(load(&state, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// A Stripe test payment method: `pm_card_visa` succeeds, `pm_card_chargeDeclined` declines.
    #[schema(
        example = "pm_card_visa",
        max_length = 100,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
    )]
    payment_method: String,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentState {
    /// The intent's status after confirming (`succeeded`, `processing`, ...) or `failed`.
    status: String,
    error: Option<String>,
}

/// Confirm the order's payment with a payment method (test mode). The outcome reaches the order
/// through the payment event, as a webhook would.
#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders", params(("id" = Uuid, Path)),
    request_body = PayRequest, security(("bearer" = [])),
    responses((status = 200, body = PaymentState), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem, description = "The payment method is malformed, or the provider does not know it or cannot use it; nothing was charged")))]
async fn pay_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<PayRequest>,
) -> Result<axum::Json<PaymentState>, AppError> {
    if owner(&state, &user, id).await? != user.id {
        return Err(AppError::NotFound);
    }
    let method = body.payment_method.trim();
    if method.is_empty() || body.payment_method.chars().count() > 100 {
        return Err(AppError::invalid(
            "payment_method",
            "must be 1 to 100 characters",
        ));
    }
    let attempt = match state.actors.orders.pay(id, method.to_owned()).await {
        Ok(attempt) => attempt,
        Err(error) => return Err(saga_error_of(&state, id, error).await),
    };
    Ok(axum::Json(PaymentState {
        status: attempt.status,
        error: attempt.error,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminOrderQuery {
    status: Option<OrderStatus>,
    /// 1-based page number (default 1; 0 is read as 1).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    page: Option<u32>,
    /// Items per page (default 20, at most 100; other values are clamped to 1 to 100).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    per_page: Option<u32>,
}

/// Every order, newest first, optionally by status.
#[utoipa::path(get, path = "/orders", tag = "admin", params(AdminOrderQuery), security(("bearer" = [])),
    responses((status = 200, body = Paged<Order>), (status = 403, body = Problem)))]
async fn admin_list_orders(
    State(state): State<AppState>,
    Query(query): Query<AdminOrderQuery>,
) -> Result<axum::Json<Paged<Order>>, AppError> {
    let page = PageParams {
        page: query.page,
        per_page: query.per_page,
    };
    let (orders, total) =
        store::list(&state.db, None, query.status, page.limit(), page.offset()).await?;
    Ok(axum::Json(page.wrap(orders, total)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    status: OrderStatus,
    reason: Option<String>,
}

/// Move an order along its workflow: `paid → shipped → delivered`, `pending → cancelled`,
/// `paid | delivered → refunded` (through a refund at the payment provider). Anything else is 409.
#[utoipa::path(post, path = "/orders/{id}/status", tag = "admin", params(("id" = Uuid, Path)),
    request_body = StatusRequest, security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem)))]
async fn admin_set_status(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<StatusRequest>,
) -> Result<axum::Json<Order>, AppError> {
    let order = load(&state, id).await?;
    let illegal = || {
        AppError::conflict(
            "illegal-transition",
            format!(
                "An order cannot go from {} to {}.",
                order.status.as_str(),
                body.status.as_str()
            ),
        )
    };
    if !order.status.can_become(body.status) {
        return Err(illegal());
    }
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    match body.status {
        // Only a payment marks an order paid.
        OrderStatus::Paid | OrderStatus::Pending => return Err(illegal()),
        OrderStatus::Cancelled => {
            let reason = reason.unwrap_or("cancelled by an admin").to_owned();
            let cancelled = state.actors.orders.cancel(id, "admin", reason).await;
            if let Err(error) = cancelled {
                return Err(saga_error_of(&state, id, error).await);
            }
        }
        OrderStatus::Refunded => {
            let reason = reason.unwrap_or("refunded by an admin");
            let key = Some("full".to_owned());
            refund(&state, &order, None, reason, key.as_deref()).await?;
        }
        OrderStatus::Shipped | OrderStatus::Delivered => {
            move_status(&state, id, order.status, body.status, reason).await?;
        }
    }
    Ok(axum::Json(load(&state, id).await?))
}

async fn move_status(
    state: &AppState,
    id: Uuid,
    from: OrderStatus,
    to: OrderStatus,
    reason: Option<&str>,
) -> Result<(), AppError> {
    let mut tx = state.db.begin().await?;
    if !store::transition(&mut tx, id, from, to, "admin", reason).await? {
        return Err(AppError::conflict(
            "illegal-transition",
            "The order changed meanwhile; reload it.",
        ));
    }
    tx.commit().await?;
    Ok(())
}

/// Decides a refund of `amount`, or of all that is left (durably, with the order locked so that two admins cannot
/// refund more than was paid), then asks the refund worker to settle it now. A provider that
/// does not answer leaves the refund owed: the worker retries it, and the order shows it once
/// settled.
async fn refund(
    state: &AppState,
    order: &Order,
    amount: Option<i64>,
    reason: &str,
    key: Option<&str>,
) -> Result<(), AppError> {
    let intent = order
        .payment
        .payment_intent_id
        .clone()
        .ok_or_else(|| AppError::conflict("not-paid", "The order has no payment to refund."))?;
    let mut tx = state.db.begin().await?;
    // Locks the order row for the rest of the transaction.
    let status = store::status_for_update(&mut tx, order.id)
        .await?
        .ok_or(AppError::NotFound)?;
    if !status.can_become(OrderStatus::Refunded) {
        return Err(AppError::conflict(
            "illegal-transition",
            format!("A {} order cannot be refunded.", status.as_str()),
        ));
    }
    let left = order.total - crate::payments::refunds::committed_for(&mut tx, order.id).await?;
    if left < 1 {
        return Err(AppError::conflict(
            "nothing-to-refund",
            "The order is refunded in full already (or the rest is being refunded).",
        ));
    }
    let amount = amount.unwrap_or(left);
    if amount < 1 || amount > left {
        return Err(AppError::invalid(
            "amount",
            format!("must be between 1 and {left}, what is left to refund"),
        ));
    }
    // With an Idempotency-Key, a repeat of the request decides nothing new.
    let dedup_key = match key {
        Some(key) => format!("admin:{}:key:{key}", order.id),
        None => format!(
            "admin:{}:{}",
            order.id,
            crate::payments::refunds::count_for(&mut tx, order.id).await? + 1
        ),
    };
    crate::payments::refunds::owe(
        &mut tx,
        crate::payments::refunds::Owed {
            order_id: order.id,
            intent_id: &intent,
            amount,
            currency: &order.currency,
            reason: crate::payments::refunds::RefundReason::Admin,
            dedup_key,
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(order = %order.id, amount, reason, "refund decided by an admin");
    let wait = Duration::from_secs(state.settings.payments.timeout_secs + 1);
    if let Err(error) = state.actors.refunds.settle_now(wait).await {
        tracing::warn!(order = %order.id, %error, "refund decided, not settled yet; the worker retries it");
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Minor units, at most what is left to refund.
    #[schema(minimum = 1)]
    amount: i64,
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// Refund part (or the rest) of a paid or delivered order through the payment provider. The
/// order becomes `refunded` only once refunded in full; until then it keeps its status and shows
/// `refunded_amount`. A refund the provider has not taken yet stays owed and is retried. With an
/// `Idempotency-Key`, a repeated request refunds nothing more.
#[utoipa::path(post, path = "/orders/{id}/refunds", tag = "admin",
    params(("id" = Uuid, Path),
           ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "A repeat with the same key refunds nothing more")),
    request_body = RefundRequest, security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn admin_refund(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<RefundRequest>,
) -> Result<axum::Json<Order>, AppError> {
    let key = idempotency_key(&headers)?;
    let order = load(&state, id).await?;
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("refunded by an admin");
    if reason.chars().count() > 500 {
        return Err(AppError::invalid(
            "reason",
            "must be at most 500 characters",
        ));
    }
    refund(&state, &order, Some(body.amount), reason, key.as_deref()).await?;
    Ok(axum::Json(load(&state, id).await?))
}

#[derive(Serialize, ToSchema)]
pub struct OrderTransactions {
    #[schema(value_type = Vec<Object>)]
    transactions: Vec<crate::payments::transactions::Transaction>,
    #[schema(value_type = Vec<Object>)]
    events: Vec<crate::payments::events::StoredEvent>,
}

/// Every payment transaction and Stripe event stored for an order.
#[utoipa::path(get, path = "/orders/{id}/transactions", tag = "admin", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = OrderTransactions), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn admin_transactions(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<OrderTransactions>, AppError> {
    load(&state, id).await?;
    Ok(axum::Json(OrderTransactions {
        transactions: crate::payments::transactions::for_order(&state.db, id).await?,
        events: crate::payments::events::for_order(&state.db, id).await?,
    }))
}
