//! Caller authentication: `Authorization: Bearer <JWT>`, HS256 only, with
//! `sub`, `tenant_id`, `role` and `exp`. Extractors demand a role.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::app::App;
use crate::domain::TenantId;
pub use crate::domain::{Caller, Role};

/// The claims a caller's JWT carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallerClaims {
    pub sub: String,
    pub tenant_id: String,
    /// Kept as text: an unknown role is a valid token that may do nothing.
    pub role: String,
    pub exp: i64,
}

/// A caller with `role=admin`.
pub struct Admin(pub Caller);
/// A caller with `role=service`.
pub struct Service(pub Caller);

fn authenticate(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
    verify_bearer(
        parts.headers.get(axum::http::header::AUTHORIZATION),
        app.caller_key(),
    )
}

/// Checks an `Authorization` header value (`Bearer <JWT>`, HS256 under
/// `key`) and returns its caller, or the 401 to answer. Public so that
/// property tests and fuzzers reach it without an HTTP request.
pub fn verify_bearer(header: Option<&HeaderValue>, key: &DecodingKey) -> Result<Caller, ApiError> {
    let header = header
        .ok_or(ApiError::Unauthorized(
            "missing Authorization: Bearer token",
        ))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(
            "expected Authorization: Bearer <JWT>",
        ))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.validate_aud = false;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<CallerClaims>(token, key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ApiError::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                _ => "the token is malformed or lacks sub, tenant_id, role or exp",
            })
        })?
        .claims;
    let tenant = TenantId::parse(&claims.tenant_id)
        .map_err(|_| ApiError::Unauthorized("the token's tenant_id is not valid"))?;
    if claims.sub.is_empty() || claims.sub.len() > 200 {
        return Err(ApiError::Unauthorized("the token's sub is not valid"));
    }
    Ok(Caller {
        user_id: claims.sub,
        tenant,
        role: match claims.role.as_str() {
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        },
    })
}

impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let caller = authenticate(parts, app)?;
        if caller.role != Some(Role::Admin) {
            return Err(ApiError::Forbidden("this route needs role=admin"));
        }
        tracing::Span::current().record("tenant_id", caller.tenant.as_str());
        Ok(Admin(caller))
    }
}

impl FromRequestParts<App> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let caller = authenticate(parts, app)?;
        if caller.role != Some(Role::Service) {
            return Err(ApiError::Forbidden("this route needs role=service"));
        }
        tracing::Span::current().record("tenant_id", caller.tenant.as_str());
        Ok(Service(caller))
    }
}

/// Mints a caller JWT (for `serve --dev`, tests and support tooling).
pub fn mint(secret: &[u8], sub: &str, tenant_id: &str, role: Role, lifetime_secs: i64) -> String {
    let claims = CallerClaims {
        sub: sub.into(),
        tenant_id: tenant_id.into(),
        role: match role {
            Role::Admin => "admin".into(),
            Role::Service => "service".into(),
        },
        exp: crate::now() + lifetime_secs,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}
