//! What the on-call commands (`shop reconcile`, `shop outbox`, `shop refunds`) read from the
//! database, and the plain-text tables they print. Read-only: nothing here changes a row.

use std::fmt::Write as _;

use sqlx::PgPool;
use uuid::Uuid;

use crate::messaging::email::format_money;

/// Order statuses whose lines were sold: their stock commit took the units off the shelf, and
/// nothing puts them back (a refund returns money, not goods).
const SOLD_STATUSES: [&str; 4] = ["paid", "shipped", "delivered", "refunded"];

/// One variant's units as the database records them, and what does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantStock {
    pub variant_id: Uuid,
    pub sku: String,
    /// `product_variants.stock`: units on the shelf, held ones included.
    pub on_hand: i64,
    /// Units of live (`held`) reservations, whoever owns them.
    pub held: i64,
    /// Held units whose owner is not a pending order (a missing order, or one that moved on).
    pub held_for_no_pending_order: i64,
    /// Units of `committed` reservations: sold according to the inventory.
    pub sold: i64,
    /// Units on the lines of paid, shipped, delivered and refunded orders, bundles counted as
    /// their components: sold according to the orders.
    pub sold_by_orders: i64,
    /// Why this variant does not reconcile; empty when it does.
    pub problems: Vec<String>,
}

/// One coupon's uses as the database records them, and what does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponUses {
    pub coupon_id: Uuid,
    pub code: String,
    /// `held` uses, whoever holds them.
    pub held: i64,
    /// Held uses whose order is not pending (a missing order, or one that moved on).
    pub held_for_no_pending_order: i64,
    /// Pending orders with the coupon and no live (held or committed) use of it.
    pub pending_without_use: i64,
    /// `committed` uses.
    pub committed: i64,
    /// Paid, shipped, delivered and refunded orders with the coupon.
    pub sold_orders: i64,
    /// Why this coupon does not reconcile; empty when it does.
    pub problems: Vec<String>,
}

/// Every variant and every coupon with a use or an order, and which of them break the invariants.
#[derive(Debug, Clone)]
pub struct Reconciliation {
    pub variants: Vec<VariantStock>,
    pub coupons: Vec<CouponUses>,
}

impl Reconciliation {
    pub fn mismatched(&self) -> impl Iterator<Item = &VariantStock> {
        self.variants.iter().filter(|v| !v.problems.is_empty())
    }

    pub fn mismatched_coupons(&self) -> impl Iterator<Item = &CouponUses> {
        self.coupons.iter().filter(|c| !c.problems.is_empty())
    }
}

/// Checks, per variant, what the shop can verify without a record of goods received:
/// - on hand is never negative, and never below the units held (a hold is a promise of units on
///   the shelf);
/// - every held unit belongs to a pending order;
/// - the units committed (sold) by the inventory equal the units on the lines of sold orders.
pub async fn reconcile(db: &PgPool) -> Result<Reconciliation, sqlx::Error> {
    let rows: Vec<(Uuid, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        r#"
        WITH reservations AS (
            SELECT r.variant_id,
                   coalesce(sum(r.quantity) FILTER (WHERE r.status = 'held'), 0)::bigint AS held,
                   coalesce(sum(r.quantity) FILTER (
                       WHERE r.status = 'held' AND o.status IS DISTINCT FROM 'pending'), 0)::bigint
                       AS stray,
                   coalesce(sum(r.quantity) FILTER (WHERE r.status = 'committed'), 0)::bigint
                       AS sold
            FROM stock_reservations r
            LEFT JOIN orders o ON o.id = r.owner_id
            WHERE r.status IN ('held', 'committed')
            GROUP BY r.variant_id
        ),
        sold_lines AS (
            -- A bundle is sold through its own variant and takes its components off the shelf.
            SELECT coalesce(bc.variant_id, i.variant_id) AS variant_id,
                   sum(i.quantity * coalesce(bc.quantity, 1))::bigint AS units
            FROM order_items i
            JOIN orders o ON o.id = i.order_id AND o.status = ANY($1)
            JOIN products p ON p.id = i.product_id
            LEFT JOIN bundle_components bc ON p.type = 'bundle' AND bc.bundle_id = p.id
            GROUP BY 1
        )
        SELECT v.id, v.sku::text, v.stock::bigint,
               coalesce(r.held, 0), coalesce(r.stray, 0), coalesce(r.sold, 0),
               coalesce(s.units, 0)
        FROM product_variants v
        LEFT JOIN reservations r ON r.variant_id = v.id
        LEFT JOIN sold_lines s ON s.variant_id = v.id
        ORDER BY v.sku, v.id
        "#,
    )
    .bind(&SOLD_STATUSES[..])
    .fetch_all(db)
    .await?;
    let variants = rows
        .into_iter()
        .map(
            |(variant_id, sku, on_hand, held, stray, sold, sold_by_orders)| {
                let mut problems = Vec::new();
                if on_hand < 0 {
                    problems.push(format!("negative on hand ({on_hand})"));
                }
                if held > on_hand {
                    problems.push(format!("{held} held but {on_hand} on hand"));
                }
                if stray > 0 {
                    problems.push(format!("{stray} held for no pending order"));
                }
                if sold != sold_by_orders {
                    problems.push(format!(
                        "{sold} sold by the inventory, {sold_by_orders} by sold orders' lines"
                    ));
                }
                VariantStock {
                    variant_id,
                    sku,
                    on_hand,
                    held,
                    held_for_no_pending_order: stray,
                    sold,
                    sold_by_orders,
                    problems,
                }
            },
        )
        .collect();
    let coupons = reconcile_coupons(db).await?;
    Ok(Reconciliation { variants, coupons })
}

/// Checks, per coupon that has a use or an order: every held use belongs to a pending order; every
/// pending order with the coupon holds a use of it; the committed uses are the sold orders with
/// the coupon.
async fn reconcile_coupons(db: &PgPool) -> Result<Vec<CouponUses>, sqlx::Error> {
    let rows: Vec<(Uuid, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        r#"
        WITH uses AS (
            SELECT r.coupon_id,
                   count(*) FILTER (WHERE r.status = 'held') AS held,
                   count(*) FILTER (WHERE r.status = 'held' AND o.status IS DISTINCT FROM 'pending')
                       AS stray,
                   count(*) FILTER (WHERE r.status = 'committed') AS committed
            FROM coupon_redemptions r
            LEFT JOIN orders o ON o.id = r.order_id
            WHERE r.status IN ('held', 'committed')
            GROUP BY r.coupon_id
        ),
        orders_with AS (
            SELECT o.coupon_id,
                   count(*) FILTER (WHERE o.status = ANY($1)) AS sold,
                   count(*) FILTER (WHERE o.status = 'pending' AND NOT EXISTS (
                       SELECT 1 FROM coupon_redemptions r
                       WHERE r.coupon_id = o.coupon_id AND r.order_id = o.id
                         AND r.status IN ('held', 'committed'))) AS unheld
            FROM orders o
            WHERE o.coupon_id IS NOT NULL
            GROUP BY o.coupon_id
        )
        SELECT c.id, c.code::text, coalesce(u.held, 0), coalesce(u.stray, 0),
               coalesce(w.unheld, 0), coalesce(u.committed, 0), coalesce(w.sold, 0)
        FROM coupons c
        LEFT JOIN uses u ON u.coupon_id = c.id
        LEFT JOIN orders_with w ON w.coupon_id = c.id
        WHERE u.coupon_id IS NOT NULL OR w.coupon_id IS NOT NULL
        ORDER BY c.code, c.id
        "#,
    )
    .bind(&SOLD_STATUSES[..])
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(coupon_id, code, held, stray, unheld, committed, sold_orders)| {
                let mut problems = Vec::new();
                if stray > 0 {
                    problems.push(format!("{stray} use(s) held for no pending order"));
                }
                if unheld > 0 {
                    problems.push(format!("{unheld} pending order(s) hold no use"));
                }
                if committed != sold_orders {
                    problems.push(format!(
                        "{committed} use(s) committed, {sold_orders} sold order(s) with the coupon"
                    ));
                }
                CouponUses {
                    coupon_id,
                    code,
                    held,
                    held_for_no_pending_order: stray,
                    pending_without_use: unheld,
                    committed,
                    sold_orders,
                    problems,
                }
            },
        )
        .collect())
}

/// The outbox of one topic: what waits to leave, and what was given up on.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxTopic {
    pub topic: String,
    /// Not published yet.
    pub pending: i64,
    /// Pending rows that failed at least once (they carry a `last_error`).
    pub retrying: i64,
    /// Age in seconds of the oldest pending row.
    pub oldest_pending_secs: Option<f64>,
    /// Rows the in-process dispatcher gave up on: marked published with a `dead-lettered: …`
    /// note (`jobs.backend = memory`). With RabbitMQ they land in the dead-letter queue instead.
    pub dead_lettered: i64,
}

/// Per topic, topics with nothing pending or dead-lettered left out.
pub async fn outbox(db: &PgPool) -> Result<Vec<OutboxTopic>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, Option<f64>, i64)> = sqlx::query_as(
        r#"
        SELECT topic,
               count(*) FILTER (WHERE published_at IS NULL),
               count(*) FILTER (WHERE published_at IS NULL AND attempts > 0),
               extract(epoch FROM now() - min(created_at) FILTER (WHERE published_at IS NULL))::float8,
               count(*) FILTER (WHERE published_at IS NOT NULL AND last_error LIKE 'dead-lettered:%')
        FROM outbox
        WHERE published_at IS NULL OR last_error LIKE 'dead-lettered:%'
        GROUP BY topic
        ORDER BY topic
        "#,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(topic, pending, retrying, oldest_pending_secs, dead_lettered)| OutboxTopic {
                topic,
                pending,
                retrying,
                oldest_pending_secs,
                dead_lettered,
            },
        )
        .collect())
}

/// A refund decided but not yet taken by the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedRefund {
    pub refund_id: Uuid,
    pub order_id: Uuid,
    pub order_number: String,
    pub amount: i64,
    pub currency: String,
    /// `owed` (to be asked for) or `pending` (taken, not settled by the provider yet).
    pub status: String,
    pub reason: String,
    pub attempts: i32,
    pub owed_since: chrono::DateTime<chrono::Utc>,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub last_error: Option<String>,
}

/// Refunds not confirmed by the provider (`owed`, or taken and `pending`), oldest first.
pub async fn owed_refunds(db: &PgPool) -> Result<Vec<OwedRefund>, sqlx::Error> {
    type Row = (
        Uuid,
        Uuid,
        String,
        i64,
        String,
        String,
        String,
        i32,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        r#"
        SELECT r.id, r.order_id, o.number, r.amount, r.currency, r.status, r.reason, r.attempts,
               r.created_at, r.next_attempt_at, r.last_error
        FROM refunds r JOIN orders o ON o.id = r.order_id
        WHERE r.status IN ('owed', 'pending')
        ORDER BY r.created_at, r.id
        "#,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                refund_id,
                order_id,
                order_number,
                amount,
                currency,
                status,
                reason,
                attempts,
                owed_since,
                next_attempt_at,
                last_error,
            )| OwedRefund {
                refund_id,
                order_id,
                order_number,
                amount,
                currency,
                status,
                reason,
                attempts,
                owed_since,
                next_attempt_at,
                last_error,
            },
        )
        .collect())
}

/// A plain-text table: a header, a rule, left-aligned columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut rules.iter().map(String::as_str));
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn reconciliation_table(reconciliation: &Reconciliation) -> String {
    let rows: Vec<Vec<String>> = reconciliation
        .variants
        .iter()
        .map(|v| {
            vec![
                v.sku.clone(),
                v.variant_id.to_string(),
                v.on_hand.to_string(),
                v.held.to_string(),
                v.sold.to_string(),
                check_cell(&v.problems),
            ]
        })
        .collect();
    table(
        &["SKU", "VARIANT", "ON HAND", "HELD", "SOLD", "CHECK"],
        &rows,
    )
}

/// The CHECK column of the reconciliation tables: `ok`, or what does not add up.
fn check_cell(problems: &[String]) -> String {
    if problems.is_empty() {
        "ok".to_owned()
    } else {
        format!("MISMATCH: {}", problems.join("; "))
    }
}

pub fn coupon_table(coupons: &[CouponUses]) -> String {
    let rows: Vec<Vec<String>> = coupons
        .iter()
        .map(|c| {
            vec![
                c.code.clone(),
                c.coupon_id.to_string(),
                c.held.to_string(),
                c.committed.to_string(),
                check_cell(&c.problems),
            ]
        })
        .collect();
    table(&["COUPON", "ID", "HELD", "COMMITTED", "CHECK"], &rows)
}

pub fn outbox_table(topics: &[OutboxTopic]) -> String {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![
                t.topic.clone(),
                t.pending.to_string(),
                t.retrying.to_string(),
                t.oldest_pending_secs
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.0}s")),
                t.dead_lettered.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "TOPIC",
            "PENDING",
            "RETRYING",
            "OLDEST PENDING",
            "DEAD-LETTERED",
        ],
        &rows,
    )
}

pub fn refunds_table(refunds: &[OwedRefund]) -> String {
    let rows: Vec<Vec<String>> = refunds
        .iter()
        .map(|r| {
            vec![
                r.order_number.clone(),
                r.order_id.to_string(),
                format_money(r.amount, &r.currency),
                r.status.clone(),
                r.reason.clone(),
                r.attempts.to_string(),
                r.owed_since.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                r.next_attempt_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                r.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        &[
            "ORDER",
            "ORDER ID",
            "AMOUNT",
            "STATUS",
            "REASON",
            "ATTEMPTS",
            "OWED SINCE",
            "NEXT ATTEMPT",
            "LAST ERROR",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_columns_to_the_widest_cell() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "1".into()],
                vec!["x".into(), "22".into()],
            ],
        );
        assert_eq!(
            text,
            "A          BB\n---------  --\nlong cell  1\nx          22\n"
        );
    }
}
