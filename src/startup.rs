//! Building and running the server: configuration → database → actor tree → router → listener,
//! and the orderly shutdown in reverse.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::actors::Actors;
use crate::cache::Cache;
use crate::config::Settings;
use crate::identity::service::Identity;
use crate::identity::{Email, NewPassword, UserName, store};
use crate::media::MediaStore;
use crate::state::AppState;
use crate::{db, http};

pub struct Application {
    listener: TcpListener,
    state: AppState,
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
        let actors = Actors::start(&settings, &db, extra_children).await?;
        let cache = Cache::from_settings(&settings)?;
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
            media,
            image_decodes: http::images::decode_permits(),
        };
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives in-flight requests up to
    /// `server.shutdown_grace_secs` to finish, stops the actor tree and closes the pool.
    ///
    /// An actor tree that stops on its own (the root gave up on a child that kept failing) shuts
    /// the server down the same way and makes this return the error, so the process exits
    /// non-zero and an orchestrator restarts it instead of leaving it unready for good.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { listener, state } = self;
        let grace = state.settings.shutdown_grace();
        let app = http::app(state.clone());
        let signalled = Arc::new(Notify::new());
        let notify = signalled.clone();
        let actors = state.actors.clone();
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
        state.actors.shutdown().await;
        state.db.close().await;
        if let Some(Err(error)) = state.actors.system().exit() {
            tracing::error!(%error, "stopped because the actor tree failed");
            return Err(error.into());
        }
        tracing::info!("stopped");
        Ok(())
    }
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
