//! The cart tables. Every change is one statement in a transaction bounded by its caller's
//! deadline (see `begin_until`), after the fence check and, for a change made under an
//! Idempotency-Key, the mark of its claim ([`KeyClaim`]).

use std::time::Instant;

use chrono::{DateTime, Utc};

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{CartError, CartLine, CartSnapshot, KeyClaim};
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
/// Each change below is one statement (beside the fence check and the claim's mark, which wait
/// only on an epoch bump or on the same request's claim), so the one `statement_timeout` bounds
/// it.
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

/// One cart's change: where and by when it is written, and the claim it answers.
pub struct Write<'a> {
    db: &'a PgPool,
    fence: &'a Fence,
    cart: Uuid,
    claim: Option<&'a KeyClaim>,
    deadline: Instant,
}

impl<'a> Write<'a> {
    pub fn new(
        db: &'a PgPool,
        fence: &'a Fence,
        cart: Uuid,
        claim: Option<&'a KeyClaim>,
        deadline: Instant,
    ) -> Self {
        Self {
            db,
            fence,
            cart,
            claim,
            deadline,
        }
    }

    async fn run(
        self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), CartError> {
        let claims: Vec<&KeyClaim> = self.claim.into_iter().collect();
        write(
            self.db,
            self.fence,
            &[self.cart],
            &claims,
            self.deadline,
            query,
        )
        .await
    }
}

/// One change of `carts`, behind the fence of their partitions (a cart's key is its id),
/// marking the claims it answers applied ([`mark_applied`]).
async fn write(
    db: &PgPool,
    fence: &Fence,
    carts: &[Uuid],
    claims: &[&KeyClaim],
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
    mark_applied(&mut tx, claims, deadline).await?;
    match tx.commit().await {
        Ok(()) => Ok(()),
        // PostgreSQL answered: the transaction did not commit.
        Err(error @ sqlx::Error::Database(_)) => Err(failed(error, deadline)),
        // The connection broke while COMMIT was on its way: it may have committed.
        Err(error) => Err(CartError::Interrupted(error.to_string())),
    }
}

/// Marks each claim applied, last in the change's transaction: the change then holds the claims'
/// rows only until it commits (a repeat of the request reads its claim meanwhile, and a claim
/// taken while the change waited on a lock is a claim a repeat had to wait for). A release waits
/// for that commit; a claim released first is not found, and [`CartError::ClaimLost`] rolls the
/// change back. So is a claim taken over, or one already applied.
async fn mark_applied(
    tx: &mut Transaction<'static, Postgres>,
    claims: &[&KeyClaim],
    deadline: Instant,
) -> Result<(), CartError> {
    if claims.is_empty() {
        return Ok(());
    }
    let marked = sqlx::query(
        "UPDATE idempotency_keys k SET applied_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS c (user_id, key, claim)
         WHERE k.user_id = c.user_id AND k.key = c.key AND k.claim = c.claim
           AND k.state = 'in_progress' AND k.applied_at IS NULL",
    )
    .bind(claims.iter().map(|c| c.user).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.key.as_str()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.claim).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(|error| failed(error, deadline))?
    .rows_affected();
    if marked != claims.len() as u64 {
        return Err(CartError::ClaimLost);
    }
    Ok(())
}

/// Inserts or updates lines of one or many carts (at most one line per cart and variant), in one
/// statement of one transaction.
pub async fn upsert_lines(
    db: &PgPool,
    fence: &Fence,
    lines: &[(Uuid, &CartLine)],
    claims: &[&KeyClaim],
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
    write(db, fence, &carts, claims, deadline, query).await
}

pub async fn delete_line(write: Write<'_>, line: Uuid) -> Result<(), CartError> {
    let query = sqlx::query(
        "WITH gone AS (DELETE FROM cart_items WHERE id = $1 AND cart_id = $2)
         UPDATE carts SET updated_at = now() WHERE id = $2",
    )
    .bind(line)
    .bind(write.cart);
    write.run(query).await
}

const CLEAR: &str = "WITH gone AS (DELETE FROM cart_items WHERE cart_id = $1)
     UPDATE carts SET coupon_code = NULL, updated_at = now() WHERE id = $1";

pub async fn clear(write: Write<'_>) -> Result<(), CartError> {
    let cart = write.cart;
    write.run(sqlx::query(CLEAR).bind(cart)).await
}

/// Empties a checked-out cart (lines and coupon) inside the transaction that writes its order.
pub async fn empty_in(conn: &mut sqlx::PgConnection, cart: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(CLEAR).bind(cart).execute(conn).await?;
    Ok(())
}

pub async fn set_coupon(write: Write<'_>, code: Option<&str>) -> Result<(), CartError> {
    let query = sqlx::query("UPDATE carts SET coupon_code = $2, updated_at = now() WHERE id = $1")
        .bind(write.cart)
        .bind(code);
    write.run(query).await
}
