//! Every check of an id_token refuses the id_token that fails it, at the
//! real callback of each provider: the fakes issue flawed id_tokens on
//! demand ([`IdTokenFlaw`]). The browser lands with `token_exchange_failed`
//! (`provider_unavailable` when the keys cannot be fetched), nothing is
//! stored, and the log line names the check that refused it.

use mailconnect_sandbox::{FakeUser, IdTokenFlaw, PERSONAL_TENANT_ID, WORK_TENANT_ID};
use serde_json::json;

use crate::helpers::*;

/// A directory that is not the fake users'.
const OTHER_DIRECTORY: &str = "0b2f3c4d-1111-4222-8333-444455556666";

/// The defects every provider must refuse, each with what its log line says.
fn defects() -> Vec<(IdTokenFlaw, &'static str)> {
    vec![
        (
            IdTokenFlaw::Audience("another-application".into()),
            "the id_token is invalid: wrong audience",
        ),
        (IdTokenFlaw::Expired, "the id_token is invalid: expired"),
        (
            IdTokenFlaw::NotYetValid,
            "the id_token is invalid: not yet valid",
        ),
        (
            IdTokenFlaw::UnknownKid,
            "the id_token is invalid: unknown kid",
        ),
        (IdTokenFlaw::NoKid, "the id_token is invalid: no kid"),
        (
            IdTokenFlaw::Hs256,
            "the id_token is invalid: not signed with an asymmetric key",
        ),
        (IdTokenFlaw::AlgNone, "the id_token is invalid: malformed"),
        (
            IdTokenFlaw::OtherKey,
            "the id_token is invalid: bad signature",
        ),
        (
            IdTokenFlaw::Omitted,
            "answered the code redemption without an id_token",
        ),
    ]
}

/// Runs the flow once per defect and checks each is refused; then, with
/// the defect cleared, that the same flow connects.
async fn refuses_each(
    app: &TestApp,
    provider: &str,
    set: impl Fn(Option<IdTokenFlaw>),
    defects: Vec<(IdTokenFlaw, &'static str)>,
) {
    for (flaw, logged) in defects {
        let mark = log_mark();
        set(Some(flaw.clone()));
        assert_eq!(
            app.failed_reason(provider, json!({})).await,
            "token_exchange_failed",
            "{provider} {flaw:?}"
        );
        // The shared checks log with the provider's name; each provider's
        // own issuer check says whose it is in its message.
        let provider_field = format!("provider={provider}");
        let needles: &[&str] = if logged.contains("id_token refused") {
            &[logged]
        } else {
            &[&provider_field, logged]
        };
        assert!(
            logged_since(mark, needles),
            "{provider} {flaw:?}: no log line says {logged:?}"
        );
        assert_eq!(app.account_count(TENANT).await, 0, "{provider} {flaw:?}");
    }
    set(None);
    let landing = app.connect_flow_for(provider, TENANT, json!({})).await;
    assert_eq!(
        query(&landing)["oauth"],
        "connected",
        "{provider}: {landing}"
    );
}

#[tokio::test]
async fn microsoft_refuses_an_id_token_that_fails_any_check() {
    let app = TestApp::spawn().await;
    let mut defects = defects();
    defects.extend([
        (
            IdTokenFlaw::Issuer(format!("https://login.evil.example/{WORK_TENANT_ID}/v2.0")),
            "Microsoft id_token refused: issuer or tenant does not match",
        ),
        // The `{tid}` rule: the issuer must name the token's own tenant.
        (
            IdTokenFlaw::Tid(OTHER_DIRECTORY.into()),
            "Microsoft id_token refused: issuer or tenant does not match",
        ),
        (
            IdTokenFlaw::NoTid,
            "Microsoft id_token refused: issuer or tenant does not match",
        ),
    ]);
    let ms = app.ms.clone();
    refuses_each(&app, "microsoft", |f| ms.set_id_token_flaw(f), defects).await;
    // `common` admits a consistent token of any directory.
    app.ms
        .set_id_token_flaw(Some(IdTokenFlaw::Directory(OTHER_DIRECTORY.into())));
    let landing = app.connect_flow(TENANT, json!({})).await;
    assert_eq!(query(&landing)["oauth"], "connected", "{landing}");
}

/// A Microsoft app spawned for one tenant setting, with `user`.
async fn microsoft_for(tenant: &str, user: FakeUser) -> TestApp {
    TestApp::spawn_with(Options {
        users: vec![user],
        env: vec![("MICROSOFT_OAUTH_TENANT_ID", tenant.to_owned())],
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_tenant_setting_admits_only_the_directories_it_names() {
    let work = || FakeUser::work("ops@contoso.com");
    let personal = || FakeUser::personal("someone@outlook.com");
    for (setting, user, foreign) in [
        (WORK_TENANT_ID, work(), OTHER_DIRECTORY),
        ("organizations", work(), PERSONAL_TENANT_ID),
        ("consumers", personal(), WORK_TENANT_ID),
    ] {
        let app = microsoft_for(setting, user).await;
        // A genuine-looking token of a directory the setting excludes.
        app.ms
            .set_id_token_flaw(Some(IdTokenFlaw::Directory(foreign.into())));
        let mark = log_mark();
        assert_eq!(
            app.failed_reason("microsoft", json!({})).await,
            "token_exchange_failed",
            "{setting} admitted a token of {foreign}"
        );
        assert!(logged_since(
            mark,
            &["Microsoft id_token refused: issuer or tenant does not match"]
        ));
        assert_eq!(app.account_count(TENANT).await, 0);
        app.ms.set_id_token_flaw(None);
        let landing = app.connect_flow(TENANT, json!({})).await;
        assert_eq!(
            query(&landing)["oauth"],
            "connected",
            "{setting}: {landing}"
        );
    }
}

#[tokio::test]
async fn a_domain_named_tenant_admits_only_its_own_users() {
    let app = TestApp::spawn_with(Options {
        users: vec![
            FakeUser::work("ops@contoso.com"),
            FakeUser::personal("someone@outlook.com"),
        ],
        env: vec![("MICROSOFT_OAUTH_TENANT_ID", "contoso.com".to_owned())],
        ..Options::default()
    })
    .await;
    app.ms.add_domain("contoso.com", WORK_TENANT_ID);
    let auth = app.authorize(TENANT, json!({})).await;
    let url = auth["authorization_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/contoso.com/oauth2/v2.0/authorize?",
            app.ms.base_url()
        )),
        "{url}"
    );
    app.ms.set_user_for_next_login("someone@outlook.com");
    assert_eq!(
        app.failed_reason("microsoft", json!({})).await,
        "token_exchange_failed"
    );
    assert_eq!(app.account_count(TENANT).await, 0);
    let id = app.connect(TENANT, "ops@contoso.com").await;
    assert_eq!(app.account(TENANT, &id).await["email"], "ops@contoso.com");
}

#[tokio::test]
async fn google_refuses_an_id_token_that_fails_any_check() {
    let app = TestApp::spawn().await;
    let mut defects = defects();
    defects.push((
        IdTokenFlaw::Issuer("https://accounts.evil.example".into()),
        "Google id_token refused: wrong issuer",
    ));
    let google = app.google.clone();
    refuses_each(&app, "google", |f| google.set_id_token_flaw(f), defects).await;
    // Google's issuer comes in two spellings; both are Google.
    app.google
        .set_id_token_flaw(Some(IdTokenFlaw::Issuer("accounts.google.com".into())));
    let landing = app.connect_flow_for("google", TENANT, json!({})).await;
    assert_eq!(query(&landing)["oauth"], "connected", "{landing}");
}

#[tokio::test]
async fn oidc_refuses_an_id_token_that_fails_any_check() {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        ..Options::default()
    })
    .await;
    let mut defects = defects();
    defects.push((
        IdTokenFlaw::Issuer(format!("{}/other-realm", app.oidc().issuer())),
        "OIDC id_token refused: wrong issuer",
    ));
    let oidc = app.oidc().clone();
    refuses_each(&app, "oidc", |f| oidc.set_id_token_flaw(f), defects).await;
}

#[tokio::test]
async fn a_provider_whose_keys_cannot_be_fetched_is_unavailable() {
    let app = TestApp::spawn_with(Options {
        oidc: true,
        ..Options::default()
    })
    .await;
    app.ms.set_jwks_down(true);
    app.google.set_jwks_down(true);
    app.oidc().set_jwks_down(true);
    for provider in ["microsoft", "google", "oidc"] {
        let mark = log_mark();
        assert_eq!(
            app.failed_reason(provider, json!({})).await,
            "provider_unavailable",
            "{provider}"
        );
        assert!(logged_since(
            mark,
            &[
                &format!("provider={provider}"),
                "the provider's signing keys could not be fetched"
            ]
        ));
    }
    assert_eq!(app.account_count(TENANT).await, 0);
    // Keys back: the next sign-in fetches them and works.
    app.ms.set_jwks_down(false);
    assert_eq!(
        query(&app.connect_flow(TENANT, json!({})).await)["oauth"],
        "connected"
    );
}
