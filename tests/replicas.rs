//! Several `mailconnect serve` processes on one database keep 1,000
//! accounts fresh against a provider with the strictest rotation: each
//! account refreshed exactly once, none lost to a double refresh; a replica
//! killed mid-sweep delays its accounts by at most the lease; SIGTERM lets
//! refreshes in flight finish and be stored.
//!
//! Runs on SQLite by default, on PostgreSQL when MAILCONNECT_TEST_POSTGRES
//! names a server (see scripts/test).

#[path = "support/db.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailconnect::crypto::{Aad, Keyring};
use mailconnect_sandbox::{FakeMicrosoft, FakeMicrosoftConfig, FakeUser, Fault, Rotation};
use secrecy::ExposeSecret;
use sqlx::AnyPool;
use support::{free_port, fresh_database, Replica};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_SECRET: &str = "replica-test-client-secret";

struct Cluster {
    db_url: String,
    db: AnyPool,
    fake: FakeMicrosoft,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A migrated database holding `n` connected accounts whose access
    /// tokens have expired, each with a live refresh token at the fake.
    async fn seed(n: usize, rotation: Rotation) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db_url = fresh_database(&dir, "replicas.db").await;
        let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:1/cb");
        cfg.rotation = rotation;
        let fake = FakeMicrosoft::start(cfg).await.unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
            .args(["migrate", "--database-url", &db_url])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let db = AnyPool::connect(&db_url).await.unwrap();
        let ring = Keyring::parse(KEYS).unwrap();
        let now = chrono::Utc::now().timestamp();
        let mut tx = db.begin().await.unwrap();
        for i in 0..n {
            let upn = format!("user{i}@contoso.com");
            fake.add_user(FakeUser::work(&upn));
            let rt = fake.mint_refresh_token(&upn);
            let id = uuid::Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
                     access_token_enc, refresh_token_enc, token_expires_at, connected_at,
                     consecutive_failures, created_at, updated_at, refresh_due_at)
                 VALUES ($1, 'tenant-a', 'microsoft', $2, 'oauth', 'connected', '', $3, $4, $5, $6, 0, $6, $6, $7)",
            )
            .bind(&id)
            .bind(&upn)
            .bind(ring.seal("expired-access-token", &Aad::new("accounts", &id, "access_token")))
            .bind(ring.seal(&rt, &Aad::new("accounts", &id, "refresh_token")))
            .bind(now - 10)
            .bind(now - 3600)
            .bind(now - 1)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        Cluster {
            db_url,
            db,
            fake,
            _dir: dir,
        }
    }

    async fn replica(&self, concurrency: usize) -> Replica {
        let port = free_port();
        let base = self.fake.base_url();
        let child = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MAILCONNECT_BIND", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &self.db_url)
            .env("JWT_SECRET", "replica-test-jwt-secret-0123456789")
            .env("OAUTH_STATE_SECRET", "replica-test-state-secret-012345678")
            .env("TOKEN_ENCRYPTION_KEYS", KEYS)
            .env("MICROSOFT_OAUTH_CLIENT_ID", CLIENT_ID)
            .env("MICROSOFT_OAUTH_CLIENT_SECRET", CLIENT_SECRET)
            .env("MICROSOFT_OAUTH_AUTHORITY", &base)
            .env("MICROSOFT_GRAPH_URL", &base)
            .env("MAILCONNECT_REFRESH_LEASE_SECS", "3")
            .env("MAILCONNECT_REFRESH_POLL_SECS", "1")
            .env("MAILCONNECT_REFRESH_CONCURRENCY", concurrency.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(Instant::now() < deadline, "replica did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Replica { child }
    }

    async fn count(&self, filter: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM accounts WHERE {filter}"))
            .fetch_one(&self.db)
            .await
            .unwrap();
        n
    }

    async fn wait_all_refreshed(&self, n: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let done = self.count("last_refresh_at IS NOT NULL").await;
            if done == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {n} accounts refreshed in time"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every account is connected and holds a refresh token the provider
    /// still honours.
    async fn assert_all_healthy(&self, n: i64) {
        assert_eq!(self.count("status = 'connected'").await, n);
        let ring = Keyring::parse(KEYS).unwrap();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, refresh_token_enc FROM accounts")
                .fetch_all(&self.db)
                .await
                .unwrap();
        assert_eq!(rows.len() as i64, n);
        for (id, enc) in rows {
            let rt = ring
                .open(&enc, &Aad::new("accounts", &id, "refresh_token"))
                .unwrap();
            assert!(
                self.fake.refresh_token_is_live(rt.expose_secret()),
                "account {id} holds a dead refresh token"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_a_thousand_accounts_exactly_once() {
    let cluster = Cluster::seed(1000, Rotation::Strict).await;
    let _replicas = [
        cluster.replica(16).await,
        cluster.replica(16).await,
        cluster.replica(16).await,
    ];
    cluster
        .wait_all_refreshed(1000, Duration::from_secs(120))
        .await;
    // A moment more: nobody refreshes anything twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.fake.refresh_grants(), 1000);
    assert_eq!(cluster.count("status = 'needs_reauth'").await, 0);
    assert_eq!(cluster.count("lease_owner IS NOT NULL").await, 0);
    cluster.assert_all_healthy(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_sweep_only_delays_its_accounts() {
    let cluster = Cluster::seed(200, Rotation::KeepOld).await;
    cluster
        .fake
        .set_fault(Some(Fault::Slow(Duration::from_millis(250))));
    let mut victim = cluster.replica(8).await;
    let _others = [cluster.replica(4).await, cluster.replica(4).await];
    tokio::time::sleep(Duration::from_millis(1200)).await;
    victim.child.kill().unwrap(); // SIGKILL: no chance to hand anything back
    victim.child.wait().unwrap();
    let leased_by_the_dead = cluster.count("lease_owner IS NOT NULL").await;
    cluster
        .wait_all_refreshed(200, Duration::from_secs(60))
        .await;
    cluster.fake.set_fault(None);
    cluster.assert_all_healthy(200).await;
    assert!(leased_by_the_dead > 0, "the kill happened mid-sweep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_refreshes_in_flight_finish_and_be_stored() {
    let cluster = Cluster::seed(100, Rotation::Strict).await;
    cluster
        .fake
        .set_fault(Some(Fault::Slow(Duration::from_millis(500))));
    let mut replica = cluster.replica(8).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pid = replica.child.id().to_string();
    let stopping = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = replica.child.wait().unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let refreshed = cluster.count("last_refresh_at IS NOT NULL").await;
    assert!(
        refreshed > 0 && refreshed < 100,
        "stopped mid-sweep ({refreshed})"
    );
    assert_eq!(
        cluster.fake.refresh_grants() as i64,
        refreshed,
        "every refresh was stored"
    );
    assert_eq!(
        cluster.count("lease_owner IS NOT NULL").await,
        0,
        "leases handed back"
    );
    cluster.assert_all_healthy(100).await;

    // Another replica finishes the job.
    cluster.fake.set_fault(None);
    let _next = cluster.replica(8).await;
    cluster
        .wait_all_refreshed(100, Duration::from_secs(30))
        .await;
    cluster.assert_all_healthy(100).await;
}
