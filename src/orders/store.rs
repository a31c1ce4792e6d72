//! The order tables.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{
    NewOrder, Order, OrderItem, OrderStatus, Payment, ShippingAddress, StatusChange, email_for,
};

#[derive(FromRow)]
struct OrderRow {
    id: Uuid,
    number: String,
    user_id: Uuid,
    status: String,
    subtotal: i64,
    discount_total: i64,
    total: i64,
    refunded_amount: i64,
    coupon_code: Option<String>,
    currency: String,
    shipping_address: sqlx::types::Json<ShippingAddress>,
    expires_at: DateTime<Utc>,
    payment_provider: String,
    payment_intent_id: Option<String>,
    payment_client_secret: Option<String>,
    payment_status: String,
    payment_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const ORDER_COLUMNS: &str =
    "id, number, user_id, status, subtotal, discount_total, total, refunded_amount, coupon_code, currency,
    shipping_address, expires_at, payment_provider, payment_intent_id, payment_client_secret,
    payment_status, payment_error, created_at, updated_at";

impl OrderRow {
    fn into_order(self, items: Vec<OrderItem>) -> Result<Order, sqlx::Error> {
        Ok(Order {
            id: self.id,
            number: self.number,
            user_id: self.user_id,
            status: OrderStatus::decode(&self.status)?,
            items,
            subtotal: self.subtotal,
            discount_total: self.discount_total,
            total: self.total,
            refunded_amount: self.refunded_amount,
            coupon_code: self.coupon_code,
            currency: self.currency,
            shipping_address: self.shipping_address.0,
            payment: Payment {
                provider: self.payment_provider,
                payment_intent_id: self.payment_intent_id,
                client_secret: self.payment_client_secret,
                status: self.payment_status,
                error: self.payment_error,
            },
            expires_at: self.expires_at,
            status_history: None,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// An order's lines as one JSON array, in the order they are shown (by name, then SKU); the
/// row's order is `o`.
const ITEMS_JSON: &str = "(SELECT coalesce(json_agg(json_build_object(
             'id', i.id, 'product_id', i.product_id, 'variant_id', i.variant_id,
             'sku', i.sku, 'name', i.name, 'options', i.options,
             'unit_price', i.unit_price, 'quantity', i.quantity,
             'line_total', i.line_total, 'discount', i.discount, 'gift', i.gift)
             ORDER BY i.name, i.sku), '[]')
         FROM order_items i WHERE i.order_id = o.id) AS items";

/// An order row with its lines ([`ITEMS_JSON`]).
#[derive(FromRow)]
struct WithItems {
    #[sqlx(flatten)]
    order: OrderRow,
    items: sqlx::types::Json<Vec<OrderItem>>,
}

impl WithItems {
    fn into_order(self) -> Result<Order, sqlx::Error> {
        self.order.into_order(self.items.0)
    }
}

/// The full order with its lines and history, in one statement (a checkout answers with it).
pub async fn find(db: &PgPool, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    #[derive(FromRow)]
    struct Full {
        #[sqlx(flatten)]
        order: WithItems,
        history: sqlx::types::Json<Vec<StatusChange>>,
    }
    // Statuses decode through OrderStatus's serde: an unknown one fails the read.
    let row = sqlx::query_as::<_, Full>(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS}, {ITEMS_JSON},
             (SELECT coalesce(json_agg(json_build_object(
                         'from', h.from_status, 'to', h.to_status, 'at', h.at, 'reason', h.reason)
                         ORDER BY h.at, h.id), '[]')
              FROM order_status_history h WHERE h.order_id = o.id) AS history
         FROM orders o WHERE o.id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(full) = row else { return Ok(None) };
    let mut order = full.order.into_order()?;
    order.status_history = Some(full.history.0);
    Ok(Some(order))
}

/// A page of orders, newest first: one customer's (`user`) or everyone's, optionally by status.
pub async fn list(
    db: &PgPool,
    user: Option<Uuid>,
    status: Option<OrderStatus>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Order>, i64), sqlx::Error> {
    let status = status.map(OrderStatus::as_str);
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)",
    )
    .bind(user)
    .bind(status)
    .fetch_one(db)
    .await?;
    let rows = sqlx::query_as::<_, WithItems>(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS}, {ITEMS_JSON} FROM orders o
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    )))
    .bind(user)
    .bind(status)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let orders = rows
        .into_iter()
        .map(WithItems::into_order)
        .collect::<Result<_, _>>()?;
    Ok((orders, total))
}

/// Writes a new pending order awaiting the payment of `intent`, its lines and its first history
/// row. `reserved_units`: what the inventory holds for it.
pub async fn insert(
    tx: &mut PgConnection,
    order: &NewOrder,
    intent: Option<&crate::payments::PaymentIntent>,
    reserved_units: i32,
) -> Result<String, sqlx::Error> {
    let number: String = sqlx::query_scalar(
        "INSERT INTO orders (id, number, user_id, subtotal, discount_total, total, currency,
                             shipping_address, expires_at, payment_provider, payment_intent_id,
                             payment_client_secret, payment_status, reserved_units, saga_step,
                             coupon_id, coupon_code)
         VALUES ($1, 'SO-' || to_char(now(), 'YYMMDD') || '-' || nextval('order_number_seq'),
                 $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'awaiting_payment', $14, $15)
         RETURNING number",
    )
    .bind(order.id)
    .bind(order.user_id)
    .bind(order.subtotal)
    .bind(order.discount_total)
    .bind(order.subtotal - order.discount_total)
    .bind(&order.currency)
    .bind(&order.shipping_address)
    .bind(order.expires_at)
    .bind(&order.payment_provider)
    .bind(intent.map(|i| &i.id))
    .bind(intent.and_then(|i| i.client_secret.as_ref()))
    // A free order has no intent: nothing is required of its payment.
    .bind(intent.map_or("succeeded", |i| i.status.as_str()))
    .bind(reserved_units)
    .bind(order.coupon_id)
    .bind(&order.coupon_code)
    .fetch_one(&mut *tx)
    .await?;
    for line in &order.lines {
        sqlx::query(
            "INSERT INTO order_items (id, order_id, variant_id, product_id, sku, name, options,
                                      unit_price, quantity, line_total, discount, gift)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(Uuid::now_v7())
        .bind(order.id)
        .bind(line.variant_id)
        .bind(line.product_id)
        .bind(&line.sku)
        .bind(&line.name)
        .bind(sqlx::types::Json(&line.options))
        .bind(line.unit_price)
        .bind(line.quantity)
        .bind(line.unit_price * i64::from(line.quantity))
        .bind(line.discount)
        .bind(line.gift)
        .execute(&mut *tx)
        .await?;
    }
    record_history(
        &mut *tx,
        order.id,
        None,
        OrderStatus::Pending,
        "customer",
        Some(order.note.as_deref().unwrap_or("checkout")),
    )
    .await?;
    Ok(number)
}

pub async fn record_history(
    db: impl PgExecutor<'_>,
    order: Uuid,
    from: Option<OrderStatus>,
    to: OrderStatus,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_status_history (id, order_id, from_status, to_status, actor, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7())
    .bind(order)
    .bind(from.map(OrderStatus::as_str))
    .bind(to.as_str())
    .bind(actor)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

/// Why [`transition`] refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("an order cannot go from {} to {}", .from.as_str(), .to.as_str())]
    Illegal { from: OrderStatus, to: OrderStatus },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The one way an order changes status. Refuses a move the workflow does not allow
/// ([`OrderStatus::can_become`]); otherwise moves the order from `from` to `to` if it is still in
/// `from` (a compare-and-set: of two concurrent moves one wins), and in the same transaction
/// writes the history row, the customer's email for `to` through the outbox, and `saga_step =
/// 'done'` once the order is final. `Ok(false)`: the order was no longer in `from`.
pub async fn transition(
    tx: &mut PgConnection,
    order: Uuid,
    from: OrderStatus,
    to: OrderStatus,
    actor: &str,
    reason: Option<&str>,
) -> Result<bool, TransitionError> {
    if !from.can_become(to) {
        return Err(TransitionError::Illegal { from, to });
    }
    let moved = sqlx::query(
        "UPDATE orders SET status = $3,
                saga_step = CASE WHEN $3 = 'pending' THEN saga_step ELSE 'done' END
         WHERE id = $1 AND status = $2",
    )
    .bind(order)
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        return Ok(false);
    }
    record_history(&mut *tx, order, Some(from), to, actor, reason).await?;
    if let Some(email) = email_for(to) {
        super::notify::order_changed(&mut *tx, order, email).await?;
    }
    Ok(true)
}

/// Raises the order's `refunded_amount` to `at_least` (the provider's running total for the
/// charge, from a `charge.refunded` event) or to what its settled refunds add up to, whichever is
/// more: the event and the refund worker may both report one refund, and neither adds, both raise.
/// An order refunded in full becomes `refunded` where the workflow allows it (from paid or
/// delivered); a partial refund, or a full one of a shipped or cancelled order, leaves the
/// status as it is and shows in `refunded_amount`.
pub async fn record_refunded(
    tx: &mut PgConnection,
    order: Uuid,
    at_least: i64,
) -> Result<(), TransitionError> {
    // The provider's running total (`at_least`) may still count a refund of ours whose provider
    // refund has failed since (its events race this one): that amount is owed again, not back.
    // The order row is locked first, so the refunds read below are those committed by whoever
    // held it (a statement that waits for the row lock keeps its older snapshot in subqueries).
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "UPDATE orders SET refunded_amount = GREATEST(refunded_amount,
                $2 - (SELECT coalesce(sum(amount), 0)::bigint FROM refunds
                      WHERE order_id = $1 AND status IN ('owed', 'pending') AND failed_tries > 0),
                (SELECT coalesce(sum(amount), 0)::bigint FROM refunds
                 WHERE order_id = $1 AND status = 'succeeded'))
         WHERE id = $1 RETURNING status, refunded_amount, total",
    )
    .bind(order)
    .bind(at_least)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, refunded, total)) = row else {
        return Ok(());
    };
    let status = OrderStatus::decode(&status)?;
    if refunded >= total && status.can_become(OrderStatus::Refunded) {
        transition(
            tx,
            order,
            status,
            OrderStatus::Refunded,
            "system",
            Some("refunded in full"),
        )
        .await?;
    } else if refunded >= total && status != OrderStatus::Refunded {
        tracing::warn!(%order, status = status.as_str(), refunded, total,
            "order refunded in full but its status cannot become refunded; it keeps its status");
    }
    Ok(())
}

pub async fn status_of(
    db: impl PgExecutor<'_>,
    order: Uuid,
) -> Result<Option<OrderStatus>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order)
        .fetch_optional(db)
        .await?;
    status.as_deref().map(OrderStatus::decode).transpose()
}

pub async fn owner_of(db: &PgPool, order: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM orders WHERE id = $1")
        .bind(order)
        .fetch_optional(db)
        .await
}

/// The order's status, its row locked until the transaction ends.
pub async fn status_for_update(
    tx: &mut PgConnection,
    order: Uuid,
) -> Result<Option<OrderStatus>, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order)
            .fetch_optional(tx)
            .await?;
    status.as_deref().map(OrderStatus::decode).transpose()
}

/// How recent a pending order must be for a checkout of an empty cart to be taken as a retry of
/// the checkout that made it.
const RETRY_WINDOW_SECS: i64 = 120;

/// The user's latest order, if it is pending and was made in the last two minutes: what a
/// checkout retried after its answer was lost made. Checkouts of one cart run one at a time in
/// its actor, so the latest order is the one that emptied the cart.
pub async fn just_checked_out(db: &PgPool, user: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM (SELECT id, status, created_at FROM orders WHERE user_id = $1
                         ORDER BY created_at DESC LIMIT 1) latest
         WHERE status = 'pending' AND created_at > now() - make_interval(secs => $2)",
    )
    .bind(user)
    .bind(RETRY_WINDOW_SECS as f64)
    .fetch_optional(db)
    .await
}

/// Orders whose saga must run: not final yet.
pub async fn unfinished(db: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE status = 'pending'")
        .fetch_all(db)
        .await
}

/// An earlier checkout with this idempotency key: its order and the hash of its body.
pub async fn checkout_request(
    db: &PgPool,
    user: Uuid,
    key: &str,
) -> Result<Option<(Uuid, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, request_hash FROM checkout_requests WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(db)
    .await
}

pub async fn remember_checkout(
    tx: &mut PgConnection,
    user: Uuid,
    key: &str,
    hash: &[u8],
    order: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO checkout_requests (user_id, key, request_hash, order_id) VALUES ($1, $2, $3, $4)")
        .bind(user)
        .bind(key)
        .bind(hash)
        .bind(order)
        .execute(tx)
        .await?;
    Ok(())
}
