use mailconnect::oauth::state::StateSigner;
use mailconnect_sandbox::{FakeUser, Fault};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::*;

/// Runs the flow and returns the `reason` the browser lands with.
async fn failed_reason(app: &TestApp, body: Value) -> String {
    let landing = app.connect_flow(TENANT, body).await;
    let q = query(&landing);
    assert_eq!(q["oauth"], "error", "{landing}");
    assert_eq!(q["provider"], "microsoft");
    q["reason"].clone()
}

async fn no_accounts(app: &TestApp) {
    assert_eq!(app.status(TENANT).await["accounts"], json!([]));
}

#[tokio::test]
async fn a_declined_consent_lands_with_access_denied() {
    let app = TestApp::spawn().await;
    app.ms.set_authorize_error(Some((
        "access_denied".into(),
        "AADSTS65004: User declined to consent to access the app.".into(),
    )));
    assert_eq!(failed_reason(&app, json!({})).await, "access_denied");
    no_accounts(&app).await;
}

#[tokio::test]
async fn consent_the_user_cannot_give_lands_with_consent_required() {
    let app = TestApp::spawn().await;
    for error in ["consent_required", "interaction_required"] {
        app.ms
            .set_authorize_error(Some((error.into(), "AADSTS65001: consent".into())));
        assert_eq!(failed_reason(&app, json!({})).await, "consent_required");
    }
    no_accounts(&app).await;
}

#[tokio::test]
async fn a_refused_code_redemption_lands_with_token_exchange_failed() {
    let app = TestApp::spawn().await;
    app.ms.set_fault_once(Fault::InvalidGrant);
    assert_eq!(
        failed_reason(&app, json!({})).await,
        "token_exchange_failed"
    );
    no_accounts(&app).await;
}

#[tokio::test]
async fn an_id_token_with_the_wrong_nonce_lands_with_token_exchange_failed() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    // Re-seal the state with another nonce (the test holds the keys), as if
    // the id_token had been issued for another sign-in.
    let state = auth["state"].as_str().unwrap();
    let mut claims: mailconnect::oauth::state::StateClaims =
        serde_json::from_value(b64_json(state.split('.').nth(1).unwrap())).unwrap();
    let ring = mailconnect::crypto::Keyring::parse(KEY_OLD).unwrap();
    let aad = || mailconnect::crypto::Aad::new("oauth_state", &claims.jti, "pkce");
    let opened = ring.open(&claims.sec, &aad()).unwrap();
    let verifier = secrecy::ExposeSecret::expose_secret(&opened)
        .split_once(' ')
        .unwrap()
        .0
        .to_owned();
    let sec = ring.seal(&format!("{verifier} another-nonce"), &aad());
    claims.sec = sec;
    let resealed = StateSigner::new(&SecretString::from(STATE_SECRET)).sign(&claims);
    let code = query(&callback)["code"].clone();
    let landing = app
        .callback(&app.url(&format!(
            "/api/oauth/microsoft/callback?code={code}&state={resealed}"
        )))
        .await;
    assert_eq!(query(&landing)["reason"], "token_exchange_failed");
    assert_eq!(app.ms.code_redemptions(), 1, "the code itself was good");
    no_accounts(&app).await;
}

#[tokio::test]
async fn an_unreachable_provider_lands_with_provider_unavailable() {
    let app = TestApp::spawn().await;
    app.ms.set_fault_once(Fault::Unavailable);
    assert_eq!(failed_reason(&app, json!({})).await, "provider_unavailable");
    app.ms.set_fault_once(Fault::TooManyRequests {
        retry_after_secs: 3,
    });
    assert_eq!(failed_reason(&app, json!({})).await, "provider_unavailable");
    no_accounts(&app).await;
}

#[tokio::test]
async fn a_user_without_an_address_lands_with_email_unavailable() {
    let mut user = FakeUser::work("room-without-mailbox");
    user.mail = None;
    user.email_claim = None;
    let app = TestApp::spawn_with(Options {
        users: vec![user],
        ..Options::default()
    })
    .await;
    assert_eq!(failed_reason(&app, json!({})).await, "email_unavailable");
    no_accounts(&app).await;
}

#[tokio::test]
async fn reauthorising_with_another_mailbox_lands_with_account_mismatch_and_changes_nothing() {
    let app = TestApp::spawn_with(Options {
        users: vec![
            FakeUser::work("ops@contoso.com"),
            FakeUser::work("sales@contoso.com"),
        ],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let before = app.row(&id).await;
    app.ms.set_user_for_next_login("sales@contoso.com");
    assert_eq!(
        failed_reason(&app, json!({"account_id": id})).await,
        "account_mismatch"
    );
    assert_eq!(app.row(&id).await, before);
    let accounts = app.status(TENANT).await["accounts"].clone();
    assert_eq!(accounts.as_array().unwrap().len(), 1);
    assert_eq!(accounts[0]["email"], "ops@contoso.com");
}

#[tokio::test]
async fn an_expired_state_lands_with_state_expired() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    // The same state, re-signed as if eleven minutes had passed.
    let state = auth["state"].as_str().unwrap();
    let mut claims: mailconnect::oauth::state::StateClaims =
        serde_json::from_value(b64_json(state.split('.').nth(1).unwrap())).unwrap();
    claims.exp = chrono::Utc::now().timestamp() - 60;
    let expired = StateSigner::new(&SecretString::from(STATE_SECRET)).sign(&claims);
    let code = query(&callback)["code"].clone();
    let url = app.url(&format!(
        "/api/oauth/microsoft/callback?code={code}&state={expired}"
    ));
    let landing = app.callback(&url).await;
    assert_eq!(query(&landing)["reason"], "state_expired");
    assert_eq!(app.ms.code_redemptions(), 0);
    no_accounts(&app).await;
}

async fn refused_without_redirect(app: &TestApp, url: &str) {
    let r = app.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("Sign-in not completed"));
}

#[tokio::test]
async fn a_replayed_state_is_refused_without_a_redirect() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    app.callback(&callback).await;
    refused_without_redirect(&app, &callback).await;
    assert_eq!(app.ms.code_redemptions(), 1);
}

#[tokio::test]
async fn forged_and_missing_states_are_refused_without_a_redirect() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    let state = auth["state"].as_str().unwrap();
    let code = query(&callback)["code"].clone();

    let claims: mailconnect::oauth::state::StateClaims =
        serde_json::from_value(b64_json(state.split('.').nth(1).unwrap())).unwrap();
    let forged =
        StateSigner::new(&SecretString::from("an attacker's guess at the secret!!")).sign(&claims);
    let cb = "/api/oauth/microsoft/callback";
    for url in [
        format!("{cb}?code={code}&state={forged}"),
        format!("{cb}?code={code}&state=not-a-jwt"),
        format!("{cb}?code={code}"),
        format!("{cb}?code={code}&state="),
        format!("{cb}?error=access_denied"),
        cb.to_string(),
    ] {
        refused_without_redirect(&app, &app.url(&url)).await;
    }
    // The genuine state still works after all that.
    let landing = app.callback(&callback).await;
    assert_eq!(query(&landing)["oauth"], "connected");
}

#[tokio::test]
async fn return_to_must_be_a_relative_path_and_is_honoured() {
    let app = TestApp::spawn().await;
    let too_long = format!("/{}", "a".repeat(2048));
    for bad in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
        "/settings mail",
        "/settings\nSet-Cookie: x=1",
        "/tab\u{7}",
        &too_long,
        "settings",
    ] {
        let r = app
            .post_json(
                "/api/oauth/microsoft/authorize",
                &app.admin(),
                json!({"return_to": bad}),
            )
            .await;
        let s = r.status();
        assert_json_error(s, &r.json().await.unwrap(), 400, "invalid_return_to");
    }
    // 2048 characters are still a path.
    let longest = format!("/{}", "a".repeat(2047));
    let r = app
        .post_json(
            "/api/oauth/microsoft/authorize",
            &app.admin(),
            json!({"return_to": longest}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let landing = app
        .connect_flow(TENANT, json!({"return_to": "/settings/mail?tab=accounts"}))
        .await;
    assert!(
        landing.starts_with(
            "/settings/mail?tab=accounts&oauth=connected&provider=microsoft&account_id="
        ),
        "{landing}"
    );
}

#[tokio::test]
async fn an_absolute_return_url_is_used_as_configured() {
    let app = TestApp::spawn_with(Options {
        return_url: Some("https://app.example.com/mail/settings".into()),
        ..Options::default()
    })
    .await;
    let landing = app.connect_flow(TENANT, json!({})).await;
    assert!(
        landing.starts_with("https://app.example.com/mail/settings?oauth=connected"),
        "{landing}"
    );
}

#[tokio::test]
async fn an_account_of_another_provider_is_refused_at_authorize_and_disconnect() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    for path in [
        "/api/oauth/google/authorize",
        "/api/oauth/google/disconnect",
    ] {
        let r = app
            .post_json(path, &app.admin(), json!({"account_id": id}))
            .await;
        let s = r.status();
        let body: Value = r.json().await.unwrap();
        assert_json_error(s, &body, 409, "provider_mismatch");
        assert!(body["message"].as_str().unwrap().contains("microsoft"));
    }
    assert_eq!(app.row(&id).await["status"].as_deref(), Some("connected"));
    assert_eq!(app.google.token_requests(), 0);
}

#[tokio::test]
async fn an_implausible_login_hint_is_refused_and_a_blank_one_ignored() {
    let app = TestApp::spawn().await;
    for hint in ["a".repeat(321), "ops@contoso.com\r\nX-Injected: 1".into()] {
        let r = app
            .post_json(
                "/api/oauth/microsoft/authorize",
                &app.admin(),
                json!({"login_hint": hint}),
            )
            .await;
        let s = r.status();
        assert_json_error(s, &r.json().await.unwrap(), 400, "invalid_request");
    }
    let auth = app.authorize(TENANT, json!({"login_hint": "  "})).await;
    let url = auth["authorization_url"].as_str().unwrap();
    assert!(!url.contains("login_hint"), "{url}");
    assert!(url.contains("prompt=select_account"), "{url}");
    let auth = app
        .authorize(TENANT, json!({"login_hint": "ops@contoso.com"}))
        .await;
    let url = auth["authorization_url"].as_str().unwrap();
    assert!(url.contains("login_hint=ops%40contoso.com"), "{url}");
    // 320 characters are still plausible.
    let longest = format!("{}@contoso.com", "a".repeat(320 - 12));
    let auth = app.authorize(TENANT, json!({"login_hint": longest})).await;
    assert!(auth["authorization_url"]
        .as_str()
        .unwrap()
        .contains(&longest[..300]));
    assert!(!url.contains("prompt="), "{url}");
}

#[tokio::test]
async fn a_state_whose_sealed_verifier_cannot_be_opened_redeems_nothing() {
    let app = TestApp::spawn().await;
    let signer = StateSigner::new(&SecretString::from(STATE_SECRET));
    let ring = mailconnect::crypto::Keyring::parse(KEY_OLD).unwrap();
    // Sealed for another state, not sealed at all, and sealed without the
    // space between verifier and nonce.
    for sec in [
        |_: &mailconnect::oauth::state::StateClaims, r: &mailconnect::crypto::Keyring| {
            r.seal(
                "verifier nonce",
                &mailconnect::crypto::Aad::new("oauth_state", "another-jti", "pkce"),
            )
        },
        |_: &mailconnect::oauth::state::StateClaims, _: &mailconnect::crypto::Keyring| {
            "verifier nonce".to_string()
        },
        |c: &mailconnect::oauth::state::StateClaims, r: &mailconnect::crypto::Keyring| {
            r.seal(
                "verifier-without-a-nonce",
                &mailconnect::crypto::Aad::new("oauth_state", &c.jti, "pkce"),
            )
        },
    ] {
        let auth = app.authorize(TENANT, json!({})).await;
        let callback = app
            .consent(auth["authorization_url"].as_str().unwrap())
            .await;
        let state = auth["state"].as_str().unwrap();
        let mut claims: mailconnect::oauth::state::StateClaims =
            serde_json::from_value(b64_json(state.split('.').nth(1).unwrap())).unwrap();
        claims.sec = sec(&claims, &ring);
        let code = query(&callback)["code"].clone();
        let landing = app
            .callback(&app.url(&format!(
                "/api/oauth/microsoft/callback?code={code}&state={}",
                signer.sign(&claims)
            )))
            .await;
        assert_eq!(query(&landing)["reason"], "token_exchange_failed");
    }
    assert_eq!(app.ms.code_redemptions(), 0);
    no_accounts(&app).await;
}

/// The 400 page of a refused callback, and its text.
async fn refused_with(app: &TestApp, url: &str) -> String {
    let r = app.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    r.text().await.unwrap()
}

#[tokio::test]
async fn a_state_that_is_empty_or_too_long_is_no_state_at_all() {
    let app = TestApp::spawn().await;
    let cb = "/api/oauth/microsoft/callback?code=c&state=";
    let text = refused_with(&app, &app.url(cb)).await;
    assert!(text.contains("carried no state"), "{text}");
    let text = refused_with(&app, &app.url(&format!("{cb}{}", "a".repeat(8192)))).await;
    assert!(text.contains("carried no state"), "{text}");
    // Just under the limit it is read, and does not verify.
    let text = refused_with(&app, &app.url(&format!("{cb}{}", "a".repeat(8191)))).await;
    assert!(text.contains("does not verify"), "{text}");
    assert_eq!(app.ms.token_requests(), 0);
}

#[tokio::test]
async fn an_empty_or_overlong_code_is_never_sent_to_the_provider() {
    let app = TestApp::spawn().await;
    for code in [String::new(), "c".repeat(8192)] {
        let auth = app.authorize(TENANT, json!({})).await;
        let state = auth["state"].as_str().unwrap();
        let landing = app
            .callback(&app.url(&format!(
                "/api/oauth/microsoft/callback?code={code}&state={state}"
            )))
            .await;
        assert_eq!(query(&landing)["reason"], "token_exchange_failed");
    }
    assert_eq!(app.ms.token_requests(), 0);
    // Just under the limit, the provider is asked (and refuses it).
    let auth = app.authorize(TENANT, json!({})).await;
    let state = auth["state"].as_str().unwrap();
    let landing = app
        .callback(&app.url(&format!(
            "/api/oauth/microsoft/callback?code={}&state={state}",
            "c".repeat(8191)
        )))
        .await;
    assert_eq!(query(&landing)["reason"], "token_exchange_failed");
    assert_eq!(app.ms.token_requests(), 1);
}

#[tokio::test]
async fn a_callback_with_neither_code_nor_error_redeems_nothing() {
    let app = TestApp::spawn().await;
    let auth = app.authorize(TENANT, json!({})).await;
    let state = auth["state"].as_str().unwrap();
    let landing = app
        .callback(&app.url(&format!("/api/oauth/microsoft/callback?state={state}")))
        .await;
    assert_eq!(query(&landing)["reason"], "token_exchange_failed");
    assert_eq!(app.ms.token_requests(), 0);
}

#[tokio::test]
async fn provider_errors_at_the_callback_keep_their_meaning() {
    let app = TestApp::spawn().await;
    for (error, reason) in [
        ("temporarily_unavailable", "provider_unavailable"),
        ("server_error", "provider_unavailable"),
        ("login_required", "consent_required"),
        ("invalid_request", "token_exchange_failed"),
    ] {
        app.ms
            .set_authorize_error(Some((error.into(), "AADSTS0: text".into())));
        assert_eq!(failed_reason(&app, json!({})).await, reason, "{error}");
    }
    app.ms.set_authorize_error(None);
    // A redemption refused with an error body no one can read.
    app.ms.set_fault_once(Fault::UnreadableError);
    assert_eq!(
        failed_reason(&app, json!({})).await,
        "token_exchange_failed"
    );
    app.ms.set_fault_once(Fault::InteractionRequired);
    assert_eq!(failed_reason(&app, json!({})).await, "consent_required");
    no_accounts(&app).await;
}

#[tokio::test]
async fn two_callbacks_for_one_new_mailbox_at_once_make_one_account() {
    let app = TestApp::spawn().await;
    let mut callbacks = Vec::new();
    for _ in 0..2 {
        let auth = app.authorize(TENANT, json!({})).await;
        callbacks.push(
            app.consent(auth["authorization_url"].as_str().unwrap())
                .await,
        );
    }
    // Both redemptions answered together, so both store at once.
    app.ms
        .set_fault(Some(Fault::Slow(std::time::Duration::from_millis(300))));
    let (a, b) = tokio::join!(app.callback(&callbacks[0]), app.callback(&callbacks[1]));
    let (a, b) = (query(&a), query(&b));
    assert_eq!(
        (a["oauth"].as_str(), b["oauth"].as_str()),
        ("connected", "connected")
    );
    assert_eq!(a["account_id"], b["account_id"]);
    assert_eq!(app.account_count(TENANT).await, 1);
    let (stored,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE account_id = $1 AND outcome = 'connected'",
    )
    .bind(&a["account_id"])
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, 2, "both connections were stored, on one account");
}
