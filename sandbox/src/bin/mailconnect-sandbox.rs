//! `mailconnect-sandbox`: serves the fake Microsoft identity platform + Graph
//! ([`mailconnect_sandbox::FakeMicrosoft`]) on a fixed address, so that a
//! separately started `mailconnect serve` (benchmarks) can use it as
//! `MICROSOFT_OAUTH_AUTHORITY` and `MICROSOFT_GRAPH_URL`. (`mailconnect demo`
//! embeds both fakes itself, with their interactive consent page.)
//!
//! ```text
//! mailconnect-sandbox --bind 127.0.0.1:9100 \
//!     --client-id sandbox-client --client-secret sandbox-secret \
//!     --redirect-uri http://127.0.0.1:8080/api/oauth/microsoft/callback
//! ```
//!
//! Every flag may also come from the environment (`SANDBOX_BIND`,
//! `SANDBOX_CLIENT_ID`, `SANDBOX_CLIENT_SECRET`, `SANDBOX_REDIRECT_URI`).
//! Prints the base URL as the first line of stdout once it accepts
//! connections, then serves until killed (SIGINT or SIGTERM).
//!
//! **Test/demo only**: it signs id_tokens with a key checked into the
//! repository and lets anyone sign in as its default user
//! (`ops@contoso.com`) without a password.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use mailconnect_sandbox::{FakeMicrosoft, FakeMicrosoftConfig};

const USAGE: &str = "usage: mailconnect-sandbox --bind 127.0.0.1:PORT --client-id ID \
--client-secret SECRET --redirect-uri URI [--access-token-lifetime SECS]";

struct Args {
    bind: SocketAddr,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    /// Access tokens (and app tokens) live this long; default 3600 s.
    access_token_lifetime: std::time::Duration,
}

impl Args {
    /// Flags win over the environment; the address must be loopback, since
    /// anyone who can reach the sandbox can sign in.
    fn parse() -> anyhow::Result<Args> {
        let mut bind = std::env::var("SANDBOX_BIND").ok();
        let mut client_id = std::env::var("SANDBOX_CLIENT_ID").ok();
        let mut client_secret = std::env::var("SANDBOX_CLIENT_SECRET").ok();
        let mut redirect_uri = std::env::var("SANDBOX_REDIRECT_URI").ok();
        let mut lifetime = std::env::var("SANDBOX_ACCESS_TOKEN_LIFETIME").ok();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let slot = match flag.as_str() {
                "--bind" => &mut bind,
                "--client-id" => &mut client_id,
                "--client-secret" => &mut client_secret,
                "--redirect-uri" => &mut redirect_uri,
                "--access-token-lifetime" => &mut lifetime,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            };
            *slot = Some(
                args.next()
                    .with_context(|| format!("{flag} needs a value"))?,
            );
        }
        let bind: SocketAddr = bind
            .unwrap_or_else(|| "127.0.0.1:0".into())
            .parse()
            .context("--bind: expected IP:PORT")?;
        if !bind.ip().is_loopback() {
            bail!("--bind: the sandbox serves loopback only, got {bind}");
        }
        let lifetime = match lifetime {
            None => 3600,
            Some(raw) => raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= 2)
                .context("--access-token-lifetime: whole seconds, at least 2")?,
        };
        Ok(Args {
            access_token_lifetime: std::time::Duration::from_secs(lifetime),
            bind,
            client_id: client_id.context("--client-id is required")?,
            client_secret: client_secret.context("--client-secret is required")?,
            redirect_uri: redirect_uri.context("--redirect-uri is required")?,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("--bind: cannot listen on {}", args.bind))?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let mut cfg = FakeMicrosoftConfig::new(args.client_id, args.client_secret, args.redirect_uri);
    cfg.access_token_lifetime = args.access_token_lifetime;
    let ms = FakeMicrosoft::build(cfg, &base_url)?;
    // The default user's directory, with that user as its admin: admin
    // consent and app tokens work against the standalone sandbox too.
    ms.add_directory(mailconnect_sandbox::WORK_TENANT_ID, &["contoso.com"]);
    ms.set_directory_admin(mailconnect_sandbox::WORK_TENANT_ID, "ops@contoso.com");
    println!("{base_url}");
    std::io::stdout().flush()?;
    axum::serve(listener, ms.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
