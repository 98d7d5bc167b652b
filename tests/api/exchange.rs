//! Every kind of Microsoft mailbox against the fake Exchange Online (real
//! TLS, tokens checked against the fake identity platform, a permission
//! table): verify logs in exactly as a worker would with what the token
//! route returns, and so do clients nobody here wrote (Python's imaplib and
//! smtplib).

use mailconnect_sandbox::{FakeExchange, WORK_TENANT_ID};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::admin_consent::{grant, spawn_with};
use crate::helpers::*;

const DELEGATE: &str = "ops@contoso.com";
const SHARED: &str = "support@contoso.com";
const APP: &str = "archive@contoso.com";

async fn spawn() -> TestApp {
    spawn_with(Options {
        exchange: true,
        ..Options::default()
    })
    .await
}

pub fn exchange(app: &TestApp) -> &FakeExchange {
    app.exchange
        .as_deref()
        .expect("started with exchange: true")
}

async fn add(app: &TestApp, body: Value) -> String {
    let r = app.post_json("/api/accounts", &app.admin(), body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub async fn verify(app: &TestApp, id: &str) -> Value {
    let r = app
        .post_json(
            &format!("/api/accounts/{id}/verify"),
            &app.admin(),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The three kinds, set up on both sides: the delegate connected, the shared
/// mailbox through it, the app mailbox after an admin consent.
async fn three_kinds(app: &TestApp) -> (String, String, String) {
    let ex = exchange(app);
    ex.add_mailbox(SHARED);
    ex.add_mailbox(APP);
    ex.grant_app_access(APP, WORK_TENANT_ID);
    let delegate = app.connect(TENANT, DELEGATE).await;
    let shared = add(
        app,
        json!({"kind": "shared", "email": SHARED, "via_account_id": delegate}),
    )
    .await;
    grant(app, TENANT).await;
    let app_id = add(app, json!({"kind": "app", "email": APP})).await;
    (delegate, shared, app_id)
}

fn logins_of(app: &TestApp, protocol: &str) -> Vec<(String, String)> {
    exchange(app)
        .logins()
        .into_iter()
        .filter(|l| l.protocol == protocol)
        .map(|l| (l.username.to_ascii_lowercase(), l.outcome.to_owned()))
        .collect()
}

#[tokio::test]
async fn verify_logs_in_to_exchange_as_a_worker_would_for_every_kind() {
    let app = spawn().await;
    let (delegate, shared, app_id) = three_kinds(&app).await;
    exchange(&app).grant_full_access(SHARED, DELEGATE);
    for id in [&delegate, &shared, &app_id] {
        let v = verify(&app, id).await;
        for protocol in ["imap", "smtp"] {
            assert_eq!(v[protocol]["ok"], true, "{id} {protocol}: {v:#}");
            assert_eq!(v[protocol]["mechanism"], "XOAUTH2");
        }
        assert!(
            v["imap"]["reply"].as_str().unwrap().starts_with("a4 OK"),
            "{v:#}"
        );
        let shown = v["imap"]["transcript"].to_string();
        assert!(
            shown.contains("EXAMINE INBOX") && shown.contains("[READ-ONLY]"),
            "{shown}"
        );
    }
    // IMAP as each mailbox; SMTP AUTH as the delegate for the shared one.
    let ok = |who: &str| (who.to_owned(), "ok".to_owned());
    assert_eq!(logins_of(&app, "imap"), [ok(DELEGATE), ok(SHARED), ok(APP)]);
    assert_eq!(
        logins_of(&app, "smtp"),
        [ok(DELEGATE), ok(DELEGATE), ok(APP)]
    );
}

#[tokio::test]
async fn a_shared_mailbox_without_full_access_fails_verify_at_inbox_not_at_the_login() {
    let app = spawn().await;
    let (_, shared, _) = three_kinds(&app).await;
    // No Full Access granted: Exchange accepts the login and refuses INBOX.
    let v = verify(&app, &shared).await;
    assert_eq!(v["imap"]["ok"], false, "{v:#}");
    assert_eq!(
        v["imap"]["reply"],
        "a5 BAD User is authenticated but not connected."
    );
    assert_eq!(
        logins_of(&app, "imap"),
        [(SHARED.to_owned(), "not_connected".to_owned())]
    );
    // SMTP AUTH is the delegate's own: it works.
    assert_eq!(v["smtp"]["ok"], true, "{v:#}");
}

#[tokio::test]
async fn verify_trusts_a_self_signed_ca_certificate_listed_in_the_extra_ca_file() {
    // The shape `openssl req -x509` gives: self-signed and marked as a CA,
    // which path validation refuses as a server's certificate.
    let app = spawn_with(Options {
        exchange: true,
        exchange_cert: ServerCert::SelfSignedCa,
        ..Options::default()
    })
    .await;
    let delegate = app.connect(TENANT, DELEGATE).await;
    let v = verify(&app, &delegate).await;
    for protocol in ["imap", "smtp"] {
        assert_eq!(v[protocol]["ok"], true, "{protocol}: {v:#}");
    }
    let ok = (DELEGATE.to_owned(), "ok".to_owned());
    assert_eq!(logins_of(&app, "imap"), [ok]);
}

/// Runs Python's own imaplib and smtplib with the token route's answer.
async fn stock_clients(app: &TestApp, id: &str) -> Value {
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let grant = r.text().await.unwrap();
    let ca = app.dir.path().join("exchange-ca.pem");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/stock_clients.py"
    );
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(ca)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(grant.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn pythons_imaplib_and_smtplib_log_in_with_only_what_the_token_route_returned() {
    let app = spawn().await;
    let (delegate, shared, app_id) = three_kinds(&app).await;
    let ex = exchange(&app);
    ex.grant_full_access(SHARED, DELEGATE);
    ex.grant_send_as(SHARED, DELEGATE);
    for id in [&delegate, &shared, &app_id] {
        let r = stock_clients(&app, id).await;
        assert_eq!(
            r,
            json!({"imap_login": "OK", "imap_examine": "OK", "smtp_auth": 235, "smtp_mail_from": 250}),
            "{id}"
        );
    }
    // Without Send As, Exchange refuses the shared address at MAIL FROM.
    let app2 = spawn().await;
    let (_, shared, _) = three_kinds(&app2).await;
    exchange(&app2).grant_full_access(SHARED, DELEGATE);
    let r = stock_clients(&app2, &shared).await;
    assert_eq!(r["smtp_auth"], 235, "{r}");
    assert_eq!(r["smtp_mail_from"], 550, "{r}");
}
