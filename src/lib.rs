//! mailconnect connects a tenant's mailboxes to Microsoft 365 / Outlook (and
//! other OAuth providers), keeps their tokens encrypted and fresh, and hands
//! mail workers a fresh access token and XOAUTH2 string just before they log
//! in to IMAP or SMTP.
//!
//! # Layout
//! From the bottom up: each module uses only those above it in this list
//! (`scripts/check-cycles.py` keeps it so; `docs/architecture.md` draws it).
//! - [`domain`]: ids, addresses, providers, callers and mail servers,
//!   parsed once.
//! - [`diagnosis`]: the closed list of causes of a failure, where each
//!   comes from and what an admin does about it.
//! - [`env`]: reading settings from the environment, one line per problem.
//! - [`crypto`]: AES-256-GCM sealing of stored secrets, with a key ring and
//!   a typed column for every place a secret is stored.
//! - [`tls`]: the roots trusted for TLS (system plus an operator's file),
//!   and the verifier that trusts a certificate of that file as it stands.
//! - [`xoauth2`]: the SASL XOAUTH2 and OAUTHBEARER initial responses.
//! - [`db`]: the pool, migrations and every query (SQLite or PostgreSQL).
//! - [`oauth`]: the provider model, token endpoint client, id_token checks,
//!   PKCE, the signed state, one module per provider and their registry.
//! - [`webhooks`]: signed event webhooks: the outbox and the deliverer.
//! - [`metrics`]: Prometheus names, the recorder, and database gauges.
//! - [`verify`]: real IMAP and SMTP logins with a fresh token, reported.
//! - [`ops`]: operator tasks behind the CLI (key rotation, account list).
//! - [`core`]: what the service does, free of HTTP: the flow, refresh (one
//!   refresh, the token route's gate, the background sweep, provider
//!   health), each with its own error type.
//! - [`config`]: the environment variables of DESIGN.md, checked at start-up.
//! - [`app`]: the HTTP layer's state: the core and the caller key.
//! - [`http`]: the axum routes, caller authentication, the one mapping of
//!   core errors to API answers, and the connection loop.
//! - [`server`]: start-up and shutdown of `serve` and its tasks.

pub mod app;
pub mod config;
pub mod core;
pub mod crypto;
pub mod db;
pub mod diagnosis;
pub mod domain;
pub mod env;
pub mod http;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod server;
pub mod tls;
pub mod verify;
pub mod webhooks;
pub mod xoauth2;

/// Unix seconds now.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// RFC 3339 in UTC with a `Z`, as every time in the API is written.
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
