//! Admin consent (DESIGN.md "Admin consent (Microsoft)"): the URL, the
//! callback told apart by its state, the confirmation by an app token from
//! the returned directory, and what is recorded, audited and announced.

use std::time::Duration;

use mailconnect::http::auth::Role;
use mailconnect_sandbox::{FakeUser, WORK_TENANT_ID};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Mode, Receiver};

pub const ADMIN: &str = "admin@contoso.com";
const USER: &str = "ops@contoso.com";

async fn spawn(webhook: Option<&Receiver>) -> TestApp {
    spawn_with(Options {
        webhook: webhook.map(|r| (r.url(), r.secret.clone())),
        ..Options::default()
    })
    .await
}

/// An app whose fake has the directory [`WORK_TENANT_ID`] (contoso.com)
/// with [`ADMIN`] as its admin.
pub async fn spawn_with(opts: Options) -> TestApp {
    let app = TestApp::spawn_with(Options {
        users: vec![FakeUser::work(USER), FakeUser::work(ADMIN)],
        ..opts
    })
    .await;
    app.ms.add_directory(WORK_TENANT_ID, &["contoso.com"]);
    app.ms.set_directory_admin(WORK_TENANT_ID, ADMIN);
    app
}

/// The directory's admin consents for `tenant`; asserts it is recorded.
pub async fn grant(app: &TestApp, tenant: &str) {
    let (s, started) = start(app, tenant, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{started}");
    app.ms.set_user_for_next_login(ADMIN);
    let callback = app
        .consent(started["authorization_url"].as_str().unwrap())
        .await;
    let landed = app.callback(&callback).await;
    assert_eq!(query(&landed)["oauth"], "admin_consented", "{landed}");
}

async fn start(app: &TestApp, tenant: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .post_json(
            "/api/oauth/microsoft/admin-consent",
            &app.jwt(tenant, Role::Admin),
            body,
        )
        .await;
    (r.status(), r.json().await.unwrap())
}

/// The admin consent as the admin's browser goes through it: where it lands.
async fn consent_as(app: &TestApp, who: &str, body: Value) -> String {
    let (s, started) = start(app, TENANT, body).await;
    assert_eq!(s, StatusCode::OK, "{started}");
    app.ms.set_user_for_next_login(who);
    let url = started["authorization_url"].as_str().unwrap();
    let callback = app.consent(url).await;
    app.callback(&callback).await
}

fn admin_consent_of(status: &Value) -> Value {
    status["providers"]["microsoft"]["admin_consent"].clone()
}

#[tokio::test]
async fn an_admin_consent_is_confirmed_by_an_app_token_then_recorded_audited_and_announced() {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = spawn(Some(&receiver)).await;
    assert_eq!(admin_consent_of(&app.status(TENANT).await), Value::Null);

    let (s, started) = start(&app, TENANT, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{started}");
    // `common` is read as `organizations`; the scope is the app's /.default.
    let url = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/organizations/v2.0/adminconsent");
    let q = query(url.as_str());
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["scope"], "https://outlook.office.com/.default");
    assert_eq!(q["redirect_uri"], app.url("/api/oauth/microsoft/callback"));
    assert_eq!(q["state"], started["state"].as_str().unwrap());

    app.ms.set_user_for_next_login(ADMIN);
    let callback = app.consent(url.as_str()).await;
    let cq = query(&callback);
    assert_eq!(cq["admin_consent"], "True", "{callback}");
    assert_eq!(cq["tenant"], WORK_TENANT_ID);
    let before = app
        .ms
        .token_requests_in(WORK_TENANT_ID, "client_credentials");
    let landed = app.callback(&callback).await;
    let lq = query(&landed);
    assert_eq!(lq["oauth"], "admin_consented", "{landed}");
    assert_eq!(lq["provider"], "microsoft");
    assert_eq!(lq["directory"], WORK_TENANT_ID);
    // Believed only once the directory gave the app a token.
    assert_eq!(
        app.ms
            .token_requests_in(WORK_TENANT_ID, "client_credentials")
            - before,
        1
    );

    let consent = admin_consent_of(&app.status(TENANT).await);
    assert_eq!(consent["directory"], WORK_TENANT_ID, "{consent}");
    assert!(consent["granted_at"].as_str().unwrap().ends_with('Z'));
    // Per tenant: another tenant has none.
    assert_eq!(admin_consent_of(&app.status("tenant-b").await), Value::Null);

    let audit: Value = app
        .http
        .get(app.url("/api/audit"))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "admin_consent")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(event["action"], "admin_consent", "{audit}");
    assert_eq!(event["outcome"], "granted");
    assert!(event["detail"].as_str().unwrap().contains(WORK_TENANT_ID));

    let events = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "tenant.admin_consented");
    assert_eq!(events[0]["tenant_id"], TENANT);
    assert_eq!(events[0]["directory"], WORK_TENANT_ID);
    assert_eq!(events[0]["account_id"], Value::Null);
    receiver.assert_clean();

    // The same answer again: the state is spent.
    let again = app.http.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_named_directory_is_where_the_admin_is_sent_and_consumers_have_no_admin() {
    let app = spawn(None).await;
    let (s, started) = start(&app, TENANT, json!({"directory": "Contoso.com"})).await;
    assert_eq!(s, StatusCode::OK, "{started}");
    let url = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/contoso.com/v2.0/adminconsent");

    let (s, body) = start(&app, TENANT, json!({"directory": WORK_TENANT_ID})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = start(&app, TENANT, json!({"directory": "consumers"})).await;
    assert_json_error(s, &body, 409, "admin_consent_unavailable");
    for bad in [json!("not a directory"), json!("a/b.com"), json!(7)] {
        let (s, body) = start(&app, TENANT, json!({ "directory": bad })).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (s, body) = start(&app, TENANT, json!({"return_to": "https://evil.example"})).await;
    assert_json_error(s, &body, 400, "invalid_return_to");
    let r = app
        .post_json(
            "/api/oauth/microsoft/admin-consent",
            &app.service(),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_declined_or_refused_consent_records_nothing() {
    let app = spawn(None).await;
    // The admin cancels.
    app.ms.set_admin_declines(true);
    let landed = consent_as(&app, ADMIN, json!({})).await;
    assert_eq!(query(&landed)["reason"], "access_denied", "{landed}");
    app.ms.set_admin_declines(false);
    // Someone who is not the directory's admin.
    let landed = consent_as(&app, USER, json!({})).await;
    let q = query(&landed);
    assert_eq!(q["oauth"], "error", "{landed}");
    assert!(!app.ms.directory_consented(WORK_TENANT_ID));
    assert_eq!(admin_consent_of(&app.status(TENANT).await), Value::Null);
}

#[tokio::test]
async fn a_callback_claiming_consent_is_believed_only_with_an_app_token_from_that_directory() {
    let app = spawn(None).await;
    let callback = app.url("/api/oauth/microsoft/callback");
    let forge = |state: &str, tenant: &str| {
        format!("{callback}?admin_consent=True&tenant={tenant}&scope=x&state={state}")
    };
    // Nobody consented at Microsoft: the directory refuses the app a token.
    let (_, started) = start(&app, TENANT, json!({})).await;
    let landed = app
        .callback(&forge(started["state"].as_str().unwrap(), WORK_TENANT_ID))
        .await;
    assert_eq!(query(&landed)["reason"], "consent_required", "{landed}");
    assert_eq!(
        app.ms
            .token_requests_in(WORK_TENANT_ID, "client_credentials"),
        1
    );

    // A consent for another directory than the one named.
    let other = "0b0b0b0b-1111-2222-3333-444444444444";
    let (_, started) = start(&app, TENANT, json!({ "directory": other })).await;
    let landed = app
        .callback(&forge(started["state"].as_str().unwrap(), WORK_TENANT_ID))
        .await;
    assert_eq!(query(&landed)["reason"], "consent_required", "{landed}");

    // A connect flow's state does not finish an admin consent, nor the
    // other way round: each state is only good for its own kind of flow.
    let auth = app.authorize(TENANT, json!({})).await;
    let landed = app
        .callback(&forge(auth["state"].as_str().unwrap(), WORK_TENANT_ID))
        .await;
    assert_eq!(
        query(&landed)["reason"],
        "token_exchange_failed",
        "{landed}"
    );
    let (_, started) = start(&app, TENANT, json!({})).await;
    let landed = app
        .callback(&format!(
            "{callback}?code=anything&state={}",
            started["state"].as_str().unwrap()
        ))
        .await;
    assert_eq!(query(&landed)["reason"], "consent_required", "{landed}");
    assert_eq!(app.account_count(TENANT).await, 0);
    // Only the first forged callback ever asked for a token.
    assert_eq!(
        app.ms
            .token_requests_in(WORK_TENANT_ID, "client_credentials"),
        1
    );
    assert_eq!(admin_consent_of(&app.status(TENANT).await), Value::Null);
}

#[tokio::test]
async fn admin_consent_needs_microsoft_configured() {
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("MICROSOFT_OAUTH_CLIENT_ID", String::new()),
            ("MICROSOFT_OAUTH_CLIENT_SECRET", String::new()),
        ],
        google: true,
        ..Options::default()
    })
    .await;
    let (s, body) = start(&app, TENANT, json!({})).await;
    assert_json_error(s, &body, 409, "provider_not_configured");
    assert!(app.status(TENANT).await["providers"]["microsoft"]
        .get("admin_consent")
        .is_none());
}

#[tokio::test]
async fn each_account_and_each_tenant_has_its_own_webhook_order() {
    // A receiver that fails keeps every event in the outbox, with the key
    // that orders it: an account's events only wait for that account's,
    // a tenant's own (admin consent) only for that tenant's.
    let receiver = Receiver::start(Mode::Fail500).await;
    let app = spawn(Some(&receiver)).await;
    let id = app.connect(TENANT, USER).await;
    grant(&app, TENANT).await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, ordering_key FROM webhook_outbox ORDER BY event_type")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("account.connected".to_owned(), id),
            (
                "tenant.admin_consented".to_owned(),
                format!("tenant:{TENANT}")
            ),
        ]
    );
}

#[tokio::test]
async fn an_admin_consent_state_is_refused_at_another_providers_callback() {
    let app = spawn(None).await;
    let (_, started) = start(&app, TENANT, json!({})).await;
    let state = started["state"].as_str().unwrap();
    let r = app
        .http
        .get(app.url(&format!(
            "/api/oauth/google/callback?admin_consent=True&tenant={WORK_TENANT_ID}&state={state}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Not spent there: it still works where it belongs (once).
    let callback = format!(
        "{}?admin_consent=True&tenant={WORK_TENANT_ID}&state={state}",
        app.url("/api/oauth/microsoft/callback")
    );
    app.ms.set_user_for_next_login(ADMIN);
    let landed = app.callback(&callback).await;
    assert_eq!(query(&landed)["oauth"], "error", "{landed}");
    let again = app.http.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
}
