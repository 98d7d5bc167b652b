//! The interactive sign-in / consent page shared by [`crate::FakeMicrosoft`]
//! and [`crate::google::FakeGoogle`] when their `interactive` flag is on.
//!
//! `GET …/authorize` (after all its strict checks) stores the request under a
//! random, single-use id and renders this page; the page posts
//! `request=<id>&user=<address>&action=accept|cancel` to the sibling path
//! `…/consent`, and the fake then redirects exactly as it does without the
//! page (code + state), or with `error=access_denied`. Microsoft's admin
//! consent endpoint (`…/v2.0/adminconsent`) shows the same page, worded for
//! an administrator accepting for the whole organization.
//!
//! The page is plain HTML with no script: native radio buttons and buttons,
//! so it works with the keyboard alone; every value it echoes is escaped; it
//! carries stable `data-testid`s (`sandbox-user-<address>`,
//! `sandbox-accept`, `sandbox-cancel`).

use std::collections::{BTreeMap, HashMap};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::idp::http::html_escape as esc;

/// How long a shown consent page stays answerable.
const PENDING_LIFETIME_SECS: i64 = 600;

/// What the user did with the authorize request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A fresh `GET …/authorize`: show the page when interactive, otherwise
    /// sign in automatically (the default user, `login_hint`, or the one set
    /// for the next login).
    Ask,
    /// "Accept" on the page, as this user (address).
    Accept(String),
    /// "Cancel" on the page.
    Decline,
}

/// An authorize request waiting for the user's answer on the page.
pub(crate) struct Pending {
    /// The tenant path segment (Microsoft; empty for Google).
    pub tenant: String,
    pub query: BTreeMap<String, String>,
    expires_at: DateTime<Utc>,
}

/// The single-use store of pending requests.
#[derive(Default)]
pub(crate) struct PendingStore(HashMap<String, Pending>);

impl PendingStore {
    /// Stores the request and returns its id (also drops expired ones).
    pub fn insert(&mut self, tenant: &str, query: &BTreeMap<String, String>) -> String {
        let now = Utc::now();
        self.0.retain(|_, p| p.expires_at > now);
        let id = crate::idp::random_token("", 43);
        self.0.insert(
            id.clone(),
            Pending {
                tenant: tenant.to_string(),
                query: query.clone(),
                expires_at: now + chrono::Duration::seconds(PENDING_LIFETIME_SECS),
            },
        );
        id
    }

    /// Removes and returns a live request (an id works once).
    pub fn take(&mut self, id: &str) -> Option<Pending> {
        let p = self.0.remove(id)?;
        (p.expires_at > Utc::now()).then_some(p)
    }
}

/// The form the page posts, read from an urlencoded body.
pub(crate) struct Answer {
    pub request: String,
    pub decision: Decision,
}

impl Answer {
    /// `Err(message)` for a malformed form.
    pub fn parse(body: &[u8]) -> Result<Answer, String> {
        let form = crate::idp::http::parse_params(&String::from_utf8_lossy(body))
            .map_err(|dup| format!("The form field '{dup}' is repeated."))?;
        let request = form
            .get("request")
            .filter(|r| !r.is_empty())
            .ok_or("The form has no request id.")?
            .clone();
        let decision = match form.get("action").map(String::as_str) {
            Some("accept") => match form.get("user").filter(|u| !u.is_empty()) {
                Some(u) => Decision::Accept(u.clone()),
                None => return Err("Pick an account before accepting.".into()),
            },
            Some("cancel") => Decision::Decline,
            _ => return Err("The form must say accept or cancel.".into()),
        };
        Ok(Answer { request, decision })
    }
}

/// One account the page offers.
pub(crate) struct Choice {
    pub address: String,
    pub name: String,
    /// "Work or school account", "Personal account", …
    pub kind: String,
}

/// Everything the page shows.
pub(crate) struct Page<'a> {
    /// "Microsoft" or "Google".
    pub brand: &'a str,
    pub app_name: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub request_id: &'a str,
    pub users: Vec<Choice>,
    /// The address selected at first (login_hint, else the first user).
    pub selected: &'a str,
    /// Plain-words permissions, in request order, without duplicates.
    pub permissions: Vec<String>,
    /// Admin consent: an administrator accepts for the whole organization
    /// (Microsoft's `adminconsent` endpoint), not a user for themselves.
    pub for_organization: bool,
}

const CSS: &str = r#"
:root { color-scheme: light; --accent: #1f5fbf; --text: #1b1f24; --muted: #59636e; --border: #d5dae0; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f4; color: var(--text);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.sandbox { background: #fff4cc; border-bottom: 2px solid #e0b400; color: #4d3b00; padding: .6rem 1rem; text-align: center; font-size: .9rem; }
.sandbox strong { font-weight: 700; }
main { max-width: 30rem; margin: 2rem auto; padding: 0 1rem 2rem; }
.card { background: #fff; border: 1px solid var(--border); border-radius: 10px; padding: 1.5rem 1.5rem 1.25rem;
  box-shadow: 0 1px 3px rgba(16, 24, 40, .08); }
.idp { margin: 0 0 1rem; font-size: .8rem; font-weight: 700; letter-spacing: .06em; text-transform: uppercase; color: var(--muted); }
h1 { font-size: 1.35rem; line-height: 1.3; margin: 0 0 .35rem; }
h2 { font-size: 1rem; margin: 1.25rem 0 .5rem; }
.lead { margin: 0 0 1rem; color: var(--muted); }
.lead strong { color: var(--text); }
fieldset { border: 0; margin: 0; padding: 0; }
legend { font-weight: 650; padding: 0; margin-bottom: .5rem; }
.user { display: flex; align-items: center; gap: .75rem; border: 1px solid var(--border); border-radius: 8px;
  padding: .6rem .75rem; margin-bottom: .5rem; cursor: pointer; }
.user:hover { border-color: var(--muted); }
.user:has(input:checked) { border-color: var(--accent); background: #f1f6fe; }
.user input { width: 1.1rem; height: 1.1rem; margin: 0; accent-color: var(--accent); flex: none; }
.who { display: flex; flex-direction: column; min-width: 0; }
.name { font-weight: 600; }
.addr, .kind { font-size: .85rem; color: var(--muted); overflow-wrap: anywhere; }
.perms { margin: 0; padding-left: 1.2rem; }
.perms li { margin: .2rem 0; }
.small { font-size: .8rem; color: var(--muted); margin: 1rem 0 0; overflow-wrap: anywhere; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .8rem; }
.actions { display: flex; gap: .6rem; margin-top: 1.25rem; flex-wrap: wrap; }
button { font: inherit; font-weight: 600; border-radius: 8px; padding: .55rem 1.2rem; min-height: 2.5rem; cursor: pointer;
  border: 1px solid var(--border); background: #fff; color: var(--text); }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button:hover { filter: brightness(.95); }
:focus-visible { outline: 3px solid #1f5fbf; outline-offset: 2px; }
"#;

/// Renders the page with a strict policy: no script at all, the one inline
/// style allowed by its hash, no framing.
pub(crate) fn render(p: &Page<'_>) -> Response {
    let back_to = url::Url::parse(p.redirect_uri)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| {
                format!(
                    "{h}{}",
                    u.port().map(|p| format!(":{p}")).unwrap_or_default()
                )
            })
        })
        .unwrap_or_else(|| p.redirect_uri.to_string());
    let app = esc(p.app_name);
    let mut users = String::new();
    for u in &p.users {
        let addr = esc(&u.address);
        let checked = if u.address.eq_ignore_ascii_case(p.selected) {
            " checked autofocus"
        } else {
            ""
        };
        users.push_str(&format!(
            "<label class=\"user\"><input type=\"radio\" name=\"user\" value=\"{addr}\" data-testid=\"sandbox-user-{addr}\"{checked}>\
             <span class=\"who\"><span class=\"name\">{name}</span><span class=\"addr\">{addr}</span><span class=\"kind\">{kind}</span></span></label>\n",
            name = esc(&u.name),
            kind = esc(&u.kind),
        ));
    }
    if p.users.is_empty() {
        users.push_str("<p>No user is configured in this sandbox.</p>");
    }
    let (heading, lead, legend, perms_title) = if p.for_organization {
        (
            "Permissions requested for your organization",
            "asks an administrator to accept these permissions for the whole organization.",
            "Sign in as an administrator",
            format!("If you accept, for everyone in your organization, {app} will be able to:"),
        )
    } else {
        (
            "Sign in and allow access",
            "asks to connect to a mailbox.",
            "Choose an account",
            format!("If you accept, {app} will be able to:"),
        )
    };
    let perms: String = p
        .permissions
        .iter()
        .map(|s| format!("<li>{}</li>", esc(s)))
        .collect();
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>Sign in · {brand} sandbox</title><style>{CSS}</style></head>\n<body>\n\
         <div class=\"sandbox\" role=\"note\" data-testid=\"sandbox-banner\"><strong>Sandbox identity provider — not {brand}.</strong> \
         Made-up test users: no password is asked, and nothing leaves this computer.</div>\n\
         <main><form class=\"card\" method=\"post\" action=\"consent\" data-testid=\"sandbox-consent\">\n\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\n\
         <p class=\"idp\">{brand} · sandbox</p>\n\
         <h1>{heading}</h1>\n\
         <p class=\"lead\"><strong data-testid=\"sandbox-app\">{app}</strong> {lead}</p>\n\
         <fieldset><legend>{legend}</legend>\n{users}</fieldset>\n\
         <h2 id=\"perms-title\">{perms_title}</h2>\n\
         <ul class=\"perms\" aria-labelledby=\"perms-title\" data-testid=\"sandbox-permissions\">{perms}</ul>\n\
         <div class=\"actions\">\
         <button type=\"submit\" name=\"action\" value=\"accept\" class=\"primary\" data-testid=\"sandbox-accept\">Accept</button>\
         <button type=\"submit\" name=\"action\" value=\"cancel\" data-testid=\"sandbox-cancel\">Cancel</button></div>\n\
         <p class=\"small\">Either way you go back to {app} at <strong>{back}</strong>. \
         Client id <code>{client}</code>.</p>\n\
         </form></main>\n</body></html>\n",
        brand = esc(p.brand),
        request = esc(p.request_id),
        back = esc(&back_to),
        client = esc(p.client_id),
    );
    let style_hash =
        base64::engine::general_purpose::STANDARD.encode(crate::idp::sha256(CSS.as_bytes()));
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; base-uri 'none'; frame-ancestors 'none'"
    );
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// Adds `text` unless it is already listed.
pub(crate) fn push_unique(out: &mut Vec<String>, text: String) {
    if !out.contains(&text) {
        out.push(text);
    }
}
