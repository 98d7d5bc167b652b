//! `TestApp`: the real service on a random port with a fresh SQLite file,
//! in front of a strict fake of Microsoft's identity platform and Graph.
//! Logs of the whole test binary are captured (and printed with TEST_LOG=1)
//! so one test can prove no secret ever reached them.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use mailconnect::config::{Config, Env};
pub use mailconnect::domain::ProviderKind;
use mailconnect::http::auth::{mint, Role};
use mailconnect_sandbox::google::{FakeGoogle, FakeGoogleConfig, GoogleUser};
use mailconnect_sandbox::oidc::{FakeOidc, FakeOidcConfig, OidcUser};
pub use mailconnect_sandbox::ServerCert;
use mailconnect_sandbox::{FakeExchange, FakeMicrosoft, FakeMicrosoftConfig, FakeUser, Rotation};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";
pub const STATE_SECRET: &str = "test-state-secret-0123456789abcdef-01";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "client~secret~of~the~app~registration";
pub const GOOGLE_CLIENT_ID: &str = "1234567890-sandbox.apps.googleusercontent.com";
pub const GOOGLE_CLIENT_SECRET: &str = "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ts";
pub const OIDC_CLIENT_ID: &str = "mailconnect-at-the-oidc-provider";
pub const OIDC_CLIENT_SECRET: &str = "oidc-client-secret-for-tests";
pub const KEY_OLD: &str = "old:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const KEY_NEW: &str = "new:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
pub const TENANT: &str = "tenant-a";
pub const OTHER_TENANT: &str = "tenant-b";

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var("TEST_LOG").is_ok() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged so far by this test binary, at trace level.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get().expect("logging initialised").lock().unwrap()).into_owned()
}

/// Where the captured logs end now; see [`logged_since`].
pub fn log_mark() -> usize {
    LOGS.get().map_or(0, |l| l.lock().unwrap().len())
}

/// Whether one line logged since `mark` (by any test of this binary) holds
/// every one of `needles`.
pub fn logged_since(mark: usize, needles: &[&str]) -> bool {
    let logs = LOGS.get().expect("logging initialised").lock().unwrap();
    String::from_utf8_lossy(&logs[mark.min(logs.len())..])
        .lines()
        .any(|l| needles.iter().all(|n| l.contains(n)))
}

fn init_logging() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        tracing_subscriber::fmt()
            .with_env_filter("trace,hyper=debug,h2=info,rustls=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buf
    });
}

pub struct Options {
    pub rotation: Rotation,
    pub users: Vec<FakeUser>,
    pub keys: String,
    pub expires_in_as_string: bool,
    pub db_dir: Option<Arc<tempfile::TempDir>>,
    /// Reuse this database (a restart); else a fresh one.
    pub db_url: Option<String>,
    pub fake: Option<(FakeMicrosoft, FakeGoogle)>,
    pub return_url: Option<String>,
    /// Configure Google too (both providers at once is the normal case).
    pub google: bool,
    pub google_users: Vec<GoogleUser>,
    pub google_email_in_id_token: bool,
    /// A webhook endpoint `(url, whsec_ secret)`, delivered to with short
    /// retry delays.
    pub webhook: Option<(String, String)>,
    /// More settings, e.g. `MAILCONNECT_WEBHOOK_GIVE_UP_SECS`.
    pub env: Vec<(&'static str, String)>,
    /// Configure the generic `oidc` provider too, in front of a third fake
    /// (a standards-only OpenID provider at its own address).
    pub oidc: bool,
    /// Reuse this `oidc` fake (a restart).
    pub oidc_fake: Option<FakeOidc>,
    /// Adjusts the `oidc` fake's configuration before it starts.
    pub oidc_setup: Option<fn(&mut FakeOidcConfig)>,
    /// `OIDC_OAUTH_CLIENT_KEY` instead of the `oidc` client secret.
    pub oidc_key: Option<PathBuf>,
    /// How long a provider request may take (the binary's is 10 s).
    pub provider_timeout: Duration,
    /// Starts a [`FakeExchange`] on the Microsoft fake and points
    /// `MICROSOFT_IMAP_HOST`/`_SMTP_HOST` (and the extra CA file) at it.
    pub exchange: bool,
    /// The certificate that Exchange presents (and the extra CA file lists).
    pub exchange_cert: ServerCert,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rotation: Rotation::Strict,
            users: vec![FakeUser::work("ops@contoso.com")],
            keys: KEY_OLD.into(),
            expires_in_as_string: false,
            db_dir: None,
            db_url: None,
            fake: None,
            return_url: None,
            google: true,
            google_users: vec![GoogleUser::gmail("ops@gmail.com")],
            google_email_in_id_token: true,
            webhook: None,
            env: Vec::new(),
            oidc: false,
            oidc_fake: None,
            oidc_setup: None,
            oidc_key: None,
            provider_timeout: Duration::from_secs(2),
            exchange: false,
            exchange_cert: ServerCert::default(),
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub ms: FakeMicrosoft,
    pub google: FakeGoogle,
    /// The `oidc` provider's fake, when [`Options::oidc`] asked for one.
    pub oidc: Option<FakeOidc>,
    /// The fake Exchange Online, when [`Options::exchange`] asked for one.
    pub exchange: Option<Arc<FakeExchange>>,
    /// A browser that does not follow redirects, so each hop can be checked.
    pub http: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
    pub db_url: String,
    pub db: sqlx::AnyPool,
    pub webhook: Option<(String, String)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> TestApp {
        init_logging();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let redirect_uri = format!("http://{addr}/api/oauth/microsoft/callback");
        let google_redirect = format!("http://{addr}/api/oauth/google/callback");
        let (ms, google) = match opts.fake {
            Some(fakes) => fakes,
            None => {
                let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, &redirect_uri);
                cfg.users = opts.users.clone();
                cfg.rotation = opts.rotation;
                cfg.expires_in_as_string = opts.expires_in_as_string;
                let mut gcfg =
                    FakeGoogleConfig::new(GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, &google_redirect);
                gcfg.users = opts.google_users.clone();
                gcfg.email_in_id_token = opts.google_email_in_id_token;
                (
                    FakeMicrosoft::start(cfg).await.unwrap(),
                    FakeGoogle::start(gcfg).await.unwrap(),
                )
            }
        };
        let dir = opts
            .db_dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
        let db_url = match opts.db_url {
            Some(url) => url,
            None => crate::support::fresh_database(&dir, "mailconnect.db").await,
        };
        let mut vars: HashMap<&str, String> = HashMap::from([
            ("MAILCONNECT_BIND", addr.to_string()),
            ("DATABASE_URL", db_url.clone()),
            ("JWT_SECRET", JWT_SECRET.into()),
            ("OAUTH_STATE_SECRET", STATE_SECRET.into()),
            ("TOKEN_ENCRYPTION_KEYS", opts.keys.clone()),
            ("MICROSOFT_OAUTH_CLIENT_ID", CLIENT_ID.into()),
            ("MICROSOFT_OAUTH_CLIENT_SECRET", CLIENT_SECRET.into()),
            ("MICROSOFT_OAUTH_REDIRECT_URI", redirect_uri),
            ("MICROSOFT_OAUTH_AUTHORITY", ms.base_url()),
            ("MICROSOFT_GRAPH_URL", ms.base_url()),
            (
                "MAILCONNECT_PROVIDER_TIMEOUT_SECS",
                opts.provider_timeout.as_secs().max(1).to_string(),
            ),
            // Most tests describe the refresher of warm accounts (every
            // account renewed ahead of expiry); tests/api/warm.rs sets a
            // window of its own.
            ("MAILCONNECT_REFRESH_WARM_WINDOW_SECS", "all".into()),
            // Tests of many accounts must not wait for the provider budget;
            // tests/api/pace.rs sets a budget of its own.
            ("MAILCONNECT_PROVIDER_RATE_LIMIT", "100000".into()),
        ]);
        if opts.google {
            vars.extend([
                ("GOOGLE_OAUTH_CLIENT_ID", GOOGLE_CLIENT_ID.to_owned()),
                (
                    "GOOGLE_OAUTH_CLIENT_SECRET",
                    GOOGLE_CLIENT_SECRET.to_owned(),
                ),
                ("GOOGLE_OAUTH_REDIRECT_URI", google_redirect),
                ("GOOGLE_OAUTH_AUTH_URL", google.auth_url()),
                ("GOOGLE_OAUTH_TOKEN_URL", google.token_url()),
                ("GOOGLE_OAUTH_USERINFO_URL", google.userinfo_url()),
                ("GOOGLE_OAUTH_REVOKE_URL", google.revoke_url()),
                ("GOOGLE_OAUTH_JWKS_URL", google.jwks_url()),
            ]);
        }
        let oidc = match (opts.oidc_fake, opts.oidc) {
            (Some(fake), _) => Some(fake),
            (None, true) => {
                let mut cfg = FakeOidcConfig::new(
                    OIDC_CLIENT_ID,
                    OIDC_CLIENT_SECRET,
                    format!("http://{addr}/api/oauth/oidc/callback"),
                );
                cfg.users = vec![OidcUser::new("ops@idp.example")];
                if let Some(setup) = opts.oidc_setup {
                    setup(&mut cfg);
                }
                Some(FakeOidc::start(cfg).await.unwrap())
            }
            (None, false) => None,
        };
        if let Some(fake) = &oidc {
            let credential = match &opts.oidc_key {
                Some(path) => ("OIDC_OAUTH_CLIENT_KEY", path.display().to_string()),
                None => ("OIDC_OAUTH_CLIENT_SECRET", OIDC_CLIENT_SECRET.to_owned()),
            };
            vars.extend([
                ("OIDC_OAUTH_ISSUER", fake.issuer()),
                ("OIDC_OAUTH_CLIENT_ID", OIDC_CLIENT_ID.to_owned()),
                credential,
                (
                    "OIDC_OAUTH_REDIRECT_URI",
                    format!("http://{addr}/api/oauth/oidc/callback"),
                ),
                ("OIDC_IMAP_HOST", "imap.idp.example:993".to_owned()),
                ("OIDC_SMTP_HOST", "smtp.idp.example:587".to_owned()),
            ]);
        }
        if let Some((url, secret)) = &opts.webhook {
            vars.extend([
                ("MAILCONNECT_WEBHOOK_URL", url.clone()),
                ("MAILCONNECT_WEBHOOK_SECRET", secret.clone()),
                ("MAILCONNECT_WEBHOOK_POLL_MS", "100".into()),
                ("MAILCONNECT_WEBHOOK_BACKOFF_BASE_MS", "50".into()),
                ("MAILCONNECT_WEBHOOK_BACKOFF_CAP_MS", "400".into()),
                ("MAILCONNECT_WEBHOOK_TIMEOUT_MS", "500".into()),
            ]);
        }
        if let Some(r) = opts.return_url {
            vars.insert("OAUTH_RETURN_URL", r);
        }
        let exchange = match opts.exchange {
            false => None,
            true => {
                let exchange = FakeExchange::start_with(ms.clone(), opts.exchange_cert)
                    .await
                    .unwrap();
                let ca = dir.path().join("exchange-ca.pem");
                std::fs::write(&ca, exchange.ca_pem()).unwrap();
                vars.insert("MAILCONNECT_EXTRA_CA_FILE", ca.display().to_string());
                vars.insert("MICROSOFT_IMAP_HOST", exchange.imap_addr().to_string());
                vars.insert("MICROSOFT_SMTP_HOST", exchange.smtp_addr().to_string());
                Some(Arc::new(exchange))
            }
        };
        // Last, so a test can change what the options set.
        vars.extend(opts.env.iter().cloned());
        let config = Config::from_env(&Env(|k| vars.get(k).cloned()), false).unwrap();
        let app = mailconnect::server::build(&config, opts.provider_timeout)
            .await
            .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serving = config.serving();
        let server = tokio::spawn(async move {
            mailconnect::server::serve(app, listener, serving, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let db = sqlx::AnyPool::connect(&db_url).await.unwrap();
        TestApp {
            base: format!("http://{addr}"),
            ms,
            google,
            oidc,
            exchange,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            dir,
            db_url,
            db,
            webhook: opts.webhook,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Stops the server and starts a new one on the same database and fake.
    pub async fn restart(mut self, keys: &str) -> TestApp {
        self.stop().await;
        TestApp::spawn_with(Options {
            keys: keys.into(),
            db_dir: Some(self.dir.clone()),
            db_url: Some(self.db_url.clone()),
            fake: Some((self.ms.clone(), self.google.clone())),
            oidc_fake: self.oidc.clone(),
            webhook: self.webhook.clone(),
            ..Options::default()
        })
        .await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.db.close().await;
    }

    pub fn jwt(&self, tenant: &str, role: Role) -> String {
        mint(JWT_SECRET.as_bytes(), "user-1", tenant, role, 3600)
    }

    pub fn admin(&self) -> String {
        self.jwt(TENANT, Role::Admin)
    }

    pub fn service(&self) -> String {
        self.jwt(TENANT, Role::Service)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, jwt: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(jwt)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn authorize(&self, tenant: &str, body: Value) -> Value {
        self.authorize_for("microsoft", tenant, body).await
    }

    pub async fn authorize_for(&self, provider: &str, tenant: &str, body: Value) -> Value {
        let r = self
            .post_json(
                &format!("/api/oauth/{provider}/authorize"),
                &self.jwt(tenant, Role::Admin),
                body,
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// The browser at the provider: returns the callback URL it is sent to.
    pub async fn consent(&self, authorization_url: &str) -> String {
        let r = self.http.get(authorization_url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND, "{}", r.text().await.unwrap());
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(&self.url("/api/oauth/")), "{location}");
        location
    }

    /// The browser back at mailconnect: the 303's Location.
    pub async fn callback(&self, callback_url: &str) -> String {
        let r = self.http.get(callback_url).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "{}",
            r.text().await.unwrap()
        );
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    /// The whole flow; returns where the browser lands.
    pub async fn connect_flow(&self, tenant: &str, body: Value) -> String {
        self.connect_flow_for("microsoft", tenant, body).await
    }

    pub async fn connect_flow_for(&self, provider: &str, tenant: &str, body: Value) -> String {
        let auth = self.authorize_for(provider, tenant, body).await;
        let callback = self
            .consent(auth["authorization_url"].as_str().unwrap())
            .await;
        self.callback(&callback).await
    }

    /// Connects `address` at `provider` for `tenant` and returns the account
    /// id. The one place that knows which fake stands in for which provider:
    /// a new provider adds its arm here (the match is exhaustive) and gets
    /// the contract tests of `providers.rs` with it.
    pub async fn connect_at(&self, provider: ProviderKind, tenant: &str, address: &str) -> String {
        match provider {
            ProviderKind::Microsoft => self.ms.set_user_for_next_login(address),
            ProviderKind::Google => self.google.set_user_for_next_login(address),
            ProviderKind::Oidc => self.oidc().set_user_for_next_login(address),
        }
        let landing = self
            .connect_flow_for(provider.as_str(), tenant, json!({}))
            .await;
        let q = query(&landing);
        assert_eq!(
            q.get("oauth").map(String::as_str),
            Some("connected"),
            "{landing}"
        );
        assert_eq!(q["provider"], provider.as_str(), "{landing}");
        q["account_id"].clone()
    }

    /// Connects Microsoft mailbox `upn` for `tenant`; returns the account id.
    pub async fn connect(&self, tenant: &str, upn: &str) -> String {
        self.connect_at(ProviderKind::Microsoft, tenant, upn).await
    }

    /// Connects a Google mailbox for `tenant` and returns the account id.
    pub async fn connect_google(&self, tenant: &str, email: &str) -> String {
        self.connect_at(ProviderKind::Google, tenant, email).await
    }

    /// The `oidc` provider's fake (the app must have been spawned with it).
    pub fn oidc(&self) -> &FakeOidc {
        self.oidc
            .as_ref()
            .expect("spawned with Options { oidc: true }")
    }

    /// Connects a mailbox through the `oidc` provider; returns the account id.
    pub async fn connect_oidc(&self, tenant: &str, email: &str) -> String {
        self.connect_at(ProviderKind::Oidc, tenant, email).await
    }

    /// Runs the whole flow at `provider`, which must fail; returns the
    /// `reason` the browser lands with.
    pub async fn failed_reason(&self, provider: &str, body: Value) -> String {
        let landing = self.connect_flow_for(provider, TENANT, body).await;
        let q = query(&landing);
        assert_eq!(q["oauth"], "error", "{landing}");
        assert_eq!(q["provider"], provider, "{landing}");
        q["reason"].clone()
    }

    /// The number of accounts the tenant has, in any state.
    pub async fn account_count(&self, tenant: &str) -> usize {
        self.status(tenant).await["accounts"]
            .as_array()
            .unwrap()
            .len()
    }

    pub async fn token(&self, tenant: &str, id: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/api/accounts/{id}/token")))
            .bearer_auth(self.jwt(tenant, Role::Service))
            .send()
            .await
            .unwrap()
    }

    /// What `/metrics` shows now.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    pub async fn status(&self, tenant: &str) -> Value {
        let r = self
            .http
            .get(self.url("/api/oauth/status"))
            .bearer_auth(self.jwt(tenant, Role::Admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn account(&self, tenant: &str, id: &str) -> Value {
        let status = self.status(tenant).await;
        status["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The stored row as raw columns (ciphertexts included).
    pub async fn row(&self, id: &str) -> HashMap<String, Option<String>> {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT status, access_token_enc, refresh_token_enc, CAST(token_expires_at AS TEXT) AS exp, \
             last_error, auth_type, email FROM accounts WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.db)
        .await
        .unwrap();
        [
            "status",
            "access_token_enc",
            "refresh_token_enc",
            "exp",
            "last_error",
            "auth_type",
            "email",
        ]
        .iter()
        .map(|c| (c.to_string(), row.get::<Option<String>, _>(*c)))
        .collect()
    }

    /// Opens a stored secret with the test keys.
    pub fn open(&self, id: &str, column: &str, sealed: &str) -> String {
        let ring = mailconnect::crypto::Keyring::parse(&format!("{KEY_NEW},{KEY_OLD}")).unwrap();
        let secret = ring
            .open(
                sealed,
                &mailconnect::crypto::Aad::new("accounts", id, column),
            )
            .unwrap();
        secrecy::ExposeSecret::expose_secret(&secret).to_owned()
    }

    pub async fn stored_refresh_token(&self, id: &str) -> String {
        let row = self.row(id).await;
        self.open(
            id,
            "refresh_token",
            row["refresh_token_enc"].as_ref().unwrap(),
        )
    }

    /// Makes the stored access token look expired, so the next token
    /// request must refresh.
    pub async fn expire_stored_token(&self, id: &str) {
        crate::support::expire_stored_token(&self.db, id).await
    }
}

pub use crate::support::postgres_url;

pub fn on_sqlite() -> bool {
    postgres_url().is_none()
}

/// The query parameters of a URL or relative path.
pub fn query(url: &str) -> HashMap<String, String> {
    let parsed = url::Url::parse("http://x.invalid")
        .unwrap()
        .join(url)
        .unwrap();
    parsed.query_pairs().into_owned().collect()
}

pub fn b64_json(segment: &str) -> Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn assert_json_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status.as_u16(), expected_status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

pub fn data_dir(app: &TestApp) -> PathBuf {
    app.dir.path().to_path_buf()
}
