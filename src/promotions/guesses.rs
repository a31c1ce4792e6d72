//! Wrong coupon codes, counted per customer in PostgreSQL (shared by every instance): past the
//! limit within the window, trying a code answers 429 until the oldest wrong try leaves it, so
//! codes cannot be found by guessing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The window the limit counts in.
pub const WINDOW_SECS: i64 = 15 * 60;

/// When `user` may try again, if they are over `limit` wrong codes in the window now.
pub async fn blocked_until(
    db: &PgPool,
    user: Uuid,
    limit: u32,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (tries, free_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), min(at) + make_interval(secs => $2)
         FROM coupon_failures WHERE user_id = $1 AND at > now() - make_interval(secs => $2)",
    )
    .bind(user)
    .bind(WINDOW_SECS as f64)
    .fetch_one(db)
    .await?;
    Ok(free_at.filter(|_| tries >= i64::from(limit)))
}

/// Counts a wrong code, forgetting what has left the window.
pub async fn record(db: &PgPool, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH expired AS (
             DELETE FROM coupon_failures
             WHERE user_id = $1 AND at <= now() - make_interval(secs => $2))
         INSERT INTO coupon_failures (user_id) VALUES ($1)",
    )
    .bind(user)
    .bind(WINDOW_SECS as f64)
    .execute(db)
    .await?;
    Ok(())
}
