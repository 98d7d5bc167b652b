//! Why a mailbox or a provider broke, and who must do what about it
//! (DESIGN.md "Diagnosis").
//!
//! The error *class* ([`crate::oauth::TokenError`]) still decides what
//! happens to an account; a [`Cause`] only explains it, in the closed list
//! of the contract, and [`Cause::fix`] says in plain words who acts and
//! where. [`TABLE`] is the one source: the code, the status route, the
//! webhooks, the admin page and the README's troubleshooting section
//! (`mailconnect causes` prints it; tests/ops.rs keeps the README's copy equal) all read it.

use serde::{Deserialize, Serialize};

/// One cause of the closed list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    ConsentMissing,
    AdminConsentRequired,
    AdminConsentRevoked,
    RefreshTokenInactive,
    PasswordChanged,
    MfaRequired,
    ConditionalAccessBlocked,
    UserDisabled,
    AccountLocked,
    GrantRevoked,
    ClientSecretExpired,
    ClientCredentialsInvalid,
    AppNotInDirectory,
    SingleTenantApp,
    Throttled,
    ProviderUnavailable,
    SmtpAuthDisabled,
    SmtpAuthRefused,
    MailboxAccessDenied,
    ImapAuthRefused,
    MailServerUntrusted,
    MailServerUnreachable,
    Unknown,
}

/// What the contract and the admin are told about one cause.
pub struct Entry {
    pub cause: Cause,
    /// Where it comes from (the README's table).
    pub from: &'static str,
    /// Who must act, in a word or two.
    pub who: &'static str,
    /// What to do: one or two sentences, the place to click or the command
    /// to run, no code without its meaning.
    pub fix: &'static str,
}

/// Every cause, in the order of DESIGN.md's table.
pub const TABLE: &[Entry] = &[
    Entry {
        cause: Cause::ConsentMissing,
        from: "AADSTS65001, 65004; Google/oidc `consent_required`",
        who: "the mailbox owner",
        fix: "The mailbox owner has not agreed (or declined) to let this app read and send mail. \
              Send them through Connect again and have them click Accept; if their organisation \
              does not let users agree, an administrator grants consent for everyone (Grant admin \
              consent on the admin page).",
    },
    Entry {
        cause: Cause::AdminConsentRequired,
        from: "AADSTS90094, 90008",
        who: "a Microsoft 365 administrator",
        fix: "The organisation only lets administrators approve apps. A Global or Privileged Role \
              Administrator of that Microsoft 365 organisation clicks Grant admin consent on the \
              admin page (or in Entra admin center → Enterprise applications → this app → \
              Permissions), then the mailbox is connected again.",
    },
    Entry {
        cause: Cause::AdminConsentRevoked,
        from: "an `app` directory refusing the app a token",
        who: "a Microsoft 365 administrator",
        fix: "The organisation no longer lets this app in (its admin consent was revoked or the \
              app was removed from Entra admin center → Enterprise applications). An administrator \
              of that organisation clicks Grant admin consent on the admin page again; the app \
              mailboxes come back by themselves.",
    },
    Entry {
        cause: Cause::RefreshTokenInactive,
        from: "AADSTS700082",
        who: "the mailbox owner or an admin",
        fix: "The sign-in expired because the mailbox was not used for 90 days. Connect the \
              mailbox again (Reconnect on the admin page); keeping it connected keeps it alive.",
    },
    Entry {
        cause: Cause::PasswordChanged,
        from: "AADSTS50173",
        who: "the mailbox owner",
        fix: "The mailbox owner's password was changed or reset, which ends earlier sign-ins. \
              They connect the mailbox again (Reconnect) with the new password.",
    },
    Entry {
        cause: Cause::MfaRequired,
        from: "AADSTS50076, 50079",
        who: "the mailbox owner",
        fix: "The organisation now asks this user for multi-factor authentication. The mailbox \
              owner connects again (Reconnect) and completes the second step (or registers a \
              method when asked).",
    },
    Entry {
        cause: Cause::ConditionalAccessBlocked,
        from: "AADSTS53003",
        who: "a Microsoft 365 administrator",
        fix: "A Conditional Access policy blocks this sign-in (for example by location or \
              device). An administrator checks Entra admin center → Protection → Conditional \
              Access → Sign-in logs for this user, allows this app, then the mailbox is connected \
              again.",
    },
    Entry {
        cause: Cause::UserDisabled,
        from: "AADSTS50057",
        who: "a Microsoft 365 administrator",
        fix: "The user account is disabled in its organisation. An administrator enables it in \
              Microsoft 365 admin center → Users, or disconnects this mailbox if the person left.",
    },
    Entry {
        cause: Cause::AccountLocked,
        from: "AADSTS50053",
        who: "the mailbox owner or an admin",
        fix: "The account is locked after too many wrong sign-ins. Wait for the lock to lapse or \
              have an administrator unlock it, then connect the mailbox again.",
    },
    Entry {
        cause: Cause::GrantRevoked,
        from: "any other `invalid_grant`",
        who: "the mailbox owner or an admin",
        fix: "The provider no longer accepts this mailbox's sign-in (it was revoked, expired or \
              the user signed out everywhere). Connect the mailbox again (Reconnect on the admin \
              page).",
    },
    Entry {
        cause: Cause::ClientSecretExpired,
        from: "AADSTS7000222",
        who: "the operator of mailconnect",
        fix: "The client secret of the Microsoft app registration expired. Create a new secret in \
              Entra admin center → App registrations → this app → Certificates & secrets, set \
              MICROSOFT_OAUTH_CLIENT_SECRET to it and restart mailconnect; no mailbox needs to \
              reconnect.",
    },
    Entry {
        cause: Cause::ClientCredentialsInvalid,
        from: "AADSTS7000215 and any other `invalid_client`; an oidc provider that does not take our key",
        who: "the operator of mailconnect",
        fix: "The provider refuses mailconnect's client id or secret. Copy the secret's value \
              (not its id) from the app registration (Entra: Certificates & secrets; Google Cloud \
              console: APIs & Services → Credentials) into the *_OAUTH_CLIENT_SECRET setting and \
              restart; no mailbox needs to reconnect. With a key (OIDC_OAUTH_CLIENT_KEY), the \
              provider must allow private_key_jwt for the client and hold the key's public JWK.",
    },
    Entry {
        cause: Cause::AppNotInDirectory,
        from: "AADSTS700016",
        who: "the operator or a Microsoft 365 administrator",
        fix: "The app registration is not known in that organisation: check that \
              MICROSOFT_OAUTH_CLIENT_ID is the Application (client) ID of the app registration, \
              and that an administrator of the organisation has consented to it (Grant admin \
              consent).",
    },
    Entry {
        cause: Cause::SingleTenantApp,
        from: "AADSTS50194",
        who: "the operator of mailconnect",
        fix: "The app registration accepts only its own organisation but is called through \
              /common. Either set MICROSOFT_OAUTH_TENANT_ID to that organisation's tenant id, or \
              make the app multi-tenant in Entra admin center → App registrations → \
              Authentication → Supported account types.",
    },
    Entry {
        cause: Cause::Throttled,
        from: "HTTP 429, AADSTS50196",
        who: "nobody (it passes)",
        fix: "The provider asked mailconnect to slow down. It waits and tries again by itself; \
              if it lasts, spread the load (fewer replicas refreshing at once) or ask the \
              provider for a higher limit.",
    },
    Entry {
        cause: Cause::ProviderUnavailable,
        from: "5xx, timeouts, unreadable answers",
        who: "nobody (it passes)",
        fix: "The provider could not be reached or answered nonsense. mailconnect tries again by \
              itself; if it lasts, check the provider's service status and this host's network \
              and proxy settings.",
    },
    Entry {
        cause: Cause::SmtpAuthDisabled,
        from: "SMTP `5.7.139`",
        who: "a Microsoft 365 administrator",
        fix: "Authenticated SMTP is turned off for this mailbox. An administrator turns on \
              Authenticated SMTP in Microsoft 365 admin center → Users → the user → Mail → \
              Manage email apps (or runs Set-CASMailbox -SmtpClientAuthenticationDisabled \
              $false).",
    },
    Entry {
        cause: Cause::SmtpAuthRefused,
        from: "any other SMTP AUTH refusal",
        who: "an admin",
        fix: "The mail server refused the SMTP login with this token. Check that the app has the \
              SMTP.Send permission (connect again to grant it) and, for a shared mailbox, that \
              its delegate has Send As on it.",
    },
    Entry {
        cause: Cause::MailboxAccessDenied,
        from: "IMAP `BAD User is authenticated but not connected.` after a successful login",
        who: "a Microsoft 365 administrator",
        fix: "The login worked but the mailbox may not be opened with it: the delegate (or the \
              app) has no Full Access to this mailbox, or IMAP is turned off for it. An \
              administrator grants Full Access in Exchange admin center → Mailboxes → the mailbox \
              → Delegation (for an app: Add-MailboxPermission to its service principal) and \
              checks IMAP is on under Manage email apps.",
    },
    Entry {
        cause: Cause::ImapAuthRefused,
        from: "any other IMAP AUTHENTICATE refusal",
        who: "an admin",
        fix: "The mail server refused the IMAP login with this token. Check that IMAP is turned \
              on for the mailbox and that the app has the IMAP.AccessAsUser.All permission \
              (connect again to grant it).",
    },
    Entry {
        cause: Cause::MailServerUntrusted,
        from: "TLS failure",
        who: "the operator of mailconnect",
        fix: "The mail server's certificate is not trusted (expired, for another name, or \
              issued by a private authority). For a private server, add its certificate or its \
              CA to the file named by MAILCONNECT_EXTRA_CA_FILE and restart.",
    },
    Entry {
        cause: Cause::MailServerUnreachable,
        from: "connect failure or timeout",
        who: "the operator of mailconnect",
        fix: "The mail server could not be reached. Check the host and port (*_IMAP_HOST, \
              *_SMTP_HOST), DNS and the firewall between this host and the server.",
    },
    Entry {
        cause: Cause::Unknown,
        from: "anything else",
        who: "the operator of mailconnect",
        fix: "mailconnect does not recognise this failure. Look at the account's history on the \
              admin page and the service's logs for the provider's error, then reconnect the \
              mailbox or contact support with that error.",
    },
];

impl Cause {
    /// Every cause, in the table's order.
    pub fn all() -> impl Iterator<Item = Cause> {
        TABLE.iter().map(|e| e.cause)
    }

    fn entry(self) -> &'static Entry {
        TABLE
            .iter()
            .find(|e| e.cause == self)
            .expect("every cause has its row in TABLE")
    }

    /// The name the contract uses (`grant_revoked`).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ConsentMissing => "consent_missing",
            Cause::AdminConsentRequired => "admin_consent_required",
            Cause::AdminConsentRevoked => "admin_consent_revoked",
            Cause::RefreshTokenInactive => "refresh_token_inactive",
            Cause::PasswordChanged => "password_changed",
            Cause::MfaRequired => "mfa_required",
            Cause::ConditionalAccessBlocked => "conditional_access_blocked",
            Cause::UserDisabled => "user_disabled",
            Cause::AccountLocked => "account_locked",
            Cause::GrantRevoked => "grant_revoked",
            Cause::ClientSecretExpired => "client_secret_expired",
            Cause::ClientCredentialsInvalid => "client_credentials_invalid",
            Cause::AppNotInDirectory => "app_not_in_directory",
            Cause::SingleTenantApp => "single_tenant_app",
            Cause::Throttled => "throttled",
            Cause::ProviderUnavailable => "provider_unavailable",
            Cause::SmtpAuthDisabled => "smtp_auth_disabled",
            Cause::SmtpAuthRefused => "smtp_auth_refused",
            Cause::MailboxAccessDenied => "mailbox_access_denied",
            Cause::ImapAuthRefused => "imap_auth_refused",
            Cause::MailServerUntrusted => "mail_server_untrusted",
            Cause::MailServerUnreachable => "mail_server_unreachable",
            Cause::Unknown => "unknown",
        }
    }

    /// The cause a stored name stands for; a name this release does not
    /// know (written by a newer one) reads as `unknown`.
    pub fn parse(name: &str) -> Cause {
        Cause::all()
            .find(|c| c.as_str() == name)
            .unwrap_or(Cause::Unknown)
    }

    pub fn fix(self) -> &'static str {
        self.entry().fix
    }

    /// The cause of an OAuth error answer: the AADSTS code when Microsoft
    /// sent one, else the OAuth `error` and the HTTP status.
    pub fn of_oauth(error: &str, aadsts: Option<u32>, status: u16) -> Cause {
        if let Some(cause) = aadsts.and_then(Cause::of_aadsts) {
            return cause;
        }
        match error {
            "consent_required" => Cause::ConsentMissing,
            "invalid_grant" => Cause::GrantRevoked,
            "invalid_client" => Cause::ClientCredentialsInvalid,
            "temporarily_unavailable" | "server_error" => Cause::ProviderUnavailable,
            _ if status == 429 => Cause::Throttled,
            _ if status >= 500 => Cause::ProviderUnavailable,
            _ => Cause::Unknown,
        }
    }

    /// The cause an AADSTS code names, when it is one of the table's.
    pub fn of_aadsts(code: u32) -> Option<Cause> {
        Some(match code {
            65001 | 65004 => Cause::ConsentMissing,
            90094 | 90008 => Cause::AdminConsentRequired,
            700082 => Cause::RefreshTokenInactive,
            50173 => Cause::PasswordChanged,
            50076 | 50079 => Cause::MfaRequired,
            53003 => Cause::ConditionalAccessBlocked,
            50057 => Cause::UserDisabled,
            50053 => Cause::AccountLocked,
            7000222 => Cause::ClientSecretExpired,
            7000215 => Cause::ClientCredentialsInvalid,
            700016 => Cause::AppNotInDirectory,
            50194 => Cause::SingleTenantApp,
            50196 => Cause::Throttled,
            _ => return None,
        })
    }

    /// Whether a failure of this cause passes by itself. AADSTS50196 (a
    /// throttled request loop) is the one that does even when Microsoft
    /// sends it as `invalid_grant`.
    pub fn is_transient(self) -> bool {
        matches!(self, Cause::Throttled | Cause::ProviderUnavailable)
    }

    /// The cause of an SMTP reply that refused the login.
    pub fn of_smtp_refusal(reply: &str) -> Cause {
        if reply.contains("5.7.139") {
            Cause::SmtpAuthDisabled
        } else {
            Cause::SmtpAuthRefused
        }
    }

    /// The cause of an IMAP refusal: of the AUTHENTICATE itself, or of the
    /// first command after a login that worked (Exchange's way of saying
    /// the token may not open this mailbox).
    pub fn of_imap_refusal(reply: &str, after_login: bool) -> Cause {
        if after_login || reply.contains("User is authenticated but not connected") {
            Cause::MailboxAccessDenied
        } else {
            Cause::ImapAuthRefused
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The AADSTS code of a Microsoft error answer: the first of
/// `error_codes`, else the `AADSTSnnnn` its description starts with.
pub fn aadsts_code(error_codes: &[u32], description: Option<&str>) -> Option<u32> {
    if let Some(code) = error_codes.first() {
        return Some(*code);
    }
    let text = description?;
    let at = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    digits.parse().ok()
}

/// A failure as the status route, `verify` and the admin page show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Diagnosis {
    pub cause: Cause,
    /// What to do, in plain words, naming who acts.
    #[schema(example = "The client secret of the Microsoft app registration expired. …")]
    pub fix: &'static str,
    /// When the failure was seen.
    #[schema(format = DateTime, example = "2026-11-27T10:00:00Z")]
    pub at: String,
}

impl Diagnosis {
    pub fn new(cause: Cause, at: i64) -> Diagnosis {
        Diagnosis {
            cause,
            fix: cause.fix(),
            at: crate::rfc3339(at),
        }
    }

    /// The diagnosis of a stored cause, when there is one.
    pub fn stored(cause: Option<&str>, at: Option<i64>) -> Option<Diagnosis> {
        Some(Diagnosis::new(Cause::parse(cause?), at.unwrap_or(0)))
    }
}

/// The README's troubleshooting table, from [`TABLE`].
pub fn markdown_table() -> String {
    let mut out = String::from("| cause | from | who acts | what to do |\n|---|---|---|---|\n");
    for e in TABLE {
        let fix = e.fix.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            e.cause.as_str(),
            e.from,
            e.who,
            fix.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_cause_once_and_names_round_trip() {
        let names: Vec<&str> = Cause::all().map(Cause::as_str).collect();
        assert_eq!(names.len(), 23);
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for cause in Cause::all() {
            assert_eq!(Cause::parse(cause.as_str()), cause);
            assert_eq!(
                serde_json::to_value(cause).unwrap(),
                serde_json::json!(cause.as_str())
            );
        }
        assert_eq!(Cause::parse("from_a_newer_release"), Cause::Unknown);
    }

    #[test]
    fn every_aadsts_code_of_the_contract_has_its_cause() {
        for (code, cause) in [
            (65001, Cause::ConsentMissing),
            (65004, Cause::ConsentMissing),
            (90094, Cause::AdminConsentRequired),
            (90008, Cause::AdminConsentRequired),
            (700082, Cause::RefreshTokenInactive),
            (50173, Cause::PasswordChanged),
            (50076, Cause::MfaRequired),
            (50079, Cause::MfaRequired),
            (53003, Cause::ConditionalAccessBlocked),
            (50057, Cause::UserDisabled),
            (50053, Cause::AccountLocked),
            (7000222, Cause::ClientSecretExpired),
            (7000215, Cause::ClientCredentialsInvalid),
            (700016, Cause::AppNotInDirectory),
            (50194, Cause::SingleTenantApp),
            (50196, Cause::Throttled),
        ] {
            assert_eq!(Cause::of_oauth("invalid_grant", Some(code), 400), cause);
        }
        assert_eq!(
            Cause::of_oauth("invalid_grant", Some(70000), 400),
            Cause::GrantRevoked
        );
        assert_eq!(
            Cause::of_oauth("invalid_client", None, 401),
            Cause::ClientCredentialsInvalid
        );
        assert_eq!(
            Cause::of_oauth("consent_required", None, 400),
            Cause::ConsentMissing
        );
        assert_eq!(Cause::of_oauth("slow_down", None, 429), Cause::Throttled);
        assert_eq!(Cause::of_oauth("invalid_scope", None, 400), Cause::Unknown);
        assert!(Cause::Throttled.is_transient() && !Cause::GrantRevoked.is_transient());
    }

    #[test]
    fn the_code_is_read_from_error_codes_or_the_description() {
        assert_eq!(aadsts_code(&[700082], None), Some(700082));
        assert_eq!(
            aadsts_code(
                &[],
                Some("AADSTS50173: The provided grant has expired due to it being revoked.")
            ),
            Some(50173)
        );
        assert_eq!(aadsts_code(&[], Some("no code here")), None);
        assert_eq!(aadsts_code(&[], Some("AADSTS")), None);
        assert_eq!(aadsts_code(&[], None), None);
    }

    #[test]
    fn mail_server_refusals_have_their_causes() {
        assert_eq!(
            Cause::of_smtp_refusal("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."),
            Cause::SmtpAuthDisabled
        );
        assert_eq!(
            Cause::of_smtp_refusal("535 5.7.3 Authentication unsuccessful"),
            Cause::SmtpAuthRefused
        );
        assert_eq!(
            Cause::of_imap_refusal("a2 BAD User is authenticated but not connected.", true),
            Cause::MailboxAccessDenied
        );
        assert_eq!(
            Cause::of_imap_refusal("a1 NO AUTHENTICATE failed.", false),
            Cause::ImapAuthRefused
        );
    }

    #[test]
    fn fixes_are_plain_words_that_name_who_acts() {
        for e in TABLE {
            let words = e.fix.split_whitespace().count();
            assert!((10..=80).contains(&words), "{}: {words} words", e.cause);
            // A code is never given without its meaning: no bare AADSTS.
            assert!(!e.fix.contains("AADSTS"), "{}", e.cause);
            assert!(!e.who.is_empty());
        }
        let table = markdown_table();
        assert_eq!(table.lines().count(), 2 + TABLE.len());
    }
}
