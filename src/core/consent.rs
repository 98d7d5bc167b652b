//! Admin consent (Microsoft; DESIGN.md "Admin consent (Microsoft)"): an
//! admin of a Microsoft directory grants the app's permissions for the whole
//! organisation, for tenants where users may not consent and for `app`
//! mailboxes. Started like a connect flow (a signed, single-use state of
//! its own kind), it returns to the same callback; the consent is only
//! believed once the directory gives the app a token of its own.

use anyhow::Context;
use serde::Deserialize;

use super::app_tokens::{self, AppGrantError};
use super::flow::{
    check_return_to, new_state, AuthorizeResponse, Back, CallbackQuery, FlowError, Started,
};
use super::Core;
use crate::db::{audit, consents};
use crate::diagnosis::Cause;
use crate::domain::{Caller, ProviderKind, TenantId};
use crate::oauth::microsoft::MicrosoftTenant;
use crate::oauth::state::{StateClaims, FLOW_ADMIN_CONSENT};
use crate::oauth::{CallbackError, CallbackFailure};

/// The directory did not consent, or refuses the app all the same.
const NOT_CONSENTED: CallbackError = CallbackError::new(
    CallbackFailure::ConsentRequired,
    Cause::AdminConsentRequired,
);
use crate::webhooks::{Event, EventType};

/// The body of `POST /api/oauth/microsoft/admin-consent`; every field, and
/// the body itself, may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"directory": "contoso.onmicrosoft.com", "return_to": "/settings/mail"}))]
pub struct AdminConsentBody {
    /// The Microsoft directory to consent for: its tenant id (GUID) or one
    /// of its domains. Default: `MICROSOFT_OAUTH_TENANT_ID`, with `common`
    /// read as `organizations` (the admin's own directory).
    #[schema(
        max_length = 253,
        pattern = r"^(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|common|organizations|consumers)$",
        example = "contoso.onmicrosoft.com"
    )]
    pub directory: Option<String>,
    /// Where the browser lands afterwards instead of `OAUTH_RETURN_URL`
    /// (the same rule as `authorize`'s `return_to`).
    #[schema(
        max_length = 2048,
        pattern = r"^(?![^?#]*%(?:2[eEfF]|5[cC]))(?![^?#]*/\.\.?(?:[/?#]|$))/(?!/)[!-\[\]-~]*$",
        example = "/settings/mail"
    )]
    pub return_to: Option<String>,
}

/// Starts an admin consent: where to send an admin of the directory.
pub async fn start(
    core: &Core,
    caller: &Caller,
    body: AdminConsentBody,
    bind_browser: bool,
) -> Result<Started, FlowError> {
    let microsoft = core
        .providers
        .microsoft()
        .ok_or(FlowError::NotConfigured(ProviderKind::Microsoft))?;
    check_return_to(body.return_to.as_deref())?;
    let directory = match body.directory.as_deref() {
        None => microsoft.default_consent_directory(),
        Some(raw) => match MicrosoftTenant::parse(raw) {
            Ok(MicrosoftTenant::Consumers) => None,
            Ok(MicrosoftTenant::Common) => Some(MicrosoftTenant::Organizations),
            Ok(tenant) => Some(tenant),
            Err(_) => {
                return Err(FlowError::InvalidRequest(
                    "directory must be a Microsoft tenant id (GUID) or domain",
                ))
            }
        },
    }
    .ok_or(FlowError::AdminConsentUnavailable)?;

    let (mut claims, binding) = new_state(
        caller,
        ProviderKind::Microsoft,
        body.return_to,
        bind_browser,
    );
    claims.flw = Some(FLOW_ADMIN_CONSENT.to_owned());
    claims.dir = Some(directory.as_str().to_owned());
    let state = core.states.sign(&claims);
    let url = microsoft.admin_consent_url(&directory, &state);
    Ok(Started {
        response: AuthorizeResponse {
            authorization_url: url.to_string(),
            state,
            expires_at: crate::rfc3339(claims.exp),
        },
        binding,
    })
}

/// Finishes an admin consent at the callback, once its state was verified
/// and consumed: believes it only when the returned directory gives the app
/// a token, then records it for the tenant.
pub(super) async fn finish(
    core: &Core,
    claims: &StateClaims,
    q: &CallbackQuery,
    back: &Back<'_>,
) -> super::flow::CallbackOutcome {
    if let Some(error) = q.error.as_deref() {
        tracing::info!(
            error = ?error.chars().take(64).collect::<String>(),
            "the admin consent was not given"
        );
        return back.failed(CallbackFailure::from_authorize_error(
            error,
            q.error_description.as_deref(),
        ));
    }
    // `admin_consent=True` and the directory's id, which must be the one
    // asked for when a GUID was named.
    let granted = q
        .admin_consent
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let directory = q
        .tenant
        .as_deref()
        .and_then(|t| uuid::Uuid::try_parse(t).ok())
        .map(|t| t.to_string());
    let asked = claims
        .dir
        .as_deref()
        .and_then(|d| uuid::Uuid::try_parse(d).ok());
    let (true, Some(directory)) = (granted, directory) else {
        return back.failed(NOT_CONSENTED);
    };
    if asked.is_some_and(|a| a.to_string() != directory) {
        tracing::warn!(directory, "admin consent came back from another directory");
        return back.failed(NOT_CONSENTED);
    }
    let Ok(tenant) = TenantId::parse(&claims.tid) else {
        return back.failed(CallbackFailure::ProviderUnavailable);
    };
    // The token is stored for the directory's app mailboxes, and heals
    // them if the directory had refused the app.
    match app_tokens::renewed(core, &directory).await {
        Ok(_) => {}
        Err(AppGrantError::Refused(error)) => {
            tracing::warn!(
                directory,
                error,
                "the directory refuses the app a token after its admin consent"
            );
            return back.failed(NOT_CONSENTED);
        }
        Err(AppGrantError::Misconfigured(_)) => {
            // app_tokens has recorded the provider as misconfigured.
            return back.failed(CallbackError::new(
                CallbackFailure::TokenExchangeFailed,
                Cause::ClientCredentialsInvalid,
            ));
        }
        Err(AppGrantError::Unavailable { .. } | AppGrantError::NotConfigured) => {
            return back.failed(CallbackFailure::ProviderUnavailable);
        }
        Err(AppGrantError::Internal(e)) => {
            tracing::error!(error = format!("{e:#}"), "could not obtain the app token");
            return back.failed(CallbackFailure::ProviderUnavailable);
        }
    }
    match record(core, &tenant, &claims.sub, &directory).await {
        Ok(()) => back.redirect(&[
            ("oauth", "admin_consented"),
            ("provider", ProviderKind::Microsoft.as_str()),
            ("directory", &directory),
        ]),
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "could not record the admin consent"
            );
            back.failed(CallbackFailure::ProviderUnavailable)
        }
    }
}

/// Records the consent, its audit event and its webhook in one transaction.
async fn record(
    core: &Core,
    tenant: &TenantId,
    actor: &str,
    directory: &str,
) -> anyhow::Result<()> {
    let now = crate::now();
    let mut tx = core.db.pool.begin().await?;
    consents::record(
        &mut *tx,
        tenant.as_str(),
        &consents::AdminConsent {
            directory: directory.to_owned(),
            granted_at: now,
            granted_by: actor.to_owned(),
        },
    )
    .await
    .context("recording the admin consent")?;
    let detail = format!("directory {directory}");
    audit::record(
        &mut *tx,
        &audit::NewEvent {
            tenant_id: tenant.as_str(),
            account_id: None,
            provider: Some(ProviderKind::Microsoft.as_str()),
            action: "admin_consent",
            actor,
            outcome: "granted",
            detail: Some(&detail),
        },
        now,
    )
    .await?;
    core.webhooks
        .enqueue(
            &mut tx,
            &Event {
                kind: EventType::TenantAdminConsented,
                tenant_id: Some(tenant.as_str()),
                account_id: None,
                provider: ProviderKind::Microsoft.as_str(),
                email: None,
                error: None,
                directory: Some(directory),
                cause: None,
                expiry: None,
            },
            now,
        )
        .await
        .context("writing the webhook event")?;
    tx.commit().await?;
    core.webhooks.written();
    tracing::info!(tenant_id = %tenant.as_str(), directory, "admin consent recorded");
    Ok(())
}
