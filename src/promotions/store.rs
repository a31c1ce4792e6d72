//! The SQL of promotions: coupons and gift rules as rows, read into the domain types (a `kind` or
//! `scope` the code does not know is a decode error, never a default). Usage counts are not here:
//! `coupon_redemptions` belongs to the coupon limiter actor.

use chrono::{DateTime, Utc};
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

pub fn kind_str(kind: CouponKind) -> &'static str {
    match kind {
        CouponKind::Percent => "percent",
        CouponKind::Fixed => "fixed",
    }
}

pub fn scope_str(scope: CouponScope) -> &'static str {
    match scope {
        CouponScope::Order => "order",
        CouponScope::Product => "product",
    }
}

fn decode_error(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown value {value:?}").into(),
    }
}

pub fn parse_kind(raw: &str) -> Result<CouponKind, sqlx::Error> {
    match raw {
        "percent" => Ok(CouponKind::Percent),
        "fixed" => Ok(CouponKind::Fixed),
        other => Err(decode_error("kind", other)),
    }
}

pub fn parse_scope(raw: &str) -> Result<CouponScope, sqlx::Error> {
    match raw {
        "order" => Ok(CouponScope::Order),
        "product" => Ok(CouponScope::Product),
        other => Err(decode_error("scope", other)),
    }
}

#[derive(FromRow)]
struct CouponRow {
    id: Uuid,
    code: String,
    kind: String,
    value: i64,
    scope: String,
    product_ids: Vec<Uuid>,
    category_ids: Vec<Uuid>,
    min_order_total: Option<i64>,
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    usage_limit: Option<i32>,
    per_customer_limit: Option<i32>,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = sqlx::Error;

    fn try_from(row: CouponRow) -> Result<Self, sqlx::Error> {
        Ok(Coupon {
            id: row.id,
            code: row.code,
            kind: parse_kind(&row.kind)?,
            value: row.value,
            scope: parse_scope(&row.scope)?,
            product_ids: row.product_ids,
            category_ids: row.category_ids,
            min_order_total: row.min_order_total,
            starts_at: row.starts_at,
            expires_at: row.expires_at,
            usage_limit: row.usage_limit,
            per_customer_limit: row.per_customer_limit,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(FromRow)]
struct GiftRuleRow {
    id: Uuid,
    name: String,
    gift_variant_id: Uuid,
    gift_quantity: i32,
    min_order_total: Option<i64>,
    required_variant_ids: Vec<Uuid>,
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<GiftRuleRow> for GiftRule {
    fn from(row: GiftRuleRow) -> Self {
        GiftRule {
            id: row.id,
            name: row.name,
            gift_variant_id: row.gift_variant_id,
            gift_quantity: row.gift_quantity,
            min_order_total: row.min_order_total,
            required_variant_ids: row.required_variant_ids,
            starts_at: row.starts_at,
            expires_at: row.expires_at,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn coupons(rows: Vec<CouponRow>) -> Result<Vec<Coupon>, sqlx::Error> {
    rows.into_iter().map(Coupon::try_from).collect()
}

const COUPON_COLUMNS: &str = "id, code::text AS code, kind, value, scope, product_ids, \
     category_ids, min_order_total, starts_at, expires_at, usage_limit, per_customer_limit, \
     active, created_at, updated_at";

const GIFT_RULE_COLUMNS: &str = "id, name, gift_variant_id, gift_quantity, min_order_total, \
     required_variant_ids, starts_at, expires_at, active, created_at, updated_at";

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    // Only the column lists above are spliced in; every value is a bind parameter.
    sqlx::AssertSqlSafe(text)
}

/// Writes a new coupon. A duplicate code (in any case) is a unique violation of
/// [`COUPON_CODE_KEY`].
pub async fn create_coupon(
    db: impl PgExecutor<'_>,
    draft: &CouponDraft,
) -> Result<Coupon, sqlx::Error> {
    let row = sqlx::query_as::<_, CouponRow>(sql(format!(
        "INSERT INTO coupons (id, code, kind, value, scope, product_ids, category_ids,
             min_order_total, starts_at, expires_at, usage_limit, per_customer_limit, active)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         RETURNING {COUPON_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(&draft.code)
    .bind(kind_str(draft.kind))
    .bind(draft.value)
    .bind(scope_str(draft.scope))
    .bind(&draft.product_ids)
    .bind(&draft.category_ids)
    .bind(draft.min_order_total)
    .bind(draft.starts_at)
    .bind(draft.expires_at)
    .bind(draft.usage_limit)
    .bind(draft.per_customer_limit)
    .bind(draft.active)
    .fetch_one(db)
    .await?;
    row.try_into()
}

pub async fn coupon(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Coupon>, sqlx::Error> {
    sqlx::query_as::<_, CouponRow>(sql(format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?
    .map(Coupon::try_from)
    .transpose()
}

/// The coupon, locked until the transaction ends, so a PATCH merges into what it overwrites.
pub async fn coupon_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Coupon>, sqlx::Error> {
    sqlx::query_as::<_, CouponRow>(sql(format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?
    .map(Coupon::try_from)
    .transpose()
}

/// The coupon with this code, in any case, active or not.
pub async fn find_by_code(
    db: impl PgExecutor<'_>,
    code: &str,
) -> Result<Option<Coupon>, sqlx::Error> {
    sqlx::query_as::<_, CouponRow>(sql(format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1::citext"
    )))
    .bind(code)
    .fetch_optional(db)
    .await?
    .map(Coupon::try_from)
    .transpose()
}

/// One page of coupons, newest first, and how many there are in all.
pub async fn list_coupons(
    db: impl PgExecutor<'_> + Copy,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Coupon>, i64), sqlx::Error> {
    let rows = sqlx::query_as::<_, CouponRow>(sql(format!(
        "SELECT {COUPON_COLUMNS} FROM coupons
         ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM coupons")
        .fetch_one(db)
        .await?;
    Ok((coupons(rows)?, total))
}

/// Overwrites every field of the coupon with `draft` (the caller merged the PATCH into it);
/// `None` when there is no such coupon.
pub async fn update_coupon(
    db: impl PgExecutor<'_>,
    id: Uuid,
    draft: &CouponDraft,
) -> Result<Option<Coupon>, sqlx::Error> {
    sqlx::query_as::<_, CouponRow>(sql(format!(
        "UPDATE coupons SET code = $2, kind = $3, value = $4, scope = $5, product_ids = $6,
             category_ids = $7, min_order_total = $8, starts_at = $9, expires_at = $10,
             usage_limit = $11, per_customer_limit = $12, active = $13
         WHERE id = $1 RETURNING {COUPON_COLUMNS}"
    )))
    .bind(id)
    .bind(&draft.code)
    .bind(kind_str(draft.kind))
    .bind(draft.value)
    .bind(scope_str(draft.scope))
    .bind(&draft.product_ids)
    .bind(&draft.category_ids)
    .bind(draft.min_order_total)
    .bind(draft.starts_at)
    .bind(draft.expires_at)
    .bind(draft.usage_limit)
    .bind(draft.per_customer_limit)
    .bind(draft.active)
    .fetch_optional(db)
    .await?
    .map(Coupon::try_from)
    .transpose()
}

/// Deactivates the coupon (the row stays: past orders refer to it). `false` when there is no
/// such coupon; deactivating an inactive one is a no-op that still answers `true`.
pub async fn deactivate_coupon(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE coupons SET active = false WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn create_gift_rule(
    db: impl PgExecutor<'_>,
    draft: &GiftRuleDraft,
) -> Result<GiftRule, sqlx::Error> {
    let row = sqlx::query_as::<_, GiftRuleRow>(sql(format!(
        "INSERT INTO gift_rules (id, name, gift_variant_id, gift_quantity, min_order_total,
             required_variant_ids, starts_at, expires_at, active)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {GIFT_RULE_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(&draft.name)
    .bind(draft.gift_variant_id)
    .bind(draft.gift_quantity)
    .bind(draft.min_order_total)
    .bind(&draft.required_variant_ids)
    .bind(draft.starts_at)
    .bind(draft.expires_at)
    .bind(draft.active)
    .fetch_one(db)
    .await?;
    Ok(row.into())
}

pub async fn gift_rule(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<GiftRule>, sqlx::Error> {
    Ok(sqlx::query_as::<_, GiftRuleRow>(sql(format!(
        "SELECT {GIFT_RULE_COLUMNS} FROM gift_rules WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?
    .map(GiftRule::from))
}

/// The gift rule, locked until the transaction ends, so a PATCH merges into what it overwrites.
pub async fn gift_rule_for_update(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<GiftRule>, sqlx::Error> {
    Ok(sqlx::query_as::<_, GiftRuleRow>(sql(format!(
        "SELECT {GIFT_RULE_COLUMNS} FROM gift_rules WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?
    .map(GiftRule::from))
}

/// One page of gift rules, newest first, and how many there are in all.
pub async fn list_gift_rules(
    db: impl PgExecutor<'_> + Copy,
    limit: i64,
    offset: i64,
) -> Result<(Vec<GiftRule>, i64), sqlx::Error> {
    let rows = sqlx::query_as::<_, GiftRuleRow>(sql(format!(
        "SELECT {GIFT_RULE_COLUMNS} FROM gift_rules
         ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM gift_rules")
        .fetch_one(db)
        .await?;
    Ok((rows.into_iter().map(GiftRule::from).collect(), total))
}

/// The rules whose `active` flag is set, oldest first. Their dates are not filtered here: the
/// caller checks them against its own clock (a cached list outlives the moment it was read).
pub async fn active_gift_rules(db: impl PgExecutor<'_>) -> Result<Vec<GiftRule>, sqlx::Error> {
    Ok(sqlx::query_as::<_, GiftRuleRow>(sql(format!(
        "SELECT {GIFT_RULE_COLUMNS} FROM gift_rules WHERE active
         ORDER BY created_at, id"
    )))
    .fetch_all(db)
    .await?
    .into_iter()
    .map(GiftRule::from)
    .collect())
}

/// Overwrites every field of the gift rule with `draft`; `None` when there is no such rule.
pub async fn update_gift_rule(
    db: impl PgExecutor<'_>,
    id: Uuid,
    draft: &GiftRuleDraft,
) -> Result<Option<GiftRule>, sqlx::Error> {
    Ok(sqlx::query_as::<_, GiftRuleRow>(sql(format!(
        "UPDATE gift_rules SET name = $2, gift_variant_id = $3, gift_quantity = $4,
             min_order_total = $5, required_variant_ids = $6, starts_at = $7, expires_at = $8,
             active = $9
         WHERE id = $1 RETURNING {GIFT_RULE_COLUMNS}"
    )))
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
    .await?
    .map(GiftRule::from))
}

/// Deactivates the gift rule: carts drop its gift line; past orders keep theirs. `false` when
/// there is no such rule.
pub async fn deactivate_gift_rule(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE gift_rules SET active = false WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
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
    fn kinds_and_scopes_round_trip_and_unknown_strings_are_errors() {
        for kind in [CouponKind::Percent, CouponKind::Fixed] {
            assert_eq!(parse_kind(kind_str(kind)).ok(), Some(kind));
        }
        for scope in [CouponScope::Order, CouponScope::Product] {
            assert_eq!(parse_scope(scope_str(scope)).ok(), Some(scope));
        }
        assert!(parse_kind("Percent").is_err());
        assert!(parse_kind("").is_err());
        assert!(parse_scope("cart").is_err());
    }
}
