//! The shop's actor system: the supervision tree that owns every piece of state many requests fight
//! over (carts, stock, coupon uses, orders in flight). It never imports the http layer; the server
//! reaches it through the typed handles exported here.

pub mod carts;
pub mod coupons;
pub mod instrument;
pub mod inventory;
pub mod keyed;
pub mod orders;
pub mod partition;
pub mod payment_router;
pub mod payments;
pub mod refunds;
pub mod root;

pub use instrument::{ActorError, Envelope, Instrumented, Mailbox, ShopActor, Slot};
pub use root::{
    ActorSystem, ActorSystemConfig, ChildSpec, RestartPolicy, RootMsg, Supervisor, SupervisorArgs,
    SupervisorKind, TreeStopped,
};

/// Re-exported so that callers name ractor's types through one path.
pub use ractor;
