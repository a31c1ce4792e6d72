//! The server's view of the actor system: the running tree plus the typed handles handlers use
//! (`state.actors.carts`, ...). Each domain adds its handle and its child spec here.

use std::time::Duration;

use shop_actors::{ActorSystem, ActorSystemConfig, ChildSpec, RestartPolicy};
use sqlx::PgPool;

use crate::config::Settings;
use crate::payments::{PaymentProvider, PaymentRouter};

pub struct Actors {
    system: ActorSystem,
    /// Verified payment events → subscribers (the order supervisor).
    pub payment_router: PaymentRouter,
    /// The configured payment provider (its simulated events go through `payment_router`).
    pub payments: PaymentProvider,
}

impl Actors {
    /// Starts the supervision tree with the children the settings call for, plus `extra` (tests
    /// add probe children to exercise supervision).
    pub async fn start(
        settings: &Settings,
        db: &PgPool,
        extra: Vec<ChildSpec>,
    ) -> anyhow::Result<Self> {
        let prefix = &settings.actors.name_prefix;
        let payment_router = PaymentRouter::new();
        let payments =
            PaymentProvider::from_settings(settings, db.clone(), payment_router.clone())?;
        let config = ActorSystemConfig {
            name_prefix: settings.actors.name_prefix.clone(),
            restart: RestartPolicy {
                max_restarts: settings.actors.max_restarts,
                within: Duration::from_secs(settings.actors.restart_window_secs),
            },
            stop_timeout: Duration::from_secs(10),
        };
        let mut children = vec![payment_router.child_spec(
            ActorSystem::child_name(prefix, PaymentRouter::SLOT),
            db.clone(),
        )];
        children.extend(extra);
        let system = ActorSystem::start(&config, children).await?;
        Ok(Self {
            system,
            payment_router,
            payments,
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
