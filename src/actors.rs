//! The server's view of the actor system: the tree plus the typed handles handlers use
//! (`state.actors.carts`, ...). Each domain adds its handle and its child spec here.
//!
//! The handles exist before the tree does: they reach their actors through slots that are empty
//! until the tree starts (a standby instance, waiting for the ownership lease, serves HTTP with
//! them), so every call through them answers `Unavailable`, a 503, until then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use shop_actors::carts::{CartConfig, Carts};
use shop_actors::coupons::{CouponConfig, CouponLimiter};
use shop_actors::inventory::{Inventory, InventoryConfig};
use shop_actors::partition::Fence;
use shop_actors::refunds::Refunds;
use shop_actors::{ActorSystem, ActorSystemConfig, ChildSpec, RestartPolicy, ShopActor, Slot};
use sqlx::PgPool;

use crate::config::Settings;
use crate::messaging::relay::RelayArgs;
use crate::messaging::{EmailDispatcher, Messaging, OutboxRelay};
use crate::orders::ledger::PgOrderLedger;
use crate::payments::refunds::Ledger;
use crate::payments::{MailboxSink, PaymentProvider, PaymentRouter, SubscriptionId};
use shop_actors::orders::saga::SagaDeps;
use shop_actors::orders::supervisor::{OrderSupervisorMsg, Orders};

pub struct Actors {
    /// The running tree, once [`Actors::start_tree`] has started it.
    system: OnceLock<ActorSystem>,
    /// What [`Actors::start_tree`] starts: taken by the first (only) start.
    pending: Mutex<Option<(ActorSystemConfig, Vec<ChildSpec>)>>,
    /// Tells [`Actors::stopped`] that the tree exists now.
    started: tokio::sync::watch::Sender<bool>,
    /// Another instance holds the ownership lease: this one waits to take it.
    standby: AtomicBool,
    /// Where [`Actors::start_tree`] takes the partitions before the actors load.
    db: PgPool,
    /// This node's partitions and their fencing epochs: every write of owned state proves them.
    pub fence: Fence,
    /// The inventory shards: stock availability, reservations, sales.
    pub inventory: Inventory,
    /// The coupon limiter shards: coupon uses held, committed, released.
    pub coupons: CouponLimiter,
    /// One actor per active customer's cart.
    pub carts: Carts,
    /// The outbox relay's and email dispatcher's shared parts (readiness checks use them).
    pub messaging: Messaging,
    /// One saga per order in flight.
    pub orders: Orders,
    /// Verified payment events → subscribers (the order supervisor).
    pub payment_router: PaymentRouter,
    /// The configured payment provider (its simulated events go through `payment_router`).
    pub payments: PaymentProvider,
    /// The refund worker: settles the refunds owed.
    pub refunds: Refunds,
    orders_subscription: SubscriptionId,
}

impl Actors {
    /// The handles, and the supervision tree (not started: see [`Actors::start_tree`]) with the
    /// children the settings call for, plus `extra` (tests add probe children to exercise
    /// supervision).
    pub fn new(settings: &Settings, db: &PgPool, extra: Vec<ChildSpec>) -> anyhow::Result<Self> {
        let prefix = settings.actors.name_prefix.as_str();
        let call_timeout = Duration::from_millis(settings.actors.call_timeout_ms);
        let restart = RestartPolicy {
            max_restarts: settings.actors.max_restarts,
            within: Duration::from_secs(settings.actors.restart_window_secs),
            ..RestartPolicy::default()
        };
        let fence = Fence::new(
            settings.cluster.partitions,
            settings.cluster.node(settings.server.port),
        );
        let (inventory, inventory_spec) = Inventory::new(
            prefix,
            db.clone(),
            &InventoryConfig {
                shards: settings.inventory.shard_count(),
                expiry_interval: Duration::from_millis(settings.inventory.expiry_interval_ms),
                reconcile_interval: Duration::from_secs(settings.inventory.reconcile_interval_secs),
                call_timeout,
                fence: fence.clone(),
            },
            restart,
            Slot::empty("inventory_supervisor"),
        );
        // As many shards as the inventory: both spread hot keys over the same cores.
        let (coupons, coupons_spec) = CouponLimiter::new(
            prefix,
            db.clone(),
            &CouponConfig {
                shards: settings.inventory.shard_count(),
                call_timeout,
                fence: fence.clone(),
                reconcile_interval: Duration::from_secs(settings.inventory.reconcile_interval_secs),
                orphan_grace: Duration::from_secs(settings.checkout.coupon_orphan_grace_secs),
            },
            restart,
            Slot::empty("coupon_supervisor"),
        );
        let (carts, carts_spec) = Carts::new(
            prefix,
            db.clone(),
            inventory.clone(),
            &CartConfig {
                idle_timeout: Duration::from_secs(settings.carts.idle_timeout_secs),
                call_timeout,
                fence: fence.clone(),
            },
        );
        let payment_router = PaymentRouter::new();
        let payments =
            PaymentProvider::from_settings(settings, db.clone(), payment_router.clone())?;
        let checkout = &settings.checkout;
        let (refunds, refunds_spec) = Refunds::new(
            ActorSystem::child_name(prefix, "refund_worker"),
            std::sync::Arc::new(Ledger::new(db.clone(), payments.clone())),
            Duration::from_secs(checkout.refund_interval_secs.max(1)),
        );
        let (orders, orders_spec) = Orders::new(
            prefix,
            SagaDeps {
                ledger: std::sync::Arc::new(PgOrderLedger::new(db.clone(), fence.clone())),
                inventory: inventory.clone(),
                payments: std::sync::Arc::new(payments.clone()),
                refunds: refunds.clone(),
                coupons: coupons.clone(),
            },
            Duration::from_secs(checkout.call_timeout_secs),
            Duration::from_secs(checkout.sweep_interval_secs.max(1)),
        );
        // Payment events reach the sagas through the order supervisor.
        let orders_subscription = payment_router.subscribe(std::sync::Arc::new(MailboxSink::new(
            orders.slot(),
            OrderSupervisorMsg::Payment,
        )));
        let config = ActorSystemConfig {
            name_prefix: settings.actors.name_prefix.clone(),
            restart,
            stop_timeout: Duration::from_secs(10),
        };
        // The slots of docs/ARCHITECTURE.md, in start order.
        let messaging = Messaging::from_settings(settings)?;
        let mut children = vec![
            inventory_spec,
            coupons_spec,
            carts_spec,
            orders_spec,
            payment_router.child_spec(
                ActorSystem::child_name(prefix, PaymentRouter::SLOT),
                std::sync::Arc::new(crate::payments::events::StoredEvents(db.clone())),
                Duration::from_secs(checkout.redeliver_interval_secs.max(1)),
            ),
            refunds_spec,
        ];
        children.extend(messaging_children(settings, db, &messaging, prefix));
        children.extend(extra);
        Ok(Self {
            system: OnceLock::new(),
            pending: Mutex::new(Some((config, children))),
            started: tokio::sync::watch::Sender::new(false),
            standby: AtomicBool::new(false),
            db: db.clone(),
            fence,
            inventory,
            coupons,
            carts,
            messaging,
            orders,
            payment_router,
            payments,
            refunds,
            orders_subscription,
        })
    }

    /// Stops forwarding payment events to the order sagas (tests of the payments layer alone).
    pub fn detach_orders_from_payments(&self) {
        self.payment_router.unsubscribe(self.orders_subscription);
    }

    /// Starts the supervision tree: its children load their state from PostgreSQL and fill the
    /// handles' slots. Only once per process, and only by the holder of the ownership lease
    /// (or with `actors.ownership_lease` off).
    pub async fn start_tree(&self) -> anyhow::Result<()> {
        let pending = self
            .pending
            .lock()
            .map_err(|_| anyhow::anyhow!("the actor tree's start was interrupted"))?
            .take();
        let Some((config, children)) = pending else {
            anyhow::bail!("the actor tree was started already");
        };
        // Every partition at a new epoch before any actor reads state: a previous owner's write
        // that passed its fence has committed by now, and any later one is refused.
        self.fence
            .take_all(&self.db)
            .await
            .map_err(|error| anyhow::anyhow!("taking the partitions: {error}"))?;
        let system = ActorSystem::start(&config, children).await?;
        if self.system.set(system).is_err() {
            anyhow::bail!("the actor tree was started already");
        }
        self.standby.store(false, Ordering::SeqCst);
        self.started.send_replace(true);
        Ok(())
    }

    /// The running tree; `None` before it started (a standby).
    pub fn system(&self) -> Option<&ActorSystem> {
        self.system.get()
    }

    pub fn is_running(&self) -> bool {
        self.system.get().is_some_and(ActorSystem::is_running)
    }

    /// Marks this instance as waiting for the ownership lease (readiness says so).
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }

    /// Whether another instance owns the tree and this one waits for the lease.
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::SeqCst)
    }

    /// Resolves once the tree has stopped (waiting first for it to start); an error when it
    /// stopped without being asked to.
    pub async fn stopped(&self) -> Result<(), shop_actors::TreeStopped> {
        let mut started = self.started.subscribe();
        // The sender lives in `self`, so this only ends once the tree has started.
        let _ = started.wait_for(|started| *started).await;
        match self.system.get() {
            Some(system) => system.stopped().await,
            None => std::future::pending().await,
        }
    }

    /// How the tree ended, once it has: `Some(Err)` when it stopped without being asked to.
    pub fn exit(&self) -> Option<Result<(), shop_actors::TreeStopped>> {
        self.system.get().and_then(ActorSystem::exit)
    }

    /// Stops the tree, if it runs; a second call finds nothing left to stop.
    pub async fn shutdown(&self) {
        if let Some(system) = self.system.get() {
            system.shutdown().await;
        }
    }
}

/// The outbox relay, then the email dispatcher (stopped first, so the relay never hands over to a
/// dispatcher that is going away without noticing).
fn messaging_children(
    settings: &Settings,
    db: &PgPool,
    messaging: &Messaging,
    prefix: &str,
) -> Vec<ChildSpec> {
    let dispatcher = Slot::empty(EmailDispatcher::KIND);
    let (relay_db, relay_messaging, relay_settings, relay_dispatcher) = (
        db.clone(),
        messaging.clone(),
        settings.clone(),
        dispatcher.clone(),
    );
    let (dispatch_db, dispatch_messaging) = (db.clone(), messaging.clone());
    vec![
        ChildSpec::new(
            ActorSystem::child_name(prefix, "outbox_relay"),
            Slot::empty(OutboxRelay::KIND),
            move || {
                let args = RelayArgs::new(
                    relay_db.clone(),
                    &relay_messaging,
                    relay_dispatcher.clone(),
                    &relay_settings,
                );
                (OutboxRelay, args)
            },
        ),
        ChildSpec::new(
            ActorSystem::child_name(prefix, "email_dispatcher"),
            dispatcher,
            move || {
                (
                    EmailDispatcher,
                    (dispatch_db.clone(), dispatch_messaging.clone()),
                )
            },
        ),
    ]
}
