//! `oauth_states`: one row per authorization request in flight.

use sqlx::FromRow;

use super::Db;

#[derive(FromRow)]
pub struct StateRow {
    pub jti: String,
    pub tenant_id: String,
    pub provider: String,
    pub pkce_verifier_enc: String,
    pub nonce: String,
    pub expires_at: i64,
}

pub async fn insert(db: &Db, row: &StateRow, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO oauth_states (jti, tenant_id, provider, pkce_verifier_enc, nonce, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&row.jti)
    .bind(&row.tenant_id)
    .bind(&row.provider)
    .bind(&row.pkce_verifier_enc)
    .bind(&row.nonce)
    .bind(row.expires_at)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Deletes and returns the row in one statement: of two callbacks racing
/// with the same state, on any replica, exactly one gets it.
pub async fn consume(db: &Db, jti: &str) -> sqlx::Result<Option<StateRow>> {
    sqlx::query_as(
        "DELETE FROM oauth_states WHERE jti = $1
         RETURNING jti, tenant_id, provider, pkce_verifier_enc, nonce, expires_at",
    )
    .bind(jti)
    .fetch_optional(&db.pool)
    .await
}

/// Drops rows long past expiry; kept a day so a late replay is still
/// recognised as "already used or unknown".
pub async fn purge_expired(db: &Db, now: i64) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
            .bind(now - 86_400)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}
