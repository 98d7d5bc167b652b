//! The database: one pool over SQLite or PostgreSQL (sqlx `Any`), the
//! embedded migrations, and the queries, one module per table. Queries use
//! `$n` placeholders and portable SQL so both backends run the same text.
//!
//! Outages: [`Unavailable`] tells a failure of the database itself (down,
//! unreachable, read-only) from a failure of a query, so callers can answer
//! 503 and try again later. A SQLite file that stops being writable (or
//! becomes writable again) is noticed within a second and every pooled
//! connection is reopened, so none stays read-only after the file is fixed.

pub mod accounts;
pub mod app_tokens;
pub mod audit;
pub mod consents;
pub mod credentials;
pub mod fast_read;
pub mod links;
pub mod outbox;
pub mod pace;
pub mod providers;
pub mod rows;
pub mod states;
pub mod types;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    postgres: bool,
    /// The SQLite file, for [`fast_read`] (not for in-memory databases).
    sqlite_file: Option<PathBuf>,
    health: Arc<Health>,
}

/// A failure of the database itself, not of a query: it clears by itself
/// (a restart, a failover) or when an operator fixes it (a file made
/// writable again). The API answers 503 for these, and background work
/// tries again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Unreachable, refusing or dropping connections, out of connections
    /// or space, locked past the busy timeout, failing I/O.
    Down,
    /// Answering, but refusing writes: a read-only file, file system or
    /// server.
    ReadOnly,
}

impl Unavailable {
    /// What `e` says about the database, when it is such a failure.
    pub fn of(e: &sqlx::Error) -> Option<Unavailable> {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Some(Unavailable::Down),
            sqlx::Error::Database(db) => {
                let code = db.code()?;
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // Primary result codes (the low byte of an extended one).
                    match code.parse::<i32>().ok()? & 0xff {
                        8 => Some(Unavailable::ReadOnly), // SQLITE_READONLY
                        // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
                        5 | 6 | 10 | 13 | 14 | 15 => Some(Unavailable::Down),
                        _ => None,
                    }
                } else {
                    // PostgreSQL's SQLSTATE: connection exceptions (08),
                    // insufficient resources (53), shutting down or starting
                    // up (57P), I/O error (58030); a read-only transaction
                    // (25006: a standby, `default_transaction_read_only`).
                    match code.as_ref() {
                        "25006" => Some(Unavailable::ReadOnly),
                        c if c.starts_with("08")
                            || c.starts_with("53")
                            || c.starts_with("57P")
                            || c == "58030" =>
                        {
                            Some(Unavailable::Down)
                        }
                        _ => None,
                    }
                }
            }
            _ => None,
        }
    }

    /// The first such failure among an error's causes.
    pub fn in_chain(e: &anyhow::Error) -> Option<Unavailable> {
        e.chain()
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .and_then(Unavailable::of)
    }
}

/// Whether the SQLite file can be written, and which pooled connections to
/// close instead of handing them out: those opened before the last change.
/// A SQLite connection opened while its file was read-only stays read-only
/// for good, and one opened before keeps writing through its open file; so
/// at each change every connection is reopened, read-only (`query_only`)
/// while the file cannot be written, and all of them agree.
struct Health {
    origin: Instant,
    /// Nanoseconds after `origin` of the last change; 0 for none.
    reopen_before: AtomicU64,
    writable: AtomicBool,
}

impl Health {
    fn new() -> Health {
        Health {
            origin: Instant::now(),
            reopen_before: AtomicU64::new(0),
            writable: AtomicBool::new(true),
        }
    }

    fn reopen_all(&self) {
        let now = self.origin.elapsed().as_nanos() as u64;
        self.reopen_before.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether a connection `age` old was opened before the last change.
    fn is_stale(&self, age: Duration) -> bool {
        let mark = self.reopen_before.load(Ordering::Relaxed);
        let opened = self.origin.elapsed().saturating_sub(age);
        mark != 0 && (opened.as_nanos() as u64) < mark
    }
}

/// Looks every second whether `file` can be written (as this process, on
/// this file system). Only a clear answer counts: a file that is missing
/// is left alone, since reopening would create an empty database there.
async fn watch_writable(file: PathBuf, health: Weak<Health>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        let writable = match rustix::fs::access(&file, rustix::fs::Access::WRITE_OK) {
            Ok(()) => true,
            Err(e)
                if e == rustix::io::Errno::ACCESS
                    || e == rustix::io::Errno::ROFS
                    || e == rustix::io::Errno::PERM =>
            {
                false
            }
            Err(_) => continue,
        };
        if health.writable.swap(writable, Ordering::Relaxed) == writable {
            continue;
        }
        health.reopen_all();
        if writable {
            tracing::warn!(file = %file.display(), "the database file is writable again; reopening connections");
        } else {
            tracing::error!(
                file = %file.display(),
                "the database file is not writable: reads go on, every change answers 503 until it is writable again"
            );
        }
    }
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
        let health = Arc::new(Health::new());
        let (reopen, opened) = (health.clone(), health.clone());
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections(is_sqlite, in_memory)?)
            .min_connections(u32::from(in_memory))
            .idle_timeout((!in_memory).then_some(Duration::from_secs(600)))
            .max_lifetime((!in_memory).then_some(Duration::from_secs(1800)))
            .test_before_acquire(!is_sqlite)
            .acquire_timeout(Duration::from_secs(10))
            .before_acquire(move |_conn, meta| {
                let keep = !reopen.is_stale(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .after_connect(move |conn, _meta| {
                let writable = opened.writable.load(Ordering::Relaxed);
                Box::pin(async move {
                    if is_sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                        // SQLite may hand a new connection a file descriptor
                        // it kept open from before the file became read-only
                        // (it cannot close one while the process holds locks
                        // on the file), so say it outright.
                        if !writable {
                            conn.execute("PRAGMA query_only = ON").await?;
                        }
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
        if let Some(file) = &sqlite_file {
            tokio::spawn(watch_writable(file.clone(), Arc::downgrade(&health)));
        }
        Ok(Db {
            pool,
            postgres: !is_sqlite,
            sqlite_file,
            health,
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

    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// False while the SQLite file cannot be written (always true on
    /// PostgreSQL, whose read-only state shows only in its errors).
    pub fn writable(&self) -> bool {
        self.health.writable.load(Ordering::Relaxed)
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

    /// Whether the database answers within two seconds (a pool waiting for
    /// a server that is down would otherwise take its full acquire timeout).
    pub async fn ping(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_the_database_are_told_from_failures_of_a_query() {
        let down = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        for e in &down {
            assert_eq!(Unavailable::of(e), Some(Unavailable::Down), "{e}");
        }
        assert_eq!(Unavailable::of(&sqlx::Error::RowNotFound), None);
        let chained = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("storing a refresh");
        assert_eq!(Unavailable::in_chain(&chained), Some(Unavailable::Down));
        assert_eq!(Unavailable::in_chain(&anyhow::anyhow!("other")), None);
    }

    #[tokio::test]
    async fn a_write_to_a_read_only_sqlite_database_is_read_only_and_a_bad_query_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ro.db").display());
        let db = Db::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        db.pool.close().await;
        let ro = AnyPoolOptions::new()
            .connect(&format!("{url}?mode=ro"))
            .await
            .unwrap();
        let write = sqlx::query("DELETE FROM accounts").execute(&ro).await;
        assert_eq!(
            Unavailable::of(&write.unwrap_err()),
            Some(Unavailable::ReadOnly)
        );
        let bad = sqlx::query("SELECT nothing FROM nowhere")
            .execute(&ro)
            .await;
        assert_eq!(Unavailable::of(&bad.unwrap_err()), None);
    }

    #[test]
    fn connections_opened_before_a_change_are_reopened_and_later_ones_kept() {
        let health = Health::new();
        assert!(!health.is_stale(Duration::from_secs(3600)), "no change yet");
        std::thread::sleep(Duration::from_millis(20));
        health.reopen_all();
        assert!(health.is_stale(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!health.is_stale(Duration::from_millis(5)), "opened after");
        assert!(health.is_stale(Duration::from_millis(100)), "opened before");
    }

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
