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

#[tokio::test]
async fn invalid_client_at_a_code_redemption_shows_on_the_provider_until_one_succeeds() {
    let app = TestApp::spawn().await;
    app.ms.set_fault(Some(Fault::InvalidClient));
    app.ms.set_user_for_next_login("ops@contoso.com");
    let landing = app.connect_flow(TENANT, serde_json::json!({})).await;
    let q = query(&landing);
    assert_eq!(q["reason"], "token_exchange_failed", "{landing}");
    let status = app.status(TENANT).await;
    let microsoft = &status["providers"]["microsoft"];
    assert!(
        microsoft["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{microsoft}"
    );
    assert_eq!(
        microsoft["diagnosis"]["cause"],
        q["cause"].as_str(),
        "{microsoft}"
    );
    assert_eq!(app.account_count(TENANT).await, 0);

    app.ms.set_fault(None);
    app.connect(TENANT, "ops@contoso.com").await;
    assert_eq!(
        app.status(TENANT).await["providers"]["microsoft"]["last_error"],
        Value::Null
    );
}

/// A passing failure leaves the stored row as it was. Returns the answer
/// of the token route and how long it took.
async fn passing_failure(fault: Fault) -> (TestApp, String, reqwest::Response, Duration) {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    let before = app.row(&id).await;
    let rt = app.stored_refresh_token(&id).await;
    app.ms.set_fault_once(fault);
    let started = Instant::now();
    let r = app.token(TENANT, &id).await;
    let took = started.elapsed();
    assert_eq!(app.row(&id).await, before, "nothing stored changed");
    assert!(app.ms.refresh_token_is_live(&rt));
    (app, id, r, took)
}

#[tokio::test]
async fn too_many_requests_backs_off_for_retry_after() {
    let (app, id, r, _) = passing_failure(Fault::TooManyRequests {
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
    let (app, id, r, _) = passing_failure(Fault::Unavailable).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_malformed_token_response_changes_nothing() {
    let (app, id, r, _) = passing_failure(Fault::MalformedJson).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn an_empty_access_token_changes_nothing() {
    let (app, id, r, _) = passing_failure(Fault::EmptyAccessToken).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_slow_provider_times_out_and_changes_nothing() {
    let (app, id, r, took) = passing_failure(Fault::Slow(Duration::from_secs(4))).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "the 2 s timeout cut the request short: {took:?}"
    );
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

/// Spawns a replica: `MAILCONNECT_REFRESH_LEASE_SECS=3` with a 1 s
/// provider timeout (the shortest lease the rule allows for it), on
/// `with`'s database and fakes when given.
async fn short_lease_replica(with: Option<&TestApp>) -> TestApp {
    let mut opts = Options {
        env: vec![("MAILCONNECT_REFRESH_LEASE_SECS", "3".into())],
        provider_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    if let Some(app) = with {
        opts.db_dir = Some(app.dir.clone());
        opts.db_url = Some(app.db_url.clone());
        opts.fake = Some((app.ms.clone(), app.google.clone()));
    }
    TestApp::spawn_with(opts).await
}

#[tokio::test]
async fn a_provider_slower_than_the_lease_never_gets_two_refreshes_of_one_account() {
    let a = short_lease_replica(None).await;
    let b = short_lease_replica(Some(&a)).await;
    let id = a.connect(TENANT, "ops@contoso.com").await;
    a.expire_stored_token(&id).await;
    let rt = a.stored_refresh_token(&id).await;
    let grants = a.ms.refresh_grants();
    // Slower than the lease: each request is cut by the timeout, which the
    // lease outlasts, so the two replicas ask one after the other.
    a.ms.set_fault(Some(Fault::Slow(Duration::from_secs(4))));
    let (ra, rb) = tokio::join!(a.token(TENANT, &id), b.token(TENANT, &id));
    assert_eq!(
        (ra.status(), rb.status()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE
        )
    );
    assert_eq!(
        a.ms.most_token_requests_in_flight(),
        1,
        "two refreshes of one account at once"
    );
    assert!(a.ms.refresh_token_is_live(&rt));
    // Both replicas back off; a third one, the provider back, refreshes.
    a.ms.set_fault(None);
    let c = short_lease_replica(Some(&a)).await;
    assert_eq!(c.token(TENANT, &id).await.status(), StatusCode::OK);
    assert_eq!(a.ms.refresh_grants(), grants + 1);
    assert!(a
        .ms
        .refresh_token_is_live(&c.stored_refresh_token(&id).await));
    assert_eq!(c.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn a_lease_shorter_than_two_provider_requests_is_refused() {
    let vars = std::collections::HashMap::from([
        ("JWT_SECRET", JWT_SECRET),
        ("OAUTH_STATE_SECRET", STATE_SECRET),
        ("TOKEN_ENCRYPTION_KEYS", KEY_OLD),
        ("DATABASE_URL", "sqlite::memory:"),
        ("MAILCONNECT_REFRESH_LEASE_SECS", "3"),
        ("MAILCONNECT_PROVIDER_TIMEOUT_SECS", "1"),
    ]);
    let env = mailconnect::config::Env(|k| vars.get(k).map(|v| v.to_string()));
    let config = mailconnect::config::Config::from_env(&env, false).unwrap();
    // A caller that gives providers 2 s cannot use this 3-second lease.
    let e = mailconnect::server::build(&config, Duration::from_secs(2))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("MAILCONNECT_REFRESH_LEASE_SECS"), "{e}");
    assert!(mailconnect::server::build(&config, Duration::from_secs(1))
        .await
        .is_ok());
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
