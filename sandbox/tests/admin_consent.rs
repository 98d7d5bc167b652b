//! Application access at the fake Microsoft over real HTTP: directories, the
//! admin consent endpoint and the client credentials grant, each refusal as
//! Microsoft answers it.

use std::collections::BTreeSet;

use mailconnect_sandbox::*;
use serde_json::Value;

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value";
const REDIRECT: &str = "http://127.0.0.1:9999/api/oauth/microsoft/callback";
const STATE: &str = "st ate/+&=";
const CONTOSO: &str = "3f0c8a2e-6b1d-4c7e-9a55-0d2b7e4f1c63";
const FABRIKAM: &str = "8d4e1b7a-2c3f-4e90-b6a1-5f7c9d0e2b48";
const CONTOSO_ADMIN: &str = "admin@contoso.example";
const CONTOSO_USER: &str = "megan@contoso.example";
const FABRIKAM_ADMIN: &str = "admin@fabrikam.example";
const PERSONAL: &str = "someone@outlook.example";
const OUTLOOK_DEFAULT: &str = "https://outlook.office.com/.default";
const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn user_of(upn: &str, directory: &str) -> FakeUser {
    let mut user = FakeUser::work(upn);
    user.tid = directory.to_string();
    user
}

/// Two directories, each with its admin; Contoso also has a plain user,
/// and there is a personal account.
async fn start_with(interactive: bool) -> FakeMicrosoft {
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT);
    cfg.interactive = interactive;
    cfg.users = vec![
        user_of(CONTOSO_ADMIN, CONTOSO),
        user_of(CONTOSO_USER, CONTOSO),
        user_of(FABRIKAM_ADMIN, FABRIKAM),
        FakeUser::personal(PERSONAL),
    ];
    let ms = FakeMicrosoft::start(cfg).await.unwrap();
    ms.add_directory(CONTOSO, &["contoso.example"]);
    ms.set_directory_admin(CONTOSO, CONTOSO_ADMIN);
    ms.add_directory(
        FABRIKAM,
        &["fabrikam.example", "fabrikam.onmicrosoft.example"],
    );
    ms.set_directory_admin(FABRIKAM, FABRIKAM_ADMIN);
    ms
}

async fn start() -> FakeMicrosoft {
    start_with(false).await
}

/// What a browser request got: its status, its body, and the query of the
/// redirect (in order) when it was one.
struct Answer {
    status: u16,
    body: String,
    redirect: Option<Vec<(String, String)>>,
}

impl Answer {
    async fn of(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let redirect = resp.headers().get("location").map(|loc| {
            let url = url::Url::parse(loc.to_str().unwrap()).unwrap();
            assert!(url.as_str().starts_with(REDIRECT), "{url}");
            url.query_pairs().into_owned().collect()
        });
        Answer {
            status,
            body: resp.text().await.unwrap_or_default(),
            redirect,
        }
    }

    /// The redirect's parameters, in order.
    fn params(&self) -> &[(String, String)] {
        assert_eq!(self.status, 302, "{}", self.body);
        self.redirect.as_deref().expect("a redirect")
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The redirect's `error` and the AADSTS code its description starts with.
    fn error(&self) -> (&str, &str) {
        let description = self.param("error_description").unwrap_or("");
        let code = description.split(':').next().unwrap_or("");
        (self.param("error").unwrap_or(""), code)
    }

    fn names(&self) -> Vec<&str> {
        self.params().iter().map(|(k, _)| k.as_str()).collect()
    }
}

async fn admin_consent_with(ms: &FakeMicrosoft, tenant: &str, params: &[(&str, &str)]) -> Answer {
    let resp = client()
        .get(ms.admin_consent_endpoint(tenant))
        .query(params)
        .send()
        .await
        .unwrap();
    Answer::of(resp).await
}

/// The query of the admin consent request mailconnect makes, with `name`
/// set to `value` (left out for `None`).
fn query_with<'a>(name: &'a str, value: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut query = vec![
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("state", STATE),
        ("scope", OUTLOOK_DEFAULT),
    ];
    query.retain(|(k, _)| *k != name);
    if let Some(value) = value {
        query.push((name, value));
    }
    query
}

/// The admin consent request mailconnect makes, for `scope`.
async fn admin_consent(ms: &FakeMicrosoft, tenant: &str, scope: &str) -> Answer {
    admin_consent_with(ms, tenant, &query_with("scope", Some(scope))).await
}

/// `upn` signs in at the admin consent endpoint of `tenant`.
async fn consent_as(ms: &FakeMicrosoft, tenant: &str, upn: &str) -> Answer {
    ms.set_user_for_next_login(upn);
    admin_consent(ms, tenant, OUTLOOK_DEFAULT).await
}

async fn token(ms: &FakeMicrosoft, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = client()
        .post(ms.token_endpoint(tenant))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn app_token(ms: &FakeMicrosoft, tenant: &str, scope: &str) -> (u16, Value) {
    token(
        ms,
        tenant,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", scope),
        ],
    )
    .await
}

fn error_code(v: &Value) -> (&str, u64) {
    (
        v["error"].as_str().unwrap_or(""),
        v["error_codes"][0].as_u64().unwrap_or(0),
    )
}

// ---------------------------------------------------------------------------
// Admin consent endpoint
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_directory_admin_consents_and_is_sent_back_with_exactly_microsofts_parameters() {
    let ms = start().await;
    assert!(!ms.directory_consented(CONTOSO));
    let a = consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let expected: Vec<(String, String)> = [
        ("admin_consent", "True"),
        ("tenant", CONTOSO),
        ("scope", OUTLOOK_DEFAULT),
        ("state", STATE),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(a.params(), expected.as_slice());
    assert!(ms.directory_consented(CONTOSO));
    assert!(!ms.directory_consented(FABRIKAM));
}

#[tokio::test]
async fn organizations_common_and_a_domain_name_the_directory_of_the_admin() {
    let ms = start().await;
    let a = consent_as(&ms, "organizations", FABRIKAM_ADMIN).await;
    assert_eq!(a.param("tenant"), Some(FABRIKAM));
    let a = consent_as(&ms, "common", CONTOSO_ADMIN).await;
    assert_eq!(a.param("tenant"), Some(CONTOSO));
    ms.remove_app_from_directory(FABRIKAM);
    let a = consent_as(&ms, "fabrikam.onmicrosoft.example", FABRIKAM_ADMIN).await;
    assert_eq!(a.param("tenant"), Some(FABRIKAM));
    assert!(ms.directory_consented(FABRIKAM));
}

#[tokio::test]
async fn a_user_who_is_not_the_directory_admin_is_refused() {
    let ms = start().await;
    let a = consent_as(&ms, CONTOSO, CONTOSO_USER).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS90094"));
    // Microsoft's error redirects after sign-in also say admin_consent=True.
    assert_eq!(
        a.names(),
        [
            "error",
            "error_description",
            "admin_consent",
            "tenant",
            "state"
        ]
    );
    assert_eq!(a.param("admin_consent"), Some("True"));
    assert_eq!(a.param("tenant"), Some(CONTOSO));
    assert_eq!(a.param("state"), Some(STATE));
    assert!(!ms.directory_consented(CONTOSO));

    let a = consent_as(&ms, "organizations", CONTOSO_USER).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS90094"));
}

#[tokio::test]
async fn a_directory_without_an_admin_refuses_everyone() {
    let ms = start().await;
    let other = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
    ms.add_directory(other, &["other.example"]);
    ms.add_user(user_of("boss@other.example", other));
    let a = consent_as(&ms, other, "boss@other.example").await;
    assert_eq!(a.error(), ("access_denied", "AADSTS90094"));
    ms.set_directory_admin(other, "boss@other.example");
    let a = consent_as(&ms, "other.example", "boss@other.example").await;
    assert_eq!(a.param("admin_consent"), Some("True"));
    assert_eq!(a.param("tenant"), Some(other));
}

#[tokio::test]
async fn the_admin_of_another_directory_is_refused() {
    let ms = start().await;
    let a = consent_as(&ms, CONTOSO, FABRIKAM_ADMIN).await;
    assert_eq!(a.error(), ("invalid_request", "AADSTS50020"));
    assert_eq!(a.param("tenant"), Some(CONTOSO));
    assert!(!ms.directory_consented(CONTOSO));
    assert!(!ms.directory_consented(FABRIKAM));
}

#[tokio::test]
async fn the_admin_who_cancels_is_refused_and_only_that_once() {
    let ms = start().await;
    ms.set_admin_declines(true);
    let a = consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS65004"));
    assert_eq!(a.param("tenant"), Some(CONTOSO));
    assert_eq!(a.param("state"), Some(STATE));
    assert!(!ms.directory_consented(CONTOSO));

    let a = consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    assert_eq!(a.param("admin_consent"), Some("True"));
    assert_eq!(a.param("error"), None);
    assert!(ms.directory_consented(CONTOSO));
}

#[tokio::test]
async fn a_non_admin_does_not_use_up_the_admins_cancel() {
    let ms = start().await;
    ms.set_admin_declines(true);
    let a = consent_as(&ms, CONTOSO, CONTOSO_USER).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS90094"));
    let a = consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS65004"));
}

#[tokio::test]
async fn admin_consent_asks_for_default_scopes_of_known_resources_only() {
    let ms = start().await;
    for (scope, code) in [
        ("https://outlook.office.com/IMAP.AccessAsApp", "AADSTS70011"),
        ("openid", "AADSTS70011"),
        ("https://outlook.office.com/.default openid", "AADSTS70011"),
        ("https://evil.example/.default", "AADSTS650057"),
        ("   ", "AADSTS900144"),
    ] {
        let a = admin_consent(&ms, CONTOSO, scope).await;
        assert_eq!(a.error(), ("invalid_request", code), "{scope}");
        // Refused before anyone signed in: no admin_consent, no tenant.
        assert_eq!(
            a.names(),
            ["error", "error_description", "state"],
            "{scope}"
        );
    }
    let a = admin_consent_with(&ms, CONTOSO, &query_with("scope", None)).await;
    assert_eq!(a.error(), ("invalid_request", "AADSTS900144"));
    assert!(!ms.directory_consented(CONTOSO));

    let both = format!("{OUTLOOK_DEFAULT} {GRAPH_DEFAULT}");
    let a = admin_consent(&ms, CONTOSO, &both).await;
    assert_eq!(a.param("scope"), Some(both.as_str()));
    assert!(ms.directory_consented(CONTOSO));
}

#[tokio::test]
async fn a_bad_client_redirect_uri_or_tenant_is_an_error_page_not_a_redirect() {
    let ms = start().await;
    let unknown = "0e9d8c7b-6a5f-4e3d-8c2b-1a0f9e8d7c6b";
    let cases = [
        (
            CONTOSO,
            query_with("redirect_uri", Some("http://127.0.0.1:9999/elsewhere")),
            "AADSTS50011",
        ),
        (CONTOSO, query_with("redirect_uri", None), "AADSTS50011"),
        (
            CONTOSO,
            query_with("client_id", Some("99999999-2222-3333-4444-555555555555")),
            "AADSTS700016",
        ),
        (CONTOSO, query_with("client_id", None), "AADSTS900144"),
        (unknown, query_with("state", Some(STATE)), "AADSTS90002"),
        (
            "unknown.example",
            query_with("state", Some(STATE)),
            "AADSTS90002",
        ),
    ];
    for (tenant, params, code) in cases {
        let a = admin_consent_with(&ms, tenant, &params).await;
        assert_eq!(a.status, 400, "{code}");
        assert!(a.redirect.is_none(), "{code}");
        assert!(a.body.contains(code), "{code}: {}", a.body);
    }
    assert!(!ms.directory_consented(CONTOSO));
}

#[tokio::test]
async fn personal_accounts_cannot_grant_admin_consent() {
    let ms = start().await;
    let a = admin_consent(&ms, "consumers", OUTLOOK_DEFAULT).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS500200"));
    assert_eq!(a.param("tenant"), Some(PERSONAL_TENANT_ID));
    assert_eq!(a.param("state"), Some(STATE));

    for tenant in ["organizations", "common"] {
        let a = consent_as(&ms, tenant, PERSONAL).await;
        assert_eq!(a.error(), ("access_denied", "AADSTS500200"), "{tenant}");
    }
}

/// The value of the hidden `request` field of a consent page.
fn request_id(html: &str) -> String {
    let marker = "name=\"request\" value=\"";
    let start = html.find(marker).expect("the page has a request id") + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_string()
}

async fn answer_page(ms: &FakeMicrosoft, path: &str, form: &[(&str, &str)]) -> Answer {
    let resp = client()
        .post(format!("{}/{path}", ms.base_url()))
        .form(form)
        .send()
        .await
        .unwrap();
    Answer::of(resp).await
}

#[tokio::test]
async fn interactively_the_admin_accepts_for_the_organization_on_a_page() {
    let ms = start_with(true).await;
    let page = admin_consent(&ms, "organizations", OUTLOOK_DEFAULT).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("for your organization"), "{}", page.body);
    assert!(page.body.contains("IMAP.AccessAsApp"));
    assert!(page
        .body
        .contains(&format!("data-testid=\"sandbox-user-{CONTOSO_ADMIN}\"")));
    let id = request_id(&page.body);

    // An admin-consent page is not answered at authorize's consent route.
    let wrong = answer_page(
        &ms,
        "organizations/oauth2/v2.0/consent",
        &[
            ("request", &id),
            ("user", CONTOSO_ADMIN),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(wrong.status, 400);

    let form = [
        ("request", id.as_str()),
        ("user", CONTOSO_ADMIN),
        ("action", "accept"),
    ];
    let a = answer_page(&ms, "organizations/v2.0/consent", &form).await;
    assert_eq!(a.param("admin_consent"), Some("True"));
    assert_eq!(a.param("tenant"), Some(CONTOSO));
    assert_eq!(a.param("state"), Some(STATE));
    assert!(ms.directory_consented(CONTOSO));

    let again = answer_page(&ms, "organizations/v2.0/consent", &form).await;
    assert_eq!(again.status, 400);
}

#[tokio::test]
async fn interactively_cancel_and_a_non_admin_are_refused() {
    let ms = start_with(true).await;
    let page = admin_consent(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    let id = request_id(&page.body);
    let a = answer_page(
        &ms,
        &format!("{CONTOSO}/v2.0/consent"),
        &[
            ("request", &id),
            ("user", CONTOSO_ADMIN),
            ("action", "cancel"),
        ],
    )
    .await;
    assert_eq!(a.error(), ("access_denied", "AADSTS65004"));
    assert_eq!(a.param("tenant"), Some(CONTOSO));

    let page = admin_consent(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    let id = request_id(&page.body);
    let a = answer_page(
        &ms,
        &format!("{CONTOSO}/v2.0/consent"),
        &[
            ("request", &id),
            ("user", CONTOSO_USER),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(a.error(), ("access_denied", "AADSTS90094"));
    assert!(!ms.directory_consented(CONTOSO));

    // The admin's cancel knob skips the page.
    ms.set_admin_declines(true);
    let a = admin_consent(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(a.error(), ("access_denied", "AADSTS65004"));
}

// ---------------------------------------------------------------------------
// Client credentials grant
// ---------------------------------------------------------------------------

#[tokio::test]
async fn after_consent_client_credentials_give_an_app_token_with_the_app_roles() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let (status, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(status, 200, "{body}");
    let fields: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["token_type", "expires_in", "ext_expires_in", "access_token"])
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let at = body["access_token"].as_str().unwrap();
    let info = ms.app_token_info(at).unwrap();
    assert_eq!(info.directory, CONTOSO);
    assert_eq!(info.app_id, CLIENT_ID);
    assert_eq!(info.audience, OUTLOOK_RESOURCE);
    assert_eq!(info.roles, APP_ROLES);
    assert!(info.valid);
    assert!(info.expires_at > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert!(
        ms.access_token_info(at).is_none(),
        "an app token is no user's"
    );
    assert!(ms.issued_secrets().contains(&at.to_string()));

    // By domain too, and for Graph, whose app token carries no app role.
    let (status, body) = app_token(&ms, "contoso.example", GRAPH_DEFAULT).await;
    assert_eq!(status, 200, "{body}");
    let info = ms
        .app_token_info(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(info.directory, CONTOSO);
    assert_eq!(info.audience, GRAPH_RESOURCE);
    assert!(info.roles.is_empty());
}

#[tokio::test]
async fn graph_me_refuses_an_app_token() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let (_, body) = app_token(&ms, CONTOSO, GRAPH_DEFAULT).await;
    let resp = client()
        .get(format!("{}/v1.0/me", ms.base_url()))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "BadRequest");
}

#[tokio::test]
async fn client_credentials_before_consent_are_refused() {
    let ms = start().await;
    let (status, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), ("unauthorized_client", 700016));
    // Consent in one directory is not consent in another.
    consent_as(&ms, FABRIKAM, FABRIKAM_ADMIN).await;
    let (_, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(error_code(&body), ("unauthorized_client", 700016));
}

#[tokio::test]
async fn client_credentials_after_the_app_was_removed_are_refused() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let (status, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(status, 200);
    let issued = body["access_token"].as_str().unwrap().to_string();

    ms.remove_app_from_directory(CONTOSO);
    assert!(!ms.directory_consented(CONTOSO));
    let (status, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), ("unauthorized_client", 700016));
    assert!(
        ms.app_token_info(&issued).unwrap().valid,
        "issued tokens live on"
    );

    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let (status, _) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_credentials_need_a_directory_not_common_organizations_or_consumers() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    for tenant in ["common", "organizations"] {
        let (status, body) = app_token(&ms, tenant, OUTLOOK_DEFAULT).await;
        assert_eq!(status, 400, "{tenant}");
        assert_eq!(error_code(&body), ("invalid_request", 50059), "{tenant}");
    }
    let (status, body) = app_token(&ms, "consumers", OUTLOOK_DEFAULT).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), ("unauthorized_client", 70002));
    for tenant in ["0e9d8c7b-6a5f-4e3d-8c2b-1a0f9e8d7c6b", "unknown.example"] {
        let (status, body) = app_token(&ms, tenant, OUTLOOK_DEFAULT).await;
        assert_eq!(status, 400, "{tenant}");
        assert_eq!(error_code(&body), ("invalid_request", 90002), "{tenant}");
    }
}

#[tokio::test]
async fn client_credentials_ask_for_exactly_one_default_scope_of_a_known_resource() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let two = format!("{OUTLOOK_DEFAULT} {GRAPH_DEFAULT}");
    for (scope, expected) in [
        (
            "https://outlook.office.com/IMAP.AccessAsApp",
            ("invalid_scope", 1002012),
        ),
        (
            "openid https://outlook.office.com/.default",
            ("invalid_scope", 1002012),
        ),
        (two.as_str(), ("invalid_scope", 70011)),
        (
            "https://evil.example/.default",
            ("invalid_resource", 500011),
        ),
        ("", ("invalid_request", 900144)),
    ] {
        let (status, body) = app_token(&ms, CONTOSO, scope).await;
        assert_eq!(status, 400, "{scope}");
        assert_eq!(error_code(&body), expected, "{scope}");
    }
}

#[tokio::test]
async fn client_credentials_authenticate_the_client_as_every_grant_does() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    let form = |secret| {
        [
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", secret),
            ("scope", OUTLOOK_DEFAULT),
        ]
    };
    let (status, body) = token(&ms, CONTOSO, &form("wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), ("invalid_client", 7000215));
    let (status, body) = token(&ms, CONTOSO, &form("")).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), ("invalid_client", 7000218));

    // client_secret_basic works as well.
    let resp = client()
        .post(ms.token_endpoint(CONTOSO))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", OUTLOOK_DEFAULT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn token_requests_are_counted_per_directory_and_grant_type_failed_ones_too() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    app_token(&ms, "contoso.example", OUTLOOK_DEFAULT).await;
    app_token(&ms, CONTOSO, "openid").await;
    ms.set_fault_once(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    let resp = client()
        .post(ms.token_endpoint(CONTOSO))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", OUTLOOK_DEFAULT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    app_token(&ms, FABRIKAM, OUTLOOK_DEFAULT).await;
    app_token(&ms, "common", OUTLOOK_DEFAULT).await;
    let rt = ms.mint_refresh_token(CONTOSO_ADMIN);
    let (status, _) = token(
        &ms,
        CONTOSO,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", &rt),
            ("scope", "https://outlook.office.com/IMAP.AccessAsUser.All"),
        ],
    )
    .await;
    assert_eq!(status, 200);

    assert_eq!(ms.token_requests_in(CONTOSO, "client_credentials"), 4);
    assert_eq!(
        ms.token_requests_in("Contoso.Example", "client_credentials"),
        4
    );
    assert_eq!(ms.token_requests_in(CONTOSO, "refresh_token"), 1);
    assert_eq!(ms.token_requests_in(FABRIKAM, "client_credentials"), 1);
    assert_eq!(ms.token_requests_in("fabrikam.example", "refresh_token"), 0);
    assert_eq!(ms.token_requests_in("common", "client_credentials"), 1);
    assert_eq!(ms.token_requests(), 7);
}

#[tokio::test]
async fn expire_app_tokens_kills_app_tokens_and_leaves_users_tokens() {
    let ms = start().await;
    consent_as(&ms, CONTOSO, CONTOSO_ADMIN).await;
    ms.set_expires_in_as_string(true);
    let (_, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    assert_eq!(body["expires_in"], "3599");
    let app_at = body["access_token"].as_str().unwrap().to_string();
    let rt = ms.mint_refresh_token(CONTOSO_ADMIN);
    let (_, body) = token(
        &ms,
        "organizations",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", &rt),
            ("scope", "https://outlook.office.com/IMAP.AccessAsUser.All"),
        ],
    )
    .await;
    let user_at = body["access_token"].as_str().unwrap().to_string();
    assert!(ms.app_token_info(&user_at).is_none());

    ms.expire_app_tokens();
    assert!(!ms.app_token_info(&app_at).unwrap().valid);
    assert!(ms.access_token_info(&user_at).unwrap().valid);

    let (_, body) = app_token(&ms, CONTOSO, OUTLOOK_DEFAULT).await;
    let fresh = body["access_token"].as_str().unwrap();
    assert!(ms.app_token_info(fresh).unwrap().valid);
}
