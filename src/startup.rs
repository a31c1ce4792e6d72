//! Building and running the server: configuration → database → ownership lease → actor tree →
//! router → listener, and the orderly shutdown in reverse.
//!
//! An instance that finds the ownership lease ([`crate::lease`]) held by another serves HTTP as
//! a standby (live, not ready, actor routes 503) and starts its tree once it takes the lease.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::actors::Actors;
use crate::cache::Cache;
use crate::config::Settings;
use crate::identity::service::Identity;
use crate::identity::{Email, NewPassword, UserName, store};
use crate::lease::{Attempt, LeaseCandidate, OwnershipLease};
use crate::media::MediaStore;
use crate::rate_limit::RateLimits;
use crate::state::AppState;
use crate::{db, http};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    ownership: Ownership,
}

/// Where the instance stands with the ownership lease when it starts serving.
enum Ownership {
    /// `actors.ownership_lease` is off: the tree runs without a lease.
    Unleased,
    /// The lease is held and the tree runs.
    Owner(OwnershipLease),
    /// Another instance holds the lease: the tree starts once this one takes it.
    Standby(LeaseCandidate),
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Vec::new()).await
    }

    /// Like [`Application::build`], with extra children under the root supervisor (tests).
    pub async fn build_with(
        settings: Settings,
        extra_children: Vec<shop_actors::ChildSpec>,
    ) -> anyhow::Result<Self> {
        let metrics = http::metrics::install_recorder()?;
        let db = db::prepare(&settings.database).await?;
        let identity = Identity::new(&settings).await?;
        bootstrap_admin(&settings, &db, &identity).await?;
        let actors = Actors::new(&settings, &db, extra_children)?;
        let ownership = if settings.actors.ownership_lease {
            match LeaseCandidate::open(&settings.database)
                .await?
                .try_take()
                .await?
            {
                Attempt::Taken(lease) => {
                    actors.start_tree().await?;
                    Ownership::Owner(lease)
                }
                Attempt::HeldElsewhere(candidate) => {
                    tracing::warn!(
                        "standby: another instance owns the actor tree; waiting for its lease"
                    );
                    actors.set_standby(true);
                    Ownership::Standby(candidate)
                }
            }
        } else {
            actors.start_tree().await?;
            Ownership::Unleased
        };
        owner_gauge(&ownership);
        let cache = Cache::from_settings(&settings)?;
        let rate_limits = RateLimits::from_settings(&settings.rate_limit, &settings.redis)?;
        let media = MediaStore::from_settings(&settings).await?;
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).await?;
        let state = AppState {
            settings: Arc::new(settings),
            db,
            actors: Arc::new(actors),
            identity: Arc::new(identity),
            metrics,
            cache,
            rate_limits,
            media,
            image_decodes: http::images::decode_permits(),
        };
        Ok(Self {
            listener,
            state,
            ownership,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives in-flight requests up to
    /// `server.shutdown_grace_secs` to finish, stops the actor tree, releases the ownership lease
    /// and closes the pool. A standby meanwhile waits for the lease and, once it has it, starts
    /// the tree (which loads everything from PostgreSQL, as at boot).
    ///
    /// An actor tree that stops on its own (the root gave up on a child that kept failing) shuts
    /// the server down the same way and makes this return the error, so the process exits
    /// non-zero and an orchestrator restarts it instead of leaving it unready for good.
    ///
    /// So does a lost lease: when the owner can no longer show that its lease session holds the
    /// lock (the connection dropped, the session was terminated), PostgreSQL may already have
    /// handed the lease to a standby, whose tree then writes stock, carts and coupon uses from
    /// its own memory. The tree here is stopped at once, before the HTTP drain, and the process
    /// exits non-zero: it cannot take the lease back without rebuilding its state from
    /// PostgreSQL, and a fresh start (the orchestrator's restart) is exactly that, as a standby
    /// if the other instance now owns the tree.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            ownership,
        } = self;
        let grace = state.settings.shutdown_grace();
        let app = http::app(state.clone());
        let signalled = Arc::new(Notify::new());
        let notify = signalled.clone();
        let actors = state.actors.clone();
        // Ownership → the server: the lease was lost or the tree could not start after taking it.
        let (fatal, mut fatal_rx) = watch::channel(None::<String>);
        // The server → ownership: stop waiting for or watching the lease.
        let (stop, stop_rx) = watch::channel(false);
        let sweeper = tokio::spawn(http::idempotency::sweep_every(
            state.db.clone(),
            http::idempotency::SWEEP_EVERY,
            stop_rx.clone(),
        ));
        let keeper = tokio::spawn(keep_ownership(ownership, state.clone(), fatal, stop_rx));
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {
                    tracing::info!("shutting down: no new connections, finishing in-flight requests");
                }
                stopped = actors.stopped() => {
                    if let Err(error) = stopped {
                        tracing::error!(%error, "shutting down: the actor tree has stopped");
                    }
                }
                why = fatal_reason(&mut fatal_rx) => {
                    tracing::error!(reason = %why, "shutting down: this instance may no longer own the actor tree");
                    // Not one more write from this tree: a standby may own the stock now.
                    actors.shutdown().await;
                }
            }
            notify.notify_one();
        });
        let deadline = async {
            signalled.notified().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = serve => served?,
            () = deadline => tracing::warn!(?grace, "in-flight requests outlived the grace period"),
        }
        stop.send_replace(true);
        if let Err(error) = sweeper.await {
            tracing::error!(%error, "the Idempotency-Key sweeper failed");
        }
        let kept = keeper
            .await
            .map_err(|error| anyhow::anyhow!("the ownership lease's task failed: {error}"));
        state.actors.shutdown().await;
        // The lease goes only once the tree has stopped: a standby must not start its tree while
        // this one may still write.
        let lost = match kept {
            Ok(Ok(Some(lease))) => {
                if let Err(error) = lease.release().await {
                    // The session ends with the connection anyway, which releases the lock.
                    tracing::warn!(%error, "releasing the ownership lease failed");
                }
                None
            }
            Ok(Ok(None)) => None,
            Ok(Err(error)) | Err(error) => Some(error),
        };
        metrics::gauge!("actor_tree_owner").set(0.0);
        close_pool(&state.db).await;
        if let Some(error) = lost {
            tracing::error!(%error, "stopped because this instance lost the ownership lease");
            return Err(error);
        }
        if let Some(Err(error)) = state.actors.exit() {
            tracing::error!(%error, "stopped because the actor tree failed");
            return Err(error.into());
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long closing the pool may wait, at exit, for connections still in use.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes the pool, waiting at most [`POOL_CLOSE_TIMEOUT`] for the connections still in use. By
/// now the requests have ended and the tree has stopped, so a connection still out belongs to a
/// task that is stuck (seen after a fenced-out owner's shutdown: one left idle in a transaction).
/// It must not keep a process that has to exit from exiting: the exit closes its socket and
/// PostgreSQL rolls its transaction back, and a fenced-out node's writes are refused anyway.
async fn close_pool(db: &PgPool) {
    if tokio::time::timeout(POOL_CLOSE_TIMEOUT, db.close())
        .await
        .is_err()
    {
        let in_use = db
            .size()
            .saturating_sub(u32::try_from(db.num_idle()).unwrap_or(u32::MAX));
        tracing::warn!(
            in_use,
            timeout = ?POOL_CLOSE_TIMEOUT,
            "connections were still in use when the pool closed; exiting without them"
        );
    }
}

/// Resolves with the reason once ownership fails (never, if its sender goes without one).
async fn fatal_reason(fatal: &mut watch::Receiver<Option<String>>) -> String {
    let reason = match fatal.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone(),
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

/// `actor_tree_owner`: 1 while this instance holds the lease (or runs without one), 0 on a standby.
fn owner_gauge(ownership: &Ownership) {
    let owner = !matches!(ownership, Ownership::Standby(_));
    metrics::gauge!("actor_tree_owner").set(if owner { 1.0 } else { 0.0 });
}

/// The ownership lease while the server runs: a standby waits for it and then starts the tree;
/// the owner checks it still holds it. Ends when `stop` is set, handing back the lease to release
/// once the tree has stopped, or with the error that `fatal` also reports to the server.
async fn keep_ownership(
    ownership: Ownership,
    state: AppState,
    fatal: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<OwnershipLease>> {
    let every = Duration::from_millis(state.settings.actors.lease_check_ms.max(1));
    let fence = state.actors.fence.clone();
    let mut lease = match ownership {
        Ownership::Unleased => {
            return tokio::select! {
                why = fence.revoked() => fenced(&fatal, why),
                _ = stop.wait_for(|stop| *stop) => Ok(None),
            };
        }
        Ownership::Owner(lease) => lease,
        Ownership::Standby(candidate) => {
            let take = candidate.take(&state.settings.database, every);
            let lease = tokio::select! {
                lease = take => lease,
                _ = stop.wait_for(|stop| *stop) => return Ok(None),
            };
            tracing::warn!("took the ownership lease: starting the actor tree");
            if let Err(error) = state.actors.start_tree().await {
                let error = error.context("starting the actor tree after taking the lease");
                fatal.send_replace(Some(format!("{error:#}")));
                return Err(error);
            }
            metrics::gauge!("actor_tree_owner").set(1.0);
            tracing::info!("the actor tree runs: this instance owns it");
            lease
        }
    };
    tokio::select! {
        why = lease.lost(every) => {
            fatal.send_replace(Some(why.clone()));
            Err(anyhow::anyhow!("the ownership lease was lost: {why}"))
        }
        // Another node took the partitions before this one's lease check noticed: the fence
        // refused a write, so the lease is gone too. Stop now rather than at the next check.
        why = fence.revoked() => fenced(&fatal, why),
        _ = stop.wait_for(|stop| *stop) => Ok(Some(lease)),
    }
}

/// The end of ownership when the fence refused a write: the tree stops and the process exits
/// non-zero, like a lost lease.
fn fenced(
    fatal: &watch::Sender<Option<String>>,
    why: String,
) -> anyhow::Result<Option<OwnershipLease>> {
    fatal.send_replace(Some(why.clone()));
    metrics::gauge!("actor_tree_owner").set(0.0);
    Err(anyhow::anyhow!(
        "this node no longer owns its partitions (the ownership lease was lost): {why}"
    ))
}

/// Creates the first admin from `bootstrap.admin_email`/`admin_password` when the shop has none.
async fn bootstrap_admin(
    settings: &Settings,
    db: &PgPool,
    identity: &Identity,
) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (
        settings.bootstrap.admin_email.as_deref(),
        settings.bootstrap.admin_password.clone(),
    ) else {
        return Ok(());
    };
    if store::any_admin(db).await? {
        return Ok(());
    }
    let email =
        Email::parse(email).map_err(|e| anyhow::anyhow!("bootstrap.admin_email {}", e.message))?;
    let password = NewPassword::parse(password)
        .map_err(|e| anyhow::anyhow!("bootstrap.admin_password {}", e.message))?;
    let name = UserName::parse("Administrator").map_err(|e| anyhow::anyhow!(e.message))?;
    identity
        .ensure_admin(db, email, name, Some(password))
        .await
        .map_err(|e| anyhow::anyhow!("creating the bootstrap admin: {e}"))?;
    tracing::info!("bootstrap admin is in place");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}
