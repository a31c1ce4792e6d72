//! The inventory's SQL: reservations and stock on hand.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::partition::Fence;

/// What `bundle_components` says of some variants.
pub struct Composition {
    /// Per bundle variant: its components and units of each per bundle.
    pub components: HashMap<Uuid, Vec<(Uuid, i32)>>,
    /// Variants of products that are not bundles (unknown variants are in neither).
    pub plain: Vec<Uuid>,
}

pub async fn bundle_components(db: &PgPool, variants: &[Uuid]) -> Result<Composition, sqlx::Error> {
    let rows: Vec<(Uuid, bool, Option<Uuid>, Option<i32>)> = sqlx::query_as(
        "SELECT v.id, p.type = 'bundle', bc.variant_id, bc.quantity
         FROM product_variants v
         JOIN products p ON p.id = v.product_id
         LEFT JOIN bundle_components bc ON p.type = 'bundle' AND bc.bundle_id = p.id
         WHERE v.id = ANY($1)",
    )
    .bind(variants)
    .fetch_all(db)
    .await?;
    let mut read = Composition {
        components: HashMap::new(),
        plain: Vec::new(),
    };
    for (variant, bundle, component, quantity) in rows {
        match (bundle, component, quantity) {
            (false, _, _) => read.plain.push(variant),
            (true, Some(component), Some(quantity)) => read
                .components
                .entry(variant)
                .or_default()
                .push((component, quantity)),
            // A bundle without components yet: asked again next time.
            (true, _, _) => {}
        }
    }
    Ok(read)
}

/// Stock on hand and units held, per variant. Unknown variants are absent.
pub async fn load_stock(
    db: &PgPool,
    variants: &[Uuid],
) -> Result<Vec<(Uuid, i32, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id, v.stock,
                coalesce((SELECT sum(r.quantity) FROM stock_reservations r
                          WHERE r.variant_id = v.id AND r.status = 'held'), 0)::int
         FROM product_variants v WHERE v.id = ANY($1)",
    )
    .bind(variants)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRow {
    pub owner_id: Uuid,
    pub variant_id: Uuid,
    pub quantity: i32,
    pub expires_at: DateTime<Utc>,
}

pub async fn live_holds(db: &PgPool) -> Result<Vec<HoldRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner_id, variant_id, quantity, expires_at FROM stock_reservations WHERE status = 'held'",
    )
    .fetch_all(db)
    .await
}

/// Persists a batch of new holds in one statement, behind the fence of their variants.
pub async fn insert_holds(
    db: &PgPool,
    fence: &Fence,
    holds: &[HoldRow],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = holds.iter().map(|_| Uuid::now_v7()).collect();
    let owners: Vec<Uuid> = holds.iter().map(|h| h.owner_id).collect();
    let variants: Vec<Uuid> = holds.iter().map(|h| h.variant_id).collect();
    let quantities: Vec<i32> = holds.iter().map(|h| h.quantity).collect();
    let expiries: Vec<DateTime<Utc>> = holds.iter().map(|h| h.expires_at).collect();
    let insert = sqlx::query(
        "INSERT INTO stock_reservations (id, owner_id, variant_id, quantity, expires_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::timestamptz[])",
    )
    .bind(ids)
    .bind(owners)
    .bind(&variants)
    .bind(quantities)
    .bind(expiries);
    let mut tx = db.begin().await?;
    fence.check(&mut tx, variants.iter().copied()).await?;
    insert.execute(&mut *tx).await?;
    tx.commit().await
}

/// Marks `owner`'s held rows on `variants` released (all of them, or only the expired ones).
pub async fn release(
    db: &PgPool,
    fence: &Fence,
    owners: &[Uuid],
    variants: &[Uuid],
    only_expired: bool,
) -> Result<Vec<(Uuid, Uuid, i32)>, sqlx::Error> {
    let mut tx = db.begin().await?;
    fence.check(&mut tx, variants.iter().copied()).await?;
    let released = sqlx::query_as(
        "UPDATE stock_reservations SET status = 'released'
         WHERE owner_id = ANY($1) AND variant_id = ANY($2) AND status = 'held'
           AND (NOT $3 OR expires_at <= now())
         RETURNING owner_id, variant_id, quantity",
    )
    .bind(owners)
    .bind(variants)
    .bind(only_expired)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(released)
}

/// Turns `owner`'s holds on `variants` into sales and takes the units off the shelf, in one
/// transaction. Answers the rows sold now, and the units `owner` has sold on `variants` in all
/// (read in the same transaction: a commit repeated after one whose outcome was unknown answers
/// what the table says, not 0).
pub async fn commit(
    db: &PgPool,
    fence: &Fence,
    owner: Uuid,
    variants: &[Uuid],
) -> Result<(Vec<(Uuid, i32)>, i32), sqlx::Error> {
    let mut tx = db.begin().await?;
    fence.check(&mut tx, variants.iter().copied()).await?;
    let sold: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE stock_reservations SET status = 'committed'
         WHERE owner_id = $1 AND variant_id = ANY($2) AND status = 'held'
         RETURNING variant_id, quantity",
    )
    .bind(owner)
    .bind(variants)
    .fetch_all(&mut *tx)
    .await?;
    shelve(&mut tx, &sold, -1).await?;
    let total: i32 = sqlx::query_scalar(
        "SELECT coalesce(sum(quantity), 0)::int FROM stock_reservations
         WHERE owner_id = $1 AND variant_id = ANY($2) AND status = 'committed'",
    )
    .bind(owner)
    .bind(variants)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((sold, total))
}

/// The live holds of `owners`.
pub async fn holds_of(db: &PgPool, owners: &[Uuid]) -> Result<Vec<HoldRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner_id, variant_id, quantity, expires_at FROM stock_reservations
         WHERE owner_id = ANY($1) AND status = 'held'",
    )
    .bind(owners)
    .fetch_all(db)
    .await
}

/// In the shard's transaction, which also carries the caller's writes.
pub async fn set_on_hand(
    tx: &mut PgConnection,
    variant: Uuid,
    on_hand: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE product_variants SET stock = $2 WHERE id = $1")
        .bind(variant)
        .bind(on_hand)
        .execute(tx)
        .await?;
    Ok(())
}

/// Moves units of each (variant, units) row onto the shelf (`direction` 1) or off it (-1).
async fn shelve(
    tx: &mut sqlx::PgConnection,
    rows: &[(Uuid, i32)],
    direction: i32,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|(v, _)| *v).collect();
    let units: Vec<i32> = rows.iter().map(|(_, q)| q * direction).collect();
    sqlx::query(
        "UPDATE product_variants v SET stock = v.stock + s.units
         FROM (SELECT variant_id, sum(units)::int AS units
               FROM UNNEST($1::uuid[], $2::int[]) AS t(variant_id, units) GROUP BY variant_id) s
         WHERE v.id = s.variant_id",
    )
    .bind(&ids)
    .bind(&units)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `owner`'s committed (sold) units, per variant: what a repeated commit answers.
pub async fn committed(db: &PgPool, owner: Uuid) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT variant_id, quantity FROM stock_reservations
         WHERE owner_id = $1 AND status = 'committed'",
    )
    .bind(owner)
    .fetch_all(db)
    .await
}

/// Puts `owner`'s sold units on `variants` back on the shelf (an order that lost part of its
/// stock is cancelled and refunded: what it did sell returns), in one transaction.
pub async fn restock(
    db: &PgPool,
    fence: &Fence,
    owner: Uuid,
    variants: &[Uuid],
) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    let mut tx = db.begin().await?;
    fence.check(&mut tx, variants.iter().copied()).await?;
    let returned: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE stock_reservations SET status = 'released'
         WHERE owner_id = $1 AND variant_id = ANY($2) AND status = 'committed'
         RETURNING variant_id, quantity",
    )
    .bind(owner)
    .bind(variants)
    .fetch_all(&mut *tx)
    .await?;
    shelve(&mut tx, &returned, 1).await?;
    tx.commit().await?;
    Ok(returned)
}
