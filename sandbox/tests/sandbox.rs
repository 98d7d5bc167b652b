//! End-to-end tests of the sandbox over real HTTP on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mailconnect_sandbox::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value";
const REDIRECT: &str = "http://127.0.0.1:9999/oauth/microsoft/callback";
const IMAP: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const SMTP: &str = "https://outlook.office.com/SMTP.Send";
const AUTH_SCOPE: &str = "openid profile email offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start() -> FakeMicrosoft {
    FakeMicrosoft::start(FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT))
        .await
        .unwrap()
}

fn pkce() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk_and_some_more".to_string();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// GETs authorize and returns the query parameters of the redirect.
async fn authorize_raw(
    ms: &FakeMicrosoft,
    tenant: &str,
    params: &[(&str, &str)],
) -> (u16, HashMap<String, String>) {
    let resp = client()
        .get(format!("{}/{tenant}/oauth2/v2.0/authorize", ms.base_url()))
        .query(params)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut out = HashMap::new();
    if let Some(loc) = resp.headers().get("location") {
        let url = url::Url::parse(loc.to_str().unwrap()).unwrap();
        assert!(url.as_str().starts_with(REDIRECT));
        for (k, v) in url.query_pairs() {
            out.insert(k.to_string(), v.to_string());
        }
    }
    (status, out)
}

async fn authorize(ms: &FakeMicrosoft, tenant: &str, scope: &str, challenge: &str) -> String {
    let (status, q) = authorize_raw(
        ms,
        tenant,
        &[
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "st ate/+&="),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("nonce", "n-0S6_WzA2Mj"),
            ("prompt", "select_account"),
        ],
    )
    .await;
    assert_eq!(status, 302, "{q:?}");
    assert_eq!(q.get("state").map(String::as_str), Some("st ate/+&="));
    q.get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code: {q:?}"))
}

async fn token(ms: &FakeMicrosoft, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = client()
        .post(format!("{}/{tenant}/oauth2/v2.0/token", ms.base_url()))
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

async fn redeem(
    ms: &FakeMicrosoft,
    tenant: &str,
    code: &str,
    verifier: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    token(ms, tenant, &form).await
}

async fn refresh(ms: &FakeMicrosoft, rt: &str, scope: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("refresh_token", rt),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    token(ms, "common", &form).await
}

fn error_code(v: &Value) -> (String, u64) {
    (
        v["error"].as_str().unwrap_or("").to_string(),
        v["error_codes"][0].as_u64().unwrap_or(0),
    )
}

fn assert_error_shape(v: &Value, ms: &FakeMicrosoft) {
    let desc = v["error_description"].as_str().unwrap();
    assert!(desc.starts_with("AADSTS"), "{desc}");
    assert!(desc.contains("\r\nTrace ID: "));
    assert!(desc.contains("\r\nCorrelation ID: "));
    assert!(desc.contains("\r\nTimestamp: "));
    assert!(v["trace_id"].is_string() && v["correlation_id"].is_string());
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(v["error_uri"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/error?code=", ms.base_url())));
}

/// Full flow with outlook scopes; returns the token response.
async fn sign_in(ms: &FakeMicrosoft) -> Value {
    let (verifier, challenge) = pkce();
    let code = authorize(ms, "common", AUTH_SCOPE, &challenge).await;
    let (status, body) = redeem(
        ms,
        "common",
        &code,
        &verifier,
        Some(&format!("{IMAP} {SMTP} offline_access openid")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn full_code_grant_with_pkce_and_id_token() {
    let ms = start().await;
    let (verifier, challenge) = pkce();
    let code = authorize(&ms, "organizations", AUTH_SCOPE, &challenge).await;
    let (status, body) = redeem(
        &ms,
        "organizations",
        &code,
        &verifier,
        Some(&format!("{IMAP} {SMTP} offline_access openid")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let scope = body["scope"].as_str().unwrap();
    assert!(scope.contains(IMAP) && scope.contains(SMTP) && scope.contains("offline_access"));
    let at = body["access_token"].as_str().unwrap();
    let rt = body["refresh_token"].as_str().unwrap();
    assert!(at.starts_with("EwA") && at.len() == 63);
    assert!(rt.starts_with("M.C") && rt.len() == 83);
    let info = ms.access_token_info(at).unwrap();
    assert_eq!(info.upn, "ops@contoso.com");
    assert_eq!(info.resource, "https://outlook.office.com");
    assert_eq!(info.scopes, vec![IMAP.to_string(), SMTP.to_string()]);
    assert!(info.valid);
    assert!(ms.refresh_token_is_live(rt));
    assert_eq!(ms.code_redemptions(), 1);
    assert_eq!(ms.token_requests(), 1);

    // id_token verifies against the published JWKS.
    let jwks: Value = client()
        .get(format!(
            "{}/organizations/discovery/v2.0/keys",
            ms.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], "sandbox-key-1");
    let id_token = body["id_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("sandbox-key-1"));
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[format!("{}/{WORK_TENANT_ID}/v2.0", ms.base_url())]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &dk, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["preferred_username"], "ops@contoso.com");
    assert_eq!(claims["email"], "ops@contoso.com");
    assert_eq!(claims["tid"], WORK_TENANT_ID);
    assert_eq!(claims["ver"], "2.0");
    assert!(claims["sub"].is_string() && claims["oid"].is_string());

    // A wrong key must not verify it (sanity of the check above).
    let mut bad = validation.clone();
    bad.set_audience(&["someone-else"]);
    assert!(jsonwebtoken::decode::<Value>(id_token, &dk, &bad).is_err());

    // Code is single use.
    let (status, body) = redeem(&ms, "organizations", &code, &verifier, None).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), ("invalid_grant".into(), 54005));
    assert_error_shape(&body, &ms);

    // Secrets bookkeeping and redaction.
    let secrets = ms.issued_secrets();
    for s in [SECRET, &code, at, rt, id_token] {
        assert!(secrets.iter().any(|x| x == s));
    }
    let last = ms.last_token_request().unwrap();
    assert_eq!(last["code"], "[present]");
    assert_eq!(last["client_secret"], "[present]");
    assert_eq!(last["code_verifier"], "[present]");
    assert_eq!(last["grant_type"], "authorization_code");
    assert_eq!(last["client_id"], CLIENT_ID);
}

#[tokio::test]
async fn two_resources_are_refused() {
    let ms = start().await;
    let (verifier, challenge) = pkce();
    let scope = format!("openid offline_access {IMAP} User.Read");
    // Authorize accepts consent for two resources...
    let code = authorize(&ms, "common", &scope, &challenge).await;
    // ...but redeeming without a scope means both: refused.
    let (status, body) = redeem(&ms, "common", &code, &verifier, None).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), ("invalid_scope".into(), 28000));
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("contains more than one resource"));
    // Explicit two-resource scope: refused as well.
    let (status, body) = redeem(&ms, "common", &code, &verifier, Some(&scope)).await;
    assert_eq!((status, error_code(&body).1), (400, 28000));
    // One resource: fine (the code was not consumed by the failures).
    let (status, body) = redeem(&ms, "common", &code, &verifier, Some(IMAP)).await;
    assert_eq!(status, 200, "{body}");
    let rt = body["refresh_token"].as_str().unwrap();
    assert!(body.get("id_token").is_some());
    // Refresh with two resources: refused.
    let (status, body) = refresh(
        &ms,
        rt,
        Some(&format!("{IMAP} https://graph.microsoft.com/User.Read")),
    )
    .await;
    assert_eq!((status, error_code(&body).1), (400, 28000));
    // Refresh into Graph with User.Read: fine; Graph gets a graph token.
    let (status, body) = refresh(&ms, rt, Some("User.Read offline_access")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["scope"],
        "https://graph.microsoft.com/User.Read offline_access"
    );
}

#[tokio::test]
async fn pkce_and_code_binding_mismatches() {
    let ms = start().await;
    let (verifier, challenge) = pkce();
    let code = authorize(&ms, "common", AUTH_SCOPE, &challenge).await;
    let (status, body) = redeem(
        &ms,
        "common",
        &code,
        "not-the-verifier-at-all-but-long-enough-xxxxxxx",
        Some(IMAP),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), ("invalid_grant".into(), 501481));
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("The Code_Verifier does not match the code_challenge supplied in the authorization request."));
    // Missing verifier.
    let (status, body) = token(
        &ms,
        "common",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("scope", IMAP),
        ],
    )
    .await;
    assert_eq!((status, error_code(&body).1), (400, 501481));
    // Different tenant path.
    let (status, body) = redeem(&ms, "organizations", &code, &verifier, Some(IMAP)).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body).0, "invalid_grant");
    // Different redirect_uri.
    let (status, body) = token(
        &ms,
        "common",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9999/other"),
            ("code_verifier", &verifier),
            ("scope", IMAP),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body).0, "invalid_grant");
    // Wrong secret, missing secret, Basic auth.
    let (status, body) = token(
        &ms,
        "common",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", "wrong"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, ("invalid_client".into(), 7000215))
    );
    let (status, body) = token(
        &ms,
        "common",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(
        (status, error_code(&body).0.as_str()),
        (401, "invalid_client")
    );
    let resp = client()
        .post(format!("{}/common/oauth2/v2.0/token", ms.base_url()))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("scope", IMAP),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(ms.code_redemptions(), 1);
}

#[tokio::test]
async fn strict_rotation_and_keep_old() {
    let ms = start().await;
    let body = sign_in(&ms).await;
    let rt1 = body["refresh_token"].as_str().unwrap().to_string();
    let (status, b2) = refresh(&ms, &rt1, Some(&format!("{IMAP} offline_access"))).await;
    assert_eq!(status, 200, "{b2}");
    let rt2 = b2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert!(b2.get("id_token").is_none());
    assert!(!ms.refresh_token_is_live(&rt1));
    assert!(ms.refresh_token_is_live(&rt2));
    let (status, b3) = refresh(&ms, &rt1, Some(&format!("{IMAP} offline_access"))).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&b3).0, "invalid_grant");
    assert_eq!(ms.refresh_grants(), 1);

    // KeepOld: the old one keeps working.
    ms.set_rotation(Rotation::KeepOld);
    let (status, b4) = refresh(&ms, &rt2, Some(&format!("{SMTP} openid"))).await;
    assert_eq!(status, 200);
    assert!(b4.get("id_token").is_some());
    let (status, _) = refresh(&ms, &rt2, Some(SMTP)).await;
    assert_eq!(status, 200);
    assert!(ms.refresh_token_is_live(&rt2));

    // Revocation kills every refresh token of the user.
    ms.revoke_user("OPS@contoso.com");
    assert!(!ms.refresh_token_is_live(&rt2));
    let (status, b5) = refresh(&ms, b4["refresh_token"].as_str().unwrap(), Some(SMTP)).await;
    assert_eq!((status, error_code(&b5).0.as_str()), (400, "invalid_grant"));

    // Unknown token.
    let (status, b6) = refresh(&ms, "M.Cnope", Some(SMTP)).await;
    assert_eq!((status, error_code(&b6).0.as_str()), (400, "invalid_grant"));
}

#[tokio::test]
async fn refresh_requires_scope_and_consent() {
    let ms = start().await;
    let body = sign_in(&ms).await;
    let rt = body["refresh_token"].as_str().unwrap();
    let (status, b) = refresh(&ms, rt, None).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&b), ("invalid_request".into(), 900144));
    assert!(b["error_description"]
        .as_str()
        .unwrap()
        .contains("The request body must contain the following parameter: 'scope'."));
    // Not consented at authorize.
    let (status, b) = refresh(
        &ms,
        rt,
        Some("https://outlook.office.com/EWS.AccessAsUser.All"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&b), ("invalid_grant".into(), 65001));
    assert_eq!(b["suberror"], "consent_required");
    // The failures did not consume it.
    assert!(ms.refresh_token_is_live(rt));
    let last = ms.last_token_request().unwrap();
    assert_eq!(last["refresh_token"], "[present]");
}

#[tokio::test]
async fn graph_me_audience_and_outage() {
    let ms = start().await;
    let body = sign_in(&ms).await;
    let outlook_at = body["access_token"].as_str().unwrap();
    let me = format!("{}/v1.0/me", ms.base_url());
    let resp = client()
        .get(&me)
        .bearer_auth(outlook_at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        err["error"]["message"],
        "Access token validation failure. Invalid audience."
    );
    let resp = client().get(&me).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let (status, g) = refresh(
        &ms,
        body["refresh_token"].as_str().unwrap(),
        Some("https://graph.microsoft.com/User.Read offline_access"),
    )
    .await;
    assert_eq!(status, 200, "{g}");
    let graph_at = g["access_token"].as_str().unwrap();
    assert_eq!(
        ms.access_token_info(graph_at).unwrap().resource,
        "https://graph.microsoft.com"
    );
    let me_body: Value = client()
        .get(&me)
        .bearer_auth(graph_at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me_body["userPrincipalName"], "ops@contoso.com");
    assert_eq!(me_body["mail"], "ops@contoso.com");
    assert_eq!(me_body["id"], FakeUser::work("ops@contoso.com").oid);
    assert!(me_body["@odata.context"].is_string());

    ms.set_graph_down(true);
    let resp = client()
        .get(&me)
        .bearer_auth(graph_at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    ms.set_graph_down(false);

    ms.expire_access_tokens();
    let resp = client()
        .get(&me)
        .bearer_auth(graph_at)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(!ms.access_token_info(graph_at).unwrap().valid);
}

#[tokio::test]
async fn faults() {
    let ms = start().await;
    let body = sign_in(&ms).await;
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    let scope = format!("{IMAP} offline_access");

    ms.set_fault_once(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    let resp = client()
        .post(format!("{}/common/oauth2/v2.0/token", ms.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("refresh_token", rt.as_str()),
            ("scope", scope.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let b: Value = resp.json().await.unwrap();
    assert!(b["error"].is_string());
    assert_error_shape(&b, &ms);
    // The fault did not consume the token; once means once.
    assert!(ms.refresh_token_is_live(&rt));

    ms.set_fault(Some(Fault::Unavailable));
    for _ in 0..2 {
        let (status, b) = refresh(&ms, &rt, Some(&scope)).await;
        assert_eq!(status, 503);
        assert_eq!(b["error"], "temporarily_unavailable");
    }
    ms.set_fault(Some(Fault::MalformedJson));
    let (status, b) = refresh(&ms, &rt, Some(&scope)).await;
    assert_eq!(status, 200);
    assert!(b.is_string(), "body must not be JSON: {b}");
    ms.set_fault(Some(Fault::InvalidClient));
    let (status, b) = refresh(&ms, &rt, Some(&scope)).await;
    assert_eq!((status, b["error"].as_str()), (401, Some("invalid_client")));
    ms.set_fault(Some(Fault::InvalidGrant));
    let (status, b) = refresh(&ms, &rt, Some(&scope)).await;
    assert_eq!((status, b["error"].as_str()), (400, Some("invalid_grant")));
    ms.set_fault(Some(Fault::InteractionRequired));
    let (status, b) = refresh(&ms, &rt, Some(&scope)).await;
    assert_eq!(
        (status, b["error"].as_str()),
        (400, Some("interaction_required"))
    );
    ms.set_fault(Some(Fault::Slow(Duration::from_millis(300))));
    let t0 = std::time::Instant::now();
    let (status, _) = refresh(&ms, &rt, Some(&scope)).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    ms.set_fault(None);
    // 1 code + 1 once + 2 unavailable + 4 + 1 slow
    assert_eq!(ms.token_requests(), 9);
    assert_eq!(ms.refresh_grants(), 1);
}

#[tokio::test]
async fn expires_in_as_string_and_lifetime() {
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT);
    cfg.expires_in_as_string = true;
    cfg.access_token_lifetime = Duration::from_secs(120);
    let ms = FakeMicrosoft::start(cfg).await.unwrap();
    let body = sign_in(&ms).await;
    assert_eq!(body["expires_in"], "119");
    assert_eq!(body["ext_expires_in"], "119");
    let info = ms
        .access_token_info(body["access_token"].as_str().unwrap())
        .unwrap();
    let left = (info.expires_at - chrono::Utc::now()).num_seconds();
    assert!((110..=120).contains(&left), "{left}");
}

#[tokio::test]
async fn authorize_checks_and_users() {
    let ms = start().await;
    let (_, challenge) = pkce();
    let base = |_ms: &FakeMicrosoft| -> Vec<(&'static str, String)> {
        vec![
            ("client_id", CLIENT_ID.to_string()),
            ("response_type", "code".to_string()),
            ("redirect_uri", REDIRECT.to_string()),
            ("scope", AUTH_SCOPE.to_string()),
            ("state", "abc".to_string()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".to_string()),
        ]
    };
    let run = |params: Vec<(&'static str, String)>| {
        let ms = ms.clone();
        async move {
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            authorize_raw(&ms, "common", &p).await
        }
    };
    let with = |k: &'static str, v: Option<&str>| {
        let mut p: Vec<(&'static str, String)> =
            base(&ms).into_iter().filter(|(x, _)| *x != k).collect();
        if let Some(v) = v {
            p.push((k, v.to_string()));
        }
        p
    };

    // Wrong redirect_uri / unknown client: HTML page, no redirect.
    let resp = client()
        .get(format!("{}/common/oauth2/v2.0/authorize", ms.base_url()))
        .query(&with("redirect_uri", Some("http://evil.example/cb")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.headers().get("location").is_none());
    assert!(resp.text().await.unwrap().contains("AADSTS50011"));
    let (status, _) = run(with("client_id", Some("nope"))).await;
    assert_eq!(status, 400);

    // PKCE required, S256 only.
    let (status, q) = run(with("code_challenge", None)).await;
    assert_eq!((status, q["error"].as_str()), (302, "invalid_request"));
    assert_eq!(q["state"], "abc");
    let (_, q) = run(with("code_challenge_method", Some("plain"))).await;
    assert_eq!(q["error"], "invalid_request");
    let (_, q) = run(with(
        "scope",
        Some("offline_access https://outlook.office.com/IMAP.AccessAsUser.All"),
    ))
    .await;
    assert_eq!(q["error"], "invalid_scope");
    let (_, q) = run(with("response_type", Some("token"))).await;
    assert!(q.contains_key("error"));

    // Configured authorize error, kept until cleared.
    ms.set_authorize_error(Some((
        "access_denied".into(),
        "AADSTS65004: User declined to consent.".into(),
    )));
    for _ in 0..2 {
        let (_, q) = run(base(&ms)).await;
        assert_eq!(q["error"], "access_denied");
        assert_eq!(
            q["error_description"],
            "AADSTS65004: User declined to consent."
        );
        assert_eq!(q["state"], "abc");
    }
    ms.set_authorize_error(None);

    // User selection: set_user_for_next_login, login_hint, default.
    ms.add_user(FakeUser::personal("bob@outlook.com"));
    ms.add_user(FakeUser::work("carol@contoso.com"));
    let (verifier, _) = pkce();
    async fn who(ms: &FakeMicrosoft, code: &str, verifier: &str) -> String {
        let (status, b) = redeem(ms, "common", code, verifier, Some(IMAP)).await;
        assert_eq!(status, 200, "{b}");
        ms.access_token_info(b["access_token"].as_str().unwrap())
            .unwrap()
            .upn
    }
    ms.set_user_for_next_login("bob@outlook.com");
    let (_, q) = run(base(&ms)).await;
    assert_eq!(who(&ms, &q["code"], &verifier).await, "bob@outlook.com");
    let (_, q) = run(with("login_hint", Some("Carol@contoso.com"))).await;
    assert_eq!(who(&ms, &q["code"], &verifier).await, "carol@contoso.com");
    let (_, q) = run(base(&ms)).await;
    assert_eq!(who(&ms, &q["code"], &verifier).await, "ops@contoso.com");

    // A personal account cannot sign in at /organizations.
    ms.set_user_for_next_login("bob@outlook.com");
    let p: Vec<(&str, String)> = base(&ms);
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, q) = authorize_raw(&ms, "organizations", &p).await;
    assert_eq!(q["error"], "invalid_request");
}

#[tokio::test]
async fn discovery_document() {
    let ms = start().await;
    let get = |t: &str| {
        let url = format!(
            "{}/{t}/v2.0/.well-known/openid-configuration",
            ms.base_url()
        );
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let d = get("common").await;
    assert_eq!(d["issuer"], format!("{}/{{tenantid}}/v2.0", ms.base_url()));
    assert_eq!(
        d["token_endpoint"],
        format!("{}/common/oauth2/v2.0/token", ms.base_url())
    );
    assert_eq!(
        d["jwks_uri"],
        format!("{}/common/discovery/v2.0/keys", ms.base_url())
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic"
        ])
    );
    let d = get(WORK_TENANT_ID).await;
    assert_eq!(
        d["issuer"],
        format!("{}/{WORK_TENANT_ID}/v2.0", ms.base_url())
    );
}

#[tokio::test]
async fn garbage_never_panics() {
    let ms = start().await;
    let url = format!("{}/common/oauth2/v2.0/token", ms.base_url());
    let c = client();
    // JSON body instead of a form.
    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"grant_type\":\"refresh_token\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&b), ("invalid_request".into(), 900144));
    // Assorted bad forms.
    for body in [
        "",
        "grant_type=password&client_id=x",
        "grant_type=refresh_token&grant_type=refresh_token",
        "%%%%=&&&==",
        "grant_type=authorization_code&client_id=11111111-2222-3333-4444-555555555555&client_secret=s3cr3t~value",
        "grant_type=authorization_code&client_id=11111111-2222-3333-4444-555555555555&client_secret=s3cr3t~value&code=zzz&redirect_uri=x&code_verifier=y",
        "grant_type=refresh_token&client_id=11111111-2222-3333-4444-555555555555&client_secret=s3cr3t~value&refresh_token=x&scope=https%3A%2F%2F%2Fx",
    ] {
        let resp = c
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 401, "{body}: {status}");
        let b: Value = resp.json().await.unwrap();
        assert!(b["error"].is_string(), "{body}");
    }
    // Bad Basic header.
    let resp = c
        .post(&url)
        .header("authorization", "Basic !!!notbase64")
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Authorize with no query at all.
    let resp = c
        .get(format!("{}/common/oauth2/v2.0/authorize", ms.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Graph with garbage.
    let resp = c
        .get(format!("{}/v1.0/me", ms.base_url()))
        .header("authorization", "Bearer")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The server is still alive.
    let resp = c
        .get(format!("{}/common/discovery/v2.0/keys", ms.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn personal_user_expired_code_and_auth_method_mixups() {
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT);
    cfg.users = vec![FakeUser::personal("bob@outlook.com")];
    let ms = FakeMicrosoft::start(cfg).await.unwrap();
    let (verifier, challenge) = pkce();

    // Expired code.
    let code = authorize(&ms, "consumers", AUTH_SCOPE, &challenge).await;
    ms.expire_codes();
    let (status, b) = redeem(&ms, "consumers", &code, &verifier, Some(IMAP)).await;
    assert_eq!(
        (status, error_code(&b)),
        (400, ("invalid_grant".into(), 70008))
    );

    // Personal account: issuer is the MSA tenant, Graph mail is null.
    let code = authorize(&ms, "consumers", AUTH_SCOPE, &challenge).await;
    let (status, b) = redeem(&ms, "consumers", &code, &verifier, Some("User.Read openid")).await;
    assert_eq!(status, 200, "{b}");
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(jwk_modulus(), jwk_exponent()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[format!("{}/{PERSONAL_TENANT_ID}/v2.0", ms.base_url())]);
    let claims = jsonwebtoken::decode::<Value>(b["id_token"].as_str().unwrap(), &dk, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["email"], "bob@outlook.com");
    // No offline_access in the token scope, but it was granted at authorize.
    assert!(b["refresh_token"].is_string());
    let me: Value = client()
        .get(format!("{}/v1.0/me", ms.base_url()))
        .bearer_auth(b["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(me["mail"].is_null());
    assert_eq!(me["userPrincipalName"], "bob@outlook.com");

    // Both Basic and client_secret_post: refused.
    let resp = client()
        .post(format!("{}/consumers/oauth2/v2.0/token", ms.base_url()))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_secret", SECRET),
            ("refresh_token", b["refresh_token"].as_str().unwrap()),
            ("scope", IMAP),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    // Unknown user named for the next login: the sign-in fails loudly.
    ms.set_user_for_next_login("nobody@contoso.com");
    let (_, q) = authorize_raw(
        &ms,
        "common",
        &[
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", AUTH_SCOPE),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(q["error"], "invalid_request");
    assert!(!q.contains_key("state"));
}

/// The header and claims of a JWT, unverified.
fn jwt_parts(token: &str) -> (Value, Value, String) {
    let mut parts = token.split('.');
    let mut next = || {
        serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap())
            .unwrap()
    };
    let (header, claims) = (next(), next());
    (header, claims, token.rsplit('.').next().unwrap().to_owned())
}

fn verifies_with_the_published_key(token: &str) -> bool {
    let key =
        jsonwebtoken::DecodingKey::from_rsa_components(jwk_modulus(), jwk_exponent()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &v).is_ok()
}

#[tokio::test]
async fn id_token_flaws_are_what_they_say_and_off_by_default() {
    let ms = start().await;
    let user = FakeUser::work("ops@contoso.com");
    let now = chrono::Utc::now().timestamp();
    let other = "0b2f3c4d-1111-4222-8333-444455556666";
    let body = sign_in(&ms).await;
    let token = body["id_token"].as_str().unwrap();
    assert!(verifies_with_the_published_key(token));
    let (header, claims, _) = jwt_parts(token);
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("RS256"), Some(KEY_ID))
    );
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["iss"], ms.issuer_for(&user));
    for flaw in [
        IdTokenFlaw::Audience("another-app".into()),
        IdTokenFlaw::Issuer("https://evil.example".into()),
        IdTokenFlaw::Directory(other.into()),
        IdTokenFlaw::Tid(other.into()),
        IdTokenFlaw::NoTid,
        IdTokenFlaw::Expired,
        IdTokenFlaw::NotYetValid,
        IdTokenFlaw::UnknownKid,
        IdTokenFlaw::NoKid,
        IdTokenFlaw::Hs256,
        IdTokenFlaw::AlgNone,
        IdTokenFlaw::OtherKey,
        IdTokenFlaw::Omitted,
    ] {
        ms.set_id_token_flaw(Some(flaw.clone()));
        let body = sign_in(&ms).await;
        if flaw == IdTokenFlaw::Omitted {
            assert!(body.get("id_token").is_none());
            continue;
        }
        let token = body["id_token"].as_str().unwrap();
        let (h, c, sig) = jwt_parts(token);
        let ok = match &flaw {
            IdTokenFlaw::Audience(a) => c["aud"] == a.as_str(),
            IdTokenFlaw::Issuer(i) => c["iss"] == i.as_str(),
            IdTokenFlaw::Directory(t) => {
                c["tid"] == t.as_str() && c["iss"] == format!("{}/{t}/v2.0", ms.base_url())
            }
            IdTokenFlaw::Tid(t) => c["tid"] == t.as_str() && c["iss"] == ms.issuer_for(&user),
            IdTokenFlaw::NoTid => c.get("tid").is_none(),
            IdTokenFlaw::Expired => c["exp"].as_i64().unwrap() < now,
            IdTokenFlaw::NotYetValid => c["nbf"].as_i64().unwrap() > now + 600,
            IdTokenFlaw::UnknownKid => h["kid"] != KEY_ID && h["alg"] == "RS256",
            IdTokenFlaw::NoKid => h.get("kid").is_none(),
            IdTokenFlaw::Hs256 => h["alg"] == "HS256",
            IdTokenFlaw::AlgNone => h["alg"] == "none" && sig.is_empty(),
            IdTokenFlaw::OtherKey => h["kid"] == KEY_ID && !verifies_with_the_published_key(token),
            IdTokenFlaw::Omitted => unreachable!(),
        };
        assert!(ok, "{flaw:?}: {h} {c}");
    }
    ms.set_id_token_flaw(None);
    assert!(verifies_with_the_published_key(
        sign_in(&ms).await["id_token"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn the_jwks_can_be_down_and_counts_its_requests() {
    let ms = start().await;
    let url = format!("{}/common/discovery/v2.0/keys", ms.base_url());
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    ms.set_jwks_down(true);
    assert_eq!(client().get(&url).send().await.unwrap().status(), 503);
    assert_eq!(ms.jwks_requests(), 2);
}

#[tokio::test]
async fn a_domain_tenant_admits_only_its_directory_once_added() {
    let ms = start().await;
    ms.add_user(FakeUser::personal("someone@outlook.com"));
    let (_, challenge) = pkce();
    let params = |hint: &'static str| {
        vec![
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", AUTH_SCOPE),
            ("code_challenge", ""),
            ("code_challenge_method", "S256"),
            ("login_hint", hint),
        ]
    };
    let with_challenge = |mut p: Vec<(&'static str, &'static str)>, c: &'static str| {
        p[4] = ("code_challenge", c);
        p
    };
    let c: &'static str = Box::leak(challenge.into_boxed_str());
    // Never added: anyone (today's behaviour).
    let (_, q) = authorize_raw(
        &ms,
        "contoso.com",
        &with_challenge(params("someone@outlook.com"), c),
    )
    .await;
    assert!(q.contains_key("code"), "{q:?}");
    ms.add_domain("contoso.com", WORK_TENANT_ID);
    let (_, q) = authorize_raw(
        &ms,
        "contoso.com",
        &with_challenge(params("someone@outlook.com"), c),
    )
    .await;
    assert!(q["error_description"].contains("AADSTS50020"), "{q:?}");
    let (_, q) = authorize_raw(
        &ms,
        "contoso.com",
        &with_challenge(params("ops@contoso.com"), c),
    )
    .await;
    assert!(q.contains_key("code"), "{q:?}");
    let doc: Value = client()
        .get(format!(
            "{}/contoso.com/v2.0/.well-known/openid-configuration",
            ms.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["issuer"],
        format!("{}/{WORK_TENANT_ID}/v2.0", ms.base_url())
    );
}

#[tokio::test]
async fn refresh_tokens_die_from_inactivity_only_when_asked() {
    let ms = start().await;
    let rt = ms.mint_refresh_token("ops@contoso.com");
    ms.age_refresh_tokens(Duration::from_secs(400 * 86_400));
    assert!(ms.refresh_token_is_live(&rt), "no idle limit by default");
    ms.set_refresh_token_max_idle(Some(Duration::from_secs(90 * 86_400)));
    assert!(!ms.refresh_token_is_live(&rt));
    let (status, body) = refresh(&ms, &rt, Some(&format!("{IMAP} offline_access"))).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, ("invalid_grant".into(), 700082))
    );
    // A fresh one lives until it has been idle too long.
    let rt = ms.mint_refresh_token("ops@contoso.com");
    ms.age_refresh_tokens(Duration::from_secs(89 * 86_400));
    let (status, body) = refresh(&ms, &rt, Some(&format!("{IMAP} offline_access"))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn token_requests_in_flight_are_counted_until_answered_or_dropped() {
    let ms = start().await;
    let rt = ms.mint_refresh_token("ops@contoso.com");
    ms.set_fault(Some(Fault::Slow(Duration::from_millis(300))));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("refresh_token", rt.as_str()),
        ("scope", "https://outlook.office.com/IMAP.AccessAsUser.All"),
    ];
    let url = format!("{}/common/oauth2/v2.0/token", ms.base_url());
    let (a, b) = tokio::join!(
        impatient.post(&url).form(&form).send(),
        impatient.post(&url).form(&form).send()
    );
    assert!(a.is_err() && b.is_err(), "both gave up");
    for _ in 0..100 {
        if ms.token_requests_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ms.token_requests_in_flight(), 0);
    assert_eq!(ms.most_token_requests_in_flight(), 2);
    // Dropped unprocessed: the refresh token was never spent.
    assert_eq!(ms.refresh_grants(), 0);
    assert!(ms.refresh_token_is_live(&rt));
}

/// A client credentials request for Exchange Online's app permissions. No
/// directory is set up: a fault is played before the request is read.
fn app_token_form() -> [(&'static str, &'static str); 4] {
    [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("scope", "https://outlook.office.com/.default"),
    ]
}

/// `(error, suberror, error_codes[0], error_description)` of an answer.
fn aadsts_of(v: &Value) -> (&str, Option<&str>, u64, &str) {
    (
        v["error"].as_str().unwrap_or(""),
        v["suberror"].as_str(),
        v["error_codes"][0].as_u64().unwrap_or(0),
        v["error_description"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn an_aadsts_fault_is_microsofts_own_answer_at_every_grant() {
    let ms = start().await;
    let rt = sign_in(&ms).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (verifier, challenge) = pkce();
    let code = authorize(&ms, "common", AUTH_SCOPE, &challenge).await;
    let scope = format!("{IMAP} offline_access");

    ms.set_fault(Some(Fault::Aadsts(7000222)));
    let answers = [
        refresh(&ms, &rt, Some(&scope)).await,
        redeem(&ms, "common", &code, &verifier, Some(IMAP)).await,
        token(&ms, WORK_TENANT_ID, &app_token_form()).await,
    ];
    for (status, b) in &answers {
        assert_eq!(*status, 401, "{b}");
        let (error, suberror, number, description) = aadsts_of(b);
        assert_eq!((error, suberror, number), ("invalid_client", None, 7000222));
        assert!(
            description.starts_with(&format!(
                "AADSTS7000222: The provided client secret keys for app '{CLIENT_ID}' are expired."
            )),
            "{description}"
        );
        assert_error_shape(b, &ms);
    }

    ms.set_fault(Some(Fault::Aadsts(65001)));
    let (status, b) = refresh(&ms, &rt, Some(&scope)).await;
    assert_eq!(status, 400, "{b}");
    let (error, suberror, number, description) = aadsts_of(&b);
    assert_eq!(
        (error, suberror, number),
        ("invalid_grant", Some("consent_required"), 65001)
    );
    assert!(
        description.starts_with(&format!("AADSTS65001: The user or administrator has not consented to use the application with ID '{CLIENT_ID}' named 'mailconnect'.")),
        "{description}"
    );
    assert_error_shape(&b, &ms);

    // Answered without being read: the refresh token and the code still work.
    ms.set_fault(None);
    assert_eq!(refresh(&ms, &rt, Some(&scope)).await.0, 200);
    assert_eq!(
        redeem(&ms, "common", &code, &verifier, Some(IMAP)).await.0,
        200
    );
}

#[tokio::test]
async fn every_aadsts_code_of_the_table_is_answered_as_the_table_says() {
    let ms = start().await;
    let rt = sign_in(&ms).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    for row in AADSTS_ERRORS {
        ms.set_fault_once(Fault::Aadsts(row.code));
        let (status, b) = refresh(&ms, &rt, Some(IMAP)).await;
        assert_eq!(status, row.status.as_u16(), "AADSTS{}: {b}", row.code);
        let (error, suberror, number, description) = aadsts_of(&b);
        assert_eq!(
            (error, suberror, number),
            (row.error, row.suberror, u64::from(row.code))
        );
        let words = row.describe(CLIENT_ID, "mailconnect", "common");
        assert!(
            description.starts_with(&format!("AADSTS{}: {words}\r\n", row.code)),
            "{description}"
        );
        assert!(b["error_uri"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/error?code={}", row.code)));
    }
}

#[tokio::test]
async fn a_looping_daemon_is_throttled_with_a_bare_429_and_a_user_with_invalid_grant() {
    let ms = start().await;
    let rt = sign_in(&ms).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    ms.set_fault(Some(Fault::Aadsts(50196)));
    let resp = client()
        .post(ms.token_endpoint(WORK_TENANT_ID))
        .form(&app_token_form())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");
    assert_eq!(resp.text().await.unwrap(), "Too Many Requests");

    let (status, b) = refresh(&ms, &rt, Some(IMAP)).await;
    assert_eq!(status, 400);
    assert_eq!(aadsts_of(&b).0, "invalid_grant");
    assert_eq!(aadsts_of(&b).2, 50196);
}

#[test]
#[should_panic(expected = "no answer for AADSTS4242")]
fn an_aadsts_code_the_sandbox_does_not_know_panics_when_set() {
    let cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT);
    let ms = FakeMicrosoft::build(cfg, "http://127.0.0.1:9").unwrap();
    ms.set_fault_once(Fault::Aadsts(4242));
}

#[tokio::test]
async fn fail_next_authorize_redirects_once_with_microsofts_error_and_the_state() {
    let ms = start().await;
    let (_, challenge) = pkce();
    let params = |state: &'static str| {
        vec![
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", AUTH_SCOPE),
            ("state", state),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
    };

    ms.fail_next_authorize(90094);
    let (status, q) = authorize_raw(&ms, "common", &params("s-1")).await;
    assert_eq!(status, 302);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    let description = &q["error_description"];
    assert!(
        description.starts_with("AADSTS90094: The grant requires admin permission.\r\nTrace ID: "),
        "{description}"
    );
    assert!(
        description.contains("\r\nCorrelation ID: ") && description.contains("\r\nTimestamp: ")
    );
    assert_eq!(q.get("state").map(String::as_str), Some("s-1"));
    assert!(!q.contains_key("code"));
    // Once: the next authorization gives a code.
    authorize(&ms, "common", AUTH_SCOPE, &challenge).await;

    // A request refused on its own keeps the failure for the next one.
    ms.fail_next_authorize(53003);
    let no_pkce: Vec<_> = params("s-2")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .collect();
    let (_, q) = authorize_raw(&ms, "common", &no_pkce).await;
    assert!(q["error_description"].starts_with("AADSTS9002325"), "{q:?}");
    let (_, q) = authorize_raw(&ms, "common", &params("s-3")).await;
    assert!(q["error_description"].starts_with("AADSTS53003: "), "{q:?}");

    // Every code authorize can send, with the error the table gives it.
    for row in AADSTS_ERRORS {
        let Some(error) = row.authorize_error else {
            continue;
        };
        ms.fail_next_authorize(row.code);
        let (_, q) = authorize_raw(&ms, "common", &params("s-4")).await;
        assert_eq!(
            q.get("error").map(String::as_str),
            Some(error),
            "AADSTS{}",
            row.code
        );
        assert!(q["error_description"].starts_with(&format!("AADSTS{}: ", row.code)));
        assert_eq!(q.get("state").map(String::as_str), Some("s-4"));
    }
}

#[test]
#[should_panic(expected = "does not redirect with AADSTS700082")]
fn fail_next_authorize_refuses_a_code_only_the_token_endpoint_sends() {
    let cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT);
    let ms = FakeMicrosoft::build(cfg, "http://127.0.0.1:9").unwrap();
    ms.fail_next_authorize(700082);
}
