//! `connect_links`: links an admin sends to a mailbox's owner. A row holds
//! the SHA-256 of the link's token, never the token.

use super::Db;

/// One connect link as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LinkRow {
    pub id: String,
    pub tenant_id: String,
    pub provider: Option<String>,
    pub email: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub used_at: Option<i64>,
    pub account_id: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, provider, email, created_by, created_at, expires_at, \
                       revoked_at, used_at, account_id";

/// A new link: its row, and the hash of its token.
pub struct NewLink<'a> {
    pub row: &'a LinkRow,
    pub token_hash: &'a str,
}

pub async fn insert(db: &Db, link: &NewLink<'_>) -> sqlx::Result<()> {
    let r = link.row;
    sqlx::query(
        "INSERT INTO connect_links (id, tenant_id, token_hash, provider, email, created_by,
                                    created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.id)
    .bind(&r.tenant_id)
    .bind(link.token_hash)
    .bind(&r.provider)
    .bind(&r.email)
    .bind(&r.created_by)
    .bind(r.created_at)
    .bind(r.expires_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The tenant's links, newest first.
pub async fn list(db: &Db, tenant_id: &str) -> sqlx::Result<Vec<LinkRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM connect_links WHERE tenant_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(tenant_id)
    .fetch_all(&db.pool)
    .await
}

/// The link whose token hashes to `token_hash`.
pub async fn by_token_hash(db: &Db, token_hash: &str) -> sqlx::Result<Option<LinkRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM connect_links WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(&db.pool)
    .await
}

/// The link `id`, whatever its tenant (the callback's state names it).
pub async fn by_id(db: &Db, id: &str) -> sqlx::Result<Option<LinkRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM connect_links WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

/// Revokes the tenant's link `id` unless it is used or already revoked;
/// whether a row changed.
pub async fn revoke(db: &Db, tenant_id: &str, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE connect_links SET revoked_at = $1
         WHERE id = $2 AND tenant_id = $3 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .bind(tenant_id)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the link used by `account_id`, only if it is neither used nor
/// revoked yet; whether it was.
pub async fn mark_used<'e, E>(conn: E, id: &str, account_id: &str, now: i64) -> sqlx::Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "UPDATE connect_links SET used_at = $1, account_id = $2
         WHERE id = $3 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(account_id)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Where a link stands, as the list and the owner's page show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Usable until `expires_at`.
    Open,
    /// It connected a mailbox (`account_id`).
    Used,
    /// Past `expires_at` unused.
    Expired,
    /// An admin revoked it.
    Revoked,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Open => "open",
            LinkState::Used => "used",
            LinkState::Expired => "expired",
            LinkState::Revoked => "revoked",
        }
    }
}

impl LinkRow {
    /// Its state at `now`: used, then revoked, then expired, else open.
    pub fn state(&self, now: i64) -> LinkState {
        if self.used_at.is_some() {
            LinkState::Used
        } else if self.revoked_at.is_some() {
            LinkState::Revoked
        } else if self.expires_at <= now {
            LinkState::Expired
        } else {
            LinkState::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_link_stays_used_and_revocation_outranks_expiry() {
        let mut row = LinkRow {
            id: "l".into(),
            tenant_id: "t".into(),
            provider: None,
            email: None,
            created_by: "a".into(),
            created_at: 0,
            expires_at: 100,
            revoked_at: None,
            used_at: None,
            account_id: None,
        };
        assert_eq!(row.state(99), LinkState::Open);
        assert_eq!(row.state(100), LinkState::Expired);
        row.revoked_at = Some(50);
        assert_eq!(row.state(200), LinkState::Revoked);
        row.used_at = Some(40);
        assert_eq!(row.state(200), LinkState::Used);
    }
}
