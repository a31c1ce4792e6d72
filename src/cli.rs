//! The command line: `shop serve` (the default), `shop migrate`, and the admin commands that later
//! domains add.

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::startup::{Application, shutdown_signal};
use crate::{db, telemetry};

#[derive(Debug, Parser)]
#[command(name = "shop", version, about = "E-commerce backend")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Create the database if needed and apply pending migrations, then exit.
    Migrate,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let pool = db::prepare(&settings.database).await?;
            pool.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let profile = settings.profile.as_str();
    let app = Application::build(settings).await?;
    let address = app.local_addr()?;
    tracing::info!(%address, profile, "listening");
    // The one line scripts and tests read to find the port (it may be 0 in the settings).
    #[allow(clippy::print_stdout)]
    {
        println!("shop listening on http://{address} (API docs: http://{address}/docs)");
    }
    app.run_until(shutdown_signal()).await
}
