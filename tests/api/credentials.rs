//! Provider credentials (DESIGN.md "Credentials"): what the status route
//! and the metrics say about them, and `provider.credential_expiring` sent
//! once per threshold across replicas and restarts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Mode, Receiver};

const DAY: i64 = 86_400;

/// A replica of `app` (the same database and fakes) with `env`.
async fn replica(app: &TestApp, env: Vec<(&'static str, String)>) -> TestApp {
    TestApp::spawn_with(Options {
        db_dir: Some(app.dir.clone()),
        db_url: Some(app.db_url.clone()),
        fake: Some((app.ms.clone(), app.google.clone())),
        webhook: app.webhook.clone(),
        env,
        ..Options::default()
    })
    .await
}

/// How many `provider.credential_expiring` events were ever written.
async fn warnings_written(app: &TestApp) -> i64 {
    let (written,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM webhook_outbox WHERE event_type = 'provider.credential_expiring'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    written
}

/// An app that delivers webhooks to `receiver`, with `env`.
async fn watched(receiver: &Receiver, env: Vec<(&'static str, String)>) -> TestApp {
    TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        env,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_secret_expiring_in_five_days_is_shown_and_warned_about_once() {
    let receiver = Receiver::start(Mode::Accept).await;
    let expires_at = chrono::Utc::now().timestamp() + 5 * DAY + 3600;
    let env = vec![(
        "MICROSOFT_OAUTH_CLIENT_SECRET_EXPIRES_AT",
        mailconnect::rfc3339(expires_at),
    )];
    let app = watched(&receiver, env.clone()).await;
    let microsoft = &app.status(TENANT).await["providers"]["microsoft"];
    assert_eq!(
        microsoft["credential"],
        json!({"type": "secret", "expires_at": mailconnect::rfc3339(expires_at)}),
        "{microsoft}"
    );
    // Google's secret has no date: null, not a guess.
    assert_eq!(
        app.status(TENANT).await["providers"]["google"]["credential"],
        json!({"type": "secret", "expires_at": null})
    );
    let events = receiver.wait_for(1, Duration::from_secs(30)).await;
    let warning = &events[0];
    assert_eq!(warning["type"], "provider.credential_expiring");
    assert_eq!(warning["provider"], "microsoft");
    assert_eq!(warning["days_left"], 5);
    assert_eq!(warning["expires_at"], mailconnect::rfc3339(expires_at));
    assert_eq!(warning["tenant_id"], Value::Null);
    // The gauge is process-wide (other apps of this suite set it too): its
    // value is checked in tests/metrics.rs, alone.
    let scraped = app.metrics().await;
    assert!(scraped.contains(
        "mailconnect_provider_credential_expiry_timestamp_seconds{provider=\"microsoft\"}"
    ));

    // A second replica, then a restart of both: each checks at start, none
    // sends it again.
    let mut second = replica(&app, env.clone()).await;
    let mut first = app;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.stop().await;
    second.stop().await;
    let third = replica(&first, env).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        warnings_written(&third).await,
        1,
        "one warning for this threshold, ever"
    );
    assert_eq!(receiver.events().len(), 1, "{:#?}", receiver.events());
    receiver.assert_clean();
}

#[tokio::test]
async fn a_certificate_expiring_in_twenty_days_is_warned_about_at_thirty() {
    let receiver = Receiver::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client-cert.pem");
    let made = mailconnect::ops::new_certificate(20, "mailconnect test", &path).unwrap();
    let env = vec![
        ("MICROSOFT_OAUTH_CLIENT_SECRET", String::new()),
        (
            "MICROSOFT_OAUTH_CLIENT_CERTIFICATE",
            path.display().to_string(),
        ),
    ];
    let app = watched(&receiver, env.clone()).await;
    let microsoft = &app.status(TENANT).await["providers"]["microsoft"];
    assert_eq!(
        microsoft["credential"],
        json!({"type": "certificate", "expires_at": mailconnect::rfc3339(made.not_after)}),
        "{microsoft}"
    );
    let events = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(events[0]["type"], "provider.credential_expiring");
    // Twenty days to the second when made, a moment less when checked.
    let days_left = events[0]["days_left"].as_i64().unwrap();
    assert!((19..=20).contains(&days_left), "{:#}", events[0]);
    let scraped = app.metrics().await;
    assert!(scraped.contains(
        "mailconnect_provider_credential_expiry_timestamp_seconds{provider=\"microsoft\"}"
    ));
    let mut second = replica(&app, env.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.stop().await;
    assert_eq!(warnings_written(&app).await, 1);
}

// --------------------------------------------- certificates and federation

/// What a refusal must leave alone: status, tokens, errors.
async fn stored(
    app: &TestApp,
    id: &str,
) -> (String, Option<String>, Option<String>, Option<String>, i64) {
    sqlx::query_as(
        "SELECT status, access_token_enc, refresh_token_enc, last_error, consecutive_failures
         FROM accounts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

use mailconnect_sandbox::{FederatedIssuer, TestCertificate, TOKEN_EXCHANGE_AUDIENCE};
use reqwest::StatusCode;

const UPN: &str = "ops@contoso.com";
const SUBJECT: &str = "system:serviceaccount:mailconnect:mailconnect";

/// An app whose Microsoft credential is `var` = `value` instead of the
/// secret, against a fake that refuses secrets from now on.
async fn without_secret(var: &'static str, value: String, webhook: Option<&Receiver>) -> TestApp {
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("MICROSOFT_OAUTH_CLIENT_SECRET", String::new()),
            (var, value),
        ],
        webhook: webhook.map(|r| (r.url(), r.secret.clone())),
        ..Options::default()
    })
    .await;
    app.ms.set_secret_accepted(false);
    app
}

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_certificate_connects_and_refreshes_with_no_secret_sent() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(
        "mailconnect",
        chrono::Utc::now() + chrono::Duration::days(90),
    );
    let path = write(&dir, "cert.pem", &cert.combined_pem());
    let app = without_secret("MICROSOFT_OAUTH_CLIENT_CERTIFICATE", path, None).await;
    app.ms.upload_certificate(cert.der());

    let id = app.connect(TENANT, UPN).await;
    let refreshed = app.ms.refresh_grants();
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    assert_eq!(app.ms.refresh_grants(), refreshed + 1);

    // Code redemption and refresh each carried a fresh PS256 assertion for
    // the very URL called, as DESIGN.md says.
    let seen = app.ms.assertions();
    assert!(seen.len() >= 2, "{seen:#?}");
    let mut jtis = std::collections::HashSet::new();
    for a in &seen {
        assert_eq!(a.refused, None, "{a:#?}");
        assert_eq!(a.alg, "PS256");
        assert_eq!(a.x5t_s256.as_deref(), Some(cert.x5t_s256().as_str()));
        assert_eq!(a.aud, std::slice::from_ref(&a.token_url));
        assert_eq!(a.iss.as_deref(), Some(CLIENT_ID));
        assert_eq!(a.sub.as_deref(), Some(CLIENT_ID));
        assert!(
            !a.replayed && a.lifetime_secs.is_some_and(|s| s <= 600),
            "{a:#?}"
        );
        assert!(jtis.insert(a.jti.clone()), "a jti used twice");
    }
}

#[tokio::test]
async fn a_federated_token_is_read_again_at_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FederatedIssuer::new("https://oidc.cluster.example/abc");
    let token =
        |subject: &str| issuer.mint(subject, TOKEN_EXCHANGE_AUDIENCE, Duration::from_secs(3600));
    let path = write(&dir, "azure-identity-token", &token(SUBJECT));
    let app = without_secret("MICROSOFT_OAUTH_CLIENT_ASSERTION_FILE", path.clone(), None).await;
    app.ms
        .add_federated_credential(issuer.issuer(), SUBJECT, issuer.jwks());
    assert_eq!(
        app.status(TENANT).await["providers"]["microsoft"]["credential"],
        json!({"type": "federated", "expires_at": null})
    );

    let id = app.connect(TENANT, UPN).await;
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    // Kubernetes rewrites the file: the next refresh sends what it holds
    // now (a token of another subject is refused: proof it was read).
    std::fs::write(&path, token("system:serviceaccount:other:other")).unwrap();
    app.expire_stored_token(&id).await;
    assert_eq!(
        app.token(TENANT, &id).await.status(),
        StatusCode::BAD_GATEWAY
    );
    std::fs::write(&path, token(SUBJECT)).unwrap();
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    // A missing file is our misconfiguration, said as such, not a crash.
    std::fs::remove_file(&path).unwrap();
    app.expire_stored_token(&id).await;
    assert_eq!(
        app.token(TENANT, &id).await.status(),
        StatusCode::BAD_GATEWAY
    );
    let microsoft = &app.status(TENANT).await["providers"]["microsoft"];
    assert_eq!(
        microsoft["diagnosis"]["cause"], "client_credentials_invalid",
        "{microsoft}"
    );
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_replaced_or_expired_certificate_is_the_providers_misconfiguration_not_the_accounts() {
    let receiver = Receiver::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    // Valid for a few seconds more: accepted at start-up, refused after.
    let short = TestCertificate::new(
        "mailconnect",
        chrono::Utc::now() + chrono::Duration::seconds(4),
    );
    let path = write(&dir, "cert.pem", &short.combined_pem());
    let app = without_secret("MICROSOFT_OAUTH_CLIENT_CERTIFICATE", path, Some(&receiver)).await;
    app.ms.upload_certificate(short.der());
    let id = app.connect(TENANT, UPN).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    app.expire_stored_token(&id).await;
    let before = stored(&app, &id).await;
    assert_eq!(
        app.token(TENANT, &id).await.status(),
        StatusCode::BAD_GATEWAY
    );
    // It was warned about at start-up, then connected, then refused.
    let event = receiver.wait_for(3, Duration::from_secs(30)).await;
    assert!(
        event.iter().any(|e| e["type"] == "provider.misconfigured"),
        "{event:#?}"
    );
    let account = app.account(TENANT, &id).await;
    assert_eq!(account["status"], "connected");
    assert_eq!(account["diagnosis"], Value::Null);
    assert_eq!(
        stored(&app, &id).await,
        before,
        "the account was not touched"
    );

    // Another certificate than the registration's (a tampered file): the
    // same, from a replica that starts with it.
    let other = TestCertificate::new(
        "mailconnect",
        chrono::Utc::now() + chrono::Duration::days(30),
    );
    let other_path = write(&dir, "other.pem", &other.combined_pem());
    let replica = replica(
        &app,
        vec![
            ("MICROSOFT_OAUTH_CLIENT_SECRET", String::new()),
            ("MICROSOFT_OAUTH_CLIENT_CERTIFICATE", other_path),
        ],
    )
    .await;
    assert_eq!(
        replica.token(TENANT, &id).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(replica.account(TENANT, &id).await["status"], "connected");
    let refused: Vec<_> = app
        .ms
        .assertions()
        .into_iter()
        .filter_map(|a| a.refused)
        .collect();
    assert!(
        refused.iter().all(|c| *c == 700027) && refused.len() >= 2,
        "{refused:?}"
    );
}

/// App tokens (client credentials, at the directory's own token URL) carry
/// the certificate's assertion too.
#[tokio::test]
async fn app_tokens_are_asked_for_with_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCertificate::new(
        "mailconnect",
        chrono::Utc::now() + chrono::Duration::days(90),
    );
    let path = write(&dir, "cert.pem", &cert.combined_pem());
    let app = crate::admin_consent::spawn_with(Options {
        env: vec![
            ("MICROSOFT_OAUTH_CLIENT_SECRET", String::new()),
            ("MICROSOFT_OAUTH_CLIENT_CERTIFICATE", path),
        ],
        ..Options::default()
    })
    .await;
    app.ms.set_secret_accepted(false);
    app.ms.upload_certificate(cert.der());
    crate::admin_consent::grant(&app, TENANT).await;
    let seen = app.ms.assertions();
    let directory_url = seen
        .iter()
        .find(|a| a.token_url.contains(mailconnect_sandbox::WORK_TENANT_ID))
        .expect("an app token asked at the directory's token URL");
    assert_eq!(directory_url.refused, None, "{directory_url:#?}");
    assert_eq!(
        directory_url.aud,
        std::slice::from_ref(&directory_url.token_url)
    );
}
