//! Upgrades in place (DESIGN.md, Storage): a database an earlier release
//! wrote — its schema is `migrations/` up to 0004 (before account kinds) or
//! 0005 (the previous release: shared mailboxes, before admin consent and
//! app tokens) — carries forward under this one on SQLite and PostgreSQL:
//! no account lost, the same ids, the stored tokens still open, nobody
//! asked to reconnect.

use std::path::Path;
use std::sync::Arc;

use mailconnect::crypto::{Column, Keyring};
use mailconnect_sandbox::google::{FakeGoogle, FakeGoogleConfig};
use mailconnect_sandbox::{FakeMicrosoft, FakeMicrosoftConfig};
use reqwest::StatusCode;
use secrecy::SecretString;

use crate::helpers::*;

/// A new database at an earlier release's schema (its last migration):
/// its migrations, from the same files (a released migration is never
/// edited).
async fn previous_release_database(
    dir: &tempfile::TempDir,
    schema: i64,
) -> (String, sqlx::AnyPool) {
    let url = crate::support::fresh_database(dir, "previous.db").await;
    let create = if url.starts_with("sqlite:") {
        format!("{url}?mode=rwc")
    } else {
        url.clone()
    };
    let pool = sqlx::AnyPool::connect(&create).await.unwrap();
    let mut migrator = sqlx::migrate::Migrator::new(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await
    .unwrap();
    let released: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= schema)
        .cloned()
        .collect();
    assert_eq!(released.len() as i64, schema);
    migrator.migrations = released.into();
    migrator.run(&pool).await.unwrap();
    (url, pool)
}

#[tokio::test]
async fn a_database_from_before_account_kinds_keeps_working_without_a_reconnect() {
    upgrade_from(4).await;
}

#[tokio::test]
async fn a_database_of_the_previous_release_keeps_working_with_its_shared_mailboxes() {
    upgrade_from(5).await;
}

const SHARED_ID: &str = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0c";

async fn upgrade_from(schema: i64) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (url, pool) = previous_release_database(&dir, schema).await;

    // The providers, as a fake that issued this mailbox's refresh token.
    let callback = "http://127.0.0.1:9/api/oauth/microsoft/callback";
    let ms = FakeMicrosoft::start(FakeMicrosoftConfig::new(CLIENT_ID, CLIENT_SECRET, callback))
        .await
        .unwrap();
    let google = FakeGoogle::start(FakeGoogleConfig::new(
        GOOGLE_CLIENT_ID,
        GOOGLE_CLIENT_SECRET,
        "http://127.0.0.1:9/api/oauth/google/callback",
    ))
    .await
    .unwrap();
    let refresh_token = ms.mint_refresh_token("ops@contoso.com");

    // One connected mailbox, as that release stored it: its columns, its
    // sealing (the key id beside the ciphertext, row id and column as AAD).
    let id = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b";
    let ring = Keyring::parse(KEY_OLD).unwrap();
    let now = chrono::Utc::now().timestamp();
    sqlx::query(
        "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
             access_token_enc, refresh_token_enc, token_expires_at, provider_tenant_id,
             connected_at, consecutive_failures, created_at, updated_at, refresh_due_at)
         VALUES ($1, $2, 'microsoft', 'ops@contoso.com', 'oauth', 'connected', $3, $4, $5, $6,
                 $7, $8, 0, $8, $8, $9)",
    )
    .bind(id)
    .bind(TENANT)
    .bind("https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send")
    .bind(ring.seal_for(
        Column::AccessToken,
        id,
        &SecretString::from("EwA-access-token-of-the-previous-release"),
    ))
    .bind(ring.seal_for(Column::RefreshToken, id, &SecretString::from(refresh_token)))
    .bind(now + 3600)
    .bind(mailconnect_sandbox::WORK_TENANT_ID)
    .bind(now - 86_400)
    .bind(now + 3000)
    .execute(&pool)
    .await
    .unwrap();
    if schema >= 5 {
        // A shared mailbox through it, as release 0005 stored one.
        sqlx::query(
            "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
                 kind, via_account_id, connected_at, consecutive_failures, created_at,
                 updated_at)
             VALUES ($1, $2, 'microsoft', 'support@contoso.com', 'oauth', 'connected', '',
                 'shared', $3, $4, 0, $4, $4)",
        )
        .bind(SHARED_ID)
        .bind(TENANT)
        .bind(id)
        .bind(now - 3600)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    // This release on that database: it migrates at start-up.
    let app = TestApp::spawn_with(Options {
        db_dir: Some(dir.clone()),
        db_url: Some(url),
        fake: Some((ms, google)),
        ..Options::default()
    })
    .await;
    let account = app.account(TENANT, id).await;
    assert_eq!(account["status"], "connected", "{account}");
    assert_eq!(account["email"], "ops@contoso.com");
    assert_eq!(account["kind"], "delegated");
    assert_eq!(account["via_account_id"], serde_json::Value::Null);
    assert_eq!(account["directory"], serde_json::Value::Null);
    assert_eq!(
        app.account_count(TENANT).await,
        if schema >= 5 { 2 } else { 1 }
    );
    if schema >= 5 {
        let shared = app.account(TENANT, SHARED_ID).await;
        assert_eq!(shared["kind"], "shared", "{shared}");
        assert_eq!(shared["via_account_id"], id);
        let r = app.token(TENANT, SHARED_ID).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["access_token"],
            "EwA-access-token-of-the-previous-release"
        );
        assert_eq!(body["imap"]["username"], "support@contoso.com");
        assert_eq!(body["smtp"]["username"], "ops@contoso.com");
        // The new tables are there, empty.
        let status = app.status(TENANT).await;
        assert_eq!(
            status["providers"]["microsoft"]["admin_consent"],
            serde_json::Value::Null
        );
    }

    // The stored access token is served as it was...
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["access_token"],
        "EwA-access-token-of-the-previous-release"
    );
    assert_eq!(body["imap"]["username"], "ops@contoso.com");
    assert_eq!(body["smtp"]["mail_from"], "ops@contoso.com");
    assert_eq!(app.ms.refresh_grants(), 0);

    // ...and the stored refresh token still renews it.
    app.expire_stored_token(id).await;
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_ne!(
        body["access_token"],
        "EwA-access-token-of-the-previous-release"
    );
    assert_eq!(app.ms.refresh_grants(), 1);

    // Migrating again (a restart) changes nothing.
    let app = app.restart(KEY_OLD).await;
    assert_eq!(app.account(TENANT, id).await["kind"], "delegated");
    assert_eq!(app.token(TENANT, id).await.status(), StatusCode::OK);
    assert_eq!(app.ms.refresh_grants(), 1);
}
