//! The API's one error type: a status, a snake_case code and a human
//! message. Internal causes are logged here and never sent to the client.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::core::flow::FlowError;
use crate::core::links::LinkError;
use crate::core::mailboxes::AddError;
use crate::core::refresh::on_demand::GrantError;

use crate::db::Unavailable;

/// Every error answer's body: a stable snake_case `error` code to branch on
/// and a `message` for people (never a secret).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "not_found", "message": "no such account"}))]
pub struct ErrorBody {
    /// `unauthorized`, `forbidden`, `not_found`, `invalid_request`,
    /// `invalid_return_to`, `invalid_account_id`, `invalid_limit`,
    /// `invalid_cursor`, `payload_too_large`, `request_timeout`,
    /// `unsupported_media_type`,
    /// `provider_not_configured`, `provider_mismatch`, `reauth_required`,
    /// `account_disconnected`, `provider_misconfigured`, `provider_error`,
    /// `provider_unavailable`, `database_unavailable`, `database_read_only`,
    /// `account_exists`, `delegate_not_usable`, `admin_consent_required`
    /// or `internal_error`.
    #[schema(example = "not_found")]
    pub error: &'static str,
    #[schema(example = "no such account")]
    pub message: String,
    /// `account_exists`: the account that has the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = "uuid", nullable = false)]
    pub account_id: Option<String>,
}

#[derive(Debug)]
pub enum ApiError {
    Unauthorized(&'static str),
    Forbidden(&'static str),
    NotFound(&'static str),
    BadRequest {
        code: &'static str,
        message: String,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request body did not arrive within the body timeout.
    RequestTimeout,
    Conflict {
        code: &'static str,
        message: String,
    },
    /// The tenant already has an account for the address: 409
    /// `account_exists` with its `account_id`.
    AccountExists(String),
    /// The provider could not be reached or is throttling us.
    ProviderUnavailable {
        retry_after: Option<Duration>,
    },
    /// The provider refused our client (or our request): an operator must act.
    ProviderError {
        code: &'static str,
        message: String,
    },
    /// The database is down or refuses writes (see [`Unavailable`]): 503
    /// with `Retry-After`, never a 500.
    DatabaseUnavailable(Unavailable),
    Internal(anyhow::Error),
}

/// How long a client should wait before trying again while the database is
/// unavailable.
const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(5);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code: "invalid_request",
            message: message.into(),
        }
    }

    pub fn provider_not_configured(provider: &str) -> ApiError {
        ApiError::Conflict {
            code: "provider_not_configured",
            message: format!("the {provider} provider is not configured on this server"),
        }
    }

    pub fn account_not_found() -> ApiError {
        ApiError::NotFound("no such account")
    }
}

/// The core's errors as answers: the one place they meet HTTP.
impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> ApiError {
        let message = e.to_string();
        match e {
            FlowError::NotConfigured(kind) => ApiError::provider_not_configured(kind.as_str()),
            FlowError::AccountNotFound => ApiError::account_not_found(),
            FlowError::ProviderMismatch(_) => ApiError::Conflict {
                code: "provider_mismatch",
                message,
            },
            FlowError::InvalidReturnTo(_) => ApiError::BadRequest {
                code: "invalid_return_to",
                message,
            },
            FlowError::InvalidRequest(_) => ApiError::bad_request(message),
            FlowError::ProviderMisconfigured => ApiError::ProviderError {
                code: "provider_misconfigured",
                message,
            },
            FlowError::ProviderUnavailable => ApiError::ProviderUnavailable { retry_after: None },
            FlowError::AdminConsentUnavailable => ApiError::Conflict {
                code: "admin_consent_unavailable",
                message,
            },
            FlowError::Internal(e) => ApiError::from(e),
        }
    }
}

impl From<LinkError> for ApiError {
    fn from(e: LinkError) -> ApiError {
        let message = e.to_string();
        match e {
            LinkError::InvalidRequest(_) => ApiError::bad_request(message),
            LinkError::NotConfigured(kind) => ApiError::provider_not_configured(kind.as_str()),
            LinkError::NotFound => ApiError::NotFound("no such connect link"),
            LinkError::AlreadyUsed => ApiError::Conflict {
                code: "link_used",
                message,
            },
            LinkError::Internal(e) => ApiError::from(e),
        }
    }
}

impl From<AddError> for ApiError {
    fn from(e: AddError) -> ApiError {
        let message = e.to_string();
        match e {
            AddError::InvalidRequest(_) => ApiError::bad_request(message),
            AddError::DelegateNotFound => ApiError::NotFound("no such delegate account"),
            AddError::AccountExists(id) => ApiError::AccountExists(id.to_string()),
            AddError::DelegateNotUsable => ApiError::Conflict {
                code: "delegate_not_usable",
                message,
            },
            AddError::AdminConsentRequired => ApiError::Conflict {
                code: "admin_consent_required",
                message,
            },
            AddError::NotConfigured => ApiError::provider_not_configured("microsoft"),
            AddError::ProviderMisconfigured => ApiError::ProviderError {
                code: "provider_misconfigured",
                message,
            },
            AddError::ProviderUnavailable { retry_after } => {
                ApiError::ProviderUnavailable { retry_after }
            }
            AddError::Internal(e) => ApiError::from(e),
        }
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> ApiError {
        let message = e.to_string();
        match e {
            GrantError::NotFound => ApiError::account_not_found(),
            GrantError::ReauthRequired => ApiError::Conflict {
                code: "reauth_required",
                message,
            },
            GrantError::Disconnected => ApiError::Conflict {
                code: "account_disconnected",
                message,
            },
            GrantError::NotConfigured(kind) => ApiError::provider_not_configured(kind.as_str()),
            GrantError::ProviderMisconfigured => ApiError::ProviderError {
                code: "provider_misconfigured",
                message,
            },
            GrantError::ProviderRefused(_) => ApiError::ProviderError {
                code: "provider_error",
                message,
            },
            GrantError::ProviderUnavailable { retry_after } => {
                ApiError::ProviderUnavailable { retry_after }
            }
            GrantError::Internal(e) => ApiError::from(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::from(anyhow::Error::new(e).context("database query failed"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        match Unavailable::in_chain(&e) {
            Some(why) => {
                tracing::warn!(error = format!("{e:#}"), "the database is unavailable");
                ApiError::DatabaseUnavailable(why)
            }
            None => ApiError::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry = None;
        let mut account_id = None;
        let (status, code, message): (StatusCode, &'static str, String) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.into()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.into()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.into()),
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large".into(),
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body was not received in time".into(),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json".into(),
            ),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message),
            ApiError::AccountExists(id) => {
                account_id = Some(id);
                (
                    StatusCode::CONFLICT,
                    "account_exists",
                    "the tenant already has an account for this address".into(),
                )
            }
            ApiError::ProviderUnavailable { retry_after } => {
                retry = Some(retry_after.unwrap_or(Duration::from_secs(5)));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    "the identity provider is unavailable; try again later".into(),
                )
            }
            ApiError::ProviderError { code, message } => (StatusCode::BAD_GATEWAY, code, message),
            ApiError::DatabaseUnavailable(why) => {
                retry = Some(DATABASE_RETRY_AFTER);
                let (code, message) = match why {
                    Unavailable::Down => (
                        "database_unavailable",
                        "the database is unavailable; try again later",
                    ),
                    Unavailable::ReadOnly => (
                        "database_read_only",
                        "the database is read-only for now: nothing can be changed; try again later",
                    ),
                };
                (StatusCode::SERVICE_UNAVAILABLE, code, message.into())
            }
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an internal error occurred; it has been logged".into(),
                )
            }
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message,
                account_id,
            }),
        )
            .into_response();
        if let Some(after) = retry {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let r = e.into_response();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn an_unavailable_database_answers_503_with_retry_after_never_500() {
        let (status, retry, body) = answer(sqlx::Error::PoolTimedOut.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("5"));
        assert_eq!(body["error"], "database_unavailable");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

        // Also when the error went through anyhow with context on the way.
        let wrapped = anyhow::Error::new(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
        .context("reading the account");
        let (status, retry, body) = answer(wrapped.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry.is_some());
        assert_eq!(body["error"], "database_unavailable");

        let (status, retry, body) =
            answer(ApiError::DatabaseUnavailable(Unavailable::ReadOnly)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry.is_some());
        assert_eq!(body["error"], "database_read_only");
    }

    #[tokio::test]
    async fn other_database_errors_stay_internal() {
        let (status, retry, body) = answer(sqlx::Error::RowNotFound.into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(retry.is_none());
        assert_eq!(body["error"], "internal_error");
    }
}
