//! Routes of the Promotions table of the API, admin side: coupons and gift rules under
//! `/admin` (the admin layer guards them). Every write invalidates the cached promotion lookups;
//! DELETE deactivates (204), it never removes: past orders keep their snapshot.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{AppError, Problem};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{PageParams, Paged};
use crate::promotions::admin::{self, CouponChanges, GiftRuleChanges, NewCoupon, NewGiftRule};
use crate::promotions::{Coupon, GiftRule, store};
use crate::state::AppState;

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_coupons, create_coupon))
        .routes(routes!(get_coupon, update_coupon, deactivate_coupon))
        .routes(routes!(list_gift_rules, create_gift_rule))
        .routes(routes!(update_gift_rule, deactivate_gift_rule))
}

/// Every coupon, active or not, newest first.
#[utoipa::path(get, path = "/coupons", tag = "admin", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = Paged<Coupon>), (status = 403, body = Problem)))]
async fn list_coupons(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Paged<Coupon>>, AppError> {
    let (coupons, total) = store::list_coupons(&state.db, page.limit(), page.offset()).await?;
    Ok(axum::Json(page.wrap(coupons, total)))
}

/// Create a coupon.
#[utoipa::path(post, path = "/coupons", tag = "admin", request_body = NewCoupon,
    security(("bearer" = [])),
    responses((status = 201, body = Coupon), (status = 403, body = Problem),
              (status = 409, description = "The code is taken (in any case)", body = Problem),
              (status = 422, description = "Invalid fields, each named in `errors`; nothing is written", body = Problem)))]
async fn create_coupon(
    State(state): State<AppState>,
    Json(body): Json<NewCoupon>,
) -> Result<(StatusCode, axum::Json<Coupon>), AppError> {
    let coupon = admin::create_coupon(&state, body).await?;
    Ok((StatusCode::CREATED, axum::Json(coupon)))
}

/// One coupon, active or not.
#[utoipa::path(get, path = "/coupons/{id}", tag = "admin", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Coupon), (status = 403, body = Problem),
              (status = 404, body = Problem)))]
async fn get_coupon(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Coupon>, AppError> {
    let coupon = store::coupon(&state.db, id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(axum::Json(coupon))
}

/// Partly update a coupon: fields left out stay, `null` clears an optional one; the result is
/// validated as a whole. `{"active": true}` reactivates a deactivated coupon.
#[utoipa::path(patch, path = "/coupons/{id}", tag = "admin", params(("id" = Uuid, Path)),
    request_body = CouponChanges, security(("bearer" = [])),
    responses((status = 200, body = Coupon), (status = 403, body = Problem),
              (status = 404, body = Problem),
              (status = 409, description = "The code is taken (in any case)", body = Problem),
              (status = 422, description = "Invalid fields, each named in `errors`; nothing is written", body = Problem)))]
async fn update_coupon(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<CouponChanges>,
) -> Result<axum::Json<Coupon>, AppError> {
    Ok(axum::Json(admin::update_coupon(&state, id, body).await?))
}

/// Deactivate a coupon (204, also when it already was inactive): it no longer applies to carts;
/// the row stays, so past orders keep their snapshot of it.
#[utoipa::path(delete, path = "/coupons/{id}", tag = "admin", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 204, description = "Deactivated; the coupon stays, inactive"),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn deactivate_coupon(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    admin::deactivate::<Coupon>(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every gift rule, active or not, newest first.
#[utoipa::path(get, path = "/gift-rules", tag = "admin", params(PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Paged<GiftRule>), (status = 403, body = Problem)))]
async fn list_gift_rules(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Paged<GiftRule>>, AppError> {
    let (rules, total) = store::list_gift_rules(&state.db, page.limit(), page.offset()).await?;
    Ok(axum::Json(page.wrap(rules, total)))
}

/// Create a gift rule: while a cart meets its conditions it carries the gift line at no cost.
#[utoipa::path(post, path = "/gift-rules", tag = "admin", request_body = NewGiftRule,
    security(("bearer" = [])),
    responses((status = 201, body = GiftRule), (status = 403, body = Problem),
              (status = 422, description = "Invalid fields (an unknown or archived variant included), each named in `errors`; nothing is written", body = Problem)))]
async fn create_gift_rule(
    State(state): State<AppState>,
    Json(body): Json<NewGiftRule>,
) -> Result<(StatusCode, axum::Json<GiftRule>), AppError> {
    let rule = admin::create_gift_rule(&state, body).await?;
    Ok((StatusCode::CREATED, axum::Json(rule)))
}

/// Partly update a gift rule: fields left out stay, `null` clears an optional one.
#[utoipa::path(patch, path = "/gift-rules/{id}", tag = "admin", params(("id" = Uuid, Path)),
    request_body = GiftRuleChanges, security(("bearer" = [])),
    responses((status = 200, body = GiftRule), (status = 403, body = Problem),
              (status = 404, body = Problem),
              (status = 422, description = "Invalid fields, each named in `errors`; nothing is written", body = Problem)))]
async fn update_gift_rule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<GiftRuleChanges>,
) -> Result<axum::Json<GiftRule>, AppError> {
    Ok(axum::Json(admin::update_gift_rule(&state, id, body).await?))
}

/// Deactivate a gift rule (204, also when it already was inactive): carts lose its gift line;
/// past orders keep theirs.
#[utoipa::path(delete, path = "/gift-rules/{id}", tag = "admin", params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 204, description = "Deactivated; the rule stays, inactive"),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn deactivate_gift_rule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    admin::deactivate::<GiftRule>(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
