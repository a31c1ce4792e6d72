//! Categories: a tree with unique slugs and a position among siblings.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Fields, MAX_DESCRIPTION, Slug, conflict_on, double_option, parse_name, parse_text};
use crate::error::AppError;

#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
pub struct Category {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub parent_id: Option<Uuid>,
    pub description: Option<String>,
    pub position: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryWithChildren {
    #[serde(flatten)]
    pub category: Category,
    pub children: Vec<Category>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Kitchen", "description": "Pots, pans and mugs."}))]
pub struct NewCategory {
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// Derived from the name when absent.
    #[schema(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length = 200)]
    pub slug: Option<String>,
    pub parent_id: Option<Uuid>,
    #[schema(max_length = 10_000)]
    pub description: Option<String>,
    pub position: Option<i32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryChanges {
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    #[schema(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length = 200)]
    pub slug: Option<String>,
    /// `null` makes it a top-level category.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 10_000)]
    pub description: Option<Option<String>>,
    pub position: Option<i32>,
}

const CLASHES: &[(&str, &str, &str)] = &[(
    "categories_slug_key",
    "slug-taken",
    "A category with this slug already exists.",
)];

const COLUMNS: &str =
    "id, name, slug::text AS slug, parent_id, description, position, created_at, updated_at";

pub async fn list(db: &PgPool) -> Result<Vec<Category>, AppError> {
    Ok(sqlx::query_as::<_, Category>(
        "SELECT id, name, slug::text AS slug, parent_id, description, position, created_at, updated_at
         FROM categories ORDER BY parent_id NULLS FIRST, position, name",
    )
    .fetch_all(db)
    .await?)
}

/// By id, or by slug when `key` is not a UUID.
pub async fn find(db: impl PgExecutor<'_>, key: &str) -> Result<Option<Category>, AppError> {
    let found = match key.parse::<Uuid>() {
        Ok(id) => sqlx::query_as::<_, Category>(
            "SELECT id, name, slug::text AS slug, parent_id, description, position, created_at, updated_at
             FROM categories WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(db)
        .await?,
        Err(_) => sqlx::query_as::<_, Category>(
            "SELECT id, name, slug::text AS slug, parent_id, description, position, created_at, updated_at
             FROM categories WHERE slug = $1::citext",
        )
        .bind(key)
        .fetch_optional(db)
        .await?,
    };
    Ok(found)
}

pub async fn with_children(db: &PgPool, key: &str) -> Result<CategoryWithChildren, AppError> {
    let category = find(db, key).await?.ok_or(AppError::NotFound)?;
    let children = sqlx::query_as::<_, Category>(
        "SELECT id, name, slug::text AS slug, parent_id, description, position, created_at, updated_at
         FROM categories WHERE parent_id = $1 ORDER BY position, name",
    )
    .bind(category.id)
    .fetch_all(db)
    .await?;
    Ok(CategoryWithChildren { category, children })
}

async fn parent_exists(db: &PgPool, parent: Uuid) -> Result<bool, AppError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM categories WHERE id = $1)")
            .bind(parent)
            .fetch_one(db)
            .await?,
    )
}

pub async fn create(db: &PgPool, input: NewCategory) -> Result<Category, AppError> {
    let mut fields = Fields::default();
    let name = fields.check(parse_name("name", &input.name, 200));
    let slug = fields.check(Slug::given_or_derived(
        "slug",
        input.slug.as_deref(),
        &input.name,
    ));
    if let Some(description) = input.description.as_deref() {
        fields.check(parse_text("description", description, MAX_DESCRIPTION));
    }
    if let Some(parent) = input.parent_id
        && !parent_exists(db, parent).await?
    {
        fields.error("parent_id", "no such category");
    }
    fields.finish()?;
    let (Some(name), Some(slug)) = (name, slug) else {
        return Err(AppError::Internal(anyhow::anyhow!(
            "validated fields missing"
        )));
    };
    sqlx::query_as::<_, Category>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO categories (id, name, slug, parent_id, description, position)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(slug.as_str())
    .bind(input.parent_id)
    .bind(input.description)
    .bind(input.position.unwrap_or(0))
    .fetch_one(db)
    .await
    .map_err(|e| conflict_on(e, CLASHES))
}

pub async fn update(db: &PgPool, id: Uuid, changes: CategoryChanges) -> Result<Category, AppError> {
    let current = find(db, &id.to_string()).await?.ok_or(AppError::NotFound)?;
    let mut fields = Fields::default();
    let name = match &changes.name {
        Some(name) => fields.check(parse_name("name", name, 200)),
        None => Some(current.name.clone()),
    };
    let slug = match &changes.slug {
        Some(slug) => fields
            .check(Slug::parse("slug", slug))
            .map(|s| s.as_str().to_owned()),
        None => Some(current.slug.clone()),
    };
    if let Some(Some(description)) = changes.description.as_ref() {
        fields.check(parse_text("description", description, MAX_DESCRIPTION));
    }
    let parent_id = changes.parent_id.unwrap_or(current.parent_id);
    if let Some(parent) = parent_id {
        // The new parent may be neither the category itself nor one of its descendants.
        let cycle: bool = sqlx::query_scalar(
            "WITH RECURSIVE subtree AS (
                 SELECT id FROM categories WHERE id = $1
                 UNION ALL SELECT c.id FROM categories c JOIN subtree s ON c.parent_id = s.id)
             SELECT EXISTS (SELECT 1 FROM subtree WHERE id = $2)",
        )
        .bind(id)
        .bind(parent)
        .fetch_one(db)
        .await?;
        if cycle {
            fields.error("parent_id", "would make the category its own ancestor");
        } else if !parent_exists(db, parent).await? {
            fields.error("parent_id", "no such category");
        }
    }
    fields.finish()?;
    let description = changes.description.unwrap_or(current.description);
    sqlx::query_as::<_, Category>(sqlx::AssertSqlSafe(format!(
        "UPDATE categories SET name = $2, slug = $3, parent_id = $4, description = $5, position = $6
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(name)
    .bind(slug)
    .bind(parent_id)
    .bind(description)
    .bind(changes.position.unwrap_or(current.position))
    .fetch_one(db)
    .await
    .map_err(|e| conflict_on(e, CLASHES))
}

pub async fn delete(db: &PgPool, id: Uuid) -> Result<(), AppError> {
    let mut tx = db.begin().await?;
    let found: Option<(bool, bool)> = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM categories c WHERE c.parent_id = $1),
                EXISTS (SELECT 1 FROM products p WHERE p.category_id = $1)
         FROM categories WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => Err(AppError::NotFound),
        Some((true, _)) => Err(AppError::conflict(
            "category-has-children",
            "The category still has subcategories.",
        )),
        Some((_, true)) => Err(AppError::conflict(
            "category-has-products",
            "The category still has products.",
        )),
        Some((false, false)) => {
            sqlx::query("DELETE FROM categories WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
    }
}
