//! Operator commands: key rotation on a few thousand accounts (interrupted
//! and resumed), the account list, minting JWTs, and where `demo` listens.

#[path = "support/db.rs"]
mod support;

use std::process::Command;

use mailconnect::crypto::{Aad, Keyring};
use mailconnect::db::Db;
use secrecy::ExposeSecret;

const OLD: &str = "old:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const NEW: &str = "new:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

async fn seeded(dir: &tempfile::TempDir, n: usize) -> (String, Db) {
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    let ring = Keyring::parse(OLD).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
                 access_token_enc, refresh_token_enc, token_expires_at, consecutive_failures,
                 created_at, updated_at, refresh_due_at)
             VALUES ($1, $2, 'microsoft', $3, 'oauth', 'connected', '', $4, $5, 4000000000, 0, 0, 0, 4000000000)",
        )
        .bind(&id)
        .bind(if i % 2 == 0 { "tenant-a" } else { "tenant-b" })
        .bind(format!("user{i}@contoso.com"))
        .bind(ring.seal(&format!("access-{i}"), &Aad::new("accounts", &id, "access_token")))
        .bind(ring.seal(&format!("refresh-{i}"), &Aad::new("accounts", &id, "refresh_token")))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    (url, db)
}

#[tokio::test]
async fn key_rotation_interrupted_half_way_resumes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = seeded(&dir, 3000).await;
    let both = Keyring::parse(&format!("{NEW},{OLD}")).unwrap();

    let first = mailconnect::ops::rotate_keys(&db, &both, Some(2500))
        .await
        .unwrap();
    assert!(first.incomplete);
    assert_eq!(first.reencrypted, 2500);
    assert_eq!(first.unreadable, 0);

    let second = mailconnect::ops::rotate_keys(&db, &both, None)
        .await
        .unwrap();
    assert!(!second.incomplete);
    assert_eq!(second.reencrypted, 6000 - 2500);
    assert_eq!(second.already_current, 2500);
    assert_eq!(second.accounts_scanned, 3000);

    // Every secret now opens with the new key alone, and says what it said.
    let new_only = Keyring::parse(NEW).unwrap();
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT id, email, access_token_enc, refresh_token_enc FROM accounts")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3000);
    for (id, email, access, refresh) in rows {
        let i = email
            .trim_start_matches("user")
            .trim_end_matches("@contoso.com");
        let a = new_only
            .open(&access, &Aad::new("accounts", &id, "access_token"))
            .unwrap();
        let r = new_only
            .open(&refresh, &Aad::new("accounts", &id, "refresh_token"))
            .unwrap();
        assert_eq!(a.expose_secret(), format!("access-{i}"));
        assert_eq!(r.expose_secret(), format!("refresh-{i}"));
    }
    let third = mailconnect::ops::rotate_keys(&db, &both, None)
        .await
        .unwrap();
    assert_eq!((third.reencrypted, third.already_current), (0, 6000));
}

#[tokio::test]
async fn rotation_without_the_old_key_reports_unreadable_secrets_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = seeded(&dir, 10).await;
    let rows = || async {
        sqlx::query_as::<_, (String, String, String, i64)>(
            "SELECT id, access_token_enc, refresh_token_enc, updated_at FROM accounts ORDER BY id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let before = rows().await;
    let report = mailconnect::ops::rotate_keys(&db, &Keyring::parse(NEW).unwrap(), None)
        .await
        .unwrap();
    assert_eq!((report.reencrypted, report.unreadable), (0, 20));
    assert_eq!(rows().await, before, "not one stored byte changed");
    assert_eq!(before.len(), 10);
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_lists_accounts_without_secrets_rotates_keys_and_mints_jwts() {
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = seeded(&dir, 4).await;
    let (ok, out, _) = cli(
        &[
            "accounts",
            "list",
            "--database-url",
            &url,
            "--tenant",
            "tenant-a",
        ],
        &[],
    );
    assert!(ok);
    assert!(out.contains("user0@contoso.com") && out.contains("user2@contoso.com"));
    assert!(!out.contains("user1@contoso.com"), "tenant filter");
    assert!(
        !out.contains("v1:") && !out.contains("access-0"),
        "no secret or ciphertext"
    );
    assert!(out.trim_end().ends_with("2 accounts"));

    let (ok, out, err) = cli(
        &["keys", "rotate", "--database-url", &url],
        &[("TOKEN_ENCRYPTION_KEYS", &format!("{NEW},{OLD}"))],
    );
    assert!(ok, "{err}");
    assert!(out.contains("8 secrets re-encrypted"), "{out}");
    let (ok, _, err) = cli(
        &["keys", "rotate", "--database-url", &url],
        &[("TOKEN_ENCRYPTION_KEYS", "")],
    );
    assert!(!ok && err.contains("TOKEN_ENCRYPTION_KEYS"), "{err}");

    let secret = "cli-test-jwt-secret-0123456789abcdef";
    let (ok, token, _) = cli(
        &[
            "jwt",
            "--tenant",
            "tenant-a",
            "--role",
            "service",
            "--lifetime",
            "15m",
        ],
        &[("JWT_SECRET", secret)],
    );
    assert!(ok);
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["tenant_id"], "tenant-a");
    assert_eq!(claims["role"], "service");
    let ttl = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!((890..=900).contains(&ttl), "{ttl}");
    let (ok, _, err) = cli(
        &["jwt", "--tenant", "t", "--role", "root"],
        &[("JWT_SECRET", secret)],
    );
    assert!(!ok && err.contains("root"));
    drop(db);
}

/// Where `demo` listens: `MAILCONNECT_BIND`, read as `serve` reads it, and
/// `--bind` over it.
#[cfg(feature = "demo")]
mod demo {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{cli, support};

    /// `mailconnect demo` on `database_url` with `args` and `MAILCONNECT_BIND`
    /// set to `env_bind`; stopped when dropped. Its log goes to `log`.
    fn start_demo(
        database_url: &str,
        args: &[&str],
        env_bind: &str,
        log: &std::path::Path,
    ) -> support::Replica {
        let child = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
            .args(["demo", "--database-url", database_url])
            .args(args)
            .env("MAILCONNECT_BIND", env_bind)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        support::Replica { child }
    }

    /// Waits until `GET http://{addr}/readyz` answers 200.
    async fn wait_ready(addr: &str, log: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            let answer = http
                .get(format!("http://{addr}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing ready on {addr}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn listens_on_mailconnect_bind_unless_bind_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        let log = dir.path().join("demo.log");

        let from_env = format!("127.0.0.1:{}", support::free_port());
        let demo = start_demo(&db("env.db"), &[], &from_env, &log);
        wait_ready(&from_env, &log).await;
        drop(demo);

        // The flag wins over a setting that demo mode would refuse.
        let from_flag = format!("127.0.0.1:{}", support::free_port());
        let demo = start_demo(
            &db("flag.db"),
            &["--bind", &from_flag],
            "0.0.0.0:8080",
            &log,
        );
        wait_ready(&from_flag, &log).await;
        drop(demo);

        // Read as `serve --dev` reads it: loopback only.
        let (ok, _, err) = cli(
            &["demo", "--database-url", &db("public.db")],
            &[("MAILCONNECT_BIND", "0.0.0.0:8080")],
        );
        assert!(
            !ok && err.contains("MAILCONNECT_BIND: dev mode binds loopback only"),
            "{err}"
        );
    }
}

#[test]
fn the_cli_makes_a_certificate_credential_and_shows_it_without_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mailconnect-cert.pem");
    let out_s = out.to_str().unwrap();
    let (ok, stdout, stderr) = cli(
        &[
            "credentials",
            "new-certificate",
            "--days",
            "90",
            "--out",
            out_s,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("BEGIN CERTIFICATE") && written.contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only its owner may read the key");
    }
    // What to upload: the certificate alone, and its thumbprints.
    assert!(stdout.contains("BEGIN CERTIFICATE"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "the key is never printed");
    let thumbprint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Thumbprint (SHA-1, as Entra shows it): "))
        .expect("a thumbprint line")
        .trim()
        .to_owned();
    assert_eq!(thumbprint.len(), 40);
    // Never over an existing file.
    let (ok, _, stderr) = cli(&["credentials", "new-certificate", "--out", out_s], &[]);
    assert!(!ok && stderr.contains("never overwritten"), "{stderr}");

    // `show` reads the environment as `serve` does.
    let (ok, stdout, stderr) = cli(
        &["credentials", "show", "--json"],
        &[
            (
                "MICROSOFT_OAUTH_CLIENT_ID",
                "00000000-0000-0000-0000-00000000c0de",
            ),
            ("MICROSOFT_OAUTH_CLIENT_CERTIFICATE", out_s),
            ("GOOGLE_OAUTH_CLIENT_ID", "g.apps.googleusercontent.com"),
            ("GOOGLE_OAUTH_CLIENT_SECRET", "GOCSPX-never-printed"),
            (
                "GOOGLE_OAUTH_CLIENT_SECRET_EXPIRES_AT",
                "2027-03-01T00:00:00Z",
            ),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains("GOCSPX") && !stdout.contains("PRIVATE"),
        "{stdout}"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["provider"], "microsoft");
    assert_eq!(lines[0]["kind"], "certificate");
    assert_eq!(lines[0]["thumbprint"], thumbprint.as_str());
    assert!(lines[0]["expires_at"].is_string());
    assert_eq!(lines[1]["kind"], "secret");
    assert_eq!(lines[1]["expires_at"], "2027-03-01T00:00:00Z");

    // Two credentials for one provider stop it, naming them.
    let (ok, _, stderr) = cli(
        &["credentials", "show"],
        &[
            (
                "MICROSOFT_OAUTH_CLIENT_ID",
                "00000000-0000-0000-0000-00000000c0de",
            ),
            ("MICROSOFT_OAUTH_CLIENT_CERTIFICATE", out_s),
            ("MICROSOFT_OAUTH_CLIENT_SECRET", "also-a-secret"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("MICROSOFT_OAUTH_CLIENT_CERTIFICATE")
            && stderr.contains("MICROSOFT_OAUTH_CLIENT_SECRET"),
        "{stderr}"
    );
    assert!(!stderr.contains("also-a-secret"));
}

/// The README's troubleshooting table is the code's, word for word: what
/// `mailconnect causes` prints.
#[test]
fn the_readme_shows_the_table_of_causes_the_cli_prints() {
    let (ok, printed, stderr) = cli(&["causes"], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(printed, mailconnect::diagnosis::markdown_table());
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (begin, end) = ("<!-- causes:begin -->\n", "<!-- causes:end -->");
    let start = readme.find(begin).expect("README has the causes markers") + begin.len();
    let stop = readme[start..].find(end).expect("the end marker") + start;
    assert_eq!(
        &readme[start..stop],
        printed,
        "README.md is out of date: paste `mailconnect causes` between its causes markers"
    );
}
