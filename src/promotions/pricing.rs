//! Pricing: the one place that turns cart (or order) lines, a coupon and the gift rules into line
//! discounts and totals. Pure functions (no I/O, no clock of their own: the caller passes `now`),
//! so the cart view, the checkout and the order snapshot compute the same cents from the same
//! inputs. `docs/pricing.md` explains the rules with worked examples.
//!
//! The rules, in minor units (`i64`) throughout:
//! - **Gift lines** (`gift: true`) cost 0 whatever their `unit_price`, are never discounted and
//!   never count toward a subtotal, an eligible subtotal or a minimum.
//! - **Subtotal** = the sum of the paid lines' `unit_price × quantity`. Arithmetic saturates
//!   instead of panicking (overflow is impossible for the catalog's bounded prices and the
//!   cart's bounded quantities); a negative price or quantity, which neither can hold, counts as 0
//!   so the bounds below still hold.
//! - **Coupon checks**, in this order, the first failing one is the answer: inactive →
//!   `Unknown` (the same answer as a code that does not exist); `starts_at` after `now` →
//!   `NotStarted`; `expires_at` at or before `now` → `Expired`; subtotal below
//!   `min_order_total` → `MinOrderNotMet`; no eligible line → `NotApplicable`. The usage limits
//!   (`UsageLimitReached`) are the coupon limiter actor's to decide, not this module's.
//! - **Eligible lines**: order scope, every paid line; product scope, the paid lines whose
//!   product is in `product_ids` or whose categories (the caller passes each product's categories
//!   with all their ancestors) meet `category_ids`.
//! - **Discount**: percent, `eligible subtotal × value / 100` rounded once, half up, on the whole
//!   discount (never per line, so rounding errors cannot pile up); fixed, `value` capped at the
//!   eligible subtotal. Either way 0 ≤ discount ≤ eligible subtotal ≤ subtotal.
//! - **Allocation**: the discount is spread over the eligible lines in proportion to their line
//!   totals by largest remainder (Hamilton): each line first gets the floor of its exact share,
//!   then the cents left over go one each to the lines with the largest remainders, ties to the
//!   earlier line. The line discounts sum exactly to the discount, and no line is discounted by
//!   more than it costs.
//! - **Totals**: a line's total is its line total minus its discount; the order's total is the
//!   subtotal minus the discount total, never negative.
//! - **Stacking**: one coupon per cart; any number of gift rules on top; gifts are never
//!   discounted.
//! - **Gifts due**: a rule gives its gift while it is active, started, not expired, the paid
//!   lines reach its `min_order_total` (if any) and hold every one of its `required_variant_ids`.
//!   A cart with no paid line gets no gift, and a rule with a non-positive `gift_quantity` gives
//!   nothing.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Coupon, CouponKind, CouponRefusal, CouponScope, GiftRule};

/// A cart line or an order line, as pricing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The cart line or order line id: echoed back in [`PricedLine::key`].
    pub key: Uuid,
    pub variant_id: Uuid,
    pub product_id: Uuid,
    /// The product's categories and all their ancestors (the caller resolves the tree), so a
    /// coupon on a parent category reaches the products of its descendants.
    pub category_ids: Vec<Uuid>,
    pub unit_price: i64,
    pub quantity: i32,
    pub gift: bool,
}

impl Line {
    /// What the line costs before discounts: `unit_price × quantity`, 0 for a gift.
    pub fn line_total(&self) -> i64 {
        if self.gift {
            return 0;
        }
        self.unit_price
            .max(0)
            .saturating_mul(i64::from(self.quantity.max(0)))
    }
}

/// One line's prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub key: Uuid,
    /// `unit_price × quantity` (0 for a gift).
    pub line_total: i64,
    /// This line's share of the coupon's discount.
    pub discount: i64,
    /// `line_total - discount`.
    pub total: i64,
}

/// A cart's or an order's prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    /// One per input line, in the same order.
    pub lines: Vec<PricedLine>,
    /// The paid lines' line totals.
    pub subtotal: i64,
    /// The sum of the line discounts, exactly.
    pub discount_total: i64,
    /// `subtotal - discount_total`, never negative.
    pub total: i64,
    /// None: no coupon given; Some(Ok(())): applied; Some(Err(r)): why not (the cart keeps the
    /// code and shows the reason).
    pub coupon: Option<Result<(), CouponRefusal>>,
}

/// A gift the cart should carry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftDue {
    pub rule_id: Uuid,
    pub variant_id: Uuid,
    pub quantity: i32,
}

/// Prices `lines` with `coupon` (if any) as of `now`. A coupon that does not apply discounts
/// nothing; [`Pricing::coupon`] says why.
pub fn price(lines: &[Line], coupon: Option<&Coupon>, now: DateTime<Utc>) -> Pricing {
    let line_totals: Vec<i64> = lines.iter().map(Line::line_total).collect();
    let subtotal = saturating_sum(&line_totals);

    let (outcome, discounts) = match coupon {
        None => (None, vec![0; lines.len()]),
        Some(coupon) => match coupon_discounts(lines, &line_totals, subtotal, coupon, now) {
            Ok(discounts) => (Some(Ok(())), discounts),
            Err(refusal) => (Some(Err(refusal)), vec![0; lines.len()]),
        },
    };

    let priced: Vec<PricedLine> = lines
        .iter()
        .zip(line_totals.iter().zip(&discounts))
        .map(|(line, (&line_total, &discount))| PricedLine {
            key: line.key,
            line_total,
            discount,
            total: line_total.saturating_sub(discount),
        })
        .collect();
    let discount_total = saturating_sum(&discounts);

    Pricing {
        lines: priced,
        subtotal,
        discount_total,
        total: subtotal.saturating_sub(discount_total).max(0),
        coupon: outcome,
    }
}

/// The gifts whose rules hold now for the paid lines of `lines` (gift lines are ignored, so a
/// gift never qualifies a cart for another gift), ordered by rule id.
pub fn gifts_due(lines: &[Line], rules: &[GiftRule], now: DateTime<Utc>) -> Vec<GiftDue> {
    let paid: Vec<&Line> = lines.iter().filter(|line| !line.gift).collect();
    if paid.is_empty() {
        return Vec::new();
    }
    let subtotal = paid
        .iter()
        .fold(0_i64, |sum, line| sum.saturating_add(line.line_total()));

    let mut due: Vec<GiftDue> = rules
        .iter()
        .filter(|rule| {
            rule.active
                && rule.gift_quantity > 0
                && within_dates(rule.starts_at, rule.expires_at, now).is_ok()
                && rule.min_order_total.is_none_or(|min| subtotal >= min)
                && rule
                    .required_variant_ids
                    .iter()
                    .all(|required| paid.iter().any(|line| line.variant_id == *required))
        })
        .map(|rule| GiftDue {
            rule_id: rule.id,
            variant_id: rule.gift_variant_id,
            quantity: rule.gift_quantity,
        })
        .collect();
    due.sort_by_key(|gift| gift.rule_id);
    due
}

/// The coupon's discount on each line, or why it does not apply.
fn coupon_discounts(
    lines: &[Line],
    line_totals: &[i64],
    subtotal: i64,
    coupon: &Coupon,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, CouponRefusal> {
    if !coupon.active {
        return Err(CouponRefusal::Unknown);
    }
    within_dates(coupon.starts_at, coupon.expires_at, now)?;
    if coupon.min_order_total.is_some_and(|min| subtotal < min) {
        return Err(CouponRefusal::MinOrderNotMet);
    }

    // Ineligible lines weigh 0, so the allocation never gives them a cent.
    let weights: Vec<i64> = lines
        .iter()
        .zip(line_totals)
        .map(|(line, &line_total)| {
            if is_eligible(line, coupon) {
                line_total
            } else {
                0
            }
        })
        .collect();
    if !lines.iter().any(|line| is_eligible(line, coupon)) {
        return Err(CouponRefusal::NotApplicable);
    }

    let eligible_subtotal = saturating_sum(&weights);
    let discount = coupon_amount(coupon.kind, coupon.value, eligible_subtotal);
    Ok(allocate(discount, &weights))
}

/// `NotStarted` before `starts_at`, `Expired` from `expires_at` on.
fn within_dates(
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), CouponRefusal> {
    if starts_at.is_some_and(|starts| starts > now) {
        return Err(CouponRefusal::NotStarted);
    }
    if expires_at.is_some_and(|expires| expires <= now) {
        return Err(CouponRefusal::Expired);
    }
    Ok(())
}

fn is_eligible(line: &Line, coupon: &Coupon) -> bool {
    if line.gift {
        return false;
    }
    match coupon.scope {
        CouponScope::Order => true,
        CouponScope::Product => {
            coupon.product_ids.contains(&line.product_id)
                || line
                    .category_ids
                    .iter()
                    .any(|category| coupon.category_ids.contains(category))
        }
    }
}

/// The whole discount on `eligible_subtotal`: a percentage rounded once, half up; a fixed amount
/// capped. Values outside the admin's validated ranges (percent 1–100, fixed > 0) are clamped
/// so the bounds hold whatever is stored.
fn coupon_amount(kind: CouponKind, value: i64, eligible_subtotal: i64) -> i64 {
    let eligible_subtotal = eligible_subtotal.max(0);
    match kind {
        CouponKind::Percent => {
            let percent = i128::from(value.clamp(0, 100));
            // Half up on a non-negative amount: add half the divisor, then floor.
            let discount = (i128::from(eligible_subtotal) * percent + 50) / 100;
            i64::try_from(discount)
                .unwrap_or(eligible_subtotal)
                .min(eligible_subtotal)
        }
        CouponKind::Fixed => value.max(0).min(eligible_subtotal),
    }
}

/// Splits `amount` over `weights` in proportion by largest remainder (Hamilton): floors first,
/// then one cent each to the largest remainders, ties to the earlier index. The shares sum to
/// `amount` exactly (when `amount` ≤ the weights' sum, which the caller guarantees and this
/// enforces), and a share never exceeds its weight.
fn allocate(amount: i64, weights: &[i64]) -> Vec<i64> {
    // i128: `amount × weight` of two i64 cannot overflow it.
    let total: i128 = weights
        .iter()
        .map(|&weight| i128::from(weight.max(0)))
        .sum();
    if total == 0 || amount <= 0 {
        return vec![0; weights.len()];
    }
    let amount = i128::from(amount).min(total);

    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, &weight) in weights.iter().enumerate() {
        let exact = amount * i128::from(weight.max(0));
        shares.push(exact / total);
        remainders.push((exact % total, index));
    }
    let mut leftover = amount - shares.iter().sum::<i128>();
    // Stable sort: equal remainders keep input order.
    remainders.sort_by_key(|&(remainder, _)| std::cmp::Reverse(remainder));
    for (remainder, index) in remainders {
        // The leftover is the sum of the fractional parts, so it is less than the number of
        // non-zero remainders: a zero-remainder line (whose share is already exact, or whose
        // weight is 0) never gets a cent.
        if leftover == 0 || remainder == 0 {
            break;
        }
        shares[index] += 1;
        leftover -= 1;
    }
    // Each share is at most its weight, an i64.
    shares
        .into_iter()
        .map(|share| i64::try_from(share).unwrap_or(i64::MAX))
        .collect()
}

fn saturating_sum(amounts: &[i64]) -> i64 {
    amounts
        .iter()
        .fold(0_i64, |sum, &amount| sum.saturating_add(amount))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .expect("a valid instant")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A paid line of product `product` (variant likewise numbered), no categories.
    fn line(key: u128, product: u128, unit_price: i64, quantity: i32) -> Line {
        Line {
            key: id(key),
            variant_id: id(1_000 + product),
            product_id: id(product),
            category_ids: Vec::new(),
            unit_price,
            quantity,
            gift: false,
        }
    }

    fn gift_line(key: u128, variant: Uuid) -> Line {
        Line {
            key: id(key),
            variant_id: variant,
            product_id: id(9_999),
            category_ids: Vec::new(),
            unit_price: 0,
            quantity: 1,
            gift: true,
        }
    }

    fn coupon(kind: CouponKind, value: i64) -> Coupon {
        Coupon {
            id: id(77),
            code: "WINTER-10".to_owned(),
            kind,
            value,
            scope: CouponScope::Order,
            product_ids: Vec::new(),
            category_ids: Vec::new(),
            min_order_total: None,
            starts_at: None,
            expires_at: None,
            usage_limit: None,
            per_customer_limit: None,
            active: true,
            created_at: now(),
            updated_at: now(),
        }
    }

    fn gift_rule(n: u128, gift_variant: Uuid) -> GiftRule {
        GiftRule {
            id: id(n),
            name: format!("gift {n}"),
            gift_variant_id: gift_variant,
            gift_quantity: 1,
            min_order_total: None,
            required_variant_ids: Vec::new(),
            starts_at: None,
            expires_at: None,
            active: true,
            created_at: now(),
            updated_at: now(),
        }
    }

    fn discounts(pricing: &Pricing) -> Vec<i64> {
        pricing.lines.iter().map(|line| line.discount).collect()
    }

    #[test]
    fn ten_percent_off_25_at_19_99_is_exactly_49_98_off() {
        let lines = [line(1, 1, 1999, 25)];
        let pricing = price(&lines, Some(&coupon(CouponKind::Percent, 10)), now());
        assert_eq!(pricing.coupon, Some(Ok(())));
        assert_eq!(pricing.subtotal, 49_975);
        assert_eq!(pricing.discount_total, 4_998);
        assert_eq!(pricing.total, 44_977);
        assert_eq!(discounts(&pricing), vec![4_998]);
        assert_eq!(pricing.lines[0].total, 44_977);
    }

    #[test]
    fn ten_percent_off_3_33_3_33_3_34_gives_33_33_34() {
        let lines = [line(1, 1, 333, 1), line(2, 2, 333, 1), line(3, 3, 334, 1)];
        let pricing = price(&lines, Some(&coupon(CouponKind::Percent, 10)), now());
        assert_eq!(pricing.subtotal, 1_000);
        assert_eq!(pricing.discount_total, 100);
        assert_eq!(discounts(&pricing), vec![33, 33, 34]);
        assert_eq!(discounts(&pricing).iter().sum::<i64>(), 100);
        assert_eq!(pricing.total, 900);
    }

    #[test]
    fn percent_is_rounded_once_half_up_on_the_whole_discount() {
        // 5 % of 3 × 10 = 1.5 → 2, though each line's 0.5 would round to 1 each (3) or 0 each (0).
        let lines = [line(1, 1, 10, 1), line(2, 2, 10, 1), line(3, 3, 10, 1)];
        let pricing = price(&lines, Some(&coupon(CouponKind::Percent, 5)), now());
        assert_eq!(pricing.discount_total, 2);
        // Equal remainders: the leftover cents go to the earlier lines.
        assert_eq!(discounts(&pricing), vec![1, 1, 0]);

        // 10 % of 1 × 14 = 1.4 → 1 (half up rounds down below .5).
        let pricing = price(
            &[line(1, 1, 14, 1)],
            Some(&coupon(CouponKind::Percent, 10)),
            now(),
        );
        assert_eq!(pricing.discount_total, 1);
    }

    #[test]
    fn leftover_cents_go_to_the_largest_remainders() {
        // 7 % of 199 + 1 + 300 = 35: exact shares 13.93, 0.07, 21 → floors 13, 0, 21, one cent
        // left, to the largest remainder (line one).
        let lines = [line(1, 1, 199, 1), line(2, 2, 1, 1), line(3, 3, 300, 1)];
        let pricing = price(&lines, Some(&coupon(CouponKind::Percent, 7)), now());
        assert_eq!(pricing.discount_total, 35);
        assert_eq!(discounts(&pricing), vec![14, 0, 21]);
    }

    #[test]
    fn a_fixed_coupon_larger_than_the_cart_gives_a_total_of_0() {
        let lines = [line(1, 1, 1_250, 2), line(2, 2, 499, 1)];
        let pricing = price(&lines, Some(&coupon(CouponKind::Fixed, 1_000_000)), now());
        assert_eq!(pricing.coupon, Some(Ok(())));
        assert_eq!(pricing.subtotal, 2_999);
        assert_eq!(pricing.discount_total, 2_999);
        assert_eq!(pricing.total, 0);
        assert_eq!(discounts(&pricing), vec![2_500, 499]);
        assert!(pricing.lines.iter().all(|line| line.total == 0));
    }

    #[test]
    fn a_fixed_coupon_is_spread_in_proportion() {
        let lines = [line(1, 1, 3_000, 1), line(2, 2, 1_000, 1)];
        let pricing = price(&lines, Some(&coupon(CouponKind::Fixed, 500)), now());
        assert_eq!(pricing.discount_total, 500);
        assert_eq!(discounts(&pricing), vec![375, 125]);
        assert_eq!(pricing.total, 3_500);
    }

    #[test]
    fn a_product_scope_coupon_leaves_other_lines_untouched() {
        let lines = [line(1, 1, 2_000, 1), line(2, 2, 3_000, 2)];
        let mut shoes = coupon(CouponKind::Percent, 20);
        shoes.scope = CouponScope::Product;
        shoes.product_ids = vec![id(2)];
        let pricing = price(&lines, Some(&shoes), now());
        assert_eq!(pricing.coupon, Some(Ok(())));
        assert_eq!(pricing.subtotal, 8_000);
        assert_eq!(pricing.lines[0].discount, 0);
        assert_eq!(pricing.lines[0].total, 2_000);
        assert_eq!(pricing.lines[1].discount, 1_200);
        assert_eq!(pricing.discount_total, 1_200);
        assert_eq!(pricing.total, 6_800);
    }

    #[test]
    fn a_fixed_product_coupon_is_capped_at_the_eligible_lines() {
        let lines = [line(1, 1, 2_000, 1), line(2, 2, 300, 1)];
        let mut socks = coupon(CouponKind::Fixed, 1_000);
        socks.scope = CouponScope::Product;
        socks.product_ids = vec![id(2)];
        let pricing = price(&lines, Some(&socks), now());
        assert_eq!(discounts(&pricing), vec![0, 300]);
        assert_eq!(pricing.total, 2_000);
    }

    #[test]
    fn category_scope_matches_through_an_ancestor_category() {
        let (clothing, shoes, toys) = (id(500), id(501), id(600));
        // The caller resolved "shoes" up to its parent "clothing".
        let mut boots = line(1, 1, 5_000, 1);
        boots.category_ids = vec![shoes, clothing];
        let mut robot = line(2, 2, 4_000, 1);
        robot.category_ids = vec![toys];
        let mut on_clothing = coupon(CouponKind::Percent, 10);
        on_clothing.scope = CouponScope::Product;
        on_clothing.category_ids = vec![clothing];
        let pricing = price(&[boots, robot], Some(&on_clothing), now());
        assert_eq!(pricing.coupon, Some(Ok(())));
        assert_eq!(discounts(&pricing), vec![500, 0]);
    }

    #[test]
    fn each_refusal_reason() {
        let lines = [line(1, 1, 1_000, 1)];
        let refusal = |coupon: &Coupon| price(&lines, Some(coupon), now()).coupon;

        let mut inactive = coupon(CouponKind::Percent, 10);
        inactive.active = false;
        assert_eq!(refusal(&inactive), Some(Err(CouponRefusal::Unknown)));

        let mut future = coupon(CouponKind::Percent, 10);
        future.starts_at = Some(now() + Duration::seconds(1));
        assert_eq!(refusal(&future), Some(Err(CouponRefusal::NotStarted)));
        future.starts_at = Some(now());
        assert_eq!(refusal(&future), Some(Ok(())), "starts at now: started");

        let mut expired = coupon(CouponKind::Percent, 10);
        expired.expires_at = Some(now());
        assert_eq!(refusal(&expired), Some(Err(CouponRefusal::Expired)));
        expired.expires_at = Some(now() + Duration::seconds(1));
        assert_eq!(refusal(&expired), Some(Ok(())));

        let mut minimum = coupon(CouponKind::Percent, 10);
        minimum.min_order_total = Some(1_001);
        assert_eq!(refusal(&minimum), Some(Err(CouponRefusal::MinOrderNotMet)));
        minimum.min_order_total = Some(1_000);
        assert_eq!(
            refusal(&minimum),
            Some(Ok(())),
            "the minimum reached is met"
        );

        let mut elsewhere = coupon(CouponKind::Percent, 10);
        elsewhere.scope = CouponScope::Product;
        elsewhere.product_ids = vec![id(2)];
        elsewhere.category_ids = vec![id(500)];
        assert_eq!(refusal(&elsewhere), Some(Err(CouponRefusal::NotApplicable)));

        let empty = price(&[], Some(&coupon(CouponKind::Fixed, 500)), now());
        assert_eq!(empty.coupon, Some(Err(CouponRefusal::NotApplicable)));
    }

    #[test]
    fn refusals_come_in_order_and_discount_nothing() {
        let lines = [line(1, 1, 1_000, 1)];
        let mut everything_wrong = coupon(CouponKind::Percent, 10);
        everything_wrong.active = false;
        everything_wrong.starts_at = Some(now() + Duration::days(1));
        everything_wrong.expires_at = Some(now() - Duration::days(1));
        everything_wrong.min_order_total = Some(5_000);
        everything_wrong.scope = CouponScope::Product;
        let expect = |coupon: &Coupon, reason| {
            let pricing = price(&lines, Some(coupon), now());
            assert_eq!(pricing.coupon, Some(Err(reason)));
            assert_eq!(pricing.discount_total, 0);
            assert_eq!(pricing.total, 1_000);
        };
        expect(&everything_wrong, CouponRefusal::Unknown);
        everything_wrong.active = true;
        expect(&everything_wrong, CouponRefusal::NotStarted);
        everything_wrong.starts_at = None;
        expect(&everything_wrong, CouponRefusal::Expired);
        everything_wrong.expires_at = None;
        expect(&everything_wrong, CouponRefusal::MinOrderNotMet);
        everything_wrong.min_order_total = None;
        expect(&everything_wrong, CouponRefusal::NotApplicable);
    }

    #[test]
    fn no_coupon_no_discount() {
        let lines = [line(1, 1, 1_000, 3)];
        let pricing = price(&lines, None, now());
        assert_eq!(pricing.coupon, None);
        assert_eq!(pricing.subtotal, 3_000);
        assert_eq!(pricing.discount_total, 0);
        assert_eq!(pricing.total, 3_000);
    }

    #[test]
    fn gifts_are_ignored_by_discounts_and_minimums() {
        let mut gift = gift_line(2, id(4_000));
        // Even a gift line that carries a price (it should not) costs nothing.
        gift.unit_price = 10_000;
        gift.product_id = id(1);
        let lines = [line(1, 1, 1_000, 1), gift];

        let pricing = price(&lines, Some(&coupon(CouponKind::Percent, 50)), now());
        assert_eq!(pricing.subtotal, 1_000);
        assert_eq!(pricing.discount_total, 500);
        assert_eq!(
            pricing.lines[1],
            PricedLine {
                key: id(2),
                line_total: 0,
                discount: 0,
                total: 0
            }
        );

        let mut minimum = coupon(CouponKind::Percent, 50);
        minimum.min_order_total = Some(1_001);
        let pricing = price(&lines, Some(&minimum), now());
        assert_eq!(pricing.coupon, Some(Err(CouponRefusal::MinOrderNotMet)));

        // A product coupon on the gift's product does not reach the gift line.
        let mut on_gift = coupon(CouponKind::Percent, 50);
        on_gift.scope = CouponScope::Product;
        on_gift.product_ids = vec![id(9_999)];
        let pricing = price(
            &[line(1, 1, 1_000, 1), gift_line(2, id(4_000))],
            Some(&on_gift),
            now(),
        );
        assert_eq!(pricing.coupon, Some(Err(CouponRefusal::NotApplicable)));
    }

    #[test]
    fn gifts_due_from_the_threshold() {
        let mug = id(4_000);
        let mut rule = gift_rule(1, mug);
        rule.min_order_total = Some(5_000);
        let rules = [rule];

        assert_eq!(gifts_due(&[line(1, 1, 4_999, 1)], &rules, now()), vec![]);
        let due = gifts_due(&[line(1, 1, 2_500, 2)], &rules, now());
        assert_eq!(
            due,
            vec![GiftDue {
                rule_id: id(1),
                variant_id: mug,
                quantity: 1
            }]
        );
        // The gift line itself does not keep the cart over the threshold.
        let mut priced_gift = gift_line(2, mug);
        priced_gift.unit_price = 5_000;
        assert_eq!(
            gifts_due(&[line(1, 1, 4_999, 1), priced_gift], &rules, now()),
            vec![]
        );
    }

    #[test]
    fn gifts_due_needs_every_required_variant_among_the_paid_lines() {
        let mug = id(4_000);
        let mut rule = gift_rule(1, mug);
        rule.required_variant_ids = vec![id(1_001), id(1_002)];
        let rules = [rule];

        assert_eq!(gifts_due(&[line(1, 1, 100, 1)], &rules, now()), vec![]);
        assert_eq!(
            gifts_due(&[line(1, 1, 100, 1), line(2, 2, 100, 1)], &rules, now()).len(),
            1
        );
        // A required variant held only as a gift does not count.
        let gift_of_two = gift_line(2, id(1_002));
        assert_eq!(
            gifts_due(&[line(1, 1, 100, 1), gift_of_two], &rules, now()),
            vec![]
        );
    }

    #[test]
    fn gifts_due_respects_dates_activity_and_orders_by_rule_id() {
        let lines = [line(1, 1, 100, 1)];
        let mut inactive = gift_rule(1, id(4_001));
        inactive.active = false;
        let mut future = gift_rule(2, id(4_002));
        future.starts_at = Some(now() + Duration::seconds(1));
        let mut expired = gift_rule(3, id(4_003));
        expired.expires_at = Some(now());
        let mut no_quantity = gift_rule(4, id(4_004));
        no_quantity.gift_quantity = 0;
        let later = gift_rule(9, id(4_009));
        let earlier = gift_rule(5, id(4_005));
        let rules = [inactive, future, expired, no_quantity, later, earlier];

        let due: Vec<Uuid> = gifts_due(&lines, &rules, now())
            .into_iter()
            .map(|gift| gift.rule_id)
            .collect();
        assert_eq!(due, vec![id(5), id(9)]);
        // No paid line: no gift, even from an unconditional rule.
        assert_eq!(gifts_due(&[gift_line(1, id(4_005))], &rules, now()), vec![]);
        assert_eq!(gifts_due(&[], &rules, now()), vec![]);
    }

    // Properties. Products and categories come from small pools so that product-scope coupons
    // meet some lines and miss others.

    fn arb_line() -> impl Strategy<Value = Line> {
        (
            any::<u128>(),
            0_u128..6,
            proptest::collection::vec(0_u128..6, 0..3),
            0_i64..=1_000_000,
            1_i32..=99,
            proptest::bool::weighted(0.15),
        )
            .prop_map(
                |(key, product, categories, unit_price, quantity, gift)| Line {
                    key: Uuid::from_u128(key),
                    variant_id: id(1_000 + product),
                    product_id: id(product),
                    category_ids: categories.into_iter().map(|c| id(500 + c)).collect(),
                    unit_price: if gift { 0 } else { unit_price },
                    quantity,
                    gift,
                },
            )
    }

    fn arb_coupon() -> impl Strategy<Value = Coupon> {
        (
            prop_oneof![
                (1_i64..=100).prop_map(|v| (CouponKind::Percent, v)),
                (1_i64..=200_000_000).prop_map(|v| (CouponKind::Fixed, v)),
            ],
            any::<bool>(),
            proptest::collection::vec(0_u128..6, 0..3),
            proptest::collection::vec(0_u128..6, 0..3),
            proptest::option::weighted(0.2, 0_i64..=50_000_000),
        )
            .prop_map(
                |((kind, value), product_scope, products, categories, min)| {
                    let mut coupon = coupon(kind, value);
                    if product_scope {
                        coupon.scope = CouponScope::Product;
                        coupon.product_ids = products.into_iter().map(id).collect();
                        coupon.category_ids = categories.into_iter().map(|c| id(500 + c)).collect();
                    }
                    coupon.min_order_total = min;
                    coupon
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn pricing_adds_up_to_the_cent(
            lines in proptest::collection::vec(arb_line(), 0..20),
            coupon in proptest::option::of(arb_coupon()),
        ) {
            let pricing = price(&lines, coupon.as_ref(), now());

            prop_assert_eq!(pricing.lines.len(), lines.len());
            let expected_subtotal: i64 = lines
                .iter()
                .filter(|line| !line.gift)
                .map(|line| line.unit_price * i64::from(line.quantity))
                .sum();
            prop_assert_eq!(pricing.subtotal, expected_subtotal);
            prop_assert_eq!(
                pricing.lines.iter().map(|line| line.discount).sum::<i64>(),
                pricing.discount_total
            );
            prop_assert!(0 <= pricing.discount_total && pricing.discount_total <= pricing.subtotal);
            prop_assert_eq!(pricing.total, pricing.subtotal - pricing.discount_total);
            prop_assert!(pricing.total >= 0);
            prop_assert_eq!(pricing.lines.iter().map(|line| line.total).sum::<i64>(), pricing.total);

            for (input, priced) in lines.iter().zip(&pricing.lines) {
                prop_assert_eq!(priced.key, input.key);
                prop_assert!(0 <= priced.discount && priced.discount <= priced.line_total);
                prop_assert_eq!(priced.total, priced.line_total - priced.discount);
                if input.gift {
                    prop_assert_eq!((priced.line_total, priced.discount), (0, 0));
                } else {
                    prop_assert_eq!(priced.line_total, input.unit_price * i64::from(input.quantity));
                }
            }

            match (&coupon, &pricing.coupon) {
                (None, outcome) => {
                    prop_assert_eq!(outcome, &None);
                    prop_assert_eq!(pricing.discount_total, 0);
                }
                (Some(_), Some(Err(_))) => prop_assert_eq!(pricing.discount_total, 0),
                (Some(coupon), Some(Ok(()))) => {
                    // The discount is the rule's, on the eligible lines only, each line within a
                    // cent of its exact proportional share.
                    let eligible: Vec<bool> =
                        lines.iter().map(|line| is_eligible(line, coupon)).collect();
                    let eligible_subtotal: i64 = pricing
                        .lines
                        .iter()
                        .zip(&eligible)
                        .filter(|(_, eligible)| **eligible)
                        .map(|(line, _)| line.line_total)
                        .sum();
                    let expected = match coupon.kind {
                        CouponKind::Percent => (eligible_subtotal * coupon.value + 50) / 100,
                        CouponKind::Fixed => coupon.value.min(eligible_subtotal),
                    };
                    prop_assert_eq!(pricing.discount_total, expected);
                    for (priced, eligible) in pricing.lines.iter().zip(&eligible) {
                        if !eligible {
                            prop_assert_eq!(priced.discount, 0);
                        } else if eligible_subtotal > 0 {
                            let exact = i128::from(expected) * i128::from(priced.line_total);
                            let given = i128::from(priced.discount) * i128::from(eligible_subtotal);
                            prop_assert!((given - exact).abs() < i128::from(eligible_subtotal));
                        }
                    }
                }
                (Some(_), None) => prop_assert!(false, "a coupon given has an outcome"),
            }
        }

        #[test]
        fn price_never_panics(
            lines in proptest::collection::vec(
                (any::<i64>(), any::<i32>(), any::<bool>(), 0_u128..3).prop_map(
                    |(unit_price, quantity, gift, product)| Line {
                        unit_price,
                        quantity,
                        gift,
                        ..line(product, product, 0, 1)
                    },
                ),
                0..20,
            ),
            kind in prop_oneof![Just(CouponKind::Percent), Just(CouponKind::Fixed)],
            value in any::<i64>(),
            min in proptest::option::of(any::<i64>()),
        ) {
            let mut coupon = coupon(kind, value);
            coupon.min_order_total = min;
            let pricing = price(&lines, Some(&coupon), now());
            prop_assert!(pricing.total >= 0);
            prop_assert!(pricing.discount_total >= 0);
            prop_assert!(pricing.lines.iter().all(|line| line.discount >= 0 && line.total >= 0));
        }

        #[test]
        fn gifts_due_holds_exactly_the_rules_whose_conditions_hold(
            lines in proptest::collection::vec(arb_line(), 0..10),
            minimums in proptest::collection::vec(proptest::option::of(0_i64..=5_000_000), 0..6),
        ) {
            let rules: Vec<GiftRule> = minimums
                .iter()
                .enumerate()
                .map(|(n, &min)| {
                    let mut rule = gift_rule(100 - n as u128, id(4_000));
                    rule.min_order_total = min;
                    rule
                })
                .collect();
            let due = gifts_due(&lines, &rules, now());
            let subtotal = price(&lines, None, now()).subtotal;
            let any_paid = lines.iter().any(|line| !line.gift);
            let expected = rules
                .iter()
                .filter(|rule| any_paid && rule.min_order_total.is_none_or(|min| subtotal >= min))
                .count();
            prop_assert_eq!(due.len(), expected);
            prop_assert!(due.windows(2).all(|pair| pair[0].rule_id < pair[1].rule_id));
        }
    }
}
