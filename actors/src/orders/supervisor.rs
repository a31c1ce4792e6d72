//! The order supervisor: spawns an order saga per order in flight, routes payment events and
//! commands to it (spawning it from PostgreSQL if it is asleep), resumes every unfinished order
//! at boot and on a timer (so a saga that failed, or whose restart failed, is back within
//! `checkout.sweep_interval_secs`), and restarts a saga that fails. A saga stops itself once its
//! order is final, so the sagas alive are the orders still pending (plus those handling a late
//! event for a moment). Each sweep sets `orders_pending`, so a leak of sagas shows against it.

use std::time::{Duration, Instant};

use ractor::{ActorProcessingErr, RpcReplyPort, SupervisionEvent};
use tracing::Instrument;
use uuid::Uuid;

use super::saga::{
    Checkout, CheckoutError, OrderSaga, PaymentAttempt, SagaArgs, SagaDeps, SagaError, SagaMsg,
};
use super::{OrderStatus, SAGA_MARGIN};
use crate::instrument::{self, ActorError, Mailbox, ShopActor, Slot};
use crate::keyed::{Exit, KeyedChildren};
use crate::payments::PaymentEvent;
use crate::root::ChildSpec;

pub enum OrderSupervisorMsg {
    Checkout(Box<Checkout>, RpcReplyPort<Result<Uuid, CheckoutError>>),
    /// From the payment router.
    Payment(PaymentEvent),
    Pay {
        order: Uuid,
        payment_method: String,
        deadline: Instant,
        reply: RpcReplyPort<Result<PaymentAttempt, SagaError>>,
    },
    Cancel {
        order: Uuid,
        actor: &'static str,
        reason: String,
        deadline: Instant,
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
    /// Sagas alive (tests and metrics).
    Running(RpcReplyPort<usize>),
    /// Give every pending order without a saga one (the supervisor's own timer).
    Sweep,
}

#[derive(Clone)]
pub struct SupervisorArgs {
    pub prefix: String,
    pub deps: SagaDeps,
    pub sweep_interval: Duration,
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
        self.saga_for(myself, order, false).await
    }

    /// The saga of `order`, started if needed; `fresh` for a checkout's new order (the saga
    /// then reads nothing back at start).
    async fn saga_for(
        &mut self,
        myself: &Mailbox<OrderSupervisorMsg>,
        order: Uuid,
        fresh: bool,
    ) -> Result<Mailbox<SagaMsg>, ActorError> {
        if let Some(saga) = self.sagas.running(&order) {
            return Ok(saga);
        }
        let args = SagaArgs {
            order_id: order,
            deps: self.args.deps.clone(),
            fresh,
            parent: instrument::sending_span(),
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
    /// `timeout`: how long a caller waits for a saga (`checkout.call_timeout_secs`); sagas
    /// stop starting new steps [`SAGA_MARGIN`] earlier.
    pub fn new(
        prefix: &str,
        deps: SagaDeps,
        timeout: Duration,
        sweep_interval: Duration,
    ) -> (Self, ChildSpec) {
        let slot = Slot::empty(OrderSupervisor::KIND_NAME);
        let args = SupervisorArgs {
            prefix: prefix.to_owned(),
            deps,
            sweep_interval,
        };
        let spec = ChildSpec::new(format!("{prefix}orders"), slot.clone(), move || {
            (OrderSupervisor, args.clone())
        });
        (Self { slot, timeout }, spec)
    }

    pub fn slot(&self) -> Slot<OrderSupervisorMsg> {
        self.slot.clone()
    }

    /// When a saga answering a call made now must have decided by.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout.saturating_sub(SAGA_MARGIN)
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
                    deadline: self.deadline(),
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
                    deadline: self.deadline(),
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

/// Forwards a call's answer to the caller without making the supervisor wait for the saga. It
/// waits no longer than the caller does (the reply port's own timeout): an answer nobody waits
/// for is dropped, and what the saga did stands either way.
fn forward<R: Send + 'static>(
    saga: Mailbox<SagaMsg>,
    build: impl FnOnce(RpcReplyPort<R>) -> SagaMsg + Send + 'static,
    reply: RpcReplyPort<R>,
    unavailable: impl FnOnce(ActorError) -> R + Send + 'static,
) {
    let wait = reply.get_timeout().unwrap_or(FORWARD_TIMEOUT);
    // In the supervisor's span, so that the saga's handling stays in the caller's trace.
    let forwarding = async move {
        let answer = saga.call(build, wait).await;
        let _ = reply.send(answer.unwrap_or_else(unavailable));
    };
    tokio::spawn(forwarding.in_current_span());
}

/// Sets `orders_pending`, the orders that should have a saga: the saga-leak alert compares it
/// with the sagas alive.
fn report_pending(pending: &[Uuid]) {
    metrics::gauge!("orders_pending").set(pending.len() as f64);
}

/// For a reply port without a timeout of its own (casts made into calls by tests).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

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
        let pending = state.args.deps.ledger.unfinished().await?;
        report_pending(&pending);
        for order in pending {
            state.saga(&myself, order).await?;
        }
        myself.cast_every(state.args.sweep_interval, || OrderSupervisorMsg::Sweep);
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
                match state.saga_for(&myself, checkout.order.id, true).await {
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
            OrderSupervisorMsg::Payment(event) => {
                let delivered = match state.saga(&myself, event.order_id).await {
                    Ok(saga) => saga.cast(SagaMsg::Payment(event)),
                    Err(error) => Err(error),
                };
                if let Err(error) = delivered {
                    // Stored unprocessed: the payment router hands it over again.
                    tracing::warn!(%error, "no saga for a payment event now; it is redelivered later");
                }
            }
            OrderSupervisorMsg::Pay {
                order,
                payment_method,
                deadline,
                reply,
            } => match state.saga(&myself, order).await {
                Ok(saga) => forward(
                    saga,
                    move |r| SagaMsg::Pay {
                        payment_method,
                        deadline,
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
                deadline,
                reply,
            } => match state.saga(&myself, order).await {
                Ok(saga) => forward(
                    saga,
                    move |r| SagaMsg::Cancel {
                        actor,
                        reason,
                        deadline,
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
            OrderSupervisorMsg::Sweep => match state.args.deps.ledger.unfinished().await {
                Ok(pending) => {
                    report_pending(&pending);
                    for order in pending {
                        if state.sagas.running(&order).is_none()
                            && let Err(error) = state.saga(&myself, order).await
                        {
                            tracing::error!(%order, %error, "a pending order's saga did not start; the next sweep tries again");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "listing pending orders failed; the next sweep tries again")
                }
            },
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
            // A restart that fails (the database briefly away) is not the supervisor's failure:
            // the sweep starts the saga again.
            let restarted = match state.args.deps.ledger.status_of(order).await {
                Ok(Some(OrderStatus::Pending)) => state
                    .saga(&myself, order)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Ok(_) => Ok(()),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = restarted {
                tracing::error!(%order, %error, "restarting an order saga failed; the sweep retries");
            }
        }
        Ok(())
    }
}
