//! Application access at the fake Microsoft: Entra directories, the admin
//! consent endpoint (`GET /{tenant}/v2.0/adminconsent`) and the client
//! credentials grant of the token endpoint, whose app tokens exist only in a
//! directory whose admin consented.
//!
//! What each refusal is, and why (Microsoft's answers as its documentation,
//! its samples and its users' reports show them):
//!
//! * admin consent, before anyone signs in: an unknown `client_id` or a
//!   `redirect_uri` that is not the registered one is an error page, never a
//!   redirect (as at authorize); a directory id or domain Microsoft does not
//!   know is the page AADSTS90002. A missing scope, or one that is not a
//!   `{resource}/.default` scope (AADSTS70011) of a resource the app
//!   registration names (AADSTS650057), is redirected as `invalid_request`.
//!   Microsoft also takes dynamic scopes there; this sandbox does not,
//!   because mailconnect asks for the permissions configured on the app
//!   registration and nothing else;
//! * admin consent, once an account signed in: the redirect carries, besides
//!   `error` and `error_description`, `admin_consent=True` and (when known)
//!   `tenant`, as Microsoft's error redirects do, so a client must read
//!   `error` first. A personal account (or the `consumers` path) cannot
//!   grant admin consent: `access_denied`, AADSTS500200. A user of another
//!   directory: `invalid_request`, AADSTS50020, as at authorize. A user who
//!   is not the directory's admin sees Microsoft's "Need admin approval"
//!   (AADSTS90094), whose only way back is "Return to the application
//!   without granting consent": `access_denied`, AADSTS90094. The admin who
//!   cancels: `access_denied`, AADSTS65004;
//! * client credentials: `common` and `organizations` name no directory:
//!   `invalid_request`, AADSTS50059; `consumers`: `unauthorized_client`,
//!   AADSTS70002 ("not enabled for consumers"); an unknown directory:
//!   `invalid_request`, AADSTS90002. Any scope that is not `/.default`:
//!   `invalid_scope`, AADSTS1002012; two `/.default` scopes: `invalid_scope`,
//!   AADSTS70011; an unknown resource: `invalid_resource`, AADSTS500011. A
//!   directory that never consented, or removed the app since: the app has
//!   no service principal there, `unauthorized_client`, AADSTS700016.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::consent::{self, Decision};
use crate::idp::http::{form_of, redirect_error, redirect_with, ResponseMode};
use crate::idp::users;
use crate::{
    answer_page, browser_query, foreign_user, html_response, is_guid, mint_access_token,
    registered_client, sign_in, AccessData, FakeMicrosoft, Mutable, OAuthError, GRAPH_RESOURCE,
    OUTLOOK_RESOURCE, PERSONAL_TENANT_ID,
};

/// The application permissions (app roles) an app token for
/// [`OUTLOOK_RESOURCE`] carries once a directory's admin consented: the app
/// registration asks for these two and no Graph application permission.
pub const APP_ROLES: &[&str] = &["IMAP.AccessAsApp", "SMTP.SendAsApp"];

/// What the sandbox knows about an app token (client credentials grant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppTokenInfo {
    /// The directory id (GUID) it was issued in.
    pub directory: String,
    /// The client id of the app.
    pub app_id: String,
    /// The resource it is for, e.g. `"https://outlook.office.com"`.
    pub audience: String,
    /// Its app roles: [`APP_ROLES`] for Outlook, none for Graph.
    pub roles: Vec<String>,
    pub expires_at: DateTime<Utc>,
    /// Not expired and not invalidated by [`FakeMicrosoft::expire_app_tokens`]
    /// or [`FakeMicrosoft::expire_access_tokens`].
    pub valid: bool,
}

/// An Entra directory added with [`FakeMicrosoft::add_directory`].
pub(crate) struct Directory {
    /// Its id as added.
    tid: String,
    /// The UPN of its global administrator.
    admin: Option<String>,
    /// The app has a service principal there with admin consent, from a
    /// granted admin consent until [`FakeMicrosoft::remove_app_from_directory`].
    consented: bool,
}

/// What a `{tenant}` path segment names, for the endpoints that need a
/// directory.
enum TenantPath {
    /// `common` or `organizations`: the directory of whoever signs in.
    AnyOrganization,
    Consumers,
    /// An added directory (by id or by one of its domains): its id.
    Directory(String),
    /// A GUID or domain of no added directory.
    Unknown,
}

impl Mutable {
    fn tenant_path(&self, tenant: &str) -> TenantPath {
        let lower = tenant.to_ascii_lowercase();
        let tid = match lower.as_str() {
            "common" | "organizations" => return TenantPath::AnyOrganization,
            "consumers" => return TenantPath::Consumers,
            t if is_guid(t) => Some(lower.clone()),
            t => self.domains.get(t).map(|tid| tid.to_ascii_lowercase()),
        };
        match tid.and_then(|tid| self.directories.get(&tid)) {
            Some(d) => TenantPath::Directory(d.tid.clone()),
            None => TenantPath::Unknown,
        }
    }

    fn directory(&self, tid: &str) -> Option<&Directory> {
        self.directories.get(&tid.to_ascii_lowercase())
    }

    fn directory_mut(&mut self, tid: &str) -> &mut Directory {
        self.directories
            .get_mut(&tid.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no directory {tid}: call add_directory first"))
    }

    /// What [`FakeMicrosoft::token_requests_in`] counts a tenant path
    /// under: the id of the directory it names, else the path itself.
    fn counting_key(&self, tenant: &str) -> String {
        match self.tenant_path(tenant) {
            TenantPath::Directory(tid) => tid.to_ascii_lowercase(),
            _ => tenant.to_ascii_lowercase(),
        }
    }
}

impl FakeMicrosoft {
    /// An Entra directory with id `tid` (a GUID) and these domains (each is
    /// also [`Self::add_domain`]ed). Its users are the configured users whose
    /// `tid` is this id. The admin consent endpoint and the client
    /// credentials grant know only added directories. Adding it again keeps
    /// its admin and consent, and adds the domains.
    pub fn add_directory(&self, tid: &str, domains: &[&str]) {
        assert!(
            is_guid(tid),
            "add_directory: {tid} is not a directory id (a GUID)"
        );
        for domain in domains {
            self.add_domain(domain, tid);
        }
        self.inner
            .state
            .lock()
            .directories
            .entry(tid.to_ascii_lowercase())
            .or_insert_with(|| Directory {
                tid: tid.to_string(),
                admin: None,
                consented: false,
            });
    }

    /// The global administrator of directory `tid`, the only user who can
    /// grant admin consent there. `upn` should be a configured user of that
    /// directory (see [`Self::add_user`]); a directory without one refuses
    /// every admin consent. Panics for a directory never added.
    pub fn set_directory_admin(&self, tid: &str, upn: &str) {
        self.inner.state.lock().directory_mut(tid).admin = Some(upn.to_string());
    }

    /// When true, the admin cancels the next admin-consent page (once): the
    /// endpoint answers `error=access_denied` (AADSTS65004). In interactive
    /// mode the page is then not shown.
    pub fn set_admin_declines(&self, declines: bool) {
        self.inner.state.lock().admin_declines = declines;
    }

    /// The directory deletes the app's service principal (its admin consent
    /// with it): from now on client credentials there are refused as in a
    /// directory that never consented, `unauthorized_client` with
    /// AADSTS700016 ("Application with identifier … was not found in the
    /// directory"), Microsoft's answer for an app with no service principal
    /// in the tenant (not `invalid_client`: the app's credentials are fine).
    /// App tokens already issued stay valid until they expire, as at
    /// Microsoft. Panics for a directory never added.
    pub fn remove_app_from_directory(&self, tid: &str) {
        self.inner.state.lock().directory_mut(tid).consented = false;
    }

    /// Whether directory `tid` has (still) consented to the app.
    pub fn directory_consented(&self, tid: &str) -> bool {
        self.inner
            .state
            .lock()
            .directory(tid)
            .is_some_and(|d| d.consented)
    }

    /// An app token (client credentials); `None` for a user's token.
    pub fn app_token_info(&self, token: &str) -> Option<AppTokenInfo> {
        let st = self.inner.state.lock();
        let at = st.access_tokens.get(token)?;
        let directory = at.data.app_directory.clone()?;
        Some(AppTokenInfo {
            directory,
            app_id: at.subject.clone(),
            audience: at.data.resource.clone(),
            roles: at.scopes.clone(),
            expires_at: at.expires_at,
            valid: at.valid(),
        })
    }

    /// Every app token issued so far is invalid from now on (users' tokens
    /// stay as they are).
    pub fn expire_app_tokens(&self) {
        self.inner
            .state
            .lock()
            .access_tokens
            .invalidate_where(|at| at.data.app_directory.is_some());
    }

    /// Token requests with this `grant_type` that reached the token endpoint
    /// of `directory` (its id or one of its domains, or any other tenant
    /// path segment), answered with a token or not. A request whose form
    /// cannot be read counts under the grant type `""`.
    pub fn token_requests_in(&self, directory: &str, grant_type: &str) -> usize {
        let st = self.inner.state.lock();
        let key = (st.counting_key(directory), grant_type.to_string());
        st.token_requests_by.get(&key).copied().unwrap_or(0)
    }

    /// Counts a token request for [`Self::token_requests_in`], on arrival.
    pub(crate) fn count_token_request(&self, tenant: &str, headers: &HeaderMap, body: &[u8]) {
        let grant_type = form_of(headers, body)
            .ok()
            .and_then(|form| form.get("grant_type").cloned())
            .unwrap_or_default();
        let mut st = self.inner.state.lock();
        let key = (st.counting_key(tenant), grant_type);
        *st.token_requests_by.entry(key).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------
// Admin consent endpoint
// ---------------------------------------------------------------------------

/// `GET /{tenant}/v2.0/adminconsent`.
pub(crate) async fn admin_consent(
    State(ms): State<FakeMicrosoft>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match browser_query(query.as_deref()) {
        Ok(q) => admin_consent_with(&ms, &tenant, &q, Decision::Ask),
        Err(page) => *page,
    }
}

/// `POST /{tenant}/v2.0/consent`: the answer of the admin-consent page.
pub(crate) async fn admin_consent_answer(
    State(ms): State<FakeMicrosoft>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    answer_page(
        &ms,
        &tenant,
        &body,
        |st| &mut st.admin_pending,
        admin_consent_with,
    )
}

/// How the admin consent endpoint answers the app at its redirect URI.
struct Reply<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
}

impl Reply<'_> {
    /// The request itself is refused, before anyone signs in.
    fn refuse(&self, error: &str, description: &str) -> Response {
        redirect_error(
            self.redirect_uri,
            &ResponseMode::Query,
            error,
            Some(description),
            self.state,
        )
    }

    /// Refused once an account signed in: Microsoft's redirect then also says
    /// `admin_consent=True`, and the directory when it is known.
    fn deny(&self, error: &str, description: &str, tenant: Option<&str>) -> Response {
        let mut params = vec![
            ("error", error),
            ("error_description", description),
            ("admin_consent", "True"),
        ];
        if let Some(tid) = tenant {
            params.push(("tenant", tid));
        }
        self.send(params)
    }

    fn granted(&self, tid: &str, scope: &str) -> Response {
        self.send(vec![
            ("admin_consent", "True"),
            ("tenant", tid),
            ("scope", scope),
        ])
    }

    fn send<'s>(&'s self, mut params: Vec<(&'s str, &'s str)>) -> Response {
        if let Some(state) = self.state {
            params.push(("state", state));
        }
        redirect_with(self.redirect_uri, &ResponseMode::Query, &params)
    }
}

fn personal_refused(who: &str) -> String {
    format!("AADSTS500200: {who} is a personal Microsoft account. Personal Microsoft accounts cannot grant admin consent: sign in with a work or school account that administers the directory.")
}

fn admin_consent_with(
    ms: &FakeMicrosoft,
    tenant: &str,
    q: &BTreeMap<String, String>,
    decision: Decision,
) -> Response {
    let inner = &ms.inner;
    let (client_id, redirect_uri) = match registered_client(inner, tenant, q) {
        Ok(c) => c,
        Err(page) => return *page,
    };
    let reply = Reply {
        redirect_uri,
        state: q.get("state").map(String::as_str),
    };
    let scope = q.get("scope").map(String::as_str).unwrap_or("");
    let resources = match admin_consent_resources(scope) {
        Ok(r) => r,
        Err(description) => return reply.refuse("invalid_request", &description),
    };

    let mut st = inner.state.lock();
    let named = match st.tenant_path(tenant) {
        TenantPath::Directory(tid) => Some(tid),
        TenantPath::AnyOrganization => None,
        TenantPath::Consumers => {
            return reply.deny(
                "access_denied",
                &personal_refused("The account"),
                Some(PERSONAL_TENANT_ID),
            )
        }
        TenantPath::Unknown => {
            return html_response(
                StatusCode::BAD_REQUEST,
                "AADSTS90002",
                &format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
            )
        }
    };
    if decision == Decision::Decline {
        let (error, description) = inner.authorize_refusal(65004, tenant);
        return reply.deny(error, &description, named.as_deref());
    }
    let fail = |error: &str, description: String| reply.deny(error, &description, named.as_deref());
    let user = match sign_in(
        &mut st,
        &decision,
        q.get("login_hint").map(String::as_str),
        fail,
    ) {
        Ok(u) => u,
        Err(answer) => return *answer,
    };
    if decision == Decision::Ask && st.core.interactive && !st.admin_declines {
        let request_id = st.admin_pending.insert(tenant, q);
        let users = users::choices(&st.users);
        drop(st);
        return consent::render(&consent::Page {
            brand: "Microsoft",
            app_name: &inner.app_name,
            client_id,
            redirect_uri,
            request_id: &request_id,
            users,
            selected: &user.user_principal_name,
            permissions: describe_app_permissions(&resources),
            for_organization: true,
        });
    }
    let upn = &user.user_principal_name;
    if user.tid == PERSONAL_TENANT_ID {
        return reply.deny(
            "access_denied",
            &personal_refused(&format!("User account '{upn}'")),
            Some(PERSONAL_TENANT_ID),
        );
    }
    let tid = named.unwrap_or_else(|| user.tid.clone());
    if !user.tid.eq_ignore_ascii_case(&tid) {
        let description = format!("AADSTS50020: {}", foreign_user(upn, &tid, client_id));
        return reply.deny("invalid_request", &description, Some(&tid));
    }
    let is_admin = st
        .directory(&tid)
        .and_then(|d| d.admin.as_deref())
        .is_some_and(|admin| admin.eq_ignore_ascii_case(upn));
    if !is_admin {
        let description = format!("AADSTS90094: The grant requires admin permission. {upn} is not an administrator of the directory '{tid}'; only its global administrator can grant consent for the whole organization.");
        return reply.deny("access_denied", &description, Some(&tid));
    }
    if std::mem::take(&mut st.admin_declines) {
        let (error, description) = inner.authorize_refusal(65004, tenant);
        return reply.deny(error, &description, Some(&tid));
    }
    st.directory_mut(&tid).consented = true;
    drop(st);
    reply.granted(&tid, scope)
}

/// The resources of an admin consent request's `scope`: one or more
/// `{resource}/.default` scopes of resources the app registration names;
/// otherwise the `error_description` of the refusal.
fn admin_consent_resources(scope: &str) -> Result<Vec<String>, String> {
    let mut resources: Vec<String> = Vec::new();
    for s in scope.split_whitespace() {
        let Some(resource) = default_scope_resource(s) else {
            return Err(format!("AADSTS70011: The provided value for the input parameter 'scope' is not valid. The scope '{s}' is not valid: the sandbox asks admin consent for '/.default' scopes only, the permissions configured on the app registration."));
        };
        if !is_served_resource(&resource) {
            return Err(format!("AADSTS650057: Invalid resource. The client has requested access to a resource which is not listed in the requested permissions in the client's application registration. Resource value from request: {resource}."));
        }
        consent::push_unique(&mut resources, resource);
    }
    if resources.is_empty() {
        return Err(
            "AADSTS900144: The request body must contain the following parameter: 'scope'.".into(),
        );
    }
    Ok(resources)
}

/// What consenting to these resources' `/.default` gives the app, in plain
/// words, for the admin-consent page.
fn describe_app_permissions(resources: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for resource in resources {
        if resource == OUTLOOK_RESOURCE {
            out.push("Read and write, over IMAP, the mailboxes it is given access to, with no user signed in (IMAP.AccessAsApp)".to_string());
            out.push(
                "Send mail over SMTP as those mailboxes, with no user signed in (SMTP.SendAsApp)"
                    .to_string(),
            );
        } else {
            out.push(
                "Sign users in and read their profile (Microsoft Graph User.Read)".to_string(),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Client credentials grant
// ---------------------------------------------------------------------------

/// `grant_type=client_credentials`: an app token for one
/// `{resource}/.default` scope, in a directory that consented to the app.
pub(crate) fn client_credentials_grant(
    ms: &FakeMicrosoft,
    tenant: &str,
    client_id: &str,
    form: &BTreeMap<String, String>,
) -> Result<Value, OAuthError> {
    let mut st = ms.inner.state.lock();
    let tid = match st.tenant_path(tenant) {
        TenantPath::Directory(tid) => tid,
        TenantPath::AnyOrganization => return Err(OAuthError::bad(
            "invalid_request",
            50059,
            "No tenant-identifying information found in either the request or implied by any provided credentials.",
        )),
        TenantPath::Consumers => return Err(OAuthError::bad(
            "unauthorized_client",
            70002,
            "The client does not exist or is not enabled for consumers. If you are the application developer, configure a new application through the App Registrations in the Azure Portal.",
        )),
        TenantPath::Unknown => return Err(OAuthError::bad(
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        )),
    };
    let resource = app_token_resource(form.get("scope").map(String::as_str), &tid)?;
    if !st.directory(&tid).is_some_and(|d| d.consented) {
        return Err(OAuthError::app_not_found(client_id, &tid));
    }
    let roles = if resource == OUTLOOK_RESOURCE {
        APP_ROLES.iter().map(|r| r.to_string()).collect()
    } else {
        Vec::new()
    };
    let data = AccessData {
        resource,
        app_directory: Some(tid),
    };
    let (access, expires_in) = mint_access_token(&mut st, client_id, roles, data);
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": expires_in.clone(),
        "ext_expires_in": expires_in,
        "access_token": access,
    }))
}

/// The resource of a client credentials request's `scope`: exactly one
/// `{resource}/.default` scope of a resource the sandbox serves.
fn app_token_resource(scope: Option<&str>, tid: &str) -> Result<String, OAuthError> {
    let raw = scope.unwrap_or("");
    let scopes: Vec<&str> = raw.split_whitespace().collect();
    let Some(first) = scopes.first() else {
        return Err(OAuthError::missing("scope"));
    };
    if scopes.iter().any(|s| default_scope_resource(s).is_none()) {
        return Err(OAuthError::bad(
            "invalid_scope",
            1002012,
            format!("The provided value for scope {raw} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        ));
    }
    if scopes.len() > 1 {
        return Err(OAuthError::bad(
            "invalid_scope",
            70011,
            format!("The provided value for the input parameter 'scope' is not valid. One or more scopes in '{raw}' are not compatible with each other."),
        ));
    }
    let resource = default_scope_resource(first).unwrap_or_default();
    if !is_served_resource(&resource) {
        return Err(OAuthError::bad(
            "invalid_resource",
            500011,
            format!("The resource principal named {resource} was not found in the tenant named {tid}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."),
        ));
    }
    Ok(resource)
}

/// The resource of a `{resource}/.default` scope, lower-cased without a
/// trailing slash as the sandbox keeps resources; `None` for any other scope.
fn default_scope_resource(scope: &str) -> Option<String> {
    const SUFFIX: &str = "/.default";
    let split = scope.len().checked_sub(SUFFIX.len())?;
    if !scope.get(split..)?.eq_ignore_ascii_case(SUFFIX) {
        return None;
    }
    let resource = scope
        .get(..split)?
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let host = resource.split_once("://").map_or("", |(_, rest)| rest);
    (!host.is_empty()).then_some(resource)
}

/// The resources of this sandbox's app registration: Exchange Online and Graph.
fn is_served_resource(resource: &str) -> bool {
    resource == OUTLOOK_RESOURCE || resource == GRAPH_RESOURCE
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn default_scopes_name_their_resource() {
        let r = |s: &str| default_scope_resource(s);
        assert_eq!(
            r("https://Outlook.Office.com/.default").as_deref(),
            Some(OUTLOOK_RESOURCE)
        );
        assert_eq!(
            r("https://graph.microsoft.com//.DEFAULT").as_deref(),
            Some(GRAPH_RESOURCE)
        );
        assert_eq!(r("https://outlook.office.com/IMAP.AccessAsApp"), None);
        assert_eq!(r(".default"), None);
        assert_eq!(r("https:///.default"), None);
        assert_eq!(r("openid"), None);
        assert_eq!(r("ééé/.default"), None);
        assert_eq!(r("é.default"), None);
    }
}
