//! `webhook_outbox`: events waiting to be delivered, one row per endpoint,
//! and `provider_state`, which turns a provider's health changes into one
//! event each across every replica.

use sqlx::FromRow;

use super::Db;

/// One event for one endpoint, as written with the state change.
pub struct NewDelivery<'a> {
    pub endpoint: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub ordering_key: &'a str,
    pub tenant_id: Option<&'a str>,
    pub account_id: Option<&'a str>,
    pub body: &'a str,
}

#[derive(FromRow, Clone)]
pub struct DeliveryRow {
    pub endpoint: String,
    pub event_id: String,
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub account_id: Option<String>,
    pub body: String,
    pub attempts: i64,
    pub created_at: i64,
}

const COLUMNS: &str =
    "endpoint, event_id, event_type, tenant_id, account_id, body, attempts, created_at";

pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    d: &NewDelivery<'_>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_outbox (endpoint, event_id, event_type, ordering_key, tenant_id,
             account_id, body, state, attempts, next_attempt_ms, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9)",
    )
    .bind(d.endpoint)
    .bind(d.event_id)
    .bind(d.event_type)
    .bind(d.ordering_key)
    .bind(d.tenant_id)
    .bind(d.account_id)
    .bind(d.body)
    .bind(now * 1000)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Leases up to `limit` deliveries of `endpoint` that are due, each the
/// oldest pending event of its account (or provider): an event is never
/// handed out while an earlier one of the same key is still pending, which
/// is what keeps delivery in order per account across replicas.
pub async fn claim(
    db: &Db,
    endpoint: &str,
    owner: &str,
    lease_until_ms: i64,
    now_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    let skip_locked = if db.is_postgres() {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    sqlx::query_as(&format!(
        "UPDATE webhook_outbox SET lease_owner = $1, lease_until_ms = $2
         WHERE endpoint = $3 AND event_id IN (
             SELECT o.event_id FROM webhook_outbox o
             WHERE o.endpoint = $3 AND o.state = 'pending' AND o.next_attempt_ms <= $4
               AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $4)
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_outbox p
                   WHERE p.endpoint = o.endpoint AND p.ordering_key = o.ordering_key
                     AND p.state = 'pending' AND p.event_id < o.event_id)
             ORDER BY o.event_id
             LIMIT $5
             {skip_locked})
           AND state = 'pending'
           AND (lease_until_ms IS NULL OR lease_until_ms < $4)
         RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(lease_until_ms)
    .bind(endpoint)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Ends a delivery (`delivered` or `failed`, i.e. given up), if this
/// replica still holds its lease.
pub async fn finish(
    conn: &mut sqlx::AnyConnection,
    row: &DeliveryRow,
    owner: &str,
    state: &str,
    error: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_outbox SET state = $4, attempts = attempts + 1, last_error = $5,
             finished_at = $6, lease_owner = NULL, lease_until_ms = NULL
         WHERE endpoint = $1 AND event_id = $2 AND lease_owner = $3 AND state = 'pending'",
    )
    .bind(&row.endpoint)
    .bind(&row.event_id)
    .bind(owner)
    .bind(state)
    .bind(error)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A failed attempt that will be tried again at `next_ms`.
pub async fn retry_later(
    db: &Db,
    row: &DeliveryRow,
    owner: &str,
    error: &str,
    next_ms: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $4, next_attempt_ms = $5,
             lease_owner = NULL, lease_until_ms = NULL
         WHERE endpoint = $1 AND event_id = $2 AND lease_owner = $3 AND state = 'pending'",
    )
    .bind(&row.endpoint)
    .bind(&row.event_id)
    .bind(owner)
    .bind(error)
    .bind(next_ms)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Hands back a lease without counting an attempt (shutdown).
pub async fn release(db: &Db, row: &DeliveryRow, owner: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_outbox SET lease_owner = NULL, lease_until_ms = NULL
         WHERE endpoint = $1 AND event_id = $2 AND lease_owner = $3",
    )
    .bind(&row.endpoint)
    .bind(&row.event_id)
    .bind(owner)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// When the next pending delivery of `endpoint` is due (Unix ms), if any.
pub async fn earliest_due_ms(db: &Db, endpoint: &str) -> sqlx::Result<Option<i64>> {
    let (due,): (Option<i64>,) = sqlx::query_as(
        "SELECT MIN(next_attempt_ms) FROM webhook_outbox WHERE endpoint = $1 AND state = 'pending'",
    )
    .bind(endpoint)
    .fetch_one(&db.pool)
    .await?;
    Ok(due)
}

/// Drops finished deliveries older than `before`; pending ones are kept.
pub async fn purge_finished(db: &Db, before: i64) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at < $1")
            .bind(before)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}

/// Counts by state, and when the oldest pending event was written.
pub async fn counts(db: &Db) -> sqlx::Result<Vec<(String, i64, Option<i64>)>> {
    sqlx::query_as("SELECT state, COUNT(*), MIN(created_at) FROM webhook_outbox GROUP BY state")
        .fetch_all(&db.pool)
        .await
}
