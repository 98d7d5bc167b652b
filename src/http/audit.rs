//! `GET /api/audit`: the tenant's audit events, newest first, a page at a
//! time: connects, re-authorisations, disconnects, refresh failures and
//! webhook deliveries, each with its time, actor and outcome.

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth::Admin;
use super::error::ApiError;
use crate::app::App;
use crate::db::{accounts, audit};
use crate::domain::AccountId;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

pub fn router() -> Router<App> {
    Router::new().route("/api/audit", get(list))
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

/// Another tenant's account (or one that does not exist) answers 404, as
/// everywhere else in the API.
#[tracing::instrument(skip_all, fields(tenant_id))]
async fn list(
    State(app): State<App>,
    Admin(caller): Admin,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse(raw.as_deref())?;
    let tenant = caller.tenant.as_str();
    if let Some(id) = &q.account_id {
        accounts::get(&app.db, tenant, id)
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
    let events: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "time": crate::rfc3339(e.created_at),
                "account_id": e.account_id,
                "provider": e.provider,
                "action": e.action,
                "actor": e.actor,
                "outcome": e.outcome,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({"events": events, "next_before": next_before})))
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
