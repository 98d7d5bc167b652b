//! End-to-end tests of the fake Google provider over real HTTP on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use mailconnect_sandbox::google::*;
use mailconnect_sandbox::Fault;
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "123456789012-sandbox.apps.googleusercontent.com";
const SECRET: &str = "GOCSPX-s3cr3t_value";
const REDIRECT: &str = "http://127.0.0.1:9999/oauth/google/callback";
const SCOPE: &str = "openid email https://mail.google.com/";
const GRANTED: &str =
    "https://mail.google.com/ openid https://www.googleapis.com/auth/userinfo.email";
const NONCE: &str = "n-0S6_WzA2Mj";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn config() -> FakeGoogleConfig {
    let mut cfg = FakeGoogleConfig::new(CLIENT_ID, SECRET, REDIRECT);
    cfg.users = vec![
        GoogleUser::gmail("alice@gmail.com"),
        GoogleUser::unverified("mallory@gmail.com"),
        GoogleUser::workspace("bob@example.com"),
    ];
    cfg
}

async fn start() -> FakeGoogle {
    FakeGoogle::start(config()).await.unwrap()
}

fn pkce() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk_google".to_string();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The standard authorize parameters mailconnect sends.
fn auth_params(challenge: &str) -> Vec<(&'static str, String)> {
    vec![
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", REDIRECT.into()),
        ("response_type", "code".into()),
        ("scope", SCOPE.into()),
        ("state", "st-123".into()),
        ("nonce", NONCE.into()),
        ("code_challenge", challenge.into()),
        ("code_challenge_method", "S256".into()),
        ("access_type", "offline".into()),
        ("prompt", "consent".into()),
        ("include_granted_scopes", "true".into()),
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

/// GETs authorize; returns the status, the redirect's query parameters (if
/// it redirected) and the body.
async fn authorize_raw(
    g: &FakeGoogle,
    params: &[(&str, String)],
) -> (u16, Option<HashMap<String, String>>, String) {
    let resp = client()
        .get(g.auth_url())
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

/// Authorizes with the standard parameters; returns the redirect parameters.
async fn authorize(g: &FakeGoogle, params: &[(&str, String)]) -> HashMap<String, String> {
    let (status, q, body) = authorize_raw(g, params).await;
    assert_eq!(status, 302, "{body}");
    let q = q.unwrap();
    assert!(q.contains_key("code"), "{q:?}");
    q
}

async fn token(g: &FakeGoogle, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = client()
        .post(g.token_url())
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn redeem(g: &FakeGoogle, code: &str, verifier: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("code", code),
        ("redirect_uri", REDIRECT),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    token(g, &form).await
}

async fn refresh(g: &FakeGoogle, rt: &str) -> (u16, Value) {
    token(
        g,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", rt),
        ],
    )
    .await
}

/// Full sign-in with the standard parameters (plus `extra` overrides).
async fn sign_in(g: &FakeGoogle) -> Value {
    let (verifier, challenge) = pkce();
    let q = authorize(g, &auth_params(&challenge)).await;
    let (status, body) = redeem(g, &q["code"], Some(&verifier)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn assert_error(status: u16, body: &Value, want_status: u16, error: &str, desc: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_description"], desc, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

async fn verify_id_token(g: &FakeGoogle, id_token: &str) -> Value {
    let jwks: Value = client()
        .get(g.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    let kid = header.kid.unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid published in the JWKS");
    assert_eq!(key["alg"], "RS256");
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[g.issuer()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &dk, &v)
        .unwrap()
        .claims;
    let mut bad = v.clone();
    bad.set_audience(&["someone-else.apps.googleusercontent.com"]);
    assert!(jsonwebtoken::decode::<Value>(id_token, &dk, &bad).is_err());
    claims
}

async fn userinfo(g: &FakeGoogle, at: Option<&str>) -> (u16, Value) {
    let mut req = client().get(g.userinfo_url());
    if let Some(at) = at {
        req = req.bearer_auth(at);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn revoke_form(g: &FakeGoogle, tok: &str) -> (u16, Value) {
    let resp = client()
        .post(g.revoke_url())
        .form(&[("token", tok)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn full_code_grant_with_pkce_and_id_token() {
    let g = start().await;
    assert_eq!(g.issuer(), "https://accounts.google.com");
    let (verifier, challenge) = pkce();
    let q = authorize(&g, &auth_params(&challenge)).await;
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["scope"], GRANTED);
    assert_eq!(q["authuser"], "0");
    assert_eq!(q["prompt"], "consent");
    assert!(!q.contains_key("hd"));
    let code = q["code"].clone();
    assert!(code.starts_with("4/0A"));

    let (status, body) = redeem(&g, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{body}");
    let obj = body.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "id_token",
            "refresh_token",
            "scope",
            "token_type"
        ]
    );
    let at = body["access_token"].as_str().unwrap();
    let rt = body["refresh_token"].as_str().unwrap();
    let id_token = body["id_token"].as_str().unwrap();
    assert!(at.starts_with("ya29."));
    assert!(rt.starts_with("1//0"));
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], GRANTED);

    let claims = verify_id_token(&g, id_token).await;
    assert_eq!(claims["iss"], "https://accounts.google.com");
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["azp"], CLIENT_ID);
    assert_eq!(claims["nonce"], NONCE);
    assert_eq!(claims["email"], "alice@gmail.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(
        claims["sub"],
        GoogleUser::gmail("alice@gmail.com").sub.as_str()
    );
    assert!(claims.get("hd").is_none());
    // No `profile` scope → no name, like Google.
    assert!(claims.get("name").is_none());
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, 3600);
    let at_hash = URL_SAFE_NO_PAD.encode(&Sha256::digest(at.as_bytes())[..16]);
    assert_eq!(claims["at_hash"], at_hash.as_str());
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(mailconnect_sandbox::KEY_ID));

    // Bookkeeping.
    let info = g.access_token_info(at).unwrap();
    assert_eq!(info.upn, "alice@gmail.com");
    assert_eq!(info.resource, "https://mail.google.com/");
    assert!(info.scopes.iter().any(|s| s == "https://mail.google.com/"));
    assert!(info.valid);
    assert!(g.refresh_token_is_live(rt));
    assert_eq!(g.code_redemptions(), 1);
    assert_eq!(g.token_requests(), 1);
    let secrets = g.issued_secrets();
    for s in [SECRET, code.as_str(), at, rt, id_token] {
        assert!(secrets.iter().any(|x| x == s), "{s}");
    }
    let last = g.last_token_request().unwrap();
    assert_eq!(last["code"], "[present]");
    assert_eq!(last["client_secret"], "[present]");
    assert_eq!(last["code_verifier"], "[present]");
    assert_eq!(last["grant_type"], "authorization_code");
    assert_eq!(last["client_id"], CLIENT_ID);
    assert_eq!(last["redirect_uri"], REDIRECT);

    // Discovery points at the fake.
    let disc: Value = client()
        .get(format!("{}/.well-known/openid-configuration", g.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disc["issuer"], "https://accounts.google.com");
    assert_eq!(disc["authorization_endpoint"], g.auth_url().as_str());
    assert_eq!(disc["token_endpoint"], g.token_url().as_str());
    assert_eq!(disc["userinfo_endpoint"], g.userinfo_url().as_str());
    assert_eq!(disc["revocation_endpoint"], g.revoke_url().as_str());
    assert_eq!(disc["jwks_uri"], g.jwks_url().as_str());
}

#[tokio::test]
async fn pkce_is_required_and_checked() {
    let g = start().await;
    let (verifier, challenge) = pkce();

    // Authorize without PKCE / with plain → redirected error.
    for params in [
        with(auth_params(&challenge), "code_challenge", None),
        with(
            auth_params(&challenge),
            "code_challenge_method",
            Some("plain"),
        ),
        with(auth_params(&challenge), "code_challenge_method", None),
        with(auth_params(&challenge), "code_challenge", Some("too-short")),
    ] {
        let (status, q, _) = authorize_raw(&g, &params).await;
        assert_eq!(status, 302);
        let q = q.unwrap();
        assert_eq!(q["error"], "invalid_request", "{q:?}");
        assert_eq!(q["state"], "st-123");
        assert!(!q.contains_key("code"));
    }

    // Missing verifier, then a wrong one: the code survives both.
    let q = authorize(&g, &auth_params(&challenge)).await;
    let (s, b) = redeem(&g, &q["code"], None).await;
    assert_error(s, &b, 400, "invalid_grant", "Missing code verifier.");
    let (s, b) = redeem(
        &g,
        &q["code"],
        Some("wrong-verifier-wrong-verifier-wrong-verifier"),
    )
    .await;
    assert_error(s, &b, 400, "invalid_grant", "Invalid code verifier.");
    let (s, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(g.code_redemptions(), 1);
    assert_eq!(g.token_requests(), 3);
}

#[tokio::test]
async fn redirect_uri_mismatch() {
    let g = start().await;
    let (verifier, challenge) = pkce();
    let params = with(
        auth_params(&challenge),
        "redirect_uri",
        Some("http://127.0.0.1:9999/evil"),
    );
    let (status, q, body) = authorize_raw(&g, &params).await;
    assert_eq!(status, 400);
    assert!(q.is_none());
    assert!(body.contains("Error 400: redirect_uri_mismatch"), "{body}");

    // Unknown client: no redirect either.
    let params = with(auth_params(&challenge), "client_id", Some("other.apps"));
    let (status, q, body) = authorize_raw(&g, &params).await;
    assert_eq!(status, 401);
    assert!(q.is_none());
    assert!(body.contains("invalid_client"), "{body}");

    // At the token endpoint.
    let q = authorize(&g, &auth_params(&challenge)).await;
    let (s, b) = token(
        &g,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("code", &q["code"]),
            (
                "redirect_uri",
                "http://127.0.0.1:9999/oauth/google/callback/",
            ),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_error(s, &b, 400, "redirect_uri_mismatch", "Bad Request");
}

#[tokio::test]
async fn code_is_single_use_and_expires() {
    let g = start().await;
    let (verifier, challenge) = pkce();
    let q = authorize(&g, &auth_params(&challenge)).await;
    let (s, _) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert_eq!(s, 200);
    let (s, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert_error(s, &b, 400, "invalid_grant", "Bad Request");
    let (s, b) = redeem(&g, "4/0Anot-a-code", Some(&verifier)).await;
    assert_error(s, &b, 400, "invalid_grant", "Malformed auth code.");

    let q = authorize(&g, &auth_params(&challenge)).await;
    g.expire_codes();
    let (s, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert_error(s, &b, 400, "invalid_grant", "Bad Request");
    assert_eq!(g.code_redemptions(), 1);
}

#[tokio::test]
async fn refresh_does_not_rotate() {
    let g = start().await;
    let body = sign_in(&g).await;
    let rt = body["refresh_token"].as_str().unwrap();
    let first_at = body["access_token"].as_str().unwrap();

    for _ in 0..2 {
        let (s, b) = refresh(&g, rt).await;
        assert_eq!(s, 200, "{b}");
        assert!(b.get("refresh_token").is_none(), "{b}");
        assert_eq!(b["scope"], GRANTED);
        assert_eq!(b["expires_in"], 3599);
        let at = b["access_token"].as_str().unwrap();
        assert_ne!(at, first_at);
        assert!(g.access_token_info(at).unwrap().valid);
        let claims = verify_id_token(&g, b["id_token"].as_str().unwrap()).await;
        assert!(claims.get("nonce").is_none());
        assert_eq!(claims["email"], "alice@gmail.com");
        assert!(g.refresh_token_is_live(rt));
    }
    // The old access token is still valid too.
    assert!(g.access_token_info(first_at).unwrap().valid);

    // Client authentication via HTTP Basic works as well.
    let resp = client()
        .post(g.token_url())
        .header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{SECRET}"))),
        )
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(g.refresh_grants(), 3);
    let last = g.last_token_request().unwrap();
    assert_eq!(last["refresh_token"], "[present]");

    // Down-scoping on refresh is allowed, widening is not.
    let (s, b) = token(
        &g,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", rt),
            ("scope", "https://mail.google.com/"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["scope"], "https://mail.google.com/");
    assert!(b.get("id_token").is_none());
    let (s, b) = token(
        &g,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", rt),
            ("scope", "openid https://www.googleapis.com/auth/drive"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "invalid_scope");

    // Wrong secret / unknown client.
    let (s, b) = token(
        &g,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", "nope"),
            ("refresh_token", rt),
        ],
    )
    .await;
    assert_error(s, &b, 401, "invalid_client", "Unauthorized");
    let (s, b) = token(
        &g,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "other.apps.googleusercontent.com"),
            ("client_secret", SECRET),
            ("refresh_token", rt),
        ],
    )
    .await;
    assert_error(
        s,
        &b,
        401,
        "invalid_client",
        "The OAuth client was not found.",
    );
    // Unknown refresh token.
    let (s, b) = refresh(&g, "1//0unknown").await;
    assert_error(
        s,
        &b,
        400,
        "invalid_grant",
        "Token has been expired or revoked.",
    );
}

#[tokio::test]
async fn refresh_token_only_for_offline_consent() {
    let g = start().await;
    let (verifier, challenge) = pkce();
    for params in [
        with(auth_params(&challenge), "access_type", None),
        with(auth_params(&challenge), "access_type", Some("online")),
        with(auth_params(&challenge), "prompt", None),
        with(auth_params(&challenge), "prompt", Some("select_account")),
    ] {
        let q = authorize(&g, &params).await;
        let (s, b) = redeem(&g, &q["code"], Some(&verifier)).await;
        assert_eq!(s, 200, "{b}");
        assert!(b.get("refresh_token").is_none(), "{params:?}");
        assert!(b["access_token"].is_string() && b["id_token"].is_string());
    }
    let q = authorize(
        &g,
        &with(
            auth_params(&challenge),
            "prompt",
            Some("select_account consent"),
        ),
    )
    .await;
    let (_, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert!(b["refresh_token"].is_string());
}

#[tokio::test]
async fn revoke_user_kills_everything() {
    let g = start().await;
    let body = sign_in(&g).await;
    let rt = body["refresh_token"].as_str().unwrap();
    let at = body["access_token"].as_str().unwrap();
    g.revoke_user("ALICE@gmail.com");
    assert!(!g.refresh_token_is_live(rt));
    assert!(!g.access_token_info(at).unwrap().valid);
    let (s, b) = refresh(&g, rt).await;
    assert_error(
        s,
        &b,
        400,
        "invalid_grant",
        "Token has been expired or revoked.",
    );
    let (s, b) = userinfo(&g, Some(at)).await;
    assert_eq!(s, 401);
    assert_eq!(b["error"], "invalid_token");
    // Signing in again works and gives a fresh, live grant.
    let body = sign_in(&g).await;
    assert!(g.refresh_token_is_live(body["refresh_token"].as_str().unwrap()));
}

#[tokio::test]
async fn revocation_endpoint() {
    let g = start().await;

    // Revoking the refresh token kills it and its access tokens.
    let body = sign_in(&g).await;
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    let at = body["access_token"].as_str().unwrap().to_string();
    let (_, b) = refresh(&g, &rt).await;
    let at2 = b["access_token"].as_str().unwrap().to_string();

    g.set_revoke_fault(true);
    let (s, b) = revoke_form(&g, &rt).await;
    assert_eq!(s, 503, "{b}");
    assert!(g.refresh_token_is_live(&rt));
    assert_eq!(g.revocations(), 0);
    g.set_revoke_fault(false);

    let (s, b) = revoke_form(&g, &rt).await;
    assert_eq!(s, 200);
    assert_eq!(b, serde_json::json!({}));
    assert_eq!(g.revocations(), 1);
    assert!(!g.refresh_token_is_live(&rt));
    for t in [&at, &at2] {
        assert!(!g.access_token_info(t).unwrap().valid);
    }
    let (s, b) = refresh(&g, &rt).await;
    assert_error(
        s,
        &b,
        400,
        "invalid_grant",
        "Token has been expired or revoked.",
    );
    // Already revoked / unknown.
    let (s, b) = revoke_form(&g, &rt).await;
    assert_error(s, &b, 400, "invalid_token", "Token expired or revoked");
    let (s, b) = revoke_form(&g, "ya29.nonsense").await;
    assert_error(s, &b, 400, "invalid_token", "Token expired or revoked");
    assert_eq!(g.revocations(), 1);

    // Revoking an access token (as a query parameter) kills the grant's
    // refresh token too.
    let body = sign_in(&g).await;
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    let at = body["access_token"].as_str().unwrap().to_string();
    let resp = client()
        .post(g.revoke_url())
        .query(&[("token", &at)])
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(g.revocations(), 2);
    assert!(!g.refresh_token_is_live(&rt));
    assert!(!g.access_token_info(&at).unwrap().valid);

    // A missing token.
    let resp = client()
        .post(g.revoke_url())
        .form(&[("x", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"], "invalid_request");
}

#[tokio::test]
async fn granular_consent_and_incremental_scopes() {
    let g = start().await;
    let (verifier, challenge) = pkce();
    g.set_granted_scopes_for_next_login(Some(vec!["openid".into(), "email".into()]));
    let q = authorize(&g, &auth_params(&challenge)).await;
    let expected = "openid https://www.googleapis.com/auth/userinfo.email";
    assert_eq!(q["scope"], expected);
    let (s, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["scope"], expected);
    let info = g
        .access_token_info(b["access_token"].as_str().unwrap())
        .unwrap();
    assert!(!info.scopes.iter().any(|s| s == "https://mail.google.com/"));
    let (_, r) = refresh(&g, b["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r["scope"], expected);

    // The setting applies once: the next consent grants everything.
    let q = authorize(&g, &auth_params(&challenge)).await;
    assert_eq!(q["scope"], GRANTED);

    // include_granted_scopes=true adds earlier consent (Gmail) to a sign-in
    // that only asks for openid email.
    let q = authorize(
        &g,
        &with(auth_params(&challenge), "scope", Some("openid email")),
    )
    .await;
    assert_eq!(q["scope"], GRANTED);
    let q = authorize(
        &g,
        &with(
            with(auth_params(&challenge), "scope", Some("openid email")),
            "include_granted_scopes",
            None,
        ),
    )
    .await;
    assert_eq!(q["scope"], expected);
}

#[tokio::test]
async fn unverified_user_and_email_only_via_userinfo() {
    let g = start().await;
    let (verifier, challenge) = pkce();
    let q = authorize(
        &g,
        &with(
            auth_params(&challenge),
            "login_hint",
            Some("mallory@gmail.com"),
        ),
    )
    .await;
    let (_, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    let claims = verify_id_token(&g, b["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["email"], "mallory@gmail.com");
    assert_eq!(claims["email_verified"], false);
    let (s, u) = userinfo(&g, b["access_token"].as_str()).await;
    assert_eq!(s, 200);
    assert_eq!(u["email_verified"], false);

    // email_in_id_token = false.
    let mut cfg = config();
    cfg.email_in_id_token = false;
    let g = FakeGoogle::start(cfg).await.unwrap();
    let b = sign_in(&g).await;
    let claims = verify_id_token(&g, b["id_token"].as_str().unwrap()).await;
    assert!(claims.get("email").is_none() && claims.get("email_verified").is_none());
    let (s, u) = userinfo(&g, b["access_token"].as_str()).await;
    assert_eq!(s, 200);
    assert_eq!(u["email"], "alice@gmail.com");
    assert_eq!(u["email_verified"], true);
    assert_eq!(u["sub"], claims["sub"]);
}

#[tokio::test]
async fn userinfo_endpoint() {
    let g = start().await;
    let (verifier, challenge) = pkce();
    g.set_user_for_next_login("bob@example.com");
    let q = authorize(
        &g,
        &with(
            auth_params(&challenge),
            "scope",
            Some("openid email profile https://mail.google.com/"),
        ),
    )
    .await;
    assert_eq!(q["hd"], "example.com");
    let (_, b) = redeem(&g, &q["code"], Some(&verifier)).await;
    assert_eq!(
        b["scope"],
        "https://mail.google.com/ openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile"
    );
    let at = b["access_token"].as_str().unwrap();
    let claims = verify_id_token(&g, b["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["hd"], "example.com");
    assert_eq!(claims["name"], "Bob");

    let (s, u) = userinfo(&g, Some(at)).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(
        u["sub"],
        GoogleUser::workspace("bob@example.com").sub.as_str()
    );
    assert_eq!(u["email"], "bob@example.com");
    assert_eq!(u["email_verified"], true);
    assert_eq!(u["hd"], "example.com");
    assert_eq!(u["name"], "Bob");

    // POST works too.
    let resp = client()
        .post(g.userinfo_url())
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    for bad in [None, Some("ya29.unknown"), Some("")] {
        let (s, u) = userinfo(&g, bad).await;
        assert_eq!(s, 401, "{bad:?}");
        assert_eq!(u["error"], "invalid_token");
    }
    g.set_userinfo_down(true);
    let (s, _) = userinfo(&g, Some(at)).await;
    assert_eq!(s, 503);
    g.set_userinfo_down(false);
    g.expire_access_tokens();
    let (s, _) = userinfo(&g, Some(at)).await;
    assert_eq!(s, 401);

    // A token without any sign-in scope may not read userinfo.
    let (_, r) = token(
        &g,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", b["refresh_token"].as_str().unwrap()),
            ("scope", "https://mail.google.com/"),
        ],
    )
    .await;
    let (s, u) = userinfo(&g, r["access_token"].as_str()).await;
    assert_eq!(s, 403);
    assert_eq!(u["error"], "insufficient_scope");
}

#[tokio::test]
async fn authorize_checks_and_users() {
    let g = start().await;
    let (verifier, challenge) = pkce();

    // Scope without openid, unknown scope, missing response_type.
    for (params, error) in [
        (
            with(
                auth_params(&challenge),
                "scope",
                Some("email https://mail.google.com/"),
            ),
            "invalid_scope",
        ),
        (
            with(
                auth_params(&challenge),
                "scope",
                Some("openid offline_access"),
            ),
            "invalid_scope",
        ),
        (
            with(auth_params(&challenge), "response_type", None),
            "invalid_request",
        ),
        (
            with(auth_params(&challenge), "response_type", Some("token")),
            "unsupported_response_type",
        ),
        (
            with(auth_params(&challenge), "access_type", Some("sometimes")),
            "invalid_request",
        ),
        (
            with(auth_params(&challenge), "prompt", Some("none")),
            "consent_required",
        ),
    ] {
        let (s, q, _) = authorize_raw(&g, &params).await;
        assert_eq!(s, 302);
        let q = q.unwrap();
        assert_eq!(q["error"], error, "{params:?}");
        assert_eq!(q["state"], "st-123");
    }

    // set_authorize_error.
    g.set_authorize_error(Some(("access_denied".into(), "The user said no".into())));
    let (s, q, _) = authorize_raw(&g, &auth_params(&challenge)).await;
    assert_eq!(s, 302);
    let q = q.unwrap();
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["error_description"], "The user said no");
    assert_eq!(q["state"], "st-123");
    g.set_authorize_error(None);

    async fn who(g: &FakeGoogle, code: &str, verifier: &str) -> String {
        let (_, b) = redeem(g, code, Some(verifier)).await;
        g.access_token_info(b["access_token"].as_str().unwrap())
            .unwrap()
            .upn
    }
    // Default user, login_hint, override (once), unknown override.
    let q = authorize(&g, &auth_params(&challenge)).await;
    assert_eq!(who(&g, &q["code"], &verifier).await, "alice@gmail.com");
    let hinted = with(
        auth_params(&challenge),
        "login_hint",
        Some("bob@example.com"),
    );
    let q = authorize(&g, &hinted).await;
    assert_eq!(who(&g, &q["code"], &verifier).await, "bob@example.com");
    g.set_user_for_next_login("mallory@gmail.com");
    let q = authorize(&g, &hinted).await;
    assert_eq!(who(&g, &q["code"], &verifier).await, "mallory@gmail.com");
    let q = authorize(&g, &auth_params(&challenge)).await;
    assert_eq!(who(&g, &q["code"], &verifier).await, "alice@gmail.com");
    g.set_user_for_next_login("nobody@gmail.com");
    let (_, q, _) = authorize_raw(&g, &auth_params(&challenge)).await;
    assert_eq!(q.unwrap()["error"], "access_denied");

    // prompt=none works after consent.
    let q = authorize(&g, &with(auth_params(&challenge), "prompt", Some("none"))).await;
    assert_eq!(q["prompt"], "none");
}

#[tokio::test]
async fn faults() {
    let g = start().await;
    let body = sign_in(&g).await;
    let rt = body["refresh_token"].as_str().unwrap();

    g.set_fault_once(Fault::InvalidClient);
    let (s, b) = refresh(&g, rt).await;
    assert_error(
        s,
        &b,
        401,
        "invalid_client",
        "The OAuth client was not found.",
    );
    for f in [Fault::InvalidGrant, Fault::InteractionRequired] {
        g.set_fault_once(f);
        let (s, b) = refresh(&g, rt).await;
        assert_error(
            s,
            &b,
            400,
            "invalid_grant",
            "Token has been expired or revoked.",
        );
    }
    g.set_fault_once(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    let resp = client()
        .post(g.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", rt),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let b: Value = resp.json().await.unwrap();
    assert!(b["error"].is_string());

    g.set_fault(Some(Fault::Unavailable));
    for _ in 0..2 {
        let (s, b) = refresh(&g, rt).await;
        assert_eq!(s, 503);
        assert!(b["error"].is_string());
    }
    g.set_fault(None);

    g.set_fault_once(Fault::MalformedJson);
    let resp = client()
        .post(g.token_url())
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.json::<Value>().await.is_err());

    g.set_fault_once(Fault::Slow(Duration::from_millis(300)));
    let t0 = std::time::Instant::now();
    let (s, _) = refresh(&g, rt).await;
    assert_eq!(s, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));

    // Faults never killed the refresh token.
    assert!(g.refresh_token_is_live(rt));
    assert_eq!(g.refresh_grants(), 1);
}

#[tokio::test]
async fn garbage_never_panics() {
    let g = start().await;
    let c = client();
    // Token endpoint.
    let resp = c
        .post(g.token_url())
        .header("content-type", "application/json")
        .body("{\"grant_type\":\"refresh_token\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let cid = format!("client_id={}", urlencode(CLIENT_ID));
    let sec = format!("client_secret={}", urlencode(SECRET));
    for body in [
        String::new(),
        "grant_type=password&client_id=x".into(),
        "grant_type=refresh_token&grant_type=refresh_token".into(),
        "%%%%=&&&==".into(),
        format!("grant_type=password&{cid}&{sec}"),
        format!("grant_type=authorization_code&{cid}&{sec}"),
        format!(
            "grant_type=authorization_code&{cid}&{sec}&code=zzz&redirect_uri=x&code_verifier=y"
        ),
        format!("grant_type=refresh_token&{cid}&{sec}"),
        format!("grant_type=refresh_token&{cid}&{sec}&refresh_token=x&scope=%00%FF"),
        format!("grant_type=refresh_token&{cid}"),
    ] {
        let resp = c
            .post(g.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 401, "{body}: {status}");
        let b: Value = resp.json().await.unwrap();
        assert!(b["error"].is_string(), "{body}");
    }
    for auth in ["Basic !!!notbase64", "Bearer x", "Basic", "Basic Og=="] {
        let resp = c
            .post(g.token_url())
            .header("authorization", auth)
            .form(&[("grant_type", "refresh_token")])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 401, "{auth}: {status}");
    }
    // Authorize.
    for q in [
        "",
        "client_id=&redirect_uri=",
        "client_id=a&client_id=b",
        "%ZZ=%ZZ",
        "client_id=123456789012-sandbox.apps.googleusercontent.com",
    ] {
        let resp = c.get(format!("{}?{q}", g.auth_url())).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{q}");
    }
    // Revoke, userinfo.
    for body in ["", "token=", "token=a&token=b", "%%%"] {
        let resp = c
            .post(g.revoke_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{body}");
    }
    for auth in ["Bearer", "Basic abc", "bearer    ", "\u{7f}"] {
        if let Ok(resp) = c
            .get(g.userinfo_url())
            .header("authorization", auth)
            .send()
            .await
        {
            assert_eq!(resp.status().as_u16(), 401, "{auth}");
        }
    }
    // Still alive.
    sign_in(&g).await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn embedding_with_build_and_router() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let g = FakeGoogle::build(config(), &base).unwrap();
    assert!(!g.base_url().ends_with('/'));
    let app = g.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let b = sign_in(&g).await;
    assert!(b["refresh_token"].is_string());
    assert!(FakeGoogle::build(FakeGoogleConfig::new("", "s", REDIRECT), &base).is_err());
}
