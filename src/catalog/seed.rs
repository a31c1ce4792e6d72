//! `shop seed --demo`: a catalog good enough to try every filter: categories in two levels,
//! simple products across brands, tags and prices, variable products and a bundle. Idempotent:
//! whatever already exists (by slug) is left alone.

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::categories::{self, NewCategory};
use super::products::{self, ComponentInput, Dimensions, NewProduct, NewVariant};
use super::{ProductStatus, ProductType};
use crate::error::AppError;

const TREE: &[(&str, &[&str])] = &[
    ("Apparel", &["T-Shirts", "Hoodies"]),
    ("Audio", &["Headphones", "Speakers"]),
    ("Kitchen", &["Cookware", "Knives"]),
    ("Home", &["Lighting", "Decor"]),
    ("Outdoors", &["Camping", "Cycling"]),
];

const BRANDS: &[&str] = &["Acme", "Northwind", "Sonic", "Blade", "Lumen"];
const ADJECTIVES: &[&str] = &["Classic", "Compact", "Deluxe", "Everyday", "Pro"];

/// (subcategory, product noun, tags, base price in cents, description)
const ITEMS: &[(&str, &str, &[&str], i64, &str)] = &[
    (
        "headphones",
        "Headphones",
        &["wireless", "bluetooth"],
        7900,
        "Closed-back headphones with a thirty hour battery.",
    ),
    (
        "speakers",
        "Speaker",
        &["bluetooth", "waterproof"],
        5900,
        "A portable speaker that fills a room.",
    ),
    (
        "cookware",
        "Skillet",
        &["cast-iron", "oven-safe"],
        3900,
        "Pre-seasoned cast iron that lasts a lifetime.",
    ),
    (
        "knives",
        "Chef Knife",
        &["steel", "forged"],
        6900,
        "A forged carbon steel blade, balanced in the hand.",
    ),
    (
        "lighting",
        "Desk Lamp",
        &["led", "dimmable"],
        4500,
        "Warm, dimmable light for late nights.",
    ),
    (
        "decor",
        "Vase",
        &["ceramic", "handmade"],
        2900,
        "Hand-thrown ceramic with a matte glaze.",
    ),
    (
        "camping",
        "Tent",
        &["waterproof", "lightweight"],
        19900,
        "A two-person tent that pitches in minutes.",
    ),
    (
        "cycling",
        "Bike Light",
        &["led", "rechargeable"],
        2500,
        "Bright enough to be seen a kilometre away.",
    ),
    (
        "hoodies",
        "Hoodie",
        &["cotton", "organic"],
        5500,
        "Heavyweight organic cotton fleece.",
    ),
    (
        "t-shirts",
        "Pocket Tee",
        &["cotton", "organic"],
        1900,
        "A soft tee with a chest pocket.",
    ),
];

#[derive(Debug, Default)]
pub struct Seeded {
    pub categories: usize,
    pub products: usize,
}

fn slug_of(name: &str) -> String {
    slug::slugify(name)
}

async fn product_exists(db: &PgPool, slug: &str) -> Result<bool, AppError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM products WHERE slug = $1::citext)")
            .bind(slug)
            .fetch_one(db)
            .await?,
    )
}

async fn create_if_missing(
    db: &PgPool,
    seeded: &mut Seeded,
    product: NewProduct,
) -> Result<(), AppError> {
    if !product_exists(db, &slug_of(&product.name)).await? {
        products::create(db, product).await?;
        seeded.products += 1;
    }
    Ok(())
}

fn simple(name: String, sku: String, price: i64, stock: i64) -> NewProduct {
    NewProduct {
        kind: ProductType::Simple,
        name,
        slug: None,
        description: None,
        status: Some(ProductStatus::Active),
        category_id: None,
        brand: None,
        sku: Some(sku),
        barcode: None,
        price,
        compare_at_price: None,
        stock: Some(stock),
        weight_grams: None,
        dimensions: None,
        tags: None,
        components: None,
    }
}

pub async fn demo(db: &PgPool) -> Result<Seeded, AppError> {
    let mut seeded = Seeded::default();
    let mut category_ids = BTreeMap::new();
    for (top, children) in TREE {
        let parent = match categories::find(db, &slug_of(top)).await? {
            Some(existing) => existing,
            None => {
                seeded.categories += 1;
                categories::create(
                    db,
                    NewCategory {
                        name: (*top).into(),
                        slug: None,
                        parent_id: None,
                        description: Some(format!("Everything {}", top.to_lowercase())),
                        position: None,
                    },
                )
                .await?
            }
        };
        for (position, child) in children.iter().enumerate() {
            let category = match categories::find(db, &slug_of(child)).await? {
                Some(existing) => existing,
                None => {
                    seeded.categories += 1;
                    categories::create(
                        db,
                        NewCategory {
                            name: (*child).into(),
                            slug: None,
                            parent_id: Some(parent.id),
                            description: None,
                            position: Some(position as i32),
                        },
                    )
                    .await?
                }
            };
            category_ids.insert(slug_of(child), category.id);
        }
    }

    // 50 simple products: every item in five editions, across brands, prices and stock levels.
    for (i, (category, noun, tags, base, description)) in ITEMS.iter().enumerate() {
        for (j, adjective) in ADJECTIVES.iter().enumerate() {
            let n = i * ADJECTIVES.len() + j;
            let mut product = simple(
                format!("{adjective} {noun}"),
                format!("DEMO-{:03}", n + 1),
                base + (j as i64) * 1000,
                // Every seventh product is sold out, so `in_stock` has something to filter.
                if n % 7 == 3 {
                    0
                } else {
                    (n as i64 % 5 + 1) * 10
                },
            );
            product.category_id = category_ids.get(*category).copied();
            product.brand = Some(BRANDS[(i + j) % BRANDS.len()].into());
            product.tags = Some(tags.iter().map(|t| (*t).to_owned()).collect());
            product.description = Some((*description).into());
            product.weight_grams = Some(200 + (n as i64) * 25);
            product.dimensions = Some(Dimensions {
                length_mm: Some(100 + n as i32),
                width_mm: Some(80),
                height_mm: Some(40),
            });
            if j == 4 {
                product.compare_at_price = Some(product.price + 1500);
            }
            create_if_missing(db, &mut seeded, product).await?;
        }
    }

    // Variable products: sizes and colours.
    for (name, category, price) in [
        ("Logo Tee", "t-shirts", 2500),
        ("Zip Hoodie", "hoodies", 6500),
        ("Trail Jacket", "camping", 12900),
    ] {
        let slug = slug_of(name);
        if product_exists(db, &slug).await? {
            continue;
        }
        let mut product = simple(name.into(), String::new(), price, 0);
        product.kind = ProductType::Variable;
        product.sku = None;
        product.stock = None;
        product.category_id = category_ids.get(category).copied();
        product.brand = Some("Northwind".into());
        product.tags = Some(vec!["cotton".into(), "unisex".into()]);
        product.description = Some(format!("The {name}, in every size and three colours."));
        let created = products::create(db, product).await?;
        seeded.products += 1;
        let prefix: String = slug.split('-').map(|w| w[..1].to_uppercase()).collect();
        for (s, size) in ["S", "M", "L", "XL"].iter().enumerate() {
            for colour in ["black", "white", "green"] {
                products::add_variant(
                    db,
                    created.id,
                    NewVariant {
                        sku: format!("{prefix}-{size}-{}", colour.to_uppercase()),
                        options: BTreeMap::from([
                            ("size".to_owned(), (*size).to_owned()),
                            ("color".to_owned(), colour.to_owned()),
                        ]),
                        price: (*size == "XL").then_some(price + 300),
                        stock: 5 + s as i64 * 3,
                        barcode: None,
                        weight_grams: None,
                    },
                )
                .await?;
            }
        }
    }

    // A bundle of a skillet and a knife.
    if !product_exists(db, "kitchen-starter-set").await? {
        let variant_of = |sku: &'static str| async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT id FROM product_variants WHERE sku = $1::citext",
            )
            .bind(sku)
            .fetch_one(db)
            .await
        };
        let skillet = variant_of("DEMO-011").await?;
        let knife = variant_of("DEMO-016").await?;
        let mut bundle = simple(
            "Kitchen Starter Set".into(),
            "DEMO-BUNDLE-1".into(),
            9900,
            0,
        );
        bundle.kind = ProductType::Bundle;
        bundle.stock = None;
        bundle.category_id = category_ids.get("cookware").copied();
        bundle.description = Some("A skillet and a chef knife, for less than apart.".into());
        bundle.components = Some(vec![
            ComponentInput {
                variant_id: skillet,
                quantity: 1,
            },
            ComponentInput {
                variant_id: knife,
                quantity: 1,
            },
        ]);
        products::create(db, bundle).await?;
        seeded.products += 1;
    }
    Ok(seeded)
}
