//! A **strict local fake of Exchange Online's IMAP and SMTP submission
//! servers** (`outlook.office365.com:993`, `smtp.office365.com:587`), which
//! takes the access tokens of a [`FakeMicrosoft`] the way Exchange takes
//! Microsoft's: IMAP with implicit TLS, SMTP with STARTTLS, both on
//! `127.0.0.1` with a certificate of a CA made at start ([`FakeExchange::ca_pem`]),
//! or a self-signed one ([`ServerCert`]).
//!
//! # Layout
//! * this file: [`FakeExchange`], its knobs and records, who may open,
//!   authenticate as and send as which mailbox, and which tokens count;
//! * `server`: TLS (a CA and a `localhost` / `127.0.0.1` leaf, or one
//!   self-signed certificate, made with rcgen), the listeners, bounded and
//!   timed line I/O, shutdown;
//! * `sasl`: the XOAUTH2 and OAUTHBEARER initial responses;
//! * `imap`, `smtp`: each protocol's session, command by command.
//!
//! # Mailboxes and permissions
//! A mailbox exists when it was added ([`FakeExchange::add_mailbox`]), and
//! every user of the [`FakeMicrosoft`] has one at their UPN, as a licensed
//! user of Exchange Online does. Permissions on a mailbox that does not
//! exist give nothing (Exchange grants only on mailboxes that exist).
//! Addresses compare case-insensitively.
//!
//! * A user's (delegated) token opens, over IMAP, the user's own mailbox and
//!   the mailboxes the user has Full Access to ([`FakeExchange::grant_full_access`]);
//!   over SMTP it authenticates only as the user (Exchange refuses SMTP AUTH
//!   as a shared mailbox) and sends as the user or as a mailbox the user has
//!   Send As on ([`FakeExchange::grant_send_as`]).
//! * An app's token (client credentials) has no mailbox of its own. Its
//!   directory's service principal opens, and authenticates over SMTP as, the
//!   mailboxes it has Full Access to ([`FakeExchange::grant_app_access`],
//!   Exchange's `Add-MailboxPermission -AccessRights FullAccess`); it sends as
//!   the mailbox it authenticated as, and as the mailboxes it has Send As on
//!   ([`FakeExchange::grant_app_send_as`], `Add-RecipientPermission -AccessRights SendAs`).
//!
//! # Tokens
//! A token counts when the [`FakeMicrosoft`] issued it, it is valid (not
//! expired, not invalidated), it is for Exchange Online
//! ([`OUTLOOK_RESOURCE`]) and it carries the permission of the protocol:
//! `IMAP.AccessAsUser.All` / `SMTP.Send` for a user's token, the app roles
//! `IMAP.AccessAsApp` / `SMTP.SendAsApp` for an app's. Anything else is
//! refused as Exchange refuses it (`NO AUTHENTICATE failed.`,
//! `535 5.7.3 Authentication unsuccessful`). A token that counts but may not
//! open the mailbox named by `user=` is, over IMAP, **accepted**
//! (`OK AUTHENTICATE completed.`) and every later mailbox command refused
//! with `BAD User is authenticated but not connected.`, the second with
//! `* BYE Connection closed. 14`: Exchange Online's "authenticated but not
//! connected" state, why a client must open INBOX before it trusts a login.
//!
//! The exact replies and where each comes from are written beside them in
//! `imap` and `smtp`.
//!
//! **Test/demo only**: its CA key lives in memory and is thrown away, but
//! anyone who can reach the ports may try tokens.

mod imap;
mod sasl;
mod server;
mod smtp;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use self::sasl::Mechanism;
use crate::{FakeMicrosoft, OUTLOOK_RESOURCE};

/// The server name the fake's greetings and error replies carry, shaped
/// like an Exchange Online front end's (`AM3PR05CA0094.outlook.office365.com`).
const SERVER_HOST: &str = "SBX1PR01CA0001.sandbox.invalid";

/// How long a connection may stay silent (or take for its TLS handshake)
/// before the server closes it, unless [`FakeExchange::set_idle_timeout`]
/// says otherwise.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One login attempt as the fake saw it, for tests to count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// `"imap"` or `"smtp"`.
    pub protocol: &'static str,
    /// `"XOAUTH2"`, `"OAUTHBEARER"`, or a password mechanism (`"PLAIN"`,
    /// `"LOGIN"`), which Exchange Online refuses.
    pub mechanism: &'static str,
    /// The mailbox the client named (`user=` of XOAUTH2, `a=` of
    /// OAUTHBEARER, the user name of a password login); empty when none.
    pub username: String,
    /// * `"ok"`: logged in (IMAP: and the mailbox opens);
    /// * `"bad_token"`: not a valid token of the fake for Exchange Online
    ///   with this protocol's permission;
    /// * `"malformed"`: the SASL response could not be read, or was cancelled;
    /// * `"not_connected"` (IMAP): a token that counts, for a mailbox it may
    ///   not open: accepted, then every mailbox command refused;
    /// * `"wrong_user"` (SMTP): a token that counts, for a mailbox it may
    ///   not authenticate as;
    /// * `"smtp_auth_disabled"` (SMTP): SMTP AUTH is disabled for the mailbox;
    /// * `"send_as_denied"` (SMTP): logged in, then a `MAIL FROM` it may not
    ///   send as was refused;
    /// * `"basic_auth_disabled"`: a password login.
    pub outcome: &'static str,
}

/// Who a token speaks for at Exchange: a user (lower-cased UPN) or an app's
/// service principal in a directory (lower-cased directory id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Principal {
    User(String),
    App(String),
}

/// A token login whose token counts: who it speaks for, the mailbox it
/// names (lower-cased), and the username as sent.
struct TokenLogin {
    who: Principal,
    mailbox: String,
    username: String,
}

/// Mailbox permissions, as Exchange grants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Right {
    FullAccess,
    SendAs,
}

/// The two protocols, with the permission each asks of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Imap,
    Smtp,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Imap => "imap",
            Service::Smtp => "smtp",
        }
    }

    /// The delegated scope a user's token needs, under [`OUTLOOK_RESOURCE`].
    fn delegated_scope(self) -> &'static str {
        match self {
            Service::Imap => "IMAP.AccessAsUser.All",
            Service::Smtp => "SMTP.Send",
        }
    }

    /// The app role an app's token needs.
    fn app_role(self) -> &'static str {
        match self {
            Service::Imap => "IMAP.AccessAsApp",
            Service::Smtp => "SMTP.SendAsApp",
        }
    }
}

struct State {
    /// Lower-cased addresses of the mailboxes added or granted on.
    mailboxes: HashSet<String>,
    /// (right, lower-cased mailbox, principal).
    grants: HashSet<(Right, String, Principal)>,
    /// Lower-cased mailboxes with SMTP AUTH disabled.
    smtp_auth_disabled: HashSet<String>,
    offers_oauthbearer: bool,
    idle_timeout: Duration,
    logins: Vec<Login>,
    messages_submitted: usize,
}

/// What every connection shares: the identity platform whose tokens count,
/// and the state the knobs set.
struct Shared {
    ms: FakeMicrosoft,
    state: Mutex<State>,
}

/// The fake Exchange Online IMAP (implicit TLS) and SMTP submission
/// (STARTTLS) servers. They stop when this is dropped or
/// [`shut down`](Self::shutdown); hold it in an `Arc` to share it.
pub struct FakeExchange {
    shared: Arc<Shared>,
    imap_addr: SocketAddr,
    smtp_addr: SocketAddr,
    ca_pem: String,
    /// Dropping it tells the listeners and every connection to stop.
    _stop: watch::Sender<()>,
}

/// The certificate the servers present, for `localhost` and `127.0.0.1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerCert {
    /// A leaf signed by a CA made at start, as a public server's would be.
    #[default]
    SignedByCa,
    /// One self-signed certificate marked as a CA, as `openssl req -x509`
    /// makes by default: what a private server often presents.
    SelfSignedCa,
}

impl FakeExchange {
    /// Makes a CA and a `localhost` / `127.0.0.1` certificate signed by it,
    /// binds two ports on `127.0.0.1` and serves IMAP and SMTP on the
    /// current tokio runtime, taking the tokens of `ms`.
    pub async fn start(ms: FakeMicrosoft) -> anyhow::Result<FakeExchange> {
        FakeExchange::start_with(ms, ServerCert::default()).await
    }

    /// The same, presenting `cert`.
    pub async fn start_with(ms: FakeMicrosoft, cert: ServerCert) -> anyhow::Result<FakeExchange> {
        let shared = Arc::new(Shared {
            ms,
            state: Mutex::new(State {
                mailboxes: HashSet::new(),
                grants: HashSet::new(),
                smtp_auth_disabled: HashSet::new(),
                offers_oauthbearer: false,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                logins: Vec::new(),
                messages_submitted: 0,
            }),
        });
        let (stop, stopped) = watch::channel(());
        let servers = server::start(shared.clone(), stopped, cert).await?;
        Ok(FakeExchange {
            shared,
            imap_addr: servers.imap_addr,
            smtp_addr: servers.smtp_addr,
            ca_pem: servers.ca_pem,
            _stop: stop,
        })
    }

    /// What a client adds to its trust roots (PEM): the CA that signed the
    /// servers' certificate, or that certificate itself when self-signed.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// IMAP with implicit TLS (Exchange Online: port 993).
    pub fn imap_addr(&self) -> SocketAddr {
        self.imap_addr
    }

    /// SMTP submission with STARTTLS (Exchange Online: port 587).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// Stops both servers and closes every connection (as dropping does).
    pub fn shutdown(self) {}

    /// A mailbox (a shared mailbox, say) that exists from now on. The
    /// [`FakeMicrosoft`]'s users need none: each has one at their UPN.
    pub fn add_mailbox(&self, address: &str) {
        self.shared
            .lock()
            .mailboxes
            .insert(address.to_ascii_lowercase());
    }

    /// The user `upn` has Full Access to `mailbox`: their token opens it
    /// over IMAP (`user=` the mailbox).
    pub fn grant_full_access(&self, mailbox: &str, upn: &str) {
        self.grant(
            Right::FullAccess,
            mailbox,
            Principal::User(upn.to_ascii_lowercase()),
        );
    }

    /// The user `upn` has Send As on `mailbox`: logged in over SMTP as
    /// themselves, they may send `MAIL FROM` it.
    pub fn grant_send_as(&self, mailbox: &str, upn: &str) {
        self.grant(
            Right::SendAs,
            mailbox,
            Principal::User(upn.to_ascii_lowercase()),
        );
    }

    /// The app's service principal in `directory` (its id, as
    /// [`AppTokenInfo::directory`](crate::AppTokenInfo::directory) says) has
    /// Full Access to `mailbox`: its app tokens open the mailbox over IMAP,
    /// and authenticate as it over SMTP and send as it.
    pub fn grant_app_access(&self, mailbox: &str, directory: &str) {
        self.grant(
            Right::FullAccess,
            mailbox,
            Principal::App(directory.to_ascii_lowercase()),
        );
    }

    /// The app's service principal in `directory` has Send As on `mailbox`:
    /// logged in over SMTP as any mailbox it has Full Access to, it may send
    /// `MAIL FROM` this one.
    pub fn grant_app_send_as(&self, mailbox: &str, directory: &str) {
        self.grant(
            Right::SendAs,
            mailbox,
            Principal::App(directory.to_ascii_lowercase()),
        );
    }

    /// SMTP AUTH (`SmtpClientAuthenticationDisabled`) for the mailbox a
    /// client authenticates as: while disabled, a login that would succeed
    /// is refused with `535 5.7.139 … SmtpClientAuthentication is disabled
    /// for the Mailbox …`.
    pub fn set_smtp_auth_disabled(&self, mailbox: &str, disabled: bool) {
        let mailbox = mailbox.to_ascii_lowercase();
        let mut st = self.shared.lock();
        if disabled {
            st.smtp_auth_disabled.insert(mailbox);
        } else {
            st.smtp_auth_disabled.remove(&mailbox);
        }
    }

    /// Exchange Online offers XOAUTH2 only (IMAP `AUTH=XOAUTH2`, SMTP
    /// `AUTH LOGIN XOAUTH2`), and so does the fake by default: an
    /// OAUTHBEARER login is refused as an unknown mechanism. While true,
    /// both servers also offer and take OAUTHBEARER (RFC 7628), for clients
    /// that prefer it where offered.
    pub fn set_offers_oauthbearer(&self, offered: bool) {
        self.shared.lock().offers_oauthbearer = offered;
    }

    /// How long connections made from now on may stay silent (or take for
    /// their TLS handshake) before they are closed. Default 30 s.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.shared.lock().idle_timeout = timeout;
    }

    /// Every login attempt so far, in order.
    pub fn logins(&self) -> Vec<Login> {
        self.shared.lock().logins.clone()
    }

    /// Messages accepted after `DATA` (and thrown away): zero for a client
    /// that only verifies.
    pub fn messages_submitted(&self) -> usize {
        self.shared.lock().messages_submitted
    }

    fn grant(&self, right: Right, mailbox: &str, to: Principal) {
        let grant = (right, mailbox.to_ascii_lowercase(), to);
        self.shared.lock().grants.insert(grant);
    }
}

impl Shared {
    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Who `token` speaks for at `service`, if it counts there (see the
    /// module docs); `None` otherwise.
    fn principal(&self, token: &str, service: Service) -> Option<Principal> {
        if let Some(t) = self.ms.access_token_info(token) {
            let scope = format!("{OUTLOOK_RESOURCE}/{}", service.delegated_scope());
            let counts = t.valid
                && t.resource == OUTLOOK_RESOURCE
                && t.scopes.iter().any(|s| s.eq_ignore_ascii_case(&scope));
            return counts.then(|| Principal::User(t.upn.to_ascii_lowercase()));
        }
        let t = self.ms.app_token_info(token)?;
        let counts = t.valid
            && t.audience == OUTLOOK_RESOURCE
            && t.roles.iter().any(|r| r == service.app_role());
        counts.then(|| Principal::App(t.directory.to_ascii_lowercase()))
    }

    /// The checks a token login makes the same way in both protocols: the
    /// response reads as `mechanism`'s, and its token counts for `service`.
    /// Otherwise the username and outcome to record.
    fn bearer_login(
        &self,
        mechanism: Mechanism,
        response: &str,
        service: Service,
    ) -> Result<TokenLogin, (String, &'static str)> {
        let bearer = sasl::decode(mechanism, response).ok_or((String::new(), "malformed"))?;
        let Some(who) = self.principal(&bearer.token, service) else {
            return Err((bearer.user, "bad_token"));
        };
        // OAUTHBEARER may name no mailbox: a user's token then speaks for its own.
        let mailbox = match (&who, bearer.user.is_empty()) {
            (Principal::User(upn), true) => upn.clone(),
            _ => bearer.user.to_ascii_lowercase(),
        };
        Ok(TokenLogin {
            who,
            mailbox,
            username: bearer.user,
        })
    }

    /// `who` holds `right` on `mailbox`, and the mailbox exists.
    fn granted(&self, right: Right, mailbox: &str, who: &Principal) -> bool {
        let mailbox = mailbox.to_ascii_lowercase();
        let is_users = self.ms.has_user(&mailbox);
        let st = self.lock();
        (is_users || st.mailboxes.contains(&mailbox))
            && st.grants.contains(&(right, mailbox, who.clone()))
    }

    /// Over IMAP: its own mailbox (a user's), or one it has Full Access to.
    fn may_open(&self, who: &Principal, mailbox: &str) -> bool {
        let own = matches!(who, Principal::User(upn) if upn.eq_ignore_ascii_case(mailbox));
        own || self.granted(Right::FullAccess, mailbox, who)
    }

    /// Over SMTP: a user only as themselves; an app as a mailbox it has
    /// Full Access to.
    fn may_authenticate_as(&self, who: &Principal, mailbox: &str) -> bool {
        match who {
            Principal::User(upn) => upn.eq_ignore_ascii_case(mailbox),
            Principal::App(_) => self.granted(Right::FullAccess, mailbox, who),
        }
    }

    /// `MAIL FROM`: the mailbox it authenticated as, or one it has Send As on.
    fn may_send_as(&self, who: &Principal, authenticated_as: &str, from: &str) -> bool {
        from.eq_ignore_ascii_case(authenticated_as) || self.granted(Right::SendAs, from, who)
    }

    fn smtp_auth_disabled(&self, mailbox: &str) -> bool {
        self.lock()
            .smtp_auth_disabled
            .contains(&mailbox.to_ascii_lowercase())
    }

    fn offers_oauthbearer(&self) -> bool {
        self.lock().offers_oauthbearer
    }

    /// Records a login; its index, for [`Self::set_outcome`].
    fn record(
        &self,
        service: Service,
        mechanism: &'static str,
        username: &str,
        outcome: &'static str,
    ) -> usize {
        let mut st = self.lock();
        st.logins.push(Login {
            protocol: service.name(),
            mechanism,
            username: username.to_string(),
            outcome,
        });
        st.logins.len() - 1
    }

    fn set_outcome(&self, login: usize, outcome: &'static str) {
        if let Some(l) = self.lock().logins.get_mut(login) {
            l.outcome = outcome;
        }
    }
}
