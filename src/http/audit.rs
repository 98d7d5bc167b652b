//! `GET /api/audit`: the tenant's audit events, newest first, a page at a
//! time: connects, re-authorisations, disconnects, refresh failures and
//! webhook deliveries, each with its time, actor and outcome.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::error::{ApiError, ErrorBody};
use super::responses::{ForbiddenAdmin, Unauthorized};
use crate::app::App;
use crate::db::{accounts, audit};
use crate::domain::{AccountId, ProviderKind};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(list))
}

/// The query, as documented (it is parsed by hand, see [`parse`]). The ids
/// are a hyphenated UUID or empty: a form's empty field means "absent"
/// (schemathesis found the document saying `format: uuid` while the route,
/// deliberately, reads `?before=` as no cursor).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AuditQuery {
    /// Only this account's events; 404 if the tenant has no such account.
    /// Empty is the same as absent.
    #[param(
        pattern = "^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        example = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b"
    )]
    account_id: Option<String>,
    /// Events per page, 1 to 200.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<i64>,
    /// The page after this event: the `next_before` of the previous page.
    /// Empty is the same as absent.
    #[param(
        pattern = "^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        example = "0190f0ef-8a00-7b3c-9d4e-5f6a7b8c9d0e"
    )]
    before: Option<String>,
}

/// A page of audit events.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    events: Vec<AuditEvent>,
    /// Pass as `before` for the next page; null on the last page.
    #[schema(format = "uuid", example = "0190f0ef-8a00-7b3c-9d4e-5f6a7b8c9d0e")]
    next_before: Option<String>,
}

/// One audit event (never with a secret).
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    #[schema(format = "uuid", example = "0190f0f0-2d3e-7f4a-8b5c-6d7e8f9a0b1c")]
    id: String,
    #[schema(format = DateTime, example = "2026-11-27T09:00:00Z")]
    time: String,
    #[schema(format = "uuid", example = "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b")]
    account_id: Option<String>,
    #[schema(value_type = Option<ProviderKind>, example = "microsoft")]
    provider: Option<String>,
    /// `connect`, `reconnect`, `reauth`, `disconnect`, `refresh_failed`,
    /// or a webhook delivery outcome (`webhook…`).
    #[schema(example = "connect")]
    action: String,
    /// The user id (`sub`) of the admin who acted, or the service itself.
    #[schema(example = "user-1")]
    actor: String,
    /// E.g. `connected`, `disconnected`, `disconnected_revocation_failed`, `needs_reauth`.
    #[schema(example = "connected")]
    outcome: String,
    /// More about the outcome, where there is more to say.
    #[schema(example = json!(null))]
    detail: Option<String>,
}

/// The query, parsed: each value is checked once, here.
#[derive(Debug, PartialEq)]
struct Query {
    account_id: Option<String>,
    limit: i64,
    before: Option<String>,
}

fn bad(code: &'static str, message: &str) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

/// Read by hand so every malformed value gets its own clear 400; the first
/// value of a repeated name wins, unknown names are ignored.
fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        account_id: None,
        limit: DEFAULT_LIMIT,
        before: None,
    };
    let (mut seen_account, mut seen_limit, mut seen_before) = (false, false, false);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "account_id" if !seen_account => {
                seen_account = true;
                if v.is_empty() {
                    continue;
                }
                let id = AccountId::parse(&v).map_err(|_| {
                    bad(
                        "invalid_account_id",
                        "account_id must be an account id (a UUID)",
                    )
                })?;
                q.account_id = Some(id.to_string());
            }
            "limit" if !seen_limit => {
                seen_limit = true;
                q.limit = v
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "invalid_limit",
                            "limit must be a whole number from 1 to 200",
                        )
                    })?;
            }
            "before" if !seen_before => {
                seen_before = true;
                if v.is_empty() {
                    continue;
                }
                let id = uuid::Uuid::try_parse(&v).map_err(|_| {
                    bad("invalid_cursor", "before must be the id of an audit event (next_before of the previous page)")
                })?;
                q.before = Some(id.hyphenated().to_string());
            }
            _ => {}
        }
    }
    Ok(q)
}

/// The tenant's audit events
///
/// Admin route (`role=admin`). Connects, re-authorisations, disconnects,
/// refresh failures and webhook deliveries, newest first, a page at a
/// time. Another tenant's account (or one that does not exist) answers
/// 404, as everywhere else in the API.
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "audit",
    security(("bearer_jwt" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = AuditPage,
         example = json!({
             "events": [{
                 "id": "0190f0f0-2d3e-7f4a-8b5c-6d7e8f9a0b1c", "time": "2026-11-27T09:00:00Z",
                 "account_id": "0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b", "provider": "microsoft",
                 "action": "connect", "actor": "user-1", "outcome": "connected", "detail": null
             }],
             "next_before": null
         })),
        (status = 400, description = "A malformed query value", body = ErrorBody, examples(
            ("invalid_limit" = (value = json!({"error": "invalid_limit", "message": "limit must be a whole number from 1 to 200"}))),
            ("invalid_cursor" = (value = json!({"error": "invalid_cursor", "message": "before must be the id of an audit event (next_before of the previous page)"}))),
            ("invalid_account_id" = (value = json!({"error": "invalid_account_id", "message": "account_id must be an account id (a UUID)"}))),
        )),
        (status = 401, response = Unauthorized),
        (status = 403, response = ForbiddenAdmin),
        (status = 404, description = "`account_id` names no account of the tenant", body = ErrorBody,
         example = json!({"error": "not_found", "message": "no such account"})),
    )
)]
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn list(
    State(app): State<App>,
    Admin(caller): Admin,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    let q = parse(raw.as_deref())?;
    let tenant = caller.tenant.as_str();
    if let Some(id) = &q.account_id {
        let id = AccountId::parse(id).map_err(|_| ApiError::account_not_found())?;
        accounts::get(&app.db, &caller.tenant, id)
            .await?
            .ok_or_else(ApiError::account_not_found)?;
    }
    let rows = audit::list(
        &app.db,
        tenant,
        q.account_id.as_deref(),
        q.before.as_deref(),
        q.limit,
    )
    .await?;
    let next_before = (rows.len() as i64 == q.limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let events = rows
        .into_iter()
        .map(|e| AuditEvent {
            id: e.id,
            time: crate::rfc3339(e.created_at),
            account_id: e.account_id,
            provider: e.provider,
            action: e.action,
            actor: e.actor,
            outcome: e.outcome,
            detail: e.detail,
        })
        .collect();
    Ok(Json(AuditPage {
        events,
        next_before,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_checked() {
        let q = parse(None).unwrap();
        assert_eq!(q.limit, 50);
        assert!(q.account_id.is_none() && q.before.is_none());
        let q = parse(Some("limit=200&limit=7&foo=bar")).unwrap();
        assert_eq!(q.limit, 200);
        for bad in [
            "limit=0",
            "limit=201",
            "limit=-1",
            "limit=abc",
            "limit=",
            "before=123",
            "account_id=../x",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
        let id = "0190f0f0-0000-7000-8000-000000000000";
        let q = parse(Some(&format!(
            "before={id}&account_id={}",
            id.to_uppercase()
        )))
        .unwrap();
        assert_eq!(q.before.as_deref(), Some(id));
        assert_eq!(q.account_id.as_deref(), Some(id));
    }
}
