use mailconnect_sandbox::google::GoogleUser;
use mailconnect_sandbox::Fault;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn google_reason(app: &TestApp, body: Value) -> String {
    let landing = app.connect_flow_for("google", TENANT, body).await;
    let q = query(&landing);
    assert_eq!(q["oauth"], "error", "{landing}");
    assert_eq!(q["provider"], "google");
    q["reason"].clone()
}

#[tokio::test]
async fn an_admin_connects_a_gmail_mailbox_end_to_end() {
    let app = TestApp::spawn().await;
    let auth = app.authorize_for("google", TENANT, json!({})).await;
    let url = url::Url::parse(auth["authorization_url"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(url.as_str().starts_with(&app.google.auth_url()));
    assert_eq!(q["scope"], "openid email https://mail.google.com/");
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["include_granted_scopes"], "true");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(!q["nonce"].is_empty());

    let landing = app.callback(&app.consent(url.as_str()).await).await;
    let lq = query(&landing);
    assert_eq!(lq["oauth"], "connected", "{landing}");
    assert_eq!(lq["provider"], "google");
    let id = lq["account_id"].clone();

    let account = app.account(TENANT, &id).await;
    assert_eq!(account["provider"], "google");
    assert_eq!(account["email"], "ops@gmail.com");
    assert_eq!(account["status"], "connected");

    let t: Value = app.token(TENANT, &id).await.json().await.unwrap();
    let info = app
        .google
        .access_token_info(t["access_token"].as_str().unwrap())
        .unwrap();
    assert!(info.valid);
    assert_eq!(
        t["imap"],
        json!({"host": "imap.gmail.com", "port": 993, "tls": true, "username": "ops@gmail.com", "xoauth2": t["xoauth2"]})
    );
    assert_eq!(
        t["smtp"],
        json!({"host": "smtp.gmail.com", "port": 587, "starttls": true, "username": "ops@gmail.com", "xoauth2": t["xoauth2"], "mail_from": "ops@gmail.com"})
    );
    assert_eq!(t["email"], "ops@gmail.com");
}

#[tokio::test]
async fn both_providers_at_once_each_flow_reaches_only_its_own_provider() {
    let app = TestApp::spawn().await;
    let ms_id = app.connect(TENANT, "ops@contoso.com").await;
    let ms_requests = app.ms.token_requests();
    assert_eq!(app.google.token_requests(), 0);
    let g_id = app.connect_google(TENANT, "ops@gmail.com").await;
    assert_eq!(app.ms.token_requests(), ms_requests);
    let g_requests = app.google.token_requests();
    app.expire_stored_token(&ms_id).await;
    assert_eq!(app.token(TENANT, &ms_id).await.status(), 200);
    assert_eq!(app.google.token_requests(), g_requests);
    app.expire_stored_token(&g_id).await;
    let ms_requests = app.ms.token_requests();
    assert_eq!(app.token(TENANT, &g_id).await.status(), 200);
    assert_eq!(app.ms.token_requests(), ms_requests);
    assert_eq!(
        app.status(TENANT).await["accounts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_google_refresh_keeps_the_refresh_token_it_did_not_rotate() {
    let app = TestApp::spawn().await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    let rt = app.stored_refresh_token(&id).await;
    for round in 1..=2 {
        app.expire_stored_token(&id).await;
        let r = app.token(TENANT, &id).await;
        assert_eq!(r.status(), StatusCode::OK, "round {round}");
        assert_eq!(app.stored_refresh_token(&id).await, rt);
        assert!(app.google.refresh_token_is_live(&rt));
    }
    assert_eq!(app.google.refresh_grants(), 2);
}

#[tokio::test]
async fn revoked_google_consent_needs_reauth() {
    let app = TestApp::spawn().await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    app.google.revoke_user("ops@gmail.com");
    app.expire_stored_token(&id).await;
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "reauth_required");
    let account = app.account(TENANT, &id).await;
    assert_eq!(account["status"], "needs_reauth");
    assert_eq!(account["last_error"], "invalid_grant");
}

#[tokio::test]
async fn a_google_outage_changes_nothing_stored() {
    let app = TestApp::spawn().await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    app.expire_stored_token(&id).await;
    let before = app.row(&id).await;
    app.google.set_fault_once(Fault::Unavailable);
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 503, "provider_unavailable");
    assert_eq!(app.row(&id).await, before);
}

async fn disconnect_google(app: &TestApp, id: &str) -> Value {
    let r = app
        .post_json(
            "/api/oauth/google/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn last_audit_outcome(app: &TestApp, id: &str, action: &str) -> String {
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
async fn disconnect_revokes_the_grant_at_google() {
    let app = TestApp::spawn().await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    let rt = app.stored_refresh_token(&id).await;
    let body = disconnect_google(&app, &id).await;
    assert_eq!(body["status"], "disconnected");
    assert_eq!(app.google.revocations(), 1);
    assert!(!app.google.refresh_token_is_live(&rt));
    assert_eq!(app.row(&id).await["refresh_token_enc"], None);
    assert_eq!(
        last_audit_outcome(&app, &id, "disconnect").await,
        "disconnected"
    );
}

#[tokio::test]
async fn a_grant_already_revoked_at_google_disconnects_cleanly() {
    let app = TestApp::spawn().await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    // The user removed the app at Google: revoking again answers 400.
    app.google.revoke_user("ops@gmail.com");
    assert_eq!(disconnect_google(&app, &id).await["status"], "disconnected");
    assert_eq!(
        last_audit_outcome(&app, &id, "disconnect").await,
        "disconnected"
    );
}

#[tokio::test]
async fn a_failed_revocation_still_disconnects_and_is_audited() {
    let app = TestApp::spawn().await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    app.google.set_revoke_fault(true);
    let body = disconnect_google(&app, &id).await;
    assert_eq!(body["status"], "disconnected");
    let row = app.row(&id).await;
    assert_eq!(row["refresh_token_enc"], None);
    assert_eq!(row["access_token_enc"], None);
    assert_eq!(
        last_audit_outcome(&app, &id, "disconnect").await,
        "disconnected_revocation_failed"
    );
}

#[tokio::test]
async fn an_unverified_google_address_is_refused() {
    let app = TestApp::spawn_with(Options {
        google_users: vec![GoogleUser::unverified("someone@example.org")],
        ..Options::default()
    })
    .await;
    assert_eq!(google_reason(&app, json!({})).await, "email_unavailable");
    assert_eq!(app.status(TENANT).await["accounts"], json!([]));
}

#[tokio::test]
async fn without_an_email_claim_the_address_comes_from_userinfo_and_must_be_verified() {
    let app = TestApp::spawn_with(Options {
        google_users: vec![
            GoogleUser::gmail("ops@gmail.com"),
            GoogleUser::unverified("someone@example.org"),
        ],
        google_email_in_id_token: false,
        ..Options::default()
    })
    .await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    assert_eq!(app.account(TENANT, &id).await["email"], "ops@gmail.com");
    app.google.set_user_for_next_login("someone@example.org");
    assert_eq!(google_reason(&app, json!({})).await, "email_unavailable");
    // Userinfo that answers about another account is not believed.
    app.google
        .set_userinfo_subject(Some(GoogleUser::gmail("boss@gmail.com").sub));
    app.google.set_user_for_next_login("ops@gmail.com");
    assert_eq!(google_reason(&app, json!({})).await, "email_unavailable");
    assert_eq!(app.account_count(TENANT).await, 1);
}

#[tokio::test]
async fn consent_without_gmail_access_lands_with_consent_required() {
    let app = TestApp::spawn().await;
    app.google.set_granted_scopes_for_next_login(Some(vec![
        "openid".into(),
        "https://www.googleapis.com/auth/userinfo.email".into(),
    ]));
    assert_eq!(google_reason(&app, json!({})).await, "consent_required");
}

#[tokio::test]
async fn a_state_from_one_provider_is_refused_at_the_others_callback() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    let mixed = callback.replace(
        "/api/oauth/microsoft/callback",
        "/api/oauth/google/callback",
    );
    let r = app.http.get(&mixed).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert_eq!(app.google.token_requests(), 0);
    // The refusal did not consume the state: the genuine callback works.
    assert_eq!(query(&app.callback(&callback).await)["oauth"], "connected");

    let gauth = app.authorize_for("google", TENANT, json!({})).await;
    let gcallback = app
        .consent(gauth["authorization_url"].as_str().unwrap())
        .await;
    let mixed = gcallback.replace(
        "/api/oauth/google/callback",
        "/api/oauth/microsoft/callback",
    );
    assert_eq!(app.http.get(&mixed).send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn google_reconnect_in_place_and_account_mismatch() {
    let app = TestApp::spawn_with(Options {
        google_users: vec![
            GoogleUser::gmail("ops@gmail.com"),
            GoogleUser::gmail("other@gmail.com"),
        ],
        ..Options::default()
    })
    .await;
    let id = app.connect_google(TENANT, "ops@gmail.com").await;
    assert_eq!(app.connect_google(TENANT, "ops@gmail.com").await, id);
    app.google.revoke_user("ops@gmail.com");
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), 409);
    let before = app.row(&id).await;
    app.google.set_user_for_next_login("other@gmail.com");
    assert_eq!(
        google_reason(&app, json!({"account_id": id})).await,
        "account_mismatch"
    );
    assert_eq!(app.row(&id).await, before);
    app.google.set_user_for_next_login("ops@gmail.com");
    let landing = app
        .connect_flow_for("google", TENANT, json!({"account_id": id}))
        .await;
    assert_eq!(query(&landing)["account_id"], id);
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
    assert_eq!(
        app.status(TENANT).await["accounts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
