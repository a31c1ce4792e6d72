//! Routes of the Cart table of the API: one persistent cart per customer, served by its actor.

use std::future::Future;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use shop_actors::ActorError;
use shop_actors::carts::{CartError, CartSnapshot, Carts};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::carts::{self, Cart, cart_error};
use crate::error::{AppError, Problem};
use crate::http::auth::AuthUser;
use crate::http::extract::{Json, Path};
use crate::http::idempotency::{ReadBack, RequestClaim};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    // Every change to the cart honours an Idempotency-Key.
    let changes = OpenApiRouter::new()
        .routes(routes!(clear_cart))
        .routes(routes!(add_item))
        .routes(routes!(update_item, remove_item))
        .routes(routes!(apply_coupon, remove_coupon))
        .route_layer(crate::http::idempotency::layer());
    OpenApiRouter::new()
        .routes(routes!(get_cart))
        .merge(changes)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyCoupon {
    /// The coupon's code, in any case.
    #[schema(max_length = 64)]
    code: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    /// The variant to add; or `product_id` for a simple product.
    variant_id: Option<Uuid>,
    product_id: Option<Uuid>,
    /// 1 to 99; added to the line's quantity when the variant is already in the cart.
    #[schema(minimum = 1, maximum = 99)]
    quantity: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItem {
    /// 0 removes the line.
    #[schema(minimum = 0, maximum = 99)]
    quantity: i64,
}

fn quantity(raw: i64, min: i64) -> Result<i32, AppError> {
    if (min..=99).contains(&raw) {
        Ok(raw as i32)
    } else {
        Err(AppError::invalid(
            "quantity",
            format!("must be {min} to 99"),
        ))
    }
}

async fn respond(
    state: &AppState,
    result: Result<CartSnapshot, CartError>,
    variant: Option<Uuid>,
) -> Result<axum::Json<Cart>, AppError> {
    let snapshot = result.map_err(|e| cart_error(e, variant))?;
    Ok(axum::Json(carts::view(state, snapshot).await?))
}

/// A change to a customer's cart, under the request's Idempotency-Key claim if it has one.
struct CartChange<'a> {
    state: &'a AppState,
    user: Uuid,
    claim: Option<RequestClaim>,
}

impl<'a> CartChange<'a> {
    fn new(state: &'a AppState, user: &AuthUser, claim: Option<Extension<RequestClaim>>) -> Self {
        Self {
            state,
            user: user.id,
            claim: claim.map(|Extension(claim)| claim),
        }
    }

    /// A retry of a request whose change was made (its answer was lost): the cart as it is, and
    /// the change is not made again.
    async fn already_made(&self) -> Option<Result<CartSnapshot, CartError>> {
        let claim = self.claim.as_ref()?;
        if !claim.applied() {
            return None;
        }
        metrics::counter!("cart_changes_answered_as_made_total", "by" => "retry").increment(1);
        Some(self.state.actors.carts.get(self.user).await)
    }

    /// Makes the change, marking the claim applied with it. When its outcome is unknown (the
    /// cart died mid-change, a commit's answer was lost), the claim is read back: made, the
    /// answer is the cart as it is now; not made, the error (a retry is safe).
    async fn make<F, Fut>(&self, change: F) -> Result<CartSnapshot, CartError>
    where
        F: FnOnce(Carts) -> Fut,
        Fut: Future<Output = Result<CartSnapshot, CartError>>,
    {
        let carts =
            (self.state.actors.carts).under_claim(self.claim.as_ref().map(RequestClaim::key_claim));
        let error = match change(carts).await {
            Err(
                error @ (CartError::Interrupted(_) | CartError::Actor(ActorError::Timeout { .. })),
            ) => error,
            answered => return answered,
        };
        let Some(claim) = &self.claim else {
            return Err(error);
        };
        match claim.read_back(&self.state.db).await {
            Ok(ReadBack::Made) => {
                metrics::counter!("cart_changes_answered_as_made_total", "by" => "read_back")
                    .increment(1);
                self.state.actors.carts.get(self.user).await
            }
            Ok(ReadBack::NotMade | ReadBack::NotOurs) => Err(error),
            Err(read) => {
                // The middleware's release tries again; an applied claim is never released.
                tracing::warn!(error = ?read, "reading back a cart change of unknown outcome failed");
                Err(error)
            }
        }
    }
}

/// A gift line belongs to its rule, not to the customer: 409 for any change to it.
async fn refuse_gift_line(state: &AppState, item: Uuid) -> Result<(), AppError> {
    let rules = crate::promotions::lookup::active_gift_rules(state).await?;
    if rules.iter().any(|rule| rule.id == item) {
        return Err(AppError::conflict(
            "gift-line",
            "A gift line comes and goes with its rule; it cannot be changed or removed.",
        ));
    }
    Ok(())
}

/// The caller's cart with product details and totals.
#[utoipa::path(get, path = "/cart", tag = "cart", security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 401, body = Problem), (status = 503, body = Problem)))]
async fn get_cart(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<Cart>, AppError> {
    let result = state.actors.carts.get(user.id).await;
    respond(&state, result, None).await
}

/// Add a variant (or a simple product) to the cart.
#[utoipa::path(post, path = "/cart/items", tag = "cart", request_body = AddItem,
    security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = Problem),
              (status = 409, description = "More than can be sold now", body = Problem),
              (status = 422, body = Problem)))]
async fn add_item(
    State(state): State<AppState>,
    user: AuthUser,
    claim: Option<Extension<RequestClaim>>,
    Json(body): Json<AddItem>,
) -> Result<axum::Json<Cart>, AppError> {
    let change = CartChange::new(&state, &user, claim);
    if let Some(made) = change.already_made().await {
        return respond(&state, made, None).await;
    }
    let quantity = quantity(body.quantity, 1)?;
    if body.variant_id.is_some() == body.product_id.is_some() {
        return Err(AppError::invalid(
            "variant_id",
            "give exactly one of variant_id and product_id",
        ));
    }
    let sellable = carts::sellable(&state, body.variant_id, body.product_id).await?;
    let result = change
        .make(|carts| async move {
            let added = carts.add(user.id, sellable.variant_id, quantity, sellable.unit_price);
            added.await
        })
        .await;
    respond(&state, result, Some(sellable.variant_id)).await
}

/// Change a line's quantity; 0 removes it.
#[utoipa::path(patch, path = "/cart/items/{item_id}", tag = "cart",
    params(("item_id" = Uuid, Path)), request_body = UpdateItem, security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = Problem),
              (status = 409, description = "More than can be sold now, or a gift line", body = Problem),
              (status = 422, body = Problem)))]
async fn update_item(
    State(state): State<AppState>,
    user: AuthUser,
    claim: Option<Extension<RequestClaim>>,
    Path(item): Path<Uuid>,
    Json(body): Json<UpdateItem>,
) -> Result<axum::Json<Cart>, AppError> {
    let change = CartChange::new(&state, &user, claim);
    if let Some(made) = change.already_made().await {
        return respond(&state, made, None).await;
    }
    let quantity = quantity(body.quantity, 0)?;
    refuse_gift_line(&state, item).await?;
    let result = change
        .make(|carts| async move { carts.set_quantity(user.id, item, quantity).await })
        .await;
    respond(&state, result, None).await
}

/// Remove a line.
#[utoipa::path(delete, path = "/cart/items/{item_id}", tag = "cart",
    params(("item_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = Problem),
              (status = 409, description = "A gift line", body = Problem)))]
async fn remove_item(
    State(state): State<AppState>,
    user: AuthUser,
    claim: Option<Extension<RequestClaim>>,
    Path(item): Path<Uuid>,
) -> Result<axum::Json<Cart>, AppError> {
    let change = CartChange::new(&state, &user, claim);
    if let Some(made) = change.already_made().await {
        return respond(&state, made, None).await;
    }
    refuse_gift_line(&state, item).await?;
    let result = change
        .make(|carts| async move { carts.remove(user.id, item).await })
        .await;
    respond(&state, result, None).await
}

/// Empty the cart.
#[utoipa::path(delete, path = "/cart", tag = "cart", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
async fn clear_cart(
    State(state): State<AppState>,
    user: AuthUser,
    claim: Option<Extension<RequestClaim>>,
) -> Result<StatusCode, AppError> {
    let change = CartChange::new(&state, &user, claim);
    let result = match change.already_made().await {
        Some(made) => made,
        None => {
            change
                .make(|carts| async move { carts.clear(user.id).await })
                .await
        }
    };
    result.map_err(|e| cart_error(e, None))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Apply a coupon to the cart (one per cart: it replaces any other). 422 with a `reason` when it
/// does not apply; an unknown and an inactive code get the same answer, and too many wrong codes
/// are 429 for a while.
#[utoipa::path(post, path = "/cart/coupon", tag = "cart", request_body = ApplyCoupon,
    security(("bearer" = [])),
    responses((status = 200, body = Cart),
              (status = 422, description = "`reason`: expired, not_started, usage_limit_reached, min_order_not_met, not_applicable or unknown", body = Problem),
              (status = 429, description = "Too many wrong codes; see Retry-After", body = Problem)))]
async fn apply_coupon(
    State(state): State<AppState>,
    user: AuthUser,
    claim: Option<Extension<RequestClaim>>,
    Json(body): Json<ApplyCoupon>,
) -> Result<axum::Json<Cart>, AppError> {
    use crate::promotions::{CouponRefusal, guesses};
    let change = CartChange::new(&state, &user, claim);
    if let Some(made) = change.already_made().await {
        return respond(&state, made, None).await;
    }
    let limit = state.settings.rate_limit.coupon_failures_per_customer;
    if let Some(free_at) = guesses::blocked_until(&state.db, user.id, limit).await? {
        let wait = (free_at - chrono::Utc::now()).num_seconds().max(1);
        return Err(AppError::RateLimited {
            retry_after_secs: wait as u64,
        });
    }
    let code = body.code.trim();
    let coupon = if crate::promotions::admin::is_coupon_code(code) {
        crate::promotions::lookup::coupon_by_code(&state, code).await?
    } else {
        None
    };
    let Some(coupon) = coupon.filter(|c| c.active) else {
        guesses::record(&state.db, user.id).await?;
        return Err(AppError::CouponRefused(CouponRefusal::Unknown));
    };
    if let Some(limit) = coupon.usage_limit {
        let used = state
            .actors
            .coupons
            .used(coupon.id)
            .await
            .map_err(coupon_error)?;
        if used >= limit {
            return Err(AppError::CouponRefused(CouponRefusal::UsageLimitReached));
        }
    }
    // Priced before it is kept: a coupon that does not apply changes nothing.
    let snapshot = state
        .actors
        .carts
        .get(user.id)
        .await
        .map_err(|e| cart_error(e, None))?;
    let promotions = carts::Promotions {
        coupon: Some(coupon.clone()),
        gift_rules: crate::promotions::lookup::active_gift_rules(&state).await?,
    };
    let mut trial = snapshot;
    trial.coupon_code = Some(coupon.code.clone());
    let priced = carts::priced(
        &state,
        carts::Details::Cached,
        trial,
        &promotions,
        &state.settings.store.currency,
        chrono::Utc::now(),
    )
    .await?;
    if let Some(reason) = priced.coupon.as_ref().and_then(|c| c.reason) {
        return Err(AppError::CouponRefused(reason));
    }
    let result = change
        .make(|carts| async move { carts.set_coupon(user.id, Some(coupon.code)).await })
        .await;
    respond(&state, result, None).await
}

fn coupon_error(error: shop_actors::coupons::CouponError) -> AppError {
    AppError::Unavailable(format!("{error:?}"))
}

/// Remove the cart's coupon.
#[utoipa::path(delete, path = "/cart/coupon", tag = "cart", security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 401, body = Problem)))]
async fn remove_coupon(
    State(state): State<AppState>,
    user: AuthUser,
    claim: Option<Extension<RequestClaim>>,
) -> Result<axum::Json<Cart>, AppError> {
    let change = CartChange::new(&state, &user, claim);
    if let Some(made) = change.already_made().await {
        return respond(&state, made, None).await;
    }
    let result = change
        .make(|carts| async move { carts.set_coupon(user.id, None).await })
        .await;
    respond(&state, result, None).await
}
