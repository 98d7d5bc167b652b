//! The OpenAPI document against the live routes: it is served, parses as
//! OpenAPI 3, documents exactly DESIGN.md's routes, and every documented
//! operation answers a real request (never the fallback 404 or a 405) with
//! a status and content type the document lists for it.

use std::collections::BTreeSet;

use mailconnect_sandbox::FakeUser;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// DESIGN.md's "HTTP API" table.
const DESIGN_ROUTES: [(&str, &str); 17] = [
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/api/oauth/status"),
    ("post", "/api/oauth/{provider}/authorize"),
    ("get", "/api/oauth/{provider}/callback"),
    ("post", "/api/oauth/{provider}/disconnect"),
    ("post", "/api/oauth/microsoft/admin-consent"),
    ("post", "/api/accounts"),
    ("post", "/api/accounts/{id}/token"),
    ("post", "/api/accounts/{id}/verify"),
    ("get", "/api/audit"),
    ("post", "/api/connect-links"),
    ("get", "/api/connect-links"),
    ("delete", "/api/connect-links/{id}"),
    ("get", "/"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Nobody,
    Admin,
    Service,
}

/// One real request for a documented operation.
struct Call {
    caller: Caller,
    /// The path with its parameters filled in, and any query.
    target: String,
    body: Option<Value>,
    /// What this particular request must answer.
    expect: u16,
}

async fn document(app: &TestApp) -> Value {
    let r = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    r.json().await.unwrap()
}

fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect()
}

/// The role a documented operation needs: none without `security`, else
/// read off its documented 403 (which role it says is missing).
fn documented_caller(op: &Value) -> Caller {
    let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
    if !secured {
        return Caller::Nobody;
    }
    let responses = &op["responses"];
    assert!(
        responses.get("401").is_some(),
        "a secured route documents 401: {op}"
    );
    match responses["403"]["$ref"].as_str() {
        Some("#/components/responses/ForbiddenAdmin") => Caller::Admin,
        Some("#/components/responses/ForbiddenService") => Caller::Service,
        other => panic!("a secured route documents its 403 by role, not {other:?}: {op}"),
    }
}

#[tokio::test]
async fn the_document_matches_the_live_routes() {
    let app = TestApp::spawn_with(Options {
        users: vec![
            FakeUser::work("ops@contoso.com"),
            FakeUser::work("sales@contoso.com"),
        ],
        ..Options::default()
    })
    .await;

    let doc = document(&app).await;
    // OpenAPI 3, and it parses as an OpenAPI document, not just as JSON.
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let typed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(typed.paths.paths.len(), 16);
    assert_eq!(doc["info"]["title"], "mailconnect");

    // Exactly DESIGN.md's routes: one removed or added shows up here.
    let documented = documented_operations(&doc);
    let expected: BTreeSet<(String, String)> = DESIGN_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    // The contract's shared pieces.
    assert_eq!(
        doc["components"]["schemas"]["ProviderKind"]["enum"],
        json!(["microsoft", "google", "oidc"])
    );
    assert_eq!(
        doc["components"]["schemas"]["AccountStatus"]["enum"],
        json!(["connected", "needs_reauth", "disconnected"])
    );
    assert_eq!(
        doc["components"]["schemas"]["AccountKind"]["enum"],
        json!(["delegated", "shared", "app"])
    );
    assert_eq!(
        doc["components"]["schemas"]["CallbackReason"]["enum"],
        json!([
            "access_denied",
            "consent_required",
            "state_expired",
            "token_exchange_failed",
            "provider_unavailable",
            "email_unavailable",
            "account_mismatch"
        ])
    );
    let error_fields = &doc["components"]["schemas"]["ErrorBody"]["required"];
    assert_eq!(error_fields, &json!(["error", "message"]));
    let bearer = &doc["components"]["securitySchemes"]["bearer_jwt"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
    assert!(
        doc["components"]["responses"]["ProviderUnavailable"]["headers"]
            .get("Retry-After")
            .is_some()
    );

    // Real data for the parameters: a connected account (the token route),
    // a disconnected one (disconnect again; verify answers 409 without
    // reaching any mail server), a callback with a fresh code and state.
    let connected = app.connect(TENANT, "ops@contoso.com").await;
    let gone = app.connect(TENANT, "sales@contoso.com").await;
    let r = app
        .post_json(
            "/api/oauth/microsoft/disconnect",
            &app.admin(),
            json!({"account_id": gone}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.ms.set_user_for_next_login("ops@contoso.com");
    let auth = app.authorize(TENANT, json!({})).await;
    let callback = app
        .consent(auth["authorization_url"].as_str().unwrap())
        .await;
    let callback = callback.strip_prefix(&app.base).unwrap().to_owned();
    assert!(
        callback.starts_with("/api/oauth/microsoft/callback?"),
        "{callback}"
    );

    let r = app
        .post_json("/api/connect-links", &app.admin(), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let link = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let plan = |method: &str, path: &str| -> Call {
        let call = |caller, target: String, body, expect| Call {
            caller,
            target,
            body,
            expect,
        };
        let fill = |p: &str, id: &str| p.replace("{provider}", "microsoft").replace("{id}", id);
        match (method, path) {
            ("get", "/api/oauth/{provider}/callback") => {
                call(Caller::Nobody, callback.clone(), None, 303)
            }
            ("post", "/api/oauth/{provider}/authorize" | "/api/oauth/microsoft/admin-consent") => {
                call(Caller::Admin, fill(path, ""), Some(json!({})), 200)
            }
            ("post", "/api/oauth/{provider}/disconnect") => call(
                Caller::Admin,
                fill(path, ""),
                Some(json!({"account_id": gone})),
                200,
            ),
            ("post", "/api/accounts") => call(
                Caller::Admin,
                path.into(),
                Some(
                    json!({"kind": "shared", "email": "support@contoso.com", "via_account_id": connected}),
                ),
                201,
            ),
            ("post", "/api/accounts/{id}/token") => {
                call(Caller::Service, fill(path, &connected), None, 200)
            }
            ("post", "/api/accounts/{id}/verify") => {
                call(Caller::Admin, fill(path, &gone), None, 409)
            }
            ("post", "/api/connect-links") => {
                call(Caller::Admin, path.into(), Some(json!({})), 201)
            }
            ("delete", "/api/connect-links/{id}") => {
                call(Caller::Admin, fill(path, &link), None, 204)
            }
            ("get", "/api/oauth/status" | "/api/audit" | "/api/connect-links") => {
                call(Caller::Admin, path.into(), None, 200)
            }
            ("get", _) => call(Caller::Nobody, path.into(), None, 200),
            other => panic!("no request planned for {other:?}"),
        }
    };

    let mut answered = 0;
    for (method, path) in &documented {
        answered += 1;
        let op = &doc["paths"][path][method];
        let call = plan(method, path);
        assert_eq!(
            documented_caller(op),
            call.caller,
            "{method} {path}: the documented role"
        );
        let mut req = app.http.request(
            Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            app.url(&call.target),
        );
        req = match call.caller {
            Caller::Nobody => req,
            Caller::Admin => req.bearer_auth(app.admin()),
            Caller::Service => req.bearer_auth(app.service()),
        };
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = r.text().await.unwrap();
        let what = format!("{method} {} -> {status} {text:.300}", call.target);

        // It answered: not the fallback, not 405.
        assert_ne!(status, 405, "{what}");
        if let Ok(body) = serde_json::from_str::<Value>(&text) {
            assert_ne!(body["message"], "no such route", "{what}");
        }
        assert_eq!(status, call.expect, "{what}");

        // With a status, and a content type, the document lists for it.
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{what}: status {status} is not documented"
        );
        let documented = match documented["$ref"].as_str() {
            Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap()],
            None => documented,
        };
        match documented["content"].as_object() {
            None => assert!(text.is_empty(), "{what}: documented without a body"),
            Some(content) => {
                let mime = content_type
                    .as_deref()
                    .and_then(|ct| ct.split(';').next())
                    .unwrap_or("")
                    .trim();
                assert!(
                    content.contains_key(mime),
                    "{what}: {mime} is not among {:?}",
                    content.keys().collect::<Vec<_>>()
                );
                if mime == "application/json" {
                    let body: Value = serde_json::from_str(&text).unwrap();
                    assert!(body.is_object(), "{what}");
                }
            }
        }
    }

    assert_eq!(answered, DESIGN_ROUTES.len());

    // The fallback the loop rules out really looks like that.
    let r = app
        .http
        .get(app.url("/api/no-such-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "not_found", "message": "no such route"})
    );
}

/// `mailconnect openapi` prints the document the server serves.
#[tokio::test]
async fn the_cli_prints_the_served_document() {
    let app = TestApp::spawn().await;
    let served = document(&app).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailconnect"))
        .arg("openapi")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(served, printed);
}
