//! `accounts`: one row per mailbox of a tenant. Secrets are stored sealed
//! (see [`crate::crypto`]); this module only moves ciphertext.

use super::Db;
use crate::diagnosis::Cause;

pub use super::rows::{AccountRow, TokenRow};
use super::rows::{ACCOUNT_COLUMNS as COLUMNS, TOKEN_COLUMNS};
use crate::domain::{
    AccountId, AccountKind, AccountStatus, MailboxAddress, ProviderKind, TenantId,
};

pub async fn get_token_row(
    db: &Db,
    tenant_id: &TenantId,
    id: AccountId,
) -> sqlx::Result<Option<TokenRow>> {
    if let Some(file) = db.sqlite_file() {
        match super::fast_read::token_row(file, tenant_id, id) {
            Ok(row) => return Ok(row),
            Err(e) => tracing::debug!(error = %e, "direct SQLite read failed; using the pool"),
        }
    }
    sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM accounts WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(&db.pool)
    .await
}

pub async fn get(db: &Db, tenant_id: &TenantId, id: AccountId) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM accounts WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(&db.pool)
    .await
}

pub async fn find_by_email(
    db: &Db,
    tenant_id: &TenantId,
    email: &MailboxAddress,
) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM accounts WHERE tenant_id = $1 AND email = $2"
    ))
    .bind(tenant_id)
    .bind(email)
    .fetch_optional(&db.pool)
    .await
}

pub async fn list_for_tenant(db: &Db, tenant_id: &TenantId) -> sqlx::Result<Vec<AccountRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM accounts WHERE tenant_id = $1 ORDER BY email, id"
    ))
    .bind(tenant_id)
    .fetch_all(&db.pool)
    .await
}

/// The sealed result of a successful connect.
pub struct Connected<'a> {
    pub id: AccountId,
    pub tenant_id: &'a TenantId,
    pub provider: ProviderKind,
    pub email: &'a MailboxAddress,
    pub scopes: &'a str,
    pub access_token_enc: &'a str,
    pub refresh_token_enc: &'a str,
    pub token_expires_at: i64,
    pub provider_tenant_id: Option<&'a str>,
    pub due_at: i64,
}

/// Inserts the account, or updates the tenant's account for this address
/// in place (same id). Returns the id that holds the address, which differs
/// from `c.id` only when another connect inserted it first: the caller must
/// then seal again for that row.
pub async fn upsert_connected<'e, E>(
    executor: E,
    c: &Connected<'_>,
    now: i64,
) -> sqlx::Result<AccountId>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let (id,): (AccountId,) = sqlx::query_as(
        "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
             access_token_enc, refresh_token_enc, token_expires_at, provider_tenant_id,
             connected_at, last_refresh_at, last_error, consecutive_failures,
             lease_owner, lease_until, created_at, updated_at, refresh_due_at)
         VALUES ($1, $2, $3, $4, 'oauth', 'connected', $5, $6, $7, $8, $9, $10, NULL, NULL, 0, NULL, NULL, $10, $10, $11)
         ON CONFLICT (tenant_id, email) DO UPDATE SET
             provider = excluded.provider,
             auth_type = 'oauth',
             status = 'connected',
             scopes = excluded.scopes,
             access_token_enc = CASE WHEN accounts.id = $1 THEN excluded.access_token_enc ELSE accounts.access_token_enc END,
             refresh_token_enc = CASE WHEN accounts.id = $1 THEN excluded.refresh_token_enc ELSE accounts.refresh_token_enc END,
             token_expires_at = CASE WHEN accounts.id = $1 THEN excluded.token_expires_at ELSE accounts.token_expires_at END,
             provider_tenant_id = excluded.provider_tenant_id,
             connected_at = excluded.connected_at,
             last_error = NULL, cause = NULL, cause_at = NULL,
             consecutive_failures = 0,
             refresh_due_at = excluded.refresh_due_at,
             updated_at = excluded.updated_at,
             kind = 'delegated',
             via_account_id = NULL,
             directory = NULL
         RETURNING id",
    )
    .bind(c.id)
    .bind(c.tenant_id)
    .bind(c.provider)
    .bind(c.email)
    .bind(c.scopes)
    .bind(c.access_token_enc)
    .bind(c.refresh_token_enc)
    .bind(c.token_expires_at)
    .bind(c.provider_tenant_id)
    .bind(now)
    .bind(c.due_at)
    .fetch_one(executor)
    .await?;
    Ok(id)
}

/// A failure as it is recorded: the provider's code (`last_error`) and
/// the cause that explains it.
#[derive(Clone, Copy, Debug)]
pub struct Failure<'a> {
    pub error: &'a str,
    pub cause: Cause,
}

/// The sealed result of a refresh.
pub struct Refreshed<'a> {
    pub id: AccountId,
    pub access_token_enc: &'a str,
    /// `None` keeps the stored refresh token (the provider did not rotate).
    pub refresh_token_enc: Option<&'a str>,
    pub expires_at: i64,
    pub scopes: Option<&'a str>,
    /// The next due time if the account is warm when stored...
    pub due_at: i64,
    /// ...and if it is not: used before `warm_since` (or never).
    pub idle_due_at: i64,
    pub warm_since: i64,
}

/// Stores the tokens of a refresh in one write, rotated refresh token
/// included, and releases the lease. Only a still-connected account is
/// written, so a refresh that finishes after a disconnect cannot bring
/// tokens back.
pub async fn store_refresh(db: &Db, r: &Refreshed<'_>, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE accounts SET
             access_token_enc = $2,
             refresh_token_enc = COALESCE($3, refresh_token_enc),
             token_expires_at = $4,
             scopes = COALESCE($5, scopes),
             refresh_due_at = CASE WHEN last_used_at >= $8 THEN $6 ELSE $9 END,
             last_refresh_at = $7,
             last_error = NULL, cause = NULL, cause_at = NULL,
             consecutive_failures = 0,
             lease_owner = NULL,
             lease_until = NULL,
             updated_at = $7
         WHERE id = $1 AND status = 'connected'",
    )
    .bind(r.id)
    .bind(r.access_token_enc)
    .bind(r.refresh_token_enc)
    .bind(r.expires_at)
    .bind(r.scopes)
    .bind(r.due_at)
    .bind(now)
    .bind(r.warm_since)
    .bind(r.idle_due_at)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores a refresh whose account was turned `needs_reauth` meanwhile by a
/// refresh that used the same refresh token (another replica, after this
/// one's lease lapsed while its store failed): that `invalid_grant` only
/// meant the token had been rotated, here. Only an account that still holds
/// `used_refresh_enc` is brought back, so a reconnect or a disconnect since
/// is never undone.
pub async fn restore_refresh<'e, E>(
    executor: E,
    r: &Refreshed<'_>,
    used_refresh_enc: &str,
    now: i64,
) -> sqlx::Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "UPDATE accounts SET
             status = 'connected',
             access_token_enc = $2,
             refresh_token_enc = COALESCE($3, refresh_token_enc),
             token_expires_at = $4,
             scopes = COALESCE($5, scopes),
             refresh_due_at = CASE WHEN last_used_at >= $9 THEN $6 ELSE $10 END,
             last_refresh_at = $7,
             last_error = NULL, cause = NULL, cause_at = NULL,
             consecutive_failures = 0,
             lease_owner = NULL,
             lease_until = NULL,
             updated_at = $7
         WHERE id = $1 AND status = 'needs_reauth' AND refresh_token_enc = $8",
    )
    .bind(r.id)
    .bind(r.access_token_enc)
    .bind(r.refresh_token_enc)
    .bind(r.expires_at)
    .bind(r.scopes)
    .bind(r.due_at)
    .bind(now)
    .bind(used_refresh_enc)
    .bind(r.warm_since)
    .bind(r.idle_due_at)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A passing failure seen by the background refresher: count it, say why,
/// and come back after the backoff. Tokens and status stay as they are.
pub async fn record_transient_failure(
    db: &Db,
    id: AccountId,
    owner: &str,
    failure: Failure<'_>,
    due_at: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE accounts SET consecutive_failures = consecutive_failures + 1,
             last_error = $3, cause = $6, cause_at = $5, refresh_due_at = $4,
             lease_owner = NULL, lease_until = NULL, updated_at = $5
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(failure.error)
    .bind(due_at)
    .bind(now)
    .bind(failure.cause.as_str())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Postpones an account without counting a failure (its provider is
/// misconfigured, or not configured on this server).
pub async fn postpone(db: &Db, id: AccountId, owner: &str, due_at: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE accounts SET refresh_due_at = $3, lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(due_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Leases up to `limit` connected accounts that are due and not leased by
/// anyone else, most overdue first, and returns them as read under the
/// lease. One statement, so two replicas never claim the same account: on
/// SQLite it runs under the write lock; on PostgreSQL `FOR UPDATE` in the
/// subquery re-checks the conditions on the newest row version and `SKIP
/// LOCKED` keeps replicas from waiting on each other. The outer statement
/// repeats no condition, so it finds its rows by primary key instead of
/// scanning every connected account (measured: 37 ms → 1 ms per claim at
/// 100k accounts, see docs/benchmarks.md).
pub async fn claim_due(
    db: &Db,
    owner: &str,
    lease_until: i64,
    now: i64,
    limit: i64,
) -> sqlx::Result<Vec<AccountRow>> {
    let skip_locked = if db.is_postgres() {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    sqlx::query_as(&format!(
        "UPDATE accounts SET lease_owner = $1, lease_until = $2
         WHERE id IN (
             SELECT id FROM accounts
             WHERE status = 'connected' AND refresh_due_at <= $3
               AND (lease_until IS NULL OR lease_until < $3)
             ORDER BY refresh_due_at
             LIMIT $4
             {skip_locked})
         RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Records that tokens of `ids` were handed out at `at` (a batch of the
/// uses a replica noted, see [`crate::core::refresh::uses`]), and pulls
/// the due time of each that was only kept alive forward to `lead` before
/// its expiry, so it is warm from now on. One statement; only rows whose
/// written use is older than `stale_before` (or none) are written, so an
/// account in steady use is written now and then, not at every flush. An
/// account in backoff keeps its backoff.
pub async fn mark_used(
    db: &Db,
    ids: &[AccountId],
    at: i64,
    stale_before: i64,
    lead_secs: i64,
) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let list = (0..ids.len())
        .map(|i| format!("${}", i + 4))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE accounts SET last_used_at = $1,
             refresh_due_at = CASE
                 WHEN consecutive_failures = 0 AND refresh_due_at > token_expires_at - $2
                 THEN token_expires_at - $2 ELSE refresh_due_at END
         WHERE id IN ({list}) AND (last_used_at IS NULL OR last_used_at < $3)"
    );
    let mut query = sqlx::query(&sql)
        .bind(at)
        .bind(lead_secs)
        .bind(stale_before);
    for id in ids {
        query = query.bind(*id);
    }
    query.execute(&db.pool).await?;
    Ok(())
}

/// Connected `delegated` accounts (those the refresher renews): how many
/// were used since `warm_since`, and how many there are.
pub async fn count_warm(db: &Db, warm_since: i64) -> sqlx::Result<(i64, i64)> {
    let (warm, all): (Option<i64>, i64) = sqlx::query_as(
        "SELECT SUM(CASE WHEN last_used_at >= $1 THEN 1 ELSE 0 END), COUNT(*) FROM accounts
         WHERE status = 'connected' AND kind = 'delegated'",
    )
    .bind(warm_since)
    .fetch_one(&db.pool)
    .await?;
    Ok((warm.unwrap_or(0), all))
}

/// The due time of the most overdue connected account, if any.
pub async fn earliest_due(db: &Db) -> sqlx::Result<Option<i64>> {
    let (due,): (Option<i64>,) =
        sqlx::query_as("SELECT MIN(refresh_due_at) FROM accounts WHERE status = 'connected'")
            .fetch_one(&db.pool)
            .await?;
    Ok(due)
}

/// Consent is gone: the account waits for an admin to reconnect it. Only
/// while it still holds `used_refresh_enc`, the refresh token the provider
/// refused: a newer one stored meanwhile (a refresh elsewhere that rotated
/// it) makes that refusal meaningless.
pub async fn mark_needs_reauth<'e, E>(
    executor: E,
    id: AccountId,
    used_refresh_enc: &str,
    failure: Failure<'_>,
    now: i64,
) -> sqlx::Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "UPDATE accounts SET status = 'needs_reauth', last_error = $2, cause = $5, cause_at = $3,
             consecutive_failures = consecutive_failures + 1,
             lease_owner = NULL, lease_until = NULL, updated_at = $3
         WHERE id = $1 AND status = 'connected' AND refresh_token_enc = $4",
    )
    .bind(id)
    .bind(failure.error)
    .bind(now)
    .bind(used_refresh_enc)
    .bind(failure.cause.as_str())
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes the refresh lease if nobody holds a live one. The conditional
/// update is atomic on both backends, so one replica wins.
pub async fn take_lease(
    db: &Db,
    id: AccountId,
    owner: &str,
    until: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE accounts SET lease_owner = $2, lease_until = $3
         WHERE id = $1 AND (lease_until IS NULL OR lease_until < $4 OR lease_owner = $2)",
    )
    .bind(id)
    .bind(owner)
    .bind(until)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn release_lease(db: &Db, id: AccountId, owner: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE accounts SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Deletes the token ciphertexts (not a flag) and turns the account back to
/// password authentication.
pub async fn disconnect<'e, E>(
    executor: E,
    tenant_id: &TenantId,
    id: AccountId,
    now: i64,
) -> sqlx::Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "UPDATE accounts SET status = 'disconnected', auth_type = 'password',
             access_token_enc = NULL, refresh_token_enc = NULL, token_expires_at = NULL,
             lease_owner = NULL, lease_until = NULL, last_error = NULL, cause = NULL, cause_at = NULL, updated_at = $3
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The account's status as this transaction sees it, read under a write
/// lock taken first: the status read is the one the transaction changes
/// (PostgreSQL locks the row; SQLite would refuse a transaction that reads
/// and then writes after another connection wrote, `SQLITE_BUSY_SNAPSHOT`).
pub async fn lock_status(
    conn: &mut sqlx::AnyConnection,
    id: AccountId,
) -> sqlx::Result<Option<AccountStatus>> {
    sqlx::query("UPDATE accounts SET updated_at = updated_at WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let row: Option<(AccountStatus,)> = sqlx::query_as("SELECT status FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|(s,)| s))
}

/// For internal paths that already checked the tenant.
pub async fn get_by_id(db: &Db, id: AccountId) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM accounts WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// How many accounts each status has (for metrics).
pub async fn count_by_status(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, COUNT(*) FROM accounts GROUP BY status")
        .fetch_all(&db.pool)
        .await
}

/// A `shared` or `app` mailbox as its delegate's (or directory's) changes
/// reach it.
#[derive(sqlx::FromRow)]
pub struct Follower {
    pub id: AccountId,
    pub tenant_id: TenantId,
    pub email: MailboxAddress,
    pub status: AccountStatus,
    pub last_error: Option<String>,
}

/// The delegate's `shared` mailboxes, in address order (the order their
/// events are written in).
pub async fn followers(
    conn: &mut sqlx::AnyConnection,
    delegate: AccountId,
) -> sqlx::Result<Vec<Follower>> {
    sqlx::query_as(
        "SELECT id, tenant_id, email, status, last_error FROM accounts
         WHERE via_account_id = $1 AND kind = 'shared' ORDER BY email, id",
    )
    .bind(delegate)
    .fetch_all(conn)
    .await
}

/// The `app` mailboxes of a Microsoft directory, of every tenant, in
/// tenant and address order.
pub async fn app_mailboxes(
    conn: &mut sqlx::AnyConnection,
    directory: &str,
) -> sqlx::Result<Vec<Follower>> {
    sqlx::query_as(
        "SELECT id, tenant_id, email, status, last_error FROM accounts
         WHERE directory = $1 AND kind = 'app' ORDER BY tenant_id, email, id",
    )
    .bind(directory)
    .fetch_all(conn)
    .await
}

/// Moves a `shared` or `app` mailbox to `status` (it holds no token to
/// delete).
pub async fn set_follower_status(
    conn: &mut sqlx::AnyConnection,
    id: AccountId,
    status: AccountStatus,
    last_error: Option<&str>,
    cause: Option<Cause>,
    now: i64,
) -> sqlx::Result<()> {
    let auth_type = if status == AccountStatus::Disconnected {
        "password"
    } else {
        "oauth"
    };
    sqlx::query(
        "UPDATE accounts SET status = $2, auth_type = $3, last_error = $4,
             cause = $6, cause_at = $7,
             consecutive_failures = 0, updated_at = $5
         WHERE id = $1 AND kind IN ('shared', 'app')",
    )
    .bind(id)
    .bind(status)
    .bind(auth_type)
    .bind(last_error)
    .bind(now)
    .bind(cause.map(Cause::as_str))
    .bind(cause.map(|_| now))
    .execute(conn)
    .await?;
    Ok(())
}

/// What opens a mailbox that holds no token of its own.
#[derive(Clone, Copy, Debug)]
pub enum Opener<'a> {
    /// `shared`: its delegate's token.
    Delegate(AccountId),
    /// `app`: the app's token for this directory.
    Directory(&'a str),
}

impl Opener<'_> {
    pub fn kind(&self) -> AccountKind {
        match self {
            Opener::Delegate(_) => AccountKind::Shared,
            Opener::Directory(_) => AccountKind::App,
        }
    }
}

/// A new `shared` or `app` mailbox, or the tenant's disconnected account
/// for the address made one (same id). `Err` with the id of the tenant's
/// live account for the address, if it has one.
pub async fn insert_opened(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &TenantId,
    id: AccountId,
    email: &MailboxAddress,
    opener: Opener<'_>,
    now: i64,
) -> sqlx::Result<Result<AccountId, AccountId>> {
    let (via, directory) = match opener {
        Opener::Delegate(delegate) => (Some(delegate), None),
        Opener::Directory(directory) => (None, Some(directory)),
    };
    let kind = opener.kind();
    let existing: Option<(AccountId, AccountStatus)> =
        sqlx::query_as("SELECT id, status FROM accounts WHERE tenant_id = $1 AND email = $2")
            .bind(tenant_id)
            .bind(email)
            .fetch_optional(&mut *conn)
            .await?;
    match existing {
        Some((existing, AccountStatus::Disconnected)) => {
            sqlx::query(
                "UPDATE accounts SET kind = $2, via_account_id = $3, directory = $4,
                     provider = 'microsoft', status = 'connected', auth_type = 'oauth',
                     scopes = '', access_token_enc = NULL, refresh_token_enc = NULL,
                     password_enc = NULL, token_expires_at = NULL, refresh_due_at = NULL,
                     provider_tenant_id = NULL, last_error = NULL, cause = NULL, cause_at = NULL, consecutive_failures = 0,
                     lease_owner = NULL, lease_until = NULL, connected_at = $5, updated_at = $5
                 WHERE id = $1",
            )
            .bind(existing)
            .bind(kind)
            .bind(via)
            .bind(directory)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(Ok(existing))
        }
        Some((existing, _)) => Ok(Err(existing)),
        None => {
            sqlx::query(
                "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
                     kind, via_account_id, directory, connected_at, consecutive_failures,
                     created_at, updated_at)
                 VALUES ($1, $2, 'microsoft', $3, 'oauth', 'connected', '', $4, $5, $6, $7, 0,
                     $7, $7)",
            )
            .bind(id)
            .bind(tenant_id)
            .bind(email)
            .bind(kind)
            .bind(via)
            .bind(directory)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(Ok(id))
        }
    }
}
