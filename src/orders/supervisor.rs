//! The order supervisor: spawns an order saga per order in flight, routes payment events and
//! commands to it (spawning it from PostgreSQL if it is asleep), resumes every unfinished order
//! at boot, and restarts a saga that fails.

use std::time::Duration;

use ractor::{ActorProcessingErr, RpcReplyPort, SupervisionEvent};
use shop_actors::keyed::{Exit, KeyedChildren};
use shop_actors::{ActorError, ChildSpec, Mailbox, ShopActor, Slot, instrument};
use uuid::Uuid;

use super::saga::{
    Checkout, CheckoutError, OrderSaga, PaymentAttempt, SagaArgs, SagaDeps, SagaError, SagaMsg,
};
use super::store;
use crate::payments::PaymentEvent;

pub enum OrderSupervisorMsg {
    Checkout(Box<Checkout>, RpcReplyPort<Result<Uuid, CheckoutError>>),
    /// From the payment router.
    Payment(PaymentEvent),
    Pay {
        order: Uuid,
        payment_method: String,
        reply: RpcReplyPort<Result<PaymentAttempt, SagaError>>,
    },
    Cancel {
        order: Uuid,
        actor: &'static str,
        reason: String,
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
    /// Sagas alive (tests and metrics).
    Running(RpcReplyPort<usize>),
}

#[derive(Clone)]
pub struct SupervisorArgs {
    pub prefix: String,
    pub deps: SagaDeps,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    sagas: KeyedChildren<Uuid, SagaMsg>,
}

pub struct OrderSupervisor;

impl OrderSupervisor {
    pub const KIND_NAME: &'static str = "order_supervisor";
}

impl SupervisorState {
    async fn saga(
        &mut self,
        myself: &Mailbox<OrderSupervisorMsg>,
        order: Uuid,
    ) -> Result<Mailbox<SagaMsg>, ActorError> {
        if let Some(saga) = self.sagas.running(&order) {
            return Ok(saga);
        }
        let args = SagaArgs {
            order_id: order,
            deps: self.args.deps.clone(),
        };
        let name = format!("{}order-{order}", self.args.prefix);
        let (saga, _) = instrument::spawn(Some(name), OrderSaga, args, Some(myself.cell()))
            .await
            .map_err(|_| ActorError::Unavailable {
                kind: OrderSaga::KIND_NAME,
            })?;
        self.sagas.insert(order, saga.clone());
        Ok(saga)
    }
}

/// The order supervisor's handle.
#[derive(Clone)]
pub struct Orders {
    slot: Slot<OrderSupervisorMsg>,
    timeout: Duration,
}

impl Orders {
    pub fn new(prefix: &str, deps: SagaDeps, timeout: Duration) -> (Self, ChildSpec) {
        let slot = Slot::empty(OrderSupervisor::KIND_NAME);
        let args = SupervisorArgs {
            prefix: prefix.to_owned(),
            deps,
        };
        let spec = ChildSpec::new(format!("{prefix}orders"), slot.clone(), move || {
            (OrderSupervisor, args.clone())
        });
        (Self { slot, timeout }, spec)
    }

    pub fn slot(&self) -> Slot<OrderSupervisorMsg> {
        self.slot.clone()
    }

    pub async fn checkout(&self, checkout: Checkout) -> Result<Uuid, CheckoutError> {
        let mailbox = self
            .slot
            .get()
            .map_err(|e| CheckoutError::Unavailable(e.to_string()))?;
        mailbox
            .call(
                |reply| OrderSupervisorMsg::Checkout(Box::new(checkout), reply),
                self.timeout,
            )
            .await
            .map_err(|e| CheckoutError::Unavailable(e.to_string()))?
    }

    pub async fn pay(
        &self,
        order: Uuid,
        payment_method: String,
    ) -> Result<PaymentAttempt, SagaError> {
        self.slot
            .get()
            .map_err(|e| SagaError::Unavailable(e.to_string()))?
            .call(
                |reply| OrderSupervisorMsg::Pay {
                    order,
                    payment_method,
                    reply,
                },
                self.timeout,
            )
            .await
            .map_err(|e| SagaError::Unavailable(e.to_string()))?
    }

    pub async fn cancel(
        &self,
        order: Uuid,
        actor: &'static str,
        reason: String,
    ) -> Result<(), SagaError> {
        self.slot
            .get()
            .map_err(|e| SagaError::Unavailable(e.to_string()))?
            .call(
                |reply| OrderSupervisorMsg::Cancel {
                    order,
                    actor,
                    reason,
                    reply,
                },
                self.timeout,
            )
            .await
            .map_err(|e| SagaError::Unavailable(e.to_string()))?
    }

    pub async fn running(&self) -> Result<usize, ActorError> {
        self.slot
            .get()?
            .call(OrderSupervisorMsg::Running, self.timeout)
            .await
    }
}

/// Forwards a call's answer to the caller without making the supervisor wait for the saga.
fn forward<R: Send + 'static>(
    saga: Mailbox<SagaMsg>,
    build: impl FnOnce(RpcReplyPort<R>) -> SagaMsg + Send + 'static,
    reply: RpcReplyPort<R>,
    unavailable: impl FnOnce(ActorError) -> R + Send + 'static,
) {
    tokio::spawn(async move {
        let answer = saga.call(build, Duration::from_secs(60)).await;
        let _ = reply.send(answer.unwrap_or_else(unavailable));
    });
}

impl ShopActor for OrderSupervisor {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = OrderSupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<OrderSupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            sagas: KeyedChildren::default(),
        };
        // Resume every order not final yet: its saga re-arms its deadline.
        for order in store::unfinished(&state.args.deps.db).await? {
            state.saga(&myself, order).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: Mailbox<OrderSupervisorMsg>,
        message: OrderSupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrderSupervisorMsg::Checkout(checkout, reply) => {
                match state.saga(&myself, checkout.order.id).await {
                    Ok(saga) => forward(
                        saga,
                        move |r| SagaMsg::Begin(checkout, r),
                        reply,
                        |e| Err(CheckoutError::Unavailable(e.to_string())),
                    ),
                    Err(error) => {
                        let _ = reply.send(Err(CheckoutError::Unavailable(error.to_string())));
                    }
                }
            }
            OrderSupervisorMsg::Payment(event) => match state.saga(&myself, event.order_id).await {
                Ok(saga) => {
                    let _ = saga.cast(SagaMsg::Payment(event));
                }
                Err(error) => {
                    tracing::error!(%error, "no saga for a payment event; it stays unprocessed")
                }
            },
            OrderSupervisorMsg::Pay {
                order,
                payment_method,
                reply,
            } => match state.saga(&myself, order).await {
                Ok(saga) => forward(
                    saga,
                    move |r| SagaMsg::Pay {
                        payment_method,
                        reply: r,
                    },
                    reply,
                    |e| Err(SagaError::Unavailable(e.to_string())),
                ),
                Err(error) => {
                    let _ = reply.send(Err(SagaError::Unavailable(error.to_string())));
                }
            },
            OrderSupervisorMsg::Cancel {
                order,
                actor,
                reason,
                reply,
            } => match state.saga(&myself, order).await {
                Ok(saga) => forward(
                    saga,
                    move |r| SagaMsg::Cancel {
                        actor,
                        reason,
                        reply: r,
                    },
                    reply,
                    |e| Err(SagaError::Unavailable(e.to_string())),
                ),
                Err(error) => {
                    let _ = reply.send(Err(SagaError::Unavailable(error.to_string())));
                }
            },
            OrderSupervisorMsg::Running(reply) => {
                let _ = reply.send(state.sagas.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: Mailbox<OrderSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((order, exit)) = state.sagas.exited(&event) else {
            return Ok(());
        };
        if exit == Exit::Failed {
            metrics::counter!("actor_restarts_total", "kind" => OrderSaga::KIND_NAME).increment(1);
            if matches!(
                store::status_of(&state.args.deps.db, order).await,
                Ok(Some(super::OrderStatus::Pending))
            ) {
                state.saga(&myself, order).await?;
            }
        }
        Ok(())
    }
}
