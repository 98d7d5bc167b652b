//! Exchange Online's IMAP4 session, as far as a client needs it to log in
//! and open a mailbox: CAPABILITY, ID, NOOP, LOGOUT, AUTHENTICATE (XOAUTH2,
//! OAUTHBEARER when offered, with SASL-IR or a `+ ` continuation), LOGIN,
//! and NAMESPACE, LIST / LSUB, STATUS, SELECT / EXAMINE, UNSELECT / CLOSE
//! on a mailbox whose only folder is an empty INBOX.
//!
//! Wording and order come from Exchange itself: the greeting, capability
//! lists, `OK AUTHENTICATE completed.`, `NO AUTHENTICATE failed.`, and
//! `BAD User is authenticated but not connected.` then, on the next refused
//! command, `* BYE Connection closed. 14`, are in transcripts of
//! outlook.office365.com (MailKit issues 1494 and 1496, node-imap 523,
//! email-oauth2-proxy 74, civicrm core 3601); the SELECT / EXAMINE lines,
//! `{name} doesn't exist.`, `Command Error. 11` / `12`,
//! `Command Argument Error. 11` / `12`, `Command received in Invalid state.`,
//! the cancelled-exchange text, the timeout `* BYE Connection is closed. 13`
//! and the rule that the third refused command of a session closes it are
//! Exchange's IMAP4 service's own strings and logic; the ID answer is
//! Exchange Online's (imapflow issue 392).
//!
//! Not Exchange's: messages. Commands on messages (FETCH, SEARCH, …) are
//! answered as unknown commands.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::sasl::Mechanism;
use super::server::{Reply, Session};
use super::{Service, Shared, SERVER_HOST};

const CAPABILITY_BEFORE_LOGIN: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";
const CAPABILITY_AFTER_LOGIN: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION BACKENDAUTHENTICATE CHILDREN IDLE NAMESPACE LITERAL+";
const FLAGS: &str = r"(\Seen \Answered \Flagged \Deleted \Draft $MDNSent)";
/// The UIDVALIDITY Exchange gives INBOX in the transcripts.
const INBOX_UIDVALIDITY: u32 = 14;
const NOT_CONNECTED: &str = "User is authenticated but not connected.";
const INVALID_STATE: &str = "Command received in Invalid state.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    /// Logged in with a token that may not open the mailbox it named.
    NotConnected,
    Authenticated,
    Selected,
}

pub(super) struct ImapSession {
    shared: Arc<Shared>,
    state: State,
    /// An AUTHENTICATE without initial response, waiting for it: its tag
    /// and mechanism.
    pending: Option<(String, Mechanism)>,
    /// Commands refused with BAD so far; the third closes the session.
    refused: u32,
}

impl Session for ImapSession {
    fn greeting(&self) -> String {
        // Exchange names its server in UTF-16LE, base64-encoded.
        let name: Vec<u8> = SERVER_HOST
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        format!(
            "* OK The Microsoft Exchange IMAP4 service is ready. [{}]",
            STANDARD.encode(name)
        )
    }

    fn on_line(&mut self, line: &[u8]) -> Reply {
        if let Some((tag, mechanism)) = self.pending.take() {
            return self.sasl_response(&tag, mechanism, &String::from_utf8_lossy(line));
        }
        let text = String::from_utf8_lossy(line);
        let (tag, rest) = split_word(&text);
        if !line.is_ascii() {
            // Exchange reads the tag as ASCII: anything else becomes '?'.
            let tag: String = tag
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .collect();
            return self.refuse(&tag, "Command Error. 11");
        }
        let (command, args) = split_word(rest);
        if tag.is_empty() {
            return self.refuse("*", "Command Error. 12");
        }
        match command.to_ascii_uppercase().as_str() {
            "CAPABILITY" => Reply::read(format!(
                "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed.",
                self.capabilities()
            )),
            "NOOP" => Reply::read(format!("{tag} OK NOOP completed.")),
            "ID" => Reply::read(format!(
                "* ID (\"name\" \"Microsoft.Exchange.Imap4.Imap4Server\" \"version\" \"15.20\")\r\n{tag} OK ID completed."
            )),
            "LOGOUT" => Reply::close(format!(
                "* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n{tag} OK LOGOUT completed."
            )),
            "AUTHENTICATE" if self.may_log_in() => self.authenticate(tag, args),
            "LOGIN" if self.may_log_in() => self.login(tag, args),
            "AUTHENTICATE" | "LOGIN" => self.refuse(tag, INVALID_STATE),
            cmd @ ("NAMESPACE" | "LIST" | "LSUB" | "STATUS" | "SELECT" | "EXAMINE"
            | "UNSELECT" | "CLOSE") => self.mailbox_command(tag, cmd, args),
            _ => self.refuse(tag, "Command Error. 12"),
        }
    }

    fn on_timeout(&self) -> String {
        "* BYE Connection is closed. 13".to_string()
    }

    fn on_too_long(&self) -> String {
        "* BAD Command Error. 12\r\n* BYE Connection closed. 14".to_string()
    }
}

impl ImapSession {
    pub(super) fn new(shared: Arc<Shared>) -> ImapSession {
        ImapSession {
            shared,
            state: State::NotAuthenticated,
            pending: None,
            refused: 0,
        }
    }

    fn capabilities(&self) -> String {
        let list = if self.state == State::NotAuthenticated {
            CAPABILITY_BEFORE_LOGIN
        } else {
            CAPABILITY_AFTER_LOGIN
        };
        if self.shared.offers_oauthbearer() {
            list.replace("AUTH=XOAUTH2", "AUTH=XOAUTH2 AUTH=OAUTHBEARER")
        } else {
            list.to_string()
        }
    }

    /// Exchange takes a new login before one, and after one that did not
    /// connect.
    fn may_log_in(&self) -> bool {
        matches!(self.state, State::NotAuthenticated | State::NotConnected)
    }

    /// BAD, counted: the third refused command of a session also says BYE
    /// and closes it.
    fn refuse(&mut self, tag: &str, text: &str) -> Reply {
        self.refused += 1;
        if self.refused > 2 {
            Reply::close(format!("{tag} BAD {text}\r\n* BYE Connection closed. 14"))
        } else {
            Reply::read(format!("{tag} BAD {text}"))
        }
    }

    fn authenticate(&mut self, tag: &str, args: &str) -> Reply {
        let words: Vec<&str> = args.split_whitespace().collect();
        let (name, initial) = match words.as_slice() {
            [name] => (*name, None),
            [name, initial] => (*name, Some(*initial)),
            _ => return self.refuse(tag, "Command Argument Error. 12"),
        };
        let mechanism = match name.to_ascii_uppercase().as_str() {
            "XOAUTH2" => Mechanism::XOAuth2,
            "OAUTHBEARER" if self.shared.offers_oauthbearer() => Mechanism::OAuthBearer,
            "PLAIN" => Mechanism::Password("PLAIN"),
            _ => return Reply::read(format!("{tag} BAD Command Argument Error. 11")),
        };
        match initial {
            Some(response) => self.sasl_response(tag, mechanism, response),
            None => {
                self.pending = Some((tag.to_string(), mechanism));
                Reply::read("+ ")
            }
        }
    }

    fn sasl_response(&mut self, tag: &str, mechanism: Mechanism, response: &str) -> Reply {
        if response.trim() == "*" {
            self.shared
                .record(Service::Imap, mechanism.name(), "", "malformed");
            return Reply::read(format!(
                "{tag} NO The AUTH protocol exchange was canceled by the client."
            ));
        }
        let (username, outcome) = self.log_in(mechanism, response);
        self.shared
            .record(Service::Imap, mechanism.name(), &username, outcome);
        match outcome {
            "ok" | "not_connected" => Reply::read(format!("{tag} OK AUTHENTICATE completed.")),
            _ => Reply::read(format!("{tag} NO AUTHENTICATE failed.")),
        }
    }

    /// Checks a login and moves to its state; the username and outcome to
    /// record.
    fn log_in(&mut self, mechanism: Mechanism, response: &str) -> (String, &'static str) {
        if let Mechanism::Password(_) = mechanism {
            return (plain_user(response), "basic_auth_disabled");
        }
        let login = match self.shared.bearer_login(mechanism, response, Service::Imap) {
            Ok(login) => login,
            Err(refused) => return refused,
        };
        if self.shared.may_open(&login.who, &login.mailbox) {
            self.state = State::Authenticated;
            (login.username, "ok")
        } else {
            // As in the transcripts, the second refused command after such
            // a login already closes the session.
            self.state = State::NotConnected;
            self.refused = self.refused.max(1);
            (login.username, "not_connected")
        }
    }

    /// `LOGIN user password`: basic authentication, off at Exchange Online.
    fn login(&mut self, tag: &str, args: &str) -> Reply {
        let user = arguments(args)
            .and_then(|args| args.into_iter().next())
            .and_then(Arg::into_word)
            .unwrap_or_default();
        self.shared
            .record(Service::Imap, "LOGIN", &user, "basic_auth_disabled");
        Reply::read(format!("{tag} NO LOGIN failed."))
    }

    fn mailbox_command(&mut self, tag: &str, command: &str, args: &str) -> Reply {
        match self.state {
            State::Authenticated | State::Selected => {}
            State::NotConnected => return self.refuse(tag, NOT_CONNECTED),
            State::NotAuthenticated => return self.refuse(tag, INVALID_STATE),
        }
        let Some(args) = arguments(args) else {
            return self.refuse(tag, "Command Argument Error. 11");
        };
        match (command, args.as_slice()) {
            ("NAMESPACE", []) => Reply::read(format!(
                "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n{tag} OK NAMESPACE completed."
            )),
            ("LIST" | "LSUB", [Arg::Word(_), Arg::Word(pattern)]) => {
                let line = if pattern.is_empty() {
                    format!("* {command} (\\Noselect \\HasChildren) \"/\" \"\"\r\n")
                } else if matches_inbox(pattern) {
                    format!("* {command} (\\HasNoChildren) \"/\" INBOX\r\n")
                } else {
                    String::new()
                };
                Reply::read(format!("{line}{tag} OK {command} completed."))
            }
            ("STATUS", [Arg::Word(name), Arg::List(items)]) => self.status(tag, name, items),
            ("SELECT" | "EXAMINE", [Arg::Word(name)]) => self.open(tag, command, name),
            ("UNSELECT" | "CLOSE", []) if self.state == State::Selected => {
                self.state = State::Authenticated;
                Reply::read(format!("{tag} OK {command} completed."))
            }
            ("UNSELECT" | "CLOSE", []) => self.refuse(tag, INVALID_STATE),
            _ => self.refuse(tag, "Command Argument Error. 12"),
        }
    }

    fn open(&mut self, tag: &str, command: &str, name: &str) -> Reply {
        if !name.eq_ignore_ascii_case("INBOX") {
            return Reply::read(format!("{tag} NO {name} doesn't exist."));
        }
        self.state = State::Selected;
        let mode = if command == "EXAMINE" {
            "READ-ONLY"
        } else {
            "READ-WRITE"
        };
        Reply::read(format!(
            "* 0 EXISTS\r\n* 0 RECENT\r\n* FLAGS {FLAGS}\r\n* OK [PERMANENTFLAGS {FLAGS}] Permanent flags\r\n\
             * OK [UIDVALIDITY {INBOX_UIDVALIDITY}] UIDVALIDITY value\r\n\
             * OK [UIDNEXT 1] The next unique identifier value\r\n\
             {tag} OK [{mode}] {command} completed."
        ))
    }

    fn status(&mut self, tag: &str, name: &str, items: &[String]) -> Reply {
        if !name.eq_ignore_ascii_case("INBOX") {
            return Reply::read(format!("{tag} NO {name} doesn't exist."));
        }
        let mut values = Vec::new();
        for item in items {
            let value = match item.to_ascii_uppercase().as_str() {
                "MESSAGES" | "RECENT" | "UNSEEN" => 0,
                "UIDNEXT" => 1,
                "UIDVALIDITY" => INBOX_UIDVALIDITY,
                _ => return self.refuse(tag, "Command Argument Error. 11"),
            };
            values.push(format!("{} {value}", item.to_ascii_uppercase()));
        }
        Reply::read(format!(
            "* STATUS INBOX ({})\r\n{tag} OK STATUS completed.",
            values.join(" ")
        ))
    }
}

/// The first space-separated word and the rest.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (s, ""),
    }
}

/// Whether a LIST pattern (`*` and `%` wildcards, any case) names INBOX.
fn matches_inbox(pattern: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*' | b'%', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((c, rest)) => s
                .split_first()
                .is_some_and(|(d, s)| c.eq_ignore_ascii_case(d) && go(rest, s)),
        }
    }
    go(pattern.as_bytes(), b"INBOX")
}

/// The user (authcid) of a PLAIN response, for the record.
fn plain_user(response: &str) -> String {
    STANDARD
        .decode(response.trim())
        .ok()
        .and_then(|raw| {
            let raw = String::from_utf8_lossy(&raw).into_owned();
            raw.split('\0').nth(1).map(str::to_string)
        })
        .unwrap_or_default()
}

/// An IMAP argument: an atom or quoted string, or a parenthesized list of them.
#[derive(Debug, PartialEq, Eq)]
enum Arg {
    Word(String),
    List(Vec<String>),
}

impl Arg {
    fn into_word(self) -> Option<String> {
        match self {
            Arg::Word(w) => Some(w),
            Arg::List(_) => None,
        }
    }
}

/// The arguments of a command; `None` when a quote or list is left open.
fn arguments(s: &str) -> Option<Vec<Arg>> {
    let mut chars = s.chars().peekable();
    let mut out = Vec::new();
    loop {
        while chars.next_if_eq(&' ').is_some() {}
        match chars.peek() {
            None => return Some(out),
            Some('(') => {
                chars.next();
                let mut items = Vec::new();
                loop {
                    while chars.next_if_eq(&' ').is_some() {}
                    match chars.peek() {
                        None => return None,
                        Some(')') => {
                            chars.next();
                            break;
                        }
                        Some(_) => items.push(word(&mut chars)?),
                    }
                }
                out.push(Arg::List(items));
            }
            Some(_) => out.push(Arg::Word(word(&mut chars)?)),
        }
    }
}

/// A quoted string (`\` escapes the next character) or an atom.
fn word(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut out = String::new();
    if chars.next_if_eq(&'"').is_some() {
        loop {
            match chars.next()? {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
    }
    while let Some(c) = chars.next_if(|c| !matches!(c, ' ' | '(' | ')')) {
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn arguments_read_atoms_quoted_strings_and_lists() {
        let w = |s: &str| Arg::Word(s.to_string());
        assert_eq!(arguments(r#""" "*""#), Some(vec![w(""), w("*")]));
        assert_eq!(
            arguments(r#"INBOX (MESSAGES  UIDNEXT)"#),
            Some(vec![
                w("INBOX"),
                Arg::List(vec!["MESSAGES".into(), "UIDNEXT".into()])
            ])
        );
        assert_eq!(arguments(r#""a \"b\" \\c""#), Some(vec![w(r#"a "b" \c"#)]));
        assert_eq!(arguments(""), Some(vec![]));
        for open in [r#""INBOX"#, "(MESSAGES", ")", "a)"] {
            assert_eq!(arguments(open), None, "{open}");
        }
    }

    #[test]
    fn list_patterns() {
        for yes in ["*", "%", "INBOX", "inbox", "IN*", "*X", "I%B%X"] {
            assert!(matches_inbox(yes), "{yes}");
        }
        for no in ["", "Sent Items", "INBOX/*x", "INBOXX", "X*"] {
            assert!(!matches_inbox(no), "{no}");
        }
    }
}
