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
    fn account_ids_are_uuids() {
        let id = AccountId::new();
        assert_eq!(AccountId::parse(&id.to_string()).unwrap(), id);
        assert!(AccountId::parse("../etc/passwd").is_err());
    }

    #[test]
    fn providers_parse_by_path_name() {
        assert_eq!(ProviderKind::parse("google"), Some(ProviderKind::Google));
        assert_eq!(ProviderKind::parse("yahoo"), None);
    }
}
