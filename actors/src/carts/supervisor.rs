//! The cart supervisor: spawns a customer's cart actor on first touch, forgets it when it stops
//! for idleness, and restarts it (state reloaded from PostgreSQL) when it fails.

use std::time::Duration;

use ractor::{ActorCell, ActorProcessingErr, RpcReplyPort, SupervisionEvent};
use sqlx::PgPool;
use uuid::Uuid;

use super::actor::{CartActor, CartArgs, CartMsg};
use crate::instrument::{self, Mailbox, ShopActor};
use crate::inventory::Inventory;
use crate::keyed::{Exit, KeyedChildren};

pub enum CartSupervisorMsg {
    /// The running cart of a customer, spawned if needed.
    CartOf(Uuid, RpcReplyPort<Result<Mailbox<CartMsg>, String>>),
    /// How many carts are alive.
    Active(RpcReplyPort<usize>),
    Running(Uuid, RpcReplyPort<Option<ActorCell>>),
}

#[derive(Clone)]
pub struct SupervisorArgs {
    pub prefix: String,
    pub db: PgPool,
    pub fence: crate::partition::Fence,
    pub journal: std::sync::Arc<super::journal::Journal>,
    pub inventory: Inventory,
    pub idle_timeout: Duration,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    carts: KeyedChildren<Uuid, CartMsg>,
}

pub struct CartSupervisor;

impl CartSupervisor {
    pub const KIND_NAME: &'static str = "cart_supervisor";
}

impl SupervisorState {
    async fn spawn(
        &mut self,
        myself: &Mailbox<CartSupervisorMsg>,
        user: Uuid,
    ) -> Result<Mailbox<CartMsg>, String> {
        let args = CartArgs {
            user,
            db: self.args.db.clone(),
            fence: self.args.fence.clone(),
            journal: self.args.journal.clone(),
            inventory: self.args.inventory.clone(),
            idle_timeout: self.args.idle_timeout,
        };
        let name = format!("{}cart-{user}", self.args.prefix);
        let (cart, _) = instrument::spawn(Some(name), CartActor, args, Some(myself.cell()))
            .await
            .map_err(|e| e.to_string())?;
        self.carts.insert(user, cart.clone());
        Ok(cart)
    }
}

impl ShopActor for CartSupervisor {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = CartSupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: Mailbox<CartSupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            args,
            carts: KeyedChildren::default(),
        })
    }

    async fn handle(
        &self,
        myself: Mailbox<CartSupervisorMsg>,
        message: CartSupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CartSupervisorMsg::CartOf(user, reply) => {
                let answer = match state.carts.running(&user) {
                    Some(cart) => Ok(cart),
                    None => state.spawn(&myself, user).await,
                };
                let _ = reply.send(answer);
            }
            CartSupervisorMsg::Active(reply) => {
                let _ = reply.send(state.carts.len());
            }
            CartSupervisorMsg::Running(user, reply) => {
                let _ = reply.send(state.carts.get(&user).map(Mailbox::cell));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: Mailbox<CartSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((user, exit)) = state.carts.exited(&event) else {
            return Ok(());
        };
        if exit == Exit::Failed {
            metrics::counter!("actor_restarts_total", "kind" => CartActor::KIND_NAME).increment(1);
            if let Err(error) = state.spawn(&myself, user).await {
                tracing::warn!(%error, %user, "cart restart failed; it revives on the next touch");
            }
        }
        Ok(())
    }
}
