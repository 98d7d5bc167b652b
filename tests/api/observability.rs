use mailconnect_sandbox::Fault;

use crate::helpers::*;

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_connects_refreshes_and_configuration_errors() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), 200);
    app.expire_stored_token(&id).await;
    app.ms.set_fault_once(Fault::InvalidClient);
    assert_eq!(app.token(TENANT, &id).await.status(), 502);

    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let at_least_one = |prefix: &str| {
        assert!(
            sample(&text, prefix).unwrap_or(0.0) >= 1.0,
            "{prefix} in\n{text}"
        );
    };
    at_least_one(r#"mailconnect_connects_total{provider="microsoft",outcome="connect"}"#);
    at_least_one(r#"mailconnect_refreshes_total{provider="microsoft",outcome="refreshed"}"#);
    at_least_one(r#"mailconnect_refreshes_total{provider="microsoft",outcome="misconfigured"}"#);
    at_least_one(r#"mailconnect_provider_config_errors_total{provider="microsoft"}"#);
    at_least_one(
        r#"mailconnect_provider_request_duration_seconds_count{provider="microsoft",operation="refresh"}"#,
    );
    // The gauges read this app's database: exactly one connected account.
    assert_eq!(
        sample(&text, r#"mailconnect_accounts{status="connected"}"#),
        Some(1.0)
    );
    assert!(sample(&text, "mailconnect_refresher_lag_seconds").is_some());
    assert!(sample(&text, r#"mailconnect_webhook_deliveries{state="pending"}"#).is_some());
    assert!(sample(&text, "mailconnect_webhook_oldest_pending_seconds").is_some());
    assert!(text.contains("# HELP mailconnect_refreshes_total"));
    for secret in app.ms.issued_secrets() {
        assert!(!text.contains(&secret));
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "caller-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "caller-chosen-id");
}
