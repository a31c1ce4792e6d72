//! The cart tables. Every change is one statement in a transaction bounded by its caller's
//! deadline (see `begin_until`).

use std::time::Instant;

use chrono::{DateTime, Utc};

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{CartError, CartLine, CartSnapshot};
use crate::partition::Fence;

/// The customer's cart with its lines, created empty on first touch; one statement.
pub async fn load(db: &PgPool, user: Uuid) -> Result<CartSnapshot, sqlx::Error> {
    type Row = (
        Uuid,
        Option<String>,
        DateTime<Utc>,
        Option<Uuid>,
        Option<Uuid>,
        Option<i32>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "WITH cart AS (
             INSERT INTO carts (id, user_id) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id
             RETURNING id, coupon_code::text, updated_at
         )
         SELECT cart.id, cart.coupon_code, cart.updated_at,
                i.id, i.variant_id, i.quantity, i.unit_price_at_add, i.added_at
         FROM cart LEFT JOIN cart_items i ON i.cart_id = cart.id
         ORDER BY i.added_at, i.id",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .fetch_all(db)
    .await?;
    let (cart_id, coupon_code, updated_at) = match rows.first() {
        Some((id, coupon, updated_at, ..)) => (*id, coupon.clone(), *updated_at),
        None => return Err(sqlx::Error::RowNotFound),
    };
    let mut lines = Vec::with_capacity(rows.len());
    for (_, _, _, id, variant, quantity, price, added_at) in rows {
        // The LEFT JOIN's one row of an empty cart has no line.
        if let (
            Some(id),
            Some(variant_id),
            Some(quantity),
            Some(unit_price_at_add),
            Some(added_at),
        ) = (id, variant, quantity, price, added_at)
        {
            lines.push(CartLine {
                id,
                variant_id,
                quantity,
                unit_price_at_add,
                added_at,
            });
        }
    }
    Ok(CartSnapshot {
        cart_id,
        user_id: user,
        lines,
        coupon_code,
        updated_at,
    })
}

/// Starts a transaction whose statements PostgreSQL cancels at `deadline`, so a write still
/// waiting (on a lock, a slow disk) when its caller's time is up is rolled back, never made later.
/// Each change below is one statement, so the one `statement_timeout` bounds all of it.
async fn begin_until(
    db: &PgPool,
    deadline: Instant,
) -> Result<Transaction<'static, Postgres>, CartError> {
    let mut tx = tokio::time::timeout_at(deadline.into(), db.begin())
        .await
        .map_err(|_| CartError::Expired)??;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    if left == 0 {
        return Err(CartError::Expired);
    }
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{left}ms"))
        .execute(&mut *tx)
        .await
        .map_err(|error| failed(error, deadline))?;
    Ok(tx)
}

/// A write that failed after its deadline was cancelled by the statement timeout (or would have
/// been): either way it was rolled back, so the caller may safely try again.
fn failed(error: sqlx::Error, deadline: Instant) -> CartError {
    if Instant::now() >= deadline {
        CartError::Expired
    } else {
        error.into()
    }
}

/// One change of `carts`, behind the fence of their partitions (a cart's key is its id).
async fn write(
    db: &PgPool,
    fence: &Fence,
    carts: &[Uuid],
    deadline: Instant,
    query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
) -> Result<(), CartError> {
    let mut tx = begin_until(db, deadline).await?;
    fence
        .check(&mut tx, carts.iter().copied())
        .await
        .map_err(|error| failed(error, deadline))?;
    query
        .execute(&mut *tx)
        .await
        .map_err(|error| failed(error, deadline))?;
    match tx.commit().await {
        Ok(()) => Ok(()),
        // PostgreSQL answered: the transaction did not commit.
        Err(error @ sqlx::Error::Database(_)) => Err(failed(error, deadline)),
        // The connection broke while COMMIT was on its way: it may have committed.
        Err(error) => Err(CartError::Interrupted(error.to_string())),
    }
}

/// Inserts or updates lines of one or many carts (at most one line per cart and variant), in one
/// statement of one transaction.
pub async fn upsert_lines(
    db: &PgPool,
    fence: &Fence,
    lines: &[(Uuid, &CartLine)],
    deadline: Instant,
) -> Result<(), CartError> {
    let carts: Vec<Uuid> = lines.iter().map(|(cart, _)| *cart).collect();
    let query = sqlx::query(
        "WITH line AS (
             INSERT INTO cart_items (id, cart_id, variant_id, quantity, unit_price_at_add, added_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::bigint[],
                                  $6::timestamptz[])
             ON CONFLICT (cart_id, variant_id) DO UPDATE SET quantity = EXCLUDED.quantity
         )
         UPDATE carts SET updated_at = now() WHERE id = ANY($2)",
    )
    .bind(lines.iter().map(|(_, l)| l.id).collect::<Vec<_>>())
    .bind(&carts)
    .bind(lines.iter().map(|(_, l)| l.variant_id).collect::<Vec<_>>())
    .bind(lines.iter().map(|(_, l)| l.quantity).collect::<Vec<_>>())
    .bind(
        lines
            .iter()
            .map(|(_, l)| l.unit_price_at_add)
            .collect::<Vec<_>>(),
    )
    .bind(lines.iter().map(|(_, l)| l.added_at).collect::<Vec<_>>());
    write(db, fence, &carts, deadline, query).await
}

pub async fn delete_line(
    db: &PgPool,
    fence: &Fence,
    cart: Uuid,
    line: Uuid,
    deadline: Instant,
) -> Result<(), CartError> {
    let query = sqlx::query(
        "WITH gone AS (DELETE FROM cart_items WHERE id = $1 AND cart_id = $2)
         UPDATE carts SET updated_at = now() WHERE id = $2",
    )
    .bind(line)
    .bind(cart);
    write(db, fence, &[cart], deadline, query).await
}

const CLEAR: &str = "WITH gone AS (DELETE FROM cart_items WHERE cart_id = $1)
     UPDATE carts SET coupon_code = NULL, updated_at = now() WHERE id = $1";

pub async fn clear(
    db: &PgPool,
    fence: &Fence,
    cart: Uuid,
    deadline: Instant,
) -> Result<(), CartError> {
    write(db, fence, &[cart], deadline, sqlx::query(CLEAR).bind(cart)).await
}

/// Empties a checked-out cart (lines and coupon) inside the transaction that writes its order.
pub async fn empty_in(conn: &mut sqlx::PgConnection, cart: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(CLEAR).bind(cart).execute(conn).await?;
    Ok(())
}

pub async fn set_coupon(
    db: &PgPool,
    fence: &Fence,
    cart: Uuid,
    code: Option<&str>,
    deadline: Instant,
) -> Result<(), CartError> {
    let query = sqlx::query("UPDATE carts SET coupon_code = $2, updated_at = now() WHERE id = $1")
        .bind(cart)
        .bind(code);
    write(db, fence, &[cart], deadline, query).await
}
