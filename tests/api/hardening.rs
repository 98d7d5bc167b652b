//! Regression tests for what an attacker tried: open redirects through
//! `return_to`, forged log lines, path parameters outside the JSON error
//! contract, and states replayed into another browser.

use mailconnect::oauth::state::{StateClaims, StateSigner};
use mailconnect_sandbox::Fault;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::*;

/// The known open-redirect payloads, shared with the unit tests of
/// `ReturnPath`.
fn open_redirects() -> Vec<String> {
    serde_json::from_str(include_str!("../data/open_redirects.json")).unwrap()
}

/// A `Location` a browser resolves on this service's own host.
fn assert_on_host(location: &str) {
    assert!(
        location.starts_with('/') && !location.starts_with("//") && !location.contains('\\'),
        "{location:?} leaves the host"
    );
    let resolved = url::Url::parse("https://mailconnect.invalid/x/y")
        .unwrap()
        .join(location)
        .unwrap();
    assert_eq!(
        resolved.host_str(),
        Some("mailconnect.invalid"),
        "{location}"
    );
}

fn claims_of(state: &str) -> StateClaims {
    serde_json::from_value(b64_json(state.split('.').nth(1).unwrap())).unwrap()
}

fn sign(claims: &StateClaims) -> String {
    StateSigner::new(&SecretString::from(STATE_SECRET)).sign(claims)
}

#[tokio::test]
async fn open_redirect_payloads_are_refused_by_authorize() {
    let app = TestApp::spawn().await;
    for bad in open_redirects() {
        let r = app
            .post_json(
                "/api/oauth/microsoft/authorize",
                &app.admin(),
                json!({ "return_to": bad }),
            )
            .await;
        let s = r.status();
        let body: Value = r.json().await.unwrap();
        assert_json_error(s, &body, 400, "invalid_return_to");
    }
}

/// Defence in depth: even a state that carried one of the payloads (as if
/// validation had been bypassed, signed with the real secret) never makes
/// any callback outcome send the browser off-site.
#[tokio::test]
async fn no_callback_outcome_redirects_off_site_whatever_the_state_carries() {
    let app = TestApp::spawn().await;
    let cb = "/api/oauth/microsoft/callback";
    for bad in open_redirects() {
        // Connected.
        let auth = app.authorize(TENANT, json!({})).await;
        let callback = app
            .consent(auth["authorization_url"].as_str().unwrap())
            .await;
        let mut claims = claims_of(auth["state"].as_str().unwrap());
        claims.ret = Some(bad.clone());
        let code = query(&callback)["code"].clone();
        let landing = app
            .callback(&app.url(&format!("{cb}?code={code}&state={}", sign(&claims))))
            .await;
        assert_on_host(&landing);
        assert_eq!(query(&landing)["oauth"], "connected", "{bad:?}: {landing}");

        // Declined at the provider.
        let auth = app.authorize(TENANT, json!({})).await;
        let mut claims = claims_of(auth["state"].as_str().unwrap());
        claims.ret = Some(bad.clone());
        let landing = app
            .callback(&app.url(&format!("{cb}?error=access_denied&state={}", sign(&claims))))
            .await;
        assert_on_host(&landing);
        assert_eq!(query(&landing)["reason"], "access_denied");

        // Expired.
        let auth = app.authorize(TENANT, json!({})).await;
        let mut claims = claims_of(auth["state"].as_str().unwrap());
        claims.ret = Some(bad.clone());
        claims.exp = chrono::Utc::now().timestamp() - 60;
        let landing = app
            .callback(&app.url(&format!("{cb}?code=x&state={}", sign(&claims))))
            .await;
        assert_on_host(&landing);
        assert_eq!(query(&landing)["reason"], "state_expired");

        // No code.
        let auth = app.authorize(TENANT, json!({})).await;
        let mut claims = claims_of(auth["state"].as_str().unwrap());
        claims.ret = Some(bad.clone());
        let landing = app
            .callback(&app.url(&format!("{cb}?state={}", sign(&claims))))
            .await;
        assert_on_host(&landing);
        assert_eq!(query(&landing)["reason"], "token_exchange_failed");
    }

    // A refused redemption and an unreachable provider, once each.
    for fault in [Fault::InvalidGrant, Fault::Unavailable] {
        let auth = app.authorize(TENANT, json!({})).await;
        let callback = app
            .consent(auth["authorization_url"].as_str().unwrap())
            .await;
        let mut claims = claims_of(auth["state"].as_str().unwrap());
        claims.ret = Some("/.//evil.example/x".into());
        app.ms.set_fault_once(fault);
        let code = query(&callback)["code"].clone();
        let landing = app
            .callback(&app.url(&format!("{cb}?code={code}&state={}", sign(&claims))))
            .await;
        assert_on_host(&landing);
        assert_eq!(query(&landing)["oauth"], "error");
    }
}

#[tokio::test]
async fn a_relative_oauth_return_url_is_held_to_the_same_rule() {
    for bad in [
        "/.//evil.example/x",
        "/%2e//evil.example/x",
        "//evil.example",
    ] {
        let vars = [
            ("JWT_SECRET", JWT_SECRET),
            ("OAUTH_STATE_SECRET", STATE_SECRET),
            ("TOKEN_ENCRYPTION_KEYS", KEY_OLD),
            ("OAUTH_RETURN_URL", bad),
        ];
        let e = mailconnect::config::Config::from_env(
            &mailconnect::config::Env(|k| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }),
            false,
        )
        .unwrap_err();
        assert_eq!(e.var, "OAUTH_RETURN_URL", "{bad}");
    }
}

#[tokio::test]
async fn a_legitimate_return_to_with_dots_in_names_still_works() {
    let app = TestApp::spawn().await;
    let landing = app
        .connect_flow(
            TENANT,
            json!({"return_to": "/v1.2/settings..x/mail?tab=a.b"}),
        )
        .await;
    assert_on_host(&landing);
    assert!(
        landing.starts_with("/v1.2/settings..x/mail?tab=a.b&oauth=connected"),
        "{landing}"
    );
    assert_eq!(
        app.status(TENANT).await["accounts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
