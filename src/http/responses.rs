//! The error responses many routes share, described once for the OpenAPI
//! document (they are descriptions only: the answers themselves are
//! [`super::error::ApiError`]'s).

#![allow(dead_code)] // descriptions only: never built

use utoipa::ToResponse;

use super::error::ErrorBody;

/// No valid caller JWT.
#[derive(ToResponse)]
#[response(
    description = "No valid bearer JWT: missing, malformed, expired, not HS256 or not signed with `JWT_SECRET`",
    examples(
        ("missing" = (value = json!({"error": "unauthorized", "message": "missing Authorization: Bearer token"}))),
        ("expired" = (value = json!({"error": "unauthorized", "message": "the token has expired"}))),
        ("wrong algorithm" = (value = json!({"error": "unauthorized", "message": "the token must be signed with HS256"}))),
    )
)]
pub struct Unauthorized(ErrorBody);

/// A valid JWT without `role=admin`.
#[derive(ToResponse)]
#[response(
    description = "The JWT is valid but its role is not `admin`",
    example = json!({"error": "forbidden", "message": "this route needs role=admin"})
)]
pub struct ForbiddenAdmin(ErrorBody);

/// A valid JWT without `role=service`.
#[derive(ToResponse)]
#[response(
    description = "The JWT is valid but its role is not `service`",
    example = json!({"error": "forbidden", "message": "this route needs role=service"})
)]
pub struct ForbiddenService(ErrorBody);

/// A body over the limit.
#[derive(ToResponse)]
#[response(
    description = "The request body is larger than 16 KiB",
    example = json!({"error": "payload_too_large", "message": "the request body is too large"})
)]
pub struct PayloadTooLarge(ErrorBody);

/// A body that is not JSON.
#[derive(ToResponse)]
#[response(
    description = "A non-empty body sent with a `Content-Type` other than `application/json` (or `+json`)",
    example = json!({"error": "unsupported_media_type", "message": "send the body as application/json"})
)]
pub struct UnsupportedMediaType(ErrorBody);

/// The identity provider could not be reached or is throttling.
#[derive(ToResponse)]
#[response(
    description = "The identity provider could not be reached, timed out or is throttling; nothing \
                   stored was changed. Try again after `Retry-After` seconds.",
    headers(("Retry-After" = u64, description = "Seconds to wait before trying again (at least 1)")),
    example = json!({"error": "provider_unavailable", "message": "the identity provider is unavailable; try again later"})
)]
pub struct ProviderUnavailable(ErrorBody);

/// No such account for the caller's tenant.
#[derive(ToResponse)]
#[response(
    description = "No such account in the caller's tenant (or not an account id)",
    example = json!({"error": "not_found", "message": "no such account"})
)]
pub struct AccountNotFound(ErrorBody);

/// The account can give no token: consent gone, disconnected, or its
/// provider no longer configured.
#[derive(ToResponse)]
#[response(
    description = "No token can be had: consent is gone (an admin must reconnect the mailbox), it is disconnected, or its provider is no longer configured",
    examples(
        ("reauth_required" = (value = json!({"error": "reauth_required", "message": "consent for this mailbox is gone; an admin must reconnect it"}))),
        ("account_disconnected" = (value = json!({"error": "account_disconnected", "message": "this mailbox is disconnected"}))),
        ("provider_not_configured" = (value = json!({"error": "provider_not_configured", "message": "the microsoft provider is not configured on this server"}))),
    )
)]
pub struct NoTokenToHave(ErrorBody);

/// The provider refused the refresh for a reason that is ours to fix.
#[derive(ToResponse)]
#[response(
    description = "The provider refused the refresh for a reason that is ours to fix, and the stored token has expired",
    examples(
        ("provider_misconfigured" = (value = json!({"error": "provider_misconfigured", "message": "the provider refused this server's client credentials; an operator must fix the configuration"}))),
        ("provider_error" = (value = json!({"error": "provider_error", "message": "the provider refused the refresh request (invalid_request)"}))),
    )
)]
pub struct RefreshRefused(ErrorBody);
