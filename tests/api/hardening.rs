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

/// Every rejection a client can provoke with a path, a method or a header
/// is JSON, and an unauthenticated request is 401 before its path is read.
#[tokio::test]
async fn path_parameters_answer_in_the_json_error_shape_after_authentication() {
    let app = TestApp::spawn().await;
    let anyone = "";
    let admin = app.admin();
    let service = app.service();
    let cases: [(&str, &str, &str, u16, &str); 14] = [
        (
            "POST",
            "/api/accounts/%FF%FE/token",
            anyone,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/accounts/%FF%FE/token",
            &service,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/accounts/%FF%FE/token",
            &admin,
            403,
            "forbidden",
        ),
        (
            "POST",
            "/api/accounts/..%2F..%2Fetc/token",
            &service,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/accounts/%FF%FE/verify",
            anyone,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/accounts/%FF%FE/verify",
            &admin,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/oauth/%FF%FE/authorize",
            anyone,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/oauth/%FF%FE/authorize",
            &admin,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/oauth/yahoo/authorize",
            anyone,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/oauth/yahoo/disconnect",
            anyone,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/oauth/%FF%FE/disconnect",
            &admin,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/oauth/%FF%FE/callback",
            anyone,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/oauth/%0D%0A/callback",
            anyone,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/oauth/microsoft/authorize",
            &admin,
            405,
            "invalid_request",
        ),
    ];
    for (method, path, jwt, status, code) in cases {
        let mut req = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .header("content-type", "application/json")
            .body("{}");
        if !jwt.is_empty() {
            req = req.bearer_auth(jwt);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
        let body: Value = r.json().await.unwrap();
        assert_json_error(s, &body, status, code);
    }
    // A header that is not text is an authentication failure, in JSON.
    let r = app
        .http
        .post(app.url("/api/accounts/%FF/token"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 401, "unauthorized");
}

/// CR/LF and terminal escapes in a request value never forge a log line:
/// each log line stays one event, and no escape byte reaches the log.
#[tokio::test]
async fn request_values_cannot_forge_log_lines() {
    let app = TestApp::spawn().await;
    // Short enough to survive the 64 characters of `error` that are logged.
    let forged = "FORGED-LOG-LINE INFO x";
    let auth = app.authorize(TENANT, json!({})).await;
    let state = auth["state"].as_str().unwrap();
    let error = format!("denied\r\n{forged}\u{1b}[31m\u{1b}]0;t\u{7}\r\n");
    let url = url::Url::parse_with_params(
        &app.url("/api/oauth/microsoft/callback"),
        &[("error", error.as_str()), ("state", state)],
    )
    .unwrap();
    let landing = app.callback(url.as_str()).await;
    assert_eq!(query(&landing)["oauth"], "error");
    // A caller's request id that is not a plain token is replaced, not logged.
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", format!("id {forged}"))
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!echoed.contains("FORGED"), "{echoed}");
    assert_eq!(echoed.len(), 36, "a fresh UUID: {echoed}");
    // Through a path parameter too.
    let r = app
        .http
        .get(app.url("/api/oauth/x%0D%0AFORGED-LOG-LINE/callback"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let logs = captured_logs();
    assert!(
        !logs.contains('\u{1b}') && !logs.contains('\u{7}'),
        "an escape sequence reached the log"
    );
    let mut seen = 0;
    for line in logs.lines() {
        if line.contains("FORGED-LOG-LINE") {
            seen += 1;
            assert!(!line.starts_with("FORGED"), "a forged line: {line}");
            assert!(
                line.contains("the provider returned an error to the callback")
                    || line.contains("request"),
                "the value left its event: {line}"
            );
        }
    }
    assert!(seen >= 1, "the callback's error was logged (escaped)");
}

/// Authorize as the admin page does it: a same-origin fetch from a
/// secure (here loopback) origin. Returns the body and the flow cookie.
async fn authorize_from_the_page(app: &TestApp, origin: &str) -> (Value, Option<String>) {
    let r = app
        .http
        .post(app.url("/api/oauth/microsoft/authorize"))
        .bearer_auth(app.admin())
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "cors")
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.json().await.unwrap(), cookie)
}

async fn callback_with_cookie(app: &TestApp, url: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_flow_started_from_the_admin_page_completes_only_in_that_browser() {
    let app = TestApp::spawn().await;
    let (auth, set_cookie) = authorize_from_the_page(&app, &app.base).await;
    let set_cookie = set_cookie.expect("a flow cookie for the page's browser");
    for attribute in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(!set_cookie.contains("Domain"), "{set_cookie}");
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    let (name, secret) = pair.split_once('=').unwrap();
    assert!(name.starts_with("__Host-mailconnect-flow-"), "{name}");
    let jti = claims_of(auth["state"].as_str().unwrap())
        .jti
        .replace('-', "");
    assert!(name.ends_with(&jti), "named after the state: {name}");
    assert!(
        !auth["state"].as_str().unwrap().contains(secret)
            && !auth["authorization_url"].as_str().unwrap().contains(secret),
        "the browser's secret travels only in its cookie"
    );

    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    // Replayed in a browser without the cookie, or with another value: the
    // bad-state page, and the state is not spent.
    let wrong = format!("{name}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for cookie in [None, Some(wrong.as_str()), Some("other=1")] {
        let r = callback_with_cookie(&app, &callback, cookie).await;
        assert_eq!(r.status(), 400, "{cookie:?}");
        assert!(r.headers().get("location").is_none());
        assert!(r.text().await.unwrap().contains("another browser"));
    }
    assert_eq!(app.ms.code_redemptions(), 0);
    // The browser that started it finishes it, and its cookie is cleared.
    let r = callback_with_cookie(&app, &callback, Some(&format!("a=b; {pair}"))).await;
    assert_eq!(r.status(), 303);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with(&format!("{name}=;")), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let landing = r.headers()["location"].to_str().unwrap();
    assert_eq!(query(landing)["oauth"], "connected");
}

#[tokio::test]
async fn a_flow_started_by_an_api_caller_or_an_insecure_page_is_not_bound() {
    let app = TestApp::spawn().await;
    // A plain API call (no Sec-Fetch-Site): no cookie, and the URL works in
    // whichever browser opens it.
    let r = app
        .post_json("/api/oauth/microsoft/authorize", &app.admin(), json!({}))
        .await;
    assert!(r.headers().get("set-cookie").is_none());
    let auth: Value = r.json().await.unwrap();
    assert!(claims_of(auth["state"].as_str().unwrap()).bnd.is_none());
    let landing = app
        .callback(
            &app.consent(auth["authorization_url"].as_str().unwrap())
                .await,
        )
        .await;
    assert_eq!(query(&landing)["oauth"], "connected");
    // A page served over plain http from a non-loopback host could not keep
    // a __Host- cookie: its flows stay unbound rather than break.
    let (auth, cookie) = authorize_from_the_page(&app, "http://10.1.2.3:8080").await;
    assert!(cookie.is_none());
    assert!(claims_of(auth["state"].as_str().unwrap()).bnd.is_none());
}
