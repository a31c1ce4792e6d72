//! `GET /products`: full-text search with a typo-tolerant trigram fallback, filters, sorts and
//! pages, over indexes (see `docs/catalog-query-plans.md` for the plans on 100k products).

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ProductStatus;
use super::facets::{self, Facet, Facets};
use super::products::{PRODUCT_SELECT, Product, ProductRow, attach_images};
use crate::error::{AppError, FieldError};
use crate::http::pagination::PageParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Best match first when `q` is given, else newest.
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
    Rating,
    Name,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    /// Full-text search over name, description, brand, tags and SKU; tolerates a typo in a name.
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// Category id or slug; includes its subcategories.
    #[param(max_length = 200)]
    pub category: Option<String>,
    #[param(max_length = 200)]
    pub brand: Option<String>,
    /// Comma-separated; a product must have all of them.
    #[param(max_length = 1_600)]
    pub tags: Option<String>,
    /// Minor units, against the cheapest variant.
    pub min_price: Option<i64>,
    /// Minor units, against the cheapest variant.
    pub max_price: Option<i64>,
    /// Only products that can be sold now.
    pub in_stock: Option<bool>,
    /// Admins only; customers always see active products.
    pub status: Option<ProductStatus>,
    pub sort: Option<Sort>,
    /// Comma-separated: `category`, `brand`, `price`, `in_stock`. Adds `facets` beside the page:
    /// for each, how many products each of its values would leave, counted over the products
    /// the other filters select.
    #[param(
        max_length = 200,
        pattern = r"^(category|brand|price|in_stock)(,(category|brand|price|in_stock))*$"
    )]
    pub facets: Option<String>,
    /// 1-based page number (default 1; 0 is read as 1).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    pub page: Option<u32>,
    /// Items per page (default 20, at most 100; other values are clamped to 1 to 100).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    pub per_page: Option<u32>,
}

impl ProductQuery {
    pub fn page_params(&self) -> PageParams {
        PageParams {
            page: self.page,
            per_page: self.per_page,
        }
    }

    /// Refuses a text filter longer than the document allows, and an unknown facet.
    pub fn check(&self) -> Result<(), AppError> {
        let mut errors: Vec<FieldError> = [
            ("q", &self.q, 200),
            ("category", &self.category, 200),
            ("brand", &self.brand, 200),
            ("tags", &self.tags, 1_600),
            ("facets", &self.facets, 200),
        ]
        .into_iter()
        .filter(|(_, value, max)| value.as_ref().is_some_and(|v| v.chars().count() > *max))
        .map(|(field, _, max)| FieldError::new(field, format!("must be at most {max} characters")))
        .collect();
        if let Some(Err(error)) = self.facets.as_deref().map(Facet::parse_list) {
            errors.push(error);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(errors))
        }
    }

    /// Trims, drops empty values and clamps the page, so equal queries share a cache key.
    pub fn normalized(mut self) -> Self {
        fn clean(value: Option<String>) -> Option<String> {
            value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
        }
        self.q = clean(self.q);
        self.category = clean(self.category);
        self.brand = clean(self.brand);
        self.tags = clean(self.tags).map(|tags| {
            let mut tags: Vec<String> = tags
                .split(',')
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
            tags.sort();
            tags.dedup();
            tags.join(",")
        });
        // One spelling per set of facets, for the cache key. Checked before (`check`); `search`
        // parses it again, so a list that does not parse is kept as it is, to be refused there.
        self.facets = self.facets.map(|raw| match Facet::parse_list(&raw) {
            Ok(facets) => facets
                .iter()
                .map(|facet| facet.as_str())
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => raw,
        });
        let page = self.page_params();
        self.page = Some(page.page());
        self.per_page = Some(page.per_page());
        if self.sort.is_none() {
            self.sort = Some(Sort::Relevance);
        }
        self
    }

    pub fn cache_key(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The category filter once its id or slug is looked up.
#[derive(Debug, Clone, Copy)]
pub enum CategoryFilter {
    Any,
    /// The category and its descendants.
    Within(Uuid),
    /// An id or slug no category has: nothing matches.
    Unknown,
}

/// One page of products and, when asked for, the facet counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub page: u32,
    pub per_page: u32,
    pub total: i64,
    /// Present when `facets` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facets: Option<Facets>,
}

/// The WHERE clause of `query`'s filters over `products p`, with the category already resolved
/// (`category`; `query.category` is not read).
pub(super) fn push_filters(
    builder: &mut QueryBuilder<Postgres>,
    query: &ProductQuery,
    admin: bool,
    category: CategoryFilter,
) {
    builder.push(" WHERE true");
    match (admin, query.status) {
        (true, Some(status)) => {
            builder.push(" AND p.status = ").push_bind(status.as_str());
        }
        (true, None) => {}
        (false, _) => {
            builder.push(" AND p.status = 'active'");
        }
    }
    if let Some(q) = &query.q {
        builder
            .push(" AND (p.search_vector @@ websearch_to_tsquery('english', ")
            .push_bind(q)
            .push(") OR p.search_vector @@ websearch_to_tsquery('simple', ")
            .push_bind(q)
            .push(") OR ")
            .push_bind(q)
            .push(" <% p.name)");
    }
    if let CategoryFilter::Unknown = category {
        builder.push(" AND false");
    }
    if let CategoryFilter::Within(category) = category {
        builder
            .push(
                " AND p.category_id IN (WITH RECURSIVE tree AS (
                    SELECT id FROM categories WHERE id = ",
            )
            .push_bind(category)
            .push(
                " UNION ALL SELECT c.id FROM categories c JOIN tree t ON c.parent_id = t.id)
                  SELECT id FROM tree)",
            );
    }
    if let Some(brand) = &query.brand {
        builder
            .push(" AND lower(p.brand) = lower(")
            .push_bind(brand)
            .push(")");
    }
    if let Some(tags) = &query.tags {
        let tags: Vec<String> = tags.split(',').map(str::to_owned).collect();
        builder.push(" AND p.tags @> ").push_bind(tags);
    }
    if let Some(min) = query.min_price {
        builder.push(" AND p.price_min >= ").push_bind(min);
    }
    if let Some(max) = query.max_price {
        builder.push(" AND p.price_min <= ").push_bind(max);
    }
    if query.in_stock == Some(true) {
        // `product_available(p.id, p.type) > 0`, set-based: the products with a live variant
        // that has more on hand than held, found once and hashed, instead of the function's two
        // lookups per product (5 s, past the statement timeout, to count 100k products; 83 ms
        // this way). Bundles, which depend on their components, keep the function.
        builder.push(
            " AND ((p.type = 'bundle' AND product_available(p.id, p.type) > 0)
               OR (p.type <> 'bundle' AND p.status <> 'archived' AND p.id IN (
                   SELECT v.product_id FROM product_variants v
                   LEFT JOIN (SELECT r.variant_id, sum(r.quantity) AS held
                              FROM stock_reservations r WHERE r.status = 'held'
                              GROUP BY r.variant_id) h ON h.variant_id = v.id
                   WHERE v.archived_at IS NULL AND v.stock > coalesce(h.held, 0))))",
        );
    }
}

fn push_order(builder: &mut QueryBuilder<Postgres>, query: &ProductQuery) {
    let order = match (query.sort.unwrap_or_default(), &query.q) {
        (Sort::Relevance, Some(q)) => {
            builder
                .push(" ORDER BY ts_rank(p.search_vector, websearch_to_tsquery('english', ")
                .push_bind(q)
                .push(")) + word_similarity(")
                .push_bind(q)
                .push(", p.name) DESC, p.id DESC");
            return;
        }
        (Sort::Relevance | Sort::Newest, _) => " ORDER BY p.created_at DESC, p.id DESC",
        (Sort::PriceAsc, _) => " ORDER BY p.price_min, p.id",
        (Sort::PriceDesc, _) => " ORDER BY p.price_max DESC, p.id DESC",
        (Sort::Rating, _) => " ORDER BY p.rating_average DESC, p.id DESC",
        (Sort::Name, _) => " ORDER BY p.name, p.id",
    };
    builder.push(order);
}

/// One page of products matching `query` (already [`ProductQuery::normalized`]), with the facet
/// counts it asks for.
pub async fn search(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
) -> Result<ProductPage, AppError> {
    let category = match &query.category {
        Some(key) => match super::categories::find(db, key).await? {
            Some(category) => CategoryFilter::Within(category.id),
            None => CategoryFilter::Unknown,
        },
        None => CategoryFilter::Any,
    };
    let asked = match query.facets.as_deref() {
        Some(raw) => Facet::parse_list(raw)?,
        None => Vec::new(),
    };
    let (page, facets) = tokio::try_join!(page(db, query, admin, category), async {
        match asked.is_empty() {
            true => Ok(None),
            false => facets::count(db, query, admin, category, &asked)
                .await
                .map(Some),
        }
    })?;
    Ok(ProductPage { facets, ..page })
}

async fn page(
    db: &PgPool,
    query: &ProductQuery,
    admin: bool,
    category: CategoryFilter,
) -> Result<ProductPage, AppError> {
    let page = query.page_params();
    let empty = |total| ProductPage {
        items: Vec::new(),
        page: page.page(),
        per_page: page.per_page(),
        total,
        facets: None,
    };
    if let CategoryFilter::Unknown = category {
        return Ok(empty(0));
    }

    let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM products p");
    push_filters(&mut count, query, admin, category);
    let total: i64 = count.build_query_scalar().fetch_one(db).await?;

    let mut select = QueryBuilder::<Postgres>::new(PRODUCT_SELECT);
    push_filters(&mut select, query, admin, category);
    push_order(&mut select, query);
    select
        .push(" LIMIT ")
        .push_bind(page.limit())
        .push(" OFFSET ")
        .push_bind(page.offset());
    let rows: Vec<ProductRow> = select.build_query_as().fetch_all(db).await?;
    let mut products: Vec<Product> = rows
        .into_iter()
        .map(|row| row.into_product(admin))
        .collect();
    attach_images(db, &mut products).await?;
    Ok(ProductPage {
        items: products,
        ..empty(total)
    })
}
