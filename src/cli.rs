//! The command line: `shop serve` (the default), `shop migrate`, and the admin commands: accounts,
//! demo data, and the on-call reports (`reconcile`, `outbox`, `refunds`).
//!
//! Exit codes: 0 done (for `reconcile`: every variant and coupon reconciles); 1 the command could
//! not run (configuration, database, broker), with the reason on stderr; 2 `reconcile` found
//! variants or coupons that do not add up, named in the tables it prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use secrecy::SecretString;

use crate::config::{JobsBackend, Settings};
use crate::identity::service::Identity;
use crate::identity::{Email, NewPassword, UserName};
use crate::messaging::broker::Topology;
use crate::startup::{Application, shutdown_signal};
use crate::{db, oncall, telemetry};

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
    /// Check stock conservation per variant and coupon uses per coupon, and print on hand / held
    /// / sold and held / committed. Exits 2 when a variant or a coupon does not reconcile (the
    /// README's Commands section says what is checked).
    Reconcile,
    /// Print the outbox: messages pending per topic, the oldest one's age, and dead letters.
    Outbox,
    /// Print the refunds owed: decided, not yet taken by the payment provider.
    Refunds,
}

/// A reconciliation mismatch: distinct from 1 (could not run) so a cron job can tell them apart.
const EXIT_MISMATCH: u8 = 2;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    let _telemetry = telemetry::init(&settings.log, &settings.traces)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Reconcile => return reconcile(&settings).await,
        Command::Outbox => outbox(&settings).await?,
        Command::Refunds => refunds(&settings).await?,
        command => run_service(settings, command).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_service(settings: Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Reconcile | Command::Outbox | Command::Refunds => Ok(()),
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

/// The on-call commands read what is there: no database is created, no migration applied.
async fn read_only_pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    db::connect(&settings.database)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))
}

#[allow(clippy::print_stdout)]
async fn reconcile(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = read_only_pool(settings).await?;
    let reconciliation = oncall::reconcile(&pool).await?;
    pool.close().await;
    print!("{}", oncall::reconciliation_table(&reconciliation));
    let mismatched: Vec<_> = reconciliation.mismatched().collect();
    println!(
        "{} variant(s), {} mismatched",
        reconciliation.variants.len(),
        mismatched.len()
    );
    if !reconciliation.coupons.is_empty() {
        print!("{}", oncall::coupon_table(&reconciliation.coupons));
    }
    let coupons: Vec<_> = reconciliation.mismatched_coupons().collect();
    println!(
        "{} coupon(s) in use, {} mismatched",
        reconciliation.coupons.len(),
        coupons.len()
    );
    if mismatched.is_empty() && coupons.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for variant in &mismatched {
        eprintln!(
            "shop: variant {} ({}) does not reconcile: {}",
            variant.sku,
            variant.variant_id,
            variant.problems.join("; ")
        );
    }
    for coupon in &coupons {
        eprintln!(
            "shop: coupon {} ({}) does not reconcile: {}",
            coupon.code,
            coupon.coupon_id,
            coupon.problems.join("; ")
        );
    }
    Ok(ExitCode::from(EXIT_MISMATCH))
}

#[allow(clippy::print_stdout)]
async fn outbox(settings: &Settings) -> anyhow::Result<()> {
    let pool = read_only_pool(settings).await?;
    let topics = oncall::outbox(&pool).await?;
    pool.close().await;
    let pending: i64 = topics.iter().map(|t| t.pending).sum();
    let dead: i64 = topics.iter().map(|t| t.dead_lettered).sum();
    print!("{}", oncall::outbox_table(&topics));
    println!("outbox: {pending} pending, {dead} dead-lettered by the in-process dispatcher");
    if settings.jobs.backend == JobsBackend::Rabbitmq {
        let topology = Topology::from_settings(&settings.amqp);
        let depth = topology
            .dead_letter_depth()
            .await
            .map_err(|e| anyhow::anyhow!("reading the dead-letter queue: {e}"))?;
        println!(
            "RabbitMQ dead-letter queue {}: {depth} message(s)",
            topology.dead_letter_queue
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn refunds(settings: &Settings) -> anyhow::Result<()> {
    let pool = read_only_pool(settings).await?;
    let owed = oncall::owed_refunds(&pool).await?;
    pool.close().await;
    print!("{}", oncall::refunds_table(&owed));
    println!("{} refund(s) owed", owed.len());
    Ok(())
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
