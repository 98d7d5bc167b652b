//! Seeds a database with many connected Microsoft accounts, for the
//! background-refresh benchmark (`bench/refresh.sh`).
//!
//! ```text
//! cargo run --release --example seed_accounts -- \
//!     --database-url sqlite:///tmp/bench.db --count 100000 \
//!     --keys 'k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=' [--due-in -1]
//! ```
//!
//! Migrates the database (`Db::connect` + `migrate`), then inserts `count`
//! connected accounts with sealed tokens (AAD `accounts/{id}/{column}`, as
//! the service seals them), spread over tenants of 100 mailboxes each. Every
//! account's access token expired 10 s ago; `refresh_due_at` is now +
//! `--due-in` seconds: the default `-1` makes every account due at once (a
//! sweep), a large positive value (`--due-in 2592000`) leaves the refresher
//! idle. Rows go in with multi-row INSERTs, `--batch` rows (default 5,000)
//! per transaction, so a million rows seed in well under a minute.

use std::time::Instant;

use anyhow::{bail, Context};
use mailconnect::crypto::{Aad, Keyring};
use mailconnect::db::Db;

/// Rows per INSERT statement: 5 bound values a row stays far below
/// SQLite's (32,766) and PostgreSQL's (65,535) limits on parameters.
const ROWS_PER_STATEMENT: usize = 1_000;
/// Mailboxes per tenant.
const TENANT_SIZE: usize = 100;

struct Args {
    database_url: String,
    count: usize,
    keys: String,
    due_in: i64,
    batch: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut database_url = std::env::var("DATABASE_URL").ok();
    let mut count = None;
    let mut keys = std::env::var("TOKEN_ENCRYPTION_KEYS").ok();
    let mut due_in = -1i64;
    let mut batch = 5_000usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--database-url" => database_url = Some(value()?),
            "--count" => count = Some(value()?.replace('_', "").parse().context("--count")?),
            "--keys" => keys = Some(value()?),
            "--due-in" => due_in = value()?.parse().context("--due-in")?,
            "--batch" => batch = value()?.parse().context("--batch")?,
            "-h" | "--help" => {
                println!(
                    "seed_accounts --database-url URL --count N --keys 'kid:base64' \
                     [--due-in SECS (default -1: all due)] [--batch ROWS (default 5000)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        database_url: database_url.context("--database-url (or DATABASE_URL) is required")?,
        count: count.context("--count is required")?,
        keys: keys.context("--keys (or TOKEN_ENCRYPTION_KEYS) is required")?,
        due_in,
        batch: batch.max(1),
    })
}

fn insert_sql(rows: usize, now: i64, due: i64) -> String {
    let mut sql = String::with_capacity(200 + rows * 120);
    sql.push_str(
        "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes, \
         access_token_enc, refresh_token_enc, token_expires_at, connected_at, \
         consecutive_failures, created_at, updated_at, refresh_due_at) VALUES ",
    );
    for r in 0..rows {
        let p = r * 5;
        if r > 0 {
            sql.push(',');
        }
        // The constant columns are literals: only 5 bound values per row.
        sql.push_str(&format!(
            "(${}, ${}, 'microsoft', ${}, 'oauth', 'connected', \
             'https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access', \
             ${}, ${}, {}, {}, 0, {}, {}, {})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            now - 10,
            now - 3600,
            now - 3600,
            now - 3600,
            due
        ));
    }
    sql
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let ring = Keyring::parse(&args.keys).map_err(|e| anyhow::anyhow!("--keys: {e}"))?;
    let db = Db::connect(&args.database_url).await?;
    db.migrate().await?;
    let (existing,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts")
        .fetch_one(&db.pool)
        .await?;
    let now = mailconnect::now();
    let due = now + args.due_in;
    let started = Instant::now();
    let base = existing as usize;
    let mut done = 0usize;
    let mut stmt_cache: Option<(usize, String)> = None;
    while done < args.count {
        let in_batch = args.batch.min(args.count - done);
        let mut tx = db.pool.begin().await?;
        let mut left = in_batch;
        while left > 0 {
            let rows = ROWS_PER_STATEMENT.min(left);
            let sql = match &stmt_cache {
                Some((n, sql)) if *n == rows => sql.clone(),
                _ => {
                    let sql = insert_sql(rows, now, due);
                    stmt_cache = Some((rows, sql.clone()));
                    sql
                }
            };
            let mut q = sqlx::query(&sql);
            for _ in 0..rows {
                let i = base + done;
                let id = uuid::Uuid::new_v4().to_string();
                let access = ring.seal(
                    &format!("bench-access-token-{i}-{}", "x".repeat(64)),
                    &Aad::new("accounts", &id, "access_token"),
                );
                let refresh = ring.seal(
                    &format!("bench-refresh-token-{i}-{}", "y".repeat(64)),
                    &Aad::new("accounts", &id, "refresh_token"),
                );
                q = q
                    .bind(id)
                    .bind(format!("tenant-{:07}", i / TENANT_SIZE))
                    .bind(format!("user{i}@t{}.example", i / TENANT_SIZE))
                    .bind(access)
                    .bind(refresh);
                done += 1;
            }
            q.execute(&mut *tx).await?;
            left -= rows;
        }
        tx.commit().await?;
        if done.is_multiple_of(100_000) || done == args.count {
            eprintln!(
                "seed_accounts: {done}/{} rows ({:.1} s)",
                args.count,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {} accounts (table now holds {}) in {secs:.1} s ({:.0} rows/s), refresh_due_at = now{:+}",
        args.count,
        existing as usize + args.count,
        args.count as f64 / secs,
        args.due_in
    );
    Ok(())
}
