//! Several `mailconnect serve` processes on one database keep 1,000
//! accounts fresh against a provider with the strictest rotation (a
//! refresh token dies once used, so a double refresh or an answer never
//! stored kills the grant): each account refreshed exactly once, none
//! lost; a replica killed mid-sweep delays its accounts by at most the
//! lease; SIGTERM lets refreshes in flight finish and be stored.
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
/// The replicas' lease; their provider timeout is 2 s.
const LEASE_SECS: i64 = 5;

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
        self.replica_with(concurrency, &[]).await.0
    }

    /// A replica with `extra` settings, and its port.
    async fn replica_with(&self, concurrency: usize, extra: &[(&str, &str)]) -> (Replica, u16) {
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
            .env("MAILCONNECT_REFRESH_LEASE_SECS", LEASE_SECS.to_string())
            .env("MAILCONNECT_PROVIDER_TIMEOUT_SECS", "2")
            .env("MAILCONNECT_REFRESH_POLL_SECS", "1")
            .env("MAILCONNECT_REFRESH_CONCURRENCY", concurrency.to_string())
            .env("MAILCONNECT_PROVIDER_RATE_LIMIT", "100000")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
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
        (Replica { child }, port)
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

    /// Waits until `ready` holds, polling every 20 ms for at most `limit`.
    async fn wait_until(&self, what: &str, limit: Duration, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !ready() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
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
    // Nothing is due again for most of an hour (ten minutes and some
    // jitter before the new tokens expire) and no lease is held, so no
    // refresh is running or coming: the counts are final.
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        cluster
            .count(&format!("refresh_due_at < {}", now + 2400))
            .await,
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.count("lease_owner IS NOT NULL").await > 0 {
        assert!(Instant::now() < deadline, "leases still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.fake.refresh_grants(), 1000);
    assert_eq!(cluster.count("status = 'needs_reauth'").await, 0);
    cluster.assert_all_healthy(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_sweep_only_delays_its_accounts() {
    let cluster = Cluster::seed(200, Rotation::Strict).await;
    // Each refresh is held 700 ms at the provider (within the 2 s timeout).
    cluster
        .fake
        .set_fault(Some(Fault::Slow(Duration::from_millis(700))));
    let mut victim = cluster.replica(8).await;
    // Killed while its first refreshes wait at the provider, none answered:
    // SIGKILL, no chance to hand anything back.
    let fake = cluster.fake.clone();
    cluster
        .wait_until(
            "the victim's refreshes reach the provider",
            Duration::from_secs(20),
            || fake.token_requests_in_flight() == 8,
        )
        .await;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    assert_eq!(cluster.fake.refresh_grants(), 0, "killed before any answer");
    // Only the victim ran: every lease now held is one of its, held until
    // its lease_until.
    let leased: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, lease_until FROM accounts WHERE lease_owner IS NOT NULL")
            .fetch_all(&cluster.db)
            .await
            .unwrap();
    assert!(
        leased.len() >= 8,
        "the kill happened mid-sweep: {}",
        leased.len()
    );
    cluster
        .wait_until(
            "the abandoned requests are dropped",
            Duration::from_secs(5),
            || fake.token_requests_in_flight() == 0,
        )
        .await;

    cluster
        .fake
        .set_fault(Some(Fault::Slow(Duration::from_millis(20))));
    let _others = [cluster.replica(4).await, cluster.replica(4).await];
    cluster
        .wait_all_refreshed(200, Duration::from_secs(60))
        .await;
    // Delayed by at most the lease: refreshed once it lapsed, within a
    // poll (1 s) and a refresh.
    for (id, lease_until) in &leased {
        let (at,): (i64,) = sqlx::query_as("SELECT last_refresh_at FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        assert!(
            at <= lease_until + 3,
            "account {id} refreshed at {at}, its dead lease ended at {lease_until}"
        );
    }
    cluster.fake.set_fault(None);
    // Under strict rotation a double refresh, or an answer never stored,
    // would have killed a grant.
    assert_eq!(cluster.fake.refresh_grants(), 200);
    assert_eq!(cluster.count("status = 'needs_reauth'").await, 0);
    cluster.assert_all_healthy(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_refreshes_in_flight_finish_and_be_stored() {
    let cluster = Cluster::seed(100, Rotation::Strict).await;
    cluster
        .fake
        .set_fault(Some(Fault::Slow(Duration::from_millis(500))));
    let mut replica = cluster.replica(8).await;
    // Mid-sweep: some refreshes stored, others waiting at the provider.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.count("last_refresh_at IS NOT NULL").await == 0
        || cluster.fake.token_requests_in_flight() == 0
    {
        assert!(Instant::now() < deadline, "the sweep never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_an_on_demand_refresh_delays_the_next_request_by_the_lease() {
    let cluster = Cluster::seed(1, Rotation::Strict).await;
    let (id,): (String,) = sqlx::query_as("SELECT id FROM accounts")
        .fetch_one(&cluster.db)
        .await
        .unwrap();
    // Only the token route refreshes here.
    let off = [("MAILCONNECT_REFRESHER", "off")];
    let (mut victim, victim_port) = cluster.replica_with(1, &off).await;
    let (_survivor, survivor_port) = cluster.replica_with(1, &off).await;
    let jwt = mailconnect::http::auth::mint(
        b"replica-test-jwt-secret-0123456789",
        "worker",
        "tenant-a",
        mailconnect::http::auth::Role::Service,
        600,
    );
    let token = |port: u16| {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/api/accounts/{id}/token"))
            .bearer_auth(&jwt)
            .send()
    };

    // The victim's refresh waits at the provider, holding the lease.
    cluster
        .fake
        .set_fault(Some(Fault::Slow(Duration::from_millis(1500))));
    let asked = tokio::spawn(token(victim_port));
    let fake = cluster.fake.clone();
    cluster
        .wait_until(
            "the victim's refresh reaches the provider",
            Duration::from_secs(10),
            || fake.token_requests_in_flight() == 1,
        )
        .await;
    let (lease_until,): (i64,) = sqlx::query_as("SELECT lease_until FROM accounts")
        .fetch_one(&cluster.db)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        lease_until <= now + LEASE_SECS + 1,
        "an on-demand lease lasts MAILCONNECT_REFRESH_LEASE_SECS: until {lease_until}, now {now}"
    );
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    assert!(
        asked.await.unwrap().is_err(),
        "the victim died before answering"
    );
    cluster
        .wait_until(
            "the abandoned request is dropped",
            Duration::from_secs(5),
            || fake.token_requests_in_flight() == 0,
        )
        .await;
    assert_eq!(cluster.fake.refresh_grants(), 0, "killed before any answer");

    // The survivor waits for the abandoned lease to lapse, then refreshes.
    cluster.fake.set_fault(None);
    let started = Instant::now();
    let r = token(survivor_port).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(LEASE_SECS as u64 + 2),
        "answered once the lease lapsed: {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.fake.refresh_grants(), 1);
    cluster.assert_all_healthy(1).await;
}
