//! `credential_warnings`: which expiry warnings were sent, so each is sent
//! once across every replica and restart.

/// Records that the warning of `threshold_days` for `provider`'s credential
/// expiring at `expires_at` is sent; true only for the one caller, on any
/// replica, that recorded it first.
pub async fn record_warning(
    conn: &mut sqlx::AnyConnection,
    provider: &str,
    expires_at: i64,
    threshold_days: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO credential_warnings (provider, expires_at, threshold_days, sent_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (provider, expires_at, threshold_days) DO NOTHING",
    )
    .bind(provider)
    .bind(expires_at)
    .bind(threshold_days)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
