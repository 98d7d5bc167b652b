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

async fn metrics(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_secret_expiring_in_five_days_is_shown_and_warned_about_once() {
    let receiver = Receiver::start(Mode::Accept).await;
    let expires_at = chrono::Utc::now().timestamp() + 5 * DAY + 3600;
    let env = vec![(
        "MICROSOFT_OAUTH_CLIENT_SECRET_EXPIRES_AT",
        mailconnect::rfc3339(expires_at),
    )];
    let app = TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        env: env.clone(),
        ..Options::default()
    })
    .await;
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
    let scraped = metrics(&app).await;
    assert!(
        scraped.contains(&format!(
            "mailconnect_provider_credential_expiry_timestamp_seconds{{provider=\"microsoft\"}} {expires_at}"
        )),
        "{scraped}"
    );

    // A second replica, then a restart of both: each checks at start, none
    // sends it again.
    let mut second = replica(&app, env.clone()).await;
    let mut first = app;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.stop().await;
    second.stop().await;
    let third = replica(&first, env).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (written,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM webhook_outbox WHERE event_type = 'provider.credential_expiring'",
    )
    .fetch_one(&third.db)
    .await
    .unwrap();
    assert_eq!(written, 1, "one warning for this threshold, ever");
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
    let app = TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        env: env.clone(),
        ..Options::default()
    })
    .await;
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
    let scraped = metrics(&app).await;
    assert!(
        scraped.contains(&format!(
            "mailconnect_provider_credential_expiry_timestamp_seconds{{provider=\"microsoft\"}} {}",
            made.not_after
        )),
        "{scraped}"
    );
    let mut second = replica(&app, env.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.stop().await;
    let (written,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM webhook_outbox WHERE event_type = 'provider.credential_expiring'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(written, 1);
}
