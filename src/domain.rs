//! Values that are checked once, where they enter, so the rest of the code
//! never re-checks them: tenant and account ids, mailbox addresses, providers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The customer organisation a caller acts for, from the caller's JWT.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<TenantId, &'static str> {
        if raw.is_empty() || raw.len() > 200 {
            return Err("tenant_id must be 1 to 200 characters");
        }
        if raw.chars().any(char::is_control) {
            return Err("tenant_id must not contain control characters");
        }
        Ok(TenantId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email account's id: a UUID, minted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccountId(uuid::Uuid);

impl AccountId {
    pub fn new() -> AccountId {
        AccountId(uuid::Uuid::new_v4())
    }

    /// Any text that is not a UUID names no account: callers turn the error
    /// into a 404, the same answer as for an account that does not exist.
    pub fn parse(raw: &str) -> Result<AccountId, &'static str> {
        uuid::Uuid::try_parse(raw)
            .map(AccountId)
            .map_err(|_| "not an account id")
    }
}

impl Default for AccountId {
    fn default() -> Self {
        AccountId::new()
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A mailbox address as the provider reported it, lower-cased so that one
/// mailbox is one account whatever case the provider used.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MailboxAddress(String);

impl MailboxAddress {
    pub fn parse(raw: &str) -> Result<MailboxAddress, &'static str> {
        let addr = raw.trim().to_lowercase();
        if addr.len() > 254 {
            return Err("address longer than 254 characters");
        }
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return Err("address has no @");
        };
        if local.is_empty() || domain.is_empty() || !domain.contains('.') && domain != "localhost" {
            return Err("address has an empty local part or domain");
        }
        if addr
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\u{1}')
        {
            return Err("address contains whitespace or control characters");
        }
        Ok(MailboxAddress(addr))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a browser may be sent back to on this site: a relative path that
/// stays a path on this host whatever a browser or URL parser makes of it.
///
/// Refused: anything not starting with exactly one `/`; backslashes (some
/// browsers read `/\\host` as `//host`); anything but printable ASCII
/// (control characters, whitespace, raw non-ASCII: percent-encode it); `.` and `..` segments and percent-encoded dots, slashes and
/// backslashes in the path (a URL join resolves `/%2e//evil.example` to
/// `//evil.example`, which browsers follow off-site). As a last check the
/// path is joined the way [`ReturnPath::location`] joins it, and the result
/// must still be on this host and not start with `//`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnPath(String);

/// The base relative paths are resolved against; never sent anywhere.
const RELATIVE_BASE: &str = "http://relative.invalid/";

impl ReturnPath {
    pub fn parse(raw: &str) -> Result<ReturnPath, &'static str> {
        const SHAPE: &str = "return_to must be a relative path starting with a single /";
        if raw.is_empty() || raw.len() > 2048 {
            return Err("return_to must be 1 to 2048 characters");
        }
        if !raw.starts_with('/') || raw.starts_with("//") {
            return Err(SHAPE);
        }
        // Printable ASCII (a URL's own characters: anything else is
        // percent-encoded), so the 2048 are characters and bytes alike and
        // the OpenAPI document can state the rule exactly.
        if raw.chars().any(|c| !c.is_ascii_graphic() || c == '\\') {
            return Err("return_to must be printable ASCII (percent-encode anything else), without spaces or backslashes");
        }
        let path = raw.split(['?', '#']).next().unwrap_or_default();
        let lower = path.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
            || path.split('/').any(|s| s == "." || s == "..")
        {
            return Err("return_to must not contain dot segments or encoded dots and slashes");
        }
        let path = ReturnPath(raw.to_owned());
        if !is_on_this_host(&path.location(&[])) {
            return Err(SHAPE);
        }
        Ok(path)
    }

    /// `/`, this site's root.
    pub fn root() -> ReturnPath {
        ReturnPath("/".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path with `params` added to its query (any fragment dropped),
    /// as a `Location` on this host.
    pub fn location(&self, params: &[(&str, &str)]) -> String {
        let Ok(mut url) = url::Url::parse(RELATIVE_BASE).and_then(|b| b.join(&self.0)) else {
            return "/".into();
        };
        url.set_fragment(None);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        let mut out = url.path().to_owned();
        if let Some(q) = url.query() {
            out.push('?');
            out.push_str(q);
        }
        // Unreachable for a parsed path; fail closed all the same.
        if url.host_str() != Some("relative.invalid") || !is_on_this_host(&out) {
            return "/".into();
        }
        out
    }
}

/// Where the callback sends the browser: `OAUTH_RETURN_URL`, a path on this
/// site or an absolute `http(s)` URL the operator chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReturnUrl {
    Path(ReturnPath),
    Absolute(url::Url),
}

impl ReturnUrl {
    /// A relative value must be a [`ReturnPath`]; anything else must be an
    /// absolute `http(s)` URL with a host.
    pub fn parse(raw: &str) -> Result<ReturnUrl, &'static str> {
        let raw = raw.trim();
        if raw.starts_with('/') && !raw.starts_with("//") {
            return ReturnPath::parse(raw).map(ReturnUrl::Path);
        }
        match url::Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Ok(ReturnUrl::Absolute(u))
            }
            _ => Err("must be a path starting with a single / or an absolute http(s) URL"),
        }
    }

    /// The `Location` with `params` added to the query, any fragment dropped.
    pub fn location(&self, params: &[(&str, &str)]) -> String {
        match self {
            ReturnUrl::Path(p) => p.location(params),
            ReturnUrl::Absolute(u) => {
                let mut u = u.clone();
                u.set_fragment(None);
                u.query_pairs_mut().extend_pairs(params);
                u.to_string()
            }
        }
    }
}

/// A `Location` that a browser resolves on the current host.
fn is_on_this_host(location: &str) -> bool {
    location.starts_with('/')
        && !location.starts_with("//")
        && !location.starts_with("/\\")
        && !location.contains('\\')
}

/// What a caller may do: the `role` claim of its JWT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Service,
}

/// An authenticated caller: who acts, for which tenant, in which role
/// (`None`: a valid token with a role this service does not know).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub tenant: TenantId,
    pub role: Option<Role>,
}

/// The identity providers mailconnect knows. Whether one is configured is a
/// separate question, answered by the provider registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Microsoft,
    Google,
    Oidc,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Microsoft,
        ProviderKind::Google,
        ProviderKind::Oidc,
    ];

    pub fn parse(raw: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|p| p.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::Google => "google",
            ProviderKind::Oidc => "oidc",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an account is (DESIGN.md "Account kinds").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A user's own mailbox, connected through the authorization-code
    /// flow; it holds the refresh token. Every account of a release before
    /// kinds existed.
    Delegated,
    /// A shared or other user's mailbox, opened with the token of a
    /// connected delegated account (its delegate) who has Full Access.
    Shared,
    /// A mailbox opened with the application's own token (client
    /// credentials) in a directory whose admin consented.
    App,
}

impl AccountKind {
    pub const ALL: [AccountKind; 3] = [
        AccountKind::Delegated,
        AccountKind::Shared,
        AccountKind::App,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Delegated => "delegated",
            AccountKind::Shared => "shared",
            AccountKind::App => "app",
        }
    }

    pub fn parse(raw: &str) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

/// Where an account stands, as the status route reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Connected,
    NeedsReauth,
    Disconnected,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Connected => "connected",
            AccountStatus::NeedsReauth => "needs_reauth",
            AccountStatus::Disconnected => "disconnected",
        }
    }

    pub fn parse(raw: &str) -> Option<AccountStatus> {
        [
            AccountStatus::Connected,
            AccountStatus::NeedsReauth,
            AccountStatus::Disconnected,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// How a mail client secures its connection to a server.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (IMAP 993, SMTP 465).
    Implicit,
    /// Plain text, then `STARTTLS` before anything secret is sent.
    Starttls,
    /// No TLS at all: only ever allowed for a loopback host.
    None,
}

impl TlsMode {
    pub fn parse(raw: &str) -> Option<TlsMode> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "implicit" => Some(TlsMode::Implicit),
            "starttls" => Some(TlsMode::Starttls),
            "none" => Some(TlsMode::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        }
    }
}

/// A mail server handed to workers.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MailServer {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailServers {
    pub imap: MailServer,
    pub smtp: MailServer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lower_cased_and_checked() {
        assert_eq!(
            MailboxAddress::parse(" Ops@Contoso.COM ").unwrap().as_str(),
            "ops@contoso.com"
        );
        for bad in [
            "",
            "ops",
            "@contoso.com",
            "ops@",
            "a b@c.com",
            "x@y\u{1}.com",
        ] {
            assert!(MailboxAddress::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn return_paths_never_leave_the_host() {
        // Known open-redirect shapes (shared with the integration tests):
        // each would leave the host once a browser or a URL join had its
        // way with it.
        let payloads: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/open_redirects.json"
            ))
            .unwrap(),
        )
        .unwrap();
        assert!(payloads.len() > 20);
        for bad in &payloads {
            assert!(ReturnPath::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("/{}", "a".repeat(2048));
        assert!(ReturnPath::parse(&long).is_err());
        assert!(ReturnPath::parse("/café").is_err());
        assert!(ReturnPath::parse("/a\u{a0}b").is_err());
        for good in [
            "/",
            "/settings/mail",
            "/a/b?x=1&y=%2e",
            "/x#frag",
            "/a.b/c..d/",
            "/caf%C3%A9",
        ] {
            let p = ReturnPath::parse(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            let loc = p.location(&[("oauth", "connected")]);
            assert!(loc.starts_with('/') && !loc.starts_with("//"), "{loc}");
            assert!(loc.contains("oauth=connected"), "{loc}");
            assert!(!loc.contains('#'), "{loc}");
        }
        assert_eq!(
            ReturnPath::parse("/a/b?x=1")
                .unwrap()
                .location(&[("oauth", "error")]),
            "/a/b?x=1&oauth=error"
        );
    }

    #[test]
    fn account_ids_are_uuids() {
        let id = AccountId::new();
        assert_eq!(AccountId::parse(&id.to_string()).unwrap(), id);
        assert!(AccountId::parse("../etc/passwd").is_err());
    }

    #[test]
    fn providers_parse_by_path_name() {
        assert_eq!(ProviderKind::parse("google"), Some(ProviderKind::Google));
        assert_eq!(ProviderKind::parse("yahoo"), None);
        for kind in AccountKind::ALL {
            assert_eq!(AccountKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AccountKind::parse("Delegated"), None);
    }
}
