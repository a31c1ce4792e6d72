//! Facet counts for `GET /products?facets=category,brand,price,in_stock`: beside the page, how
//! many products each value of a filter would leave. Each facet is counted over the products the
//! *other* filters select (the storefront rule: picking a brand does not hide the other brands),
//! one query per facet, run at once on their own connections. They are cached with the listing,
//! under the catalog version.

use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::listing::{CategoryFilter, ProductQuery, push_filters};
use crate::error::{AppError, FieldError};

/// The lower edges of the price buckets, in minor units of the store currency: 0–9.99, 10–24.99,
/// 25–49.99, 50–99.99, 100–249.99, 250–499.99, 500–999.99 and 1,000 and up.
pub const PRICE_EDGES: [i64; 8] = [0, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

/// At most this many brands, the most frequent first.
pub const BRAND_LIMIT: i64 = 100;

/// A filter whose values can be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Facet {
    Category,
    Brand,
    Price,
    InStock,
}

impl Facet {
    pub const ALL: [Self; 4] = [Self::Category, Self::Brand, Self::Price, Self::InStock];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Category => "category",
            Self::Brand => "brand",
            Self::Price => "price",
            Self::InStock => "in_stock",
        }
    }

    /// The facets of a `facets` parameter (names separated by commas, in any order, repeats
    /// allowed), sorted and without repeats. Exactly the document's pattern: an unknown or empty
    /// name (a stray comma or space) is a field error.
    pub fn parse_list(raw: &str) -> Result<Vec<Self>, FieldError> {
        let mut facets = Vec::new();
        for name in raw.split(',') {
            let facet = Self::ALL
                .into_iter()
                .find(|facet| facet.as_str() == name)
                .ok_or_else(|| {
                    FieldError::new(
                        "facets",
                        format!(
                            "{name:?} is not a facet; the facets are category, brand, price and in_stock"
                        ),
                    )
                })?;
            facets.push(facet);
        }
        facets.sort();
        facets.dedup();
        Ok(facets)
    }
}

/// The counts asked for; a facet that was not asked for is absent.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Facets {
    /// Every category with at least one product, the most products first; a category counts the
    /// products of its subcategories too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Vec<CategoryCount>>,
    /// Brands (matched in any case, shown as most spelled), the most products first; at most 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<Vec<BrandCount>>,
    /// Every price bucket, cheapest first, by the price of the cheapest variant; `min` and `max`
    /// can be sent as they are as `min_price` and `max_price`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<Vec<PriceBucket>>,
    /// How many of the products could be sold now (`in_stock=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_stock: Option<InStockCount>,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct CategoryCount {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    /// To place it in the tree (`GET /categories`).
    pub parent_id: Option<Uuid>,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct BrandCount {
    pub value: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PriceBucket {
    /// Minor units, inclusive.
    pub min: i64,
    /// Minor units, inclusive; absent for the last bucket, which has no upper bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InStockCount {
    pub count: i64,
}

/// Counts `asked` over the products `query` selects, each without its own filter.
pub async fn count(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
    category: CategoryFilter,
    asked: &[Facet],
) -> Result<Facets, AppError> {
    let wanted = |facet| asked.contains(&facet);
    let (category, brand, price, in_stock) = tokio::try_join!(
        async {
            match wanted(Facet::Category) {
                true => categories(db, query, admin).await.map(Some),
                false => Ok(None),
            }
        },
        async {
            match wanted(Facet::Brand) {
                true => brands(db, query, admin, category).await.map(Some),
                false => Ok(None),
            }
        },
        async {
            match wanted(Facet::Price) {
                true => prices(db, query, admin, category).await.map(Some),
                false => Ok(None),
            }
        },
        async {
            match wanted(Facet::InStock) {
                true => in_stock(db, query, admin, category).await.map(Some),
                false => Ok(None),
            }
        },
    )?;
    Ok(Facets {
        category,
        brand,
        price,
        in_stock,
    })
}

/// Products per category of the other filters' selection, rolled up to every ancestor: each
/// product is counted once in its category and once in each category above it.
async fn categories(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
) -> Result<Vec<CategoryCount>, AppError> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "WITH RECURSIVE direct AS (SELECT p.category_id, count(*) AS n FROM products p",
    );
    push_filters(&mut sql, query, admin, CategoryFilter::Any);
    sql.push(
        " AND p.category_id IS NOT NULL GROUP BY p.category_id),
         tree AS (SELECT id AS ancestor, id AS descendant FROM categories
                  UNION ALL
                  SELECT t.ancestor, c.id FROM categories c JOIN tree t ON c.parent_id = t.descendant)
         SELECT c.id, c.slug::text AS slug, c.name, c.parent_id, sum(d.n)::bigint AS count
         FROM direct d
         JOIN tree t ON t.descendant = d.category_id
         JOIN categories c ON c.id = t.ancestor
         GROUP BY c.id
         ORDER BY count DESC, c.name, c.id",
    );
    Ok(sql.build_query_as().fetch_all(db).await?)
}

async fn brands(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
    category: CategoryFilter,
) -> Result<Vec<BrandCount>, AppError> {
    let without_brand = ProductQuery {
        brand: None,
        ..query.clone()
    };
    let mut sql = QueryBuilder::<Postgres>::new(
        // The filter matches brands in any case: so do the counts, under the most used spelling.
        "SELECT mode() WITHIN GROUP (ORDER BY p.brand) AS value, count(*) AS count FROM products p",
    );
    push_filters(&mut sql, &without_brand, admin, category);
    sql.push(" AND p.brand IS NOT NULL AND p.brand <> '' GROUP BY lower(p.brand)")
        .push(" ORDER BY count DESC, value LIMIT ")
        .push_bind(BRAND_LIMIT);
    Ok(sql.build_query_as().fetch_all(db).await?)
}

async fn prices(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
    category: CategoryFilter,
) -> Result<Vec<PriceBucket>, AppError> {
    let without_price = ProductQuery {
        min_price: None,
        max_price: None,
        ..query.clone()
    };
    let mut sql = QueryBuilder::<Postgres>::new("SELECT width_bucket(p.price_min, ");
    sql.push_bind(PRICE_EDGES.to_vec())
        .push("::bigint[]) AS bucket, count(*) AS count FROM products p");
    push_filters(&mut sql, &without_price, admin, category);
    sql.push(" GROUP BY 1");
    let counted: Vec<(i32, i64)> = sql.build_query_as().fetch_all(db).await?;
    buckets(&counted)
}

/// Every bucket of [`PRICE_EDGES`] with its count from `counted` (bucket number, count), as
/// `width_bucket` numbers them: 1 for the first edge up to the second.
fn buckets(counted: &[(i32, i64)]) -> Result<Vec<PriceBucket>, AppError> {
    if let Some((bucket, _)) = counted
        .iter()
        .find(|(bucket, _)| *bucket < 1 || *bucket as usize > PRICE_EDGES.len())
    {
        // Bucket 0 would be a price below 0, which the schema's CHECK forbids.
        return Err(AppError::Internal(anyhow::anyhow!(
            "a product price fell outside every price bucket (bucket {bucket})"
        )));
    }
    Ok(PRICE_EDGES
        .iter()
        .enumerate()
        .map(|(i, &min)| PriceBucket {
            min,
            max: PRICE_EDGES.get(i + 1).map(|next| next - 1),
            count: counted
                .iter()
                .find(|(bucket, _)| *bucket as usize == i + 1)
                .map_or(0, |&(_, count)| count),
        })
        .collect())
}

async fn in_stock(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
    category: CategoryFilter,
) -> Result<InStockCount, AppError> {
    let in_stock = ProductQuery {
        in_stock: Some(true),
        ..query.clone()
    };
    let mut sql = QueryBuilder::<Postgres>::new("SELECT count(*) FROM products p");
    push_filters(&mut sql, &in_stock, admin, category);
    let count = sql.build_query_scalar().fetch_one(db).await?;
    Ok(InStockCount { count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facet_lists_are_sorted_without_repeats_and_refuse_unknown_names() {
        assert_eq!(
            Facet::parse_list("price,brand,price,in_stock").unwrap(),
            [Facet::Brand, Facet::Price, Facet::InStock]
        );
        for bad in ["", "brand,colour", "brand,", "price, brand", ",price"] {
            assert!(Facet::parse_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_bucket_is_listed_with_inclusive_bounds_and_its_count() {
        let listed = buckets(&[(1, 3), (8, 2)]).unwrap();
        assert_eq!(listed.len(), PRICE_EDGES.len());
        assert_eq!(
            (listed[0].min, listed[0].max, listed[0].count),
            (0, Some(999), 3)
        );
        assert_eq!(
            (listed[1].min, listed[1].max, listed[1].count),
            (1_000, Some(2_499), 0)
        );
        assert_eq!(
            (listed[7].min, listed[7].max, listed[7].count),
            (100_000, None, 2)
        );
        assert!(buckets(&[(0, 1)]).is_err());
    }
}
