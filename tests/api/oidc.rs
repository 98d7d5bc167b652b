//! The generic `oidc` provider through the real service, in front of a
//! plain, standards-only OpenID provider found by discovery
//! ([`FakeOidc`]): connect, tokens, refresh (with rotation), revocation at
//! disconnect, every client authentication method (both secret ones and
//! `private_key_jwt` with `OIDC_OAUTH_CLIENT_KEY`), and the address from
//! userinfo only for the id_token's own subject.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mailconnect_sandbox::idp::client_assertion::thumbprint;
use mailconnect_sandbox::oidc::{ClientAuthMethod, FakeOidc, FakeOidcConfig, OidcUser};
use mailconnect_sandbox::Fault;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn spawn(users: Vec<OidcUser>) -> TestApp {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        ..Options::default()
    })
    .await;
    for u in users {
        app.oidc().add_user(u);
    }
    app
}

async fn disconnect(app: &TestApp, id: &str) -> Value {
    let r = app
        .post_json(
            "/api/oauth/oidc/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn last_outcome(app: &TestApp, id: &str, action: &str) -> String {
    let (outcome,): (String,) = sqlx::query_as(
        "SELECT outcome FROM audit_events WHERE account_id = $1 AND action = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .bind(action)
    .fetch_one(&app.db)
    .await
    .unwrap();
    outcome
}

#[tokio::test]
async fn a_mailbox_connects_refreshes_and_disconnect_revokes_it_at_the_provider() {
    let app = spawn(vec![]).await;
    let auth = app.authorize_for("oidc", TENANT, json!({})).await;
    let url = url::Url::parse(auth["authorization_url"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(
        url.as_str()
            .starts_with(&app.oidc().authorization_endpoint()),
        "{url}"
    );
    assert_eq!(q["scope"], "openid email offline_access");
    assert_eq!(
        q["prompt"], "consent",
        "offline_access needs a consent prompt"
    );
    assert_eq!(q["client_id"], OIDC_CLIENT_ID);

    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    let account = app.account(TENANT, &id).await;
    assert_eq!(
        (account["provider"].as_str(), account["email"].as_str()),
        (Some("oidc"), Some("ops@idp.example"))
    );
    let status = app.status(TENANT).await;
    assert_eq!(status["providers"]["oidc"]["configured"], true);
    assert_eq!(status["providers"]["oidc"]["issuer"], app.oidc().issuer());

    // The worker gets the operator's mail hosts and a token the provider issued.
    let r = app.token(TENANT, &id).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert!(
        app.oidc()
            .access_token_info(t["access_token"].as_str().unwrap())
            .unwrap()
            .valid
    );
    assert_eq!(
        t["imap"],
        json!({"host": "imap.idp.example", "port": 993, "tls": true, "username": "ops@idp.example", "xoauth2": t["xoauth2"]})
    );
    assert_eq!(
        t["smtp"],
        json!({"host": "smtp.idp.example", "port": 587, "starttls": true, "username": "ops@idp.example", "xoauth2": t["xoauth2"], "mail_from": "ops@idp.example"})
    );

    // A refresh authenticates with client_secret_basic and names no scope;
    // the provider rotates the refresh token, and the new one is kept.
    let rt = app.stored_refresh_token(&id).await;
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    assert_eq!(app.oidc().refresh_grants(), 1);
    assert!(!app.oidc().refresh_token_is_live(&rt));
    let rotated = app.stored_refresh_token(&id).await;
    assert_ne!(rotated, rt);
    assert!(app.oidc().refresh_token_is_live(&rotated));
    let sent = app.oidc().last_token_request().unwrap();
    assert_eq!(sent["grant_type"], "refresh_token");
    assert!(
        !sent.contains_key("client_secret") && !sent.contains_key("scope"),
        "{sent:?}"
    );
    // Discovery was read once and cached; it lists S256, so no warning.
    assert_eq!(app.oidc().discovery_requests(), 1);
    assert!(!logged_since(0, &["does not list PKCE S256"]));

    let body = disconnect(&app, &id).await;
    assert_eq!(body["status"], "disconnected");
    assert_eq!(app.oidc().revocations(), 1);
    assert!(!app.oidc().refresh_token_is_live(&rotated));
    assert_eq!(app.row(&id).await["refresh_token_enc"], None);
    assert_eq!(last_outcome(&app, &id, "disconnect").await, "disconnected");
}

/// An app whose `oidc` issuer is `issuer(fake)`, in front of a fake that
/// is never reached by a browser (its redirect URI does not matter).
async fn with_issuer(issuer: impl Fn(&str) -> String) -> TestApp {
    let cfg = FakeOidcConfig::new(OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, "http://127.0.0.1:1/cb");
    let fake = FakeOidc::start(cfg).await.unwrap();
    let issuer = issuer(&fake.issuer());
    TestApp::spawn_with(Options {
        oidc_fake: Some(fake),
        env: vec![("OIDC_OAUTH_ISSUER", issuer)],
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    // Configured with a trailing slash: the document names the issuer
    // without one, so it is someone else's (OpenID Connect Discovery 4.3).
    let app = with_issuer(|real| format!("{real}/")).await;
    let r = app
        .post_json("/api/oauth/oidc/authorize", &app.admin(), json!({}))
        .await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 502, "provider_misconfigured");
    assert_eq!(app.oidc().token_requests(), 0);
    // No document at all: unavailable, not misconfigured.
    let app = with_issuer(|real| format!("{real}/nowhere")).await;
    let r = app
        .post_json("/api/oauth/oidc/authorize", &app.admin(), json!({}))
        .await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
}

#[tokio::test]
async fn a_failed_revocation_still_disconnects_and_says_so() {
    let app = spawn(vec![OidcUser::new("sales@idp.example")]).await;
    // Refused credentials at the revocation endpoint are ours to fix.
    let sales = app.connect_oidc(TENANT, "sales@idp.example").await;
    app.oidc().set_revoke_refused(true);
    let mark = log_mark();
    assert_eq!(disconnect(&app, &sales).await["status"], "disconnected");
    assert!(logged_since(
        mark,
        &[
            "revocation at the provider failed",
            "error=\"invalid_client\""
        ]
    ));
    app.oidc().set_revoke_refused(false);
    assert_eq!(
        last_outcome(&app, &sales, "disconnect").await,
        "disconnected_revocation_failed"
    );
    // A provider that is down: tried, failed for now, disconnected anyway.
    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    app.oidc().set_revoke_fault(true);
    let mark = log_mark();
    assert_eq!(disconnect(&app, &id).await["status"], "disconnected");
    assert!(logged_since(
        mark,
        &[
            "revocation at the provider failed",
            "error=\"provider_unavailable\""
        ]
    ));
    let row = app.row(&id).await;
    assert_eq!(
        (
            row["access_token_enc"].as_deref(),
            row["refresh_token_enc"].as_deref()
        ),
        (None, None)
    );
    assert_eq!(
        last_outcome(&app, &id, "disconnect").await,
        "disconnected_revocation_failed"
    );
    assert_eq!(app.oidc().revocations(), 0);
}

#[tokio::test]
async fn the_address_comes_from_userinfo_only_for_the_same_subject_and_verified() {
    let app = spawn(vec![OidcUser::unverified("someone@idp.example")]).await;
    app.oidc().set_email_in_id_token(false);
    // Userinfo about the id_token's subject, verified: connected.
    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    assert_eq!(app.account(TENANT, &id).await["email"], "ops@idp.example");
    // Userinfo about someone else: refused, whatever it says.
    let mark = log_mark();
    app.oidc()
        .set_userinfo_subject(Some(OidcUser::new("boss@idp.example").sub));
    app.oidc().set_user_for_next_login("ops@idp.example");
    assert_eq!(
        app.failed_reason("oidc", json!({})).await,
        "email_unavailable"
    );
    assert!(logged_since(
        mark,
        &["userinfo answered for another subject; refused"]
    ));
    app.oidc().set_userinfo_subject(None);
    // An unverified address: refused.
    let mark = log_mark();
    app.oidc().set_user_for_next_login("someone@idp.example");
    assert_eq!(
        app.failed_reason("oidc", json!({})).await,
        "email_unavailable"
    );
    assert!(logged_since(
        mark,
        &["userinfo reports no verified address; refused"]
    ));
    // Userinfo down: no address.
    app.oidc().set_userinfo_down(true);
    app.oidc().set_user_for_next_login("ops@idp.example");
    assert_eq!(
        app.failed_reason("oidc", json!({})).await,
        "email_unavailable"
    );
    assert_eq!(app.account_count(TENANT).await, 1);
    // A verified address in the id_token needs no userinfo at all.
    app.oidc().set_email_in_id_token(true);
    assert_eq!(app.connect_oidc(TENANT, "ops@idp.example").await, id);
}

#[tokio::test]
async fn oidc_refresh_failures_are_classified_like_any_provider() {
    let app = spawn(vec![]).await;
    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    app.expire_stored_token(&id).await;
    app.oidc().set_fault_once(Fault::Unavailable);
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    app.oidc().revoke_user("ops@idp.example");
    // The in-memory backoff of the 503 is 10 s: a restart forgets it.
    let app = app.restart(KEY_OLD).await;
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "reauth_required");
    assert_eq!(app.account(TENANT, &id).await["status"], "needs_reauth");
}

#[tokio::test]
async fn a_provider_that_allows_only_client_secret_post_gets_it_everywhere() {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        oidc_setup: Some(|cfg| cfg.auth_methods = vec![ClientAuthMethod::Post]),
        ..Options::default()
    })
    .await;
    // The code grant: the credentials in the form (a Basic header would be
    // refused by this provider).
    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    let sent = app.oidc().last_token_request().unwrap();
    assert_eq!(sent["grant_type"], "authorization_code");
    assert_eq!(sent["client_id"], OIDC_CLIENT_ID);
    assert_eq!(sent["client_secret"], "[present]");
    // The refresh grant too.
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    let sent = app.oidc().last_token_request().unwrap();
    assert_eq!(sent["grant_type"], "refresh_token");
    assert_eq!(sent["client_secret"], "[present]");
    // And the revocation at disconnect.
    let rt = app.stored_refresh_token(&id).await;
    assert_eq!(disconnect(&app, &id).await["status"], "disconnected");
    assert_eq!(app.oidc().revocations(), 1);
    assert!(!app.oidc().refresh_token_is_live(&rt));
    assert_eq!(last_outcome(&app, &id, "disconnect").await, "disconnected");
}

/// A client key as an operator makes one: the PEM file mailconnect reads
/// and the public JWK registered at the provider, made here from the key's
/// own numbers (not by mailconnect).
struct ClientKey {
    path: PathBuf,
    jwk: Value,
}

impl ClientKey {
    /// RSA, PKCS#8 (`openssl genpkey -algorithm RSA`).
    fn rsa(dir: &Path) -> ClientKey {
        use rsa::pkcs8::EncodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        ClientKey::write(
            dir,
            pem.as_str(),
            json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())}),
        )
    }

    /// EC P-256, SEC1 (`openssl ecparam -genkey -name prime256v1`).
    fn p256(dir: &Path) -> ClientKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = key.to_sec1_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let point = key.public_key().to_encoded_point(false);
        ClientKey::write(
            dir,
            pem.as_str(),
            json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
        )
    }

    fn write(dir: &Path, pem: &str, jwk: Value) -> ClientKey {
        let path = dir.join("oidc-client-key.pem");
        std::fs::write(&path, pem).unwrap();
        ClientKey { path, jwk }
    }

    fn kid(&self) -> String {
        thumbprint(&self.jwk).unwrap()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The app with `OIDC_OAUTH_CLIENT_KEY` and no secret, in front of a fake
/// that holds the key's JWK and takes `private_key_jwt` only.
async fn spawn_with_key(key: &ClientKey) -> TestApp {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        oidc_key: Some(key.path.clone()),
        ..Options::default()
    })
    .await;
    app.oidc()
        .register_client_jwks(&json!({"keys": [key.jwk]}))
        .unwrap();
    app.oidc()
        .set_auth_methods(vec![ClientAuthMethod::PrivateKeyJwt]);
    app
}

/// Every assertion the fake took was signed with `alg` by the key it
/// knows by `kid`; none reached a log line.
fn assert_assertions(app: &TestApp, count: usize, alg: &str, kid: &str) {
    let seen = app.oidc().client_assertions();
    assert_eq!(seen.len(), count, "{seen:?}");
    let logs = captured_logs();
    for a in seen {
        assert_eq!((a.alg.as_str(), a.kid.as_str()), (alg, kid));
        assert!(
            !logs.contains(&a.assertion),
            "an assertion reached the logs"
        );
    }
}

#[tokio::test]
async fn with_a_private_key_a_mailbox_connects_refreshes_and_is_revoked_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::rsa(dir.path());
    let app = spawn_with_key(&key).await;
    let kid = key.kid();

    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    assert_eq!(app.account(TENANT, &id).await["email"], "ops@idp.example");
    let status = app.status(TENANT).await;
    assert_eq!(
        status["providers"]["oidc"]["credential"],
        json!({"type": "key", "expires_at": null})
    );
    let sent = app.oidc().last_token_request().unwrap();
    assert_eq!(sent["grant_type"], "authorization_code");
    assert_eq!(sent["client_assertion"], "[present]");
    assert!(!sent.contains_key("client_secret"), "{sent:?}");
    // The fake lists PS256, RS256 and ES256: an RSA key prefers PS256.
    assert_assertions(&app, 1, "PS256", &kid);

    // After expiry, the refresh authenticates the same way.
    let rt = app.stored_refresh_token(&id).await;
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    assert_eq!(app.oidc().refresh_grants(), 1);
    assert!(!app.oidc().refresh_token_is_live(&rt));
    assert_assertions(&app, 2, "PS256", &kid);

    // And so does the revocation at disconnect.
    let rotated = app.stored_refresh_token(&id).await;
    assert_eq!(disconnect(&app, &id).await["status"], "disconnected");
    assert_eq!(app.oidc().revocations(), 1);
    assert!(!app.oidc().refresh_token_is_live(&rotated));
    assert_eq!(last_outcome(&app, &id, "disconnect").await, "disconnected");
    assert_assertions(&app, 3, "PS256", &kid);
    let pem = std::fs::read_to_string(&key.path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        !captured_logs().contains(&body[..40]),
        "the key reached the logs"
    );
}

#[tokio::test]
async fn an_ec_key_in_sec1_form_signs_es256() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::p256(dir.path());
    let app = spawn_with_key(&key).await;
    app.connect_oidc(TENANT, "ops@idp.example").await;
    assert_assertions(&app, 1, "ES256", &key.kid());
}

#[tokio::test]
async fn a_provider_that_does_not_list_private_key_jwt_is_misconfigured_at_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::rsa(dir.path());
    let mut app = spawn_with_key(&key).await;
    let id = app.connect_oidc(TENANT, "ops@idp.example").await;
    // The client's registration changes to secrets only; a restarted
    // service reads discovery afresh.
    app.oidc()
        .set_auth_methods(vec![ClientAuthMethod::Basic, ClientAuthMethod::Post]);
    app.stop().await;
    let app = TestApp::spawn_with(Options {
        db_dir: Some(app.dir.clone()),
        db_url: Some(app.db_url.clone()),
        fake: Some((app.ms.clone(), app.google.clone())),
        oidc_fake: app.oidc.clone(),
        oidc_key: Some(key.path.clone()),
        ..Options::default()
    })
    .await;
    app.expire_stored_token(&id).await;
    let sent = app.oidc().token_requests();
    let mark = log_mark();
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 502, "provider_misconfigured");
    assert_eq!(app.oidc().token_requests(), sent, "nothing was sent");
    assert!(logged_since(
        mark,
        &["does not allow private_key_jwt", "OIDC_OAUTH_CLIENT_KEY"]
    ));
    let oidc = &app.status(TENANT).await["providers"]["oidc"];
    assert_eq!(
        oidc["diagnosis"]["cause"], "client_credentials_invalid",
        "{oidc}"
    );
    assert!(oidc["diagnosis"]["fix"]
        .as_str()
        .unwrap()
        .contains("private_key_jwt"));
    assert!(oidc["last_error"]
        .as_str()
        .unwrap()
        .starts_with("private_key_jwt_unsupported"));
    // Only the provider is troubled: the mailbox needs nothing.
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}
