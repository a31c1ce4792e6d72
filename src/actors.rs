//! The server's view of the actor system: the running tree plus the typed handles handlers use
//! (`state.actors.carts`, ...). Each domain adds its handle and its child spec here.

use std::time::Duration;

use shop_actors::carts::{CartConfig, Carts};
use shop_actors::inventory::{Inventory, InventoryConfig};
use shop_actors::{ActorSystem, ActorSystemConfig, ChildSpec, RestartPolicy, Slot};
use sqlx::PgPool;

use crate::config::Settings;

pub struct Actors {
    system: ActorSystem,
    /// The inventory shards: stock availability, reservations, sales.
    pub inventory: Inventory,
    /// One actor per active customer's cart.
    pub carts: Carts,
}

impl Actors {
    /// Starts the supervision tree with the children the settings call for, plus `extra` (tests
    /// add probe children to exercise supervision).
    pub async fn start(
        settings: &Settings,
        db: &PgPool,
        extra: Vec<ChildSpec>,
    ) -> anyhow::Result<Self> {
        let prefix = settings.actors.name_prefix.as_str();
        let call_timeout = Duration::from_millis(settings.actors.call_timeout_ms);
        let restart = RestartPolicy {
            max_restarts: settings.actors.max_restarts,
            within: Duration::from_secs(settings.actors.restart_window_secs),
        };
        let (inventory, inventory_spec) = Inventory::new(
            prefix,
            db.clone(),
            &InventoryConfig {
                shards: settings.inventory.shard_count(),
                expiry_interval: Duration::from_millis(settings.inventory.expiry_interval_ms),
                reconcile_interval: Duration::from_secs(settings.inventory.reconcile_interval_secs),
                call_timeout,
            },
            restart,
            Slot::empty("inventory_supervisor"),
        );
        let (carts, carts_spec) = Carts::new(
            prefix,
            db.clone(),
            inventory.clone(),
            &CartConfig {
                idle_timeout: Duration::from_secs(settings.carts.idle_timeout_secs),
                call_timeout,
            },
        );
        let config = ActorSystemConfig {
            name_prefix: settings.actors.name_prefix.clone(),
            restart,
            stop_timeout: Duration::from_secs(10),
        };
        // The slots of docs/ARCHITECTURE.md, in start order.
        let mut children = vec![inventory_spec, carts_spec];
        children.extend(extra);
        let system = ActorSystem::start(&config, children).await?;
        Ok(Self {
            system,
            inventory,
            carts,
        })
    }

    pub fn system(&self) -> &ActorSystem {
        &self.system
    }

    pub fn is_running(&self) -> bool {
        self.system.is_running()
    }

    pub async fn shutdown(&self) {
        self.system.shutdown().await;
    }
}
