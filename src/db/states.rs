//! `consumed_states`: the ids of OAuth states already used at a callback.

use super::Db;

/// Marks the state `jti` used. `true` for the first caller only: of two
/// callbacks racing with the same state, on any replica, exactly one wins
/// (the primary key decides).
pub async fn consume(db: &Db, jti: &str, expires_at: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO consumed_states (jti, expires_at) VALUES ($1, $2)
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets states expired over an hour ago: their JWTs are refused as
/// expired before this table is ever asked.
pub async fn purge_expired(db: &Db, now: i64) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM consumed_states WHERE expires_at < $1")
            .bind(now - 3_600)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}
