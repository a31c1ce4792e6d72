//! Checkout's hand-off of a cart to an order. The orders domain gives a placer (a closure that
//! turns the cart's lines into an order); the cart actor runs it inside one message. The placer
//! empties the cart's rows in the transaction that writes the order ([`super::empty_in`]), so
//! "order placed" and "cart emptied" are one commit: when the placer answers `Ok` the cart only
//! forgets its lines in memory. This crate never sees what an order is: the placer's answer and
//! error are opaque types `T` and `E`.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;

use super::{CartError, CartSnapshot};

/// Why a checkout did not end with "order placed" (and so the cart emptied). The variants say
/// what the caller may conclude, since that decides whether a retry can make a second order.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError<E> {
    /// Nothing was handed over, and never will be: the cart could not be reached, or the call's
    /// deadline passed before the cart got to it. The cart is unchanged; a retry is safe.
    #[error("the cart did not hand its lines over: {0}")]
    NotPlaced(CartError),
    /// The placer refused (its error); the cart keeps its lines.
    #[error("the order placer refused the cart")]
    Refused(E),
    /// The hand-off started but its answer never came (the placer overran its timeout, or the
    /// cart actor died mid-way): the order may exist. Look it up before creating another.
    #[error("the checkout's outcome is unknown: {0}")]
    Unanswered(CartError),
}

/// What the cart actor holds of one checkout call: the placer and its caller's reply, with the
/// types `T` and `E` erased so the cart's mailbox needs none.
pub trait Handoff: Send {
    /// The cart will not hand over its lines (the deadline passed or the caller gave up).
    fn refuse(self: Box<Self>, error: CartError);

    /// Runs the placer on the lines and answers its caller. `true` once the order exists (its
    /// transaction emptied the cart's rows); `false` when the placer refused (its caller has the
    /// error).
    fn place(self: Box<Self>, cart: CartSnapshot) -> BoxFuture<'static, bool>;
}

/// The placer is shared between the caller and the message carrying it, so that a call the cart
/// never received can be sent again with the same placer; the cart takes it when it starts.
pub(super) type PlacerSlot<P> = Arc<Mutex<Option<P>>>;

pub(super) type Reply<T, E> = ractor::RpcReplyPort<Result<T, CheckoutError<E>>>;

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

    fn place(self: Box<Self>, cart: CartSnapshot) -> BoxFuture<'static, bool> {
        let Self { placer, reply } = *self;
        let placer = placer.lock().unwrap_or_else(PoisonError::into_inner).take();
        Box::pin(async move {
            let Some(place) = placer else {
                // Unreachable: only the one call whose ticket the cart started takes the placer.
                let _ = reply.send(Err(CheckoutError::NotPlaced(CartError::Storage(
                    "the order placer was already used".into(),
                ))));
                return false;
            };
            let answer = place(cart).await;
            let placed = answer.is_ok();
            // A caller that gave up was told "unknown" and looks the order up; nothing to undo
            // either way: the order and the emptied cart are one commit, or neither happened.
            let _ = reply.send(answer.map_err(CheckoutError::Refused));
            placed
        })
    }
}
