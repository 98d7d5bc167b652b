//! JSON request bodies with answers a client can act on: 400 for bad JSON
//! or wrong fields, 413 for too large, 415 for another content type, 408
//! for a body not received within the body timeout. An
//! empty body reads as the type's default where that is allowed.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::listener::{BodyTimeout, HttpLimits};

/// A required JSON body.
pub struct JsonBody<T>(pub T);

/// An optional JSON body: empty means `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

async fn read<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<Option<T>, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        });
    // The whole body within the limit, however slowly it trickles in.
    let limit = req
        .extensions()
        .get::<BodyTimeout>()
        .copied()
        .unwrap_or(BodyTimeout(HttpLimits::default().body_timeout));
    let bytes = tokio::time::timeout(limit.0, Bytes::from_request(req, state))
        .await
        .map_err(|_| ApiError::RequestTimeout)?
        .map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if is_json == Some(false) {
        return Err(ApiError::UnsupportedMediaType);
    }
    // Every body of this API is an object; serde would also fill a struct
    // from an array of its fields in order, which no schema allows.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ApiError::bad_request(match e.classify() {
            serde_json::error::Category::Data => format!("the JSON body has a wrong field: {e}"),
            _ => "the body is not valid JSON".to_owned(),
        })
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read(req, state)
            .await?
            .map(JsonBody)
            .ok_or_else(|| ApiError::bad_request("a JSON body is required"))
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(OptionalJsonBody(
            read(req, state).await?.unwrap_or_default(),
        ))
    }
}
