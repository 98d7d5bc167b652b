use std::time::{Duration, Instant};

use mailconnect_sandbox::Fault;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn access_token(app: &TestApp, id: &str) -> String {
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_refreshes_in_a_row_survive_strict_rotation() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let grants = app.ms.refresh_grants();

    for round in 1..=2 {
        let old_rt = app.stored_refresh_token(&id).await;
        let old_at = access_token(&app, &id).await;
        app.expire_stored_token(&id).await;
        let new_at = access_token(&app, &id).await;
        assert_ne!(new_at, old_at, "round {round}");
        let info = app.ms.access_token_info(&new_at).unwrap();
        assert_eq!(info.resource, "https://outlook.office.com");
        let new_rt = app.stored_refresh_token(&id).await;
        assert_ne!(new_rt, old_rt, "the rotated refresh token was stored");
        assert!(!app.ms.refresh_token_is_live(&old_rt));
        assert!(app.ms.refresh_token_is_live(&new_rt));
        assert_eq!(app.ms.refresh_grants(), grants + round);
    }
    let sent = app.ms.last_token_request().unwrap();
    assert_eq!(sent["grant_type"], "refresh_token");
    assert!(sent["scope"].contains("https://outlook.office.com/IMAP.AccessAsUser.All"));
    assert!(!sent["scope"].contains("graph"));
    let account = app.account(TENANT, &id).await;
    assert!(account["last_refresh_at"].is_string());
    assert_eq!(account["status"], "connected");
}

#[tokio::test]
async fn twenty_concurrent_token_requests_share_one_refresh() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    let grants = app.ms.refresh_grants();
    let requests = (0..20).map(|_| app.token(TENANT, &id));
    let responses = futures::future::join_all(requests).await;
    let mut tokens = std::collections::HashSet::new();
    for r in responses {
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every caller got the one new token");
    assert_eq!(app.ms.refresh_grants(), grants + 1);
}

#[tokio::test]
async fn revoked_consent_turns_the_account_to_needs_reauth_and_is_never_retried() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    app.ms.revoke_user("ops@contoso.com");
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "reauth_required");
    let account = app.account(TENANT, &id).await;
    assert_eq!(account["status"], "needs_reauth");
    assert_eq!(account["last_error"], "invalid_grant");

    let asked = app.ms.token_requests();
    for _ in 0..3 {
        assert_eq!(app.token(TENANT, &id).await.status(), 409);
    }
    assert_eq!(
        app.ms.token_requests(),
        asked,
        "invalid_grant is never retried"
    );
    // The refresh token is kept (nothing stored is lost), and the event audited.
    assert!(app.row(&id).await["refresh_token_enc"].is_some());
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE account_id = $1 AND action = 'refresh_failed' AND outcome = 'needs_reauth'",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(n, 1);

    // The admin heals it by re-authorising the same account.
    let landing = app
        .connect_flow(TENANT, serde_json::json!({"account_id": id}))
        .await;
    assert_eq!(query(&landing)["account_id"], id);
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
    assert_eq!(app.token(TENANT, &id).await.status(), 200);
}

#[tokio::test]
async fn invalid_client_changes_no_account_and_shows_on_the_provider() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    let before = app.row(&id).await;
    app.ms.set_fault(Some(Fault::InvalidClient));
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 502, "provider_misconfigured");
    assert_eq!(app.row(&id).await, before);
    let status = app.status(TENANT).await;
    assert!(status["providers"]["microsoft"]["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
    assert_eq!(status["accounts"][0]["status"], "connected");

    app.ms.set_fault(None);
    assert_eq!(app.token(TENANT, &id).await.status(), 200);
    assert_eq!(
        app.status(TENANT).await["providers"]["microsoft"]["last_error"],
        Value::Null
    );
}

/// A passing failure leaves the stored row as it was and answers 503.
async fn passing_failure(fault: Fault) -> (TestApp, String, reqwest::Response) {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    let before = app.row(&id).await;
    let rt = app.stored_refresh_token(&id).await;
    app.ms.set_fault_once(fault);
    let r = app.token(TENANT, &id).await;
    assert_eq!(app.row(&id).await, before, "nothing stored changed");
    assert!(app.ms.refresh_token_is_live(&rt));
    (app, id, r)
}

#[tokio::test]
async fn too_many_requests_backs_off_for_retry_after() {
    let (app, id, r) = passing_failure(Fault::TooManyRequests {
        retry_after_secs: 7,
    })
    .await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=7).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "provider_unavailable");
    let asked = app.ms.token_requests();
    let r = app.token(TENANT, &id).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        app.ms.token_requests(),
        asked,
        "no request inside Retry-After"
    );
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn an_unavailable_provider_changes_nothing() {
    let (app, id, r) = passing_failure(Fault::Unavailable).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_malformed_token_response_changes_nothing() {
    let (app, id, r) = passing_failure(Fault::MalformedJson).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_slow_provider_times_out_and_changes_nothing() {
    let started = Instant::now();
    let (app, id, r) = passing_failure(Fault::Slow(Duration::from_secs(4))).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 2 s timeout cut it short"
    );
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_still_valid_token_is_served_while_the_provider_is_down() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let current = access_token(&app, &id).await;
    // Two minutes left: due for refresh, but still usable.
    sqlx::query("UPDATE accounts SET token_expires_at = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp() + 120)
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    app.ms.set_fault(Some(Fault::Unavailable));
    assert_eq!(access_token(&app, &id).await, current);
}
