//! The token route's read on SQLite, done on the calling thread.
//!
//! sqlx runs every SQLite connection on a worker thread of its own, so each
//! query is a round trip between threads; on the token route (one indexed
//! read per request) those thread switches were most of the CPU
//! (docs/benchmarks.md). In WAL mode a reader never waits for writers and a
//! primary-key lookup takes microseconds, so this read runs right here on a
//! read-only connection kept per thread, through rusqlite (the same SQLite
//! library sqlx links). Any error falls back to the pool.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::rows::{AppTokenRow, TokenRow, APP_TOKEN_COLUMNS, TOKEN_COLUMNS};
use crate::domain::{AccountId, TenantId};

thread_local! {
    static READER: RefCell<Option<(PathBuf, Connection)>> = const { RefCell::new(None) };
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Runs `read` on this thread's read-only connection to `path`; any error
/// drops the connection, so the next read opens a fresh one.
fn with_reader<T>(
    path: &Path,
    read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    READER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(p, _)| p != path) {
            *slot = Some((path.to_path_buf(), open(path)?));
        }
        let (_, conn) = slot.as_ref().expect("just opened");
        let result = read(conn);
        if result.is_err() {
            // Reopen next time rather than keep a connection in doubt.
            *slot = None;
        }
        result
    })
}

/// The app token row of a directory (the token route of `app` mailboxes).
pub fn app_token_row(path: &Path, directory: &str) -> rusqlite::Result<Option<AppTokenRow>> {
    with_reader(path, |conn| {
        conn.prepare_cached(&format!(
            "SELECT {APP_TOKEN_COLUMNS} FROM app_tokens WHERE directory = ?1"
        ))?
        .query_row([directory], |r| {
            Ok(AppTokenRow {
                directory: r.get(0)?,
                access_token_enc: r.get(1)?,
                expires_at: r.get(2)?,
                refresh_due_at: r.get(3)?,
                refused: r.get(4)?,
                last_error: r.get(5)?,
                consecutive_failures: r.get(6)?,
            })
        })
        .optional()
    })
}

pub fn token_row(
    path: &Path,
    tenant_id: &TenantId,
    id: AccountId,
) -> rusqlite::Result<Option<TokenRow>> {
    with_reader(path, |conn| {
        conn.prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM accounts WHERE id = ?1 AND tenant_id = ?2"
        ))?
        .query_row([id.to_string().as_str(), tenant_id.as_str()], |r| {
            let text = |i: usize| r.get::<_, String>(i);
            TokenRow::parse(
                &text(0)?,
                &text(1)?,
                &text(2)?,
                &text(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                &text(7)?,
                r.get(8)?,
                r.get(9)?,
            )
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })
        })
        .optional()
    })
}
