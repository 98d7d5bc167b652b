//! Shared by the test binaries: a fresh database for a test (a SQLite file,
//! or a new database on the PostgreSQL server named by
//! MAILCONNECT_TEST_POSTGRES), a free loopback port, and a child process
//! that is killed when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::Child;

use sqlx::AnyPool;

/// The PostgreSQL server to test against, if one is named.
pub fn postgres_url() -> Option<String> {
    std::env::var("MAILCONNECT_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
}

/// A new empty database: `dir/file` on SQLite, or a new database on the
/// PostgreSQL test server.
pub async fn fresh_database(dir: &tempfile::TempDir, file: &str) -> String {
    sqlx::any::install_default_drivers();
    let Some(server) = postgres_url() else {
        return format!("sqlite://{}", dir.path().join(file).display());
    };
    let name = format!("mc_{}", uuid::Uuid::new_v4().simple());
    let admin = AnyPool::connect(&server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `serve` process (or any child) that dies with the test.
pub struct Replica {
    pub child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Marks an account's stored access token as expired ten seconds ago: the
/// next token request must refresh it.
pub async fn expire_stored_token(db: &AnyPool, id: &str) {
    sqlx::query("UPDATE accounts SET token_expires_at = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp() - 10)
        .bind(id)
        .execute(db)
        .await
        .unwrap();
}
