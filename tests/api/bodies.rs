use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn send(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = app
        .http
        .post(app.url(path))
        .bearer_auth(app.admin())
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
    )
}

#[tokio::test]
async fn malformed_bodies_get_4xx_json_errors() {
    let app = TestApp::spawn().await;
    let json = Some("application/json");
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("/api/oauth/microsoft/authorize", json, b"{".to_vec(), 400),
        (
            "/api/oauth/microsoft/authorize",
            json,
            b"[1,2]".to_vec(),
            400,
        ),
        (
            "/api/oauth/microsoft/authorize",
            json,
            br#"{"account_id": 5}"#.to_vec(),
            400,
        ),
        (
            "/api/oauth/microsoft/authorize",
            json,
            br#"{"return_to": "https://evil"}"#.to_vec(),
            400,
        ),
        (
            "/api/oauth/microsoft/authorize",
            json,
            vec![0xff, 0xfe, 0x00],
            400,
        ),
        (
            "/api/oauth/microsoft/authorize",
            Some("text/plain"),
            b"hello".to_vec(),
            415,
        ),
        ("/api/oauth/microsoft/disconnect", json, b"".to_vec(), 400),
        ("/api/oauth/microsoft/disconnect", json, b"{}".to_vec(), 400),
        (
            "/api/oauth/microsoft/disconnect",
            json,
            br#"{"account_id": "not-an-id"}"#.to_vec(),
            404,
        ),
        (
            "/api/oauth/microsoft/disconnect",
            json,
            b"null".to_vec(),
            400,
        ),
        // serde would fill a two-field struct from a two-item array.
        (
            "/api/oauth/microsoft/admin-consent",
            json,
            b"[null, null]".to_vec(),
            400,
        ),
        (
            "/api/accounts",
            json,
            br#"["shared", "support@contoso.com", null, null]"#.to_vec(),
            400,
        ),
    ];
    for (path, ct, body, expected) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (status, v) = send(&app, path, ct, body).await;
        assert_eq!(status.as_u16(), expected, "{path} {shown:?}: {v}");
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_json() {
    let app = TestApp::spawn().await;
    let big = format!("{{\"login_hint\": \"{}\"}}", "a".repeat(1_000_000));
    let (status, v) = send(
        &app,
        "/api/oauth/microsoft/authorize",
        Some("application/json"),
        big.into_bytes(),
    )
    .await;
    assert_json_error(status, &v, 413, "payload_too_large");
}

#[tokio::test]
async fn an_empty_authorize_body_is_allowed() {
    let app = TestApp::spawn().await;
    let (status, v) = send(&app, "/api/oauth/microsoft/authorize", None, Vec::new()).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["authorization_url"].is_string());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(app.url("/api/nothing-here"))
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 404, "not_found");
    let r = app
        .http
        .get(app.url("/api/oauth/microsoft/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
}
