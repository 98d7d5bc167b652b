//! App mailboxes (DESIGN.md "Account kinds", App tokens): added only once
//! their directory gave the app a token; one token per directory, shared
//! by its mailboxes and asked once however many ask at once; a directory
//! that removes the app turns them `needs_reauth`, a new consent heals them.

use std::time::Duration;

use mailconnect::http::auth::Role;
use mailconnect_sandbox::{APP_ROLES, WORK_TENANT_ID};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::admin_consent::{grant, spawn_with};
use crate::helpers::*;
use crate::receiver::{Mode, Receiver};

const ARCHIVE: &str = "archive@contoso.com";
const BILLING: &str = "billing@contoso.com";

async fn add(app: &TestApp, tenant: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .post_json("/api/accounts", &app.jwt(tenant, Role::Admin), body)
        .await;
    (r.status(), r.json().await.unwrap())
}

async fn add_app(app: &TestApp, email: &str) -> String {
    let (s, body) = add(app, TENANT, json!({"kind": "app", "email": email})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn client_credentials(app: &TestApp) -> usize {
    app.ms
        .token_requests_in(WORK_TENANT_ID, "client_credentials")
}

/// The stored app token is about to expire (as if an hour had passed).
async fn age_app_token(app: &TestApp) {
    let now = chrono::Utc::now().timestamp();
    sqlx::query("UPDATE app_tokens SET expires_at = $1, refresh_due_at = $2 WHERE directory = $3")
        .bind(now + 60)
        .bind(now)
        .bind(WORK_TENANT_ID)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_app_mailbox_opens_with_the_apps_token_for_its_directory_shared_by_all() {
    let app = spawn_with(Options::default()).await;
    // Nothing to open it with before an admin consented.
    let (s, body) = add(&app, TENANT, json!({"kind": "app", "email": ARCHIVE})).await;
    assert_json_error(s, &body, 409, "admin_consent_required");

    grant(&app, TENANT).await;
    let after_consent = client_credentials(&app);
    let (s, added) = add(&app, TENANT, json!({"kind": "app", "email": ARCHIVE})).await;
    assert_eq!(s, StatusCode::CREATED, "{added}");
    assert_eq!(added["kind"], "app");
    assert_eq!(added["directory"], WORK_TENANT_ID);
    assert_eq!(added["via_account_id"], Value::Null);
    assert_eq!(added["status"], "connected");
    let archive = added["id"].as_str().unwrap().to_owned();
    let billing = add_app(&app, BILLING).await;

    let r = app.token(TENANT, &archive).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    let info = app
        .ms
        .app_token_info(token)
        .expect("an app token of the fake");
    assert_eq!(info.directory, WORK_TENANT_ID);
    assert_eq!(info.app_id, CLIENT_ID);
    assert!(info.valid);
    for role in APP_ROLES {
        assert!(info.roles.iter().any(|r| r == role), "{:?}", info.roles);
    }
    for login in [
        &body["imap"]["username"],
        &body["smtp"]["username"],
        &body["smtp"]["mail_from"],
        &body["email"],
    ] {
        assert_eq!(login, ARCHIVE, "{body}");
    }
    let sasl = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(format!("user={ARCHIVE}\x01auth=Bearer {token}\x01\x01"))
    };
    assert_eq!(body["xoauth2"], sasl.as_str());
    assert_eq!(body["imap"]["xoauth2"], sasl.as_str());
    assert_eq!(body["smtp"]["xoauth2"], sasl.as_str());
    assert_eq!(body["imap"]["host"], "outlook.office365.com");

    // The same token for the directory's other mailbox; no new request:
    // the consent's confirmation token is the one stored and served.
    let other: Value = app.token(TENANT, &billing).await.json().await.unwrap();
    assert_eq!(other["access_token"], body["access_token"]);
    assert_eq!(other["imap"]["username"], BILLING);
    assert_eq!(client_credentials(&app), after_consent);

    // Stored sealed: the token is nowhere in the table in clear.
    let (enc,): (String,) =
        sqlx::query_as("SELECT access_token_enc FROM app_tokens WHERE directory = $1")
            .bind(WORK_TENANT_ID)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!enc.contains(token));

    // The same address again: the account it is.
    let (s, body) = add(&app, TENANT, json!({"kind": "app", "email": ARCHIVE})).await;
    assert_json_error(s, &body, 409, "account_exists");
    assert_eq!(body["account_id"], archive.as_str());
}

#[tokio::test]
async fn a_directory_must_give_the_app_a_token_before_its_mailbox_is_added() {
    let app = spawn_with(Options::default()).await;
    grant(&app, TENANT).await;
    // Another directory, named, that never consented.
    let other = "0b0b0b0b-1111-2222-3333-444444444444";
    app.ms.add_directory(other, &["fabrikam.com"]);
    let (s, body) = add(
        &app,
        TENANT,
        json!({"kind": "app", "email": "info@fabrikam.com", "directory": other}),
    )
    .await;
    assert_json_error(s, &body, 409, "admin_consent_required");
    for bad in ["common", "consumers", "not a directory"] {
        let (s, body) = add(
            &app,
            TENANT,
            json!({"kind": "app", "email": ARCHIVE, "directory": bad}),
        )
        .await;
        assert_json_error(s, &body, 400, "invalid_request");
    }
    assert_eq!(app.account_count(TENANT).await, 0);
    // Another tenant of this service has no consent of its own.
    let (s, body) = add(&app, "tenant-b", json!({"kind": "app", "email": ARCHIVE})).await;
    assert_json_error(s, &body, 409, "admin_consent_required");
}

#[tokio::test]
async fn however_many_ask_at_once_one_token_request_per_directory() {
    let app = spawn_with(Options::default()).await;
    grant(&app, TENANT).await;
    let ids = [add_app(&app, ARCHIVE).await, add_app(&app, BILLING).await];
    age_app_token(&app).await;
    let before = client_credentials(&app);
    let answers = futures::future::join_all((0..20).map(|i| app.token(TENANT, &ids[i % 2]))).await;
    let mut tokens = std::collections::HashSet::new();
    for r in answers {
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(client_credentials(&app) - before, 1);
    assert_eq!(tokens.len(), 1, "every caller shares the one new token");
}

#[tokio::test]
async fn a_directory_that_removes_the_app_turns_its_mailboxes_needs_reauth_until_it_consents_again()
{
    let receiver = Receiver::start(Mode::Accept).await;
    let app = spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        ..Options::default()
    })
    .await;
    grant(&app, TENANT).await;
    let archive = add_app(&app, ARCHIVE).await;
    let billing = add_app(&app, BILLING).await;
    // tenant.admin_consented, then each account.connected.
    receiver.wait_for(3, Duration::from_secs(10)).await;

    app.ms.remove_app_from_directory(WORK_TENANT_ID);
    age_app_token(&app).await;
    let r = app.token(TENANT, &archive).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "reauth_required");
    for id in [&archive, &billing] {
        let account = app.account(TENANT, id).await;
        assert_eq!(account["status"], "needs_reauth", "{account}");
        assert_eq!(account["last_error"], "admin_consent_revoked");
        assert_eq!(account["diagnosis"]["cause"], "admin_consent_revoked");
    }
    let r = app.token(TENANT, &billing).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let events = receiver.wait_for(5, Duration::from_secs(10)).await;
    for id in [&archive, &billing] {
        assert_eq!(
            receiver.types_for(id),
            ["account.connected", "account.needs_reauth"],
            "{events:#?}"
        );
    }
    let refusals: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "account.needs_reauth")
        .collect();
    assert!(refusals
        .iter()
        .all(|e| e["error"] == "admin_consent_revoked" && e["cause"] == "admin_consent_revoked"));

    // The admin consents again: the confirmation token heals them.
    grant(&app, TENANT).await;
    for id in [&archive, &billing] {
        assert_eq!(app.account(TENANT, id).await["diagnosis"], Value::Null);
        assert_eq!(app.account(TENANT, id).await["status"], "connected");
    }
    let r = app.token(TENANT, &archive).await;
    assert_eq!(r.status(), StatusCode::OK);
    receiver.wait_for(8, Duration::from_secs(10)).await;
    for id in [&archive, &billing] {
        assert_eq!(
            receiver.types_for(id),
            [
                "account.connected",
                "account.needs_reauth",
                "account.recovered"
            ]
        );
    }
    receiver.assert_clean();
}

#[tokio::test]
async fn the_background_refresher_renews_the_app_token_before_it_expires() {
    let app = spawn_with(Options {
        env: vec![("MAILCONNECT_REFRESH_POLL_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    grant(&app, TENANT).await;
    let archive = add_app(&app, ARCHIVE).await;
    let first: Value = app.token(TENANT, &archive).await.json().await.unwrap();
    let before = client_credentials(&app);
    age_app_token(&app).await;
    // Observable: a new token stored, without anyone asking.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (expires_at,): (Option<i64>,) =
            sqlx::query_as("SELECT expires_at FROM app_tokens WHERE directory = $1")
                .bind(WORK_TENANT_ID)
                .fetch_one(&app.db)
                .await
                .unwrap();
        if expires_at.is_some_and(|e| e > chrono::Utc::now().timestamp() + 600) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the app token was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client_credentials(&app) - before, 1);
    let second: Value = app.token(TENANT, &archive).await.json().await.unwrap();
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(client_credentials(&app) - before, 1);
}

#[tokio::test]
async fn two_replicas_ask_once_per_directory_between_them() {
    let a = spawn_with(Options::default()).await;
    let b = TestApp::spawn_with(Options {
        db_dir: Some(a.dir.clone()),
        db_url: Some(a.db_url.clone()),
        fake: Some((a.ms.clone(), a.google.clone())),
        ..Options::default()
    })
    .await;
    grant(&a, TENANT).await;
    let ids = [add_app(&a, ARCHIVE).await, add_app(&b, BILLING).await];
    age_app_token(&a).await;
    let before = client_credentials(&a);
    let answers = futures::future::join_all((0..40).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.token(TENANT, &ids[i % 2])
    }))
    .await;
    let mut tokens = std::collections::HashSet::new();
    for r in answers {
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        client_credentials(&a) - before,
        1,
        "one request between both replicas"
    );
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn keys_rotate_reseals_the_app_token_so_the_old_key_can_go() {
    let app = spawn_with(Options::default()).await;
    grant(&app, TENANT).await;
    let archive = add_app(&app, ARCHIVE).await;
    let first: Value = app.token(TENANT, &archive).await.json().await.unwrap();
    let db = mailconnect::db::Db::connect(&app.db_url).await.unwrap();
    let both = mailconnect::crypto::Keyring::parse(&format!("{KEY_NEW},{KEY_OLD}")).unwrap();
    let report = mailconnect::ops::rotate_keys(&db, &both, None)
        .await
        .unwrap();
    assert_eq!(report.unreadable, 0);
    assert!(report.reencrypted >= 1, "{report:?}");
    let before = client_credentials(&app);
    // Only the new key now: the same token, no new request.
    let app = app.restart(KEY_NEW).await;
    let again: Value = app.token(TENANT, &archive).await.json().await.unwrap();
    assert_eq!(again["access_token"], first["access_token"]);
    assert_eq!(client_credentials(&app), before);
}

#[tokio::test]
async fn our_refused_credentials_are_the_providers_misconfiguration_not_the_directorys() {
    let app = spawn_with(Options {
        env: vec![("MICROSOFT_OAUTH_CLIENT_SECRET", "not-the-secret".into())],
        ..Options::default()
    })
    .await;
    let (s, body) = add(
        &app,
        TENANT,
        json!({"kind": "app", "email": ARCHIVE, "directory": WORK_TENANT_ID}),
    )
    .await;
    assert_json_error(s, &body, 502, "provider_misconfigured");
    assert_eq!(app.account_count(TENANT).await, 0);
    let status = app.status(TENANT).await;
    let error = status["providers"]["microsoft"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.starts_with("invalid_client"), "{status}");
}
