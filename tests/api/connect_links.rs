//! Connect links: an admin makes a link, the mailbox's owner opens it with
//! no login and connects through the same flow, ending on the link's page.

use mailconnect::http::auth::{mint, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const LINK_ADMIN: &str = "admin-who-sent-the-link";

fn link_admin(tenant: &str) -> String {
    mint(JWT_SECRET.as_bytes(), LINK_ADMIN, tenant, Role::Admin, 3600)
}

async fn make_link(app: &TestApp, body: Value) -> Value {
    let r = app
        .post_json("/api/connect-links", &link_admin(TENANT), body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn list(app: &TestApp, tenant: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url("/api/connect-links"))
        .bearer_auth(app.jwt(tenant, Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["links"].as_array().unwrap().clone()
}

async fn revoke(app: &TestApp, tenant: &str, id: &str) -> StatusCode {
    app.http
        .delete(app.url(&format!("/api/connect-links/{id}")))
        .bearer_auth(app.jwt(tenant, Role::Admin))
        .send()
        .await
        .unwrap()
        .status()
}

/// Checks the headers every owner's page carries; returns status and text.
async fn page(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let h = r.headers().clone();
    assert_eq!(h["cache-control"], "no-store", "{status}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{status}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{status}");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "{csp}");
    let text = r.text().await.unwrap();
    assert!(text.contains("<html lang=\"en\">"), "{text}");
    assert!(!text.contains("<script"), "{text}");
    (status, text)
}

async fn open(app: &TestApp, url: &str) -> (StatusCode, String) {
    page(app.http.get(url).send().await.unwrap()).await
}

/// Presses the provider's button: the page's form, then the provider.
/// Returns the callback URL the provider sends the browser to.
async fn start(app: &TestApp, url: &str, provider: &str) -> String {
    let r = app
        .http
        .post(format!("{url}/start"))
        .form(&[("provider", provider)])
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let (status, _) = page(r).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    app.consent(&location).await
}

/// The callback lands on the link's page.
async fn finish(app: &TestApp, callback: &str) -> (StatusCode, String) {
    open(app, callback).await
}

fn token_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn an_admin_makes_lists_and_revokes_links_of_their_own_tenant_only() {
    let app = TestApp::spawn().await;
    let made = make_link(
        &app,
        json!({"provider": "microsoft", "email": "ops@contoso.com", "expires_in": 3600}),
    )
    .await;
    let id = made["id"].as_str().unwrap();
    let url = made["url"].as_str().unwrap();
    assert!(url.starts_with(&app.url("/connect/")), "{url}");
    assert_eq!(token_of(url).len(), 43, "256 bits, base64url");
    assert!(made["expires_at"].is_string());

    let links = list(&app, TENANT).await;
    assert_eq!(links.len(), 1);
    let l = &links[0];
    assert_eq!(l["id"], id);
    assert_eq!(l["state"], "open");
    assert_eq!(l["provider"], "microsoft");
    assert_eq!(l["email"], "ops@contoso.com");
    assert_eq!(l["created_by"], LINK_ADMIN);
    assert!(!l.to_string().contains(&token_of(url)));

    // Another tenant's admin sees nothing and revokes nothing.
    assert!(list(&app, OTHER_TENANT).await.is_empty());
    assert_eq!(revoke(&app, OTHER_TENANT, id).await, StatusCode::NOT_FOUND);
    assert_eq!(
        revoke(&app, TENANT, "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(open(&app, url).await.0, StatusCode::OK);

    assert_eq!(revoke(&app, TENANT, id).await, StatusCode::NO_CONTENT);
    assert_eq!(revoke(&app, TENANT, id).await, StatusCode::NO_CONTENT);
    assert_eq!(list(&app, TENANT).await[0]["state"], "revoked");
    let (status, text) = open(&app, url).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(text.contains("revoked"), "{text}");
}

#[tokio::test]
async fn bad_bodies_are_refused() {
    let app = TestApp::spawn().await;
    for (body, status, code) in [
        (json!({"expires_in": 0}), 400, "invalid_request"),
        (
            json!({"expires_in": 30 * 86_400 + 1}),
            400,
            "invalid_request",
        ),
        (json!({"provider": "yahoo"}), 400, "invalid_request"),
        (json!({"provider": "oidc"}), 409, "provider_not_configured"),
        (json!({"email": "not an address"}), 400, "invalid_request"),
        (json!({"expires_in": 1.5}), 400, "invalid_request"),
        (json!({"expires_in": "3600"}), 400, "invalid_request"),
        (json!({"expires_in": 1e20}), 400, "invalid_request"),
    ] {
        let r = app
            .post_json("/api/connect-links", &app.admin(), body.clone())
            .await;
        let s = r.status();
        assert_json_error(s, &r.json().await.unwrap(), status, code);
    }
    let r = app
        .post_json("/api/connect-links", &app.service(), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // JSON Schema's integer: a whole number written with a fraction.
    let r = app
        .post_json(
            "/api/connect-links",
            &app.admin(),
            json!({"expires_in": 3600.0}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_owner_connects_through_the_link_once_with_the_admin_as_actor() {
    let app = TestApp::spawn().await;
    let mark = log_mark();
    let made = make_link(&app, json!({})).await;
    let url = made["url"].as_str().unwrap();
    let token = token_of(url);

    let (status, text) = open(&app, url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(TENANT), "{text}");
    assert!(text.contains("read your mail and send mail"), "{text}");
    assert!(text.contains("Connect with Microsoft"), "{text}");
    assert!(text.contains("Connect with Google"), "{text}");

    app.ms.set_user_for_next_login("ops@contoso.com");
    let callback = start(&app, url, "microsoft").await;
    let (status, text) = finish(&app, &callback).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains("Connected: <strong>ops@contoso.com</strong>. You can close this window."),
        "{text}"
    );

    let links = list(&app, TENANT).await;
    assert_eq!(links[0]["state"], "used");
    let account_id = links[0]["account_id"].as_str().unwrap().to_owned();
    assert_eq!(app.account_count(TENANT).await, 1);
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM audit_events WHERE account_id = $1 AND action = 'connect'",
    )
    .bind(&account_id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(actor, LINK_ADMIN);

    // A second use.
    let (status, text) = open(&app, url).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(text.contains("already used"), "{text}");
    let r = app
        .http
        .post(format!("{url}/start"))
        .form(&[("provider", "microsoft")])
        .send()
        .await
        .unwrap();
    assert_eq!(page(r).await.0, StatusCode::GONE);
    // A used link is not revoked.
    let r = app
        .http
        .delete(app.url(&format!(
            "/api/connect-links/{}",
            made["id"].as_str().unwrap()
        )))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // The token is nowhere: not in the logs, not in the database file.
    assert!(!captured_logs()[mark..].contains(&token));
    assert!(logged_since(mark, &["/connect/\u{2026}/start"]));
    if on_sqlite() {
        app.db.close().await;
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(data_dir(&app)).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            hay.contains(made["id"].as_str().unwrap()),
            "the link is stored"
        );
        assert!(!hay.contains(&token), "the token is not");
    }
}

#[tokio::test]
async fn a_link_revoked_during_the_flow_connects_nothing() {
    let app = TestApp::spawn().await;
    let made = make_link(&app, json!({"provider": "microsoft"})).await;
    let url = made["url"].as_str().unwrap();
    let (_, text) = open(&app, url).await;
    assert!(!text.contains("Connect with Google"), "{text}");
    app.ms.set_user_for_next_login("ops@contoso.com");
    let callback = start(&app, url, "microsoft").await;
    assert_eq!(
        revoke(&app, TENANT, made["id"].as_str().unwrap()).await,
        StatusCode::NO_CONTENT
    );
    let (status, text) = finish(&app, &callback).await;
    assert_eq!(status, StatusCode::GONE, "{text}");
    assert!(text.contains("revoked"), "{text}");
    assert_eq!(app.account_count(TENANT).await, 0);
    // Google is not offered.
    let r = app
        .http
        .post(format!("{url}/start"))
        .form(&[("provider", "google")])
        .send()
        .await
        .unwrap();
    assert_eq!(page(r).await.0, StatusCode::GONE);
}

#[tokio::test]
async fn another_mailbox_than_the_links_fails_and_leaves_the_link_open() {
    let app = TestApp::spawn().await;
    let made = make_link(&app, json!({"email": "boss@contoso.com"})).await;
    let url = made["url"].as_str().unwrap();
    let (_, text) = open(&app, url).await;
    assert!(text.contains("boss@contoso.com"), "{text}");
    app.ms.set_user_for_next_login("ops@contoso.com");
    let callback = start(&app, url, "microsoft").await;
    let (status, text) = finish(&app, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("account_mismatch"), "{text}");
    assert!(text.contains("another mailbox"), "{text}");
    let retry = format!("<a href=\"/connect/{}\">Try again</a>", token_of(url));
    assert!(text.contains(&retry), "{text}");
    assert_eq!(app.account_count(TENANT).await, 0);
    assert_eq!(list(&app, TENANT).await[0]["state"], "open");
    assert_eq!(open(&app, url).await.0, StatusCode::OK);
}

#[tokio::test]
async fn expired_and_unknown_links_answer_410_and_404_pages() {
    let app = TestApp::spawn().await;
    let made = make_link(&app, json!({"expires_in": 1})).await;
    let url = made["url"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (status, text) = open(&app, url).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(text.contains("expired"), "{text}");
    assert_eq!(list(&app, TENANT).await[0]["state"], "expired");

    let (status, _) = open(&app, &app.url("/connect/no-such-token")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn connect_pages_are_rate_limited_per_address() {
    let app = TestApp::spawn().await;
    let target = app.url("/connect/no-such-token");
    let mut statuses = Vec::new();
    // 62 requests within a second or two straddle at most one minute
    // boundary, so one minute sees at least 31 of them.
    for _ in 0..62 {
        statuses.push(open(&app, &target).await.0);
    }
    assert!(
        statuses[..30].iter().all(|s| *s == StatusCode::NOT_FOUND),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn of_two_flows_started_from_one_link_only_the_first_connects() {
    let app = TestApp::spawn_with(Options {
        users: vec![
            mailconnect_sandbox::FakeUser::work("ops@contoso.com"),
            mailconnect_sandbox::FakeUser::work("sales@contoso.com"),
        ],
        ..Options::default()
    })
    .await;
    let made = make_link(&app, json!({"provider": "microsoft"})).await;
    let url = made["url"].as_str().unwrap();
    app.ms.set_user_for_next_login("ops@contoso.com");
    let first = start(&app, url, "microsoft").await;
    app.ms.set_user_for_next_login("sales@contoso.com");
    let second = start(&app, url, "microsoft").await;

    let (status, text) = finish(&app, &first).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, text) = finish(&app, &second).await;
    assert_eq!(status, StatusCode::GONE, "{text}");
    assert!(text.contains("already used"), "{text}");
    assert_eq!(app.account_count(TENANT).await, 1);
}

#[tokio::test]
async fn a_link_connection_sends_the_usual_webhook_in_the_links_tenant() {
    use crate::receiver::{Mode, Receiver};
    let receiver = Receiver::start(Mode::Accept).await;
    let app = TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        ..Options::default()
    })
    .await;
    let made = make_link(&app, json!({"provider": "microsoft"})).await;
    let url = made["url"].as_str().unwrap();
    app.ms.set_user_for_next_login("ops@contoso.com");
    let callback = start(&app, url, "microsoft").await;
    assert_eq!(finish(&app, &callback).await.0, StatusCode::OK);

    let account_id = list(&app, TENANT).await[0]["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = receiver
        .wait_for(1, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["type"], "account.connected");
    assert_eq!(e["tenant_id"], TENANT);
    assert_eq!(e["account_id"], account_id.as_str());
    assert_eq!(e["email"], "ops@contoso.com");
    let body = serde_json::to_string(&events).unwrap();
    assert!(
        !body.contains(&token_of(url)),
        "the link's token reached a webhook"
    );
    receiver.assert_clean();
}
