use mailconnect_sandbox::{FakeUser, Fault};
use reqwest::StatusCode;
use serde_json::{json, Value};

use mailconnect::domain::{AccountId, AccountStatus, TenantId};

use crate::helpers::*;

/// Everything the database holds, as bytes: every file of a SQLite
/// database (WAL included), or a dump of every text column on PostgreSQL.
async fn database_bytes(app: &TestApp) -> Vec<u8> {
    let mut all = Vec::new();
    if on_sqlite() {
        for entry in std::fs::read_dir(data_dir(app)).unwrap() {
            all.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        return all;
    }
    use sqlx::Row;
    for (table, columns) in [
        ("accounts", "id, tenant_id, provider, email, scopes, COALESCE(access_token_enc, ''), COALESCE(refresh_token_enc, ''), COALESCE(last_error, '')"),
        ("consumed_states", "jti"),
        ("audit_events", "id, tenant_id, COALESCE(account_id, ''), action, actor, outcome, COALESCE(detail, '')"),
    ] {
        for row in sqlx::query(&format!("SELECT {columns} FROM {table}"))
            .fetch_all(&app.db)
            .await
            .unwrap()
        {
            for i in 0..row.len() {
                all.extend(row.get::<String, _>(i).into_bytes());
                all.push(b'\n');
            }
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_token_is_stored_in_plaintext() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), 200);
    // An authorization in flight: its PKCE verifier travels sealed in the
    // state, never in clear.
    let auth = app.authorize(TENANT, json!({})).await;
    let claims = b64_json(auth["state"].as_str().unwrap().split('.').nth(1).unwrap());
    assert!(claims["sec"].as_str().unwrap().starts_with("v1:old:"));
    let bytes = database_bytes(&app).await;
    assert!(
        contains(&bytes, "ops@contoso.com"),
        "the check reads the data"
    );
    let secrets = app.ms.issued_secrets();
    assert!(secrets.len() >= 6);
    for secret in secrets {
        assert!(
            !contains(&bytes, &secret),
            "a provider secret is in the database file"
        );
    }
}

#[tokio::test]
async fn a_restart_keeps_every_account() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let token_before: Value = app.token(TENANT, &id).await.json().await.unwrap();
    let status_before = app.status(TENANT).await;
    let app = app.restart(KEY_OLD).await;
    assert_eq!(app.status(TENANT).await, status_before);
    let token_after: Value = app.token(TENANT, &id).await.json().await.unwrap();
    assert_eq!(token_after["access_token"], token_before["access_token"]);
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), 200);
}

#[tokio::test]
async fn a_new_key_in_front_still_decrypts_old_rows_and_seals_new_ones() {
    let app = TestApp::spawn_with(Options {
        users: vec![
            FakeUser::work("ops@contoso.com"),
            FakeUser::work("sales@contoso.com"),
        ],
        ..Options::default()
    })
    .await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let old_row = app.connect(TENANT, "sales@contoso.com").await;
    assert!(app.row(&id).await["access_token_enc"]
        .as_ref()
        .unwrap()
        .starts_with("v1:old:"));
    let app = app.restart(&format!("{KEY_NEW},{KEY_OLD}")).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    app.expire_stored_token(&id).await;
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
    let row = app.row(&id).await;
    assert!(row["access_token_enc"]
        .as_ref()
        .unwrap()
        .starts_with("v1:new:"));
    assert!(row["refresh_token_enc"]
        .as_ref()
        .unwrap()
        .starts_with("v1:new:"));
    // Without the old key, an old row cannot be read: the token route says
    // so without leaking anything; rows sealed with the new key still work.
    let sealed = app.row(&old_row).await["access_token_enc"].clone().unwrap();
    assert!(sealed.starts_with("v1:old:"));
    let app = app.restart(KEY_NEW).await;
    let mark = log_mark();
    let r = app.token(TENANT, &old_row).await;
    let s = r.status();
    let text = r.text().await.unwrap();
    assert_json_error(
        s,
        &serde_json::from_str(&text).unwrap(),
        500,
        "internal_error",
    );
    assert!(
        !text.contains(&sealed[7..]) && !text.contains("old"),
        "{text}"
    );
    assert!(logged_since(
        mark,
        &["internal error", "which is not configured"]
    ));
    assert_eq!(app.token(TENANT, &id).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    app.expire_stored_token(&id).await;
    app.token(TENANT, &id).await;
    app.expire_stored_token(&id).await;
    app.ms.set_fault_once(Fault::InvalidClient);
    app.token(TENANT, &id).await;
    app.ms.set_fault_once(Fault::Unavailable);
    app.token(TENANT, &id).await;
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    app.callback(&callback).await;
    app.http.get(&callback).send().await.unwrap(); // a replay, refused
    app.ms.revoke_user("ops@contoso.com");
    app.expire_stored_token(&id).await;
    app.token(TENANT, &id).await;

    let logs = captured_logs();
    assert!(logs.contains("mailbox connected"), "the logs were captured");
    let code = query(&callback)["code"].clone();
    let mut secrets = app.ms.issued_secrets();
    secrets.extend([
        code,
        auth["state"].as_str().unwrap().to_owned(),
        CLIENT_SECRET.to_owned(),
        JWT_SECRET.to_owned(),
        STATE_SECRET.to_owned(),
        KEY_OLD.split(':').nth(1).unwrap().to_owned(),
        app.admin(),
        app.service(),
    ]);
    for secret in secrets {
        assert!(
            !logs.contains(&secret),
            "a secret reached the logs: {}…",
            &secret[..8]
        );
    }
}

#[tokio::test]
async fn the_direct_sqlite_read_sees_what_the_pool_wrote() {
    if !on_sqlite() {
        return; // the direct read exists only for SQLite files
    }
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let file = data_dir(&app).join("mailconnect.db");
    let tenant = TenantId::parse(TENANT).unwrap();
    let account = AccountId::parse(&id).unwrap();
    let row = mailconnect::db::fast_read::token_row(&file, &tenant, account)
        .unwrap()
        .expect("the connected account");
    assert_eq!(row.status, AccountStatus::Connected);
    assert_eq!(row.email.as_str(), "ops@contoso.com");
    assert_eq!(row.access_token_enc, app.row(&id).await["access_token_enc"]);
    // Another tenant, or a write just made, are seen at once.
    assert!(mailconnect::db::fast_read::token_row(
        &file,
        &TenantId::parse(OTHER_TENANT).unwrap(),
        account
    )
    .unwrap()
    .is_none());
    app.post_json(
        "/api/oauth/microsoft/disconnect",
        &app.admin(),
        json!({"account_id": id}),
    )
    .await;
    let row = mailconnect::db::fast_read::token_row(&file, &tenant, account)
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.status, row.access_token_enc),
        (AccountStatus::Disconnected, None)
    );
}
