//! The interactive sign-in/consent page of both fakes (`interactive: true`):
//! accept → code, cancel → access_denied, everything echoed is escaped, a
//! page answers once.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mailconnect_sandbox::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value";
const MS_REDIRECT: &str = "http://127.0.0.1:9999/api/oauth/microsoft/callback";
const G_REDIRECT: &str = "http://127.0.0.1:9999/api/oauth/google/callback";
const MS_SCOPE: &str = "openid profile email offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send User.Read";
const STATE: &str = "st ate/+&=";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn pkce() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk_consent_page".to_string();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn microsoft(app_name: &str) -> FakeMicrosoft {
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, MS_REDIRECT);
    cfg.interactive = true;
    cfg.app_name = app_name.to_string();
    cfg.users = vec![
        FakeUser::work("adele.vance@contoso.example"),
        FakeUser::work("megan.bowen@contoso.example"),
        FakeUser::personal("someone@outlook.example"),
    ];
    FakeMicrosoft::start(cfg).await.unwrap()
}

async fn google() -> FakeGoogle {
    let mut cfg = FakeGoogleConfig::new("id.apps.googleusercontent.com", SECRET, G_REDIRECT);
    cfg.interactive = true;
    cfg.users = vec![
        GoogleUser::gmail("alex@gmail.example"),
        GoogleUser::workspace("sam@workspace.example"),
    ];
    FakeGoogle::start(cfg).await.unwrap()
}

/// GETs the URL; returns (status, body, location query).
async fn get(url: &str, params: &[(&str, &str)]) -> (u16, String, HashMap<String, String>) {
    let resp = client().get(url).query(params).send().await.unwrap();
    finish(resp).await
}

async fn finish(resp: reqwest::Response) -> (u16, String, HashMap<String, String>) {
    let status = resp.status().as_u16();
    let mut q = HashMap::new();
    if let Some(loc) = resp.headers().get("location") {
        let url = url::Url::parse(loc.to_str().unwrap()).unwrap();
        q = url.query_pairs().into_owned().collect();
    }
    (status, resp.text().await.unwrap_or_default(), q)
}

/// The value of the hidden `request` field of a consent page.
fn request_id(html: &str) -> String {
    let marker = "name=\"request\" value=\"";
    let start = html.find(marker).expect("the page has a request id") + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_string()
}

async fn answer(url: &str, form: &[(&str, &str)]) -> (u16, String, HashMap<String, String>) {
    let resp = client().post(url).form(form).send().await.unwrap();
    finish(resp).await
}

fn ms_params<'a>(challenge: &'a str, login_hint: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![
        ("client_id", CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", MS_REDIRECT),
        ("scope", MS_SCOPE),
        ("state", STATE),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("nonce", "n-1"),
        ("prompt", "select_account"),
    ];
    if let Some(h) = login_hint {
        p.push(("login_hint", h));
    }
    p
}

#[tokio::test]
async fn microsoft_accept_signs_in_the_chosen_user() {
    let ms = microsoft("mailconnect").await;
    let (verifier, challenge) = pkce();
    let authorize = ms.authorize_endpoint("common");
    let (status, html, q) = get(
        &authorize,
        &ms_params(&challenge, Some("megan.bowen@contoso.example")),
    )
    .await;
    assert_eq!(status, 200, "the page, not a redirect: {q:?}");
    assert!(html.contains("Sandbox identity provider — not Microsoft"));
    for user in [
        "adele.vance@contoso.example",
        "megan.bowen@contoso.example",
        "someone@outlook.example",
    ] {
        assert!(
            html.contains(&format!("data-testid=\"sandbox-user-{user}\"")),
            "{user}"
        );
    }
    assert!(
        html.contains("value=\"megan.bowen@contoso.example\" data-testid=\"sandbox-user-megan.bowen@contoso.example\" checked"),
        "the login_hint user is pre-selected"
    );
    for words in [
        "Read and write your mail over IMAP",
        "Send mail over SMTP",
        "Your email address",
        "Stay signed in (offline access)",
        "data-testid=\"sandbox-accept\"",
        "data-testid=\"sandbox-cancel\"",
    ] {
        assert!(html.contains(words), "{words}");
    }
    assert_eq!(ms.code_redemptions(), 0);

    // Accept as another user than the hint.
    let consent = authorize.replace("/authorize", "/consent");
    let id = request_id(&html);
    let (status, _, q) = answer(
        &consent,
        &[
            ("request", id.as_str()),
            ("user", "adele.vance@contoso.example"),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    let code = q.get("code").expect("a code").clone();

    // The code works and belongs to the chosen user.
    let resp = client()
        .post(ms.token_endpoint("common"))
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", MS_REDIRECT),
            ("code_verifier", verifier.as_str()),
            (
                "scope",
                "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let at = body["access_token"].as_str().unwrap();
    assert_eq!(
        ms.access_token_info(at).unwrap().upn,
        "adele.vance@contoso.example"
    );

    // A page answers once.
    let (status, html, q) = answer(
        &consent,
        &[
            ("request", id.as_str()),
            ("user", "adele.vance@contoso.example"),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(q.is_empty() && html.contains("expired or was already answered"));
}

#[tokio::test]
async fn microsoft_cancel_is_access_denied() {
    let ms = microsoft("mailconnect").await;
    let (_, challenge) = pkce();
    let authorize = ms.authorize_endpoint("organizations");
    let (status, html, _) = get(&authorize, &ms_params(&challenge, None)).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("data-testid=\"sandbox-user-adele.vance@contoso.example\" checked"),
        "without a hint the first user is pre-selected"
    );
    let id = request_id(&html);
    // Another tenant path cannot answer it.
    let (status, _, _) = answer(
        &format!("{}/common/oauth2/v2.0/consent", ms.base_url()),
        &[("request", id.as_str()), ("action", "cancel")],
    )
    .await;
    assert_eq!(status, 400);

    let (_, html, _) = get(&authorize, &ms_params(&challenge, None)).await;
    let id = request_id(&html);
    let (status, _, q) = answer(
        &authorize.replace("/authorize", "/consent"),
        &[("request", id.as_str()), ("action", "cancel")],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert!(q["error_description"].starts_with("AADSTS65004: User declined to consent"));
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    assert!(!q.contains_key("code"));

    // The tenant rule still applies to the user picked on the page.
    let (_, html, _) = get(&authorize, &ms_params(&challenge, None)).await;
    let (status, _, q) = answer(
        &authorize.replace("/authorize", "/consent"),
        &[
            ("request", request_id(&html).as_str()),
            ("user", "someone@outlook.example"),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    assert!(q["error_description"].starts_with("AADSTS50020"), "{q:?}");

    // Strict checks run before the page: a wrong redirect URI gets no page.
    let (status, html, _) = get(
        &authorize,
        &[
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", "http://127.0.0.1:1/elsewhere"),
            ("scope", MS_SCOPE),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(html.contains("AADSTS50011") && !html.contains("sandbox-accept"));
    // A missing PKCE challenge is redirected as an error, without a page.
    let (status, _, q) = get(
        &authorize,
        &[
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", MS_REDIRECT),
            ("scope", MS_SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"));
}

#[tokio::test]
async fn microsoft_a_failed_next_authorization_shows_the_page_then_the_error() {
    let ms = microsoft("mailconnect").await;
    let (_, challenge) = pkce();
    let authorize = ms.authorize_endpoint("common");
    let consent = authorize.replace("/authorize", "/consent");
    let accept = |html: &str| {
        let id = request_id(html);
        let consent = consent.clone();
        async move {
            answer(
                &consent,
                &[
                    ("request", id.as_str()),
                    ("user", "adele.vance@contoso.example"),
                    ("action", "accept"),
                ],
            )
            .await
        }
    };

    ms.fail_next_authorize(50076);
    let (status, html, _) = get(&authorize, &ms_params(&challenge, None)).await;
    assert_eq!(status, 200, "the user signs in on the page first");
    let (status, _, q) = accept(&html).await;
    assert_eq!(status, 302);
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("interaction_required")
    );
    assert!(q["error_description"].starts_with("AADSTS50076: "));
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    assert!(!q.contains_key("code"));

    let (_, html, _) = get(&authorize, &ms_params(&challenge, None)).await;
    let (_, _, q) = accept(&html).await;
    assert!(q.contains_key("code"), "only once: {q:?}");
}

#[tokio::test]
async fn the_page_escapes_what_it_echoes() {
    let ms = microsoft("<script>alert(1)</script> & \"co\"").await;
    ms.add_user(FakeUser {
        name: "<img src=x onerror=alert(2)>".into(),
        ..FakeUser::work("o'brien+<b>@contoso.example")
    });
    let (_, challenge) = pkce();
    let scope = format!("{MS_SCOPE} https://outlook.office.com/<i>evil</i>");
    let mut params = ms_params(&challenge, None);
    params.retain(|(k, _)| *k != "scope");
    params.push(("scope", &scope));
    let resp = client()
        .get(ms.authorize_endpoint("common"))
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"));
    let html = resp.text().await.unwrap();
    for raw in ["<script>", "<img", "<b>", "<i>", "\"co\""] {
        assert!(!html.contains(raw), "{raw} is echoed unescaped");
    }
    for escaped in [
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;co&quot;",
        "&lt;img src=x onerror=alert(2)&gt;",
        "data-testid=\"sandbox-user-o&#39;brien+&lt;b&gt;@contoso.example\"",
        "&lt;i&gt;evil&lt;/i&gt;",
    ] {
        assert!(html.contains(escaped), "{escaped} missing");
    }
    assert!(!html.to_ascii_lowercase().contains("<script"));
}

#[tokio::test]
async fn google_accept_and_cancel() {
    let g = google().await;
    let (_, challenge) = pkce();
    let params = [
        ("client_id", "id.apps.googleusercontent.com"),
        ("response_type", "code"),
        ("redirect_uri", G_REDIRECT),
        ("scope", "openid email https://mail.google.com/"),
        ("state", STATE),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("prompt", "consent"),
        ("login_hint", "sam@workspace.example"),
    ];
    let (status, html, _) = get(&g.auth_url(), &params).await;
    assert_eq!(status, 200);
    assert!(html.contains("Sandbox identity provider — not Google"));
    assert!(html.contains("data-testid=\"sandbox-user-sam@workspace.example\" checked"));
    assert!(html.contains("data-testid=\"sandbox-user-alex@gmail.example\""));
    for words in [
        "Read and write your mail over IMAP",
        "send mail over SMTP",
        "Your email address",
        "Stay signed in (offline access)",
    ] {
        assert!(html.contains(words), "{words}");
    }
    let consent = g.auth_url().replace("/auth", "/consent");
    let (status, _, q) = answer(
        &consent,
        &[
            ("request", request_id(&html).as_str()),
            ("user", "sam@workspace.example"),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    assert!(q.contains_key("code"));
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    assert_eq!(q.get("hd").map(String::as_str), Some("workspace.example"));

    let (_, html, _) = get(&g.auth_url(), &params).await;
    let (status, _, q) = answer(
        &consent,
        &[
            ("request", request_id(&html).as_str()),
            ("action", "cancel"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    assert!(!q.contains_key("code"));

    // An unknown user or a made-up request id gets no code.
    let (_, html, _) = get(&g.auth_url(), &params).await;
    let (status, _, q) = answer(
        &consent,
        &[
            ("request", request_id(&html).as_str()),
            ("user", "nobody@gmail.example"),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(q.is_empty());
    let (status, _, _) = answer(
        &consent,
        &[
            ("request", "made-up"),
            ("user", "alex@gmail.example"),
            ("action", "accept"),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_the_flag_authorize_still_redirects_at_once() {
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, MS_REDIRECT);
    assert!(!cfg.interactive, "auto-consent stays the default");
    cfg.users = vec![FakeUser::work("ops@contoso.com")];
    let ms = FakeMicrosoft::start(cfg).await.unwrap();
    let (_, challenge) = pkce();
    let (status, _, q) = get(
        &ms.authorize_endpoint("common"),
        &ms_params(&challenge, None),
    )
    .await;
    assert_eq!(status, 302);
    assert!(q.contains_key("code"));
    ms.set_interactive(true);
    let (status, _, _) = get(
        &ms.authorize_endpoint("common"),
        &ms_params(&challenge, None),
    )
    .await;
    assert_eq!(status, 200);
}
