//! `provider_state`: each provider's health as every replica sees it, so
//! `provider.misconfigured` and `provider.recovered` fire once per
//! transition, and the status route reports the same on every replica.

use super::accounts::Failure;
use super::Db;

/// A provider's recorded health.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ProviderHealth {
    pub provider: String,
    /// `ok` or `misconfigured`.
    pub state: String,
    /// Why, while misconfigured (the provider's error code and a sentence).
    pub error: Option<String>,
    pub changed_at: i64,
    /// The cause of `error` (DESIGN.md "Diagnosis").
    pub cause: Option<String>,
}

/// Every provider's recorded health (a provider never seen is healthy).
pub async fn health(db: &Db) -> sqlx::Result<Vec<ProviderHealth>> {
    sqlx::query_as("SELECT provider, state, error, changed_at, cause FROM provider_state")
        .fetch_all(&db.pool)
        .await
}

/// Records that `provider` now is misconfigured by `failure`, or `ok`
/// without one; true only for the one caller, on any replica, that changed
/// it. A provider never seen before counts as `ok`.
pub async fn transition(
    conn: &mut sqlx::AnyConnection,
    provider: &str,
    failure: Option<Failure<'_>>,
    now: i64,
) -> sqlx::Result<bool> {
    let state = if failure.is_some() {
        "misconfigured"
    } else {
        "ok"
    };
    sqlx::query(
        "INSERT INTO provider_state (provider, state, error, changed_at) VALUES ($1, 'ok', NULL, $2)
         ON CONFLICT (provider) DO NOTHING",
    )
    .bind(provider)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query(
        "UPDATE provider_state SET state = $2, error = $3, changed_at = $4, cause = $5
         WHERE provider = $1 AND state <> $2",
    )
    .bind(provider)
    .bind(state)
    .bind(failure.map(|f| f.error))
    .bind(now)
    .bind(failure.map(|f| f.cause.as_str()))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `provider` is known to be misconfigured (a read, so the common
/// successful refresh writes nothing more).
pub async fn misconfigured(db: &Db, provider: &str) -> sqlx::Result<bool> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT state FROM provider_state WHERE provider = $1")
            .bind(provider)
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.is_some_and(|(s,)| s == "misconfigured"))
}

/// Like [`transition`] to `ok`, but touches nothing (no insert)
/// when the provider is not known to be misconfigured: the common case on
/// every successful refresh.
pub async fn recovered(
    conn: &mut sqlx::AnyConnection,
    provider: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE provider_state SET state = 'ok', error = NULL, cause = NULL, changed_at = $2
         WHERE provider = $1 AND state = 'misconfigured'",
    )
    .bind(provider)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
