//! The admin's side of promotions: the request bodies for coupons and gift rules, their
//! validation (every failing field reported at once, nothing written), and the writes, each of
//! which invalidates the cached promotion lookups.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::{self, CouponDraft, GiftRuleDraft, Stored};
use super::{Coupon, CouponKind, CouponScope, GiftRule};
use crate::catalog::{double_option, parse_name};
use crate::error::{AppError, FieldError};
use crate::state::AppState;

/// The largest amount of money a promotion names: 10^12 minor units (the catalog's own bound).
pub const MAX_MONEY: i64 = 1_000_000_000_000;
/// The most products, categories or required variants one promotion lists.
pub const MAX_IDS: usize = 1000;
/// What a coupon code may be; the database checks the same pattern.
pub const CODE_PATTERN: &str = "^[A-Za-z0-9_-]{3,32}$";
pub const MAX_GIFT_QUANTITY: i32 = 99;
const MAX_RULE_NAME: usize = 200;

/// Whether `code` could be a coupon code at all: 3 to 32 ASCII letters, digits, `-` or `_`.
pub fn is_coupon_code(code: &str) -> bool {
    (3..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A field that may be left out but, when sent, may not be `null` (it has no "unset" state).
fn non_null<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom("must not be null")),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "SPRING10", "kind": "percent", "value": 10, "scope": "order", "active": true}))]
pub struct NewCoupon {
    /// 3 to 32 letters, digits, `-` or `_`; unique without regard to case (409 otherwise).
    #[schema(
        min_length = 3,
        max_length = 32,
        pattern = "^[A-Za-z0-9_-]{3,32}$",
        example = "SPRING10"
    )]
    pub code: String,
    pub kind: CouponKind,
    /// Percent: 1 to 100. Fixed: minor units of the store currency, at least 1.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 10)]
    pub value: i64,
    pub scope: CouponScope,
    /// Product scope: these products' lines. Each must exist.
    #[schema(max_items = 1000)]
    pub product_ids: Option<Vec<Uuid>>,
    /// Product scope: the lines of products in these categories or their descendants. Each must
    /// exist. A product-scope coupon names at least one product or category.
    #[schema(max_items = 1000)]
    pub category_ids: Option<Vec<Uuid>>,
    /// The cart's subtotal (gifts excluded, before discounts) must reach this, in minor units.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub min_order_total: Option<i64>,
    /// Must be before `expires_at` when both are given.
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Uses in all, held or committed; absent is unlimited.
    #[schema(minimum = 1)]
    pub usage_limit: Option<i32>,
    /// Uses per customer, held or committed; absent is unlimited.
    #[schema(minimum = 1)]
    pub per_customer_limit: Option<i32>,
    pub active: bool,
}

/// A partial update: a field left out stays as it is; `null` clears an optional field (`code`,
/// `kind`, `value`, `scope` and `active` have no unset state: `null` is a 422). The result is
/// validated as a whole (changing `kind` to `percent` needs a `value` of 1 to 100).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponChanges {
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, required = false, min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_-]{3,32}$")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = CouponKind, required = false)]
    pub kind: Option<CouponKind>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = i64, required = false, minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub value: Option<i64>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = CouponScope, required = false)]
    pub scope: Option<CouponScope>,
    /// Replaces the list; `null` or `[]` empties it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 1000)]
    pub product_ids: Option<Option<Vec<Uuid>>>,
    /// Replaces the list; `null` or `[]` empties it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 1000)]
    pub category_ids: Option<Option<Vec<Uuid>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub min_order_total: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub usage_limit: Option<Option<i32>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub per_customer_limit: Option<Option<i32>>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = bool, required = false)]
    pub active: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGiftRule {
    /// 1 to 200 characters.
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$",
        example = "Free tote over 50.00"
    )]
    pub name: String,
    /// A live (not archived) variant.
    pub gift_variant_id: Uuid,
    #[schema(minimum = 1, maximum = 99)]
    pub gift_quantity: i32,
    /// The cart's subtotal (gifts excluded) must reach this, in minor units.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub min_order_total: Option<i64>,
    /// The cart must hold every one of these live variants.
    #[schema(max_items = 1000)]
    pub required_variant_ids: Option<Vec<Uuid>>,
    /// Must be before `expires_at` when both are given.
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub active: bool,
}

/// A partial update: a field left out stays as it is; `null` clears an optional field (`name`,
/// `gift_variant_id`, `gift_quantity` and `active` have no unset state: `null` is a 422).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GiftRuleChanges {
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, required = false, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Uuid, required = false)]
    pub gift_variant_id: Option<Uuid>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = i32, required = false, minimum = 1, maximum = 99)]
    pub gift_quantity: Option<i32>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub min_order_total: Option<Option<i64>>,
    /// Replaces the list; `null` or `[]` empties it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 1000)]
    pub required_variant_ids: Option<Option<Vec<Uuid>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = bool, required = false)]
    pub active: Option<bool>,
}

/// A PATCH's value for one field, when it sent one, in place of the current one.
fn merge<T>(current: &mut T, sent: Option<T>) {
    if let Some(value) = sent {
        *current = value;
    }
}

/// Every failing field of a request, so the client sees all of them at once.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn error(&mut self, field: &str, message: &str) {
        self.0.push(FieldError::new(field, message));
    }
}

/// A list as sent (left out and `null` name nothing) as the set it names: its ids in first-seen
/// order without repeats.
fn id_set(ids: Option<Vec<Uuid>>) -> Vec<Uuid> {
    let ids = ids.unwrap_or_default();
    let mut seen = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

fn check_dates(
    fields: &mut Errors,
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) {
    if let (Some(starts), Some(expires)) = (starts_at, expires_at)
        && starts >= expires
    {
        fields.error("expires_at", "must be after starts_at");
    }
}

fn check_min_order_total(fields: &mut Errors, total: Option<i64>) {
    if let Some(total) = total
        && !(0..=MAX_MONEY).contains(&total)
    {
        fields.error(
            "min_order_total",
            "must be between 0 and 1000000000000 minor units",
        );
    }
}

fn check_id_count(fields: &mut Errors, field: &str, ids: &[Uuid]) {
    if ids.len() > MAX_IDS {
        fields.error(field, "must list at most 1000 ids");
    }
}

/// Every rule a coupon's fields obey by themselves (existence of the ids is checked apart).
pub fn check_coupon(draft: &CouponDraft) -> Vec<FieldError> {
    let mut fields = Errors::default();
    if !is_coupon_code(&draft.code) {
        fields.error(
            "code",
            "must be 3 to 32 letters, digits, hyphens or underscores",
        );
    }
    match draft.kind {
        CouponKind::Percent if !(1..=100).contains(&draft.value) => {
            fields.error("value", "a percent coupon's value must be 1 to 100");
        }
        CouponKind::Fixed if !(1..=MAX_MONEY).contains(&draft.value) => {
            fields.error(
                "value",
                "a fixed coupon's value must be 1 to 1000000000000 minor units",
            );
        }
        _ => {}
    }
    match draft.scope {
        CouponScope::Product if draft.product_ids.is_empty() && draft.category_ids.is_empty() => {
            fields.error(
                "product_ids",
                "a product-scope coupon names at least one product or category",
            );
        }
        CouponScope::Order if !draft.product_ids.is_empty() || !draft.category_ids.is_empty() => {
            // Silently ignoring them would make a coupon that does something else than it reads.
            let field = if draft.product_ids.is_empty() {
                "category_ids"
            } else {
                "product_ids"
            };
            fields.error(
                field,
                "only a product-scope coupon names products or categories",
            );
        }
        _ => {}
    }
    check_id_count(&mut fields, "product_ids", &draft.product_ids);
    check_id_count(&mut fields, "category_ids", &draft.category_ids);
    check_min_order_total(&mut fields, draft.min_order_total);
    check_dates(&mut fields, draft.starts_at, draft.expires_at);
    if draft.usage_limit.is_some_and(|limit| limit < 1) {
        fields.error("usage_limit", "must be at least 1");
    }
    if draft.per_customer_limit.is_some_and(|limit| limit < 1) {
        fields.error("per_customer_limit", "must be at least 1");
    }
    fields.0
}

/// Every rule a gift rule's fields obey by themselves (existence of the variants apart).
pub fn check_gift_rule(draft: &GiftRuleDraft) -> Vec<FieldError> {
    let mut fields = Errors::default();
    if let Err(error) = parse_name("name", &draft.name, MAX_RULE_NAME) {
        fields.0.push(error);
    }
    if !(1..=MAX_GIFT_QUANTITY).contains(&draft.gift_quantity) {
        fields.error("gift_quantity", "must be 1 to 99");
    }
    check_min_order_total(&mut fields, draft.min_order_total);
    check_id_count(
        &mut fields,
        "required_variant_ids",
        &draft.required_variant_ids,
    );
    check_dates(&mut fields, draft.starts_at, draft.expires_at);
    fields.0
}

/// One error per id that names nothing, as `field[index]`.
fn name_missing(
    errors: &mut Vec<FieldError>,
    field: &str,
    ids: &[Uuid],
    missing: &[Uuid],
    what: &str,
) {
    for (index, id) in ids.iter().enumerate() {
        if missing.contains(id) {
            errors.push(FieldError::new(
                format!("{field}[{index}]"),
                format!("no such {what}"),
            ));
        }
    }
}

/// The lists a request sent, to be checked against the catalog (lists left out were checked
/// when they were written).
#[derive(Default)]
struct SentIds<'a> {
    products: Option<&'a [Uuid]>,
    categories: Option<&'a [Uuid]>,
    variants: Option<(&'a str, &'a [Uuid])>,
    gift_variant: Option<Uuid>,
}

/// A 422 naming every failing field: the `errors` of the fields by themselves, and each id `sent`
/// that names nothing in the catalog.
async fn reject_invalid(
    db: &mut PgConnection,
    sent: SentIds<'_>,
    mut errors: Vec<FieldError>,
) -> Result<(), AppError> {
    if let Some(ids) = sent.products.filter(|ids| ids.len() <= MAX_IDS) {
        let missing = store::missing_products(&mut *db, ids).await?;
        name_missing(&mut errors, "product_ids", ids, &missing, "product");
    }
    if let Some(ids) = sent.categories.filter(|ids| ids.len() <= MAX_IDS) {
        let missing = store::missing_categories(&mut *db, ids).await?;
        name_missing(&mut errors, "category_ids", ids, &missing, "category");
    }
    if let Some(variant) = sent.gift_variant
        && !store::missing_variants(&mut *db, &[variant])
            .await?
            .is_empty()
    {
        errors.push(FieldError::new("gift_variant_id", "no such variant"));
    }
    if let Some((field, ids)) = sent.variants.filter(|(_, ids)| ids.len() <= MAX_IDS) {
        let missing = store::missing_variants(&mut *db, ids).await?;
        name_missing(&mut errors, field, ids, &missing, "variant");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(AppError::Validation(errors))
    }
}

fn code_taken(error: sqlx::Error) -> AppError {
    crate::catalog::conflict_on(
        error,
        &[(
            store::COUPON_CODE_KEY,
            "code-taken",
            "A coupon with this code already exists (codes are compared without regard to case).",
        )],
    )
}

/// Creates a coupon: 422 naming each invalid field, 409 for a code taken in any case.
pub async fn create_coupon(state: &AppState, input: NewCoupon) -> Result<Coupon, AppError> {
    let draft = CouponDraft {
        code: input.code,
        kind: input.kind,
        value: input.value,
        scope: input.scope,
        product_ids: id_set(input.product_ids),
        category_ids: id_set(input.category_ids),
        min_order_total: input.min_order_total,
        starts_at: input.starts_at,
        expires_at: input.expires_at,
        usage_limit: input.usage_limit,
        per_customer_limit: input.per_customer_limit,
        active: input.active,
    };
    let errors = check_coupon(&draft);
    let mut db = state.db.acquire().await?;
    let sent = SentIds {
        products: Some(&draft.product_ids),
        categories: Some(&draft.category_ids),
        ..SentIds::default()
    };
    reject_invalid(&mut db, sent, errors).await?;
    let coupon = store::create_coupon(&mut *db, &draft)
        .await
        .map_err(code_taken)?;
    state.promotions_changed().await;
    Ok(coupon)
}

/// Applies a partial update to a coupon (locked meanwhile) and validates the result as a whole.
pub async fn update_coupon(
    state: &AppState,
    id: Uuid,
    changes: CouponChanges,
) -> Result<Coupon, AppError> {
    let mut tx = state.db.begin().await?;
    let current = store::coupon_for_update(&mut *tx, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let mut draft = CouponDraft::from(current);
    let products_sent = changes.product_ids.is_some();
    let categories_sent = changes.category_ids.is_some();
    merge(&mut draft.code, changes.code);
    merge(&mut draft.kind, changes.kind);
    merge(&mut draft.value, changes.value);
    merge(&mut draft.scope, changes.scope);
    merge(&mut draft.product_ids, changes.product_ids.map(id_set));
    merge(&mut draft.category_ids, changes.category_ids.map(id_set));
    merge(&mut draft.min_order_total, changes.min_order_total);
    merge(&mut draft.starts_at, changes.starts_at);
    merge(&mut draft.expires_at, changes.expires_at);
    merge(&mut draft.usage_limit, changes.usage_limit);
    merge(&mut draft.per_customer_limit, changes.per_customer_limit);
    merge(&mut draft.active, changes.active);
    let errors = check_coupon(&draft);
    let sent = SentIds {
        products: products_sent.then_some(draft.product_ids.as_slice()),
        categories: categories_sent.then_some(draft.category_ids.as_slice()),
        ..SentIds::default()
    };
    reject_invalid(&mut tx, sent, errors).await?;
    let coupon = store::update_coupon(&mut *tx, id, &draft)
        .await
        .map_err(code_taken)?
        .ok_or(AppError::NotFound)?;
    tx.commit().await?;
    state.promotions_changed().await;
    Ok(coupon)
}

/// Creates a gift rule: 422 naming each invalid field (an unknown or archived variant included).
pub async fn create_gift_rule(state: &AppState, input: NewGiftRule) -> Result<GiftRule, AppError> {
    let draft = GiftRuleDraft {
        name: input.name.trim().to_owned(),
        gift_variant_id: input.gift_variant_id,
        gift_quantity: input.gift_quantity,
        min_order_total: input.min_order_total,
        required_variant_ids: id_set(input.required_variant_ids),
        starts_at: input.starts_at,
        expires_at: input.expires_at,
        active: input.active,
    };
    let errors = check_gift_rule(&draft);
    let mut db = state.db.acquire().await?;
    let sent = SentIds {
        variants: Some(("required_variant_ids", &draft.required_variant_ids)),
        gift_variant: Some(draft.gift_variant_id),
        ..SentIds::default()
    };
    reject_invalid(&mut db, sent, errors).await?;
    let rule = store::create_gift_rule(&mut *db, &draft).await?;
    state.promotions_changed().await;
    Ok(rule)
}

/// Applies a partial update to a gift rule (locked meanwhile) and validates the result.
pub async fn update_gift_rule(
    state: &AppState,
    id: Uuid,
    changes: GiftRuleChanges,
) -> Result<GiftRule, AppError> {
    let mut tx = state.db.begin().await?;
    let current = store::gift_rule_for_update(&mut *tx, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let mut draft = GiftRuleDraft::from(current);
    let gift_sent = changes.gift_variant_id;
    let required_sent = changes.required_variant_ids.is_some();
    merge(
        &mut draft.name,
        changes.name.map(|name| name.trim().to_owned()),
    );
    merge(&mut draft.gift_variant_id, changes.gift_variant_id);
    merge(&mut draft.gift_quantity, changes.gift_quantity);
    merge(&mut draft.min_order_total, changes.min_order_total);
    merge(
        &mut draft.required_variant_ids,
        changes.required_variant_ids.map(id_set),
    );
    merge(&mut draft.starts_at, changes.starts_at);
    merge(&mut draft.expires_at, changes.expires_at);
    merge(&mut draft.active, changes.active);
    let errors = check_gift_rule(&draft);
    let sent = SentIds {
        variants: required_sent.then_some((
            "required_variant_ids",
            draft.required_variant_ids.as_slice(),
        )),
        gift_variant: gift_sent,
        ..SentIds::default()
    };
    reject_invalid(&mut tx, sent, errors).await?;
    let rule = store::update_gift_rule(&mut *tx, id, &draft)
        .await?
        .ok_or(AppError::NotFound)?;
    tx.commit().await?;
    state.promotions_changed().await;
    Ok(rule)
}

/// Deactivates a coupon or a gift rule: it no longer applies to carts (a rule's gift line leaves
/// them); the row stays, so past orders keep their snapshot of it. 404 when there is no such one.
pub async fn deactivate<T: Stored>(state: &AppState, id: Uuid) -> Result<(), AppError> {
    if !store::deactivate::<T>(&state.db, id).await? {
        return Err(AppError::NotFound);
    }
    state.promotions_changed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon() -> CouponDraft {
        CouponDraft {
            code: "SPRING10".into(),
            kind: CouponKind::Percent,
            value: 10,
            scope: CouponScope::Order,
            product_ids: Vec::new(),
            category_ids: Vec::new(),
            min_order_total: None,
            starts_at: None,
            expires_at: None,
            usage_limit: None,
            per_customer_limit: None,
            active: true,
        }
    }

    fn failing(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn coupon_codes_are_3_to_32_letters_digits_hyphens_or_underscores() {
        for good in ["abc", "SPRING-10", "a_b", &"x".repeat(32)] {
            assert!(is_coupon_code(good), "{good}");
        }
        for bad in ["ab", &"x".repeat(33), "with space", "ünï", "a.b", "", "10%"] {
            assert!(!is_coupon_code(bad), "{bad}");
        }
    }

    #[test]
    fn a_valid_coupon_has_no_errors() {
        assert!(check_coupon(&coupon()).is_empty());
    }

    #[test]
    fn percent_is_1_to_100_and_fixed_above_zero() {
        for (kind, value, ok) in [
            (CouponKind::Percent, 0, false),
            (CouponKind::Percent, 1, true),
            (CouponKind::Percent, 100, true),
            (CouponKind::Percent, 101, false),
            (CouponKind::Fixed, 0, false),
            (CouponKind::Fixed, -5, false),
            (CouponKind::Fixed, 1, true),
            (CouponKind::Fixed, 50_000, true),
        ] {
            let draft = CouponDraft {
                kind,
                value,
                ..coupon()
            };
            assert_eq!(check_coupon(&draft).is_empty(), ok, "{kind:?} {value}");
        }
    }

    #[test]
    fn each_failing_field_is_named() {
        let now = Utc::now();
        let draft = CouponDraft {
            code: "x".into(),
            value: 500,
            scope: CouponScope::Product,
            min_order_total: Some(-1),
            starts_at: Some(now),
            expires_at: Some(now),
            usage_limit: Some(0),
            per_customer_limit: Some(-1),
            ..coupon()
        };
        assert_eq!(
            failing(&check_coupon(&draft)),
            vec![
                "code",
                "value",
                "product_ids",
                "min_order_total",
                "expires_at",
                "usage_limit",
                "per_customer_limit"
            ]
        );
    }

    #[test]
    fn an_order_scope_coupon_names_no_products() {
        let draft = CouponDraft {
            category_ids: vec![Uuid::now_v7()],
            ..coupon()
        };
        assert_eq!(failing(&check_coupon(&draft)), vec!["category_ids"]);
    }

    #[test]
    fn gift_quantity_is_1_to_99_and_the_name_is_required() {
        let rule = GiftRuleDraft {
            name: "Tote".into(),
            gift_variant_id: Uuid::now_v7(),
            gift_quantity: 1,
            min_order_total: None,
            required_variant_ids: Vec::new(),
            starts_at: None,
            expires_at: None,
            active: true,
        };
        assert!(check_gift_rule(&rule).is_empty());
        for quantity in [0, 100] {
            let draft = GiftRuleDraft {
                gift_quantity: quantity,
                name: String::new(),
                ..rule.clone()
            };
            assert_eq!(
                failing(&check_gift_rule(&draft)),
                vec!["name", "gift_quantity"]
            );
        }
    }

    #[test]
    fn repeated_ids_count_once_in_first_seen_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(id_set(Some(vec![b, a, b, a])), vec![b, a]);
        assert_eq!(id_set(None), Vec::<Uuid>::new());
    }
}
