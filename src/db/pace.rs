//! `provider_pace`: token requests sent per budget and second, shared by
//! every replica (see `core::pace`).

use super::Db;

/// Takes one request from `budget`'s allowance for `second` if fewer than
/// `cap` were taken: true when taken. Atomic across replicas: a
/// conditional increment, or the second's first row.
pub async fn take(db: &Db, budget: &str, second: i64, cap: i64) -> sqlx::Result<bool> {
    if cap < 1 {
        return Ok(false);
    }
    let increment = || async {
        sqlx::query(
            "UPDATE provider_pace SET sent = sent + 1
             WHERE budget = $1 AND second = $2 AND sent < $3",
        )
        .bind(budget)
        .bind(second)
        .bind(cap)
        .execute(&db.pool)
        .await
        .map(|done| done.rows_affected() == 1)
    };
    if increment().await? {
        return Ok(true);
    }
    let first = sqlx::query(
        "INSERT INTO provider_pace (budget, second, sent) VALUES ($1, $2, 1)
         ON CONFLICT (budget, second) DO NOTHING",
    )
    .bind(budget)
    .bind(second)
    .execute(&db.pool)
    .await?;
    if first.rows_affected() == 1 {
        return Ok(true);
    }
    // Another replica wrote the second's first row meanwhile.
    increment().await
}

/// Requests sent since `since` under `provider`'s budgets: its own and
/// those of its directories (`provider/…`).
pub async fn sent_since(db: &Db, provider: &str, since: i64) -> sqlx::Result<i64> {
    let (sent,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(sent), 0) AS BIGINT) FROM provider_pace
         WHERE (budget = $1 OR budget LIKE $2) AND second >= $3",
    )
    .bind(provider)
    .bind(format!("{provider}/%"))
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    Ok(sent)
}

/// Drops the rows of seconds before `before`; how many.
pub async fn purge(db: &Db, before: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM provider_pace WHERE second < $1")
        .bind(before)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected())
}
