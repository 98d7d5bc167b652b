//! End-to-end tests of the standards-only fake OpenID provider over real
//! HTTP on 127.0.0.1: everything is found by discovery, as a client would.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use mailconnect_sandbox::oidc::*;
use mailconnect_sandbox::{Fault, IdTokenFlaw, Rotation};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "mailconnect-client";
const SECRET: &str = "s3cr3t:with/odd&chars";
const REDIRECT: &str = "http://127.0.0.1:9999/api/oauth/oidc/callback";
const NONCE: &str = "n-0S6_WzA2Mj";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk_oidc";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn config() -> FakeOidcConfig {
    let mut cfg = FakeOidcConfig::new(CLIENT_ID, SECRET, REDIRECT);
    cfg.users = vec![
        OidcUser::new("alice@idp.example"),
        OidcUser::unverified("mallory@idp.example"),
    ];
    cfg
}

async fn start() -> FakeOidc {
    FakeOidc::start(config()).await.unwrap()
}

fn challenge() -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()))
}

/// What a client sends: `openid email offline_access` with a consent prompt.
fn auth_params() -> Vec<(&'static str, String)> {
    vec![
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", REDIRECT.into()),
        ("response_type", "code".into()),
        ("scope", "openid email offline_access".into()),
        ("state", "st-123".into()),
        ("nonce", NONCE.into()),
        ("code_challenge", challenge()),
        ("code_challenge_method", "S256".into()),
        ("prompt", "consent".into()),
    ]
}

fn with(
    mut params: Vec<(&'static str, String)>,
    key: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    params.retain(|(k, _)| *k != key);
    if let Some(v) = value {
        params.push((key, v.to_string()));
    }
    params
}

async fn discovery(idp: &FakeOidc) -> Value {
    let url = format!("{}/.well-known/openid-configuration", idp.issuer());
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// GETs authorize; the status, the redirect's query (if any) and the body.
async fn authorize_raw(
    idp: &FakeOidc,
    params: &[(&str, String)],
) -> (u16, Option<HashMap<String, String>>, String) {
    let resp = client()
        .get(idp.authorization_endpoint())
        .query(params)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let loc = resp.headers().get("location").map(|l| {
        let url = url::Url::parse(l.to_str().unwrap()).unwrap();
        assert!(url.as_str().starts_with(REDIRECT), "{url}");
        url.query_pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    (status, loc, resp.text().await.unwrap())
}

async fn code(idp: &FakeOidc, params: &[(&str, String)]) -> String {
    let (status, q, body) = authorize_raw(idp, params).await;
    assert_eq!(status, 302, "{body}");
    let q = q.unwrap();
    assert_eq!(q["state"], "st-123");
    q["code"].clone()
}

/// The error an authorize request is redirected with.
async fn authorize_error(idp: &FakeOidc, params: &[(&str, String)]) -> String {
    let (status, q, body) = authorize_raw(idp, params).await;
    assert_eq!(status, 302, "{body}");
    let q = q.unwrap();
    assert_eq!(q["state"], "st-123");
    assert!(!q.contains_key("code"));
    q["error"].clone()
}

fn basic() -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(CLIENT_ID), enc(SECRET)))
    )
}

/// POSTs to the token endpoint with client_secret_basic.
async fn token(idp: &FakeOidc, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = client()
        .post(idp.token_endpoint())
        .header("authorization", basic())
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn redeem(idp: &FakeOidc, code: &str) -> (u16, Value) {
    token(
        idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

async fn refresh(idp: &FakeOidc, rt: &str, scope: Option<&str>) -> (u16, Value) {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    token(idp, &form).await
}

/// Signs in with the standard parameters; the token response.
async fn sign_in(idp: &FakeOidc) -> Value {
    let code = code(idp, &auth_params()).await;
    let (status, body) = redeem(idp, &code).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn verify_id_token(idp: &FakeOidc, id_token: &str) -> Value {
    let d = discovery(idp).await;
    let jwks: Value = client()
        .get(d["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jsonwebtoken::decode_header(id_token).unwrap().kid.unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid published in the JWKS");
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[d["issuer"].as_str().unwrap()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(id_token, &dk, &v)
        .unwrap()
        .claims
}

async fn userinfo(idp: &FakeOidc, at: &str) -> (u16, Option<String>, Value) {
    let resp = client()
        .get(idp.userinfo_endpoint())
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, www, body)
}

async fn revoke(idp: &FakeOidc, form: &[(&str, &str)], auth: Option<String>) -> u16 {
    let mut req = client().post(idp.revocation_endpoint()).form(form);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn discovery_names_every_endpoint_under_the_issuer() {
    let idp = start().await;
    let d = discovery(&idp).await;
    let base = idp.base_url();
    assert_eq!(d["issuer"], base.as_str());
    assert_eq!(idp.issuer(), base);
    for (field, url) in [
        ("authorization_endpoint", idp.authorization_endpoint()),
        ("token_endpoint", idp.token_endpoint()),
        ("userinfo_endpoint", idp.userinfo_endpoint()),
        ("revocation_endpoint", idp.revocation_endpoint()),
        ("jwks_uri", idp.jwks_uri()),
    ] {
        assert_eq!(d[field], url.as_str(), "{field}");
        assert!(url.starts_with(&base), "{url}");
    }
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        d["scopes_supported"],
        serde_json::json!(["openid", "profile", "email", "offline_access"])
    );
    assert_eq!(idp.discovery_requests(), 1);
    let jwks: Value = client()
        .get(idp.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], mailconnect_sandbox::KEY_ID);
    assert_eq!(idp.jwks_requests(), 1);
    idp.set_jwks_down(true);
    let resp = client().get(idp.jwks_uri()).send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn the_code_flow_issues_verified_tokens_and_a_refresh_token_with_consent() {
    let idp = start().await;
    let code = code(&idp, &auth_params()).await;
    assert!(code.len() > 40);
    let (status, body) = redeem(&idp, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "openid email offline_access");
    let at = body["access_token"].as_str().unwrap();
    let rt = body["refresh_token"].as_str().unwrap();
    let claims = verify_id_token(&idp, body["id_token"].as_str().unwrap()).await;
    let alice = OidcUser::new("alice@idp.example");
    assert_eq!(claims["sub"], alice.sub.as_str());
    assert_eq!(claims["nonce"], NONCE);
    assert_eq!(claims["email"], "alice@idp.example");
    assert_eq!(claims["email_verified"], true);
    assert!(claims.get("name").is_none(), "no profile scope: {claims}");
    let at_hash = URL_SAFE_NO_PAD.encode(&Sha256::digest(at.as_bytes())[..16]);
    assert_eq!(claims["at_hash"], at_hash.as_str());

    let info = idp.access_token_info(at).unwrap();
    assert_eq!(info.upn, "alice@idp.example");
    assert!(info.valid);
    assert!(idp.refresh_token_is_live(rt));
    assert_eq!(idp.code_redemptions(), 1);
    let last = idp.last_token_request().unwrap();
    assert_eq!(last["code"], "[present]");
    assert_eq!(last["code_verifier"], "[present]");
    assert!(!last.contains_key("client_secret"), "basic: {last:?}");
    let secrets = idp.issued_secrets();
    for s in [SECRET, code.as_str(), at, rt] {
        assert!(secrets.iter().any(|x| x == s), "{s}");
    }
}

#[tokio::test]
async fn offline_access_needs_a_consent_prompt() {
    let idp = start().await;
    let params = with(auth_params(), "prompt", None);
    let c = code(&idp, &params).await;
    let (status, body) = redeem(&idp, &c).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "openid email");
    assert!(body.get("refresh_token").is_none(), "{body}");
    // prompt=none signs in silently, and gets no refresh token either.
    let params = with(auth_params(), "prompt", Some("none"));
    let (_, body) = redeem(&idp, &code(&idp, &params).await).await;
    assert!(body.get("refresh_token").is_none(), "{body}");
}

#[tokio::test]
async fn authorize_refuses_what_the_standards_refuse() {
    let idp = start().await;
    // Unknown client or redirect URI: a page, never a redirect.
    for (key, value) in [
        ("client_id", Some("someone-else")),
        ("client_id", None),
        ("redirect_uri", Some("http://127.0.0.1:9999/elsewhere")),
        ("redirect_uri", None),
    ] {
        let (status, q, _) = authorize_raw(&idp, &with(auth_params(), key, value)).await;
        assert_eq!((status, q), (400, None), "{key}={value:?}");
    }
    let p = auth_params;
    assert_eq!(
        authorize_error(&idp, &with(p(), "scope", Some("email"))).await,
        "invalid_scope"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "scope", Some("openid mail"))).await,
        "invalid_scope"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "response_type", Some("token"))).await,
        "unsupported_response_type"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "code_challenge", None)).await,
        "invalid_request"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "code_challenge_method", Some("plain"))).await,
        "invalid_request"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "code_challenge", Some("short"))).await,
        "invalid_request"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "prompt", Some("none consent"))).await,
        "invalid_request"
    );
    assert_eq!(
        authorize_error(&idp, &with(p(), "response_mode", Some("fragment"))).await,
        "invalid_request"
    );
    idp.set_authorize_error(Some(("access_denied".into(), "no".into())));
    assert_eq!(authorize_error(&idp, &p()).await, "access_denied");
    idp.set_authorize_error(None);
    // Unknown parameters are ignored (RFC 6749 §3.1).
    let extra = with(p(), "resource", Some("https://mail.idp.example"));
    code(&idp, &extra).await;
    // A repeated parameter is refused.
    let mut twice = p();
    twice.push(("scope", "openid".into()));
    let (status, _, _) = authorize_raw(&idp, &twice).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_code_is_single_use_and_bound_to_its_redirect_uri_and_verifier() {
    let idp = start().await;
    let c = code(&idp, &auth_params()).await;
    let wrong_verifier = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("redirect_uri", REDIRECT),
        (
            "code_verifier",
            "another-verifier-of-sufficient-length-0123456789",
        ),
    ];
    let (status, body) = token(&idp, &wrong_verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let other_redirect = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("redirect_uri", "http://127.0.0.1:9999/elsewhere"),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = token(&idp, &other_redirect).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let no_redirect = [
        ("grant_type", "authorization_code"),
        ("code", c.as_str()),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = token(&idp, &no_redirect).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(redeem(&idp, &c).await.0, 200);
    let (status, body) = redeem(&idp, &c).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let late = code(&idp, &auth_params()).await;
    idp.expire_codes();
    assert_eq!(redeem(&idp, &late).await.1["error"], "invalid_grant");
    assert_eq!(idp.code_redemptions(), 1);
}

#[tokio::test]
async fn the_client_authenticates_one_way_only_and_as_configured() {
    let idp = start().await;
    let c = code(&idp, &auth_params()).await;
    let form = |secret: &'static str| {
        vec![
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", secret),
            ("code", c.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ]
    };
    // client_secret_post with the wrong secret: 401 naming the scheme.
    let resp = client()
        .post(idp.token_endpoint())
        .form(&form("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    // Both methods at once: refused.
    let resp = client()
        .post(idp.token_endpoint())
        .header("authorization", basic())
        .form(&form(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // No authentication at all.
    let (status, body) = {
        let resp = client()
            .post(idp.token_endpoint())
            .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // client_secret_post: works, and the secret is not kept.
    let resp = client()
        .post(idp.token_endpoint())
        .form(&form(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        idp.last_token_request().unwrap()["client_secret"],
        "[present]"
    );

    // A provider that allows only client_secret_basic says so and means it.
    let mut cfg = config();
    cfg.auth_methods = vec![ClientAuthMethod::Basic];
    let strict = FakeOidc::start(cfg).await.unwrap();
    assert_eq!(
        discovery(&strict).await["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic"])
    );
    let c = code(&strict, &auth_params()).await;
    let resp = client()
        .post(strict.token_endpoint())
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("code", c.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(redeem(&strict, &c).await.0, 200);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_may_narrow_but_not_widen_the_scope() {
    let idp = start().await;
    let first = sign_in(&idp).await;
    let rt1 = first["refresh_token"].as_str().unwrap();
    let (status, body) = refresh(&idp, rt1, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "openid email offline_access");
    let claims = verify_id_token(&idp, body["id_token"].as_str().unwrap()).await;
    assert!(claims.get("nonce").is_none());
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt1);
    // Strict rotation: the used one is dead.
    assert!(!idp.refresh_token_is_live(rt1));
    assert_eq!(refresh(&idp, rt1, None).await.1["error"], "invalid_grant");
    // Narrower: fine. Wider: invalid_scope.
    let (status, body) = refresh(&idp, &rt2, Some("openid profile")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = refresh(&idp, &rt2, Some("openid")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "openid");
    assert_eq!(idp.refresh_grants(), 2);

    // KeepOld: the used one lives on.
    idp.set_rotation(Rotation::KeepOld);
    let rt3 = body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh(&idp, &rt3, None).await.0, 200);
    assert!(idp.refresh_token_is_live(&rt3));
    // The user's grants end.
    idp.revoke_user("Alice@idp.example");
    assert_eq!(refresh(&idp, &rt3, None).await.1["error"], "invalid_grant");
}

#[tokio::test]
async fn userinfo_answers_the_claims_the_scopes_allow() {
    let idp = start().await;
    idp.set_email_in_id_token(false);
    let body = sign_in(&idp).await;
    let claims = verify_id_token(&idp, body["id_token"].as_str().unwrap()).await;
    assert!(claims.get("email").is_none(), "{claims}");
    let at = body["access_token"].as_str().unwrap();
    let (status, _, info) = userinfo(&idp, at).await;
    assert_eq!(status, 200);
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["email"], "alice@idp.example");
    assert_eq!(info["email_verified"], true);
    assert!(info.get("name").is_none());
    // The token in a form body works too (RFC 6750 §2.2).
    let resp = client()
        .post(idp.userinfo_endpoint())
        .form(&[("access_token", at)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // No token: a bare challenge. A dead one: invalid_token.
    let resp = client().get(idp.userinfo_endpoint()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"fake-oidc\""
    );
    idp.set_userinfo_subject(Some("someone-else".into()));
    assert_eq!(userinfo(&idp, at).await.2["sub"], "someone-else");
    idp.set_userinfo_subject(None);
    idp.set_userinfo_down(true);
    assert_eq!(userinfo(&idp, at).await.0, 503);
    idp.set_userinfo_down(false);
    idp.expire_access_tokens();
    let (status, www, _) = userinfo(&idp, at).await;
    assert_eq!(status, 401);
    assert!(www.unwrap().contains("error=\"invalid_token\""));
    // With profile: the name.
    let params = with(auth_params(), "scope", Some("openid profile"));
    let (_, body) = redeem(&idp, &code(&idp, &params).await).await;
    let (_, _, info) = userinfo(&idp, body["access_token"].as_str().unwrap()).await;
    assert_eq!(info["name"], "Alice");
    assert!(info.get("email").is_none());
}

#[tokio::test]
async fn revocation_needs_the_client_and_ends_the_whole_grant() {
    let idp = start().await;
    let body = sign_in(&idp).await;
    let at = body["access_token"].as_str().unwrap();
    let rt = body["refresh_token"].as_str().unwrap();
    let form = [("token", rt), ("token_type_hint", "refresh_token")];
    // Without client authentication: refused, nothing revoked.
    assert_eq!(revoke(&idp, &form, None).await, 401);
    idp.set_revoke_refused(true);
    assert_eq!(revoke(&idp, &form, Some(basic())).await, 401);
    idp.set_revoke_refused(false);
    idp.set_revoke_fault(true);
    assert_eq!(revoke(&idp, &form, Some(basic())).await, 503);
    idp.set_revoke_fault(false);
    assert!(idp.refresh_token_is_live(rt));
    assert_eq!(idp.revocations(), 0);
    // Revoked: the refresh token and the grant's access token.
    assert_eq!(revoke(&idp, &form, Some(basic())).await, 200);
    assert!(!idp.refresh_token_is_live(rt));
    assert!(!idp.access_token_info(at).unwrap().valid);
    assert_eq!(idp.revocations(), 1);
    // Again, or an unknown token: 200, nothing more revoked (RFC 7009 §2.2).
    assert_eq!(revoke(&idp, &form, Some(basic())).await, 200);
    assert_eq!(
        revoke(&idp, &[("token", "nonsense")], Some(basic())).await,
        200
    );
    assert_eq!(revoke(&idp, &[("token", "")], Some(basic())).await, 400);
    assert_eq!(idp.revocations(), 1);
    // An access token alone.
    let other = sign_in(&idp).await;
    let at2 = other["access_token"].as_str().unwrap();
    assert_eq!(revoke(&idp, &[("token", at2)], Some(basic())).await, 200);
    assert!(!idp.access_token_info(at2).unwrap().valid);
    assert!(idp.refresh_token_is_live(other["refresh_token"].as_str().unwrap()));
    assert_eq!(idp.revocations(), 2);
}

#[tokio::test]
async fn the_consent_page_signs_in_the_chosen_user_or_declines() {
    let idp = start().await;
    idp.set_interactive(true);
    let (status, q, html) = authorize_raw(&idp, &auth_params()).await;
    assert_eq!((status, q), (200, None));
    assert!(html.contains("mallory@idp.example"), "{html}");
    let marker = "name=\"request\" value=\"";
    let start = html.find(marker).unwrap() + marker.len();
    let id = &html[start..start + html[start..].find('"').unwrap()];
    let consent = format!("{}/consent", idp.base_url());
    let resp = client()
        .post(&consent)
        .form(&[
            ("request", id),
            ("user", "mallory@idp.example"),
            ("action", "accept"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    let (_, body) = redeem(&idp, &q["code"]).await;
    let claims = verify_id_token(&idp, body["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["email"], "mallory@idp.example");
    assert_eq!(claims["email_verified"], false);
    // The same request cannot be answered twice; a new one can be declined.
    let again = client()
        .post(&consent)
        .form(&[("request", id), ("action", "cancel")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let (_, _, html) = authorize_raw(&idp, &auth_params()).await;
    let start = html.find(marker).unwrap() + marker.len();
    let id = &html[start..start + html[start..].find('"').unwrap()];
    let resp = client()
        .post(&consent)
        .form(&[("request", id), ("action", "cancel")])
        .send()
        .await
        .unwrap();
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-123");
}

#[tokio::test]
async fn the_next_login_and_login_hint_pick_the_user() {
    let idp = start().await;
    idp.add_user(OidcUser::new("carol@idp.example"));
    idp.set_user_for_next_login("carol@idp.example");
    let body = sign_in(&idp).await;
    let claims = verify_id_token(&idp, body["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["email"], "carol@idp.example");
    let hinted = with(auth_params(), "login_hint", Some("mallory@idp.example"));
    let (_, body) = redeem(&idp, &code(&idp, &hinted).await).await;
    let claims = verify_id_token(&idp, body["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["email"], "mallory@idp.example");
    idp.set_user_for_next_login("nobody@idp.example");
    assert_eq!(authorize_error(&idp, &auth_params()).await, "access_denied");
}

#[tokio::test]
async fn faults_and_id_token_flaws_apply_to_the_token_endpoint() {
    let idp = start().await;
    let c = code(&idp, &auth_params()).await;
    idp.set_fault_once(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    let resp = client()
        .post(idp.token_endpoint())
        .header("authorization", basic())
        .form(&[("grant_type", "authorization_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    idp.set_fault_once(Fault::Unavailable);
    assert_eq!(redeem(&idp, &c).await.0, 503);
    idp.set_fault_once(Fault::Slow(Duration::from_millis(50)));
    idp.set_id_token_flaw(Some(IdTokenFlaw::Issuer("https://elsewhere".into())));
    let (status, body) = redeem(&idp, &c).await;
    assert_eq!(status, 200, "{body}");
    let id_token = body["id_token"].as_str().unwrap();
    let payload = id_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["iss"], "https://elsewhere");
    idp.set_id_token_flaw(Some(IdTokenFlaw::Omitted));
    let rt = body["refresh_token"].as_str().unwrap();
    let (_, body) = refresh(&idp, rt, None).await;
    assert!(body.get("id_token").is_none(), "{body}");
    assert_eq!(idp.token_requests(), 4);
    assert_eq!(idp.token_requests_in_flight(), 0);
}

/// An EC P-256 key pair of the client, and its public JWK (no `kid`: the
/// fake knows keys by their thumbprint).
fn client_key() -> (jsonwebtoken::EncodingKey, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (key, jwk)
}

/// A client assertion for the token endpoint, with `changes` made to its
/// claims (`null` removes one).
fn assertion(idp: &FakeOidc, key: &jsonwebtoken::EncodingKey, kid: &str, changes: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": idp.token_endpoint(),
        "jti": uuid::Uuid::new_v4().to_string(), "iat": now, "exp": now + 300,
    });
    for (k, v) in changes.as_object().unwrap() {
        match v {
            Value::Null => claims.as_object_mut().unwrap().remove(k),
            v => claims.as_object_mut().unwrap().insert(k.clone(), v.clone()),
        };
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// A token request authenticated by `assertion` alone; status and error.
async fn token_with(idp: &FakeOidc, code: &str, assertion: &str) -> (u16, Value) {
    let resp = client()
        .post(idp.token_endpoint())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", CLIENT_ID),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn private_key_jwt_takes_only_a_registered_keys_fresh_assertion_for_the_token_endpoint() {
    use mailconnect_sandbox::idp::client_assertion::thumbprint;
    // RFC 7638 3.1's example.
    let rfc = serde_json::json!({"kty": "RSA", "e": "AQAB", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
    assert_eq!(
        thumbprint(&rfc).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );

    let idp = start().await;
    // Off by default: not listed, and refused.
    let d = discovery(&idp).await;
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        Value::Null
    );
    let (key, jwk) = client_key();
    let kid = thumbprint(&jwk).unwrap();
    idp.register_client_jwks(&serde_json::json!({"keys": [jwk]}))
        .unwrap();
    let c = code(&idp, &auth_params()).await;
    let (status, body) = token_with(
        &idp,
        &c,
        &assertion(&idp, &key, &kid, Value::Object(Default::default())),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );

    idp.set_auth_methods(vec![ClientAuthMethod::PrivateKeyJwt]);
    let d = discovery(&idp).await;
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["private_key_jwt"])
    );
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        serde_json::json!(["PS256", "RS256", "ES256"])
    );
    // A secret is refused for a private_key_jwt-only client.
    assert_eq!(redeem(&idp, &c).await.0, 401);
    let (other_key, _) = client_key();
    let now = chrono::Utc::now().timestamp();
    for (says, bad) in [
        (
            "aud",
            assertion(&idp, &key, &kid, serde_json::json!({"aud": idp.issuer()})),
        ),
        (
            "iss",
            assertion(&idp, &key, &kid, serde_json::json!({"iss": "someone-else"})),
        ),
        (
            "sub",
            assertion(&idp, &key, &kid, serde_json::json!({"sub": "someone-else"})),
        ),
        (
            "jti",
            assertion(&idp, &key, &kid, serde_json::json!({"jti": null})),
        ),
        (
            "expired",
            assertion(&idp, &key, &kid, serde_json::json!({"exp": now - 60})),
        ),
        (
            "more than 600 s",
            assertion(&idp, &key, &kid, serde_json::json!({"exp": now + 3600})),
        ),
        (
            "thumbprint",
            assertion(&idp, &key, "key-1", serde_json::json!({})),
        ),
        (
            "signature",
            assertion(&idp, &other_key, &kid, serde_json::json!({})),
        ),
    ] {
        let (status, body) = token_with(&idp, &c, &bad).await;
        assert_eq!(status, 401, "{says}: {body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(says),
            "{says}: {body}"
        );
    }
    // With a Basic header too: two methods at once.
    let good = assertion(&idp, &key, &kid, serde_json::json!({}));
    let resp = client()
        .post(idp.token_endpoint())
        .header("authorization", basic())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", good.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(idp.client_assertions().is_empty());

    // The good one redeems the code, once.
    let (status, body) = token_with(&idp, &c, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        idp.last_token_request().unwrap()["client_assertion"],
        "[present]"
    );
    let c2 = code(&idp, &auth_params()).await;
    let (status, body) = token_with(&idp, &c2, &good).await;
    assert_eq!(status, 401);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("used already"));
    // Revocation takes an assertion for the token endpoint too.
    let rt = body_rt(&idp, &key, &kid).await;
    let revoked = client()
        .post(idp.revocation_endpoint())
        .form(&[
            ("token", rt.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            (
                "client_assertion",
                &assertion(&idp, &key, &kid, serde_json::json!({})),
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert!(!idp.refresh_token_is_live(&rt));
    let seen = idp.client_assertions();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|a| a.alg == "ES256" && a.kid == kid && a.client_id == CLIENT_ID));
}

/// A refresh token issued through a code redeemed with a fresh assertion.
async fn body_rt(idp: &FakeOidc, key: &jsonwebtoken::EncodingKey, kid: &str) -> String {
    let c = code(idp, &auth_params()).await;
    let (status, body) =
        token_with(idp, &c, &assertion(idp, key, kid, serde_json::json!({}))).await;
    assert_eq!(status, 200, "{body}");
    body["refresh_token"].as_str().unwrap().to_owned()
}
