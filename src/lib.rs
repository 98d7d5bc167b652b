//! mailconnect connects a tenant's mailboxes to Microsoft 365 / Outlook (and
//! other OAuth providers), keeps their tokens encrypted and fresh, and hands
//! mail workers a fresh access token and XOAUTH2 string just before they log
//! in to IMAP or SMTP.
//!
//! # Layout
//! - [`config`]: the environment variables of DESIGN.md, checked at start-up.
//! - [`domain`]: ids, addresses and providers, parsed once.
//! - [`env`]: reading settings from the environment, one line per problem.
//! - [`crypto`]: AES-256-GCM sealing of stored secrets, with a key ring.
//! - [`db`]: the pool, migrations and every query (SQLite or PostgreSQL).
//! - [`oauth`]: the provider model, token endpoint client, id_token checks,
//!   PKCE, the signed state, and one module per provider.
//! - [`flow`]: authorize and callback, provider-independent.
//! - [`ops`]: operator tasks behind the CLI (key rotation, account list).
//! - [`refresh`]: one refresh of one account and what its outcome stores.
//! - [`refresher`]: the background task that keeps every account fresh.
//! - [`tokens`]: fresh tokens for workers: one refresh per account at a time.
//! - [`http`]: the axum routes, caller authentication and API errors.
//! - [`metrics`]: Prometheus counters, histograms and database gauges.
//! - [`verify`]: real IMAP and SMTP logins with a fresh token, reported.
//! - [`tls`]: the roots trusted for TLS (system plus an operator's file).
//! - [`webhooks`]: signed event webhooks: the outbox and the deliverer.
//! - [`xoauth2`]: the SASL XOAUTH2 and OAUTHBEARER initial responses.

pub mod app;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod env;
pub mod flow;
pub mod http;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod refresh;
pub mod refresher;
pub mod server;
pub mod tls;
pub mod tokens;
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
