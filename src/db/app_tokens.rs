//! `app_tokens`: the app's own token (client credentials) per Microsoft
//! directory, shared by every `app` mailbox of the directory and every
//! replica, with the same lease discipline as an account's refresh: only
//! the lease holder asks Microsoft, and writes only while it still holds
//! the lease.

use super::Db;

pub use super::rows::AppTokenRow;
use super::rows::APP_TOKEN_COLUMNS as COLUMNS;

pub async fn get(db: &Db, directory: &str) -> sqlx::Result<Option<AppTokenRow>> {
    // On the token route of every app mailbox: read on this thread where
    // SQLite allows it, as for an account's token row.
    if let Some(file) = db.sqlite_file() {
        match super::fast_read::app_token_row(file, directory) {
            Ok(row) => return Ok(row),
            Err(e) => tracing::debug!(error = %e, "direct SQLite read failed; using the pool"),
        }
    }
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM app_tokens WHERE directory = $1"
    ))
    .bind(directory)
    .fetch_optional(&db.pool)
    .await
}

/// Takes the directory's lease if nobody holds a live one (creating its row
/// on first use). Atomic on both backends: one replica wins.
pub async fn take_lease(
    db: &Db,
    directory: &str,
    owner: &str,
    until: i64,
    now: i64,
) -> sqlx::Result<bool> {
    sqlx::query(
        "INSERT INTO app_tokens (directory, updated_at) VALUES ($1, $2)
         ON CONFLICT (directory) DO NOTHING",
    )
    .bind(directory)
    .bind(now)
    .execute(&db.pool)
    .await?;
    let done = sqlx::query(
        "UPDATE app_tokens SET lease_owner = $2, lease_until = $3
         WHERE directory = $1 AND (lease_until IS NULL OR lease_until < $4 OR lease_owner = $2)",
    )
    .bind(directory)
    .bind(owner)
    .bind(until)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A write to the directory's row (created if missing) that changes
/// nothing: takes SQLite's write lock first in a transaction that then
/// reads.
pub async fn touch(conn: &mut sqlx::AnyConnection, directory: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO app_tokens (directory, updated_at) VALUES ($1, 0)
         ON CONFLICT (directory) DO UPDATE SET updated_at = app_tokens.updated_at",
    )
    .bind(directory)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn release_lease(db: &Db, directory: &str, owner: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE app_tokens SET lease_owner = NULL, lease_until = NULL
         WHERE directory = $1 AND lease_owner = $2",
    )
    .bind(directory)
    .bind(owner)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// What the lease holder learned from Microsoft.
pub enum Answer<'a> {
    /// A new token (sealed), due for renewal at `due_at`.
    Token {
        access_token_enc: &'a str,
        expires_at: i64,
        due_at: i64,
    },
    /// The directory refuses the app: the token is dropped; asked again at
    /// `due_at`.
    Refused { error: &'a str, due_at: i64 },
    /// A passing failure: nothing changes but the count; asked again at
    /// `due_at`.
    Failed { error: &'a str, due_at: i64 },
}

/// Stores the answer and releases the lease, only while `owner` still holds
/// it; returns the directory's `refused` flag as it was before, or `None`
/// when the lease was lost (nothing written).
pub async fn store(
    conn: &mut sqlx::AnyConnection,
    directory: &str,
    owner: &str,
    answer: &Answer<'_>,
    now: i64,
) -> sqlx::Result<Option<bool>> {
    let before: Option<(i64,)> = sqlx::query_as(
        "SELECT refused FROM app_tokens WHERE directory = $1 AND lease_owner = $2 AND lease_until >= $3",
    )
    .bind(directory)
    .bind(owner)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((was_refused,)) = before else {
        return Ok(None);
    };
    let query = match answer {
        Answer::Token {
            access_token_enc,
            expires_at,
            due_at,
        } => sqlx::query(
            "UPDATE app_tokens SET access_token_enc = $3, expires_at = $4, refresh_due_at = $5,
                 refused = 0, last_error = NULL, consecutive_failures = 0,
                 lease_owner = NULL, lease_until = NULL, updated_at = $6
             WHERE directory = $1 AND lease_owner = $2",
        )
        .bind(directory)
        .bind(owner)
        .bind(*access_token_enc)
        .bind(*expires_at)
        .bind(*due_at)
        .bind(now),
        Answer::Refused { error, due_at } => sqlx::query(
            "UPDATE app_tokens SET access_token_enc = NULL, expires_at = NULL, refresh_due_at = $4,
                 refused = 1, last_error = $3, consecutive_failures = consecutive_failures + 1,
                 lease_owner = NULL, lease_until = NULL, updated_at = $5
             WHERE directory = $1 AND lease_owner = $2",
        )
        .bind(directory)
        .bind(owner)
        .bind(*error)
        .bind(*due_at)
        .bind(now),
        Answer::Failed { error, due_at } => sqlx::query(
            "UPDATE app_tokens SET refresh_due_at = $4, last_error = $3,
                 consecutive_failures = consecutive_failures + 1,
                 lease_owner = NULL, lease_until = NULL, updated_at = $5
             WHERE directory = $1 AND lease_owner = $2",
        )
        .bind(directory)
        .bind(owner)
        .bind(*error)
        .bind(*due_at)
        .bind(now),
    };
    query.execute(&mut *conn).await?;
    Ok(Some(was_refused == 1))
}

/// Directories due for renewal that still have an app mailbox in use
/// (connected or waiting for the directory to accept the app again).
pub async fn due(db: &Db, now: i64, limit: i64) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT t.directory FROM app_tokens t
         WHERE t.refresh_due_at <= $1 AND (t.lease_until IS NULL OR t.lease_until < $1)
           AND EXISTS (SELECT 1 FROM accounts a
                       WHERE a.directory = t.directory AND a.kind = 'app'
                         AND a.status <> 'disconnected')
         ORDER BY t.refresh_due_at
         LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|(d,)| d).collect())
}
