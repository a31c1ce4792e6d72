//! Routes of the Catalog table of the API: categories, products, variants. Reads are public (and
//! cached for customers); writes are admin-only and bump the catalog version, which invalidates
//! every cached catalog response at once.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::cache::Scope;
use crate::catalog::categories::{
    self, Category, CategoryChanges, CategoryWithChildren, NewCategory,
};
use crate::catalog::listing::{self, ProductPage, ProductQuery};
use crate::catalog::products::{
    self, NewProduct, NewVariant, Product, ProductChanges, Variant, VariantChanges,
};
use crate::error::{AppError, Problem};
use crate::http::auth::{AdminUser, MaybeAuthUser};
use crate::http::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_categories, create_category))
        .routes(routes!(get_category, update_category, delete_category))
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product, archive_product))
        .routes(routes!(add_variant))
        .routes(routes!(update_variant, remove_variant))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CategoryList {
    items: Vec<Category>,
}

fn json_bytes(bytes: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn to_bytes(value: &impl Serialize) -> Result<Bytes, AppError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| AppError::Internal(e.into()))
}

/// Every category, parents first, in position order.
#[utoipa::path(get, path = "/categories", tag = "catalog",
    responses((status = 200, body = CategoryList)))]
async fn list_categories(
    State(state): State<AppState>,
) -> Result<axum::Json<CategoryList>, AppError> {
    Ok(axum::Json(CategoryList {
        items: categories::list(&state.db).await?,
    }))
}

/// One category, by id or slug, with its children.
#[utoipa::path(get, path = "/categories/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Category id or slug")),
    responses((status = 200, body = CategoryWithChildren), (status = 404, body = Problem)))]
async fn get_category(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<axum::Json<CategoryWithChildren>, AppError> {
    Ok(axum::Json(
        categories::with_children(&state.db, &key).await?,
    ))
}

/// Create a category (admin). The slug is derived from the name when absent.
#[utoipa::path(post, path = "/categories", tags = ["catalog", "admin"],
    request_body = NewCategory, security(("bearer" = [])),
    responses((status = 201, body = Category), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_category(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(body): Json<NewCategory>,
) -> Result<(StatusCode, axum::Json<Category>), AppError> {
    let category = categories::create(&state.db, body).await?;
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, axum::Json(category)))
}

/// Update a category (admin).
#[utoipa::path(patch, path = "/categories/{id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path)), request_body = CategoryChanges, security(("bearer" = [])),
    responses((status = 200, body = Category), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn update_category(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(body): Json<CategoryChanges>,
) -> Result<axum::Json<Category>, AppError> {
    let category = categories::update(&state.db, id, body).await?;
    state.catalog_changed().await;
    Ok(axum::Json(category))
}

/// Delete a category (admin); 409 while it has products or subcategories.
#[utoipa::path(delete, path = "/categories/{id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem)))]
async fn delete_category(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    categories::delete(&state.db, id).await?;
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}

/// Search, filter, sort and page products. Customers see active products only; their listings
/// are cached for `cache.listing_ttl_secs` (stock in a listing may lag by that much).
#[utoipa::path(get, path = "/products", tag = "catalog",
    params(ProductQuery),
    responses((status = 200, body = ProductPage), (status = 400, body = Problem),
              (status = 422, description = "A text filter too long, or an unknown facet", body = Problem)))]
async fn list_products(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    Query(query): Query<ProductQuery>,
) -> Result<Response, AppError> {
    let admin = viewer.0.is_some_and(|user| user.is_admin());
    query.check()?;
    let query = query.normalized();
    if admin {
        let page = listing::search(&state.db, &query, true).await?;
        return Ok(axum::Json(page).into_response());
    }
    let key = query.cache_key();
    let body = state
        .cache
        .get_or_load(Scope::Catalog, "listing", &key, async {
            to_bytes(&listing::search(&state.db, &query, false).await?)
        })
        .await?;
    Ok(json_bytes(body))
}

/// The full product with variants, images and, for a bundle, its components. Stock is live.
#[utoipa::path(get, path = "/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id or slug")),
    responses((status = 200, body = Product), (status = 404, body = Problem)))]
async fn get_product(
    State(state): State<AppState>,
    viewer: MaybeAuthUser,
    Path(key): Path<String>,
) -> Result<axum::Json<Product>, AppError> {
    if viewer.0.is_some_and(|user| user.is_admin()) {
        return Ok(axum::Json(products::find(&state.db, &key, true).await?));
    }
    let bytes = state
        .cache
        .get_or_load(Scope::Catalog, "product", &key, async {
            to_bytes(&products::find(&state.db, &key, false).await?)
        })
        .await?;
    let mut product = match serde_json::from_slice::<Product>(&bytes) {
        Ok(product) => product,
        Err(error) => {
            tracing::warn!(%error, "undecodable cached product; reading it again");
            products::find(&state.db, &key, false).await?
        }
    };
    // The cached part is the catalog; stock is never served from a cache.
    products::refresh_stock(&state.db, &mut product).await?;
    Ok(axum::Json(product))
}

/// Create a product (admin): simple (with `sku`, `price`, `stock`), variable (variants added
/// after) or bundle (with `components`).
#[utoipa::path(post, path = "/products", tags = ["catalog", "admin"],
    request_body = NewProduct, security(("bearer" = [])),
    responses((status = 201, body = Product), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(body): Json<NewProduct>,
) -> Result<(StatusCode, axum::Json<Product>), AppError> {
    let product = products::create(&state.db, body).await?;
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, axum::Json(product)))
}

/// Partly update a product (admin). A simple product's `sku`, `barcode` and `stock` write
/// through to its default variant.
#[utoipa::path(patch, path = "/products/{id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path)), request_body = ProductChanges, security(("bearer" = [])),
    responses((status = 200, body = Product), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(body): Json<ProductChanges>,
) -> Result<axum::Json<Product>, AppError> {
    let product = products::update(&state.db, &state.actors.inventory, id, body).await?;
    state.catalog_changed().await;
    Ok(axum::Json(product))
}

/// Archive a product (admin): customers no longer see it; past orders keep their lines.
#[utoipa::path(delete, path = "/products/{id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn archive_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    products::archive(&state.db, id).await?;
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a variant to a variable product (admin); one per option combination.
#[utoipa::path(post, path = "/products/{id}/variants", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path)), request_body = NewVariant, security(("bearer" = [])),
    responses((status = 201, body = Variant), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn add_variant(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<Uuid>,
    Json(body): Json<NewVariant>,
) -> Result<(StatusCode, axum::Json<Variant>), AppError> {
    let variant = products::add_variant(&state.db, id, body).await?;
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, axum::Json(variant)))
}

/// Update a variant (admin).
#[utoipa::path(patch, path = "/products/{id}/variants/{variant_id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path), ("variant_id" = Uuid, Path)), request_body = VariantChanges,
    security(("bearer" = [])),
    responses((status = 200, body = Variant), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn update_variant(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path((id, variant_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<VariantChanges>,
) -> Result<axum::Json<Variant>, AppError> {
    let variant =
        products::update_variant(&state.db, &state.actors.inventory, id, variant_id, body).await?;
    state.catalog_changed().await;
    Ok(axum::Json(variant))
}

/// Remove (archive) a variant (admin). A default variant cannot be removed.
#[utoipa::path(delete, path = "/products/{id}/variants/{variant_id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path), ("variant_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem)))]
async fn remove_variant(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path((id, variant_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, AppError> {
    products::remove_variant(&state.db, id, variant_id).await?;
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}
