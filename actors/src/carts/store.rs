//! The cart tables.

use sqlx::PgPool;
use uuid::Uuid;

use super::{CartLine, CartSnapshot};

/// The customer's cart with its lines, created empty on first touch.
pub async fn load(db: &PgPool, user: Uuid) -> Result<CartSnapshot, sqlx::Error> {
    let (cart_id, updated_at): (Uuid, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO carts (id, user_id) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id
         RETURNING id, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .fetch_one(db)
    .await?;
    let rows: Vec<(Uuid, Uuid, i32, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, variant_id, quantity, unit_price_at_add, added_at FROM cart_items
         WHERE cart_id = $1 ORDER BY added_at, id",
    )
    .bind(cart_id)
    .fetch_all(db)
    .await?;
    Ok(CartSnapshot {
        cart_id,
        user_id: user,
        lines: rows
            .into_iter()
            .map(
                |(id, variant_id, quantity, unit_price_at_add, added_at)| CartLine {
                    id,
                    variant_id,
                    quantity,
                    unit_price_at_add,
                    added_at,
                },
            )
            .collect(),
        updated_at,
    })
}

pub async fn upsert_line(db: &PgPool, cart: Uuid, line: &CartLine) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO cart_items (id, cart_id, variant_id, quantity, unit_price_at_add, added_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (cart_id, variant_id) DO UPDATE SET quantity = EXCLUDED.quantity",
    )
    .bind(line.id)
    .bind(cart)
    .bind(line.variant_id)
    .bind(line.quantity)
    .bind(line.unit_price_at_add)
    .bind(line.added_at)
    .execute(&mut *tx)
    .await?;
    touch(&mut tx, cart).await?;
    tx.commit().await
}

pub async fn delete_line(db: &PgPool, cart: Uuid, line: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM cart_items WHERE id = $1 AND cart_id = $2")
        .bind(line)
        .bind(cart)
        .execute(&mut *tx)
        .await?;
    touch(&mut tx, cart).await?;
    tx.commit().await
}

pub async fn clear(db: &PgPool, cart: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM cart_items WHERE cart_id = $1")
        .bind(cart)
        .execute(&mut *tx)
        .await?;
    touch(&mut tx, cart).await?;
    tx.commit().await
}

async fn touch(tx: &mut sqlx::PgConnection, cart: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE carts SET updated_at = now() WHERE id = $1")
        .bind(cart)
        .execute(tx)
        .await?;
    Ok(())
}
