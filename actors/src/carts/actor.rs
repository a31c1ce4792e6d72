//! One customer's cart.

use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{ActorProcessingErr, RpcReplyPort};
use sqlx::PgPool;
use uuid::Uuid;

use super::{CartError, CartLine, CartSnapshot, MAX_LINES, MAX_QUANTITY, store};
use crate::instrument::{Mailbox, ShopActor};
use crate::inventory::Inventory;

type Reply = RpcReplyPort<Result<CartSnapshot, CartError>>;

pub enum CartMsg {
    Get(Reply),
    Add {
        variant: Uuid,
        quantity: i32,
        unit_price: i64,
        reply: Reply,
    },
    SetQuantity {
        line: Uuid,
        quantity: i32,
        reply: Reply,
    },
    Remove {
        line: Uuid,
        reply: Reply,
    },
    Clear(Reply),
    /// The idle timer: stop when nothing happened for the idle timeout.
    IdleCheck,
}

pub struct CartArgs {
    pub user: Uuid,
    pub db: PgPool,
    pub inventory: Inventory,
    pub idle_timeout: Duration,
}

pub struct CartState {
    cart: CartSnapshot,
    db: PgPool,
    inventory: Inventory,
    idle_timeout: Duration,
    last_touched: Instant,
}

pub struct CartActor;

impl CartActor {
    pub const KIND_NAME: &'static str = "cart";
}

impl CartState {
    async fn check_stock(&self, variant: Uuid, wanted: i32) -> Result<(), CartError> {
        let available = self.inventory.available_for(variant).await?;
        if wanted > available {
            return Err(CartError::NotEnoughStock {
                requested: wanted,
                available,
            });
        }
        Ok(())
    }

    async fn add(
        &mut self,
        variant: Uuid,
        quantity: i32,
        unit_price: i64,
    ) -> Result<(), CartError> {
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(CartError::QuantityTooLarge);
        }
        let existing = self.cart.lines.iter().position(|l| l.variant_id == variant);
        let wanted = existing.map_or(0, |at| self.cart.lines[at].quantity) + quantity;
        if wanted > MAX_QUANTITY {
            return Err(CartError::QuantityTooLarge);
        }
        if existing.is_none() && self.cart.lines.len() >= MAX_LINES {
            return Err(CartError::TooManyLines);
        }
        self.check_stock(variant, wanted).await?;
        let line = match existing {
            Some(at) => CartLine {
                quantity: wanted,
                ..self.cart.lines[at].clone()
            },
            None => CartLine {
                id: Uuid::now_v7(),
                variant_id: variant,
                quantity: wanted,
                unit_price_at_add: unit_price,
                added_at: Utc::now(),
            },
        };
        store::upsert_line(&self.db, self.cart.cart_id, &line).await?;
        match existing {
            Some(at) => self.cart.lines[at] = line,
            None => self.cart.lines.push(line),
        }
        Ok(())
    }

    async fn set_quantity(&mut self, line: Uuid, quantity: i32) -> Result<(), CartError> {
        let at = self
            .cart
            .lines
            .iter()
            .position(|l| l.id == line)
            .ok_or(CartError::NoSuchLine)?;
        if quantity == 0 {
            return self.remove(line).await;
        }
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(CartError::QuantityTooLarge);
        }
        if quantity > self.cart.lines[at].quantity {
            self.check_stock(self.cart.lines[at].variant_id, quantity)
                .await?;
        }
        let updated = CartLine {
            quantity,
            ..self.cart.lines[at].clone()
        };
        store::upsert_line(&self.db, self.cart.cart_id, &updated).await?;
        self.cart.lines[at] = updated;
        Ok(())
    }

    async fn remove(&mut self, line: Uuid) -> Result<(), CartError> {
        if !self.cart.lines.iter().any(|l| l.id == line) {
            return Err(CartError::NoSuchLine);
        }
        store::delete_line(&self.db, self.cart.cart_id, line).await?;
        self.cart.lines.retain(|l| l.id != line);
        Ok(())
    }

    async fn clear(&mut self) -> Result<(), CartError> {
        store::clear(&self.db, self.cart.cart_id).await?;
        self.cart.lines.clear();
        Ok(())
    }

    fn answer(&mut self, reply: Reply, result: Result<(), CartError>) {
        if result.is_ok() {
            self.cart.updated_at = Utc::now();
        }
        let _ = reply.send(result.map(|()| self.cart.clone()));
    }
}

impl ShopActor for CartActor {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = CartMsg;
    type State = CartState;
    type Arguments = CartArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<CartMsg>,
        args: CartArgs,
    ) -> Result<CartState, ActorProcessingErr> {
        let cart = store::load(&args.db, args.user).await?;
        let every =
            (args.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        myself.cast_every(every, || CartMsg::IdleCheck);
        Ok(CartState {
            cart,
            db: args.db,
            inventory: args.inventory,
            idle_timeout: args.idle_timeout,
            last_touched: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: Mailbox<CartMsg>,
        message: CartMsg,
        state: &mut CartState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, CartMsg::IdleCheck) {
            state.last_touched = Instant::now();
        }
        match message {
            CartMsg::Get(reply) => state.answer(reply, Ok(())),
            CartMsg::Add {
                variant,
                quantity,
                unit_price,
                reply,
            } => {
                let result = state.add(variant, quantity, unit_price).await;
                state.answer(reply, result);
            }
            CartMsg::SetQuantity {
                line,
                quantity,
                reply,
            } => {
                let result = state.set_quantity(line, quantity).await;
                state.answer(reply, result);
            }
            CartMsg::Remove { line, reply } => {
                let result = state.remove(line).await;
                state.answer(reply, result);
            }
            CartMsg::Clear(reply) => {
                let result = state.clear().await;
                state.answer(reply, result);
            }
            CartMsg::IdleCheck => {
                if state.last_touched.elapsed() >= state.idle_timeout {
                    // Everything is already in PostgreSQL: stopping loses nothing.
                    myself.cell().stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}
