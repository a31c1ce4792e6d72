//! The cart as customers see it: the cart actor's lines joined with today's product details,
//! availability and totals. Lines whose product was archived, or whose price changed since they
//! were added, are shown flagged, never silently dropped; unavailable lines do not count in the
//! totals.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use shop_actors::carts::{CartError, CartSnapshot};
use sqlx::{FromRow, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::catalog::ProductType;
use crate::error::{AppError, FieldError};

#[derive(Debug, Serialize, ToSchema)]
pub struct CartItem {
    pub id: Uuid,
    pub product_id: Uuid,
    pub variant_id: Uuid,
    pub name: String,
    pub sku: String,
    #[schema(value_type = Object)]
    pub options: BTreeMap<String, String>,
    pub image_url: Option<String>,
    /// Today's price, in minor units.
    pub unit_price: i64,
    pub quantity: i32,
    pub line_total: i64,
    /// A free gift added by a gift rule.
    pub gift: bool,
    /// False when the product was archived or the variant removed: the line cannot be bought.
    pub available: bool,
    /// The unit price changed since the line was added.
    pub price_changed: bool,
    pub price_at_add: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cart {
    pub id: Uuid,
    pub items: Vec<CartItem>,
    pub subtotal: i64,
    pub discount_total: i64,
    pub total: i64,
    pub currency: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(FromRow)]
struct VariantDetails {
    variant_id: Uuid,
    product_id: Uuid,
    name: String,
    sku: String,
    options: sqlx::types::Json<BTreeMap<String, String>>,
    price: i64,
    sellable: bool,
    image_url: Option<String>,
}

pub async fn view(db: &PgPool, cart: CartSnapshot, currency: &str) -> Result<Cart, AppError> {
    let ids: Vec<Uuid> = cart.lines.iter().map(|l| l.variant_id).collect();
    let details: HashMap<Uuid, VariantDetails> = sqlx::query_as::<_, VariantDetails>(
        "SELECT v.id AS variant_id, p.id AS product_id, p.name, v.sku::text AS sku, v.options,
                coalesce(v.price, p.price) AS price,
                (p.status = 'active' AND v.archived_at IS NULL) AS sellable,
                (SELECT i.url FROM product_images i WHERE i.product_id = p.id
                  ORDER BY i.position LIMIT 1) AS image_url
         FROM product_variants v JOIN products p ON p.id = v.product_id
         WHERE v.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|d| (d.variant_id, d))
    .collect();
    let mut items = Vec::with_capacity(cart.lines.len());
    for line in cart.lines {
        let Some(d) = details.get(&line.variant_id) else {
            continue;
        };
        items.push(CartItem {
            id: line.id,
            product_id: d.product_id,
            variant_id: line.variant_id,
            name: d.name.clone(),
            sku: d.sku.clone(),
            options: d.options.0.clone(),
            image_url: d.image_url.clone(),
            unit_price: d.price,
            quantity: line.quantity,
            line_total: d.price * i64::from(line.quantity),
            gift: false,
            available: d.sellable,
            price_changed: d.price != line.unit_price_at_add,
            price_at_add: line.unit_price_at_add,
        });
    }
    let subtotal = items
        .iter()
        .filter(|i| i.available)
        .map(|i| i.line_total)
        .sum();
    Ok(Cart {
        id: cart.cart_id,
        items,
        subtotal,
        discount_total: 0,
        total: subtotal,
        currency: currency.to_owned(),
        updated_at: cart.updated_at,
    })
}

/// What a customer can put in a cart: a sellable variant and its price today.
pub struct Sellable {
    pub variant_id: Uuid,
    pub unit_price: i64,
}

/// Finds the variant to add: by `variant_id`, or a simple product's (or bundle's) default variant
/// by `product_id`. Unknown, draft and archived things are 404.
pub async fn sellable(
    db: &PgPool,
    variant: Option<Uuid>,
    product: Option<Uuid>,
) -> Result<Sellable, AppError> {
    #[derive(FromRow)]
    struct Row {
        id: Uuid,
        price: i64,
        kind: ProductType,
        is_default: bool,
    }
    let row = sqlx::query_as::<_, Row>(
        "SELECT v.id, coalesce(v.price, p.price) AS price, p.type AS kind, v.is_default
         FROM product_variants v JOIN products p ON p.id = v.product_id
         WHERE p.status = 'active' AND v.archived_at IS NULL
           AND (v.id = $1 OR (p.id = $2 AND (v.is_default OR p.type = 'variable')))
         ORDER BY v.is_default DESC LIMIT 1",
    )
    .bind(variant)
    .bind(product)
    .fetch_optional(db)
    .await?
    .ok_or(AppError::NotFound)?;
    if variant.is_none() && row.kind == ProductType::Variable && !row.is_default {
        return Err(AppError::invalid(
            "product_id",
            "this product comes in variants; add one by variant_id",
        ));
    }
    Ok(Sellable {
        variant_id: row.id,
        unit_price: row.price,
    })
}

/// How a cart actor's refusal reads to the client.
pub fn cart_error(error: CartError, variant: Option<Uuid>) -> AppError {
    match error {
        CartError::NotEnoughStock {
            requested,
            available,
        } => AppError::Conflict {
            kind: "insufficient-stock",
            detail: format!("Only {available} can be sold now."),
            errors: Some(serde_json::json!([{
                "variant_id": variant,
                "requested": requested,
                "available": available,
            }])),
        },
        CartError::TooManyLines => AppError::Validation(vec![FieldError::new(
            "items",
            "a cart holds at most 100 lines",
        )]),
        CartError::QuantityTooLarge => AppError::Validation(vec![FieldError::new(
            "quantity",
            "at most 99 units per line",
        )]),
        CartError::NoSuchLine => AppError::NotFound,
        CartError::Actor(actor) => actor.into(),
        // Not made (a retry is safe), or maybe made: either way the client may look and retry.
        error @ (CartError::Expired | CartError::Interrupted(_)) => {
            AppError::Unavailable(error.to_string())
        }
        CartError::Storage(detail) => AppError::Internal(anyhow::anyhow!(detail)),
    }
}
