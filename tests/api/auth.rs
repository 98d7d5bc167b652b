use base64::Engine;
use mailconnect::http::auth::{mint, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn status_with(app: &TestApp, auth: Option<&str>) -> (StatusCode, Value) {
    let mut req = app.http.get(app.url("/api/oauth/status"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_401() {
    let app = TestApp::spawn().await;
    let claims = json!({"sub": "u", "tenant_id": TENANT, "role": "admin", "exp": chrono::Utc::now().timestamp() + 600});
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let forged = mint(
        b"not-the-secret-not-the-secret-xx",
        "u",
        TENANT,
        Role::Admin,
        600,
    );
    let expired = mint(JWT_SECRET.as_bytes(), "u", TENANT, Role::Admin, -120);
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let no_tenant = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "role": "admin", "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    // Each refusal says why.
    for (token, why) in [
        (&expired, "the token has expired"),
        (&forged, "the token's signature does not verify"),
        (&hs512, "the token must be signed with HS256"),
        (&no_tenant, "the token is malformed"),
    ] {
        let (status, body) = status_with(&app, Some(&format!("Bearer {token}"))).await;
        assert_json_error(status, &body, 401, "unauthorized");
        assert!(body["message"].as_str().unwrap().starts_with(why), "{body}");
    }
    for auth in [
        None,
        Some("Basic dXNlcjpwYXNz".to_string()),
        Some("Bearer".to_string()),
        Some("Bearer not.a.jwt".to_string()),
        Some(format!("Bearer {alg_none}")),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {hs512}")),
        Some(format!("Bearer {no_tenant}")),
    ] {
        let (status, body) = status_with(&app, auth.as_deref()).await;
        assert_json_error(status, &body, 401, "unauthorized");
    }
}

#[tokio::test]
async fn a_user_id_must_be_1_to_200_characters() {
    let app = TestApp::spawn().await;
    for (sub, ok) in [
        (String::new(), false),
        ("u".repeat(200), true),
        ("u".repeat(201), false),
    ] {
        let token = mint(JWT_SECRET.as_bytes(), &sub, TENANT, Role::Admin, 600);
        let (status, body) = status_with(&app, Some(&format!("Bearer {token}"))).await;
        if ok {
            assert_eq!(status, 200, "{} characters: {body}", sub.len());
        } else {
            assert_json_error(status, &body, 401, "unauthorized");
            assert_eq!(body["message"], "the token's sub is not valid");
        }
    }
}

#[tokio::test]
async fn each_route_demands_its_role() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let (status, body) = status_with(&app, Some(&format!("Bearer {}", app.service()))).await;
    assert_json_error(status, &body, 403, "forbidden");
    let admin = mint(JWT_SECRET.as_bytes(), "u", TENANT, Role::Admin, 600);
    assert_eq!(
        status_with(&app, Some(&format!("Bearer {admin}"))).await.0,
        200
    );
    // A valid token with a role mailconnect does not know may do nothing.
    let viewer = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "tenant_id": TENANT, "role": "viewer",
                "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = status_with(&app, Some(&format!("Bearer {viewer}"))).await;
    assert_json_error(status, &body, 403, "forbidden");
    let r = app
        .http
        .post(app.url(&format!("/api/accounts/{id}/token")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 403, "forbidden");

    let r = app
        .http
        .post(app.url(&format!("/api/accounts/{id}/token")))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 403, "forbidden");
    let r = app
        .post_json("/api/oauth/microsoft/authorize", &app.service(), json!({}))
        .await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 403, "forbidden");
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.service(),
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.row(&id).await["status"].as_deref(), Some("connected"));
}

#[tokio::test]
async fn another_tenants_account_is_not_found() {
    let app = TestApp::spawn().await;
    let id = app.connect(TENANT, "ops@contoso.com").await;
    let r = app.token(OTHER_TENANT, &id).await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 404, "not_found");
    let admin_b = app.jwt(OTHER_TENANT, Role::Admin);
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &admin_b,
            json!({"account_id": id}),
        )
        .await;
    let s = r.status();
    assert_json_error(s, &r.json().await.unwrap(), 404, "not_found");
    let r = app
        .post_json(
            "/api/oauth/microsoft/authorize",
            &admin_b,
            json!({"account_id": id}),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(app.status(OTHER_TENANT).await["accounts"], json!([]));
    assert_eq!(app.row(&id).await["status"].as_deref(), Some("connected"));
    // Ids that are not ids are simply not found.
    for bad in [
        "nope",
        "..%2F..%2Fetc",
        "00000000-0000-0000-0000-000000000000",
    ] {
        assert_eq!(app.token(TENANT, bad).await.status(), 404, "{bad}");
    }
}
