//! The cart as customers see it: the cart actor's lines joined with today's product details,
//! availability and totals. Lines whose product was archived, or whose price changed since they
//! were added, are shown flagged, never silently dropped; unavailable lines do not count in the
//! totals.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shop_actors::carts::{CartError, CartSnapshot};
use sqlx::{FromRow, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cache::Scope;
use crate::catalog::ProductType;
use crate::error::{AppError, FieldError};
use crate::promotions::pricing::{Line, gifts_due, price};
use crate::promotions::{Coupon, CouponRefusal, GiftRule};
use crate::state::AppState;

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
    /// What the cart's coupon takes off this line (minor units).
    pub discount: i64,
    /// `line_total - discount`.
    pub total: i64,
    /// A free gift added by a gift rule: unit price 0, there while the rule's conditions hold;
    /// the customer cannot change or remove it (409).
    pub gift: bool,
    /// False when the product was archived or the variant removed: the line cannot be bought.
    pub available: bool,
    /// The unit price changed since the line was added.
    pub price_changed: bool,
    pub price_at_add: i64,
}

/// The coupon applied to a cart: kept while it does not apply, with the reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartCoupon {
    pub code: String,
    /// Whether it takes money off now.
    pub applied: bool,
    /// Why it does not apply now (the cart below its minimum, no eligible product...).
    pub reason: Option<CouponRefusal>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cart {
    pub id: Uuid,
    pub items: Vec<CartItem>,
    pub subtotal: i64,
    pub discount_total: i64,
    pub total: i64,
    pub currency: String,
    pub coupon: Option<CartCoupon>,
    pub updated_at: DateTime<Utc>,
}

/// What a cart is priced with: its coupon (if the code names one) and the live gift rules.
pub struct Promotions {
    pub coupon: Option<Coupon>,
    pub gift_rules: Vec<GiftRule>,
}

/// What a cart line shows of its variant: a snapshot of the catalog, cached per variant under the
/// catalog version (so any catalog write makes the next read fresh).
#[derive(FromRow, Serialize, Deserialize)]
struct VariantDetails {
    variant_id: Uuid,
    product_id: Uuid,
    name: String,
    sku: String,
    options: sqlx::types::Json<BTreeMap<String, String>>,
    price: i64,
    sellable: bool,
    image_url: Option<String>,
    category_id: Option<Uuid>,
}

/// The cart as its customer sees it, priced with its coupon and the gift rules of now.
pub async fn view(state: &AppState, cart: CartSnapshot) -> Result<Cart, AppError> {
    let coupon = match &cart.coupon_code {
        Some(code) => crate::promotions::lookup::coupon_by_code(state, code).await?,
        None => None,
    };
    let promotions = Promotions {
        coupon,
        gift_rules: crate::promotions::lookup::active_gift_rules(state).await?,
    };
    priced(
        state,
        Details::Cached,
        cart,
        &promotions,
        &state.settings.store.currency,
        Utc::now(),
    )
    .await
}

/// Where a priced cart reads its variants from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Details {
    /// The catalog cache (the cart as shown): fresh after every catalog write.
    Cached,
    /// PostgreSQL itself (checkout: the order is priced from what the database says now).
    Database,
}

impl Details {
    async fn of(
        self,
        state: &AppState,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, VariantDetails>, AppError> {
        match self {
            Self::Database => Ok(details(&state.db, ids).await?),
            Self::Cached => cached_details(state, ids).await,
        }
    }
}

/// Each variant's snapshot from the cache, loaded one variant at a time on a miss.
async fn cached_details(
    state: &AppState,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, VariantDetails>, AppError> {
    let internal = |error: serde_json::Error| AppError::Internal(error.into());
    let snapshots = futures::future::try_join_all(ids.iter().map(|id| async move {
        let bytes = state
            .cache
            .get_or_load(Scope::Catalog, "variant", &id.to_string(), async {
                let found = details(&state.db, &[*id]).await?;
                serde_json::to_vec(&found.get(id))
                    .map(Bytes::from)
                    .map_err(internal)
            })
            .await?;
        serde_json::from_slice::<Option<VariantDetails>>(&bytes).map_err(internal)
    }))
    .await?;
    Ok(snapshots
        .into_iter()
        .flatten()
        .map(|d| (d.variant_id, d))
        .collect())
}

async fn details(db: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, VariantDetails>, sqlx::Error> {
    Ok(sqlx::query_as::<_, VariantDetails>(
        "SELECT v.id AS variant_id, p.id AS product_id, p.name, v.sku::text AS sku, v.options,
                coalesce(v.price, p.price) AS price,
                (p.status = 'active' AND v.archived_at IS NULL) AS sellable,
                (SELECT i.url FROM product_images i WHERE i.product_id = p.id
                  ORDER BY i.position LIMIT 1) AS image_url,
                p.category_id
         FROM product_variants v JOIN products p ON p.id = v.product_id
         WHERE v.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|d| (d.variant_id, d))
    .collect())
}

/// Each category with its ancestors, for coupons scoped to a category and its descendants.
async fn ancestors(
    db: &PgPool,
    categories: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Uuid>>, sqlx::Error> {
    if categories.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Vec<Uuid>)> = sqlx::query_as(
        "WITH RECURSIVE up (start, id, parent_id) AS (
             SELECT id, id, parent_id FROM categories WHERE id = ANY($1)
             UNION ALL
             SELECT up.start, c.id, c.parent_id FROM categories c JOIN up ON c.id = up.parent_id
         )
         SELECT start, array_agg(id) FROM up GROUP BY start",
    )
    .bind(categories)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Prices `cart` with `promotions` at `now`: today's prices, the coupon's line discounts, and the
/// gift lines the rules give. Lines that cannot be bought are shown, flagged, and count nowhere.
pub async fn priced(
    state: &AppState,
    source: Details,
    cart: CartSnapshot,
    promotions: &Promotions,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<Cart, AppError> {
    let mut ids: Vec<Uuid> = cart.lines.iter().map(|l| l.variant_id).collect();
    ids.extend(promotions.gift_rules.iter().map(|r| r.gift_variant_id));
    let details = source.of(state, &ids).await?;
    // Only a coupon scoped to categories looks at a line's categories.
    let ancestors = if promotions
        .coupon
        .as_ref()
        .is_some_and(|coupon| !coupon.category_ids.is_empty())
    {
        let categories: Vec<Uuid> = details.values().filter_map(|d| d.category_id).collect();
        ancestors(&state.db, &categories).await?
    } else {
        HashMap::new()
    };
    let pricing_line = |key: Uuid, d: &VariantDetails, quantity: i32, gift: bool| Line {
        key,
        variant_id: d.variant_id,
        product_id: d.product_id,
        category_ids: d
            .category_id
            .and_then(|c| ancestors.get(&c).cloned())
            .unwrap_or_default(),
        unit_price: if gift { 0 } else { d.price },
        quantity,
        gift,
    };
    let mut items = Vec::with_capacity(cart.lines.len());
    let mut paid = Vec::new();
    for line in &cart.lines {
        let Some(d) = details.get(&line.variant_id) else {
            continue;
        };
        if d.sellable {
            paid.push(pricing_line(line.id, d, line.quantity, false));
        }
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
            discount: 0,
            total: d.price * i64::from(line.quantity),
            gift: false,
            available: d.sellable,
            price_changed: d.price != line.unit_price_at_add,
            price_at_add: line.unit_price_at_add,
        });
    }
    // Gift lines: there while their rule holds; their id is the rule's.
    for due in gifts_due(&paid, &promotions.gift_rules, now) {
        let Some(d) = details.get(&due.variant_id).filter(|d| d.sellable) else {
            continue;
        };
        items.push(CartItem {
            id: due.rule_id,
            product_id: d.product_id,
            variant_id: d.variant_id,
            name: d.name.clone(),
            sku: d.sku.clone(),
            options: d.options.0.clone(),
            image_url: d.image_url.clone(),
            unit_price: 0,
            quantity: due.quantity,
            line_total: 0,
            discount: 0,
            total: 0,
            gift: true,
            available: true,
            price_changed: false,
            price_at_add: 0,
        });
    }
    let pricing = price(&paid, promotions.coupon.as_ref(), now);
    let discounts: HashMap<Uuid, (i64, i64)> = pricing
        .lines
        .iter()
        .map(|l| (l.key, (l.discount, l.total)))
        .collect();
    for item in items.iter_mut().filter(|i| !i.gift) {
        if let Some((discount, total)) = discounts.get(&item.id) {
            item.discount = *discount;
            item.total = *total;
        }
    }
    let coupon = cart.coupon_code.map(|code| {
        let verdict = match (&promotions.coupon, pricing.coupon) {
            (Some(_), Some(verdict)) => verdict,
            // A code that names no coupon (or none any more).
            _ => Err(CouponRefusal::Unknown),
        };
        CartCoupon {
            code,
            applied: verdict.is_ok(),
            reason: verdict.err(),
        }
    });
    Ok(Cart {
        id: cart.cart_id,
        items,
        subtotal: pricing.subtotal,
        discount_total: pricing.discount_total,
        total: pricing.total,
        currency: currency.to_owned(),
        coupon,
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
    state: &AppState,
    variant: Option<Uuid>,
    product: Option<Uuid>,
) -> Result<Sellable, AppError> {
    // By variant: the cached snapshot the cart view uses says all there is to know.
    if let (Some(variant), None) = (variant, product) {
        let details = cached_details(state, &[variant]).await?;
        return match details.get(&variant) {
            Some(found) if found.sellable => Ok(Sellable {
                variant_id: variant,
                unit_price: found.price,
            }),
            _ => Err(AppError::NotFound),
        };
    }
    let db = &state.db;
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
        // Not made (a retry is safe), or maybe made: either way the client may look and retry
        // (under an Idempotency-Key, a change that was maybe made is read back first: see
        // `crate::http::cart`).
        error @ (CartError::Expired | CartError::ClaimLost | CartError::Interrupted(_)) => {
            AppError::Unavailable(error.to_string())
        }
        CartError::Storage(detail) => AppError::Internal(anyhow::anyhow!(detail)),
    }
}
