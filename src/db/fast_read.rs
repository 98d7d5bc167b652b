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

use super::rows::{AppTokenRow, StoredAppToken, TokenRow, APP_TOKEN_COLUMNS, TOKEN_COLUMNS};
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

/// The account's token row, with its delegate's row (`shared`) or its
/// directory's app token (`app`) joined in: one read for every kind.
static TOKEN_ROW_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let cols = |alias: &str| {
        TOKEN_COLUMNS
            .split(',')
            .map(|c| format!("{alias}.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT {}, {}, t.access_token_enc, t.expires_at FROM accounts a
         LEFT JOIN accounts d ON d.id = a.via_account_id AND d.tenant_id = a.tenant_id
         LEFT JOIN app_tokens t ON t.directory = a.directory
         WHERE a.id = ?1 AND a.tenant_id = ?2",
        cols("a"),
        cols("d")
    )
});

/// The number of columns of a [`TokenRow`].
const TOKEN_WIDTH: usize = 10;

fn parse_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<TokenRow> {
    let text = |i: usize| r.get::<_, String>(at + i);
    TokenRow::parse(
        &text(0)?,
        &text(1)?,
        &text(2)?,
        &text(3)?,
        r.get(at + 4)?,
        r.get(at + 5)?,
        r.get(at + 6)?,
        &text(7)?,
        r.get(at + 8)?,
        r.get(at + 9)?,
    )
    .map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at, rusqlite::types::Type::Text, e.into())
    })
}

pub fn token_row(
    path: &Path,
    tenant_id: &TenantId,
    id: AccountId,
) -> rusqlite::Result<Option<TokenRow>> {
    with_reader(path, |conn| {
        conn.prepare_cached(&TOKEN_ROW_SQL)?
            .query_row([id.to_string().as_str(), tenant_id.as_str()], |r| {
                let mut row = parse_at(r, 0)?;
                if r.get::<_, Option<String>>(TOKEN_WIDTH)?.is_some() {
                    row.delegate = Some(Box::new(parse_at(r, TOKEN_WIDTH)?));
                }
                if row.directory.is_some() {
                    row.app_token = Some(StoredAppToken {
                        access_token_enc: r.get(2 * TOKEN_WIDTH)?,
                        expires_at: r.get(2 * TOKEN_WIDTH + 1)?,
                    });
                }
                Ok(row)
            })
            .optional()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_joined_read_knows_the_width_of_a_token_row() {
        assert_eq!(super::TOKEN_COLUMNS.split(',').count(), super::TOKEN_WIDTH);
    }
}
