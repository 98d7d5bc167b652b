//! Chaos with real `mailconnect serve` processes against the strict fake
//! of Microsoft's identity platform (a refresh token dies once used, so a
//! rotated token that is dropped, or a refresh done twice, kills a grant):
//!
//! - PostgreSQL stopped for 20 seconds under two replicas carrying token
//!   requests, background refreshes and webhook deliveries: 503s with
//!   `Retry-After`, never a 500; both replicas recover by themselves;
//!   nothing is lost. Runs on a private PostgreSQL cluster started here,
//!   skipped (with a note) where PostgreSQL's binaries are missing.
//! - A provider failing 30% of its token requests (503s and stalls past
//!   the timeout) for a minute: every account stays connected, each is
//!   refreshed once, and retries keep to the backoff.
//! - The SQLite file made read-only under the service: clear 503s for
//!   changes while reads go on, no corruption, recovery once writable.
//!
//! Each takes one to two minutes; they print what they saw.

#[path = "support/receiver.rs"]
mod receiver;

#[path = "support/db.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailconnect::crypto::{Aad, Keyring};
use mailconnect::http::auth::{mint, Role};
use mailconnect_sandbox::{FakeMicrosoft, FakeMicrosoftConfig, FakeUser, Fault, Rotation};
use receiver::{Mode, Receiver};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::AnyPool;
use support::{free_port, fresh_database, Replica};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_SECRET: &str = "chaos-test-client-secret";
const JWT_SECRET: &str = "chaos-test-jwt-secret-0123456789abcdef";
const TENANT: &str = "tenant-a";

// ---------------------------------------------------------------------------
// The pieces: a seeded database, `serve` processes, a worker's traffic.
// ---------------------------------------------------------------------------

/// An account to seed: its user at the fake, when its stored access token
/// expires and when the refresher should take it.
struct Seed {
    upn: String,
    expires_at: i64,
    due_at: i64,
    revoked: bool,
}

impl Seed {
    fn new(upn: String, expires_in: i64, due_in: i64) -> Seed {
        let now = mailconnect::now();
        Seed {
            upn,
            expires_at: now + expires_in,
            due_at: now + due_in,
            revoked: false,
        }
    }
}

/// Connected accounts with a live refresh token each (or a revoked one);
/// returns their ids in order.
async fn seed(db: &AnyPool, fake: &FakeMicrosoft, seeds: &[Seed]) -> Vec<String> {
    let ring = Keyring::parse(KEYS).unwrap();
    let now = mailconnect::now();
    let mut ids = Vec::new();
    let mut tx = db.begin().await.unwrap();
    for s in seeds {
        fake.add_user(FakeUser::work(&s.upn));
        let rt = fake.mint_refresh_token(&s.upn);
        if s.revoked {
            fake.revoke_user(&s.upn);
        }
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
                 access_token_enc, refresh_token_enc, token_expires_at, connected_at,
                 consecutive_failures, created_at, updated_at, refresh_due_at)
             VALUES ($1, $2, 'microsoft', $3, 'oauth', 'connected', '', $4, $5, $6, $7, 0, $7, $7, $8)",
        )
        .bind(&id)
        .bind(TENANT)
        .bind(&s.upn)
        .bind(ring.seal(
            "seeded-access-token",
            &Aad::new("accounts", &id, "access_token"),
        ))
        .bind(ring.seal(&rt, &Aad::new("accounts", &id, "refresh_token")))
        .bind(s.expires_at)
        .bind(now - 3600)
        .bind(s.due_at)
        .execute(&mut *tx)
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

fn migrate(db_url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
        .args(["migrate", "--database-url", db_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows of `accounts` matching `filter`.
async fn count(db: &AnyPool, filter: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM accounts WHERE {filter}"))
        .fetch_one(db)
        .await
        .unwrap();
    n
}

/// The ids among `ids` whose stored refresh token the fake no longer
/// honours, or that are not connected.
async fn broken_grants(db: &AnyPool, fake: &FakeMicrosoft, ids: &[String]) -> Vec<String> {
    let ring = Keyring::parse(KEYS).unwrap();
    let mut broken = Vec::new();
    for id in ids {
        let (status, enc): (String, Option<String>) =
            sqlx::query_as("SELECT status, refresh_token_enc FROM accounts WHERE id = $1")
                .bind(id)
                .fetch_one(db)
                .await
                .unwrap();
        let live = enc.is_some_and(|enc| {
            let rt = ring
                .open(&enc, &Aad::new("accounts", id, "refresh_token"))
                .unwrap();
            fake.refresh_token_is_live(rt.expose_secret())
        });
        if status != "connected" || !live {
            broken.push(format!("{id} ({status}, live token: {live})"));
        }
    }
    broken
}

/// How a `serve` process is started.
struct ServeSpec<'a> {
    db_url: &'a str,
    fake: &'a FakeMicrosoft,
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    /// Run as this user (and group) id: for a test run as root, whom file
    /// permissions do not stop.
    uid: Option<u32>,
}

struct Service {
    port: u16,
    log: PathBuf,
    process: Replica,
}

impl Service {
    async fn start(spec: ServeSpec<'_>) -> Service {
        let port = free_port();
        let base = spec.fake.base_url();
        let log = std::fs::File::create(&spec.log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MAILCONNECT_BIND", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", spec.db_url)
            .env("JWT_SECRET", JWT_SECRET)
            .env("OAUTH_STATE_SECRET", "chaos-test-state-secret-0123456789ab")
            .env("TOKEN_ENCRYPTION_KEYS", KEYS)
            .env("MICROSOFT_OAUTH_CLIENT_ID", CLIENT_ID)
            .env("MICROSOFT_OAUTH_CLIENT_SECRET", CLIENT_SECRET)
            .env("MICROSOFT_OAUTH_AUTHORITY", &base)
            .env("MICROSOFT_GRAPH_URL", &base)
            .env("MAILCONNECT_REFRESH_POLL_SECS", "1")
            .env("MAILCONNECT_PROVIDER_RATE_LIMIT", "100000")
            .env("RUST_LOG", "warn,mailconnect::core::refresh=info")
            .envs(spec.env)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(uid) = spec.uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().unwrap();
        let service = Service {
            port,
            log: spec.log,
            process: Replica { child },
        };
        service.wait_ready(Duration::from_secs(30)).await;
        service
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn readyz(&self) -> u16 {
        reqwest::Client::new()
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.readyz().await != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready in time: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running: no panic took it down.
    fn assert_alive(&mut self) {
        let exited = self.process.child.try_wait().unwrap();
        assert!(exited.is_none(), "exited with {exited:?}: {}", self.logs());
        assert!(!self.logs().contains("panicked"), "{}", self.logs());
    }
}

fn jwt(role: Role) -> String {
    mint(JWT_SECRET.as_bytes(), "chaos", TENANT, role, 3600)
}

/// One API answer as a client saw it.
#[derive(Clone, Debug)]
struct Answer {
    at: Instant,
    path: String,
    /// 0: no HTTP answer at all (refused, reset, timed out).
    status: u16,
    error: Option<String>,
    retry_after: bool,
}

async fn call(request: reqwest::RequestBuilder, path: &str) -> Answer {
    let at = Instant::now();
    let Ok(r) = request.timeout(Duration::from_secs(60)).send().await else {
        return Answer {
            at,
            path: path.to_owned(),
            status: 0,
            error: None,
            retry_after: false,
        };
    };
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    let body: Option<Value> = r.json().await.ok();
    Answer {
        at,
        path: path.to_owned(),
        status,
        error: body.and_then(|b| b["error"].as_str().map(str::to_owned)),
        retry_after,
    }
}

async fn post(service: &Service, path: impl AsRef<str>, role: Role, body: Option<Value>) -> Answer {
    let path = path.as_ref();
    let mut request = reqwest::Client::new()
        .post(service.url(path))
        .bearer_auth(jwt(role));
    if let Some(body) = body {
        request = request.json(&body);
    }
    call(request, path).await
}

async fn get(service: &Service, path: &str) -> Answer {
    let request = reqwest::Client::new()
        .get(service.url(path))
        .bearer_auth(jwt(Role::Admin));
    call(request, path).await
}

/// Mail workers asking for tokens, round-robin over the services and
/// accounts, until stopped; every answer is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(ports: &[u16], ids: &[String], workers: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|w| {
                let (stop, answers) = (stop.clone(), answers.clone());
                let (ports, ids) = (ports.to_vec(), ids.to_vec());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let service = jwt(Role::Service);
                    let mut n = w;
                    while !stop.load(Ordering::Relaxed) {
                        let port = ports[n % ports.len()];
                        let id = &ids[(n / ports.len()) % ids.len()];
                        let path = format!("/api/accounts/{id}/token");
                        let request = client
                            .post(format!("http://127.0.0.1:{port}{path}"))
                            .bearer_auth(&service);
                        let answer = call(request, &path).await;
                        answers.lock().unwrap().push(answer);
                        n += workers;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            answers,
            tasks,
        }
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        answers
    }
}

/// Statuses and error codes, counted, for the report.
fn tally(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for a in answers {
        let key = format!("{} {}", a.status, a.error.as_deref().unwrap_or(""));
        *t.entry(key).or_default() += 1;
    }
    t
}

/// Never a 500, never a dropped connection; every error is the JSON shape,
/// and every 503 says when to come back.
fn assert_clean_answers(answers: &[Answer], allowed_503: &[&str]) {
    for a in answers {
        assert!(a.status != 0, "no answer at all from {}: {a:?}", a.path);
        assert!(a.status < 500 || a.status == 503, "{a:?}");
        if a.status >= 400 {
            assert!(a.error.is_some(), "not the JSON error shape: {a:?}");
        }
        if a.status == 503 {
            assert!(a.retry_after, "503 without Retry-After: {a:?}");
            let code = a.error.as_deref().unwrap_or("");
            assert!(allowed_503.contains(&code), "{a:?}");
        }
    }
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------
// (a) PostgreSQL stopped for 20 seconds.
// ---------------------------------------------------------------------------

/// A private PostgreSQL cluster on its own port and data directory, so
/// stopping it disturbs no other test. Run as `postgres` when the test runs
/// as root (initdb refuses root). Stopped and removed when dropped.
struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PgCluster {
    /// The newest installed server's binaries, if any.
    fn binaries() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
            .collect();
        found.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        found.pop()
    }

    fn start_new(bin: PathBuf) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("mailconnect-chaos-pg.")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let as_postgres = running_as_root();
        if as_postgres {
            let out = Command::new("chown")
                .args(["postgres", &dir.path().display().to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let cluster = PgCluster {
            bin,
            data,
            port: free_port(),
            as_postgres,
            _dir: dir,
        };
        cluster.run(&format!(
            "initdb -D {} -U postgres --auth=trust -E UTF8",
            cluster.data.display()
        ));
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n",
            cluster.port
        );
        let path = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        cluster.start();
        cluster
    }

    /// Runs one of the cluster's binaries (as `postgres` when root).
    fn run(&self, command: &str) {
        let line = format!("{}/{command}", self.bin.display());
        let out = if self.as_postgres {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", &line])
                .output()
        } else {
            Command::new("sh").args(["-c", &line]).output()
        }
        .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        self.run(&format!(
            "pg_ctl -D {d} -l {d}/server.log -w -t 60 start >/dev/null",
            d = self.data.display()
        ));
    }

    /// Immediate: like a crash, the server recovers from its log at start.
    fn stop(&self) {
        self.run(&format!(
            "pg_ctl -D {} -m immediate -w stop >/dev/null",
            self.data.display()
        ));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let line = format!(
            "{}/pg_ctl -D {} -m immediate -w stop >/dev/null 2>&1",
            self.bin.display(),
            self.data.display()
        );
        let _ = if self.as_postgres {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", &line])
                .status()
        } else {
            Command::new("sh").args(["-c", &line]).status()
        };
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_of_twenty_seconds_answers_503_and_loses_nothing() {
    let Some(bin) = PgCluster::binaries() else {
        // Straight to stderr: the test harness captures eprintln!.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED postgres_outage_of_twenty_seconds_answers_503_and_loses_nothing: \
             no PostgreSQL binaries under /usr/lib/postgresql (scripts/pg.sh installs them)"
        );
        return;
    };
    sqlx::any::install_default_drivers();
    let started = Instant::now();
    let pg = PgCluster::start_new(bin);
    let db_url = pg.url();
    migrate(&db_url);
    let db = AnyPool::connect(&db_url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:1/cb");
    cfg.rotation = Rotation::Strict;
    let fake = FakeMicrosoft::start(cfg).await.unwrap();
    // Every refresh spends a while at the provider, so some are in flight
    // when the database goes.
    fake.set_fault(Some(Fault::Slow(Duration::from_millis(1_500))));
    let far = 86_400;
    let user = |group: &str, i: usize| format!("{group}{i}@contoso.com");
    // Refreshed by the background refresher before the outage, at its
    // start, and (due during it) after it; refreshed on demand by the
    // token route; revoked (each one `account.needs_reauth` webhook).
    let before = seed(
        &db,
        &fake,
        &(0..30)
            .map(|i| Seed::new(user("before", i), 3600, -1))
            .collect::<Vec<_>>(),
    )
    .await;
    let at_stop = seed(
        &db,
        &fake,
        &(0..30)
            .map(|i| Seed::new(user("atstop", i), 3600, far))
            .collect::<Vec<_>>(),
    )
    .await;
    let during = seed(
        &db,
        &fake,
        &(0..40)
            .map(|i| Seed::new(user("during", i), 3600, far))
            .collect::<Vec<_>>(),
    )
    .await;
    let on_demand = seed(
        &db,
        &fake,
        &(0..16)
            .map(|i| Seed::new(user("demand", i), -10, far))
            .collect::<Vec<_>>(),
    )
    .await;
    let revoked_seeds = (0..16)
        .map(|i| Seed {
            revoked: true,
            ..Seed::new(user("revoked", i), 3600, if i < 8 { -1 } else { far })
        })
        .collect::<Vec<_>>();
    let revoked = seed(&db, &fake, &revoked_seeds).await;
    let spare = seed(&db, &fake, &[Seed::new(user("spare", 0), 3600, far)]).await;

    // The receiver fails until the outage: deliveries are pending across it.
    let receiver = Receiver::start(Mode::Fail500).await;
    let env = || {
        vec![
            ("MAILCONNECT_REFRESH_LEASE_SECS", "30".to_owned()),
            ("MAILCONNECT_REFRESH_CONCURRENCY", "16".to_owned()),
            ("MAILCONNECT_WEBHOOK_URL", receiver.url()),
            ("MAILCONNECT_WEBHOOK_SECRET", receiver.secret.clone()),
            ("MAILCONNECT_WEBHOOK_POLL_MS", "200".to_owned()),
            ("MAILCONNECT_WEBHOOK_BACKOFF_BASE_MS", "100".to_owned()),
            ("MAILCONNECT_WEBHOOK_BACKOFF_CAP_MS", "1000".to_owned()),
            ("MAILCONNECT_WEBHOOK_TIMEOUT_MS", "1000".to_owned()),
        ]
    };
    let mut replicas = Vec::new();
    for n in 0..2 {
        replicas.push(
            Service::start(ServeSpec {
                db_url: &db_url,
                fake: &fake,
                env: env(),
                log: dir.path().join(format!("replica-{n}.log")),
                uid: None,
            })
            .await,
        );
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let mut worked_on: Vec<String> = on_demand.clone();
    worked_on.extend(before.iter().take(16).cloned());
    let traffic = Traffic::start(&ports, &worked_on, 4);

    let before_filter = in_list(&before);
    wait_until(
        "the first accounts refreshed",
        Duration::from_secs(30),
        || async {
            count(
                &db,
                &format!("{before_filter} AND last_refresh_at IS NOT NULL"),
            )
            .await
                == 30
        },
    )
    .await;

    // Due now: refreshes (and on-demand ones) in flight when it stops.
    let now = mailconnect::now();
    let mut burst = at_stop.clone();
    burst.extend(revoked[8..].iter().cloned());
    sqlx::query(&format!(
        "UPDATE accounts SET refresh_due_at = $1 WHERE {}",
        in_list(&burst)
    ))
    .bind(now)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE accounts SET refresh_due_at = $1 WHERE {}",
        in_list(&during)
    ))
    .bind(now + 10)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE accounts SET token_expires_at = $1 WHERE {}",
        in_list(&on_demand)
    ))
    .bind(now - 10)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;

    receiver.set_mode(Mode::Accept);
    pg.stop();
    let stopped = Instant::now();
    eprintln!("PostgreSQL stopped at {:?}", started.elapsed());

    // While it is down: not ready, and the API says why, in JSON.
    let mut ready_during = Vec::new();
    let spare_id = &spare[0];
    let admin_calls = futures::future::join_all(replicas.iter().map(|r| async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (status, disconnect) = tokio::join!(
            get(r, "/api/oauth/status"),
            post(
                r,
                "/api/oauth/microsoft/disconnect",
                Role::Admin,
                Some(serde_json::json!({"account_id": spare_id}))
            ),
        );
        vec![status, disconnect]
    }));
    let probe = async {
        while stopped.elapsed() < Duration::from_secs(20) {
            if stopped.elapsed() > Duration::from_secs(2) {
                for r in &replicas {
                    ready_during.push(r.readyz().await);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (admin_answers, ()) = tokio::join!(admin_calls, probe);
    let admin_answers: Vec<Answer> = admin_answers.into_iter().flatten().collect();
    let remaining = Duration::from_secs(20).saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await;
    pg.start();
    let restarted = Instant::now();
    eprintln!(
        "PostgreSQL started again after {:?} down",
        restarted - stopped
    );

    for r in &replicas {
        r.wait_ready(Duration::from_secs(20)).await;
    }
    let recovered_in = restarted.elapsed();
    let db = AnyPool::connect(&db_url).await.unwrap();
    let mut healthy: Vec<String> = before.clone();
    healthy.extend(at_stop.iter().cloned());
    healthy.extend(during.iter().cloned());
    healthy.extend(on_demand.iter().cloned());
    let refreshed_filter = format!(
        "{} AND last_refresh_at IS NOT NULL AND lease_owner IS NULL",
        in_list(&healthy)
    );
    let healthy_n = healthy.len() as i64;
    wait_until(
        "every account refreshed after the outage",
        Duration::from_secs(60),
        || async { count(&db, &refreshed_filter).await == healthy_n },
    )
    .await;
    receiver
        .wait_for(revoked.len(), Duration::from_secs(60))
        .await;
    let answers = traffic.stop().await;
    let outage_answers: Vec<Answer> = answers
        .iter()
        .filter(|a| a.at > stopped && a.at < restarted)
        .cloned()
        .collect();

    eprintln!(
        "token route: {:?}; during the outage: {:?}; admin routes during it: {:?}; \
         readyz during it: {:?}; ready again {:?} after the restart; {} refresh grants; \
         {} webhook events; whole test {:?}",
        tally(&answers),
        tally(&outage_answers),
        tally(&admin_answers),
        ready_during,
        recovered_in,
        fake.refresh_grants(),
        receiver.events().len(),
        started.elapsed()
    );

    // During: 503 JSON with Retry-After, never a 500.
    assert_clean_answers(&answers, &["database_unavailable", "provider_unavailable"]);
    assert!(
        outage_answers
            .iter()
            .any(|a| a.error.as_deref() == Some("database_unavailable")),
        "the token route said the database was unavailable"
    );
    assert_clean_answers(&admin_answers, &["database_unavailable"]);
    assert!(
        admin_answers.iter().all(|a| a.status == 503),
        "{admin_answers:?}"
    );
    assert!(!ready_during.is_empty());
    assert!(ready_during.iter().all(|s| *s == 503), "{ready_during:?}");

    // After: both replicas alive (never restarted), every grant alive.
    for r in &mut replicas {
        r.assert_alive();
    }
    let broken = broken_grants(&db, &fake, &healthy).await;
    assert!(broken.is_empty(), "grants lost: {broken:?}");
    assert_eq!(
        count(
            &db,
            &format!("{} AND status = 'needs_reauth'", in_list(&revoked))
        )
        .await,
        revoked.len() as i64
    );
    // Each account refreshed once, the on-demand ones twice (seeded expired,
    // expired again at the outage): nothing twice that should not be.
    let expected = before.len() + at_stop.len() + during.len() + 2 * on_demand.len();
    assert!(
        fake.refresh_grants() <= expected,
        "{} refresh grants for {expected} refreshes",
        fake.refresh_grants()
    );

    // Answers the database could not take were kept and stored later.
    let logs: String = replicas.iter().map(Service::logs).collect();
    let kept = logs.matches("keeping it in memory").count();
    let stored = logs.matches("a kept answer was stored").count();
    eprintln!("answers kept through the outage: {kept}, stored later: {stored}");
    assert!(kept > 0, "no refresh was caught by the outage");
    assert!(stored > 0);

    // Every webhook arrived, verified, in order, once per revoked account.
    receiver.assert_clean();
    for id in &revoked {
        assert_eq!(receiver.types_for(id), ["account.needs_reauth"], "{id}");
    }
    wait_until("the outbox empty", Duration::from_secs(20), || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'")
                .fetch_one(&db)
                .await
                .unwrap();
        n == 0
    })
    .await;
    db.close().await;
}

fn in_list(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!("id IN ({})", quoted.join(","))
}

// ---------------------------------------------------------------------------
// (b) A provider failing 30% of token requests for a minute.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_provider_for_a_minute_keeps_every_account_connected_and_refreshed_once() {
    const ACCOUNTS: usize = 80;
    const BACKOFF_BASE: u64 = 2;
    const BACKOFF_CAP: u64 = 16;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(&dir, "flaky.db").await;
    migrate(&db_url);
    let db = AnyPool::connect(&db_url).await.unwrap();
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:1/cb");
    cfg.rotation = Rotation::Strict;
    let fake = FakeMicrosoft::start(cfg).await.unwrap();
    // Valid access tokens (workers get them all along), refreshes coming
    // due over the first 45 seconds of the minute.
    let seeds: Vec<Seed> = (0..ACCOUNTS)
        .map(|i| {
            Seed::new(
                format!("user{i}@contoso.com"),
                3600,
                3 + (i as i64 * 45) / ACCOUNTS as i64,
            )
        })
        .collect();
    let ids = seed(&db, &fake, &seeds).await;

    let env = || {
        vec![
            ("MAILCONNECT_REFRESH_LEASE_SECS", "30".to_owned()),
            ("MAILCONNECT_REFRESH_CONCURRENCY", "8".to_owned()),
            (
                "MAILCONNECT_REFRESH_BACKOFF_BASE_SECS",
                BACKOFF_BASE.to_string(),
            ),
            (
                "MAILCONNECT_REFRESH_BACKOFF_CAP_SECS",
                BACKOFF_CAP.to_string(),
            ),
        ]
    };
    let mut replicas = Vec::new();
    for n in 0..2 {
        replicas.push(
            Service::start(ServeSpec {
                db_url: &db_url,
                fake: &fake,
                env: env(),
                log: dir.path().join(format!("replica-{n}.log")),
                uid: None,
            })
            .await,
        );
    }
    // Stalls outlast the service's 10-second provider timeout.
    fake.record_token_requests(true);
    fake.set_fault(Some(Fault::Flaky {
        percent: 30,
        stall: Duration::from_secs(12),
    }));
    let chaos_started = Instant::now();
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let traffic = Traffic::start(&ports, &ids, 2);

    let mut left_connected = Vec::new();
    while chaos_started.elapsed() < Duration::from_secs(60) {
        let n = count(&db, "status <> 'connected'").await;
        if n > 0 {
            left_connected.push(n);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    fake.set_fault(None);
    let all = ACCOUNTS as i64;
    wait_until(
        "every account refreshed",
        Duration::from_secs(60),
        || async { count(&db, "last_refresh_at IS NOT NULL AND lease_owner IS NULL").await == all },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = traffic.stop().await;
    let log = fake.token_request_log();

    // Per account, in order: the requests and what they got.
    let mut by_user: HashMap<String, Vec<_>> = HashMap::new();
    for r in &log {
        let user = r.user.clone().expect("every request carried a known token");
        by_user.entry(user).or_default().push(r.clone());
    }
    let failed = log.iter().filter(|r| r.status != 200).count();
    let stalled = log.iter().filter(|r| r.stalled).count();
    let most_failures = by_user
        .values()
        .map(|rs| rs.iter().filter(|r| r.status != 200).count())
        .max()
        .unwrap_or(0);
    let mut shortest_wait = BTreeMap::new();
    for requests in by_user.values() {
        for (k, pair) in requests.windows(2).enumerate() {
            let gap = pair[1].at - pair[0].at;
            let e = shortest_wait.entry(k + 1).or_insert(gap);
            *e = (*e).min(gap);
        }
    }
    eprintln!(
        "{} token requests, {failed} failed ({stalled} stalled past the timeout), at most \
         {most_failures} failures for one account; shortest wait after the n-th failure in a \
         row: {shortest_wait:?}; token route: {:?}; whole test {:?}",
        log.len(),
        tally(&answers),
        started.elapsed()
    );

    for r in &mut replicas {
        r.assert_alive();
    }
    assert!(
        left_connected.is_empty(),
        "accounts left connected: {left_connected:?}"
    );
    let broken = broken_grants(&db, &fake, &ids).await;
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(
        fake.refresh_grants(),
        ACCOUNTS,
        "each account refreshed once"
    );
    assert_eq!(by_user.len(), ACCOUNTS);
    assert_eq!(
        count(&db, "consecutive_failures = 0 AND last_error IS NULL").await,
        all
    );
    // The chaos did happen, enough to test the backoff's growth.
    assert!(
        failed >= 20 && stalled >= 3,
        "{failed} failed, {stalled} stalled"
    );
    assert!(most_failures >= 2);
    for (user, requests) in &by_user {
        // One success, and it is the last request.
        let successes: Vec<_> = requests.iter().filter(|r| r.status == 200).collect();
        assert_eq!(successes.len(), 1, "{user}: {requests:?}");
        assert_eq!(requests.last().unwrap().status, 200, "{user}: {requests:?}");
        // After the n-th failure in a row, at least base·2^(n-1) (capped),
        // less up to a second: due times are whole seconds.
        for (k, pair) in requests.windows(2).enumerate() {
            let backoff = (BACKOFF_BASE << k.min(10)).min(BACKOFF_CAP);
            let floor = Duration::from_secs(backoff - 1);
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= floor,
                "{user}: retried {gap:?} after failure {} (backoff {backoff} s)",
                k + 1
            );
        }
    }
    // Workers got their (still valid) tokens all along.
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        tally(&answers)
    );
    db.close().await;
}

// ---------------------------------------------------------------------------
// (c) The SQLite file made read-only under the service.
// ---------------------------------------------------------------------------

fn integrity(file: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap()
}

fn chmod(file: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_made_read_only_answers_503_for_changes_and_recovers_uncorrupted() {
    sqlx::any::install_default_drivers();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ro.db");
    let db_url = format!("sqlite://{}", file.display());
    migrate(&db_url);
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:1/cb");
    cfg.rotation = Rotation::Strict;
    let fake = FakeMicrosoft::start(cfg).await.unwrap();
    let far = 86_400;
    let (fresh, expired, due, untouched, spare) = {
        let db = AnyPool::connect(&db_url).await.unwrap();
        let group = |name: &str, n: usize, expires_in: i64| {
            (0..n)
                .map(|i| Seed::new(format!("{name}{i}@contoso.com"), expires_in, far))
                .collect::<Vec<_>>()
        };
        let ids = (
            seed(&db, &fake, &group("fresh", 5, 3600)).await,
            seed(&db, &fake, &group("expired", 6, -10)).await,
            seed(&db, &fake, &group("due", 10, 3600)).await,
            seed(&db, &fake, &group("untouched", 3, -10)).await,
            seed(&db, &fake, &group("spare", 1, 3600)).await,
        );
        db.close().await;
        ids
    };
    // As root, file permissions stop no one: the service runs as `nobody`,
    // owner of the directory and the database.
    let uid = running_as_root().then_some(65_534);
    if let Some(uid) = uid {
        for entry in std::iter::once(dir.path().to_path_buf()).chain(
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path()),
        ) {
            std::os::unix::fs::chown(&entry, Some(uid), Some(uid)).unwrap();
        }
    }
    let mut service = Service::start(ServeSpec {
        db_url: &db_url,
        fake: &fake,
        env: vec![("MAILCONNECT_REFRESH_LEASE_SECS", "30".to_owned())],
        log: dir.path().join("serve.log"),
        uid,
    })
    .await;
    let disconnect = || {
        post(
            &service,
            "/api/oauth/microsoft/disconnect",
            Role::Admin,
            Some(serde_json::json!({"account_id": spare[0]})),
        )
    };

    // Refreshes in flight (background and on demand) when the file turns
    // read-only; the provider answers after the service noticed.
    fake.set_fault(Some(Fault::Slow(Duration::from_millis(3_500))));
    let grants = fake.refresh_grants();
    {
        let db = AnyPool::connect(&db_url).await.unwrap();
        sqlx::query(&format!(
            "UPDATE accounts SET refresh_due_at = $1 WHERE {}",
            in_list(&due)
        ))
        .bind(mailconnect::now())
        .execute(&db)
        .await
        .unwrap();
        db.close().await;
    }
    let on_demand = futures::future::join_all(expired.iter().map(|id| {
        post(
            &service,
            format!("/api/accounts/{id}/token"),
            Role::Service,
            None,
        )
    }));
    let (on_demand, ()) = tokio::join!(on_demand, async {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        chmod(&file, 0o444);
    });
    let read_only = Instant::now();
    eprintln!("made read-only at {:?}", started.elapsed());
    // The workers got the new tokens although they could not be stored.
    assert!(on_demand.iter().all(|a| a.status == 200), "{on_demand:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Changes: 503 `database_read_only`, JSON, Retry-After. Reads go on.
    let change = disconnect().await;
    let asked = fake.token_requests();
    let untouched_token = post(
        &service,
        &format!("/api/accounts/{}/token", untouched[0]),
        Role::Service,
        None,
    )
    .await;
    assert_eq!(
        fake.token_requests(),
        asked,
        "no refresh it could not store: {untouched_token:?} {}",
        service.logs()
    );
    let kept_token = post(
        &service,
        &format!("/api/accounts/{}/token", expired[0]),
        Role::Service,
        None,
    )
    .await;
    let fresh_token = post(
        &service,
        &format!("/api/accounts/{}/token", fresh[0]),
        Role::Service,
        None,
    )
    .await;
    let status = get(&service, "/api/oauth/status").await;
    let ready = service.readyz().await;
    let metrics = reqwest::get(service.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let during = [change.clone(), untouched_token.clone()];
    assert_clean_answers(&during, &["database_read_only"]);
    assert_eq!(change.status, 503, "{change:?}");
    assert_eq!(change.error.as_deref(), Some("database_read_only"));
    assert_eq!(untouched_token.status, 503, "{untouched_token:?}");
    assert_eq!(untouched_token.error.as_deref(), Some("database_read_only"));
    assert_eq!(kept_token.status, 200, "the kept answer is handed out");
    assert_eq!(fresh_token.status, 200, "reads go on");
    assert_eq!(status.status, 200, "reads go on");
    assert_eq!(ready, 200, "the database answers reads");
    assert!(
        metrics.contains("mailconnect_database_writable 0"),
        "{metrics}"
    );
    assert_eq!(integrity(&file), "ok");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(read_only.elapsed())).await;

    chmod(&file, 0o644);
    let writable = Instant::now();
    wait_until(
        "changes accepted again",
        Duration::from_secs(10),
        || async { disconnect().await.status == 200 },
    )
    .await;
    let recovered_in = writable.elapsed();
    fake.set_fault(None);
    let untouched_again = post(
        &service,
        &format!("/api/accounts/{}/token", untouched[0]),
        Role::Service,
        None,
    )
    .await;
    assert_eq!(untouched_again.status, 200, "{untouched_again:?}");
    {
        let db = AnyPool::connect(&format!("{db_url}?mode=ro"))
            .await
            .unwrap();
        let mut refreshed: Vec<String> = expired.clone();
        refreshed.extend(due.iter().cloned());
        let filter = format!(
            "{} AND last_refresh_at IS NOT NULL AND lease_owner IS NULL",
            in_list(&refreshed)
        );
        let n = refreshed.len() as i64;
        wait_until("kept refreshes stored", Duration::from_secs(30), || async {
            count(&db, &filter).await == n
        })
        .await;
        let mut all = refreshed;
        all.extend(fresh.iter().cloned());
        all.extend(untouched.iter().take(1).cloned());
        let broken = broken_grants(&db, &fake, &all).await;
        assert!(broken.is_empty(), "{broken:?}");
        db.close().await;
    }
    let logs = service.logs();
    let kept = logs.matches("keeping it in memory").count();
    eprintln!(
        "answers kept while read-only: {kept}; writable again and accepting changes after \
         {recovered_in:?}; {} refresh grants; whole test {:?}",
        fake.refresh_grants() - grants,
        started.elapsed()
    );
    assert!(kept > 0, "no refresh was caught by the read-only file");
    assert!(logs.contains("the database file is not writable"), "{logs}");
    assert!(logs.contains("writable again"), "{logs}");
    assert_eq!(
        fake.refresh_grants() - grants,
        expired.len() + due.len() + 1,
        "each once"
    );
    service.assert_alive();
    drop(service);
    assert_eq!(integrity(&file), "ok");
}
