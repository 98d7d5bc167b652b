//! A provider's answer that the database does not take is not lost: the
//! rotated refresh token of a strict provider is kept in memory and stored
//! as soon as the database takes writes again, and a refusal caused by that
//! rotation (another replica using the spent token after this one's lease
//! lapsed) neither sticks nor is believed.
//!
//! The database refuses the store through a trigger (SQLite or PostgreSQL)
//! that fails every write of an access token until it is dropped.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::*;

/// Every write of `accounts.access_token_enc` fails until [`allow_stores`].
async fn refuse_stores(app: &TestApp) {
    if on_sqlite() {
        sqlx::query(
            "CREATE TRIGGER chaos_refuse_store BEFORE UPDATE OF access_token_enc ON accounts
             BEGIN SELECT RAISE(ABORT, 'injected: the database refuses this write'); END",
        )
        .execute(&app.db)
        .await
        .unwrap();
    } else {
        sqlx::query(
            "CREATE OR REPLACE FUNCTION chaos_refuse_store() RETURNS trigger AS $$
             BEGIN RAISE EXCEPTION 'injected: the database refuses this write'; END $$ LANGUAGE plpgsql",
        )
        .execute(&app.db)
        .await
        .unwrap();
        sqlx::query(
            "CREATE TRIGGER chaos_refuse_store BEFORE UPDATE OF access_token_enc ON accounts
             FOR EACH ROW EXECUTE FUNCTION chaos_refuse_store()",
        )
        .execute(&app.db)
        .await
        .unwrap();
    }
}

async fn allow_stores(app: &TestApp) {
    let drop = if on_sqlite() {
        "DROP TRIGGER chaos_refuse_store"
    } else {
        "DROP TRIGGER chaos_refuse_store ON accounts"
    };
    sqlx::query(drop).execute(&app.db).await.unwrap();
}

/// A second replica on the same database and fakes, refresher off.
async fn replica_of(app: &TestApp) -> TestApp {
    TestApp::spawn_with(Options {
        db_dir: Some(app.dir.clone()),
        db_url: Some(app.db_url.clone()),
        fake: Some((app.ms.clone(), app.google.clone())),
        env: quiet_replica(),
        ..Options::default()
    })
    .await
}

/// No background refresher (the token route does every refresh here) and a
/// lease that lapses fast: 5 s, the shortest that outlasts two requests of
/// the test harness's 2 s provider timeout (start-up refuses less).
fn quiet_replica() -> Vec<(&'static str, String)> {
    vec![
        ("MAILCONNECT_REFRESHER", "off".into()),
        ("MAILCONNECT_REFRESH_LEASE_SECS", "5".into()),
    ]
}

async fn wait_for_stored_refresh_token(app: &TestApp, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.stored_refresh_token(id).await != want {
        assert!(
            Instant::now() < deadline,
            "the kept refresh token was never stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The refresh token the fake issued last (it rotates on every grant).
fn newest_refresh_token(app: &TestApp) -> String {
    app.ms
        .issued_secrets()
        .into_iter()
        .rev()
        .find(|s| s.starts_with("M.C"))
        .unwrap()
}

async fn token_ok(app: &TestApp, id: &str) -> Value {
    let r = app.token(TENANT, id).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_rotated_refresh_token_the_database_refused_is_kept_and_stored_when_it_can_be() {
    let app = TestApp::spawn_with(Options {
        env: quiet_replica(),
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    let spent = app.stored_refresh_token(&id).await;
    let grants = app.ms.refresh_grants();
    refuse_stores(&app).await;

    // The worker still gets the new token: the refresh worked.
    let first = token_ok(&app, &id).await;
    let access = first["access_token"].as_str().unwrap();
    assert!(app.ms.access_token_info(access).unwrap().valid);
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    let rotated = newest_refresh_token(&app);
    assert!(!app.ms.refresh_token_is_live(&spent), "strict rotation");
    assert!(app.ms.refresh_token_is_live(&rotated));
    assert_eq!(app.stored_refresh_token(&id).await, spent, "not stored yet");

    // Asked again before it is stored: the kept answer, not a second
    // refresh with the spent token.
    let again = token_ok(&app, &id).await;
    assert_eq!(again["access_token"], first["access_token"]);
    assert_eq!(app.ms.refresh_grants(), grants + 1);

    allow_stores(&app).await;
    wait_for_stored_refresh_token(&app, &id, &rotated).await;
    assert!(app.ms.refresh_token_is_live(&rotated));
    let account = app.account(TENANT, &id).await;
    assert_eq!(account["status"], "connected");
    let later = token_ok(&app, &id).await;
    assert_eq!(later["access_token"], first["access_token"]);
    assert_eq!(app.ms.refresh_grants(), grants + 1, "refreshed once in all");
}

#[tokio::test]
async fn a_refusal_of_the_spent_token_by_another_replica_is_healed_by_the_late_store() {
    let a = TestApp::spawn_with(Options {
        env: quiet_replica(),
        ..Options::default()
    })
    .await;
    let b = replica_of(&a).await;
    let id = a.connect(TENANT, "ops@contoso.com").await;
    a.expire_stored_token(&id).await;
    refuse_stores(&a).await;

    token_ok(&a, &id).await;
    let rotated = newest_refresh_token(&a);
    // B finds the token expired, waits out A's lease and refreshes with the
    // stored, spent token: the strict provider says invalid_grant.
    let r = b.token(TENANT, &id).await;
    let status = r.status();
    assert_json_error(status, &r.json().await.unwrap(), 409, "reauth_required");
    assert_eq!(b.account(TENANT, &id).await["status"], "needs_reauth");

    // Once A's kept refresh is stored, the account is back, with the live
    // token, and the audit says why.
    allow_stores(&a).await;
    wait_for_stored_refresh_token(&a, &id, &rotated).await;
    assert_eq!(b.account(TENANT, &id).await["status"], "connected");
    assert!(a.ms.refresh_token_is_live(&rotated));
    token_ok(&b, &id).await;
    let r = b
        .http
        .get(b.url(&format!("/api/audit?account_id={id}")))
        .bearer_auth(b.admin())
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    let actions: Vec<(String, String)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions[..2],
        [
            ("refresh".to_owned(), "recovered".to_owned()),
            ("refresh_failed".to_owned(), "needs_reauth".to_owned()),
        ],
        "{page}"
    );
}

#[tokio::test]
async fn a_refusal_of_a_token_rotated_meanwhile_changes_nothing() {
    let mut a = TestApp::spawn_with(Options {
        env: quiet_replica(),
        ..Options::default()
    })
    .await;
    let b = replica_of(&a).await;
    let id = a.connect(TENANT, "ops@contoso.com").await;
    a.expire_stored_token(&id).await;
    refuse_stores(&a).await;
    let kept = token_ok(&a, &id).await;
    let rotated = newest_refresh_token(&a);

    // B starts a refresh with the stored, spent token; the provider takes
    // its time to answer, and meanwhile A stores its kept refresh (at
    // shutdown, A stores what it kept before it exits).
    a.ms.set_fault_once(mailconnect_sandbox::Fault::Slow(Duration::from_millis(
        1_500,
    )));
    let asked = a.ms.token_requests();
    let client = b.http.clone();
    let (url, jwt) = (b.url(&format!("/api/accounts/{id}/token")), b.service());
    let pending = tokio::spawn(async move { client.post(url).bearer_auth(jwt).send().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.ms.token_requests() == asked {
        assert!(Instant::now() < deadline, "B never asked the provider");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    allow_stores(&a).await;
    a.stop().await;
    assert_eq!(b.stored_refresh_token(&id).await, rotated);

    // The provider refuses B's spent token; B sees a newer one stored and
    // hands out the token A stored.
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["access_token"], kept["access_token"]);
    assert_eq!(b.account(TENANT, &id).await["status"], "connected");
    assert!(b.ms.refresh_token_is_live(&rotated));
}

/// A callback that arrives while the database is locked past its busy
/// timeout gets a 503 page, spends nothing, and the very same URL connects
/// the mailbox once the database is back. (SQLite only: a lock is how a
/// SQLite database goes away under a running service.)
#[tokio::test]
async fn a_callback_while_the_database_is_away_is_503_and_works_once_it_is_back() {
    if !on_sqlite() {
        return;
    }
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, serde_json::json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    // Another process holds the write lock for longer than the service's
    // 10 s busy timeout.
    let mut lock = sqlx::AnyConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    let r = app.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("location").is_none());
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("Reload this page"));
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    assert_eq!(app.ms.code_redemptions(), 0, "nothing was spent");
    let landing = app.callback(&callback).await;
    assert_eq!(query(&landing)["oauth"], "connected", "{landing}");
}

/// A database that answers, but with an error that is not an outage (here
/// the table of used states is gone), refuses the callback with a 400 page:
/// a 503 would tell the browser to retry something that will not heal.
#[tokio::test]
async fn a_callback_whose_state_cannot_be_spent_for_another_reason_is_refused_not_retried() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, serde_json::json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    sqlx::query("DROP TABLE consumed_states")
        .execute(&app.db)
        .await
        .unwrap();
    let r = app.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("could not be completed"));
    assert_eq!(app.ms.code_redemptions(), 0, "nothing was redeemed");
    assert_eq!(app.account_count(TENANT).await, 0);
}
