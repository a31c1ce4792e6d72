//! Checkout's hand-off of a cart to an order. The orders domain gives a placer (a closure that
//! turns the cart's lines into an order); the cart actor runs it inside one message and empties
//! itself only once the placer says the order exists. This crate never sees what an order is:
//! the placer's answer and error are opaque types `T` and `E`.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;

use super::{CartError, CartSnapshot};

/// Why a checkout did not end with "order placed, cart emptied". The variants say what the caller
/// may conclude, since that decides whether a retry can make a second order.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError<T, E> {
    /// Nothing was handed over, and never will be: the cart could not be reached, or the call's
    /// deadline passed before the cart got to it. The cart is unchanged; a retry is safe.
    #[error("the cart did not hand its lines over: {0}")]
    NotPlaced(CartError),
    /// The placer refused (its error); the cart keeps its lines.
    #[error("the order placer refused the cart")]
    Refused(E),
    /// The order exists but the cart could not be emptied; its lines are still in it.
    #[error("the order was placed but the cart could not be emptied: {error}")]
    NotEmptied { order: T, error: CartError },
    /// The hand-off started but its answer never came (the placer overran its timeout, or the
    /// cart actor died mid-way): the order may exist. Look it up before creating another.
    #[error("the checkout's outcome is unknown: {0}")]
    Unanswered(CartError),
}

/// Tells the caller how the cart's emptying went, once the order exists.
pub type Finish = Box<dyn FnOnce(Result<(), CartError>) + Send>;

/// What the cart actor holds of one checkout call: the placer and its caller's reply, with the
/// types `T` and `E` erased so the cart's mailbox needs none.
pub trait Handoff: Send {
    /// The cart will not hand over its lines (the deadline passed or the caller gave up).
    fn refuse(self: Box<Self>, error: CartError);

    /// Runs the placer on the lines. `Some(finish)` once the order exists (the cart then empties
    /// itself and calls `finish`); `None` when the placer refused (its caller has the error).
    fn place(self: Box<Self>, cart: CartSnapshot) -> BoxFuture<'static, Option<Finish>>;
}

/// The placer is shared between the caller and the message carrying it, so that a call the cart
/// never received can be sent again with the same placer; the cart takes it when it starts.
pub(super) type PlacerSlot<P> = Arc<Mutex<Option<P>>>;

pub(super) type Reply<T, E> = ractor::RpcReplyPort<Result<T, CheckoutError<T, E>>>;

pub(super) struct TypedHandoff<P, T, E> {
    pub(super) placer: PlacerSlot<P>,
    pub(super) reply: Reply<T, E>,
}

impl<P, Fut, T, E> Handoff for TypedHandoff<P, T, E>
where
    P: FnOnce(CartSnapshot) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn refuse(self: Box<Self>, error: CartError) {
        // Nobody may be listening any more (the caller gave up); nothing was done either way.
        let _ = self.reply.send(Err(CheckoutError::NotPlaced(error)));
    }

    fn place(self: Box<Self>, cart: CartSnapshot) -> BoxFuture<'static, Option<Finish>> {
        let Self { placer, reply } = *self;
        let placer = placer.lock().unwrap_or_else(PoisonError::into_inner).take();
        Box::pin(async move {
            let Some(place) = placer else {
                // Unreachable: only the one call whose ticket the cart started takes the placer.
                let _ = reply.send(Err(CheckoutError::NotPlaced(CartError::Storage(
                    "the order placer was already used".into(),
                ))));
                return None;
            };
            match place(cart).await {
                Ok(order) => {
                    let finish: Finish = Box::new(move |emptied| {
                        let answer = match emptied {
                            Ok(()) => Ok(order),
                            Err(error) => Err(CheckoutError::NotEmptied { order, error }),
                        };
                        // A caller that gave up was told "unknown" and looks the order up: the
                        // order exists and the cart is settled either way.
                        let _ = reply.send(answer);
                    });
                    Some(finish)
                }
                Err(error) => {
                    // Nothing to undo if the caller left: no order, and the cart keeps its lines.
                    let _ = reply.send(Err(CheckoutError::Refused(error)));
                    None
                }
            }
        })
    }
}
