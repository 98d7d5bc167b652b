//! The database: one pool over SQLite or PostgreSQL (sqlx `Any`), the
//! embedded migrations, and the queries, one module per table. Queries use
//! `$n` placeholders and portable SQL so both backends run the same text.

pub mod accounts;
pub mod audit;
pub mod fast_read;
pub mod outbox;
pub mod states;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    postgres: bool,
    /// The SQLite file, for [`fast_read`] (not for in-memory databases).
    sqlite_file: Option<std::path::PathBuf>,
}

/// Pool size: `MAILCONNECT_DB_MAX_CONNECTIONS`, else 4 for a SQLite file
/// (each connection is a thread; writes take turns anyway) and 16 for
/// PostgreSQL (mind the server's `max_connections` across replicas). An
/// in-memory SQLite database always has exactly one.
fn max_connections(is_sqlite: bool, in_memory: bool) -> anyhow::Result<u32> {
    if in_memory {
        return Ok(1);
    }
    match std::env::var("MAILCONNECT_DB_MAX_CONNECTIONS") {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "MAILCONNECT_DB_MAX_CONNECTIONS: must be a whole number from 1 to 1000"
                )
            }),
        _ => Ok(if is_sqlite { 4 } else { 16 }),
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every SQLite connection runs these first.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;";

impl Db {
    /// Opens the pool; a SQLite file is created if missing and runs in WAL.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        // An in-memory SQLite database lives and dies with its connection:
        // keep exactly one, forever.
        let in_memory = is_sqlite && url.contains(":memory:");
        let url = if is_sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_owned()
        };
        let options = AnyConnectOptions::from_str(&url)
            .context("DATABASE_URL: not a valid database URL")?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        // SQLite runs each connection on a thread of its own: a few of them,
        // and no ping on every acquire, keep thread switches down (the
        // benchmark in docs/benchmarks.md measured a third of the token
        // route's CPU in those pings).
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections(is_sqlite, in_memory)?)
            .min_connections(u32::from(in_memory))
            .idle_timeout((!in_memory).then_some(Duration::from_secs(600)))
            .max_lifetime((!in_memory).then_some(Duration::from_secs(1800)))
            .test_before_acquire(!is_sqlite)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .context("could not open the database named by DATABASE_URL")?;
        let sqlite_file = (is_sqlite && !in_memory)
            .then(|| sqlx::sqlite::SqliteConnectOptions::from_str(&url).ok())
            .flatten()
            .map(|o| o.get_filename().to_path_buf());
        Ok(Db {
            pool,
            postgres: !is_sqlite,
            sqlite_file,
        })
    }

    /// What the pool is, in words, for the start-up log line (benchmark
    /// reports quote it): the backend, its settings and the pool size.
    pub fn describe(&self) -> String {
        let size = self.pool.options().get_max_connections();
        if self.postgres {
            format!("PostgreSQL, pool of {size}")
        } else {
            let pragmas = SQLITE_PRAGMAS
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("PRAGMA "))
                .map(|p| p.replace(" = ", "="))
                .collect::<Vec<_>>()
                .join(", ");
            format!("SQLite ({pragmas}), pool of {size}")
        }
    }

    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref()
    }

    /// For the rare statement where the dialects differ.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("database migration failed")
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_describes_its_real_settings() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let db = Db::connect(&url).await.unwrap();
        let want = match std::env::var("MAILCONNECT_DB_MAX_CONNECTIONS") {
            Ok(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => "4".to_owned(),
        };
        assert_eq!(
            db.describe(),
            format!(
                "SQLite (journal_mode=WAL, busy_timeout=10000, synchronous=NORMAL), pool of {want}"
            )
        );
        let db = Db::connect("sqlite::memory:").await.unwrap();
        assert!(db.describe().ends_with("pool of 1"), "{}", db.describe());
    }
}
