//! What an order tells the outside world when its status changes: an `order.*` outbox message,
//! written in the same transaction as the change, carrying everything the email needs (the
//! relay publishes it; the email dispatcher sends it once).

use std::collections::BTreeMap;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::messaging::{self, OrderEmail, OrderEmailKind, OrderEmailLine};

/// Enqueues the `kind` email of `order` in the caller's transaction.
pub async fn order_changed(
    tx: &mut PgConnection,
    order: Uuid,
    kind: OrderEmailKind,
) -> Result<(), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Head {
        number: String,
        email: String,
        name: String,
        subtotal: i64,
        discount_total: i64,
        total: i64,
        currency: String,
        shipping_address: sqlx::types::Json<crate::orders::ShippingAddress>,
    }
    let head = sqlx::query_as::<_, Head>(
        "SELECT o.number, u.email::text AS email, u.name, o.subtotal, o.discount_total, o.total,
                o.currency, o.shipping_address
         FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = $1",
    )
    .bind(order)
    .fetch_one(&mut *tx)
    .await?;
    #[derive(sqlx::FromRow)]
    struct Line {
        name: String,
        sku: String,
        options: sqlx::types::Json<BTreeMap<String, String>>,
        quantity: i32,
        unit_price: i64,
        line_total: i64,
    }
    let lines = sqlx::query_as::<_, Line>(
        "SELECT name, sku, options, quantity, unit_price, line_total FROM order_items
         WHERE order_id = $1 ORDER BY name, sku",
    )
    .bind(order)
    .fetch_all(&mut *tx)
    .await?;
    let address = head.shipping_address.0;
    let email = OrderEmail {
        order_id: order,
        order_number: head.number,
        kind,
        customer_email: head.email,
        customer_name: head.name,
        lines: lines
            .into_iter()
            .map(|line| OrderEmailLine {
                name: line.name,
                sku: line.sku,
                options: line
                    .options
                    .0
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                quantity: line.quantity,
                unit_price: line.unit_price,
                line_total: line.line_total,
            })
            .collect(),
        subtotal: head.subtotal,
        discount_total: head.discount_total,
        total: head.total,
        currency: head.currency,
        shipping_address: messaging::ShippingAddress {
            name: address.name,
            line1: address.line1,
            line2: address.line2,
            city: address.city,
            postal_code: address.postal_code,
            country: address.country,
        },
    };
    messaging::enqueue(tx, email.topic(), &email).await?;
    Ok(())
}
