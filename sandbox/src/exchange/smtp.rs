//! Exchange Online's SMTP submission session (`smtp.office365.com:587`):
//! EHLO / HELO, STARTTLS, AUTH XOAUTH2 (and OAUTHBEARER when offered, with
//! an initial response or after `334 `), AUTH LOGIN (basic authentication,
//! refused), MAIL FROM with Send As, RCPT, DATA (accepted, counted, thrown
//! away), RSET, NOOP, QUIT.
//!
//! Wording from transcripts and reports of smtp.office365.com: the greeting,
//! both EHLO lists (email-oauth2-proxy issues 95 and 416; a transcript after
//! STARTTLS with `AUTH LOGIN XOAUTH2`), `220 2.0.0 SMTP server ready`
//! (sasl-xoauth2 97), `235 2.7.0 Authentication successful`,
//! `250 2.1.0 Sender OK`, `250 2.1.5 Recipient OK`, the 354 line,
//! `535 5.7.3 Authentication unsuccessful` (MailKit 700 and 1712), the
//! `5.7.139 … SmtpClientAuthentication is disabled for the …` line
//! (email-oauth2-proxy 193; "the Mailbox" where a mailbox's setting is the
//! cause), `5.7.139 … basic authentication is disabled.`,
//! `550 5.7.60 SMTP; Client does not have permissions to send as this sender`
//! (swiftmailer 1030, gophish 1600), `451 5.7.3 STARTTLS is required to send
//! mail` for MAIL before STARTTLS (hertzbeat 2365),
//! `504 5.7.4 Unrecognized authentication type` for a mechanism not offered
//! (PHPMailer 1254, mgob 52), `530 5.7.57 Client not authenticated to send
//! mail.` for MAIL without AUTH (email-oauth2-proxy 315, sasl-xoauth2 96),
//! `500 5.3.3 Unrecognized command '…'` (email-oauth2-proxy 372). Exchange
//! Online ends its 4xx/5xx replies with `[{server} {time} {session id}]`,
//! and so does the fake.
//!
//! The sandbox's own choices, where no transcript says: a cancelled or
//! unreadable SASL response is `535 5.7.3` like a bad token; the replies
//! to a too long line, a silent client, a message over 1 MiB and BDAT.

use std::net::IpAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Utc;

use super::sasl::Mechanism;
use super::server::{Reply, Session, Then};
use super::{Service, Shared, SERVER_HOST};

/// The largest message DATA takes (the fake keeps none of it).
const MAX_MESSAGE: usize = 1024 * 1024;
const AUTH_FAILED: &str = "535 5.7.3 Authentication unsuccessful";

pub(super) struct SmtpSession {
    shared: Arc<Shared>,
    client_ip: IpAddr,
    /// The session id Exchange puts in its error replies.
    id: String,
    tls: bool,
    greeted: bool,
    auth: Option<Authenticated>,
    pending: Option<Pending>,
    mail_from: Option<String>,
    recipients: usize,
    /// Bytes of the message so far, while DATA is being sent.
    data: Option<usize>,
}

struct Authenticated {
    who: super::Principal,
    mailbox: String,
    /// Its entry in the logins, whose outcome a refused MAIL FROM updates.
    login: usize,
}

/// An AUTH waiting for the client's next line.
enum Pending {
    Token(Mechanism),
    LoginUser,
    LoginPassword(String),
}

impl Session for SmtpSession {
    fn greeting(&self) -> String {
        let date = Utc::now().format("%a, %-d %b %Y %H:%M:%S %z");
        format!(
            "220 {SERVER_HOST} Microsoft ESMTP MAIL Service ready at {date} [{}]",
            self.id
        )
    }

    fn on_line(&mut self, line: &[u8]) -> Reply {
        if let Some(bytes) = self.data {
            return self.data_line(bytes, line);
        }
        let text = String::from_utf8_lossy(line);
        if let Some(pending) = self.pending.take() {
            return self.auth_step(pending, text.trim());
        }
        let (verb, args) = text.split_once(' ').unwrap_or((&text, ""));
        let args = args.trim();
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo(),
            "HELO" => {
                self.hello();
                Reply::read(format!("250 {SERVER_HOST} Hello [{}]", self.client_ip))
            }
            "NOOP" => Reply::read("250 2.0.0 OK"),
            "RSET" => {
                self.reset();
                Reply::read("250 2.0.0 Resetting")
            }
            "QUIT" => Reply::close("221 2.0.0 Service closing transmission channel"),
            "STARTTLS" if !self.tls => self.starttls(),
            "MAIL" | "RCPT" | "DATA" | "BDAT" if !self.tls => {
                self.refuse("451 5.7.3 STARTTLS is required to send mail")
            }
            "AUTH" if !self.tls => self.refuse("504 5.7.4 Unrecognized authentication type"),
            _ if !self.greeted && is_known(verb) => self.refuse("503 5.5.2 Send hello first"),
            "AUTH" => self.auth(args),
            "MAIL" => self.mail(args),
            "RCPT" => self.rcpt(args),
            "DATA" => self.data(),
            "BDAT" => self.refuse("502 5.3.3 Command not implemented"),
            _ => self.refuse(&format!(
                "500 5.3.3 Unrecognized command '{}'",
                printable(&text)
            )),
        }
    }

    fn on_timeout(&self) -> String {
        self.error("421 4.4.1 Connection timed out")
    }

    fn on_too_long(&self) -> String {
        self.error("500 5.3.3 Line too long")
    }
}

impl SmtpSession {
    pub(super) fn new(shared: Arc<Shared>, client_ip: IpAddr) -> SmtpSession {
        SmtpSession {
            shared,
            client_ip,
            id: format!("{:016X}", rand::random::<u64>()),
            tls: false,
            greeted: false,
            auth: None,
            pending: None,
            mail_from: None,
            recipients: 0,
            data: None,
        }
    }

    /// An Exchange Online error reply: the text, then
    /// `[{server} {time} {session id}]`.
    fn error(&self, text: &str) -> String {
        let now = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        format!(
            "{text} [{} {now} {}]",
            SERVER_HOST.to_ascii_uppercase(),
            self.id
        )
    }

    fn refuse(&self, text: &str) -> Reply {
        Reply::read(self.error(text))
    }

    fn hello(&mut self) {
        self.greeted = true;
        self.reset();
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.recipients = 0;
    }

    fn ehlo(&mut self) -> Reply {
        self.hello();
        let auth = if self.shared.offers_oauthbearer() {
            "AUTH LOGIN XOAUTH2 OAUTHBEARER"
        } else {
            "AUTH LOGIN XOAUTH2"
        };
        let hello = format!("{SERVER_HOST} Hello [{}]", self.client_ip);
        let security = if self.tls { auth } else { "STARTTLS" };
        let lines = [
            hello.as_str(),
            "SIZE 157286400",
            "PIPELINING",
            "DSN",
            "ENHANCEDSTATUSCODES",
            security,
            "8BITMIME",
            "BINARYMIME",
            "CHUNKING",
            "SMTPUTF8",
        ];
        let last = lines.len() - 1;
        let text = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\r\n");
        Reply::read(text)
    }

    /// After it the client must say EHLO again, over TLS.
    fn starttls(&mut self) -> Reply {
        if !self.greeted {
            return self.refuse("503 5.5.2 Send hello first");
        }
        self.tls = true;
        self.greeted = false;
        self.reset();
        Reply {
            text: "220 2.0.0 SMTP server ready".to_string(),
            then: Then::StartTls,
        }
    }

    fn auth(&mut self, args: &str) -> Reply {
        if self.auth.is_some() {
            return self.refuse("503 5.5.2 Already authenticated");
        }
        let (name, initial) = args.split_once(' ').unwrap_or((args, ""));
        let pending = match name.to_ascii_uppercase().as_str() {
            "XOAUTH2" => Pending::Token(Mechanism::XOAuth2),
            "OAUTHBEARER" if self.shared.offers_oauthbearer() => {
                Pending::Token(Mechanism::OAuthBearer)
            }
            "LOGIN" => Pending::LoginUser,
            _ => return self.refuse("504 5.7.4 Unrecognized authentication type"),
        };
        match initial.trim() {
            "" => self.ask(pending),
            initial => self.auth_step(pending, initial),
        }
    }

    /// Asks for the next response of an AUTH exchange.
    fn ask(&mut self, pending: Pending) -> Reply {
        let challenge = match pending {
            Pending::Token(_) => "334 ",
            Pending::LoginUser => "334 VXNlcm5hbWU6",
            Pending::LoginPassword(_) => "334 UGFzc3dvcmQ6",
        };
        self.pending = Some(pending);
        Reply::read(challenge)
    }

    fn auth_step(&mut self, pending: Pending, response: &str) -> Reply {
        match pending {
            Pending::Token(mechanism) => self.token_login(mechanism, response),
            Pending::LoginUser => {
                let user = STANDARD
                    .decode(response)
                    .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                    .unwrap_or_default();
                self.ask(Pending::LoginPassword(user))
            }
            Pending::LoginPassword(user) => {
                self.shared
                    .record(Service::Smtp, "LOGIN", &user, "basic_auth_disabled");
                self.refuse(
                    "535 5.7.139 Authentication unsuccessful, basic authentication is disabled.",
                )
            }
        }
    }

    /// A token login: it counts, may authenticate as the mailbox it names,
    /// and that mailbox has SMTP AUTH on, in that order.
    fn token_login(&mut self, mechanism: Mechanism, response: &str) -> Reply {
        let record = |username: &str, outcome| {
            self.shared
                .record(Service::Smtp, mechanism.name(), username, outcome)
        };
        let login = match self.shared.bearer_login(mechanism, response, Service::Smtp) {
            Ok(login) => login,
            Err((username, outcome)) => {
                record(&username, outcome);
                return self.refuse(AUTH_FAILED);
            }
        };
        if !self.shared.may_authenticate_as(&login.who, &login.mailbox) {
            record(&login.username, "wrong_user");
            return self.refuse(AUTH_FAILED);
        }
        if self.shared.smtp_auth_disabled(&login.mailbox) {
            record(&login.username, "smtp_auth_disabled");
            return self.refuse("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.");
        }
        let index = record(&login.username, "ok");
        self.auth = Some(Authenticated {
            who: login.who,
            mailbox: login.mailbox,
            login: index,
        });
        Reply::read("235 2.7.0 Authentication successful")
    }

    fn mail(&mut self, args: &str) -> Reply {
        let Some(auth) = &self.auth else {
            return self.refuse("530 5.7.57 Client not authenticated to send mail.");
        };
        if self.mail_from.is_some() {
            return self.refuse("503 5.5.2 Sender already specified");
        }
        let Some(from) = path(args, "FROM") else {
            return self.refuse("501 5.1.7 Invalid address");
        };
        if !self.shared.may_send_as(&auth.who, &auth.mailbox, &from) {
            self.shared.set_outcome(auth.login, "send_as_denied");
            return self.refuse(
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            );
        }
        self.mail_from = Some(from);
        Reply::read("250 2.1.0 Sender OK")
    }

    fn rcpt(&mut self, args: &str) -> Reply {
        if self.mail_from.is_none() {
            return self.refuse("503 5.5.2 Need mail command");
        }
        if path(args, "TO").is_none_or(|to| to.is_empty()) {
            return self.refuse("501 5.1.3 Invalid address");
        }
        self.recipients += 1;
        Reply::read("250 2.1.5 Recipient OK")
    }

    fn data(&mut self) -> Reply {
        if self.recipients == 0 {
            return self.refuse("503 5.5.2 Need rcpt command");
        }
        self.data = Some(0);
        Reply::read("354 Start mail input; end with <CRLF>.<CRLF>")
    }

    /// A line of the message: counted and thrown away, until the lone dot.
    fn data_line(&mut self, bytes: usize, line: &[u8]) -> Reply {
        if line == b"." {
            self.data = None;
            self.reset();
            self.shared.lock().messages_submitted += 1;
            return Reply::read(format!(
                "250 2.0.0 OK <{:016X}@{SERVER_HOST}> [Hostname={SERVER_HOST}]",
                rand::random::<u64>()
            ));
        }
        let bytes = bytes + line.len() + 2;
        if bytes > MAX_MESSAGE {
            return Reply::close(
                self.error("552 5.3.4 Message size exceeds fixed maximum message size"),
            );
        }
        self.data = Some(bytes);
        Reply::silent()
    }
}

/// The commands Exchange wants a hello before.
fn is_known(verb: &str) -> bool {
    ["AUTH", "MAIL", "RCPT", "DATA", "BDAT"]
        .iter()
        .any(|k| verb.eq_ignore_ascii_case(k))
}

/// The address of `FROM:<a@b>` / `TO:<a@b>` (keyword in any case, ESMTP
/// parameters after it ignored); `None` when it is not that shape.
fn path(args: &str, keyword: &str) -> Option<String> {
    let (key, rest) = args.split_once(':')?;
    if !key.trim().eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('<')?;
    let (address, _params) = rest.split_once('>')?;
    (!address.contains([' ', '<'])).then(|| address.to_string())
}

/// A client's line as it may be echoed: printable ASCII, at most 100 characters.
fn printable(line: &str) -> String {
    line.chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            path("FROM:<a@b.example>", "FROM").as_deref(),
            Some("a@b.example")
        );
        assert_eq!(
            path("from: <a@b> SIZE=10 BODY=8BITMIME", "FROM").as_deref(),
            Some("a@b")
        );
        assert_eq!(path("FROM:<>", "FROM").as_deref(), Some(""));
        for bad in [
            "FROM:a@b",
            "TO:<a@b>",
            "FROM:<a@b",
            "FROM:<a b@c>",
            "FROM <a@b>",
        ] {
            assert_eq!(path(bad, "FROM"), None, "{bad}");
        }
    }

    #[test]
    fn echoes_are_printable_and_short() {
        assert_eq!(printable("HELLO\u{1}\u{e9}"), "HELLO??");
        assert_eq!(printable(&"x".repeat(500)).len(), 100);
    }
}
