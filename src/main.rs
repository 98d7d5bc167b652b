//! The `mailconnect` binary: `serve`, `demo` and `migrate`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailconnect::config::Config;
use mailconnect::http::auth::{mint, Role};
use mailconnect::server;
use secrecy::ExposeSecret;

mod demo;

#[derive(Parser)]
#[command(
    name = "mailconnect",
    version,
    about = "OAuth 2.0 for IMAP/SMTP mailboxes: connect, keep fresh, hand out XOAUTH2"
)]
struct Cli {
    /// Log as JSON lines (also MAILCONNECT_LOG_FORMAT=json).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, then serve the API.
    Serve {
        /// Make up missing secrets for this run, bind loopback only, and
        /// print ready admin and service JWTs. Never for production.
        #[arg(long)]
        dev: bool,
        /// Listen address (overrides MAILCONNECT_BIND).
        #[arg(long)]
        bind: Option<String>,
        /// Database URL (overrides DATABASE_URL).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Try it out: the service plus a sandbox identity provider standing in
    /// for Microsoft and Google (sign-in/consent page, made-up users), on
    /// loopback, with a ready admin link. DEMO MODE, NOT FOR PRODUCTION.
    Demo {
        /// Listen address of the service (loopback only); the sandbox takes
        /// another free port on the same address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// SQLite URL of the demo's own database, deleted and recreated at
        /// every start [default: sqlite://mailconnect-demo.db].
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        database_url: Option<String>,
    },
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json || std::env::var("MAILCONNECT_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn override_env(var: &str, value: Option<String>) {
    if let Some(v) = value {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var(var, v);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailconnect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate { database_url } => {
            override_env("DATABASE_URL", database_url);
            let url =
                std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://mailconnect.db".into());
            let db = mailconnect::db::Db::connect(&url).await?;
            db.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Demo { bind, database_url } => demo::run(&bind, database_url).await,
        Command::Serve {
            dev,
            bind,
            database_url,
        } => {
            override_env("MAILCONNECT_BIND", bind);
            override_env("DATABASE_URL", database_url);
            let config = Config::from_process_env(dev)?;
            let app = server::build(&config, server::PROVIDER_TIMEOUT).await?;
            let listener = tokio::net::TcpListener::bind(config.bind)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("MAILCONNECT_BIND: cannot listen on {}: {e}", config.bind)
                })?;
            let addr = listener.local_addr()?;
            if dev {
                print_dev_banner(&config, addr);
            }
            tracing::info!(
                %addr,
                microsoft = config.microsoft.is_some(),
                google = config.google.is_some(),
                "mailconnect listening"
            );
            server::serve(
                app,
                listener,
                config.refresher.clone(),
                server::shutdown_signal(),
            )
            .await
        }
    }
}

fn print_dev_banner(config: &Config, addr: std::net::SocketAddr) {
    let secret = config.jwt_secret.expose_secret().as_bytes();
    let admin = mint(secret, "dev-admin", "dev-tenant", Role::Admin, 12 * 3600);
    let service = mint(secret, "dev-worker", "dev-tenant", Role::Service, 12 * 3600);
    println!(
        "\nmailconnect dev mode — NOT for production: secrets are made up for this run.\n\
         listening on http://{addr}\n\n\
         admin JWT (tenant dev-tenant, 12 h):\n  {admin}\n\
         service JWT (tenant dev-tenant, 12 h):\n  {service}\n\n\
         try:\n  curl -s -H \"Authorization: Bearer {admin}\" http://{addr}/api/oauth/status\n"
    );
}
