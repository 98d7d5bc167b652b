//! The token route's branches when a refresh cannot simply happen: the
//! provider refuses, our credentials are refused, the provider is down, the
//! lease is held elsewhere, the stored secret cannot be opened, the account
//! is disconnected while its refresh runs. What a worker gets each time,
//! and that the current token keeps being served while it is valid.

use std::time::{Duration, Instant};

use mailconnect::crypto::{Aad, Keyring};
use mailconnect_sandbox::Fault;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::refresher::tamper;

async fn access_token(app: &TestApp, id: &str) -> String {
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// Leaves the stored token `secs` to live: under the refresh margin (300 s)
/// when `secs` is small, so the next request tries to refresh.
async fn expires_in(app: &TestApp, id: &str, secs: i64) {
    sqlx::query("UPDATE accounts SET token_expires_at = $1 WHERE id = $2")
        .bind(chrono::Utc::now().timestamp() + secs)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
}

async fn connected() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    (app, id)
}

#[tokio::test]
async fn a_refusal_answers_502_provider_error_once_the_token_has_expired() {
    let (app, id) = connected().await;
    app.expire_stored_token(&id).await;
    let before = app.row(&id).await;
    app.ms.set_fault_once(Fault::UnreadableError);
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    let body: Value = r.json().await.unwrap();
    assert_json_error(s, &body, 502, "provider_error");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("unreadable_error_response"));
    assert_eq!(app.row(&id).await, before, "nothing stored changed");
}

#[tokio::test]
async fn a_refusal_or_refused_credentials_still_serve_a_valid_token() {
    let (app, id) = connected().await;
    let current = access_token(&app, &id).await;
    expires_in(&app, &id, 120).await;
    for fault in [Fault::UnreadableError, Fault::InvalidClient] {
        app.ms.set_fault_once(fault.clone());
        assert_eq!(access_token(&app, &id).await, current, "{fault:?}");
    }
    // The misconfiguration still shows where the operator looks.
    let status = app.status(TENANT).await;
    assert!(status["providers"]["microsoft"]["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
}

#[tokio::test]
async fn a_token_about_to_expire_is_not_served_when_the_refresh_fails() {
    let (app, id) = connected().await;
    expires_in(&app, &id, 3).await;
    app.ms.set_fault_once(Fault::Unavailable);
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
}

#[tokio::test]
async fn while_backing_off_a_valid_token_is_served_without_asking_again() {
    let (app, id) = connected().await;
    let current = access_token(&app, &id).await;
    expires_in(&app, &id, 120).await;
    app.ms.set_fault(Some(Fault::Unavailable));
    assert_eq!(access_token(&app, &id).await, current);
    let asked = app.ms.token_requests();
    for _ in 0..3 {
        assert_eq!(access_token(&app, &id).await, current);
    }
    assert_eq!(app.ms.token_requests(), asked, "asked while backing off");
}

/// An app whose lease is 3 s (and provider timeout 1 s), with an account
/// whose lease another replica holds for the next 100 s.
async fn lease_held_elsewhere() -> (TestApp, String) {
    let app = TestApp::spawn_with(Options {
        env: vec![("MAILCONNECT_REFRESH_LEASE_SECS", "3".into())],
        provider_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    sqlx::query(
        "UPDATE accounts SET lease_owner = 'another-replica', lease_until = $1 WHERE id = $2",
    )
    .bind(chrono::Utc::now().timestamp() + 100)
    .bind(&id)
    .execute(&app.db)
    .await
    .unwrap();
    (app, id)
}

#[tokio::test]
async fn a_lease_held_elsewhere_is_waited_for_then_answered_503() {
    let (app, id) = lease_held_elsewhere().await;
    let asked = app.ms.token_requests();
    let started = Instant::now();
    let r = app.token(TENANT, &id).await;
    let took = started.elapsed();
    assert_eq!(r.headers()["retry-after"], "5");
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    // The lease and five seconds more.
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(app.ms.token_requests(), asked, "the holder's job, not ours");
}

#[tokio::test]
async fn a_lease_held_elsewhere_ends_with_that_replicas_token() {
    let (app, id) = lease_held_elsewhere().await;
    let asked = app.ms.token_requests();
    let waiting = tokio::spawn({
        let (http, url, jwt) = (
            app.http.clone(),
            app.url(&format!("/api/accounts/{id}/token")),
            app.service(),
        );
        async move { http.post(url).bearer_auth(jwt).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The other replica stores its refresh and lets go of the lease.
    let sealed = Keyring::parse(KEY_OLD).unwrap().seal(
        "token-refreshed-by-the-other-replica",
        &Aad::new("accounts", &id, "access_token"),
    );
    sqlx::query(
        "UPDATE accounts SET access_token_enc = $1, token_expires_at = $2, \
         lease_owner = NULL, lease_until = NULL WHERE id = $3",
    )
    .bind(sealed)
    .bind(chrono::Utc::now().timestamp() + 3600)
    .bind(&id)
    .execute(&app.db)
    .await
    .unwrap();
    let r = waiting.await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["access_token"], "token-refreshed-by-the-other-replica");
    assert_eq!(app.ms.token_requests(), asked);
}

#[tokio::test]
async fn an_access_token_that_cannot_be_opened_is_an_internal_error_that_leaks_nothing() {
    let (app, id) = connected().await;
    let sealed = app.row(&id).await["access_token_enc"].clone().unwrap();
    sqlx::query("UPDATE accounts SET access_token_enc = $1 WHERE id = $2")
        .bind(tamper(&sealed))
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let mark = log_mark();
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_json_error(s, &body, 500, "internal_error");
    assert!(
        !text.contains("v1:") && !text.contains(&sealed[10..30]),
        "{text}"
    );
    assert!(logged_since(
        mark,
        &["internal error", "opening the access token of"]
    ));
}

#[tokio::test]
async fn a_refresh_that_ends_after_a_disconnect_brings_no_token_back() {
    let (app, id) = connected().await;
    app.expire_stored_token(&id).await;
    app.ms
        .set_fault(Some(Fault::Slow(Duration::from_millis(800))));
    let waiting = tokio::spawn({
        let (http, url, jwt) = (
            app.http.clone(),
            app.url(&format!("/api/accounts/{id}/token")),
            app.service(),
        );
        async move { http.post(url).bearer_auth(jwt).send().await.unwrap() }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.ms.token_requests_in_flight() == 0 {
        assert!(Instant::now() < deadline, "the refresh never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = waiting.await.unwrap();
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "account_disconnected");
    let row = app.row(&id).await;
    assert_eq!(row["status"].as_deref(), Some("disconnected"));
    assert_eq!(
        (
            row["access_token_enc"].as_deref(),
            row["refresh_token_enc"].as_deref()
        ),
        (None, None)
    );
}

#[tokio::test]
async fn a_refresh_token_that_cannot_be_opened_is_an_internal_error_and_asks_nothing() {
    let (app, id) = connected().await;
    let sealed = app.row(&id).await["refresh_token_enc"].clone().unwrap();
    sqlx::query("UPDATE accounts SET refresh_token_enc = $1 WHERE id = $2")
        .bind(tamper(&sealed))
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    app.expire_stored_token(&id).await;
    let asked = app.ms.token_requests();
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 500, "internal_error");
    assert_eq!(app.ms.token_requests(), asked);
    assert_eq!(app.row(&id).await["status"].as_deref(), Some("connected"));
}
