//! Upgrades in place (DESIGN.md, Storage): a database an earlier release
//! wrote — its schema is `migrations/` up to 0004 (before account kinds),
//! 0005 (shared mailboxes, before admin consent and app tokens), 0006
//! (admin consent and app mailboxes, before diagnosis) or 0009 (the
//! previous release, before keep-warm) — carries forward under this one
//! on SQLite and PostgreSQL: no account lost, the same ids, the stored
//! tokens still open, nobody asked to reconnect, and the failures it
//! recorded explained.

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
async fn a_database_with_shared_mailboxes_keeps_working() {
    upgrade_from(5).await;
}

#[tokio::test]
async fn a_database_of_the_previous_release_keeps_its_app_mailboxes_and_explains_its_failures() {
    upgrade_from(6).await;
}

#[tokio::test]
async fn a_database_from_before_keep_warm_keeps_its_accounts_warm() {
    upgrade_from(9).await;
}

const TROUBLED_ID: &str = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0d";
const APP_ID: &str = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0e";

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
    // A mailbox whose grant was refused, and a provider that refused our
    // client, as every release since 0004 recorded them: a code, no cause.
    sqlx::query(
        "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
             connected_at, last_error, consecutive_failures, created_at, updated_at)
         VALUES ($1, $2, 'microsoft', 'gone@contoso.com', 'oauth', 'needs_reauth', '',
             $3, 'invalid_grant', 1, $3, $4)",
    )
    .bind(TROUBLED_ID)
    .bind(TENANT)
    .bind(now - 86_400)
    .bind(now - 600)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO provider_state (provider, state, error, changed_at)
         VALUES ('google', 'misconfigured', 'invalid_client', $1)",
    )
    .bind(now - 300)
    .execute(&pool)
    .await
    .unwrap();
    if schema >= 6 {
        // An app mailbox whose directory took its consent back, as release
        // 0006 stored one.
        sqlx::query(
            "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes,
                 kind, directory, connected_at, last_error, consecutive_failures,
                 created_at, updated_at)
             VALUES ($1, $2, 'microsoft', 'archive@contoso.com', 'oauth', 'needs_reauth', '',
                 'app', $3, $4, 'admin_consent_revoked', 0, $4, $4)",
        )
        .bind(APP_ID)
        .bind(TENANT)
        .bind(mailconnect_sandbox::WORK_TENANT_ID)
        .bind(now - 3600)
        .execute(&pool)
        .await
        .unwrap();
    }
    if schema >= 7 {
        // Releases since diagnosis stored a cause beside each failure: the
        // causes 0007 gives these failures.
        for explain in [
            "UPDATE accounts SET cause = CASE WHEN last_error = 'invalid_grant' THEN 'grant_revoked'
                 ELSE last_error END, cause_at = updated_at WHERE last_error IS NOT NULL",
            "UPDATE provider_state SET cause = 'client_credentials_invalid' WHERE state = 'misconfigured'",
        ] {
            sqlx::query(explain).execute(&pool).await.unwrap();
        }
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
    // Connected accounts count as used when last refreshed (or connected):
    // about the upgrade, with the refresher of those releases.
    for (account, used) in [(id, Some(now - 86_400)), (TROUBLED_ID, None)] {
        let (last_used_at,): (Option<i64>,) =
            sqlx::query_as("SELECT last_used_at FROM accounts WHERE id = $1")
                .bind(account)
                .fetch_one(&app.db)
                .await
                .unwrap();
        assert_eq!(last_used_at, used, "{account}");
    }
    let account = app.account(TENANT, id).await;
    assert_eq!(account["status"], "connected", "{account}");
    assert_eq!(account["email"], "ops@contoso.com");
    assert_eq!(account["kind"], "delegated");
    assert_eq!(account["via_account_id"], serde_json::Value::Null);
    assert_eq!(account["directory"], serde_json::Value::Null);
    assert_eq!(account["diagnosis"], serde_json::Value::Null);
    assert_eq!(
        app.account_count(TENANT).await,
        2 + usize::from(schema >= 5) + usize::from(schema >= 6)
    );
    // Failures recorded before diagnosis existed are explained.
    let troubled = app.account(TENANT, TROUBLED_ID).await;
    assert_eq!(troubled["status"], "needs_reauth", "{troubled}");
    assert_eq!(troubled["last_error"], "invalid_grant");
    assert_eq!(
        troubled["diagnosis"]["cause"], "grant_revoked",
        "{troubled}"
    );
    assert!(troubled["diagnosis"]["fix"]
        .as_str()
        .unwrap()
        .contains("Reconnect"));
    assert_eq!(
        troubled["diagnosis"]["at"],
        mailconnect::rfc3339(now - 600).as_str()
    );
    let google = &app.status(TENANT).await["providers"]["google"];
    assert_eq!(
        google["diagnosis"]["cause"], "client_credentials_invalid",
        "{google}"
    );
    if schema >= 6 {
        let archive = app.account(TENANT, APP_ID).await;
        assert_eq!(archive["kind"], "app");
        assert_eq!(
            archive["diagnosis"]["cause"], "admin_consent_revoked",
            "{archive}"
        );
    }
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
