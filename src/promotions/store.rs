//! The SQL of promotions: coupons and gift rules read straight into the domain types (a `kind` or
//! `scope` the code does not know is a decode error, never a default). Usage counts are not here:
//! `coupon_redemptions` belongs to the coupon limiter actor.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::{Coupon, CouponKind, CouponScope, GiftRule};

/// The unique constraint on the coupon code (case-insensitive: the column is CITEXT).
pub const COUPON_CODE_KEY: &str = "coupons_code_key";

/// A coupon's fields as they will be written, already validated (see `promotions::admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponDraft {
    pub code: String,
    pub kind: CouponKind,
    pub value: i64,
    pub scope: CouponScope,
    pub product_ids: Vec<Uuid>,
    pub category_ids: Vec<Uuid>,
    pub min_order_total: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub usage_limit: Option<i32>,
    pub per_customer_limit: Option<i32>,
    pub active: bool,
}

impl From<Coupon> for CouponDraft {
    fn from(coupon: Coupon) -> Self {
        Self {
            code: coupon.code,
            kind: coupon.kind,
            value: coupon.value,
            scope: coupon.scope,
            product_ids: coupon.product_ids,
            category_ids: coupon.category_ids,
            min_order_total: coupon.min_order_total,
            starts_at: coupon.starts_at,
            expires_at: coupon.expires_at,
            usage_limit: coupon.usage_limit,
            per_customer_limit: coupon.per_customer_limit,
            active: coupon.active,
        }
    }
}

/// A gift rule's fields as they will be written, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftRuleDraft {
    pub name: String,
    pub gift_variant_id: Uuid,
    pub gift_quantity: i32,
    pub min_order_total: Option<i64>,
    pub required_variant_ids: Vec<Uuid>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub active: bool,
}

impl From<GiftRule> for GiftRuleDraft {
    fn from(rule: GiftRule) -> Self {
        Self {
            name: rule.name,
            gift_variant_id: rule.gift_variant_id,
            gift_quantity: rule.gift_quantity,
            min_order_total: rule.min_order_total,
            required_variant_ids: rule.required_variant_ids,
            starts_at: rule.starts_at,
            expires_at: rule.expires_at,
            active: rule.active,
        }
    }
}

const COUPON_COLUMNS: &str = "id, code::text AS code, kind, value, scope, product_ids, \
     category_ids, min_order_total, starts_at, expires_at, usage_limit, per_customer_limit, \
     active, created_at, updated_at";

const GIFT_RULE_COLUMNS: &str = "id, name, gift_variant_id, gift_quantity, min_order_total, \
     required_variant_ids, starts_at, expires_at, active, created_at, updated_at";

/// A promotion and the table it is stored in, for the reads and writes both kinds share.
pub trait Stored: for<'r> FromRow<'r, PgRow> + Send + Unpin {
    const TABLE: &'static str;
    /// The columns that read a row into `Self`.
    const COLUMNS: &'static str;
}

impl Stored for Coupon {
    const TABLE: &'static str = "coupons";
    const COLUMNS: &'static str = COUPON_COLUMNS;
}

impl Stored for GiftRule {
    const TABLE: &'static str = "gift_rules";
    const COLUMNS: &'static str = GIFT_RULE_COLUMNS;
}

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    // Only the table names and column lists above are spliced in; every value is a bind parameter.
    sqlx::AssertSqlSafe(text)
}

/// The promotion with this id; with `lock`, locked until the transaction ends.
async fn by_id<T: Stored>(
    db: impl PgExecutor<'_>,
    id: Uuid,
    lock: bool,
) -> Result<Option<T>, sqlx::Error> {
    let (table, columns) = (T::TABLE, T::COLUMNS);
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as::<_, T>(sql(format!(
        "SELECT {columns} FROM {table} WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// One page of promotions, newest first, and how many there are in all.
async fn page<T: Stored>(
    db: impl PgExecutor<'_> + Copy,
    limit: i64,
    offset: i64,
) -> Result<(Vec<T>, i64), sqlx::Error> {
    let (table, columns) = (T::TABLE, T::COLUMNS);
    let rows = sqlx::query_as::<_, T>(sql(format!(
        "SELECT {columns} FROM {table}
         ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total: i64 = sqlx::query_scalar(sql(format!("SELECT count(*) FROM {table}")))
        .fetch_one(db)
        .await?;
    Ok((rows, total))
}

/// Deactivates the promotion (the row stays: past orders refer to it). `false` when there is no
/// such promotion; deactivating an inactive one is a no-op that still answers `true`.
pub async fn deactivate<T: Stored>(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let table = T::TABLE;
    let done = sqlx::query(sql(format!(
        "UPDATE {table} SET active = false WHERE id = $1"
    )))
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What a coupon draft writes, in the order [`write_coupon`] binds it from `$2`.
const COUPON_DRAFT_COLUMNS: &str = "code, kind, value, scope, product_ids, category_ids, \
     min_order_total, starts_at, expires_at, usage_limit, per_customer_limit, active";

/// Runs `statement` with the coupon's id as `$1` and the draft's fields as `$2` to `$13`, and
/// reads back the coupon it wrote (`None` when it wrote none).
async fn write_coupon(
    db: impl PgExecutor<'_>,
    statement: String,
    id: Uuid,
    draft: &CouponDraft,
) -> Result<Option<Coupon>, sqlx::Error> {
    sqlx::query_as(sql(statement))
        .bind(id)
        .bind(&draft.code)
        .bind(draft.kind.as_str())
        .bind(draft.value)
        .bind(draft.scope.as_str())
        .bind(&draft.product_ids)
        .bind(&draft.category_ids)
        .bind(draft.min_order_total)
        .bind(draft.starts_at)
        .bind(draft.expires_at)
        .bind(draft.usage_limit)
        .bind(draft.per_customer_limit)
        .bind(draft.active)
        .fetch_optional(db)
        .await
}

/// Writes a new coupon. A duplicate code (in any case) is a unique violation of
/// [`COUPON_CODE_KEY`].
pub async fn create_coupon(
    db: impl PgExecutor<'_>,
    draft: &CouponDraft,
) -> Result<Coupon, sqlx::Error> {
    let statement = format!(
        "INSERT INTO coupons (id, {COUPON_DRAFT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         RETURNING {COUPON_COLUMNS}"
    );
    // INSERT ... RETURNING answers a row or an error; `RowNotFound` is what `fetch_one` says.
    write_coupon(db, statement, Uuid::now_v7(), draft)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

pub async fn coupon(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Coupon>, sqlx::Error> {
    by_id(db, id, false).await
}

/// The coupon, locked until the transaction ends, so a PATCH merges into what it overwrites.
pub async fn coupon_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Coupon>, sqlx::Error> {
    by_id(db, id, true).await
}

/// The coupon with this code, in any case, active or not.
pub async fn find_by_code(
    db: impl PgExecutor<'_>,
    code: &str,
) -> Result<Option<Coupon>, sqlx::Error> {
    sqlx::query_as(sql(format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1::citext"
    )))
    .bind(code)
    .fetch_optional(db)
    .await
}

/// One page of coupons, newest first, and how many there are in all.
pub async fn list_coupons(
    db: impl PgExecutor<'_> + Copy,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Coupon>, i64), sqlx::Error> {
    page(db, limit, offset).await
}

/// Overwrites every field of the coupon with `draft` (the caller merged the PATCH into it);
/// `None` when there is no such coupon.
pub async fn update_coupon(
    db: impl PgExecutor<'_>,
    id: Uuid,
    draft: &CouponDraft,
) -> Result<Option<Coupon>, sqlx::Error> {
    let statement = format!(
        "UPDATE coupons SET ({COUPON_DRAFT_COLUMNS})
             = ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         WHERE id = $1 RETURNING {COUPON_COLUMNS}"
    );
    write_coupon(db, statement, id, draft).await
}

/// What a gift rule draft writes, in the order [`write_gift_rule`] binds it from `$2`.
const GIFT_RULE_DRAFT_COLUMNS: &str = "name, gift_variant_id, gift_quantity, min_order_total, \
     required_variant_ids, starts_at, expires_at, active";

/// Runs `statement` with the rule's id as `$1` and the draft's fields as `$2` to `$9`, and reads
/// back the rule it wrote (`None` when it wrote none).
async fn write_gift_rule(
    db: impl PgExecutor<'_>,
    statement: String,
    id: Uuid,
    draft: &GiftRuleDraft,
) -> Result<Option<GiftRule>, sqlx::Error> {
    sqlx::query_as(sql(statement))
        .bind(id)
        .bind(&draft.name)
        .bind(draft.gift_variant_id)
        .bind(draft.gift_quantity)
        .bind(draft.min_order_total)
        .bind(&draft.required_variant_ids)
        .bind(draft.starts_at)
        .bind(draft.expires_at)
        .bind(draft.active)
        .fetch_optional(db)
        .await
}

pub async fn create_gift_rule(
    db: impl PgExecutor<'_>,
    draft: &GiftRuleDraft,
) -> Result<GiftRule, sqlx::Error> {
    let statement = format!(
        "INSERT INTO gift_rules (id, {GIFT_RULE_DRAFT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {GIFT_RULE_COLUMNS}"
    );
    write_gift_rule(db, statement, Uuid::now_v7(), draft)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

pub async fn gift_rule(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<GiftRule>, sqlx::Error> {
    by_id(db, id, false).await
}

/// The gift rule, locked until the transaction ends, so a PATCH merges into what it overwrites.
pub async fn gift_rule_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<GiftRule>, sqlx::Error> {
    by_id(db, id, true).await
}

/// One page of gift rules, newest first, and how many there are in all.
pub async fn list_gift_rules(
    db: impl PgExecutor<'_> + Copy,
    limit: i64,
    offset: i64,
) -> Result<(Vec<GiftRule>, i64), sqlx::Error> {
    page(db, limit, offset).await
}

/// The rules whose `active` flag is set, oldest first. Their dates are not filtered here: the
/// caller checks them against its own clock (a cached list outlives the moment it was read).
pub async fn active_gift_rules(db: impl PgExecutor<'_>) -> Result<Vec<GiftRule>, sqlx::Error> {
    sqlx::query_as(sql(format!(
        "SELECT {GIFT_RULE_COLUMNS} FROM gift_rules WHERE active
         ORDER BY created_at, id"
    )))
    .fetch_all(db)
    .await
}

/// Overwrites every field of the gift rule with `draft`; `None` when there is no such rule.
pub async fn update_gift_rule(
    db: impl PgExecutor<'_>,
    id: Uuid,
    draft: &GiftRuleDraft,
) -> Result<Option<GiftRule>, sqlx::Error> {
    let statement = format!(
        "UPDATE gift_rules SET ({GIFT_RULE_DRAFT_COLUMNS}) = ($2, $3, $4, $5, $6, $7, $8, $9)
         WHERE id = $1 RETURNING {GIFT_RULE_COLUMNS}"
    );
    write_gift_rule(db, statement, id, draft).await
}

/// Which of `ids` name no product (of any status: a coupon may be prepared for a draft).
pub async fn missing_products(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    missing(db, "SELECT id FROM products WHERE id = ANY($1)", ids).await
}

/// Which of `ids` name no category.
pub async fn missing_categories(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    missing(db, "SELECT id FROM categories WHERE id = ANY($1)", ids).await
}

/// Which of `ids` name no live variant (an archived one can be neither sold nor given).
pub async fn missing_variants(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    missing(
        db,
        "SELECT id FROM product_variants WHERE id = ANY($1) AND archived_at IS NULL",
        ids,
    )
    .await
}

async fn missing(
    db: impl PgExecutor<'_>,
    query: &'static str,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<Uuid> = sqlx::query_scalar(query).bind(ids).fetch_all(db).await?;
    Ok(ids
        .iter()
        .filter(|id| !found.contains(id))
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_scopes_are_written_as_the_api_names_them() {
        // The columns hold the same words the API speaks and `sqlx::Type` reads back.
        for kind in [CouponKind::Percent, CouponKind::Fixed] {
            assert_eq!(serde_json::json!(kind), kind.as_str());
        }
        for scope in [CouponScope::Order, CouponScope::Product] {
            assert_eq!(serde_json::json!(scope), scope.as_str());
        }
    }
}
