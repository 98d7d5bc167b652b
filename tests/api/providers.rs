//! The contract every provider keeps, run over [`ProviderKind::ALL`]: a
//! provider added to mailconnect (and its arm in `TestApp::connect_at`) is
//! held to all of it without a test of its own being written first.

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// The address each fake signs in by default (see `Options::default`).
fn address(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Microsoft => "ops@contoso.com",
        ProviderKind::Google => "ops@gmail.com",
        ProviderKind::Oidc => "ops@idp.example",
    }
}

async fn token_body(app: &TestApp, id: &str) -> Value {
    let r = app.token(TENANT, id).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

#[tokio::test]
async fn every_provider_connects_serves_refreshes_and_disconnects() {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        ..Options::default()
    })
    .await;
    for kind in ProviderKind::ALL {
        let name = kind.as_str();
        let provider = &app.status(TENANT).await["providers"][name];
        assert_eq!(provider["configured"], true, "{name}: {provider}");
        assert!(provider["name"].as_str().is_some_and(|n| !n.is_empty()));

        let id = app.connect_at(kind, TENANT, address(kind)).await;
        let account = app.account(TENANT, &id).await;
        assert_eq!(account["provider"], name);
        assert_eq!(account["email"], address(kind));
        assert_eq!(account["status"], "connected");
        assert_eq!(account["kind"], "delegated");
        assert_eq!(account["via_account_id"], Value::Null);
        assert_eq!(account["directory"], Value::Null);

        // The token route: the address, an XOAUTH2 string of exactly that
        // address and token, and where to log in.
        let first = token_body(&app, &id).await;
        let token = first["access_token"].as_str().unwrap();
        assert_eq!(first["email"], address(kind));
        let sasl = base64::engine::general_purpose::STANDARD
            .decode(first["xoauth2"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(sasl).unwrap(),
            format!("user={}\x01auth=Bearer {token}\x01\x01", address(kind)),
            "{name}"
        );
        for protocol in ["imap", "smtp"] {
            assert!(
                first[protocol]["host"]
                    .as_str()
                    .is_some_and(|h| !h.is_empty()),
                "{name}: {first}"
            );
        }
        // Asked again while fresh: the same token, no provider call.
        assert_eq!(token_body(&app, &id).await["access_token"], token);

        // Expired: refreshed at the provider on demand, a new token.
        app.expire_stored_token(&id).await;
        let renewed = token_body(&app, &id).await;
        assert_ne!(renewed["access_token"], token, "{name}");

        // Disconnected: the route says so, and nothing secret is kept.
        let r = app
            .post_json(
                &format!("/api/oauth/{name}/disconnect"),
                &app.admin(),
                json!({"account_id": id}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        let r = app.token(TENANT, &id).await;
        let s = r.status();
        assert_json_error(s, &r.json().await.unwrap(), 409, "account_disconnected");
        let row = app.row(&id).await;
        assert_eq!(row["refresh_token_enc"], None, "{name}");
        assert_eq!(row["access_token_enc"], None, "{name}");
    }
    assert_eq!(app.account_count(TENANT).await, ProviderKind::ALL.len());
}

#[tokio::test]
async fn every_provider_keeps_tenants_apart() {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        ..Options::default()
    })
    .await;
    for kind in ProviderKind::ALL {
        let id = app.connect_at(kind, TENANT, address(kind)).await;
        let r = app.token(OTHER_TENANT, &id).await;
        let s = r.status();
        assert_json_error(s, &r.json().await.unwrap(), 404, "not_found");
        let r = app
            .post_json(
                &format!("/api/oauth/{}/disconnect", kind.as_str()),
                &app.jwt(OTHER_TENANT, mailconnect::http::auth::Role::Admin),
                json!({"account_id": id}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{kind}");
        assert_eq!(app.account(TENANT, &id).await["status"], "connected");
    }
}
