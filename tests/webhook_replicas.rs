//! Two `mailconnect serve` processes on one database share one webhook
//! outbox: every event arrives, verified, in order per account, once
//! (duplicates only within at-least-once), while the receiver fails for a
//! while and one replica is killed mid-backlog. And start-up refuses a
//! webhook URL that is not http(s) or that points at the service itself.
//!
//! Runs on SQLite by default, on PostgreSQL when MAILCONNECT_TEST_POSTGRES
//! names a server (see scripts/test).

#[path = "support/receiver.rs"]
mod receiver;

#[path = "support/db.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailconnect::crypto::{Aad, Keyring};
use mailconnect_sandbox::{FakeMicrosoft, FakeMicrosoftConfig, FakeUser, Rotation};
use receiver::{Mode, Receiver};
use serde_json::json;
use sqlx::AnyPool;
use support::{free_port, fresh_database, Replica};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_SECRET: &str = "replica-test-client-secret";

fn base_command(port: u16, db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MAILCONNECT_BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", db_url)
        .env("JWT_SECRET", "replica-test-jwt-secret-0123456789")
        .env("OAUTH_STATE_SECRET", "replica-test-state-secret-012345678")
        .env("TOKEN_ENCRYPTION_KEYS", KEYS)
        .env("MAILCONNECT_PROVIDER_RATE_LIMIT", "100000")
        .env("RUST_LOG", "warn");
    cmd
}

struct Cluster {
    db_url: String,
    db: AnyPool,
    fake: FakeMicrosoft,
    hook_url: String,
    hook_secret: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new(receiver: &Receiver) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db_url = fresh_database(&dir, "hooks.db").await;
        let cfg = FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:1/cb");
        let mut cfg = cfg;
        cfg.rotation = Rotation::Strict;
        let fake = FakeMicrosoft::start(cfg).await.unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
            .args(["migrate", "--database-url", &db_url])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let db = AnyPool::connect(&db_url).await.unwrap();
        Cluster {
            db_url,
            db,
            fake,
            hook_url: receiver.url(),
            hook_secret: receiver.secret.clone(),
            _dir: dir,
        }
    }

    /// `n` connected accounts whose access tokens have expired and whose
    /// consent was revoked at the provider: each refresh finds out.
    async fn seed_revoked(&self, n: usize) -> Vec<String> {
        let ring = Keyring::parse(KEYS).unwrap();
        let now = chrono::Utc::now().timestamp();
        let mut ids = Vec::new();
        let mut tx = self.db.begin().await.unwrap();
        for i in 0..n {
            let upn = format!("user{i}@contoso.com");
            self.fake.add_user(FakeUser::work(&upn));
            let rt = self.fake.mint_refresh_token(&upn);
            self.fake.revoke_user(&upn);
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
            ids.push(id);
        }
        tx.commit().await.unwrap();
        ids
    }

    /// A backlog of `per_account` events for each of `accounts` accounts,
    /// as the service would have written them (UUIDv7 ids, in order).
    async fn seed_backlog(&self, accounts: usize, per_account: usize) {
        let now = chrono::Utc::now().timestamp();
        let ids: Vec<String> = (0..accounts)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let mut tx = self.db.begin().await.unwrap();
        for round in 0..per_account {
            for account in &ids {
                let event_id = uuid::Uuid::now_v7().to_string();
                let kind = if round % 2 == 0 {
                    "account.connected"
                } else {
                    "account.disconnected"
                };
                let body = json!({"id": event_id, "type": kind, "time": "2026-01-01T00:00:00Z",
                    "tenant_id": "tenant-b", "account_id": account, "provider": "google",
                    "email": format!("{round}@example.com")})
                .to_string();
                sqlx::query(
                    "INSERT INTO webhook_outbox (endpoint, event_id, event_type, ordering_key, tenant_id,
                         account_id, body, state, attempts, next_attempt_ms, created_at)
                     VALUES ($1, $2, $3, $4, 'tenant-b', $4, $5, 'pending', 0, $6, $7)",
                )
                .bind(&self.hook_url)
                .bind(&event_id)
                .bind(kind)
                .bind(account)
                .bind(&body)
                .bind(now * 1000)
                .bind(now)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }

    async fn replica(&self) -> Replica {
        let port = free_port();
        let base = self.fake.base_url();
        let child = base_command(port, &self.db_url)
            .env("MICROSOFT_OAUTH_CLIENT_ID", CLIENT_ID)
            .env("MICROSOFT_OAUTH_CLIENT_SECRET", CLIENT_SECRET)
            .env("MICROSOFT_OAUTH_AUTHORITY", &base)
            .env("MICROSOFT_GRAPH_URL", &base)
            .env("MAILCONNECT_REFRESH_LEASE_SECS", "3")
            .env("MAILCONNECT_PROVIDER_TIMEOUT_SECS", "1")
            .env("MAILCONNECT_REFRESH_POLL_SECS", "1")
            .env("MAILCONNECT_WEBHOOK_URL", &self.hook_url)
            .env("MAILCONNECT_WEBHOOK_SECRET", &self.hook_secret)
            .env("MAILCONNECT_WEBHOOK_POLL_MS", "100")
            .env("MAILCONNECT_WEBHOOK_BACKOFF_BASE_MS", "50")
            .env("MAILCONNECT_WEBHOOK_BACKOFF_CAP_MS", "300")
            .env("MAILCONNECT_WEBHOOK_TIMEOUT_MS", "500")
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

    async fn count(&self, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&self.db).await.unwrap();
        n
    }

    /// Waits (30 s at most) until `sql`, a count, is at least `n`.
    async fn wait_count(&self, sql: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.count(sql).await;
            if got >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: {got}, wanted {n}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn pending(&self) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'")
                .fetch_one(&self.db)
                .await
                .unwrap();
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_every_event_once_in_order_through_failures() {
    let mut receiver = Receiver::start(Mode::Fail500).await;
    let cluster = Cluster::new(&receiver).await;
    cluster.seed_backlog(30, 5).await;
    let revoked = cluster.seed_revoked(40).await;
    let mut first = cluster.replica().await;
    let _second = cluster.replica().await;

    // The refreshers find every revoked grant while the receiver fails,
    // and nothing is taken for delivered meanwhile.
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM accounts WHERE status = 'needs_reauth'",
            40,
        )
        .await;
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM webhook_outbox WHERE last_error = 'http_500'",
            1,
        )
        .await;
    assert_eq!(
        cluster
            .count("SELECT COUNT(*) FROM webhook_outbox WHERE state <> 'pending'")
            .await,
        0
    );
    // Accepting, at 100 ms an event: the backlog takes a while.
    receiver.set_mode(Mode::Slow(Duration::from_millis(100)));
    // Kill one replica mid-backlog (no chance to hand anything back), and
    // take the receiver down until a delivery finds it down.
    let total = 30 * 5 + 40;
    receiver.wait_for(1, Duration::from_secs(30)).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    receiver.go_down().await;
    assert!(cluster.pending().await > 0, "the kill came mid-backlog");
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM webhook_outbox WHERE last_error = 'connection_failed'",
            1,
        )
        .await;
    receiver.set_mode(Mode::Accept);
    receiver.come_up().await;

    receiver.wait_for(total, Duration::from_secs(90)).await;
    // Nothing left to send: the counts are final.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.pending().await > 0 {
        assert!(Instant::now() < deadline, "deliveries left pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.assert_clean();
    assert_eq!(receiver.events().len(), total);
    for id in &revoked {
        assert_eq!(receiver.types_for(id), ["account.needs_reauth"]);
    }
    // Only the delivery cut short by the kill may arrive twice.
    let duplicates = receiver.with(|s| s.duplicates);
    assert!(duplicates <= 32, "{duplicates} duplicates");
}

fn refused_at_startup(url: &str, port: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = base_command(port, &db)
        .env("MAILCONNECT_WEBHOOK_URL", url)
        .env("MAILCONNECT_WEBHOOK_SECRET", receiver::new_secret())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{url} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line: {stderr}");
    stderr
}

#[test]
fn a_webhook_url_that_is_not_http_or_is_the_service_itself_is_refused_at_startup() {
    let port = free_port();
    for url in [
        "ftp://hooks.example.com/in".to_owned(),
        "hooks.example.com/in".to_owned(),
        format!("http://127.0.0.1:{port}/hooks"),
        format!("http://localhost:{port}/hooks"),
        format!("http://0.0.0.0:{port}/hooks"),
    ] {
        let line = refused_at_startup(&url, port);
        assert!(line.contains("MAILCONNECT_WEBHOOK_URL"), "{line}");
    }
    let out = base_command(port, "sqlite::memory:")
        .env("MAILCONNECT_WEBHOOK_URL", "https://hooks.example.com/in")
        .env("MAILCONNECT_WEBHOOK_SECRET", "not-a-whsec-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MAILCONNECT_WEBHOOK_SECRET"), "{stderr}");
    assert!(!stderr.contains("not-a-whsec-secret"), "{stderr}");
}
