//! The refund worker: the one runner of refunds the shop owes. A refund is decided by writing a
//! durable row in the transaction that decides it (a late payment, a payment that does not match
//! its order, an admin's refund); this actor then asks the payment provider, with the row's
//! idempotency key, until the provider takes it, on a timer and whenever it is kicked. What a
//! pass does lives in the server (the [`RefundLedger`] it gives); what stays owed is the gauge
//! `refunds_owed`, so an unpaid refund is a state a person can see, never a log line.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{ActorProcessingErr, RpcReplyPort};

use crate::instrument::{ActorError, Mailbox, ShopActor, Slot};
use crate::root::ChildSpec;

/// Why the shop gives money back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReason {
    /// A payment that succeeded for an order that had been cancelled (or lost its stock).
    LatePayment,
    /// A payment whose amount or currency is not its order's.
    Mismatch,
    /// An admin's refund, whole or partial.
    Admin,
}

impl RefundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LatePayment => "late_payment",
            Self::Mismatch => "mismatch",
            Self::Admin => "admin",
        }
    }
}

/// What one pass over the refunds that are due found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefundPass {
    /// Confirmed by the provider in this pass.
    pub settled: u64,
    /// Still owed after it (due later, or failed again and backed off).
    pub owed: u64,
}

/// The server's side: settle what is due, once each, recording every outcome durably.
pub trait RefundLedger: Send + Sync + 'static {
    fn settle_due(&self) -> BoxFuture<'static, Result<RefundPass, String>>;
}

pub enum RefundMsg {
    /// Settle what is due now (the timer, or a kick after a refund was decided).
    Settle,
    /// Settle what is due now and answer with the pass (an admin waiting on a refund).
    SettleNow(RpcReplyPort<Result<RefundPass, String>>),
}

pub struct RefundWorker;

impl RefundWorker {
    pub const KIND_NAME: &'static str = "refund_worker";
}

#[derive(Clone)]
pub struct RefundArgs {
    pub ledger: Arc<dyn RefundLedger>,
    pub interval: Duration,
}

pub struct RefundState {
    ledger: Arc<dyn RefundLedger>,
}

impl RefundState {
    async fn settle(&self) -> Result<RefundPass, String> {
        let pass = self.ledger.settle_due().await;
        match &pass {
            Ok(pass) => {
                metrics::gauge!("refunds_owed").set(pass.owed as f64);
                if pass.settled > 0 {
                    metrics::counter!("refunds_settled_total").increment(pass.settled);
                }
            }
            // The rows stay owed and the next tick tries again: nothing is lost by waiting.
            Err(error) => tracing::error!(%error, "refund pass failed; retrying on the next tick"),
        }
        pass
    }
}

impl ShopActor for RefundWorker {
    const KIND: &'static str = Self::KIND_NAME;
    type Msg = RefundMsg;
    type State = RefundState;
    type Arguments = RefundArgs;

    async fn pre_start(
        &self,
        myself: Mailbox<RefundMsg>,
        args: RefundArgs,
    ) -> Result<RefundState, ActorProcessingErr> {
        myself.cast(RefundMsg::Settle)?;
        myself.cast_every(args.interval, || RefundMsg::Settle);
        Ok(RefundState {
            ledger: args.ledger,
        })
    }

    async fn handle(
        &self,
        _myself: Mailbox<RefundMsg>,
        message: RefundMsg,
        state: &mut RefundState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RefundMsg::Settle => {
                // Failures are logged and counted in `settle`; the durable rows carry the retry.
                let _pass = state.settle().await;
            }
            RefundMsg::SettleNow(reply) => {
                let pass = state.settle().await;
                // The caller may have given up; the refund is settled (or owed) either way.
                let _ = reply.send(pass);
            }
        }
        Ok(())
    }
}

/// The worker's handle.
#[derive(Clone)]
pub struct Refunds {
    slot: Slot<RefundMsg>,
}

impl Refunds {
    /// The handle and the root's child spec (registered as `name`).
    pub fn new(
        name: String,
        ledger: Arc<dyn RefundLedger>,
        interval: Duration,
    ) -> (Self, ChildSpec) {
        let slot = Slot::empty(RefundWorker::KIND_NAME);
        let args = RefundArgs { ledger, interval };
        let spec = ChildSpec::new(name, slot.clone(), move || (RefundWorker, args.clone()));
        (Self { slot }, spec)
    }

    /// Asks for a pass soon (a refund was just decided). If the worker is down, its timer after
    /// the restart finds the row: the refund is owed in PostgreSQL, not in this message.
    pub fn kick(&self) {
        if let Err(error) = self
            .slot
            .get()
            .and_then(|worker| worker.cast(RefundMsg::Settle))
        {
            tracing::warn!(%error, "refund worker not reachable; its next pass settles the refund");
        }
    }

    /// Runs a pass now and waits for it, at most `timeout`.
    pub async fn settle_now(&self, timeout: Duration) -> Result<RefundPass, ActorError> {
        match self.slot.get()?.call(RefundMsg::SettleNow, timeout).await? {
            Ok(pass) => Ok(pass),
            Err(_) => Err(ActorError::Unavailable {
                kind: RefundWorker::KIND_NAME,
            }),
        }
    }
}
