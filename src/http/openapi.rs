//! `GET /api/openapi.json`: the OpenAPI 3.1 document of this API, generated
//! from the handlers themselves. Each area's router registers its routes
//! with `utoipa_axum::routes!`, which adds a handler to the axum router and
//! its `#[utoipa::path]` description to the document in one step, so a route
//! cannot exist undocumented. The document served is the one produced by
//! assembling the very routers [`super::router`] serves.
//!
//! The bearer JWT security scheme lives here; the error responses many
//! routes share live in [`super::responses`].

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::responses::*;
use crate::app::App;

/// The name of the security scheme routes refer to.
pub const BEARER: &str = "bearer_jwt";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailconnect",
        description = "Connects a tenant's mailboxes to Microsoft 365 / Outlook, Google and \
standards-based OpenID Connect providers through OAuth 2.0 (authorization code with PKCE), keeps \
their tokens encrypted and fresh, and hands working IMAP/SMTP credentials (SASL XOAUTH2) to mail \
workers.\n\n\
Callers authenticate with `Authorization: Bearer <JWT>` (HS256, claims `sub`, `tenant_id`, `role` \
= `admin` or `service`, `exp`). Admin routes need `role=admin`, the token route `role=service`. \
Every query is scoped to the caller's `tenant_id`: another tenant's account answers 404.\n\n\
Errors everywhere: a status code and `{\"error\": \"<snake_case_code>\", \"message\": \"<human text>\"}`. \
An unknown `{provider}` answers 404, a known but unconfigured one 409 `provider_not_configured`. \
Any route may also answer 500 `internal_error` (logged, never with details). While the database \
is unavailable, a route that needs it answers 503 `database_unavailable` (or `database_read_only` \
for a change while the database refuses writes) with `Retry-After`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorBody, crate::oauth::CallbackFailure, super::oauth::CallbackResult),
        responses(Unauthorized, ForbiddenAdmin, ForbiddenService, PayloadTooLarge, UnsupportedMediaType, ProviderUnavailable, AccountNotFound, NoTokenToHave, RefreshRefused),
    ),
    tags(
        (name = "oauth", description = "Connecting mailboxes: status, authorize, callback, disconnect"),
        (name = "accounts", description = "Fresh tokens for mail workers; login checks for admins"),
        (name = "audit", description = "The tenant's audit events"),
        (name = "connect links", description = "Links that let a mailbox's owner connect it without an admin JWT"),
        (name = "operations", description = "Probes, metrics and this document"),
        (name = "admin page", description = "The browser page for tenant admins"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT issued by the platform, signed HS256 with `JWT_SECRET`. Claims: \
                         `sub` (user id), `tenant_id` (string), `role` (`admin` for the admin \
                         routes, `service` for the token route), `exp`. `alg: none`, other \
                         algorithms, expired or malformed tokens answer 401; the wrong role 403.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route of the API, each with its documentation: the one place the
/// routers are assembled, for serving and for the document alike.
pub(super) fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::health::router())
        .routes(routes!(openapi_json))
        .merge(super::oauth::router())
        .merge(super::accounts::router())
        .merge(super::audit::router())
        .merge(super::links::router())
        .merge(super::ui::router())
}

/// The OpenAPI document of this API.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    optional_bodies_are_absent_not_null(&mut doc);
    doc
}

/// utoipa describes an optional body (`Option<T>`) as "T or null"; ours
/// may be left out, but a JSON `null` is not a T and answers 400. The
/// body's `required: false` (utoipa leaves `required` out) already says it
/// is optional, so the schema becomes plain T.
fn optional_bodies_are_absent_not_null(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    let null = serde_json::json!({"type": "null"});
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let Some(RefOr::T(body)) = op.request_body.as_mut() else {
                continue;
            };
            for content in body.content.values_mut() {
                let RefOr::T(content) = content else { continue };
                let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
                    continue;
                };
                if let [only, other] = one.items.as_slice() {
                    if serde_json::to_value(other).ok().as_ref() == Some(&null) {
                        content.schema = Some(only.clone());
                    }
                }
            }
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises to JSON")
});

/// The document as served (pretty-printed JSON).
pub fn document_json() -> &'static str {
    &DOCUMENT
}

/// This document
///
/// The OpenAPI 3.1 document of this API, generated from the code that
/// serves it.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "An OpenAPI 3.1 document", body = Object, content_type = "application/json"),
    )
)]
async fn openapi_json() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        document_json(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_builds_and_names_the_security_scheme() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }
}
