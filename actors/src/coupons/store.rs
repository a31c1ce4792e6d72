//! The coupon limiter's SQL: the `coupon_redemptions` rows (one use of a coupon by an order), and
//! the connection each limiter shard writes through.

use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

use crate::partition::Fence;

/// Namespace of the shards' advisory locks (`"COUP"`), within this node's (see
/// [`Fence::local_lock`]); the second key is the shard's index.
const LOCK_CLASS: i32 = 0x434f_5550;

/// Opens the connection a shard writes through and takes the shard's advisory lock on it.
///
/// The lock is the fence between two incarnations of a shard: a killed shard's last statement can
/// still be running in PostgreSQL after its task is gone, and the lock is only released when that
/// backend ends, that is after the statement has committed or failed. So a restarted shard reads
/// the uses only once nothing it does not know about can still land. The wait is bounded by the
/// connection's `statement_timeout` (from the pool's options); the supervisor retries after that.
///
/// The lock is this node's own: another node's shard is kept out by the partitions' epochs.
pub async fn connect(
    db: &PgPool,
    fence: &Fence,
    shard: usize,
) -> Result<PgConnection, sqlx::Error> {
    let mut conn = db.connect_options().connect().await?;
    let (class, key) = fence.local_lock(LOCK_CLASS, shard);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(class)
        .bind(key)
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// One live use (held or committed) of a coupon.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveUse {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub committed: bool,
}

/// The held and committed uses of `coupon`.
pub async fn live_uses(conn: &mut PgConnection, coupon: Uuid) -> Result<Vec<LiveUse>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, user_id, status = 'committed' AS committed FROM coupon_redemptions
         WHERE coupon_id = $1 AND status IN ('held', 'committed')",
    )
    .bind(coupon)
    .fetch_all(conn)
    .await
}

/// Coupons with at least one held use (a restarted shard loads those of its own at once, so the
/// held-uses gauge is right from the start).
pub async fn coupons_with_held_uses(conn: &mut PgConnection) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT coupon_id FROM coupon_redemptions WHERE status = 'held'")
        .fetch_all(conn)
        .await
}

/// A held use that no saga may end: held for longer than the grace period, for an order that does
/// not exist (`order_status` is `None`) or is no longer pending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stranded {
    pub coupon_id: Uuid,
    pub order_id: Uuid,
    pub order_status: Option<String>,
}

/// Every stranded held use (of every shard: the caller keeps its own).
pub async fn stranded_uses(
    conn: &mut PgConnection,
    grace: std::time::Duration,
) -> Result<Vec<Stranded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.coupon_id, r.order_id, o.status AS order_status
         FROM coupon_redemptions r LEFT JOIN orders o ON o.id = r.order_id
         WHERE r.status = 'held' AND r.updated_at < now() - make_interval(secs => $1)
           AND o.status IS DISTINCT FROM 'pending'
         ORDER BY r.updated_at
         LIMIT 1000",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(conn)
    .await
}

/// A use to hold.
#[derive(Debug, Clone, Copy)]
pub struct NewUse {
    pub coupon_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
}

/// Holds a batch of uses in one statement. An order whose use of the coupon was released holds it
/// again; one whose use is still held or committed is left as it is and is not in the answer,
/// which lists the (coupon, order) pairs written.
pub async fn hold(
    conn: &mut PgConnection,
    fence: &Fence,
    uses: &[NewUse],
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    let ids: Vec<Uuid> = uses.iter().map(|_| Uuid::now_v7()).collect();
    let coupons: Vec<Uuid> = uses.iter().map(|u| u.coupon_id).collect();
    let orders: Vec<Uuid> = uses.iter().map(|u| u.order_id).collect();
    let users: Vec<Uuid> = uses.iter().map(|u| u.user_id).collect();
    let mut tx = conn.begin().await?;
    fence.check(&mut tx, coupons.iter().copied()).await?;
    let written = sqlx::query_as(
        "INSERT INTO coupon_redemptions AS r (id, coupon_id, order_id, user_id)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[])
         ON CONFLICT ON CONSTRAINT coupon_redemptions_order_key
         DO UPDATE SET status = 'held', user_id = EXCLUDED.user_id WHERE r.status = 'released'
         RETURNING coupon_id, order_id",
    )
    .bind(ids)
    .bind(&coupons)
    .bind(orders)
    .bind(users)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(written)
}

/// Moves the held use of (`coupon`, `order`) to `to` (`committed` or `released`); answers whether
/// there was a held use to move.
pub async fn settle(
    conn: &mut PgConnection,
    fence: &Fence,
    coupon: Uuid,
    order: Uuid,
    to: Settled,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    fence.check(&mut tx, [coupon]).await?;
    let done = sqlx::query(
        "UPDATE coupon_redemptions SET status = $3
         WHERE coupon_id = $1 AND order_id = $2 AND status = 'held'",
    )
    .bind(coupon)
    .bind(order)
    .bind(to.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Where a held use ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Committed,
    Released,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }
}
