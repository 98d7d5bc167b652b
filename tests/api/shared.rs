//! Shared mailboxes (DESIGN.md "Account kinds"): added through
//! `POST /api/accounts`, opened with their delegate's token, following the
//! delegate's `needs_reauth`, disconnect and reconnect — one event each,
//! after the delegate's own.

use std::time::Duration;

use mailconnect::http::auth::Role;
use mailconnect_sandbox::FakeUser;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Mode, Receiver};

const DELEGATE: &str = "adele@contoso.com";
const SHARED: &str = "support@contoso.com";

async fn spawn(webhook: Option<&Receiver>) -> TestApp {
    TestApp::spawn_with(Options {
        users: vec![FakeUser::work("ops@contoso.com"), FakeUser::work(DELEGATE)],
        webhook: webhook.map(|r| (r.url(), r.secret.clone())),
        ..Options::default()
    })
    .await
}

async fn add(app: &TestApp, tenant: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .post_json("/api/accounts", &app.jwt(tenant, Role::Admin), body)
        .await;
    (r.status(), r.json().await.unwrap())
}

async fn add_shared(app: &TestApp, delegate: &str) -> String {
    let (s, body) = add(
        app,
        TENANT,
        json!({"kind": "shared", "email": SHARED, "via_account_id": delegate}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn token_body(app: &TestApp, id: &str) -> Value {
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn sasl(user: &str, token: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

async fn disconnect(app: &TestApp, id: &str) {
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_shared_mailbox_opens_with_its_delegates_token_and_logs_in_as_the_contract_says() {
    let app = spawn(None).await;
    let delegate = app.connect(TENANT, DELEGATE).await;
    let (s, added) = add(
        &app,
        TENANT,
        json!({"kind": "shared", "email": SHARED, "via_account_id": delegate}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{added}");
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["kind"], "shared");
    assert_eq!(added["via_account_id"], delegate.as_str());
    assert_eq!(added["provider"], "microsoft");
    assert_eq!(added["status"], "connected");
    assert_eq!(added["email"], SHARED);
    assert_eq!(app.account(TENANT, &id).await["kind"], "shared");
    // Nothing secret of its own is stored.
    let row = app.row(&id).await;
    assert_eq!(row["refresh_token_enc"], None);
    assert_eq!(row["access_token_enc"], None);

    // IMAP as the shared mailbox, SMTP AUTH as the delegate sending as it.
    let own = token_body(&app, &delegate).await;
    let t = token_body(&app, &id).await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(token, own["access_token"].as_str().unwrap());
    assert_eq!(t["email"], SHARED);
    assert_eq!(t["xoauth2"], sasl(SHARED, token));
    assert_eq!(t["imap"]["username"], SHARED);
    assert_eq!(t["imap"]["xoauth2"], sasl(SHARED, token));
    assert_eq!(t["smtp"]["username"], DELEGATE);
    assert_eq!(t["smtp"]["xoauth2"], sasl(DELEGATE, token));
    assert_eq!(t["smtp"]["mail_from"], SHARED);
    assert_eq!(t["imap"]["host"], "outlook.office365.com");

    // One refresh of the delegate serves both.
    app.expire_stored_token(&delegate).await;
    let grants = app.ms.refresh_grants();
    let renewed = token_body(&app, &id).await;
    assert_ne!(renewed["access_token"], token);
    assert_eq!(app.ms.refresh_grants(), grants + 1);
    assert_eq!(
        token_body(&app, &delegate).await["access_token"],
        renewed["access_token"]
    );
    assert_eq!(app.ms.refresh_grants(), grants + 1);
}

#[tokio::test]
async fn adding_refuses_what_the_contract_refuses() {
    let app = spawn(None).await;
    let delegate = app.connect(TENANT, DELEGATE).await;
    let gmail = app.connect_google(TENANT, "ops@gmail.com").await;
    let shared =
        |email: &str, via: &str| json!({"kind": "shared", "email": email, "via_account_id": via});

    for (body, code) in [
        (
            json!({"kind": "delegated", "email": SHARED}),
            "invalid_request",
        ),
        (
            json!({"kind": "public", "email": SHARED, "via_account_id": delegate}),
            "invalid_request",
        ),
        (shared("not an address", &delegate), "invalid_request"),
        (
            json!({"kind": "shared", "email": SHARED}),
            "invalid_request",
        ),
        (
            json!({"kind": "shared", "email": SHARED, "via_account_id": delegate, "extra": 1}),
            "invalid_request",
        ),
    ] {
        let (s, b) = add(&app, TENANT, body.clone()).await;
        assert_json_error(s, &b, 400, code);
        let _ = body;
    }
    // A delegate the tenant does not have: unknown, malformed, another tenant's.
    for via in ["0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b", "nope"] {
        let (s, b) = add(&app, TENANT, shared(SHARED, via)).await;
        assert_json_error(s, &b, 404, "not_found");
    }
    let (s, b) = add(&app, OTHER_TENANT, shared(SHARED, &delegate)).await;
    assert_json_error(s, &b, 404, "not_found");
    // A delegate that cannot open mailboxes: Google, or itself shared.
    let (s, b) = add(&app, TENANT, shared(SHARED, &gmail)).await;
    assert_json_error(s, &b, 409, "delegate_not_usable");
    let first = add_shared(&app, &delegate).await;
    let (s, b) = add(&app, TENANT, shared("sales@contoso.com", &first)).await;
    assert_json_error(s, &b, 409, "delegate_not_usable");
    // An address the tenant has: the same shared one, or the delegate's own.
    for email in [SHARED, DELEGATE] {
        let (s, b) = add(&app, TENANT, shared(email, &delegate)).await;
        assert_json_error(s, &b, 409, "account_exists");
        assert!(b["account_id"].is_string(), "{b}");
    }
    let (s, b) = add(&app, TENANT, shared(SHARED, &delegate)).await;
    assert_eq!(
        (s, b["account_id"].as_str()),
        (StatusCode::CONFLICT, Some(first.as_str()))
    );
    // App mailboxes need an admin-consented directory first.
    let (s, b) = add(
        &app,
        TENANT,
        json!({"kind": "app", "email": "robot@contoso.com"}),
    )
    .await;
    assert_json_error(s, &b, 409, "admin_consent_required");
    // A delegate in needs_reauth cannot take new mailboxes.
    app.expire_stored_token(&delegate).await;
    app.ms.revoke_user(DELEGATE);
    assert_eq!(app.token(TENANT, &delegate).await.status(), 409);
    let (s, b) = add(&app, TENANT, shared("sales@contoso.com", &delegate)).await;
    assert_json_error(s, &b, 409, "delegate_not_usable");
    // Only admins add mailboxes.
    let r = app
        .post_json(
            "/api/accounts",
            &app.service(),
            shared("x@contoso.com", &delegate),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A disconnected address is reused, same id.
    disconnect(&app, &first).await;
    let healthy = app.connect(TENANT, "ops@contoso.com").await;
    let (s, b) = add(&app, TENANT, shared(SHARED, &healthy)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["id"], first.as_str());
    assert_eq!(b["via_account_id"], healthy.as_str());
    assert_eq!(b["status"], "connected");
}

#[tokio::test]
async fn a_shared_mailbox_follows_its_delegate_with_one_event_each_in_order() {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = spawn(Some(&receiver)).await;
    let delegate = app.connect(TENANT, DELEGATE).await;
    let id = add_shared(&app, &delegate).await;
    let wait = Duration::from_secs(30);
    receiver.wait_for(2, wait).await;

    // The delegate's grant dies: both need re-authorisation.
    app.expire_stored_token(&delegate).await;
    app.ms.revoke_user(DELEGATE);
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "reauth_required");
    let shared = app.account(TENANT, &id).await;
    assert_eq!(shared["status"], "needs_reauth", "{shared}");
    assert_eq!(shared["last_error"], "invalid_grant");
    // It is explained by its delegate's cause.
    let cause = app.account(TENANT, &delegate).await["diagnosis"]["cause"].clone();
    assert!(cause.is_string(), "{cause}");
    assert_eq!(shared["diagnosis"]["cause"], cause, "{shared}");
    let events = receiver.wait_for(4, wait).await;
    let tail: Vec<(&str, &str)> = events[2..]
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["account_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            ("account.needs_reauth", delegate.as_str()),
            ("account.needs_reauth", id.as_str())
        ]
    );
    assert_eq!(events[3]["email"], SHARED);
    assert_eq!(events[3]["error"], "invalid_grant");

    // The admin reconnects the delegate: both work again.
    app.ms.set_user_for_next_login(DELEGATE);
    let landing = app
        .connect_flow(TENANT, json!({"account_id": delegate}))
        .await;
    assert_eq!(query(&landing)["oauth"], "connected", "{landing}");
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
    assert_eq!(token_body(&app, &id).await["imap"]["username"], SHARED);
    let events = receiver.wait_for(6, wait).await;
    assert_eq!(events[4]["type"], "account.recovered");
    assert_eq!(events[4]["account_id"], delegate.as_str());
    assert_eq!(events[5]["type"], "account.recovered");
    assert_eq!(events[5]["account_id"], id.as_str());

    // The delegate is disconnected: so is the shared mailbox...
    disconnect(&app, &delegate).await;
    assert_eq!(app.account(TENANT, &id).await["status"], "disconnected");
    let r = app.token(TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 409, "account_disconnected");
    let events = receiver.wait_for(8, wait).await;
    assert_eq!(
        (events[6]["type"].as_str(), events[7]["type"].as_str()),
        (Some("account.disconnected"), Some("account.disconnected"))
    );
    assert_eq!(events[7]["account_id"], id.as_str());
    // ...and connecting the delegate again brings it back.
    app.ms.set_user_for_next_login(DELEGATE);
    app.connect_flow(TENANT, json!({})).await;
    assert_eq!(app.account(TENANT, &id).await["status"], "connected");
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);

    // A shared mailbox the admin disconnected stays disconnected when its
    // delegate comes back.
    disconnect(&app, &id).await;
    disconnect(&app, &delegate).await;
    app.ms.set_user_for_next_login(DELEGATE);
    app.connect_flow(TENANT, json!({})).await;
    assert_eq!(app.account(TENANT, &id).await["status"], "disconnected");

    // The audit trail says why, for the shared mailbox.
    let r = app
        .http
        .get(app.url(&format!("/api/audit?account_id={id}")))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    let audit: Value = r.json().await.unwrap();
    let details: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(details.iter().any(|d| d.contains(&delegate)), "{audit}");
    receiver.assert_clean();
}
