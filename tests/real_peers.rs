//! mailconnect against real third-party servers no one here wrote: panva's
//! oidc-provider (a certified OpenID provider) and Dovecot IMAP and
//! submission, which check every token by introspection at that provider.
//! Started by `tests/peers/start.sh`, which prints `MAILCONNECT_PEERS=…`;
//! without that variable these tests say so and do nothing.
//!
//! The story: an admin connects a mailbox through `oidc`; the token route's
//! token logs in to Dovecot; the verify route reports both logins; after
//! the access token expires the refreshed one works and the old refresh
//! token is dead; 20 concurrent token requests never make the provider
//! revoke the grant; a revoked grant is refused at Dovecot and reported by
//! the verify and token routes; a garbage token is refused and reported.
//! And with a private key instead of the secret (`private_key_jwt` at a
//! second client, RSA and EC): connect, refresh after expiry, revocation
//! at disconnect.

#[path = "support/db.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use mailconnect::config::{Config, Env};
use mailconnect::crypto::{Aad, Keyring};
use mailconnect::domain::MailboxAddress;
use mailconnect::http::auth::{mint, Role};
use mailconnect::oauth::{MailServer, TlsMode};
use mailconnect::tls::ExtraRoots;
use mailconnect::verify::{Credentials, LoginReport, Mechanism, Verifier};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

const JWT_SECRET: &str = "peers-jwt-secret-0123456789abcdef-0123";
const STATE_SECRET: &str = "peers-state-secret-0123456789abcdef-01";
const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TENANT: &str = "tenant-peers";

/// The settings `start.sh` wrote, or `None` (with a note) when unset.
fn peers() -> Option<HashMap<String, String>> {
    let Ok(path) = std::env::var("MAILCONNECT_PEERS") else {
        eprintln!(
            "MAILCONNECT_PEERS is unset: skipping the real-peer tests \
             (run `eval $(tests/peers/start.sh)` first)"
        );
        return None;
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("MAILCONNECT_PEERS={path} cannot be read: {e}"));
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

fn server(hostport: &str, tls: TlsMode) -> MailServer {
    let (host, port) = hostport.rsplit_once(':').unwrap();
    MailServer {
        host: host.into(),
        port: port.parse().unwrap(),
        tls,
    }
}

/// How mailconnect proves who it is at the provider.
#[derive(Clone, Copy)]
enum Client {
    /// The `client_secret_basic` client.
    Secret,
    /// The `private_key_jwt` client, with the key file the settings name
    /// under this variable.
    Key(&'static str),
}

struct App {
    base: String,
    http: reqwest::Client,
    db: sqlx::AnyPool,
    peers: HashMap<String, String>,
    verifier: Verifier,
    _dir: tempfile::TempDir,
}

impl App {
    async fn spawn(peers: HashMap<String, String>, client: Client) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        sqlx::any::install_default_drivers();
        let db_url = format!("sqlite://{}", dir.path().join("peers.db").display());
        let p = |k: &str| peers[k].clone();
        let (client_id, credential) = match client {
            Client::Secret => (
                p("PEERS_IDP_CLIENT_ID"),
                ("OIDC_OAUTH_CLIENT_SECRET", p("PEERS_IDP_CLIENT_SECRET")),
            ),
            Client::Key(file) => (
                p("PEERS_IDP_KEY_CLIENT_ID"),
                ("OIDC_OAUTH_CLIENT_KEY", p(file)),
            ),
        };
        let vars: HashMap<&str, String> = HashMap::from([
            ("MAILCONNECT_BIND", addr.to_string()),
            ("DATABASE_URL", db_url.clone()),
            ("JWT_SECRET", JWT_SECRET.into()),
            ("OAUTH_STATE_SECRET", STATE_SECRET.into()),
            ("TOKEN_ENCRYPTION_KEYS", KEYS.into()),
            ("MAILCONNECT_REFRESHER", "off".into()),
            ("OIDC_OAUTH_ISSUER", p("PEERS_IDP_ISSUER")),
            ("OIDC_OAUTH_CLIENT_ID", client_id),
            credential,
            ("OIDC_OAUTH_REDIRECT_URI", p("PEERS_IDP_REDIRECT_URI")),
            ("OIDC_IMAP_HOST", p("PEERS_IMAPS_HOST")),
            ("OIDC_SMTP_HOST", p("PEERS_SUBMISSION_HOST")),
            ("MAILCONNECT_EXTRA_CA_FILE", p("PEERS_CA_FILE")),
        ]);
        let config = Config::from_env(&Env(|k| vars.get(k).cloned()), false).unwrap();
        let verifier = Verifier::new(&config.extra_roots);
        let app = mailconnect::server::build(&config, Duration::from_secs(5))
            .await
            .unwrap();
        let serving = config.serving();
        tokio::spawn(async move {
            mailconnect::server::serve(app, listener, serving, std::future::pending())
                .await
                .unwrap();
        });
        App {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            db: sqlx::AnyPool::connect(&db_url).await.unwrap(),
            peers,
            verifier,
            _dir: dir,
        }
    }

    fn jwt(&self, role: Role) -> String {
        mint(JWT_SECRET.as_bytes(), "admin-1", TENANT, role, 3600)
    }

    async fn post(&self, path: &str, role: Role) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.jwt(role))
            .send()
            .await
            .unwrap()
    }

    /// The browser: authorize, then the provider's redirects (its login
    /// and consent interaction answers by itself), carrying its cookies,
    /// until it sends us to the redirect URI; then our callback.
    async fn connect(&self) -> String {
        let r = self.post("/api/oauth/oidc/authorize", Role::Admin).await;
        assert_eq!(r.status(), StatusCode::OK);
        let auth: Value = r.json().await.unwrap();
        let mut url = url::Url::parse(auth["authorization_url"].as_str().unwrap()).unwrap();
        let redirect_uri = &self.peers["PEERS_IDP_REDIRECT_URI"];
        let mut cookies: HashMap<String, String> = HashMap::new();
        let callback = 'browse: {
            for _ in 0..20 {
                let jar = cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let r = self
                    .http
                    .get(url.clone())
                    .header("cookie", jar)
                    .send()
                    .await
                    .unwrap();
                for c in r.headers().get_all("set-cookie") {
                    let pair = c.to_str().unwrap().split(';').next().unwrap();
                    if let Some((k, v)) = pair.split_once('=') {
                        cookies.insert(k.trim().into(), v.trim().into());
                    }
                }
                assert!(
                    r.status().is_redirection(),
                    "the provider answered {} at {url}",
                    r.status()
                );
                let location = r.headers()["location"].to_str().unwrap().to_owned();
                let next = url.join(&location).unwrap();
                if next.as_str().starts_with(redirect_uri.as_str()) {
                    break 'browse next;
                }
                url = next;
            }
            panic!("the provider never sent the browser back");
        };
        let r = self
            .http
            .get(format!(
                "{}/api/oauth/oidc/callback?{}",
                self.base,
                callback.query().unwrap_or("")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let landing = r.headers()["location"].to_str().unwrap().to_owned();
        let q: HashMap<String, String> = url::Url::parse("http://x")
            .unwrap()
            .join(&landing)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(
            q.get("oauth").map(String::as_str),
            Some("connected"),
            "{landing}"
        );
        q["account_id"].clone()
    }

    async fn token(&self, id: &str) -> Value {
        let r = self
            .post(&format!("/api/accounts/{id}/token"), Role::Service)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    async fn stored_refresh_token(&self, id: &str) -> SecretString {
        let (enc,): (String,) =
            sqlx::query_as("SELECT refresh_token_enc FROM accounts WHERE id = $1")
                .bind(id)
                .fetch_one(&self.db)
                .await
                .unwrap();
        Keyring::parse(KEYS)
            .unwrap()
            .open(&enc, &Aad::new("accounts", id, "refresh_token"))
            .unwrap()
    }

    /// Makes the stored access token look expired, so the next token
    /// request must refresh.
    async fn expire_stored_token(&self, id: &str) {
        support::expire_stored_token(&self.db, id).await
    }

    /// The disconnect route's answer, and the outcome it audited.
    async fn disconnect(&self, id: &str) -> (Value, String) {
        let r = self
            .http
            .post(format!("{}/api/oauth/oidc/disconnect", self.base))
            .bearer_auth(self.jwt(Role::Admin))
            .json(&serde_json::json!({"account_id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (outcome,): (String,) = sqlx::query_as(
            "SELECT outcome FROM audit_events WHERE account_id = $1 AND action = 'disconnect'",
        )
        .bind(id)
        .fetch_one(&self.db)
        .await
        .unwrap();
        (r.json().await.unwrap(), outcome)
    }

    /// RFC 7662 at the provider, as Dovecot asks it.
    async fn introspect(&self, token: &SecretString) -> Value {
        self.http
            .post(format!(
                "{}/token/introspection",
                self.peers["PEERS_IDP_ISSUER"]
            ))
            .basic_auth(
                &self.peers["PEERS_DOVECOT_CLIENT_ID"],
                Some(&self.peers["PEERS_DOVECOT_CLIENT_SECRET"]),
            )
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn imap(&self) -> MailServer {
        server(&self.peers["PEERS_IMAPS_HOST"], TlsMode::Implicit)
    }

    fn smtp(&self) -> MailServer {
        server(&self.peers["PEERS_SUBMISSION_HOST"], TlsMode::Starttls)
    }

    /// Logs in with `token` from 127.0.0.1 (positive cases).
    async fn login(&self, token: &SecretString, mechs: &[Mechanism]) -> (LoginReport, LoginReport) {
        self.login_from(&self.verifier, token, mechs).await
    }

    /// Failed logins make Dovecot delay the next ones from that address
    /// (0.6 s, 4.5 s … 15 s): negative cases each come from their own.
    async fn login_refused(
        &self,
        source: u8,
        token: &SecretString,
        mechs: &[Mechanism],
    ) -> (LoginReport, LoginReport) {
        let verifier = self
            .verifier
            .clone()
            .from_source(std::net::Ipv4Addr::new(127, 0, 0, source).into());
        self.login_from(&verifier, token, mechs).await
    }

    async fn login_from(
        &self,
        verifier: &Verifier,
        token: &SecretString,
        mechs: &[Mechanism],
    ) -> (LoginReport, LoginReport) {
        let user = MailboxAddress::parse(&self.peers["PEERS_USER_EMAIL"]).unwrap();
        let creds = Credentials { user: &user, token };
        let (imap, smtp) = (self.imap(), self.smtp());
        tokio::join!(
            verifier.imap(&imap, &creds, mechs),
            verifier.smtp(&smtp, &creds, mechs)
        )
    }
}

fn show(what: &str, r: &LoginReport) {
    eprintln!(
        "--- {what}: ok={} mechanism={:?} ms={} reply={:?}\n{}",
        r.ok,
        r.mechanism,
        r.ms,
        r.reply,
        r.transcript.join("\n")
    );
}

#[tokio::test]
async fn a_mailbox_connected_through_a_real_openid_provider_works_at_real_dovecot() {
    let Some(peers) = peers() else { return };
    let email = peers["PEERS_USER_EMAIL"].clone();
    let ttl: u64 = peers["PEERS_ACCESS_TTL"].parse().unwrap();
    let app = App::spawn(peers, Client::Secret).await;

    // The admin connects the mailbox; the status route shows it.
    let id = app.connect().await;
    let r = app
        .http
        .get(format!("{}/api/oauth/status", app.base))
        .bearer_auth(app.jwt(Role::Admin))
        .send()
        .await
        .unwrap();
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["providers"]["oidc"]["configured"], true);
    assert_eq!(
        status["providers"]["oidc"]["issuer"],
        app.peers["PEERS_IDP_ISSUER"]
    );
    assert_eq!(status["accounts"][0]["email"], email);
    assert_eq!(status["accounts"][0]["status"], "connected");

    // The worker's token and XOAUTH2 string log in to IMAP and submission.
    let t = app.token(&id).await;
    assert_eq!(t["email"], email);
    assert_eq!(t["imap"]["host"], "127.0.0.1");
    assert_eq!(t["imap"]["port"], app.imap().port);
    assert_eq!(t["imap"]["tls"], true);
    assert_eq!(t["smtp"]["port"], app.smtp().port);
    assert_eq!(t["smtp"]["starttls"], true);
    let token1 = SecretString::from(t["access_token"].as_str().unwrap().to_owned());
    let xoauth2 = base64::engine::general_purpose::STANDARD
        .decode(t["xoauth2"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(xoauth2).unwrap(),
        format!(
            "user={email}\x01auth=Bearer {}\x01\x01",
            token1.expose_secret()
        )
    );
    let (imap, smtp) = app.login(&token1, &[Mechanism::Xoauth2]).await;
    show("IMAP XOAUTH2 with the token route's token", &imap);
    show("SMTP XOAUTH2 with the token route's token", &smtp);
    assert!(imap.ok && smtp.ok, "{imap:?} {smtp:?}");
    // IMAP with STARTTLS on the plain port too.
    let user = MailboxAddress::parse(&email).unwrap();
    let starttls = app
        .verifier
        .imap(
            &server(&app.peers["PEERS_IMAP_HOST"], TlsMode::Starttls),
            &Credentials {
                user: &user,
                token: &token1,
            },
            &Mechanism::PREFERRED,
        )
        .await;
    assert!(starttls.ok, "{starttls:?}");

    // The verify route: both logins, OAUTHBEARER where offered.
    let r = app
        .post(&format!("/api/accounts/{id}/verify"), Role::Admin)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    eprintln!("verify route: {v:#}");
    for proto in ["imap", "smtp"] {
        assert_eq!(v[proto]["ok"], true, "{v}");
        assert_eq!(v[proto]["mechanism"], "OAUTHBEARER");
        assert!(v[proto]["ms"].as_u64().is_some());
    }
    assert!(!v.to_string().contains(token1.expose_secret()));
    // Another tenant's admin cannot verify it.
    let r = app
        .http
        .post(format!("{}/api/accounts/{id}/verify", app.base))
        .bearer_auth(mint(
            JWT_SECRET.as_bytes(),
            "x",
            "tenant-other",
            Role::Admin,
            60,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // After the access token expires: refused at Dovecot; the refreshed one
    // works, and the refresh token it replaced is dead at the provider.
    let t = app.token(&id).await;
    let old_access = SecretString::from(t["access_token"].as_str().unwrap().to_owned());
    tokio::time::sleep(Duration::from_secs(ttl + 2)).await;
    let (imap, _) = app
        .login_refused(2, &old_access, &Mechanism::PREFERRED)
        .await;
    show("IMAP with an expired token", &imap);
    assert!(!imap.ok);
    let old_refresh = app.stored_refresh_token(&id).await;
    let t = app.token(&id).await;
    let fresh = SecretString::from(t["access_token"].as_str().unwrap().to_owned());
    assert_ne!(fresh.expose_secret(), old_access.expose_secret());
    let (imap, smtp) = app.login(&fresh, &Mechanism::PREFERRED).await;
    assert!(imap.ok && smtp.ok, "{imap:?} {smtp:?}");
    let new_refresh = app.stored_refresh_token(&id).await;
    assert_ne!(new_refresh.expose_secret(), old_refresh.expose_secret());
    assert_eq!(app.introspect(&old_refresh).await["active"], false);
    assert_eq!(app.introspect(&new_refresh).await["active"], true);

    // 20 concurrent token requests: never a reused refresh token, so the
    // provider never revokes the grant.
    let path = format!("/api/accounts/{id}/token");
    let calls = (0..20).map(|_| app.post(&path, Role::Service));
    let answers = futures::future::join_all(calls).await;
    for r in answers {
        assert_eq!(r.status(), StatusCode::OK);
    }
    let current = app.stored_refresh_token(&id).await;
    assert_eq!(app.introspect(&current).await["active"], true);
    let t = app.token(&id).await;
    let last_access = SecretString::from(t["access_token"].as_str().unwrap().to_owned());
    let (imap, smtp) = app.login(&last_access, &Mechanism::PREFERRED).await;
    assert!(imap.ok && smtp.ok, "{imap:?} {smtp:?}");

    // The grant is revoked at the provider: Dovecot refuses its token at
    // once, and both routes say consent is gone.
    let current = app.stored_refresh_token(&id).await;
    let r = app
        .http
        .post(format!(
            "{}/token/revocation",
            app.peers["PEERS_IDP_ISSUER"]
        ))
        .basic_auth(
            &app.peers["PEERS_IDP_CLIENT_ID"],
            Some(&app.peers["PEERS_IDP_CLIENT_SECRET"]),
        )
        .form(&[
            ("token", current.expose_secret()),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (imap, smtp) = app
        .login_refused(3, &last_access, &Mechanism::PREFERRED)
        .await;
    show("IMAP with a revoked token", &imap);
    show("SMTP with a revoked token", &smtp);
    assert!(!imap.ok && !smtp.ok);
    let r = app
        .post(&format!("/api/accounts/{id}/verify"), Role::Admin)
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "reauth_required");
    let r = app
        .post(&format!("/api/accounts/{id}/token"), Role::Service)
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "reauth_required");
}

#[tokio::test]
async fn a_garbage_token_is_refused_by_dovecot_and_reported_as_such() {
    let Some(peers) = peers() else { return };
    let app = App::spawn(peers, Client::Secret).await;
    let garbage = SecretString::from("garbage-token-0123456789abcdefABCDEF".to_owned());
    for (source, mechs) in [(4, [Mechanism::Xoauth2]), (5, [Mechanism::Oauthbearer])] {
        let (imap, smtp) = app.login_refused(source, &garbage, &mechs).await;
        show("IMAP with a garbage token", &imap);
        show("SMTP with a garbage token", &smtp);
        for r in [&imap, &smtp] {
            assert!(!r.ok);
            assert_eq!(r.mechanism, Some(mechs[0]));
            assert!(!r.reply.contains("garbage-token"), "{}", r.reply);
            assert!(!r.transcript.join("\n").contains("garbage-token"));
        }
        assert!(imap.reply.contains("NO"), "{}", imap.reply);
        assert!(smtp.reply.starts_with("535"), "{}", smtp.reply);
    }
    // A server that is down is a clear answer, not a hang.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let user = MailboxAddress::parse("alice@mail.test").unwrap();
    let r = app
        .verifier
        .smtp(
            &MailServer {
                host: "127.0.0.1".into(),
                port: down,
                tls: TlsMode::Starttls,
            },
            &Credentials {
                user: &user,
                token: &garbage,
            },
            &Mechanism::PREFERRED,
        )
        .await;
    assert!(!r.ok);
    assert!(r.reply.starts_with("could not connect"), "{}", r.reply);
    // A server whose certificate is not trusted is refused before any token.
    let untrusting = Verifier::new(&ExtraRoots::default());
    let r = untrusting
        .imap(
            &app.imap(),
            &Credentials {
                user: &user,
                token: &garbage,
            },
            &Mechanism::PREFERRED,
        )
        .await;
    assert!(!r.ok && r.mechanism.is_none());
    assert!(r.reply.starts_with("TLS handshake failed"), "{}", r.reply);
}

/// The story with a private key and no secret: every request to the
/// provider (code, refresh, revocation) authenticates with a
/// `private_key_jwt` assertion signed by the key in `file`.
async fn the_story_with_a_private_key(file: &'static str) {
    let Some(peers) = peers() else { return };
    if !peers.contains_key(file) {
        eprintln!("{file} is not in MAILCONNECT_PEERS (an older start.sh): skipped");
        return;
    }
    let key_client = peers["PEERS_IDP_KEY_CLIENT_ID"].clone();
    let app = App::spawn(peers, Client::Key(file)).await;

    let id = app.connect().await;
    let t = app.token(&id).await;
    let access = SecretString::from(t["access_token"].as_str().unwrap().to_owned());
    let seen = app.introspect(&access).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], key_client.as_str());

    // After expiry the refresh, authenticated the same way, rotates the
    // refresh token.
    let old_refresh = app.stored_refresh_token(&id).await;
    app.expire_stored_token(&id).await;
    let t = app.token(&id).await;
    assert_ne!(t["access_token"].as_str().unwrap(), access.expose_secret());
    let new_refresh = app.stored_refresh_token(&id).await;
    assert_ne!(new_refresh.expose_secret(), old_refresh.expose_secret());
    assert_eq!(app.introspect(&old_refresh).await["active"], false);
    assert_eq!(app.introspect(&new_refresh).await["active"], true);

    // Disconnect revokes the grant at the provider.
    let (body, outcome) = app.disconnect(&id).await;
    assert_eq!(body["status"], "disconnected");
    assert_eq!(outcome, "disconnected", "the revocation was accepted");
    assert_eq!(app.introspect(&new_refresh).await["active"], false);
}

#[tokio::test]
async fn an_rsa_private_key_replaces_the_secret_at_a_real_openid_provider() {
    the_story_with_a_private_key("PEERS_IDP_CLIENT_KEY_RSA").await;
}

#[tokio::test]
async fn an_ec_private_key_replaces_the_secret_at_a_real_openid_provider() {
    the_story_with_a_private_key("PEERS_IDP_CLIENT_KEY_EC").await;
}
