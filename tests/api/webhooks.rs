//! Webhooks from their real causes, verified by an independent receiver
//! that fails for a while; the audit API that shows what happened.

use std::time::Duration;

use mailconnect::http::auth::Role;
use mailconnect_sandbox::Fault;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Mode, Receiver};

const WAIT: Duration = Duration::from_secs(30);

async fn app_with(receiver: &Receiver) -> TestApp {
    TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        ..Options::default()
    })
    .await
}

async fn disconnect(app: &TestApp, id: &str) {
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.admin(),
            json!({"account_id": id}),
        )
        .await;
    let s = r.status();
    assert_eq!(s, StatusCode::OK, "{}", r.text().await.unwrap());
}

async fn audit(app: &TestApp, tenant: &str, query: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .get(app.url(&format!("/api/audit{query}")))
        .bearer_auth(app.jwt(tenant, Role::Admin))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test]
async fn every_event_type_arrives_signed_and_in_order_from_its_real_cause() {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = app_with(&receiver).await;
    let upn = "ops@contoso.com";

    let id = app.connect(TENANT, upn).await;
    assert_eq!(
        app.connect(TENANT, upn).await,
        id,
        "same mailbox, same account"
    );

    // Consent revoked at Microsoft: the next refresh finds out. Asked
    // again, the account answers from what is stored, without a second
    // refresh (and so without a second event).
    app.ms.revoke_user(upn);
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), 409);
    let asked = app.ms.token_requests();
    assert_eq!(app.token(TENANT, &id).await.status(), 409);
    assert_eq!(app.ms.token_requests(), asked);

    // The admin re-authorises the account.
    let landing = app.connect_flow(TENANT, json!({"account_id": id})).await;
    assert_eq!(query(&landing)["oauth"], "connected");

    // Our client secret expires; two refreshes fail (both ask), one event.
    app.ms.set_fault(Some(Fault::InvalidClient));
    app.expire_stored_token(&id).await;
    let asked = app.ms.token_requests();
    assert_eq!(app.token(TENANT, &id).await.status(), 502);
    assert_eq!(app.token(TENANT, &id).await.status(), 502);
    assert_eq!(app.ms.token_requests(), asked + 2);
    app.ms.set_fault(None);
    assert_eq!(app.token(TENANT, &id).await.status(), 200);

    disconnect(&app, &id).await;

    let events = receiver.wait_for(7, WAIT).await;
    // Nothing is left to send, so nothing more can come.
    settled_stats(&mailconnect_db(&app).await).await;
    assert_eq!(
        receiver.events().len(),
        7,
        "no more than one event per change"
    );
    receiver.assert_clean();
    assert_eq!(
        receiver.types_for(&id),
        [
            "account.connected",
            "account.reconnected",
            "account.needs_reauth",
            "account.recovered",
            "account.disconnected"
        ]
    );
    assert_eq!(
        receiver.types_for("provider:microsoft"),
        ["provider.misconfigured", "provider.recovered"]
    );

    let first = &events[0];
    assert_eq!(first["tenant_id"], TENANT);
    assert_eq!(first["account_id"], id.as_str());
    assert_eq!(first["provider"], "microsoft");
    assert_eq!(first["email"], upn);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let reauth = events
        .iter()
        .find(|e| e["type"] == "account.needs_reauth")
        .unwrap();
    assert_eq!(reauth["error"], "invalid_grant");
    assert!(reauth["reason"].as_str().unwrap().contains("reconnect"));
    let misconfigured = events
        .iter()
        .find(|e| e["type"] == "provider.misconfigured")
        .unwrap();
    assert_eq!(misconfigured["error"], "invalid_client");
    assert!(misconfigured["tenant_id"].is_null() && misconfigured["account_id"].is_null());

    // Never a token in any body.
    let bodies = serde_json::to_string(&events).unwrap();
    for secret in app.ms.issued_secrets() {
        assert!(!bodies.contains(&secret), "a token reached a webhook");
    }

    // The audit API tells the same story, with each delivery once.
    settled_stats(&mailconnect_db(&app).await).await;
    let (s, page) = audit(&app, TENANT, &format!("?account_id={id}&limit=200")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let actions: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "connect",
        "reconnect",
        "refresh_failed",
        "reauth",
        "disconnect",
    ] {
        assert!(
            actions.contains(&wanted),
            "{wanted} missing from {actions:?}"
        );
    }
    let delivered = actions
        .iter()
        .filter(|a| **a == "webhook_delivered")
        .count();
    assert_eq!(delivered, 5, "{actions:?}");
    let newest = &page["events"][0];
    assert!(newest["time"].is_string() && newest["actor"].is_string());

    // The status route shows the account's last event.
    let account = app.account(TENANT, &id).await;
    assert_eq!(account["last_event"]["action"], "disconnect");
    assert_eq!(account["last_event"]["outcome"], "disconnected");
    assert!(account["last_event"]["at"].is_string());
}

#[tokio::test]
async fn a_failing_receiver_still_gets_every_event_in_order() {
    let mut receiver = Receiver::start(Mode::Fail500).await;
    let app = app_with(&receiver).await;
    let upns = ["a@contoso.com", "b@contoso.com", "c@contoso.com"];
    for upn in upns {
        app.ms.add_user(mailconnect_sandbox::FakeUser::work(upn));
    }
    let mut ids = Vec::new();
    for upn in upns {
        ids.push(app.connect(TENANT, upn).await);
    }
    // 500s for a while, then answers that come too late, then nobody home.
    let deadline = std::time::Instant::now() + WAIT;
    while receiver.requests() < 3 {
        assert!(std::time::Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for upn in upns {
        app.connect(TENANT, upn).await;
    }
    receiver.set_mode(Mode::Hang);
    attempt_failed_with(&app, "timeout").await;
    receiver.go_down().await;
    for id in &ids {
        disconnect(&app, id).await;
    }
    attempt_failed_with(&app, "connection_failed").await;
    // Nothing was taken for delivered while the receiver failed.
    let stats = mailconnect::webhooks::stats(&mailconnect_db(&app).await)
        .await
        .unwrap();
    assert_eq!((stats.sent, stats.pending), (0, 9), "{stats:?}");
    let failed_requests = receiver.requests();
    assert!(failed_requests >= 3, "retries happened ({failed_requests})");

    receiver.set_mode(Mode::Accept);
    receiver.come_up().await;
    receiver.wait_for(9, WAIT).await;
    receiver.assert_clean();
    for id in &ids {
        assert_eq!(
            receiver.types_for(id),
            [
                "account.connected",
                "account.reconnected",
                "account.disconnected"
            ]
        );
    }
    // Deliveries are audited once each, not once per attempt.
    settled_stats(&mailconnect_db(&app).await).await;
    let (_, page) = audit(&app, TENANT, "?limit=200").await;
    let audited = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("webhook"))
        .count();
    assert_eq!(audited, 9);
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_backlog_loses_nothing() {
    let mut receiver = Receiver::start(Mode::Accept).await;
    receiver.go_down().await;
    let app = app_with(&receiver).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.connect(TENANT, "ops@contoso.com").await;
    disconnect(&app, &id).await;
    attempt_failed_with(&app, "connection_failed").await;

    let app = app.restart(KEY_OLD).await;
    receiver.come_up().await;
    receiver.wait_for(3, WAIT).await;
    receiver.assert_clean();
    assert_eq!(
        receiver.types_for(&id),
        [
            "account.connected",
            "account.reconnected",
            "account.disconnected"
        ]
    );
    let stats = settled_stats(&mailconnect_db(&app).await).await;
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.sent, 3);
}

/// Waits until a delivery attempt has failed with `error`.
#[tokio::test]
async fn a_receiver_that_hangs_up_without_answering_is_a_failed_request_not_a_failed_connection() {
    // The connection is made, the request read, then closed with no answer:
    // the receiver was reached, so the attempt must not be told apart from
    // an unreachable one only by luck.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    let app = TestApp::spawn_with(Options {
        webhook: Some((url, crate::receiver::new_secret())),
        ..Options::default()
    })
    .await;
    app.connect(TENANT, "ops@contoso.com").await;
    attempt_failed_with(&app, "request_failed").await;
}

async fn attempt_failed_with(app: &TestApp, error: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM webhook_outbox WHERE last_error = $1")
                .bind(error)
                .fetch_one(&app.db)
                .await
                .unwrap();
        if n > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt failed with {error}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_refusal_that_arrives_after_a_disconnect_turns_nothing_back_and_sends_no_event() {
    let receiver = Receiver::start(Mode::Accept).await;
    let app = app_with(&receiver).await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    // The refresh is refused (consent revoked), but only after the admin
    // disconnected the mailbox meanwhile.
    app.ms.revoke_user("ops@contoso.com");
    app.expire_stored_token(&id).await;
    app.ms
        .set_fault(Some(Fault::Slow(Duration::from_millis(800))));
    let waiting = tokio::spawn({
        let (http, url, jwt) = (
            app.http.clone(),
            app.url(&format!("/api/accounts/{id}/token")),
            app.service(),
        );
        async move { http.post(url).bearer_auth(jwt).send().await.unwrap() }
    });
    let deadline = std::time::Instant::now() + WAIT;
    while app.ms.token_requests_in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    disconnect(&app, &id).await;
    assert_eq!(waiting.await.unwrap().status(), 409);
    assert_eq!(
        app.row(&id).await["status"].as_deref(),
        Some("disconnected")
    );
    receiver.wait_for(2, WAIT).await;
    settled_stats(&mailconnect_db(&app).await).await;
    receiver.assert_clean();
    assert_eq!(
        receiver.types_for(&id),
        ["account.connected", "account.disconnected"],
        "one event per change, none for a change that did not happen"
    );
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE account_id = $1 AND action = 'refresh_failed'",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

async fn mailconnect_db(app: &TestApp) -> mailconnect::db::Db {
    mailconnect::db::Db::connect(&app.db_url).await.unwrap()
}

/// The stats once nothing is pending: a receiver may see an event a moment
/// before the sender records its answer.
async fn settled_stats(db: &mailconnect::db::Db) -> mailconnect::webhooks::Stats {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stats = mailconnect::webhooks::stats(db).await.unwrap();
        if stats.pending == 0 {
            return stats;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn without_a_webhook_no_event_is_written() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    disconnect(&app, &id).await;
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM webhook_outbox")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // The audit still records what happened.
    let (s, page) = audit(&app, TENANT, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_audit_api_pages_newest_first_and_refuses_bad_input() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    for _ in 0..4 {
        app.connect(TENANT, "ops@contoso.com").await;
    }
    let (s, page) = audit(&app, TENANT, "?limit=2").await;
    assert_eq!(s, StatusCode::OK);
    let first: Vec<String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(first.len(), 2);
    assert!(first[0] > first[1], "newest first");
    let cursor = page["next_before"].as_str().unwrap();
    let mut all = first.clone();
    let mut cursor = cursor.to_owned();
    loop {
        let (_, page) = audit(&app, TENANT, &format!("?limit=2&before={cursor}")).await;
        for e in page["events"].as_array().unwrap() {
            all.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_before"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(all.len(), 5);
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(all, sorted);

    for (q, code) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=201", "invalid_limit"),
        ("?limit=ten", "invalid_limit"),
        ("?before=yesterday", "invalid_cursor"),
        ("?account_id=42", "invalid_account_id"),
    ] {
        let (s, body) = audit(&app, TENANT, q).await;
        assert_json_error(s, &body, 400, code);
    }
    // Another tenant sees neither the account nor its events.
    let (s, body) = audit(&app, OTHER_TENANT, &format!("?account_id={id}")).await;
    assert_json_error(s, &body, 404, "not_found");
    let (s, body) = audit(&app, OTHER_TENANT, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["events"], json!([]));
    // Workers may not read it.
    let r = app
        .http
        .get(app.url("/api/audit"))
        .bearer_auth(app.service())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_event_is_given_up_after_the_limit_and_the_next_one_still_arrives() {
    let receiver = Receiver::start(Mode::Fail500).await;
    let app = TestApp::spawn_with(Options {
        webhook: Some((receiver.url(), receiver.secret.clone())),
        env: vec![("MAILCONNECT_WEBHOOK_GIVE_UP_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let db = mailconnect_db(&app).await;
    let deadline = std::time::Instant::now() + WAIT;
    while mailconnect::webhooks::stats(&db).await.unwrap().failed == 0 {
        assert!(std::time::Instant::now() < deadline, "never gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.set_mode(Mode::Accept);
    disconnect(&app, &id).await;
    receiver.wait_for(1, WAIT).await;
    receiver.assert_clean();
    assert_eq!(receiver.types_for(&id), ["account.disconnected"]);

    let (_, page) = audit(&app, TENANT, &format!("?account_id={id}")).await;
    let outcomes: Vec<(&str, &str)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    let gave_up = outcomes
        .iter()
        .filter(|o| **o == ("webhook_failed", "gave_up"))
        .count();
    assert_eq!(gave_up, 1, "audited once, not per attempt: {outcomes:?}");
    assert!(receiver.requests() > 2, "it was retried before giving up");
    let stats = settled_stats(&db).await;
    assert_eq!((stats.sent, stats.failed, stats.pending), (1, 1, 0));
}
