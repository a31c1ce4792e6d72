//! Routes of the Cart table of the API: one persistent cart per customer, served by its actor.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::carts::{self, Cart, cart_error};
use crate::error::{AppError, Problem};
use crate::http::auth::AuthUser;
use crate::http::extract::{Json, Path};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_cart, clear_cart))
        .routes(routes!(add_item))
        .routes(routes!(update_item, remove_item))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    /// The variant to add; or `product_id` for a simple product.
    variant_id: Option<Uuid>,
    product_id: Option<Uuid>,
    /// 1 to 99; added to the line's quantity when the variant is already in the cart.
    quantity: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItem {
    /// 0 removes the line.
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
    result: Result<shop_actors::carts::CartSnapshot, shop_actors::carts::CartError>,
    variant: Option<Uuid>,
) -> Result<axum::Json<Cart>, AppError> {
    let snapshot = result.map_err(|e| cart_error(e, variant))?;
    Ok(axum::Json(
        carts::view(&state.db, snapshot, &state.settings.store.currency).await?,
    ))
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
    Json(body): Json<AddItem>,
) -> Result<axum::Json<Cart>, AppError> {
    let quantity = quantity(body.quantity, 1)?;
    if body.variant_id.is_some() == body.product_id.is_some() {
        return Err(AppError::invalid(
            "variant_id",
            "give exactly one of variant_id and product_id",
        ));
    }
    let sellable = carts::sellable(&state.db, body.variant_id, body.product_id).await?;
    let result = state
        .actors
        .carts
        .add(user.id, sellable.variant_id, quantity, sellable.unit_price)
        .await;
    respond(&state, result, Some(sellable.variant_id)).await
}

/// Change a line's quantity; 0 removes it.
#[utoipa::path(patch, path = "/cart/items/{item_id}", tag = "cart",
    params(("item_id" = Uuid, Path)), request_body = UpdateItem, security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn update_item(
    State(state): State<AppState>,
    user: AuthUser,
    Path(item): Path<Uuid>,
    Json(body): Json<UpdateItem>,
) -> Result<axum::Json<Cart>, AppError> {
    let quantity = quantity(body.quantity, 0)?;
    let result = state
        .actors
        .carts
        .set_quantity(user.id, item, quantity)
        .await;
    respond(&state, result, None).await
}

/// Remove a line.
#[utoipa::path(delete, path = "/cart/items/{item_id}", tag = "cart",
    params(("item_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = Problem)))]
async fn remove_item(
    State(state): State<AppState>,
    user: AuthUser,
    Path(item): Path<Uuid>,
) -> Result<axum::Json<Cart>, AppError> {
    let result = state.actors.carts.remove(user.id, item).await;
    respond(&state, result, None).await
}

/// Empty the cart.
#[utoipa::path(delete, path = "/cart", tag = "cart", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
async fn clear_cart(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, AppError> {
    state
        .actors
        .carts
        .clear(user.id)
        .await
        .map_err(|e| cart_error(e, None))?;
    Ok(StatusCode::NO_CONTENT)
}
