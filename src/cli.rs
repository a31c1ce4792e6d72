//! The command line: `shop serve` (the default), `shop migrate`, and the admin commands that later
//! domains add.

use clap::{Parser, Subcommand};

use secrecy::SecretString;

use crate::config::Settings;
use crate::identity::service::Identity;
use crate::identity::{Email, NewPassword, UserName};
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
    /// Create an admin account, or promote an existing user to admin.
    CreateAdmin {
        #[arg(long)]
        email: String,
        /// Display name of a new account.
        #[arg(long, default_value = "Administrator")]
        name: String,
        /// Read the password from standard input (one line). Otherwise it comes from the
        /// SHOP_ADMIN_PASSWORD environment variable. It is never echoed or logged.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Fill the database with data to try the shop with (idempotent).
    Seed {
        /// A demo catalog: categories in two levels, 50+ products, variable products, a bundle.
        #[arg(long)]
        demo: bool,
    },
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
        Command::CreateAdmin {
            email,
            name,
            password_stdin,
        } => create_admin(settings, &email, &name, password_stdin).await,
        Command::Seed { demo } => {
            if !demo {
                anyhow::bail!("say what to seed: --demo");
            }
            let pool = db::prepare(&settings.database).await?;
            let seeded = crate::catalog::seed::demo(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
            pool.close().await;
            tracing::info!(
                categories = seeded.categories,
                products = seeded.products,
                "demo catalog seeded"
            );
            Ok(())
        }
    }
}

async fn create_admin(
    settings: Settings,
    email: &str,
    name: &str,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email {}", e.message))?;
    let name = UserName::parse(name).map_err(|e| anyhow::anyhow!("--name {}", e.message))?;
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Some(line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        std::env::var("SHOP_ADMIN_PASSWORD").ok()
    };
    let password = password
        .filter(|p| !p.is_empty())
        .map(|p| NewPassword::parse(SecretString::from(p)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("password {}", e.message))?;
    let pool = db::prepare(&settings.database).await?;
    let identity = Identity::new(&settings).await?;
    let created = identity
        .ensure_admin(&pool, email.clone(), name, password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    pool.close().await;
    if created {
        tracing::info!(email = %email, "admin created");
    } else {
        tracing::info!(email = %email, "existing user promoted to admin");
    }
    Ok(())
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
