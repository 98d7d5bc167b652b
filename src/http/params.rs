//! Path parameters, documented and extracted by one type each. Whatever a
//! client puts in a path segment (text that is no id, invalid UTF-8 once
//! percent-decoded) is an ordinary 404 in the JSON error shape, never
//! axum's plain-text 400. Handlers take them after the caller extractor, so
//! an unauthenticated request is answered 401 before its path is read.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::domain::{AccountId, ProviderKind};

/// The `{provider}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProviderPath {
    /// `microsoft`, `google` or `oidc`: an unknown one answers 404, a known
    /// but unconfigured one 409 `provider_not_configured`.
    pub provider: ProviderKind,
}

impl<S: Send + Sync> FromRequestParts<S> for ProviderPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        segment(parts, state)
            .await
            .and_then(|raw| ProviderKind::parse(&raw))
            .map(|provider| ProviderPath { provider })
            .ok_or(ApiError::NotFound("no such provider"))
    }
}

/// The `{id}` path parameter of an account.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AccountPath {
    /// The account's id (from the status route or the callback's redirect).
    /// One of another tenant, or one that does not exist, answers 404.
    #[param(value_type = String, format = "uuid", example = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b")]
    pub id: AccountId,
}

impl<S: Send + Sync> FromRequestParts<S> for AccountPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        segment(parts, state)
            .await
            .and_then(|raw| AccountId::parse(&raw).ok())
            .map(|id| AccountPath { id })
            .ok_or_else(ApiError::account_not_found)
    }
}

/// The route's one path parameter as text; `None` when it cannot be read.
async fn segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Option<String> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .ok()
        .map(|Path(raw)| raw)
}
