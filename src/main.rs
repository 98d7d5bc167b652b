//! The `mailconnect` binary: `serve`, `demo`, `migrate`, the operator
//! commands `keys rotate`, `accounts list` and `jwt`, and `openapi`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailconnect::config::Config;
use mailconnect::http::auth::{mint, Role};
use mailconnect::server;
use secrecy::ExposeSecret;

#[cfg(feature = "demo")]
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
    #[cfg(feature = "demo")]
    Demo {
        /// Listen address of the service (overrides MAILCONNECT_BIND;
        /// loopback only); the sandbox takes another free port on the same
        /// address.
        #[arg(long)]
        bind: Option<String>,
        /// SQLite URL of the demo's own database, deleted and recreated at
        /// every start [default: sqlite://mailconnect-demo.db].
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Print why a mailbox or provider can break and what to do about each
    /// cause (the README's troubleshooting table, in Markdown).
    Causes,
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Encryption keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Providers' client credentials: make a certificate, show what is
    /// configured (never a secret).
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Stored accounts (never their secrets).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Print the OpenAPI document of the HTTP API (as served at
    /// /api/openapi.json) and exit.
    Openapi,
    /// Mint a caller JWT signed with JWT_SECRET, for scripts and support.
    Jwt {
        /// The tenant the token acts for.
        #[arg(long)]
        tenant: String,
        /// admin (the admin page and routes) or service (the token route).
        #[arg(long, value_parser = ["admin", "service"])]
        role: String,
        /// The caller's user id.
        #[arg(long, default_value = "support")]
        sub: String,
        /// How long it is valid: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_lifetime)]
        lifetime: i64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-encrypt every stored secret under the first key of
    /// TOKEN_ENCRYPTION_KEYS. Resumable: run it again after an interruption.
    Rotate {
        #[arg(long)]
        database_url: Option<String>,
        /// Stop after re-encrypting this many secrets (rotate in steps).
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Write a new RSA key and self-signed certificate to one PEM file
    /// (mode 0600) for MICROSOFT_OAUTH_CLIENT_CERTIFICATE, and print the
    /// certificate to upload to the app registration and its thumbprints.
    NewCertificate {
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The file to create (never overwritten).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The certificate's common name.
        #[arg(long, default_value = "mailconnect")]
        subject: String,
    },
    /// Each configured provider's credential type, thumbprint and expiry,
    /// read from the environment as `serve` reads it.
    Show {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// List accounts: id, tenant, provider, address, status, expiry, errors.
    List {
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// connected, needs_reauth or disconnected.
        #[arg(long, value_parser = ["connected", "needs_reauth", "disconnected"])]
        status: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `90`, `90s`, `15m`, `12h`, `7d` → seconds.
fn parse_lifetime(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 3600, 15m, 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{raw:?}: the unit must be s, m, h or d")),
    };
    if !(1..=366 * 86_400).contains(&secs) {
        return Err("the lifetime must be between 1 second and 366 days".into());
    }
    Ok(secs)
}

fn required_env(var: &str) -> anyhow::Result<String> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| anyhow::anyhow!("{var}: is required"))
}

async fn open_db(database_url: Option<String>) -> anyhow::Result<mailconnect::db::Db> {
    override_env("DATABASE_URL", database_url);
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://mailconnect.db".into());
    let db = mailconnect::db::Db::connect(&url).await?;
    db.migrate().await?;
    Ok(db)
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
        Command::Credentials {
            command: CredentialsCommand::NewCertificate { days, out, subject },
        } => {
            let made = mailconnect::ops::new_certificate(days, &subject, &out)?;
            println!(
                "Wrote the key and certificate to {} (mode 0600).",
                out.display()
            );
            println!("Set MICROSOFT_OAUTH_CLIENT_CERTIFICATE={}", out.display());
            println!();
            println!("Upload this certificate (only this, never the key) in Entra admin center →");
            println!("App registrations → your app → Certificates & secrets → Certificates →");
            println!("Upload certificate (save it as mailconnect.cer or .pem):");
            println!();
            print!("{}", made.certificate_pem);
            println!();
            println!(
                "Thumbprint (SHA-1, as Entra shows it): {}",
                made.sha1_thumbprint
            );
            println!("x5t#S256:                              {}", made.x5t_s256);
            println!(
                "Expires:                               {}",
                mailconnect::rfc3339(made.not_after)
            );
            Ok(())
        }
        Command::Credentials {
            command: CredentialsCommand::Show { json },
        } => {
            let env = mailconnect::config::process_env();
            let bind = mailconnect::config::listen_address(&env, false)?;
            let providers = mailconnect::oauth::registry::ProviderConfig::all_from_env(&env, bind)?;
            let lines = mailconnect::ops::show_credentials(&providers);
            if json {
                for line in &lines {
                    println!("{}", serde_json::to_string(line)?);
                }
            } else {
                println!(
                    "{:<10}  {:<12}  {:<40}  expires",
                    "provider", "credential", "thumbprint"
                );
                for l in &lines {
                    println!(
                        "{:<10}  {:<12}  {:<40}  {}",
                        l.provider,
                        l.kind,
                        l.thumbprint,
                        l.expires_at.as_deref().unwrap_or("-")
                    );
                }
                if lines.is_empty() {
                    println!("(no provider is configured)");
                }
            }
            Ok(())
        }
        Command::Causes => {
            print!("{}", mailconnect::diagnosis::markdown_table());
            Ok(())
        }
        Command::Migrate { database_url } => {
            open_db(database_url).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    database_url,
                    limit,
                },
        } => {
            let keys = mailconnect::crypto::Keyring::parse(&required_env("TOKEN_ENCRYPTION_KEYS")?)
                .map_err(|e| anyhow::anyhow!("TOKEN_ENCRYPTION_KEYS: {e}"))?;
            let db = open_db(database_url).await?;
            let r = mailconnect::ops::rotate_keys(&db, &keys, limit).await?;
            println!(
                "key {:?}: {} accounts scanned, {} secrets re-encrypted, {} already current, {} unreadable, {} changed meanwhile{}",
                keys.primary_kid(),
                r.accounts_scanned,
                r.reencrypted,
                r.already_current,
                r.unreadable,
                r.skipped_concurrent,
                if r.incomplete { "; stopped at --limit: run again to go on" } else { "" }
            );
            if r.unreadable > 0 {
                anyhow::bail!(
                    "{} secrets could not be opened with the configured keys (see the log)",
                    r.unreadable
                );
            }
            Ok(())
        }
        Command::Accounts {
            command:
                AccountsCommand::List {
                    database_url,
                    tenant,
                    status,
                    json,
                },
        } => {
            let db = open_db(database_url).await?;
            let rows =
                mailconnect::ops::list_accounts(&db, tenant.as_deref(), status.as_deref()).await?;
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                println!(
                    "{:<36}  {:<16}  {:<9}  {:<32}  {:<12}  {:<9}  {:<20}  last error",
                    "id", "tenant", "provider", "email", "status", "kind", "token expires"
                );
                for r in &rows {
                    println!(
                        "{:<36}  {:<16}  {:<9}  {:<32}  {:<12}  {:<9}  {:<20}  {}",
                        r.id,
                        r.tenant_id,
                        r.provider,
                        r.email,
                        r.status,
                        r.kind,
                        r.token_expires_at
                            .map(mailconnect::rfc3339)
                            .unwrap_or_default(),
                        r.last_error.as_deref().unwrap_or("")
                    );
                }
                println!("{} accounts", rows.len());
            }
            Ok(())
        }
        Command::Jwt {
            tenant,
            role,
            sub,
            lifetime,
        } => {
            let secret = required_env("JWT_SECRET")?;
            let role = if role == "admin" {
                Role::Admin
            } else {
                Role::Service
            };
            println!("{}", mint(secret.as_bytes(), &sub, &tenant, role, lifetime));
            Ok(())
        }
        Command::Openapi => {
            println!("{}", mailconnect::http::openapi::document_json());
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo { bind, database_url } => {
            override_env("MAILCONNECT_BIND", bind);
            let env = mailconnect::config::process_env();
            let bind = mailconnect::config::listen_address(&env, true)?;
            demo::run(bind, database_url).await
        }
        Command::Serve {
            dev,
            bind,
            database_url,
        } => {
            override_env("MAILCONNECT_BIND", bind);
            override_env("DATABASE_URL", database_url);
            let config = Config::from_process_env(dev)?;
            let app = server::build(&config, config.provider_timeout).await?;
            let listener = tokio::net::TcpListener::bind(config.bind)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("MAILCONNECT_BIND: cannot listen on {}: {e}", config.bind)
                })?;
            let addr = listener.local_addr()?;
            if dev {
                print_dev_banner(&config, addr);
            }
            let providers: Vec<&str> = config.providers.iter().map(|p| p.kind().as_str()).collect();
            tracing::info!(
                %addr,
                providers = %providers.join(","),
                database = %app.db.describe(),
                refresh_concurrency = config.refresher.concurrency,
                refresh_poll_secs = config.refresher.poll.as_secs(),
                refresh_lease_secs = config.schedule.lease_secs,
                provider_timeout_secs = config.provider_timeout.as_secs(),
                "mailconnect listening"
            );
            server::serve(app, listener, config.serving(), server::shutdown_signal()).await
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
