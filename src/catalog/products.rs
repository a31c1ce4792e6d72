//! Products, their variants (the sellable units) and bundles. A simple product has exactly one
//! default variant, through which its `sku`, `barcode` and `stock` read and write; a variable
//! product has one variant per option combination; a bundle sells its own default variant and is
//! made of component variants, its stock being what its scarcest component allows.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Fields, MAX_DESCRIPTION, ProductStatus, ProductType, Slug, conflict_on, double_option,
    parse_money, parse_name, parse_non_negative, parse_text,
};
use crate::error::{AppError, FieldError};
use futures::future::BoxFuture;
use shop_actors::inventory::{EditError, Inventory, InventoryError};

pub const MAX_STOCK: i64 = 10_000_000;

const CLASHES: &[(&str, &str, &str)] = &[
    (
        "products_slug_key",
        "slug-taken",
        "A product with this slug already exists.",
    ),
    (
        "product_variants_sku_key",
        "sku-taken",
        "A variant with this SKU already exists.",
    ),
    (
        "product_variants_barcode_key",
        "barcode-taken",
        "A variant with this barcode already exists.",
    ),
    (
        "product_variants_options_key",
        "duplicate-options",
        "This product already has a variant with these options.",
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default, PartialEq, Eq)]
pub struct Dimensions {
    #[schema(minimum = 0)]
    pub length_mm: Option<i32>,
    #[schema(minimum = 0)]
    pub width_mm: Option<i32>,
    #[schema(minimum = 0)]
    pub height_mm: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rating {
    pub average: f64,
    pub count: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, FromRow)]
pub struct ProductImage {
    pub id: Uuid,
    #[serde(skip)]
    #[sqlx(default)]
    pub product_id: Uuid,
    pub url: String,
    pub position: i32,
    pub width: i32,
    pub height: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Variant {
    pub id: Uuid,
    pub sku: String,
    pub barcode: Option<String>,
    #[schema(value_type = Object)]
    pub options: BTreeMap<String, String>,
    /// The variant's own price, or the product's.
    pub price: i64,
    /// Units that can be sold now.
    pub stock: i32,
    /// Admins only: units on hand (sold units have left; held ones have not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock_on_hand: Option<i32>,
    pub weight_grams: Option<i32>,
    pub is_default: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Component {
    pub variant_id: Uuid,
    pub product_id: Uuid,
    pub name: String,
    pub sku: String,
    pub quantity: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: ProductType,
    pub name: String,
    pub slug: String,
    pub description: String,
    pub status: ProductStatus,
    pub category_id: Option<Uuid>,
    pub brand: Option<String>,
    /// The default variant's SKU (simple products and bundles).
    pub sku: Option<String>,
    pub barcode: Option<String>,
    pub price: i64,
    pub compare_at_price: Option<i64>,
    /// The cheapest and dearest live variant.
    pub price_min: i64,
    pub price_max: i64,
    /// What can be sold now: on hand minus held, summed over variants; for a bundle, how many
    /// whole bundles the components allow.
    pub stock: i32,
    /// Admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock_on_hand: Option<i32>,
    /// Admins only: units held by pending orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock_held: Option<i32>,
    pub images: Vec<ProductImage>,
    pub weight_grams: Option<i32>,
    pub dimensions: Dimensions,
    pub tags: Vec<String>,
    pub rating: Rating,
    /// In the full product only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<Variant>>,
    /// Bundles only, in the full product.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<Component>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns every product read selects, aliased for [`ProductRow`]. Everything taken from
/// other tables is a scalar subquery, computed only for the rows of the page after the LIMIT, so
/// the listing's ORDER BY ... LIMIT can walk an index (a join here would force a hash join over
/// every variant).
pub const PRODUCT_SELECT: &str = r#"
    SELECT p.id, p.type, p.name, p.slug::text AS slug, p.description, p.status, p.category_id,
           p.brand,
           (SELECT dv.sku::text FROM product_variants dv
             WHERE dv.product_id = p.id AND dv.is_default) AS sku,
           (SELECT dv.barcode FROM product_variants dv
             WHERE dv.product_id = p.id AND dv.is_default) AS barcode,
           p.price, p.compare_at_price, p.price_min,
           p.price_max, product_available(p.id, p.type) AS stock,
           (SELECT coalesce(sum(v.stock), 0)::int FROM product_variants v
             WHERE v.product_id = p.id AND v.archived_at IS NULL) AS stock_on_hand,
           (SELECT coalesce(sum(variant_held(v.id)), 0)::int FROM product_variants v
             WHERE v.product_id = p.id AND v.archived_at IS NULL) AS stock_held,
           p.weight_grams, p.length_mm, p.width_mm, p.height_mm, p.tags,
           p.rating_average::float8 AS rating_average, p.rating_count, p.created_at, p.updated_at
    FROM products p"#;

#[derive(Debug, FromRow)]
pub struct ProductRow {
    id: Uuid,
    #[sqlx(rename = "type")]
    kind: ProductType,
    name: String,
    slug: String,
    description: String,
    status: ProductStatus,
    category_id: Option<Uuid>,
    brand: Option<String>,
    sku: Option<String>,
    barcode: Option<String>,
    price: i64,
    compare_at_price: Option<i64>,
    price_min: i64,
    price_max: i64,
    stock: i32,
    stock_on_hand: i32,
    stock_held: i32,
    weight_grams: Option<i32>,
    length_mm: Option<i32>,
    width_mm: Option<i32>,
    height_mm: Option<i32>,
    tags: Vec<String>,
    rating_average: f64,
    rating_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ProductRow {
    pub fn into_product(self, admin: bool) -> Product {
        let kind = self.kind;
        let (on_hand, held) = match (admin, kind) {
            (true, ProductType::Bundle) | (false, _) => (None, None),
            (true, _) => (Some(self.stock_on_hand), Some(self.stock_held)),
        };
        Product {
            id: self.id,
            kind,
            name: self.name,
            slug: self.slug,
            description: self.description,
            status: self.status,
            category_id: self.category_id,
            brand: self.brand,
            sku: self.sku,
            barcode: self.barcode,
            price: self.price,
            compare_at_price: self.compare_at_price,
            price_min: self.price_min,
            price_max: self.price_max,
            stock: self.stock.max(0),
            stock_on_hand: on_hand,
            stock_held: held,
            images: Vec::new(),
            weight_grams: self.weight_grams,
            dimensions: Dimensions {
                length_mm: self.length_mm,
                width_mm: self.width_mm,
                height_mm: self.height_mm,
            },
            tags: self.tags,
            rating: Rating {
                average: self.rating_average,
                count: self.rating_count,
            },
            variants: None,
            components: None,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Attaches the images of each product, in position order, with one query.
pub async fn attach_images(db: &PgPool, products: &mut [Product]) -> Result<(), AppError> {
    if products.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = products.iter().map(|p| p.id).collect();
    let images = sqlx::query_as::<_, ProductImage>(
        "SELECT id, product_id, url, position, width, height FROM product_images
         WHERE product_id = ANY($1) ORDER BY product_id, position, created_at",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut by_product: HashMap<Uuid, Vec<ProductImage>> = HashMap::new();
    for image in images {
        by_product.entry(image.product_id).or_default().push(image);
    }
    for product in products {
        product.images = by_product.remove(&product.id).unwrap_or_default();
    }
    Ok(())
}

#[derive(FromRow)]
struct VariantRow {
    id: Uuid,
    sku: String,
    barcode: Option<String>,
    options: sqlx::types::Json<BTreeMap<String, String>>,
    price: i64,
    stock: i32,
    stock_on_hand: i32,
    weight_grams: Option<i32>,
    is_default: bool,
}

async fn variants_of(db: &PgPool, product: Uuid, admin: bool) -> Result<Vec<Variant>, AppError> {
    let rows = sqlx::query_as::<_, VariantRow>(
        "SELECT v.id, v.sku::text AS sku, v.barcode, v.options, coalesce(v.price, p.price) AS price,
                variant_available(v.id) AS stock, v.stock AS stock_on_hand, v.weight_grams, v.is_default
         FROM product_variants v JOIN products p ON p.id = v.product_id
         WHERE v.product_id = $1 AND v.archived_at IS NULL
         ORDER BY v.is_default DESC, v.position, v.created_at",
    )
    .bind(product)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Variant {
            id: row.id,
            sku: row.sku,
            barcode: row.barcode,
            options: row.options.0,
            price: row.price,
            stock: row.stock.max(0),
            stock_on_hand: admin.then_some(row.stock_on_hand),
            weight_grams: row.weight_grams,
            is_default: row.is_default,
        })
        .collect())
}

async fn components_of(db: &PgPool, bundle: Uuid) -> Result<Vec<Component>, AppError> {
    #[derive(FromRow)]
    struct Row {
        variant_id: Uuid,
        product_id: Uuid,
        name: String,
        sku: String,
        quantity: i32,
    }
    let rows = sqlx::query_as::<_, Row>(
        "SELECT bc.variant_id, v.product_id, p.name, v.sku::text AS sku, bc.quantity
         FROM bundle_components bc
         JOIN product_variants v ON v.id = bc.variant_id
         JOIN products p ON p.id = v.product_id
         WHERE bc.bundle_id = $1 ORDER BY p.name, v.sku",
    )
    .bind(bundle)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Component {
            variant_id: r.variant_id,
            product_id: r.product_id,
            name: r.name,
            sku: r.sku,
            quantity: r.quantity,
        })
        .collect())
}

/// The full product by id or slug. Customers see only active products (others are 404).
pub async fn find(db: &PgPool, key: &str, admin: bool) -> Result<Product, AppError> {
    let row = match key.parse::<Uuid>() {
        Ok(id) => {
            sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(format!(
                "{PRODUCT_SELECT} WHERE p.id = $1"
            )))
            .bind(id)
            .fetch_optional(db)
            .await?
        }
        Err(_) => {
            sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(format!(
                "{PRODUCT_SELECT} WHERE p.slug = $1::citext"
            )))
            .bind(key)
            .fetch_optional(db)
            .await?
        }
    };
    let row = row.ok_or(AppError::NotFound)?;
    let mut product = row.into_product(admin);
    if !admin && product.status != ProductStatus::Active {
        return Err(AppError::NotFound);
    }
    product.variants = Some(variants_of(db, product.id, admin).await?);
    if product.kind == ProductType::Bundle {
        product.components = Some(components_of(db, product.id).await?);
    }
    attach_images(db, std::slice::from_mut(&mut product)).await?;
    Ok(product)
}

/// Rewrites the stock figures of a (possibly cached) product with live ones.
pub async fn refresh_stock(db: &PgPool, product: &mut Product) -> Result<(), AppError> {
    let live: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT v.id, variant_available(v.id) FROM product_variants v
         WHERE v.product_id = $1 AND v.archived_at IS NULL",
    )
    .bind(product.id)
    .fetch_all(db)
    .await?;
    let live: HashMap<Uuid, i32> = live.into_iter().collect();
    for variant in product.variants.iter_mut().flatten() {
        variant.stock = live.get(&variant.id).copied().unwrap_or(0).max(0);
    }
    product.stock = sqlx::query_scalar::<_, i32>("SELECT product_available($1, $2)")
        .bind(product.id)
        .bind(product.kind.as_str())
        .fetch_one(db)
        .await?
        .max(0);
    Ok(())
}

// --- writes

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentInput {
    pub variant_id: Uuid,
    #[schema(minimum = 1, maximum = 99)]
    pub quantity: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Enamel Mug", "sku": "MUG-ENAMEL", "price": 1250, "stock": 40, "status": "active", "tags": ["kitchen"]}))]
pub struct NewProduct {
    /// `simple` (default), `variable` or `bundle`.
    #[serde(rename = "type", default)]
    pub kind: ProductType,
    #[schema(
        max_length = 300,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// Derived from the name when absent.
    #[schema(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length = 200)]
    pub slug: Option<String>,
    #[schema(max_length = 10_000)]
    pub description: Option<String>,
    /// `draft` (default), `active` or `archived`.
    pub status: Option<ProductStatus>,
    pub category_id: Option<Uuid>,
    #[schema(
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub brand: Option<String>,
    /// Required for simple products and bundles (their default variant's SKU).
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", max_length = 64)]
    pub sku: Option<String>,
    #[schema(pattern = r"^[A-Za-z0-9]{1,64}$", max_length = 64)]
    pub barcode: Option<String>,
    /// Minor units. Variants without a price of their own sell at this price.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub compare_at_price: Option<i64>,
    /// Simple products only: units on hand.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub stock: Option<i64>,
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub weight_grams: Option<i64>,
    pub dimensions: Option<Dimensions>,
    /// At most 30 tags, each 1 to 50 characters without commas (kept in lower case, once each).
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
    /// Bundles only.
    pub components: Option<Vec<ComponentInput>>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ProductChanges {
    #[schema(
        max_length = 300,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    #[schema(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length = 200)]
    pub slug: Option<String>,
    #[schema(max_length = 10_000)]
    pub description: Option<String>,
    pub status: Option<ProductStatus>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub category_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 100, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$")]
    pub brand: Option<Option<String>>,
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", max_length = 64)]
    pub sku: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9]{1,64}$", max_length = 64)]
    pub barcode: Option<Option<String>>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub compare_at_price: Option<Option<i64>>,
    /// Simple products only.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub stock: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 10_000_000)]
    pub weight_grams: Option<Option<i64>>,
    pub dimensions: Option<Dimensions>,
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
    /// Bundles only: replaces the components.
    pub components: Option<Vec<ComponentInput>>,
}

fn parse_sku(field: &str, sku: &str) -> Result<String, FieldError> {
    let valid = (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(sku.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be 1 to 64 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn parse_barcode(field: &str, barcode: &str) -> Result<String, FieldError> {
    if (1..=64).contains(&barcode.len()) && barcode.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(barcode.to_owned())
    } else {
        Err(FieldError::new(field, "must be 1 to 64 letters or digits"))
    }
}

fn parse_tags(raw: &[String]) -> Result<Vec<String>, FieldError> {
    if raw.len() > 30 {
        return Err(FieldError::new("tags", "at most 30 tags"));
    }
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        if tag.chars().count() > 50 || tag.trim().is_empty() || tag.contains(',') {
            return Err(FieldError::new(
                "tags",
                "each tag is 1 to 50 characters, without commas",
            ));
        }
        let tag = tag.trim().to_lowercase();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// The document's view of [`parse_tags`] (`null` is no tags).
fn tags_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::SchemaType;
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(50))
                .pattern(Some(r"^[^,\u0000]*[^\s,\u0000][^,\u0000]*$")),
        )
        .max_items(Some(30))
        .build()
}

fn parse_dimensions(raw: &Dimensions) -> Result<Dimensions, FieldError> {
    for (name, value) in [
        ("dimensions.length_mm", raw.length_mm),
        ("dimensions.width_mm", raw.width_mm),
        ("dimensions.height_mm", raw.height_mm),
    ] {
        if value.is_some_and(|v| v < 0) {
            return Err(FieldError::new(name, "must not be negative"));
        }
    }
    Ok(raw.clone())
}

fn parse_weight(field: &str, grams: i64) -> Result<i32, FieldError> {
    parse_non_negative(field, grams, 10_000_000).map(|g| g as i32)
}

fn parse_stock(field: &str, units: i64) -> Result<i32, FieldError> {
    parse_non_negative(field, units, MAX_STOCK).map(|u| u as i32)
}

/// Checks bundle components: each an existing, live variant of a product that is not itself a
/// bundle, each once, quantity 1 to 99.
async fn parse_components(
    db: &mut PgConnection,
    fields: &mut Fields,
    raw: &[ComponentInput],
) -> Result<Vec<(Uuid, i32)>, AppError> {
    if raw.is_empty() {
        fields.error("components", "a bundle needs at least one component");
        return Ok(Vec::new());
    }
    let mut components: Vec<(Uuid, i32)> = Vec::new();
    for (i, component) in raw.iter().enumerate() {
        if !(1..=99).contains(&component.quantity) {
            fields.error(&format!("components[{i}].quantity"), "must be 1 to 99");
        }
        if components.iter().any(|(id, _)| *id == component.variant_id) {
            fields.error(&format!("components[{i}].variant_id"), "is listed twice");
        }
        components.push((component.variant_id, component.quantity.clamp(1, 99) as i32));
    }
    let ids: Vec<Uuid> = components.iter().map(|(id, _)| *id).collect();
    let found: Vec<(Uuid, ProductType)> = sqlx::query_as(
        "SELECT v.id, p.type FROM product_variants v JOIN products p ON p.id = v.product_id
         WHERE v.id = ANY($1) AND v.archived_at IS NULL",
    )
    .bind(&ids)
    .fetch_all(&mut *db)
    .await?;
    for (i, id) in ids.iter().enumerate() {
        match found.iter().find(|(found, _)| found == id) {
            None => fields.error(&format!("components[{i}].variant_id"), "no such variant"),
            Some((_, ProductType::Bundle)) => fields.error(
                &format!("components[{i}].variant_id"),
                "a bundle cannot contain another bundle",
            ),
            Some(_) => {}
        }
    }
    Ok(components)
}

async fn category_exists(db: &mut PgConnection, id: Uuid) -> Result<bool, AppError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM categories WHERE id = $1)")
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

async fn replace_components(
    db: &mut PgConnection,
    bundle: Uuid,
    components: &[(Uuid, i32)],
) -> Result<(), AppError> {
    sqlx::query("DELETE FROM bundle_components WHERE bundle_id = $1")
        .bind(bundle)
        .execute(&mut *db)
        .await?;
    for (variant, quantity) in components {
        sqlx::query(
            "INSERT INTO bundle_components (bundle_id, variant_id, quantity) VALUES ($1, $2, $3)",
        )
        .bind(bundle)
        .bind(variant)
        .bind(quantity)
        .execute(&mut *db)
        .await?;
    }
    Ok(())
}

pub async fn create(db: &PgPool, input: NewProduct) -> Result<Product, AppError> {
    let mut tx = db.begin().await?;
    let mut fields = Fields::default();
    let name = fields.check(parse_name("name", &input.name, 300));
    let slug = fields.check(Slug::given_or_derived(
        "slug",
        input.slug.as_deref(),
        &input.name,
    ));
    let price = fields.check(parse_money("price", input.price));
    if let Some(description) = input.description.as_deref() {
        fields.check(parse_text("description", description, MAX_DESCRIPTION));
    }
    if let Some(compare_at) = input.compare_at_price {
        fields.check(parse_money("compare_at_price", compare_at));
    }
    let brand = match input.brand.as_deref() {
        Some(brand) => fields.check(parse_name("brand", brand, 100)),
        None => None,
    };
    let tags = fields
        .check(parse_tags(input.tags.as_deref().unwrap_or_default()))
        .unwrap_or_default();
    let dimensions = fields
        .check(parse_dimensions(
            &input.dimensions.clone().unwrap_or_default(),
        ))
        .unwrap_or_default();
    let weight = match input.weight_grams {
        Some(grams) => fields.check(parse_weight("weight_grams", grams)),
        None => None,
    };
    if let Some(category) = input.category_id
        && !category_exists(&mut tx, category).await?
    {
        fields.error("category_id", "no such category");
    }
    let sku = match (input.kind, input.sku.as_deref()) {
        (ProductType::Variable, Some(_)) => {
            fields.error("sku", "a variable product's SKUs are set on its variants");
            None
        }
        (ProductType::Variable, None) => None,
        (_, Some(sku)) => fields.check(parse_sku("sku", sku)),
        (_, None) => {
            fields.error("sku", "is required");
            None
        }
    };
    let barcode = match (input.kind, input.barcode.as_deref()) {
        (ProductType::Variable, Some(_)) => {
            fields.error(
                "barcode",
                "a variable product's barcodes are set on its variants",
            );
            None
        }
        (_, Some(barcode)) => fields.check(parse_barcode("barcode", barcode)),
        (_, None) => None,
    };
    let stock = match (input.kind, input.stock) {
        (ProductType::Simple, Some(units)) => fields.check(parse_stock("stock", units)),
        (ProductType::Simple, None) => Some(0),
        (ProductType::Variable, Some(_)) => {
            fields.error("stock", "a variable product's stock is set on its variants");
            None
        }
        (ProductType::Bundle, Some(_)) => {
            fields.error("stock", "a bundle's stock follows from its components");
            None
        }
        (_, None) => Some(0),
    };
    let components = match (input.kind, input.components.as_deref()) {
        (ProductType::Bundle, Some(raw)) => parse_components(&mut tx, &mut fields, raw).await?,
        (ProductType::Bundle, None) => {
            fields.error("components", "a bundle needs its components");
            Vec::new()
        }
        (_, Some(_)) => {
            fields.error("components", "only bundles have components");
            Vec::new()
        }
        (_, None) => Vec::new(),
    };
    fields.finish()?;
    let (Some(name), Some(slug), Some(price)) = (name, slug, price) else {
        return Err(AppError::Internal(anyhow::anyhow!(
            "validated fields missing"
        )));
    };

    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO products (id, type, name, slug, description, status, category_id, brand, price,
                               compare_at_price, weight_grams, length_mm, width_mm, height_mm, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(id)
    .bind(input.kind.as_str())
    .bind(&name)
    .bind(slug.as_str())
    .bind(input.description.as_deref().unwrap_or_default())
    .bind(input.status.unwrap_or_default().as_str())
    .bind(input.category_id)
    .bind(brand)
    .bind(price)
    .bind(input.compare_at_price)
    .bind(weight)
    .bind(dimensions.length_mm)
    .bind(dimensions.width_mm)
    .bind(dimensions.height_mm)
    .bind(&tags)
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_on(e, CLASHES))?;
    if let Some(sku) = sku {
        sqlx::query(
            "INSERT INTO product_variants (id, product_id, sku, barcode, stock, weight_grams, is_default)
             VALUES ($1, $2, $3, $4, $5, $6, true)",
        )
        .bind(Uuid::now_v7())
        .bind(id)
        .bind(sku)
        .bind(barcode)
        .bind(stock.unwrap_or(0))
        .bind(weight)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on(e, CLASHES))?;
    }
    replace_components(&mut tx, id, &components).await?;
    tx.commit().await?;
    find(db, &id.to_string(), true).await
}

pub async fn update(
    db: &PgPool,
    inventory: &Inventory,
    id: Uuid,
    changes: ProductChanges,
) -> Result<Product, AppError> {
    let current = find(db, &id.to_string(), true).await?;
    // Validation only reads; the writes come later, in one transaction (with the stock change,
    // when there is one).
    let mut reads = db.acquire().await?;
    let mut fields = Fields::default();
    let name = match &changes.name {
        Some(name) => fields.check(parse_name("name", name, 300)),
        None => Some(current.name.clone()),
    };
    let slug = match &changes.slug {
        Some(slug) => fields
            .check(Slug::parse("slug", slug))
            .map(|s| s.as_str().to_owned()),
        None => Some(current.slug.clone()),
    };
    let price = match changes.price {
        Some(price) => fields.check(parse_money("price", price)),
        None => Some(current.price),
    };
    if let Some(description) = changes.description.as_deref() {
        fields.check(parse_text("description", description, MAX_DESCRIPTION));
    }
    let compare_at = match changes.compare_at_price {
        Some(Some(amount)) => fields.check(parse_money("compare_at_price", amount)),
        Some(None) => None,
        None => current.compare_at_price,
    };
    let brand = match &changes.brand {
        Some(Some(brand)) => fields.check(parse_name("brand", brand, 100)),
        Some(None) => None,
        None => current.brand.clone(),
    };
    let tags = match &changes.tags {
        Some(tags) => fields.check(parse_tags(tags)).unwrap_or_default(),
        None => current.tags.clone(),
    };
    let dimensions = match &changes.dimensions {
        Some(dimensions) => fields
            .check(parse_dimensions(dimensions))
            .unwrap_or_default(),
        None => current.dimensions.clone(),
    };
    let weight = match changes.weight_grams {
        Some(Some(grams)) => fields.check(parse_weight("weight_grams", grams)),
        Some(None) => None,
        None => current.weight_grams,
    };
    let category = changes.category_id.unwrap_or(current.category_id);
    if let Some(category) = category
        && Some(category) != current.category_id
        && !category_exists(&mut reads, category).await?
    {
        fields.error("category_id", "no such category");
    }
    let has_default = current.kind != ProductType::Variable;
    let sku = match (&changes.sku, has_default) {
        (Some(_), false) => {
            fields.error("sku", "a variable product's SKUs are set on its variants");
            None
        }
        (Some(sku), true) => fields.check(parse_sku("sku", sku)),
        (None, _) => current.sku.clone(),
    };
    let barcode = match (&changes.barcode, has_default) {
        (Some(_), false) => {
            fields.error(
                "barcode",
                "a variable product's barcodes are set on its variants",
            );
            None
        }
        (Some(Some(barcode)), true) => fields.check(parse_barcode("barcode", barcode)),
        (Some(None), true) => None,
        (None, _) => current.barcode.clone(),
    };
    let stock = match (changes.stock, current.kind) {
        (Some(units), ProductType::Simple) => fields.check(parse_stock("stock", units)),
        (Some(_), _) => {
            fields.error(
                "stock",
                "only a simple product's stock is set on the product",
            );
            None
        }
        (None, _) => None,
    };
    let components = match (&changes.components, current.kind) {
        (Some(raw), ProductType::Bundle) => {
            Some(parse_components(&mut reads, &mut fields, raw).await?)
        }
        (Some(_), _) => {
            fields.error("components", "only bundles have components");
            None
        }
        (None, _) => None,
    };
    fields.finish()?;
    drop(reads);
    let write = ProductWrite {
        id,
        name,
        slug,
        description: changes.description.unwrap_or(current.description.clone()),
        status: changes.status.unwrap_or(current.status),
        category,
        brand,
        price,
        compare_at,
        weight,
        dimensions,
        tags,
        default_variant: has_default.then_some((sku, barcode)),
        components,
    };
    match stock {
        Some(on_hand) => {
            let variant = current
                .variants
                .iter()
                .flatten()
                .find(|v| v.is_default)
                .map(|v| v.id)
                .ok_or(AppError::NotFound)?;
            with_stock(inventory, variant, on_hand, move |conn| {
                Box::pin(async move { write.apply(conn).await })
            })
            .await?;
        }
        None => {
            let mut tx = db.begin().await?;
            write.apply(&mut tx).await?;
            tx.commit().await?;
        }
    }
    find(db, &id.to_string(), true).await
}

/// A product update, checked and ready to write.
struct ProductWrite {
    id: Uuid,
    name: Option<String>,
    slug: Option<String>,
    description: String,
    status: ProductStatus,
    category: Option<Uuid>,
    brand: Option<String>,
    price: Option<i64>,
    compare_at: Option<i64>,
    weight: Option<i32>,
    dimensions: Dimensions,
    tags: Vec<String>,
    /// Simple products and bundles: their default variant's SKU and barcode.
    default_variant: Option<(Option<String>, Option<String>)>,
    components: Option<Vec<(Uuid, i32)>>,
}

impl ProductWrite {
    /// In the caller's transaction; a clash (slug, SKU, barcode) is a 409 and the caller rolls
    /// back.
    async fn apply(&self, tx: &mut PgConnection) -> Result<(), AppError> {
        sqlx::query(
            "UPDATE products SET name = $2, slug = $3, description = $4, status = $5, category_id = $6,
                    brand = $7, price = $8, compare_at_price = $9, weight_grams = $10, length_mm = $11,
                    width_mm = $12, height_mm = $13, tags = $14
             WHERE id = $1",
        )
        .bind(self.id)
        .bind(&self.name)
        .bind(&self.slug)
        .bind(&self.description)
        .bind(self.status.as_str())
        .bind(self.category)
        .bind(&self.brand)
        .bind(self.price)
        .bind(self.compare_at)
        .bind(self.weight)
        .bind(self.dimensions.length_mm)
        .bind(self.dimensions.width_mm)
        .bind(self.dimensions.height_mm)
        .bind(&self.tags)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on(e, CLASHES))?;
        if let Some((sku, barcode)) = &self.default_variant {
            sqlx::query(
                "UPDATE product_variants SET sku = coalesce($2, sku), barcode = $3, weight_grams = $4
                 WHERE product_id = $1 AND is_default",
            )
            .bind(self.id)
            .bind(sku)
            .bind(barcode)
            .bind(self.weight)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_on(e, CLASHES))?;
        }
        if let Some(components) = &self.components {
            replace_components(tx, self.id, components).await?;
        }
        Ok(())
    }
}

/// Stock on hand changes go through the variant's inventory shard, so they cannot race a
/// reservation and cannot go below what pending orders hold. The shard runs the request's other
/// `writes` in the same transaction, so the update applies whole or not at all: a clash in the
/// writes leaves the stock as it was, and a refused stock change leaves the other fields.
async fn with_stock<F>(
    inventory: &Inventory,
    variant: Uuid,
    on_hand: i32,
    writes: F,
) -> Result<(), AppError>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<(), AppError>> + Send + 'static,
{
    inventory
        .set_on_hand_with(variant, on_hand, writes)
        .await
        .map_err(|error| match error {
            EditError::Writes(error) => error,
            EditError::Inventory(InventoryError::BelowHeld { held }) => AppError::conflict(
                "stock-below-held",
                format!("{held} units are held by pending orders; stock cannot go below that."),
            ),
            EditError::Inventory(InventoryError::Actor(actor)) => actor.into(),
            EditError::Inventory(other) => AppError::Internal(other.into()),
        })
}

/// Archives: the product disappears for customers, past orders still read their lines.
pub async fn archive(db: &PgPool, id: Uuid) -> Result<(), AppError> {
    let archived = sqlx::query("UPDATE products SET status = 'archived' WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    if archived.rows_affected() == 0 {
        return Err(AppError::NotFound);
    }
    Ok(())
}

// --- variants

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"sku": "TEE-M-RED", "options": {"size": "M", "color": "red"}, "price": 1900, "stock": 12}))]
pub struct NewVariant {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", max_length = 64)]
    pub sku: String,
    /// Option values, e.g. `{"size": "M", "color": "red"}`; one variant per combination.
    #[schema(schema_with = options_schema)]
    pub options: BTreeMap<String, String>,
    /// Minor units; the product's price when absent.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price: Option<i64>,
    /// Units on hand.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub stock: i64,
    #[schema(pattern = r"^[A-Za-z0-9]{1,64}$", max_length = 64)]
    pub barcode: Option<String>,
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub weight_grams: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VariantChanges {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", max_length = 64)]
    pub sku: Option<String>,
    #[schema(schema_with = optional_options_schema)]
    pub options: Option<BTreeMap<String, String>>,
    /// `null` falls back to the product's price.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price: Option<Option<i64>>,
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub stock: Option<i64>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9]{1,64}$", max_length = 64)]
    pub barcode: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 10_000_000)]
    pub weight_grams: Option<Option<i64>>,
}

fn parse_options(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, FieldError> {
    if raw.is_empty() || raw.len() > 10 {
        return Err(FieldError::new("options", "1 to 10 option values"));
    }
    let mut options = BTreeMap::new();
    for (key, value) in raw {
        let fits = |text: &str, max: usize| !text.trim().is_empty() && text.chars().count() <= max;
        if !fits(key, 50) || !fits(value, 100) {
            return Err(FieldError::new(
                "options",
                "names are 1 to 50 characters, values 1 to 100",
            ));
        }
        options.insert(key.trim().to_lowercase(), value.trim().to_owned());
    }
    Ok(options)
}

/// The document's view of [`parse_options`].
fn options_schema() -> utoipa::openapi::Object {
    options_schema_of(utoipa::openapi::Type::Object.into())
}

/// [`options_schema`] where `null` leaves the options as they are.
fn optional_options_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::Type;
    options_schema_of(utoipa::openapi::schema::SchemaType::from_iter([
        Type::Object,
        Type::Null,
    ]))
}

fn options_schema_of(kind: utoipa::openapi::schema::SchemaType) -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let text = |max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(max))
            .pattern(Some(r"^[^\u0000]*[^\s\u0000][^\u0000]*$"))
            .build()
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .property_names(Some(text(50)))
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::RefOr(
            utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(text(100))),
        )))
        .min_properties(Some(1))
        .max_properties(Some(10))
        .build()
}

async fn product_kind(db: &PgPool, product: Uuid) -> Result<ProductType, AppError> {
    let kind: Option<ProductType> = sqlx::query_scalar("SELECT type FROM products WHERE id = $1")
        .bind(product)
        .fetch_optional(db)
        .await?;
    kind.ok_or(AppError::NotFound)
}

pub async fn add_variant(
    db: &PgPool,
    product: Uuid,
    input: NewVariant,
) -> Result<Variant, AppError> {
    let kind = product_kind(db, product).await?;
    let mut fields = Fields::default();
    if kind != ProductType::Variable {
        return Err(AppError::conflict(
            "not-variable",
            "Only variable products take variants; a simple product or bundle has exactly one.",
        ));
    }
    let sku = fields.check(parse_sku("sku", &input.sku));
    let options = fields.check(parse_options(&input.options));
    let price = match input.price {
        Some(price) => fields.check(parse_money("price", price)),
        None => None,
    };
    let stock = fields.check(parse_stock("stock", input.stock));
    let barcode = match input.barcode.as_deref() {
        Some(barcode) => fields.check(parse_barcode("barcode", barcode)),
        None => None,
    };
    let weight = match input.weight_grams {
        Some(grams) => fields.check(parse_weight("weight_grams", grams)),
        None => None,
    };
    fields.finish()?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO product_variants (id, product_id, sku, barcode, options, price, stock, weight_grams, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                 (SELECT count(*) FROM product_variants WHERE product_id = $2))",
    )
    .bind(id)
    .bind(product)
    .bind(sku)
    .bind(barcode)
    .bind(sqlx::types::Json(options))
    .bind(price)
    .bind(stock)
    .bind(weight)
    .execute(db)
    .await
    .map_err(|e| conflict_on(e, CLASHES))?;
    variant(db, product, id).await
}

async fn variant(db: &PgPool, product: Uuid, id: Uuid) -> Result<Variant, AppError> {
    variants_of(db, product, true)
        .await?
        .into_iter()
        .find(|v| v.id == id)
        .ok_or(AppError::NotFound)
}

pub async fn update_variant(
    db: &PgPool,
    inventory: &Inventory,
    product: Uuid,
    id: Uuid,
    changes: VariantChanges,
) -> Result<Variant, AppError> {
    let current = variant(db, product, id).await?;
    let kind = product_kind(db, product).await?;
    let mut fields = Fields::default();
    let sku = match &changes.sku {
        Some(sku) => fields.check(parse_sku("sku", sku)),
        None => Some(current.sku.clone()),
    };
    let options = match (&changes.options, kind) {
        (Some(_), ProductType::Simple | ProductType::Bundle) => {
            fields.error("options", "a default variant has no options");
            None
        }
        (Some(options), ProductType::Variable) => fields.check(parse_options(options)),
        (None, _) => Some(current.options.clone()),
    };
    let price = match changes.price {
        Some(Some(price)) => fields.check(parse_money("price", price)).map(Some),
        Some(None) => Some(None),
        None => None,
    };
    let stock = match changes.stock {
        Some(_) if kind == ProductType::Bundle => {
            fields.error("stock", "a bundle's stock follows from its components");
            None
        }
        Some(units) => fields.check(parse_stock("stock", units)),
        None => None,
    };
    let barcode = match &changes.barcode {
        Some(Some(barcode)) => fields.check(parse_barcode("barcode", barcode)),
        Some(None) => None,
        None => current.barcode.clone(),
    };
    let weight = match changes.weight_grams {
        Some(Some(grams)) => fields.check(parse_weight("weight_grams", grams)),
        Some(None) => None,
        None => current.weight_grams,
    };
    fields.finish()?;
    let write = VariantWrite {
        id,
        product,
        sku,
        options: options.unwrap_or_default(),
        price,
        barcode,
        weight,
    };
    match stock {
        Some(on_hand) => {
            with_stock(inventory, id, on_hand, move |conn| {
                Box::pin(async move { write.apply(conn).await })
            })
            .await?;
        }
        None => write.apply(&mut *db.acquire().await?).await?,
    }
    variant(db, product, id).await
}

/// A variant update, checked and ready to write.
struct VariantWrite {
    id: Uuid,
    product: Uuid,
    sku: Option<String>,
    options: BTreeMap<String, String>,
    /// `Some(None)` falls back to the product's price; `None` leaves the price alone.
    price: Option<Option<i64>>,
    barcode: Option<String>,
    weight: Option<i32>,
}

impl VariantWrite {
    async fn apply(&self, tx: &mut PgConnection) -> Result<(), AppError> {
        sqlx::query(
            "UPDATE product_variants SET sku = $3, options = $4,
                    price = CASE WHEN $5 THEN $6 ELSE price END,
                    barcode = $7, weight_grams = $8
             WHERE id = $1 AND product_id = $2",
        )
        .bind(self.id)
        .bind(self.product)
        .bind(&self.sku)
        .bind(sqlx::types::Json(&self.options))
        .bind(self.price.is_some())
        .bind(self.price.flatten())
        .bind(&self.barcode)
        .bind(self.weight)
        .execute(tx)
        .await
        .map_err(|e| conflict_on(e, CLASHES))?;
        Ok(())
    }
}

/// Archives the variant (carts and past orders still read it). A default variant cannot go.
pub async fn remove_variant(db: &PgPool, product: Uuid, id: Uuid) -> Result<(), AppError> {
    let is_default: Option<bool> = sqlx::query_scalar(
        "SELECT is_default FROM product_variants
         WHERE id = $1 AND product_id = $2 AND archived_at IS NULL",
    )
    .bind(id)
    .bind(product)
    .fetch_optional(db)
    .await?;
    match is_default {
        None => Err(AppError::NotFound),
        Some(true) => Err(AppError::conflict(
            "default-variant",
            "A product's default variant cannot be removed; archive the product instead.",
        )),
        Some(false) => {
            sqlx::query("UPDATE product_variants SET archived_at = now() WHERE id = $1")
                .bind(id)
                .execute(db)
                .await?;
            Ok(())
        }
    }
}
