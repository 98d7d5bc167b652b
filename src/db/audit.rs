//! `audit_events`: what happened to accounts, by whom, without secrets.

use serde::Serialize;
use sqlx::FromRow;

use super::Db;

/// One event to record. `detail` is a short code or sentence, never a secret.
pub struct NewEvent<'a> {
    pub tenant_id: &'a str,
    pub account_id: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub action: &'a str,
    pub actor: &'a str,
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
}

/// The `detail` of a failure: the provider's code and the cause that
/// explains it (DESIGN.md "Diagnosis").
pub fn failure_detail(error: &str, cause: crate::diagnosis::Cause) -> String {
    format!("{error} (cause: {cause})")
}

#[derive(FromRow, Serialize)]
pub struct EventRow {
    pub id: String,
    pub account_id: Option<String>,
    pub provider: Option<String>,
    pub action: String,
    pub actor: String,
    pub outcome: String,
    pub detail: Option<String>,
    #[serde(skip)]
    pub created_at: i64,
}

pub async fn record<'e, E>(executor: E, e: &NewEvent<'_>, now: i64) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO audit_events (id, tenant_id, account_id, provider, action, actor, outcome, detail, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(e.tenant_id)
    .bind(e.account_id)
    .bind(e.provider)
    .bind(e.action)
    .bind(e.actor)
    .bind(e.outcome)
    .bind(e.detail)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

/// The tenant's events, newest first, optionally for one account and
/// before an event id (ids are time-ordered UUIDv7).
pub async fn list(
    db: &Db,
    tenant_id: &str,
    account_id: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT id, account_id, provider, action, actor, outcome, detail, created_at
         FROM audit_events
         WHERE tenant_id = $1
           AND ($2 IS NULL OR account_id = $2)
           AND ($3 IS NULL OR id < $3)
         ORDER BY id DESC
         LIMIT $4",
    )
    .bind(tenant_id)
    .bind(account_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// The newest event of each of the tenant's accounts, webhook deliveries
/// left out (they say what happened to a message, not to the mailbox):
/// `(account_id, action, outcome, created_at)`.
pub async fn last_per_account(
    db: &Db,
    tenant_id: &str,
) -> sqlx::Result<Vec<(String, String, String, i64)>> {
    sqlx::query_as(
        "SELECT e.account_id, e.action, e.outcome, e.created_at
         FROM audit_events e
         WHERE e.tenant_id = $1 AND e.account_id IS NOT NULL
           AND e.id = (SELECT MAX(f.id) FROM audit_events f
                       WHERE f.tenant_id = $1 AND f.account_id = e.account_id
                         AND f.action NOT LIKE 'webhook%')",
    )
    .bind(tenant_id)
    .fetch_all(&db.pool)
    .await
}
