//! `mailconnect demo`: the service and a sandbox identity provider standing
//! in for Microsoft and Google, in one process, on loopback. **Never for
//! production.**
//!
//! - The sandbox is `mailconnect-sandbox` (the same fakes the tests use),
//!   with its interactive sign-in/consent page on and a few made-up users.
//!   Both fakes share one extra loopback port: Microsoft under `/microsoft`
//!   (authority and Graph), Google under `/google`.
//! - The service runs exactly as `serve --dev` would (secrets made up for
//!   the run unless set in the environment), with both providers configured
//!   against the sandbox and redirect URIs to its own callback routes.
//! - Its data goes to a separate SQLite file, deleted and recreated at every
//!   start: the encryption keys are made up per run, so an older demo's
//!   tokens could not be read anyway.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use axum::Router;
use mailconnect::config::{random_secret, Config, Env};
use mailconnect::core::links::{self, CreateLinkBody};
use mailconnect::domain::TenantId;
use mailconnect::http::auth::{mint, Caller, Role};
use mailconnect::server;
use mailconnect_sandbox::{FakeExchange, FakeUser, GoogleUser, WORK_TENANT_ID};
use mailconnect_sandbox::{FakeGoogle, FakeGoogleConfig, FakeMicrosoft, FakeMicrosoftConfig};
use secrecy::ExposeSecret;

/// Where the demo keeps its data unless `--database-url` says otherwise.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://mailconnect-demo.db";
/// The tenant of the printed admin JWT.
const TENANT: &str = "demo-tenant";
/// The admin the banner's sign-in link signs in as.
const DEMO_ADMIN: &str = "demo-admin";

/// The admin of the sandbox's Microsoft directory (contoso.example).
const DIRECTORY_ADMIN: &str = "adele.vance@contoso.example";
/// A shared mailbox of the sandbox's Exchange, with Full Access and Send As
/// for [`SHARED_DELEGATE`].
const SHARED_MAILBOX: &str = "support@contoso.example";
const SHARED_DELEGATE: &str = "megan.bowen@contoso.example";
/// A mailbox the app's service principal may open (after admin consent).
const APP_MAILBOX: &str = "archive@contoso.example";

/// The sandbox's Microsoft users: two work accounts and a personal one.
fn microsoft_users() -> Vec<FakeUser> {
    vec![
        FakeUser::work("adele.vance@contoso.example"),
        FakeUser::work("megan.bowen@contoso.example"),
        FakeUser::personal("someone@outlook.example"),
    ]
}

/// The sandbox's Google users: a consumer and a Workspace account.
fn google_users() -> Vec<GoogleUser> {
    vec![
        GoogleUser::gmail("alex@gmail.example"),
        GoogleUser::workspace("sam@workspace.example"),
    ]
}

/// Variables the demo takes from the environment, as `serve --dev` does;
/// everything else is set by the demo itself.
const PASSED_THROUGH: [&str; 10] = [
    "JWT_SECRET",
    "OAUTH_STATE_SECRET",
    "TOKEN_ENCRYPTION_KEYS",
    "MAILCONNECT_REFRESHER",
    "MAILCONNECT_REFRESH_LEAD_SECS",
    "MAILCONNECT_REFRESH_IDLE_SECS",
    "MAILCONNECT_REFRESH_CONCURRENCY",
    "MAILCONNECT_REFRESH_LEASE_SECS",
    "MAILCONNECT_REFRESH_POLL_SECS",
    // To see the admin page's warning before the secret expires.
    "MICROSOFT_OAUTH_CLIENT_SECRET_EXPIRES_AT",
];

/// Runs the demo on `bind`, a loopback address read as `serve` reads its
/// own ([`mailconnect::config::listen_address`]).
pub async fn run(bind: SocketAddr, database_url: Option<String>) -> anyhow::Result<()> {
    let database_url = database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let db_file = demo_sqlite_file(&database_url)?;

    // The service's port first: the sandbox must know the redirect URIs.
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("MAILCONNECT_BIND: cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    let sandbox_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
        .await
        .context("cannot open a loopback port for the sandbox identity provider")?;
    let sandbox = format!("http://{}", sandbox_listener.local_addr()?);

    let ms_client_id = uuid::Uuid::new_v4().to_string();
    let ms_secret = random_secret();
    let g_client_id = format!(
        "mailconnect-demo-{}.apps.googleusercontent.com",
        &ms_client_id[..8]
    );
    let g_secret = format!("GOCSPX-{}", random_secret());
    let callback = |p: &str| format!("http://{addr}/api/oauth/{p}/callback");

    let mut ms_cfg = FakeMicrosoftConfig::new(&ms_client_id, &ms_secret, callback("microsoft"));
    ms_cfg.users = microsoft_users();
    ms_cfg.interactive = true;
    ms_cfg.app_name = "mailconnect (demo)".into();
    let ms = FakeMicrosoft::build(ms_cfg, &format!("{sandbox}/microsoft"))?;
    // The work accounts' directory, with Adele as its admin: "Grant admin
    // consent" works, and then app mailboxes of contoso.example can be added.
    ms.add_directory(WORK_TENANT_ID, &["contoso.example"]);
    ms.set_directory_admin(WORK_TENANT_ID, DIRECTORY_ADMIN);
    let mut g_cfg = FakeGoogleConfig::new(&g_client_id, &g_secret, callback("google"));
    g_cfg.users = google_users();
    g_cfg.interactive = true;
    g_cfg.app_name = "mailconnect (demo)".into();
    let google = FakeGoogle::build(g_cfg, &format!("{sandbox}/google"))?;

    // Exchange Online's stand-in: IMAP and SMTP on loopback with real TLS,
    // checking the sandbox's tokens, so "verify" works for every kind.
    let exchange = FakeExchange::start(ms.clone())
        .await
        .context("cannot start the sandbox mail servers")?;
    exchange.add_mailbox(SHARED_MAILBOX);
    exchange.grant_full_access(SHARED_MAILBOX, SHARED_DELEGATE);
    exchange.grant_send_as(SHARED_MAILBOX, SHARED_DELEGATE);
    exchange.add_mailbox(APP_MAILBOX);
    exchange.grant_app_access(APP_MAILBOX, WORK_TENANT_ID);
    let ca_file = format!("{db_file}.sandbox-ca.pem");
    std::fs::write(&ca_file, exchange.ca_pem())
        .with_context(|| format!("cannot write the sandbox CA to {ca_file}"))?;

    let mut vars: HashMap<&str, String> = HashMap::new();
    vars.insert("MICROSOFT_IMAP_HOST", exchange.imap_addr().to_string());
    vars.insert("MICROSOFT_SMTP_HOST", exchange.smtp_addr().to_string());
    vars.insert("MAILCONNECT_EXTRA_CA_FILE", ca_file);
    vars.insert("MAILCONNECT_BIND", addr.to_string());
    vars.insert("DATABASE_URL", database_url.clone());
    vars.insert("MICROSOFT_OAUTH_CLIENT_ID", ms_client_id);
    vars.insert("MICROSOFT_OAUTH_CLIENT_SECRET", ms_secret);
    vars.insert("MICROSOFT_OAUTH_TENANT_ID", "common".into());
    vars.insert("MICROSOFT_OAUTH_REDIRECT_URI", callback("microsoft"));
    vars.insert("MICROSOFT_OAUTH_AUTHORITY", ms.base_url());
    vars.insert("MICROSOFT_GRAPH_URL", ms.base_url());
    vars.insert("GOOGLE_OAUTH_CLIENT_ID", g_client_id);
    vars.insert("GOOGLE_OAUTH_CLIENT_SECRET", g_secret);
    vars.insert("GOOGLE_OAUTH_REDIRECT_URI", callback("google"));
    vars.insert("GOOGLE_OAUTH_AUTH_URL", google.auth_url());
    vars.insert("GOOGLE_OAUTH_TOKEN_URL", google.token_url());
    vars.insert("GOOGLE_OAUTH_USERINFO_URL", google.userinfo_url());
    vars.insert("GOOGLE_OAUTH_REVOKE_URL", google.revoke_url());
    vars.insert("GOOGLE_OAUTH_JWKS_URL", google.jwks_url());
    let env = Env(move |k: &str| {
        vars.get(k).cloned().or_else(|| {
            PASSED_THROUGH
                .contains(&k)
                .then(|| std::env::var(k).ok())
                .flatten()
        })
    });
    let config = Config::from_env(&env, true)?;

    // A fresh database for every run.
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let f = format!("{db_file}{suffix}");
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("--database-url: cannot delete the old demo file {f}: {e}"),
        }
    }
    let app = server::build(&config, config.provider_timeout).await?;

    let sandbox_router = Router::new()
        .route("/", axum::routing::get(sandbox_index))
        .nest("/microsoft", ms.router())
        .nest("/google", google.router());
    let sandbox_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(sandbox_listener, sandbox_router).await {
            tracing::error!(error = %e, "the sandbox identity provider stopped");
        }
    });

    // A connect link to play the mailbox owner with, made by the admin
    // whose sign-in link the banner prints.
    let admin = Caller {
        user_id: DEMO_ADMIN.into(),
        tenant: TenantId::parse(TENANT).map_err(anyhow::Error::msg)?,
        role: Some(Role::Admin),
    };
    let link = links::create(&app, &admin, CreateLinkBody::default())
        .await
        .context("cannot make the demo's connect link")?;

    print_banner(&config, addr, &sandbox, &db_file, &link.url);
    tracing::info!(%addr, sandbox = %sandbox, "mailconnect demo listening");
    let result = server::serve(app, listener, config.serving(), server::shutdown_signal()).await;
    sandbox_task.abort();
    exchange.shutdown();
    result
}

/// The file behind a `sqlite:` URL; the demo refuses anything else, and the
/// database that `serve` uses by default, since it deletes the file.
fn demo_sqlite_file(url: &str) -> anyhow::Result<String> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        bail!("--database-url: demo mode runs on SQLite only (its file is recreated at every start), e.g. {DEFAULT_DATABASE_URL}");
    };
    let file = rest.split('?').next().unwrap_or("").to_string();
    if file.is_empty() || file == ":memory:" {
        bail!("--database-url: give the demo a file, e.g. {DEFAULT_DATABASE_URL}");
    }
    let serve_default = std::path::Path::new("mailconnect.db");
    let same_as_serve = std::path::Path::new(&file) == serve_default
        || std::env::var("DATABASE_URL").is_ok_and(|v| v == url);
    if same_as_serve {
        bail!("--database-url: {url} looks like the database of `serve`; the demo deletes its file at every start, so give it its own (default {DEFAULT_DATABASE_URL})");
    }
    Ok(file)
}

async fn sandbox_index() -> &'static str {
    "mailconnect demo: sandbox identity provider, NOT Microsoft or Google.\n\
     /microsoft  stands in for login.microsoftonline.com and graph.microsoft.com\n\
     /google     stands in for accounts.google.com and oauth2.googleapis.com\n"
}

fn print_banner(config: &Config, addr: SocketAddr, sandbox: &str, db_file: &str, link: &str) {
    let secret = config.jwt_secret.expose_secret().as_bytes();
    let admin = mint(secret, DEMO_ADMIN, TENANT, Role::Admin, 12 * 3600);
    let service = mint(secret, "demo-worker", TENANT, Role::Service, 12 * 3600);
    let ms = microsoft_users()
        .iter()
        .map(|u| u.user_principal_name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let g = google_users()
        .iter()
        .map(|u| u.email.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let rule = "=".repeat(78);
    let lines = [
        String::new(),
        rule.clone(),
        "  mailconnect DEMO MODE — NOT FOR PRODUCTION".into(),
        rule.clone(),
        "  Sign-ins go to a sandbox identity provider on this computer that stands in".into(),
        "  for Microsoft and Google; nothing reaches the real ones. Secrets and keys".into(),
        format!("  are made up for this run, so the demo database ({db_file})"),
        "  is deleted and recreated at every start.".into(),
        String::new(),
        format!("  Open the admin page (this link signs you in as the admin of {TENANT}):"),
        String::new(),
        format!("    http://{addr}/#token={admin}"),
        String::new(),
        "  Then click \"Connect with Microsoft\" or \"Connect with Google\", pick a".into(),
        "  sandbox user and Accept (or Cancel). No passwords.".into(),
        format!("    Microsoft users: {ms}"),
        format!("    Google users:    {g}"),
        format!("  Admin consent (Microsoft card): sign in as {DIRECTORY_ADMIN}, the"),
        "  directory's admin; then \"Add a shared or app mailbox\" opens e.g.".into(),
        "  support@contoso.example through Megan, or with the app's own access.".into(),
        "  To play a mailbox's owner, open this connect link in a private window".into(),
        "  (it connects one mailbox, once; the admin page makes more):".into(),
        String::new(),
        format!("    {link}"),
        String::new(),
        format!("  Sandbox identity provider: {sandbox}/"),
        String::new(),
        format!("  Service JWT for worker calls (tenant {TENANT}, 12 h):"),
        format!("    {service}"),
        format!("  e.g. curl -s -X POST -H \"Authorization: Bearer $SERVICE_JWT\" http://{addr}/api/accounts/<id>/token"),
        String::new(),
        "  Ctrl-C stops everything.".into(),
        rule,
    ];
    println!("{}", lines.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_database_is_its_own_sqlite_file() {
        assert_eq!(
            demo_sqlite_file(DEFAULT_DATABASE_URL).unwrap(),
            "mailconnect-demo.db"
        );
        assert_eq!(
            demo_sqlite_file("sqlite:///tmp/x/demo.db?mode=rwc").unwrap(),
            "/tmp/x/demo.db"
        );
        for refused in [
            "postgres://u@localhost/mailconnect",
            "sqlite://mailconnect.db",
            "sqlite::memory:",
            "sqlite://",
        ] {
            assert!(demo_sqlite_file(refused).is_err(), "{refused}");
        }
    }
}
