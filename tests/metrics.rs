//! The Prometheus metrics, alone in this test binary so that no other test
//! moves the process-wide counters: each action adds exactly what it
//! should, read as the difference between two scrapes.

#[path = "support/db.rs"]
mod support;

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;
use mailconnect_sandbox::Fault;
use serde_json::json;

/// The value of the sample `name` (with its labels), 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    r.text().await.unwrap()
}

#[tokio::test]
async fn each_action_moves_its_counters_by_exactly_one() {
    let app = TestApp::spawn().await;
    let connects = r#"mailconnect_connects_total{provider="microsoft",outcome="connect"}"#;
    // Failures are labelled with their cause (DESIGN.md "Diagnosis").
    let denied = r#"mailconnect_connects_total{provider="microsoft",outcome="access_denied",cause="consent_missing"}"#;
    let refreshed =
        r#"mailconnect_refreshes_total{provider="microsoft",outcome="refreshed",cause="none"}"#;
    let misconfigured = r#"mailconnect_refreshes_total{provider="microsoft",outcome="misconfigured",cause="client_secret_expired"}"#;
    let transient = r#"mailconnect_refreshes_total{provider="microsoft",outcome="transient",cause="provider_unavailable"}"#;
    let config_errors = r#"mailconnect_provider_config_errors_total{provider="microsoft",cause="client_secret_expired"}"#;
    let refresh_calls = r#"mailconnect_provider_request_duration_seconds_count{provider="microsoft",operation="refresh"}"#;
    let connect_calls = r#"mailconnect_provider_request_duration_seconds_count{provider="microsoft",operation="connect"}"#;
    let disconnects = r#"mailconnect_disconnects_total{provider="microsoft"}"#;
    let all = [
        connects,
        denied,
        refreshed,
        misconfigured,
        transient,
        config_errors,
        refresh_calls,
        connect_calls,
        disconnects,
    ];
    let before = scrape(&app).await;

    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.ms
        .set_authorize_error(Some(("access_denied".into(), "no".into())));
    let landing = app.connect_flow(TENANT, json!({})).await;
    assert_eq!(query(&landing)["reason"], "access_denied");
    app.ms.set_authorize_error(None);
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), 200);
    app.expire_stored_token(&id).await;
    app.ms.set_fault_once(Fault::InvalidClient);
    assert_eq!(app.token(TENANT, &id).await.status(), 502);
    app.ms.set_fault_once(Fault::Unavailable);
    assert_eq!(app.token(TENANT, &id).await.status(), 503);
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), 200);

    let after = scrape(&app).await;
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    let got: Vec<(&str, f64)> = all.iter().map(|n| (*n, delta(n))).collect();
    let want: Vec<(&str, f64)> = [
        (connects, 1.0),
        (denied, 1.0),
        (refreshed, 1.0),
        (misconfigured, 1.0),
        (transient, 1.0),
        (config_errors, 1.0),
        (refresh_calls, 3.0),
        (connect_calls, 1.0),
        (disconnects, 1.0),
    ]
    .to_vec();
    assert_eq!(got, want, "\n{after}");

    // The gauges read this app's database.
    assert_eq!(
        sample(&after, r#"mailconnect_accounts{status="disconnected"}"#),
        1.0
    );
    assert!(after.contains("mailconnect_refresher_lag_seconds"));
    assert!(after.contains(r#"mailconnect_webhook_deliveries{state="pending"}"#));
    assert!(after.contains("mailconnect_webhook_oldest_pending_seconds"));
    assert!(after.contains("# HELP mailconnect_refreshes_total"));
    for secret in app.ms.issued_secrets() {
        assert!(!after.contains(&secret));
    }
}

/// The expiry gauge, alone here: in the API suite other apps of the same
/// process set it to their own credentials' dates.
#[tokio::test]
async fn the_credential_expiry_gauge_is_the_configured_date() {
    let expires_at = chrono::Utc::now().timestamp() + 40 * 86_400;
    let app = TestApp::spawn_with(Options {
        env: vec![(
            "GOOGLE_OAUTH_CLIENT_SECRET_EXPIRES_AT",
            mailconnect::rfc3339(expires_at),
        )],
        ..Options::default()
    })
    .await;
    let name = r#"mailconnect_provider_credential_expiry_timestamp_seconds{provider="google"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let scraped = scrape(&app).await;
        if sample(&scraped, name) == expires_at as f64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{scraped}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
