//! Prometheus metrics, rendered at `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen (through the
//! `metrics` facade); gauges about stored state (accounts by status, how
//! overdue the most overdue account is) are read from the database at
//! scrape time, so every replica reports the same truth.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::db::Db;

pub const CONNECTS: &str = "mailconnect_connects_total";
pub const DISCONNECTS: &str = "mailconnect_disconnects_total";
pub const REFRESHES: &str = "mailconnect_refreshes_total";
pub const PROVIDER_LATENCY: &str = "mailconnect_provider_request_duration_seconds";
pub const PROVIDER_CONFIG_ERRORS: &str = "mailconnect_provider_config_errors_total";
pub const ACCOUNTS: &str = "mailconnect_accounts";
pub const REFRESHER_LAG: &str = "mailconnect_refresher_lag_seconds";
pub const WEBHOOKS: &str = "mailconnect_webhook_deliveries";
pub const WEBHOOK_OLDEST_PENDING: &str = "mailconnect_webhook_oldest_pending_seconds";
pub const UNSAVED_ANSWERS: &str = "mailconnect_unsaved_refresh_answers";
pub const DATABASE_WRITABLE: &str = "mailconnect_database_writable";
pub const VERIFY_FAILURES: &str = "mailconnect_verify_failures_total";
pub const CREDENTIAL_EXPIRY: &str = "mailconnect_provider_credential_expiry_timestamp_seconds";
pub const PROVIDER_TOKEN_REQUESTS: &str = "mailconnect_provider_token_requests_total";
pub const ACCOUNTS_BY_TEMPERATURE: &str = "mailconnect_accounts_by_temperature";
pub const PACE_WAITS: &str = "mailconnect_provider_pace_waits_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(PROVIDER_LATENCY.into()),
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // A recorder installed earlier (another embedding) keeps working.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        PACE_WAITS,
        "Token requests that waited for room in their provider's budget (MAILCONNECT_PROVIDER_RATE_LIMIT), by provider, priority and outcome (admitted, deferred: background work handed back, overran: an on-demand request sent after waiting its patience)"
    );
    metrics::describe_counter!(CONNECTS, "OAuth callbacks by provider and outcome (connect, reconnect, reauth, or the failure reason)");
    metrics::describe_counter!(DISCONNECTS, "Mailboxes disconnected, by provider");
    metrics::describe_counter!(
        REFRESHES,
        "Token refreshes by provider, outcome and cause (none when refreshed)"
    );
    metrics::describe_histogram!(
        PROVIDER_LATENCY,
        metrics::Unit::Seconds,
        "Time spent on provider requests, by provider and operation"
    );
    metrics::describe_counter!(
        PROVIDER_CONFIG_ERRORS,
        "Refusals of our client credentials (invalid_client, unauthorized_client), by provider and cause"
    );
    metrics::describe_gauge!(ACCOUNTS, "Accounts by status");
    metrics::describe_counter!(
        PROVIDER_TOKEN_REQUESTS,
        "Token requests sent to providers, by provider and reason (on_demand, keep_warm, keep_alive, app_token)"
    );
    metrics::describe_gauge!(
        ACCOUNTS_BY_TEMPERATURE,
        "Connected delegated accounts by temperature: warm (a token handed out within MAILCONNECT_REFRESH_WARM_WINDOW_SECS, renewed ahead of expiry) or idle (only kept alive)"
    );
    metrics::describe_gauge!(
        CREDENTIAL_EXPIRY,
        "When each provider's client credential expires (a certificate's notAfter, a secret's *_CLIENT_SECRET_EXPIRES_AT), Unix seconds"
    );
    metrics::describe_counter!(
        VERIFY_FAILURES,
        "Failed verify logins, by protocol (imap, smtp) and cause"
    );
    metrics::describe_gauge!(
        UNSAVED_ANSWERS,
        "Provider answers (rotated tokens, refusals) this replica holds in memory because the database did not take them yet"
    );
    metrics::describe_gauge!(
        DATABASE_WRITABLE,
        "1 while the SQLite file can be written (always 1 on PostgreSQL)"
    );
    metrics::describe_gauge!(
        REFRESHER_LAG,
        "How overdue the most overdue connected account is (0 when none is)"
    );
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the histograms' recorded samples into their buckets every few
/// seconds. The recorder keeps every sample until a render or an upkeep
/// drains it: without this, a replica nobody scrapes grew by every provider
/// call it made (the soak, bench/soak.sh: +0.6 MiB a minute at 550
/// refreshes a second, steadily).
pub async fn upkeep() {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tick.tick().await;
        handle().run_upkeep();
    }
}

/// Records the time a provider call took.
pub fn provider_latency(provider: &'static str, operation: &'static str, took: Duration) {
    metrics::histogram!(PROVIDER_LATENCY, "provider" => provider, "operation" => operation)
        .record(took.as_secs_f64());
}

/// Counts one token request sent to `provider`, and why.
pub fn token_request(provider: &'static str, reason: &'static str) {
    metrics::counter!(PROVIDER_TOKEN_REQUESTS, "provider" => provider, "reason" => reason)
        .increment(1);
}

/// The text exposition, with the database gauges refreshed first (for at
/// most a few seconds: a database that is down leaves them as they were).
/// `warm_since`: the earliest use that keeps an account warm now, `None`
/// when every account is warm (`MAILCONNECT_REFRESH_WARM_WINDOW_SECS=all`).
pub async fn render(db: &Db, warm_since: Option<i64>) -> String {
    let handle = handle();
    metrics::gauge!(DATABASE_WRITABLE).set(if db.writable() { 1.0 } else { 0.0 });
    if tokio::time::timeout(Duration::from_secs(3), database_gauges(db, warm_since))
        .await
        .is_err()
    {
        tracing::warn!("metrics: the database did not answer in time");
    }
    handle.render()
}

async fn database_gauges(db: &Db, warm_since: Option<i64>) {
    match crate::db::accounts::count_by_status(db).await {
        Ok(counts) => {
            for status in ["connected", "needs_reauth", "disconnected"] {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(ACCOUNTS, "status" => status).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not count accounts"),
    }
    match crate::db::accounts::count_warm(db, warm_since.unwrap_or(i64::MIN)).await {
        Ok((warm, all)) => {
            let warm = if warm_since.is_none() { all } else { warm };
            metrics::gauge!(ACCOUNTS_BY_TEMPERATURE, "temperature" => "warm").set(warm as f64);
            metrics::gauge!(ACCOUNTS_BY_TEMPERATURE, "temperature" => "idle")
                .set((all - warm) as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not count warm accounts"),
    }
    match crate::db::accounts::earliest_due(db).await {
        Ok(due) => {
            let lag = due.map_or(0, |d| (crate::now() - d).max(0));
            metrics::gauge!(REFRESHER_LAG).set(lag as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not read the refresh lag"),
    }
    match crate::webhooks::stats(db).await {
        Ok(w) => {
            for (state, n) in [
                ("sent", w.sent),
                ("failed", w.failed),
                ("pending", w.pending),
            ] {
                metrics::gauge!(WEBHOOKS, "state" => state).set(n as f64);
            }
            metrics::gauge!(WEBHOOK_OLDEST_PENDING).set(w.oldest_pending_age_secs as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not read the webhook outbox"),
    }
}
