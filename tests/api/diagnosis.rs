//! Diagnosis (DESIGN.md "Diagnosis"): every failure met from its real
//! source — the strict fake's Microsoft-shaped error answers, the fake
//! Exchange Online's refusals, a closed port, an untrusted certificate —
//! carries its cause and fix to the status route, `verify`, the webhooks,
//! the callback's redirect and the audit trail; the next success clears it.

use mailconnect::http::auth::Role;
use mailconnect_sandbox::Fault;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::exchange::{exchange, verify};
use crate::helpers::*;
use crate::receiver::{Mode, Receiver};

const UPN: &str = "ops@contoso.com";
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn with_receiver() -> (Receiver, TestApp) {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        ..Options::default()
    })
    .await;
    (receiver, app)
}

async fn audit_details(app: &TestApp, id: &str) -> Vec<String> {
    let r = app
        .http
        .get(app.url(&format!("/api/audit?account_id={id}&limit=50")))
        .bearer_auth(app.jwt(TENANT, Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["detail"].as_str().map(str::to_owned))
        .collect()
}

async fn event_of(receiver: &Receiver, kind: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(e) = receiver.events().into_iter().find(|e| e["type"] == kind) {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "no {kind} event");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_refusal_for_mfa_is_explained_everywhere_and_cleared_by_the_reconnect() {
    let (receiver, app) = with_receiver().await;
    let id = app.connect(TENANT, UPN).await;
    assert_eq!(app.account(TENANT, &id).await["diagnosis"], Value::Null);

    // Microsoft's answer: interaction_required, AADSTS50076.
    app.ms.set_fault_once(Fault::InteractionRequired);
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::CONFLICT);

    let account = app.account(TENANT, &id).await;
    assert_eq!(account["status"], "needs_reauth");
    assert_eq!(account["last_error"], "interaction_required");
    let diagnosis = &account["diagnosis"];
    assert_eq!(diagnosis["cause"], "mfa_required", "{account}");
    assert!(diagnosis["fix"]
        .as_str()
        .unwrap()
        .contains("multi-factor authentication"));
    assert!(diagnosis["at"].as_str().unwrap().ends_with('Z'));

    let event = event_of(&receiver, "account.needs_reauth").await;
    assert_eq!(event["cause"], "mfa_required", "{event}");
    assert_eq!(event["error"], "interaction_required");
    assert!(
        audit_details(&app, &id)
            .await
            .iter()
            .any(|d| d.contains("mfa_required")),
        "the audit trail says why"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mailconnect_refreshes_total")
                && l.contains("cause=\"mfa_required\"")),
        "the failure metric is labelled with its cause"
    );

    // The reconnect heals it: no diagnosis any more.
    let landing = app.connect_flow(TENANT, json!({"account_id": id})).await;
    assert_eq!(query(&landing)["oauth"], "connected", "{landing}");
    assert_eq!(app.account(TENANT, &id).await["diagnosis"], Value::Null);
}

#[tokio::test]
async fn an_expired_client_secret_is_explained_at_the_provider_and_in_its_webhook() {
    let (receiver, app) = with_receiver().await;
    let id = app.connect(TENANT, UPN).await;
    // Microsoft's answer: invalid_client, AADSTS7000222.
    app.ms.set_fault(Some(Fault::InvalidClient));
    app.expire_stored_token(&id).await;
    assert_eq!(
        app.token(TENANT, &id).await.status(),
        StatusCode::BAD_GATEWAY
    );

    let status = app.status(TENANT).await;
    let microsoft = &status["providers"]["microsoft"];
    assert_eq!(
        microsoft["diagnosis"]["cause"], "client_secret_expired",
        "{microsoft}"
    );
    assert!(microsoft["diagnosis"]["fix"]
        .as_str()
        .unwrap()
        .contains("MICROSOFT_OAUTH_CLIENT_SECRET"));
    // No account changed: only the provider is troubled.
    assert_eq!(app.account(TENANT, &id).await["diagnosis"], Value::Null);
    let event = event_of(&receiver, "provider.misconfigured").await;
    assert_eq!(event["cause"], "client_secret_expired", "{event}");

    app.ms.set_fault(None);
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    let status = app.status(TENANT).await;
    assert_eq!(status["providers"]["microsoft"]["diagnosis"], Value::Null);
}

#[tokio::test]
async fn the_callbacks_error_redirect_names_the_cause() {
    let app = TestApp::spawn().await;
    let landed = |landing: String| {
        let q = query(&landing);
        (q["reason"].clone(), q["cause"].clone())
    };
    // Errors Entra sends back to the callback, with their AADSTS text.
    for (error, description, reason, cause) in [
        (
            "consent_required",
            "AADSTS90094: Admin consent is required for the permissions requested by this application.",
            "consent_required",
            "admin_consent_required",
        ),
        (
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
            "access_denied",
            "consent_missing",
        ),
        (
            "access_denied",
            "AADSTS53003: Access has been blocked by Conditional Access policies.",
            "access_denied",
            "conditional_access_blocked",
        ),
        ("server_error", "", "provider_unavailable", "provider_unavailable"),
        // Nothing of the list: said as such, not guessed.
        ("invalid_request", "", "token_exchange_failed", "unknown"),
    ] {
        app.ms
            .set_authorize_error(Some((error.into(), description.into())));
        let landing = app.connect_flow(TENANT, json!({})).await;
        assert_eq!(
            landed(landing),
            (reason.to_owned(), cause.to_owned()),
            "{description}"
        );
    }
    app.ms.set_authorize_error(None);
    // The code redemption refused, with Microsoft's error bodies.
    for (fault, reason, cause) in [
        (
            Fault::InvalidClient,
            "token_exchange_failed",
            "client_secret_expired",
        ),
        (
            Fault::InteractionRequired,
            "consent_required",
            "mfa_required",
        ),
        (
            Fault::Unavailable,
            "provider_unavailable",
            "provider_unavailable",
        ),
    ] {
        let shown = format!("{fault:?}");
        app.ms.set_fault_once(fault);
        let landing = app.connect_flow(TENANT, json!({})).await;
        assert_eq!(
            landed(landing),
            (reason.to_owned(), cause.to_owned()),
            "{shown}"
        );
    }
    assert_eq!(app.account_count(TENANT).await, 0);
}

// ------------------------------------------------------------ mail servers

const SHARED: &str = "support@contoso.com";

async fn exchange_app(env: Vec<(&'static str, String)>) -> TestApp {
    crate::admin_consent::spawn_with(Options {
        exchange: true,
        env,
        ..Options::default()
    })
    .await
}

fn cause_of(v: &Value, protocol: &str) -> Value {
    assert_eq!(v[protocol]["ok"], false, "{v:#}");
    let fix = v[protocol]["diagnosis"]["fix"].as_str().unwrap_or_default();
    assert!(!fix.is_empty(), "{v:#}");
    v[protocol]["diagnosis"]["cause"].clone()
}

#[tokio::test]
async fn verify_explains_each_refusal_of_exchange() {
    let app = exchange_app(Vec::new()).await;
    let ex = exchange(&app);
    ex.add_mailbox(SHARED);
    let delegate = app.connect(TENANT, UPN).await;
    // Healthy: no diagnosis.
    let v = verify(&app, &delegate).await;
    assert_eq!(v["imap"]["ok"], true, "{v:#}");
    assert_eq!(v["imap"]["diagnosis"], Value::Null);

    // SMTP AUTH turned off for the mailbox: 535 5.7.139.
    ex.set_smtp_auth_disabled(UPN, true);
    let v = verify(&app, &delegate).await;
    assert_eq!(cause_of(&v, "smtp"), "smtp_auth_disabled");
    assert_eq!(v["imap"]["ok"], true);
    ex.set_smtp_auth_disabled(UPN, false);

    // A shared mailbox its delegate has no Full Access to: the login
    // works, INBOX does not open.
    let shared = {
        let r = app
            .post_json(
                "/api/accounts",
                &app.admin(),
                json!({"kind": "shared", "email": SHARED, "via_account_id": delegate}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let v = verify(&app, &shared).await;
    assert_eq!(cause_of(&v, "imap"), "mailbox_access_denied");

    // Tokens Exchange no longer takes (invalidated at the identity
    // platform, not yet expired): both logins are refused.
    app.ms.expire_access_tokens();
    let v = verify(&app, &delegate).await;
    assert_eq!(cause_of(&v, "imap"), "imap_auth_refused");
    assert_eq!(cause_of(&v, "smtp"), "smtp_auth_refused");
}

#[tokio::test]
async fn verify_explains_an_untrusted_certificate_and_a_closed_port() {
    // The fake Exchange's CA is not trusted, and SMTP points at a port
    // nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = exchange_app(vec![
        ("MAILCONNECT_EXTRA_CA_FILE", String::new()),
        ("MICROSOFT_SMTP_HOST", format!("127.0.0.1:{port}")),
    ])
    .await;
    let delegate = app.connect(TENANT, UPN).await;
    let v = verify(&app, &delegate).await;
    assert_eq!(cause_of(&v, "imap"), "mail_server_untrusted");
    assert_eq!(cause_of(&v, "smtp"), "mail_server_unreachable");
}

// ------------------------------------------------- one test per AADSTS code

/// A refresh refused with Microsoft's answer for `code` (the fake's table:
/// the real `error`, `suberror`, status and description).
async fn refresh_refused_with(app: &TestApp, id: &str, code: u32) -> StatusCode {
    app.ms.set_fault_once(Fault::Aadsts(code));
    app.expire_stored_token(id).await;
    app.token(TENANT, id).await.status()
}

/// Every code that means the user (or their admin) must act turns the
/// account `needs_reauth` with its own cause; the reconnect clears it.
#[tokio::test]
async fn each_refusal_of_the_grant_has_its_cause() {
    let (receiver, app) = with_receiver().await;
    let id = app.connect(TENANT, UPN).await;
    let mut expected_events = 0;
    for (code, cause) in [
        (65001, "consent_missing"),
        (90094, "admin_consent_required"),
        (90008, "admin_consent_required"),
        (700082, "refresh_token_inactive"),
        (50173, "password_changed"),
        (50076, "mfa_required"),
        (50079, "mfa_required"),
        (53003, "conditional_access_blocked"),
        (50057, "user_disabled"),
        (50053, "account_locked"),
        (70000, "grant_revoked"),
    ] {
        assert_eq!(
            refresh_refused_with(&app, &id, code).await,
            StatusCode::CONFLICT,
            "AADSTS{code}"
        );
        let account = app.account(TENANT, &id).await;
        assert_eq!(account["status"], "needs_reauth", "AADSTS{code}: {account}");
        assert_eq!(
            account["diagnosis"]["cause"], cause,
            "AADSTS{code}: {account}"
        );
        expected_events += 1;
        let events = receiver.wait_for(1 + 2 * expected_events - 1, WAIT).await;
        let last = events
            .iter()
            .rev()
            .find(|e| e["type"] == "account.needs_reauth")
            .unwrap();
        assert_eq!(last["cause"], cause, "AADSTS{code}");
        // The admin reconnects: healthy again.
        let landing = app.connect_flow(TENANT, json!({"account_id": id})).await;
        assert_eq!(query(&landing)["oauth"], "connected", "{landing}");
        assert_eq!(app.account(TENANT, &id).await["diagnosis"], Value::Null);
    }
}

/// Every code that means our own registration is wrong leaves the account
/// alone and explains the provider.
#[tokio::test]
async fn each_refusal_of_our_client_is_explained_at_the_provider() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, UPN).await;
    for (code, cause) in [
        (7000222, "client_secret_expired"),
        (7000215, "client_credentials_invalid"),
        (700016, "app_not_in_directory"),
    ] {
        assert_eq!(
            refresh_refused_with(&app, &id, code).await,
            StatusCode::BAD_GATEWAY,
            "AADSTS{code}"
        );
        let microsoft = &app.status(TENANT).await["providers"]["microsoft"];
        assert_eq!(
            microsoft["diagnosis"]["cause"], cause,
            "AADSTS{code}: {microsoft}"
        );
        let account = app.account(TENANT, &id).await;
        assert_eq!(account["status"], "connected");
        assert_eq!(account["diagnosis"], Value::Null);
        // The next success clears it.
        assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
        let microsoft = &app.status(TENANT).await["providers"]["microsoft"];
        assert_eq!(microsoft["diagnosis"], Value::Null, "AADSTS{code}");
    }
}

/// A single-tenant app called through `/common` fails at the code
/// redemption, where the callback names it.
#[tokio::test]
async fn a_single_tenant_app_is_named_at_the_callback() {
    let app = TestApp::spawn().await;
    app.ms.set_fault_once(Fault::Aadsts(50194));
    let landing = app.connect_flow(TENANT, json!({})).await;
    let q = query(&landing);
    assert_eq!(q["reason"], "token_exchange_failed", "{landing}");
    assert_eq!(q["cause"], "single_tenant_app", "{landing}");
    // Authorize-side answers of Entra (the fake's redirect with the code).
    for (code, reason, cause) in [
        (65001, "consent_required", "consent_missing"),
        (90094, "access_denied", "admin_consent_required"),
        (50076, "consent_required", "mfa_required"),
    ] {
        app.ms.fail_next_authorize(code);
        let landing = app.connect_flow(TENANT, json!({})).await;
        let q = query(&landing);
        assert_eq!(
            (q["reason"].as_str(), q["cause"].as_str()),
            (reason, cause),
            "AADSTS{code}: {landing}"
        );
    }
    assert_eq!(app.account_count(TENANT).await, 0);
}

/// Passing failures met by the background refresher: a throttled loop
/// (AADSTS50196 inside `invalid_grant`), a 429 and a 503 keep the account
/// connected, are retried, and say why meanwhile.
#[tokio::test]
async fn passing_failures_are_retried_and_explained_meanwhile() {
    let app = TestApp::spawn_with(Options {
        env: vec![("MAILCONNECT_REFRESH_POLL_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, UPN).await;
    for (fault, cause) in [
        (Fault::Aadsts(50196), "throttled"),
        (
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            "throttled",
        ),
        (Fault::Unavailable, "provider_unavailable"),
    ] {
        let shown = format!("{fault:?}");
        app.ms.set_fault(Some(fault));
        sqlx::query("UPDATE accounts SET refresh_due_at = $1 WHERE id = $2")
            .bind(chrono::Utc::now().timestamp() - 1)
            .bind(&id)
            .execute(&app.db)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let account = loop {
            let account = app.account(TENANT, &id).await;
            if account["diagnosis"]["cause"] == cause {
                break account;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{shown}: never explained: {account}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(account["status"], "connected", "{shown}");
        assert!(account["consecutive_failures"].as_i64().unwrap() >= 1);
        app.ms.set_fault(None);
        // A success clears it (the token route's refresh, here).
        app.expire_stored_token(&id).await;
        assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
        assert_eq!(
            app.account(TENANT, &id).await["diagnosis"],
            Value::Null,
            "{shown}"
        );
    }
}
