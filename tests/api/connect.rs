use base64::Engine;
use mailconnect_sandbox::{FakeUser, PERSONAL_TENANT_ID};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn an_admin_connects_a_mailbox_and_a_worker_gets_working_credentials() {
    let app = TestApp::spawn().await;

    let auth = app.authorize(TENANT, json!({})).await;
    let url = url::Url::parse(auth["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/common/oauth2/v2.0/authorize");
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(!q["nonce"].is_empty());
    assert_eq!(q["state"], auth["state"].as_str().unwrap());
    assert_eq!(q["scope"], "openid profile email offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send User.Read");
    assert!(!url.as_str().contains("code_verifier"));
    assert!(auth["expires_at"].as_str().unwrap().ends_with('Z'));
    // The state is a JWT that carries no verifier or nonce.
    let claims = b64_json(auth["state"].as_str().unwrap().split('.').nth(1).unwrap());
    assert!(claims.get("nonce").is_none() && claims.get("verifier").is_none());

    let callback = app.consent(url.as_str()).await;
    let landing = app.callback(&callback).await;
    let lq = query(&landing);
    assert!(landing.starts_with("/?"), "{landing}");
    assert_eq!(lq["oauth"], "connected");
    assert_eq!(lq["provider"], "microsoft");
    let id = lq["account_id"].clone();

    // The code was redeemed for Outlook only, the Graph token came from the
    // refresh token, and the refresh named its scopes.
    assert_eq!(app.ms.code_redemptions(), 1);
    assert_eq!(app.ms.refresh_grants(), 1);

    let status = app.status(TENANT).await;
    assert_eq!(status["providers"]["microsoft"]["configured"], true);
    assert_eq!(status["providers"]["microsoft"]["tenant"], "common");
    assert_eq!(status["providers"]["google"]["configured"], true);
    assert_eq!(status["providers"]["oidc"]["configured"], false);
    let account = &status["accounts"][0];
    assert_eq!(account["id"], id.as_str());
    assert_eq!(account["provider"], "microsoft");
    assert_eq!(account["email"], "ops@contoso.com");
    assert_eq!(account["auth_type"], "oauth");
    assert_eq!(account["status"], "connected");
    assert!(account["scopes"]
        .as_array()
        .unwrap()
        .contains(&json!("https://outlook.office.com/IMAP.AccessAsUser.All")));
    assert!(account["token_expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(account["connected_at"].is_string());
    assert_eq!(account["last_refresh_at"], Value::Null);
    assert_eq!(account["last_error"], Value::Null);

    let r = app.token(TENANT, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let token = t["access_token"].as_str().unwrap();
    let info = app
        .ms
        .access_token_info(token)
        .expect("a token the provider issued");
    assert!(info.valid);
    assert_eq!(info.resource, "https://outlook.office.com");
    assert_eq!(info.upn, "ops@contoso.com");
    assert_eq!(t["email"], "ops@contoso.com");
    let xoauth2 = base64::engine::general_purpose::STANDARD
        .decode(t["xoauth2"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(xoauth2).unwrap(),
        format!("user=ops@contoso.com\x01auth=Bearer {token}\x01\x01")
    );
    assert_eq!(
        t["imap"],
        json!({"host": "outlook.office365.com", "port": 993, "tls": true, "username": "ops@contoso.com", "xoauth2": t["xoauth2"]})
    );
    assert_eq!(
        t["smtp"],
        json!({"host": "smtp.office365.com", "port": 587, "starttls": true, "username": "ops@contoso.com", "xoauth2": t["xoauth2"], "mail_from": "ops@contoso.com"})
    );
    assert!(t["expires_at"].as_str().unwrap().ends_with('Z'));
    // A fresh token is handed out without asking the provider again.
    assert_eq!(app.ms.refresh_grants(), 1);
}

#[tokio::test]
async fn graph_mail_null_falls_back_to_the_user_principal_name() {
    let mut user = FakeUser::work("jane@contoso.onmicrosoft.com");
    user.mail = None;
    user.email_claim = None;
    let app = TestApp::spawn_with(Options {
        users: vec![user],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "jane@contoso.onmicrosoft.com").await;
    assert_eq!(
        app.account(TENANT, &id).await["email"],
        "jane@contoso.onmicrosoft.com"
    );
}

#[tokio::test]
async fn graph_mail_names_the_mailbox_before_the_user_principal_name() {
    let mut jane = FakeUser::work("jdoe@contoso.onmicrosoft.com");
    jane.mail = Some("jane.doe@contoso.com".into());
    let mut blank = FakeUser::work("room@contoso.onmicrosoft.com");
    blank.mail = Some("  ".into());
    let app = TestApp::spawn_with(Options {
        users: vec![jane, blank],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "jdoe@contoso.onmicrosoft.com").await;
    assert_eq!(
        app.account(TENANT, &id).await["email"],
        "jane.doe@contoso.com"
    );
    // A blank `mail` is no address: the user principal name is.
    let id = app.connect(TENANT, "room@contoso.onmicrosoft.com").await;
    assert_eq!(
        app.account(TENANT, &id).await["email"],
        "room@contoso.onmicrosoft.com"
    );
}

#[tokio::test]
async fn when_graph_is_down_the_validated_id_token_names_the_mailbox() {
    let app = TestApp::spawn().await;
    app.ms.set_graph_down(true);
    let id = app.connect(TENANT, "ops@contoso.com").await;
    assert_eq!(app.account(TENANT, &id).await["email"], "ops@contoso.com");
}

#[tokio::test]
async fn personal_outlook_accounts_send_through_smtp_mail_outlook_com() {
    let app = TestApp::spawn_with(Options {
        users: vec![FakeUser::personal("someone@outlook.com")],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "someone@outlook.com").await;
    let t: Value = app.token(TENANT, &id).await.json().await.unwrap();
    assert_eq!(t["smtp"]["host"], "smtp-mail.outlook.com");
    assert_eq!(t["imap"]["host"], "outlook.office365.com");
    assert_eq!(t["email"], "someone@outlook.com");
    let row = app.row(&id).await;
    assert_eq!(row["email"].as_deref(), Some("someone@outlook.com"));
    // The id_token's tenant is stored with the account: it picks the host.
    let (tid,): (Option<String>,) =
        sqlx::query_as("SELECT provider_tenant_id FROM accounts WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(tid.as_deref(), Some(PERSONAL_TENANT_ID));
}

#[tokio::test]
async fn reconnecting_a_connected_mailbox_updates_it_in_place() {
    let app = TestApp::spawn().await;
    let first = app.connect(TENANT, "ops@contoso.com").await;
    let second = app.connect(TENANT, "ops@contoso.com").await;
    assert_eq!(first, second);
    let status = app.status(TENANT).await;
    assert_eq!(status["accounts"].as_array().unwrap().len(), 1);
    // The same address in another tenant is another account.
    let other = app.connect(OTHER_TENANT, "ops@contoso.com").await;
    assert_ne!(other, first);
}

#[tokio::test]
async fn authorize_with_account_id_reauthorises_that_account_and_keeps_its_id() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let auth = app.authorize(TENANT, json!({"account_id": id})).await;
    let url = auth["authorization_url"].as_str().unwrap();
    assert!(url.contains("login_hint=ops%40contoso.com"), "{url}");
    let landing = app.callback(&app.consent(url).await).await;
    assert_eq!(query(&landing)["account_id"], id);
    assert_eq!(
        app.status(TENANT).await["accounts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn expires_in_sent_as_a_string_is_understood() {
    let app = TestApp::spawn_with(Options {
        expires_in_as_string: true,
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let exp = app.row(&id).await["exp"]
        .clone()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(exp > now + 3000 && exp < now + 3700, "{exp} vs {now}");
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn disconnect_deletes_the_tokens_and_returns_the_account_to_passwords() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"account_id": id, "auth_type": "password", "status": "disconnected"})
    );
    let row = app.row(&id).await;
    assert_eq!(row["access_token_enc"], None);
    assert_eq!(row["refresh_token_enc"], None);
    assert_eq!(row["status"].as_deref(), Some("disconnected"));
    assert_eq!(app.account(TENANT, &id).await["status"], "disconnected");
    let r = app.token(TENANT, &id).await;
    let status = r.status();
    assert_json_error(
        status,
        &r.json().await.unwrap(),
        409,
        "account_disconnected",
    );
    // Connecting the address again brings the same account back.
    assert_eq!(app.connect(TENANT, "ops@contoso.com").await, id);
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
}

#[tokio::test]
async fn unknown_and_unconfigured_providers_are_told_apart() {
    let app = TestApp::spawn_with(Options {
        google: false,
        ..Options::default()
    })
    .await;
    let r = app
        .post_json("/api/oauth/yahoo/authorize", &app.admin(), json!({}))
        .await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 404, "not_found");
    let r = app
        .post_json("/api/oauth/google/authorize", &app.admin(), json!({}))
        .await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "provider_not_configured");
    let r = app
        .http
        .get(app.url("/api/oauth/google/callback?code=x&state=y"))
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "provider_not_configured");
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
