//! Proof that a token opens the mailbox: a real IMAP login and a real SMTP
//! submission login, no mail sent, each reported with the mechanism used,
//! the server's final reply (secrets removed) and the time taken.
//!
//! The protocol steps are written by hand over tokio and tokio-rustls. The
//! crates that could do them do not fit: lettre's SMTP client offers
//! PLAIN, LOGIN and XOAUTH2 but not OAUTHBEARER, and neither it nor
//! async-imap hands back the server's final reply line or the decoded
//! XOAUTH2 failure challenge, which is the point of this report. What is
//! needed is small: a greeting, CAPABILITY/EHLO, STARTTLS, one AUTHENTICATE
//! with an initial response, `EXAMINE INBOX` (IMAP), LOGOUT/QUIT. Every read has a deadline and a
//! length limit, and anything left buffered when STARTTLS completes is
//! refused (a response-injection attack).

use std::fmt;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use crate::diagnosis::{Cause, Diagnosis};
use crate::domain::MailboxAddress;
use crate::oauth::{MailServer, TlsMode};
use crate::tls::ExtraRoots;
use crate::xoauth2::{oauthbearer, xoauth2};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest server line read; a longer one ends the conversation.
const MAX_LINE: usize = 16 * 1024;
/// Longest reply shown to the caller.
const MAX_REPLY: usize = 300;

/// A SASL mechanism that carries an OAuth bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Mechanism {
    #[serde(rename = "XOAUTH2")]
    Xoauth2,
    #[serde(rename = "OAUTHBEARER")]
    Oauthbearer,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Xoauth2 => "XOAUTH2",
            Mechanism::Oauthbearer => "OAUTHBEARER",
        }
    }

    /// OAUTHBEARER is the standard one: used wherever it is offered.
    pub const PREFERRED: [Mechanism; 2] = [Mechanism::Oauthbearer, Mechanism::Xoauth2];
}

/// How one login went.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"ok": true, "mechanism": "XOAUTH2", "reply": "a4 OK AUTHENTICATE completed.", "ms": 412,
    "transcript": ["# connected to outlook.office365.com:993 (implicit)", "# TLS established (TLSv1_3)",
        "S: * OK The Microsoft Exchange IMAP4 service is ready.", "C: a4 AUTHENTICATE XOAUTH2 [initial response elided]",
        "S: a4 OK AUTHENTICATE completed.", "C: a5 EXAMINE INBOX", "S: * 12 EXISTS",
        "S: a5 OK [READ-ONLY] EXAMINE completed.", "C: a6 LOGOUT"]}))]
pub struct LoginReport {
    /// Whether the server accepted the login (IMAP: and INBOX opened
    /// read-only after it; SMTP: and `AUTH` succeeded).
    pub ok: bool,
    /// The mechanism tried, once one was chosen.
    pub mechanism: Option<Mechanism>,
    /// The server's final reply, or what went wrong before there was one.
    pub reply: String,
    /// How long the whole conversation took, in milliseconds.
    pub ms: u64,
    /// The conversation, client lines with their credentials elided.
    pub transcript: Vec<String>,
    /// Why it failed and what to do (DESIGN.md "Diagnosis"); null when
    /// `ok`.
    #[schema(example = json!(null))]
    pub diagnosis: Option<Diagnosis>,
}

/// What to log in with: an address and a bearer token.
pub struct Credentials<'a> {
    pub user: &'a MailboxAddress,
    pub token: &'a SecretString,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", self.user)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Logs in to mail servers; holds the TLS trust (system roots plus
/// `MAILCONNECT_EXTRA_CA_FILE`).
#[derive(Clone)]
pub struct Verifier {
    tls: TlsConnector,
    source: Option<std::net::IpAddr>,
}

impl Verifier {
    pub fn new(roots: &ExtraRoots) -> Verifier {
        Verifier {
            tls: TlsConnector::from(roots.client_config()),
            source: None,
        }
    }

    /// Connects from this local address (tests: servers such as Dovecot
    /// delay every login from an address that just failed one).
    pub fn from_source(mut self, ip: std::net::IpAddr) -> Verifier {
        self.source = Some(ip);
        self
    }

    /// An IMAP login (RFC 9051 AUTHENTICATE with SASL-IR where offered),
    /// then LOGOUT.
    pub async fn imap(
        &self,
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
    ) -> LoginReport {
        self.run(server, creds, allowed, Protocol::Imap, None).await
    }

    /// An SMTP submission login (EHLO, STARTTLS, EHLO, AUTH), then QUIT.
    pub async fn smtp(
        &self,
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
    ) -> LoginReport {
        self.run(server, creds, allowed, Protocol::Smtp, None).await
    }

    /// The IMAP login of [`Verifier::imap`] against a scripted server
    /// instead of the network, for fuzzing and property tests: the server
    /// "sends" `script` (read as the conversation goes; what the client
    /// writes is discarded) and then closes. TLS handshakes over a script
    /// fail, so only [`TlsMode::None`] gets past the greeting.
    pub async fn replay_imap(
        &self,
        script: &[u8],
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
    ) -> LoginReport {
        let io: Box<dyn Io> = Box::new(Script::new(script));
        self.run(server, creds, allowed, Protocol::Imap, Some(io))
            .await
    }

    /// [`Verifier::replay_imap`] for the SMTP submission login.
    pub async fn replay_smtp(
        &self,
        script: &[u8],
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
    ) -> LoginReport {
        let io: Box<dyn Io> = Box::new(Script::new(script));
        self.run(server, creds, allowed, Protocol::Smtp, Some(io))
            .await
    }

    async fn run(
        &self,
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
        protocol: Protocol,
        replay: Option<Box<dyn Io>>,
    ) -> LoginReport {
        let started = Instant::now();
        let mut session = Session {
            transcript: Vec::new(),
            secrets: Vec::new(),
            mechanism: None,
            replay,
        };
        let outcome = match protocol {
            Protocol::Imap => session.imap(self, server, creds, allowed).await,
            Protocol::Smtp => session.smtp(self, server, creds, allowed).await,
        };
        let (ok, reply, cause) = match outcome {
            Ok(reply) => (true, reply, None),
            Err(Failure(reply, cause)) => (false, reply, Some(cause)),
        };
        let reply = session.clean(&reply);
        if let Some(cause) = cause {
            ::metrics::counter!(crate::metrics::VERIFY_FAILURES, "protocol" => protocol.name(), "cause" => cause.as_str())
                .increment(1);
        }
        tracing::info!(
            protocol = protocol.name(),
            host = %server.host,
            port = server.port,
            ok,
            mechanism = session.mechanism.map(Mechanism::as_str),
            reply = %reply,
            cause = cause.map(Cause::as_str),
            "mail login verified"
        );
        LoginReport {
            ok,
            diagnosis: cause.map(|c| Diagnosis::new(c, crate::now())),
            mechanism: session.mechanism,
            reply,
            ms: started.elapsed().as_millis() as u64,
            transcript: session.transcript,
        }
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    Imap,
    Smtp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Smtp => "smtp",
        }
    }
}

/// A login that did not succeed, with the reply to show and its cause.
struct Failure(String, Cause);

/// A failure of no cause of the list (a server that breaks the protocol).
fn fail<T>(reply: impl Into<String>) -> Result<T, Failure> {
    fail_as(Cause::Unknown, reply)
}

fn fail_as<T>(cause: Cause, reply: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(reply.into(), cause))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Wire {
    io: BufReader<Box<dyn Io>>,
}

struct Session {
    transcript: Vec<String>,
    /// Everything secret sent, removed from anything shown.
    secrets: Vec<String>,
    mechanism: Option<Mechanism>,
    /// A scripted server to talk to instead of the network (replays).
    replay: Option<Box<dyn Io>>,
}

/// A scripted server: reads come from the script, writes vanish.
struct Script {
    data: Vec<u8>,
    at: usize,
}

impl Script {
    fn new(data: &[u8]) -> Script {
        Script {
            data: data.to_vec(),
            at: 0,
        }
    }
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Session {
    fn clean(&self, line: &str) -> String {
        let refs: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        sanitize_reply(line, &refs)
    }

    async fn connect(&mut self, verifier: &Verifier, server: &MailServer) -> Result<Wire, Failure> {
        if let Some(io) = self.replay.take() {
            self.transcript.push(format!(
                "# replaying a scripted {}:{} ({})",
                server.host,
                server.port,
                server.tls.as_str()
            ));
            let io = if server.tls == TlsMode::Implicit {
                self.handshake(verifier, &server.host, io).await?
            } else {
                io
            };
            return Ok(Wire {
                io: BufReader::new(io),
            });
        }
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(server, verifier.source))
            .await
        {
            Err(_) => {
                return fail_as(
                    Cause::MailServerUnreachable,
                    format!(
                        "could not connect: no answer within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                )
            }
            Ok(Err(e)) => {
                return fail_as(
                    Cause::MailServerUnreachable,
                    format!("could not connect: {}", io_reason(&e)),
                )
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        self.transcript.push(format!(
            "# connected to {}:{} ({})",
            server.host,
            server.port,
            server.tls.as_str()
        ));
        let io: Box<dyn Io> = Box::new(tcp);
        let io = if server.tls == TlsMode::Implicit {
            self.handshake(verifier, &server.host, io).await?
        } else {
            io
        };
        Ok(Wire {
            io: BufReader::new(io),
        })
    }

    async fn handshake(
        &mut self,
        verifier: &Verifier,
        host: &str,
        io: Box<dyn Io>,
    ) -> Result<Box<dyn Io>, Failure> {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
            Failure(
                format!("{host} is not a valid TLS server name"),
                Cause::MailServerUntrusted,
            )
        })?;
        match tokio::time::timeout(REPLY_TIMEOUT, verifier.tls.connect(name, io)).await {
            Err(_) => fail_as(Cause::MailServerUnreachable, "TLS handshake timed out"),
            Ok(Err(e)) => fail_as(
                Cause::MailServerUntrusted,
                format!("TLS handshake failed: {}", tls_reason(&e)),
            ),
            Ok(Ok(tls)) => {
                let (_, conn) = tls.get_ref();
                self.transcript.push(format!(
                    "# TLS established ({})",
                    conn.protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default()
                ));
                Ok(Box::new(tls))
            }
        }
    }

    /// Swaps the plain connection for TLS after the server agreed to it.
    async fn starttls(
        &mut self,
        verifier: &Verifier,
        host: &str,
        wire: Wire,
    ) -> Result<Wire, Failure> {
        if !wire.io.buffer().is_empty() {
            return fail("the server sent data after agreeing to STARTTLS; refused");
        }
        let io = self.handshake(verifier, host, wire.io.into_inner()).await?;
        Ok(Wire {
            io: BufReader::new(io),
        })
    }

    async fn read_line(&mut self, wire: &mut Wire) -> Result<String, Failure> {
        let mut buf = Vec::new();
        let read = async {
            let mut limited = (&mut wire.io).take(MAX_LINE as u64);
            limited.read_until(b'\n', &mut buf).await
        };
        match tokio::time::timeout(REPLY_TIMEOUT, read).await {
            Err(_) => fail(format!(
                "the server did not answer within {}s",
                REPLY_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => fail(format!("connection failed: {}", io_reason(&e))),
            Ok(Ok(0)) => fail("the server closed the connection"),
            Ok(Ok(_)) if !buf.ends_with(b"\n") => fail("the server sent an over-long line"),
            Ok(Ok(_)) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                self.transcript.push(format!("S: {}", self.clean(&line)));
                Ok(line)
            }
        }
    }

    /// Sends a line; `shown` is what the transcript records instead when
    /// the line carries a credential.
    async fn send(
        &mut self,
        wire: &mut Wire,
        line: &str,
        shown: Option<&str>,
    ) -> Result<(), Failure> {
        self.transcript
            .push(format!("C: {}", shown.unwrap_or(line)));
        let write = async {
            wire.io.write_all(line.as_bytes()).await?;
            wire.io.write_all(b"\r\n").await?;
            wire.io.flush().await
        };
        match tokio::time::timeout(REPLY_TIMEOUT, write).await {
            Err(_) => fail("the server stopped reading"),
            Ok(Err(e)) => fail(format!("connection failed: {}", io_reason(&e))),
            Ok(Ok(())) => Ok(()),
        }
    }

    fn initial_response(
        &mut self,
        mechanism: Mechanism,
        server: &MailServer,
        creds: &Credentials<'_>,
    ) -> SecretString {
        self.mechanism = Some(mechanism);
        let ir = match mechanism {
            Mechanism::Xoauth2 => xoauth2(creds.user, creds.token),
            Mechanism::Oauthbearer => {
                oauthbearer(creds.user, &server.host, server.port, creds.token)
            }
        };
        self.secrets.push(ir.expose_secret().to_owned());
        self.secrets.push(creds.token.expose_secret().to_owned());
        ir
    }

    // ---------------------------------------------------------------- IMAP

    async fn imap(
        &mut self,
        verifier: &Verifier,
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
    ) -> Result<String, Failure> {
        let mut wire = self.connect(verifier, server).await?;
        let greeting = self.read_line(&mut wire).await?;
        if !greeting.starts_with("* OK") {
            return fail(greeting);
        }
        let mut caps = match bracketed_capability(&greeting) {
            Some(c) => c,
            None => self.imap_capability(&mut wire, "a1").await?,
        };
        if server.tls == TlsMode::Starttls {
            if !caps.iter().any(|c| c == "STARTTLS") {
                return fail("the server does not offer STARTTLS");
            }
            self.send(&mut wire, "a2 STARTTLS", None).await?;
            let done = self.imap_tagged(&mut wire, "a2").await?;
            if !tagged_ok(&done, "a2") {
                return fail(done);
            }
            wire = self.starttls(verifier, &server.host, wire).await?;
            caps = self.imap_capability(&mut wire, "a3").await?;
        }
        let offered = |m: Mechanism| caps.iter().any(|c| *c == format!("AUTH={}", m.as_str()));
        let Some(mechanism) = allowed.iter().copied().find(|m| offered(*m)) else {
            return fail(format!(
                "the server offers neither {}",
                allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" nor ")
            ));
        };
        let ir = self.initial_response(mechanism, server, creds);
        let shown = format!(
            "a4 AUTHENTICATE {} [initial response elided]",
            mechanism.as_str()
        );
        if caps.iter().any(|c| c == "SASL-IR") {
            let line = format!(
                "a4 AUTHENTICATE {} {}",
                mechanism.as_str(),
                ir.expose_secret()
            );
            self.send(&mut wire, &line, Some(&shown)).await?;
        } else {
            self.send(
                &mut wire,
                &format!("a4 AUTHENTICATE {}", mechanism.as_str()),
                None,
            )
            .await?;
            let go = self.read_line(&mut wire).await?;
            if !go.starts_with('+') {
                return fail(go);
            }
            self.send(
                &mut wire,
                ir.expose_secret(),
                Some("[initial response elided]"),
            )
            .await?;
        }
        let mut challenge = None;
        let done = loop {
            let line = self.read_line(&mut wire).await?;
            if let Some(rest) = line.strip_prefix('+') {
                // A failure challenge (RFC 7628 3.2.2): answer with the
                // dummy response, then the server says NO.
                challenge = challenge_status(rest.trim());
                let dummy = match mechanism {
                    Mechanism::Xoauth2 => "",
                    Mechanism::Oauthbearer => "AQ==",
                };
                self.send(&mut wire, dummy, None).await?;
                continue;
            }
            if line.starts_with("a4 ") {
                break line;
            }
        };
        let reply = with_challenge(&done, challenge.as_deref());
        if !tagged_ok(&done, "a4") {
            if self.send(&mut wire, "a5 LOGOUT", None).await.is_ok() {
                let _ = self.imap_tagged(&mut wire, "a5").await;
            }
            return fail_as(Cause::of_imap_refusal(&reply, false), reply);
        }
        // Exchange accepts a login for a mailbox the token may not open and
        // refuses only the next command (`BAD User is authenticated but not
        // connected.`, then `* BYE`): the login counts once INBOX opened,
        // read-only, as a worker's first command would.
        self.send(&mut wire, "a5 EXAMINE INBOX", None).await?;
        let opened = self.imap_tagged(&mut wire, "a5").await?;
        if !tagged_ok(&opened, "a5") {
            return fail_as(Cause::of_imap_refusal(&opened, true), opened);
        }
        if self.send(&mut wire, "a6 LOGOUT", None).await.is_ok() {
            let _ = self.imap_tagged(&mut wire, "a6").await;
        }
        Ok(reply)
    }

    /// Reads until the tagged reply; returns it.
    async fn imap_tagged(&mut self, wire: &mut Wire, tag: &str) -> Result<String, Failure> {
        let prefix = format!("{tag} ");
        loop {
            let line = self.read_line(wire).await?;
            // A `* BYE` is followed by the tagged reply or by the close.
            if line.starts_with(&prefix) {
                return Ok(line);
            }
        }
    }

    async fn imap_capability(
        &mut self,
        wire: &mut Wire,
        tag: &str,
    ) -> Result<Vec<String>, Failure> {
        self.send(wire, &format!("{tag} CAPABILITY"), None).await?;
        let prefix = format!("{tag} ");
        let mut caps = Vec::new();
        loop {
            let line = self.read_line(wire).await?;
            if let Some(rest) = line.strip_prefix("* CAPABILITY ") {
                caps = rest
                    .split_whitespace()
                    .map(str::to_ascii_uppercase)
                    .collect();
            } else if line.starts_with(&prefix) {
                if !tagged_ok(&line, tag) {
                    return fail(line);
                }
                return Ok(caps);
            }
        }
    }

    // ---------------------------------------------------------------- SMTP

    async fn smtp(
        &mut self,
        verifier: &Verifier,
        server: &MailServer,
        creds: &Credentials<'_>,
        allowed: &[Mechanism],
    ) -> Result<String, Failure> {
        let mut wire = self.connect(verifier, server).await?;
        let (code, greeting) = self.smtp_reply(&mut wire).await?;
        if code != 220 {
            return fail(greeting);
        }
        let mut ext = self.ehlo(&mut wire).await?;
        if server.tls == TlsMode::Starttls {
            if !ext.iter().any(|e| e == "STARTTLS") {
                return fail("the server does not offer STARTTLS");
            }
            self.send(&mut wire, "STARTTLS", None).await?;
            let (code, reply) = self.smtp_reply(&mut wire).await?;
            if code != 220 {
                return fail(reply);
            }
            wire = self.starttls(verifier, &server.host, wire).await?;
            ext = self.ehlo(&mut wire).await?;
        }
        let auth: Vec<String> = ext
            .iter()
            .find_map(|e| e.strip_prefix("AUTH ").or_else(|| e.strip_prefix("AUTH=")))
            .map(|m| m.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let Some(mechanism) = allowed
            .iter()
            .copied()
            .find(|m| auth.iter().any(|a| a == m.as_str()))
        else {
            return fail(format!(
                "the server offers neither {} (AUTH {})",
                allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" nor "),
                auth.join(" ")
            ));
        };
        let ir = self.initial_response(mechanism, server, creds);
        let line = format!("AUTH {} {}", mechanism.as_str(), ir.expose_secret());
        let shown = format!("AUTH {} [initial response elided]", mechanism.as_str());
        self.send(&mut wire, &line, Some(&shown)).await?;
        let (mut code, mut reply) = self.smtp_reply(&mut wire).await?;
        let mut challenge = None;
        if code == 334 {
            challenge = challenge_status(reply.get(4..).unwrap_or("").trim());
            let dummy = match mechanism {
                Mechanism::Xoauth2 => "",
                Mechanism::Oauthbearer => "AQ==",
            };
            self.send(&mut wire, dummy, None).await?;
            (code, reply) = self.smtp_reply(&mut wire).await?;
        }
        let reply = with_challenge(&reply, challenge.as_deref());
        if self.send(&mut wire, "QUIT", None).await.is_ok() {
            let _ = self.smtp_reply(&mut wire).await;
        }
        if code == 235 {
            Ok(reply)
        } else {
            fail_as(Cause::of_smtp_refusal(&reply), reply)
        }
    }

    /// A whole (possibly multi-line) reply: its code and its last line.
    async fn smtp_reply(&mut self, wire: &mut Wire) -> Result<(u16, String), Failure> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line(wire).await?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if code.is_none() {
                return fail(lines.pop().unwrap_or_default());
            }
            if !more || lines.len() > 100 {
                let last = lines.pop().unwrap_or_default();
                return Ok((code.unwrap_or(0), last));
            }
        }
    }

    /// EHLO; returns the extension lines, upper-cased.
    async fn ehlo(&mut self, wire: &mut Wire) -> Result<Vec<String>, Failure> {
        self.send(wire, "EHLO mailconnect.invalid", None).await?;
        let mut ext = Vec::new();
        loop {
            let line = self.read_line(wire).await?;
            if !line.starts_with("250") {
                return fail(line);
            }
            ext.push(line.get(4..).unwrap_or("").trim().to_ascii_uppercase());
            if line.as_bytes().get(3) != Some(&b'-') {
                // The first line is the greeting, not an extension.
                ext.remove(0);
                return Ok(ext);
            }
        }
    }
}

async fn tcp_connect(
    server: &MailServer,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect((server.host.as_str(), server.port)).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((server.host.as_str(), server.port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
}

fn tagged_ok(line: &str, tag: &str) -> bool {
    line.strip_prefix(tag)
        .is_some_and(|rest| rest.trim_start().to_ascii_uppercase().starts_with("OK"))
}

/// `* OK [CAPABILITY IMAP4rev1 ...] ready` → the capabilities.
fn bracketed_capability(greeting: &str) -> Option<Vec<String>> {
    let start = greeting.find("[CAPABILITY ")? + "[CAPABILITY ".len();
    let end = greeting[start..].find(']')? + start;
    Some(
        greeting[start..end]
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect(),
    )
}

/// An XOAUTH2 / OAUTHBEARER failure challenge is base64 JSON such as
/// `{"status":"401","schemes":"bearer","scope":"..."}`: its `status`.
fn challenge_status(b64: &str) -> Option<String> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let status = match json.get("status")? {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(
        status
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(40)
            .collect(),
    )
}

fn with_challenge(reply: &str, status: Option<&str>) -> String {
    match status {
        Some(s) => format!("{reply} (challenge status {s})"),
        None => reply.to_owned(),
    }
}

/// A server line made fit to show: the secrets we sent removed, anything
/// else that looks like a credential (a long base64 or token-like word)
/// elided, control characters dropped, length bounded.
pub fn sanitize_reply(line: &str, secrets: &[&str]) -> String {
    // Control characters go first: dropped after the secrets were looked
    // for, they would join a secret the server split with them (found by
    // the property tests: `tok\x07en` came out as `token`).
    let mut text: String = line.chars().filter(|c| !c.is_control()).collect();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        text = text.replace(s, "[elided]");
    }
    let words: Vec<String> = text
        .split(' ')
        .map(|w| {
            if looks_secret(w) {
                match challenge_status(w) {
                    Some(status) => format!("[challenge status {status}]"),
                    None => "[elided]".to_owned(),
                }
            } else {
                w.to_owned()
            }
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > MAX_REPLY {
        let cut: String = joined.chars().take(MAX_REPLY).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// A word of 32 or more base64/base64url/JWT characters with a digit or
/// mixed case: a token, a SASL response, a hash. Ordinary reply words
/// ("[AUTHENTICATIONFAILED]") are shorter or carry other characters.
fn looks_secret(word: &str) -> bool {
    let w = word.trim_matches(|c| matches!(c, '(' | ')' | '[' | ']' | '"' | ',' | ';'));
    w.len() >= 32
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_' | '.'))
        && (w.chars().any(|c| c.is_ascii_digit())
            || (w.chars().any(|c| c.is_ascii_lowercase())
                && w.chars().any(|c| c.is_ascii_uppercase())))
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        _ => e.to_string().chars().take(120).collect(),
    }
}

fn tls_reason(e: &std::io::Error) -> String {
    // rustls errors carry the reason (unknown issuer, name mismatch …) and
    // no secret.
    e.get_ref()
        .map(|inner| inner.to_string())
        .unwrap_or_else(|| io_reason(e))
        .chars()
        .take(160)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_lose_what_we_sent_and_anything_token_like() {
        let ir = "dXNlcj1vcHNAZXhhbXBsZS5jb20BYXV0aD1CZWFyZXIgc2VjcmV0AQE=";
        let line = format!("a4 NO [AUTHENTICATIONFAILED] bad response {ir}");
        let shown = sanitize_reply(&line, &[ir]);
        assert_eq!(shown, "a4 NO [AUTHENTICATIONFAILED] bad response [elided]");
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlMTIz";
        assert_eq!(
            sanitize_reply(&format!("535 5.7.8 token {jwt} refused"), &[]),
            "535 5.7.8 token [elided] refused"
        );
        assert_eq!(
            sanitize_reply("a4 OK [CAPABILITY IMAP4rev1 SASL-IR] Logged in", &[]),
            "a4 OK [CAPABILITY IMAP4rev1 SASL-IR] Logged in"
        );
        assert_eq!(sanitize_reply("220 ok\u{7}\u{1b}[2J", &[]), "220 ok[2J");
        // A secret split by a control character is still found.
        let split = format!("a4 NO {}\u{7}{}", &ir[..10], &ir[10..]);
        assert_eq!(sanitize_reply(&split, &[ir]), "a4 NO [elided]");
        let token = "EwBwA8l6BAAUs5+HQn0N+h2FxWzLS31ZgQVuHsYAAaYVZ1OlKpM0Lx4oE8";
        let split = format!("* NO {}\u{1b}{}", &token[..20], &token[20..]);
        assert_eq!(sanitize_reply(&split, &[]), "* NO [elided]");
        assert!(sanitize_reply(&"x ".repeat(400), &[]).chars().count() <= MAX_REPLY + 1);
    }

    #[test]
    fn failure_challenges_show_their_status() {
        let challenge = STANDARD.encode(r#"{"status":"401","schemes":"bearer","scope":"mail"}"#);
        assert_eq!(challenge_status(&challenge).as_deref(), Some("401"));
        assert_eq!(
            sanitize_reply(&format!("334 {challenge}"), &[]),
            "334 [challenge status 401]"
        );
        let google = STANDARD.encode(r#"{"status":"invalid_token"}"#);
        assert_eq!(challenge_status(&google).as_deref(), Some("invalid_token"));
        assert_eq!(challenge_status("not base64!"), None);
    }

    #[test]
    fn capabilities_are_read_from_the_greeting() {
        assert_eq!(
            bracketed_capability("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Ready.")
                .unwrap(),
            vec!["IMAP4REV1", "SASL-IR", "AUTH=XOAUTH2"]
        );
        assert!(bracketed_capability("* OK Ready.").is_none());
        assert!(tagged_ok("a4 OK Logged in", "a4"));
        assert!(!tagged_ok("a4 NO nope", "a4"));
    }

    #[test]
    fn credentials_never_print_their_token() {
        let user = MailboxAddress::parse("ops@example.com").unwrap();
        let token = SecretString::from("very-secret-access-token");
        let shown = format!(
            "{:?}",
            Credentials {
                user: &user,
                token: &token
            }
        );
        assert!(!shown.contains("very-secret") && shown.contains("ops@example.com"));
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_a_clear_answer() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let verifier = Verifier::new(&ExtraRoots::default());
        let user = MailboxAddress::parse("ops@example.com").unwrap();
        let token = SecretString::from("t");
        let server = MailServer {
            host: "127.0.0.1".into(),
            port,
            tls: TlsMode::Implicit,
        };
        let r = verifier
            .imap(
                &server,
                &Credentials {
                    user: &user,
                    token: &token,
                },
                &Mechanism::PREFERRED,
            )
            .await;
        assert!(!r.ok);
        assert_eq!(r.reply, "could not connect: connection refused");
        assert!(r.mechanism.is_none());
    }

    // ------------------------------------------------ scripted servers

    /// One step of a scripted mail server.
    enum Step {
        /// Writes these bytes in one write (several lines at once, if so).
        Send(&'static str),
        /// Reads one line; the script stops (and the server hangs up) when
        /// it does not start with this.
        Expect(&'static str),
    }

    const TOKEN: &str = "EwA-scripted-access-token-0123456789";

    async fn next_line(io: &mut BufReader<TcpStream>) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(2), io.read_line(&mut line))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| line.trim_end().to_owned())
    }

    /// A server on a loopback port that plays `steps` to one client, then
    /// reads whatever else it sends; yields every line the client sent.
    async fn scripted(steps: Vec<Step>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut io = BufReader::new(socket);
            let mut got = Vec::new();
            for step in steps {
                match step {
                    Step::Send(text) => {
                        if io.get_mut().write_all(text.as_bytes()).await.is_err() {
                            return got;
                        }
                    }
                    Step::Expect(prefix) => match next_line(&mut io).await {
                        Some(line) => {
                            let matches = line.starts_with(prefix);
                            got.push(line);
                            if !matches {
                                return got;
                            }
                        }
                        None => return got,
                    },
                }
            }
            while let Some(line) = next_line(&mut io).await {
                got.push(line);
            }
            got
        });
        (port, task)
    }

    async fn login(protocol: Protocol, port: u16, tls: TlsMode) -> LoginReport {
        let verifier = Verifier::new(&ExtraRoots::default());
        let user = MailboxAddress::parse("ops@example.com").unwrap();
        let token = SecretString::from(TOKEN);
        let server = MailServer {
            host: "localhost".into(),
            port,
            tls,
        };
        let creds = Credentials {
            user: &user,
            token: &token,
        };
        match protocol {
            Protocol::Imap => verifier.imap(&server, &creds, &Mechanism::PREFERRED).await,
            Protocol::Smtp => verifier.smtp(&server, &creds, &Mechanism::PREFERRED).await,
        }
    }

    /// The XOAUTH2 initial response for the scripted user and token.
    fn xoauth2_ir() -> String {
        STANDARD.encode(format!(
            "user=ops@example.com\x01auth=Bearer {TOKEN}\x01\x01"
        ))
    }

    /// Nothing the client sent, nor anything it reports, holds a credential.
    fn nothing_secret(sent: &[String], report: &LoginReport) {
        let shown = format!("{} {:?}", report.reply, report.transcript);
        for s in sent.iter().map(String::as_str).chain([shown.as_str()]) {
            assert!(!s.contains(TOKEN), "{s}");
            assert!(!s.contains(&xoauth2_ir()[..20]), "{s}");
            assert!(
                !s.contains("AUTHENTICATE") && !s.starts_with("AUTH "),
                "{s}"
            );
        }
    }

    #[tokio::test]
    async fn imap_refuses_to_log_in_when_starttls_is_not_offered() {
        let (port, server) = scripted(vec![Step::Send(
            "* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] ready\r\n",
        )])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::Starttls).await;
        assert!(!r.ok);
        assert_eq!(r.reply, "the server does not offer STARTTLS");
        assert_eq!(r.mechanism, None);
        nothing_secret(&server.await.unwrap(), &r);
    }

    #[tokio::test]
    async fn imap_refuses_data_injected_before_the_tls_handshake() {
        let (port, server) = scripted(vec![
            Step::Send("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n"),
            Step::Expect("a2 STARTTLS"),
            // The answer to STARTTLS and, in the same packet, a forged
            // capability line meant to be read as if it came over TLS.
            Step::Send("a2 OK Begin TLS negotiation now\r\n* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n"),
        ])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::Starttls).await;
        assert!(!r.ok);
        assert_eq!(
            r.reply,
            "the server sent data after agreeing to STARTTLS; refused"
        );
        let sent = server.await.unwrap();
        assert_eq!(sent, ["a2 STARTTLS"]);
        nothing_secret(&sent, &r);
    }

    #[tokio::test]
    async fn imap_reports_a_refused_starttls() {
        let (port, server) = scripted(vec![
            Step::Send("* OK ready\r\n"),
            Step::Expect("a1 CAPABILITY"),
            Step::Send("* CAPABILITY IMAP4rev1 STARTTLS AUTH=XOAUTH2\r\na1 OK done\r\n"),
            Step::Expect("a2 STARTTLS"),
            Step::Send("a2 NO TLS is not available now\r\n"),
        ])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::Starttls).await;
        assert!(!r.ok);
        assert_eq!(r.reply, "a2 NO TLS is not available now");
        nothing_secret(&server.await.unwrap(), &r);
    }

    #[tokio::test]
    async fn imap_without_sasl_ir_sends_the_response_after_the_continuation() {
        let (port, server) = scripted(vec![
            Step::Send("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n"),
            Step::Expect("a4 AUTHENTICATE XOAUTH2"),
            Step::Send("+ \r\n"),
            Step::Expect(""),
            Step::Send("* CAPABILITY IMAP4rev1\r\na4 OK Logged in\r\n"),
            Step::Expect("a5 EXAMINE INBOX"),
            Step::Send("* 0 EXISTS\r\na5 OK [READ-ONLY] EXAMINE completed.\r\n"),
            Step::Expect("a6 LOGOUT"),
            Step::Send("* BYE logging out\r\na6 OK done\r\n"),
        ])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::None).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reply, "a4 OK Logged in");
        assert_eq!(r.mechanism, Some(Mechanism::Xoauth2));
        let sent = server.await.unwrap();
        assert_eq!(sent[0], "a4 AUTHENTICATE XOAUTH2", "no initial response");
        assert_eq!(sent[1], xoauth2_ir(), "the response on its own line");
        assert_eq!(sent[2], "a5 EXAMINE INBOX");
        assert_eq!(sent[3], "a6 LOGOUT");
        let shown = r.transcript.join("\n");
        assert!(shown.contains("C: [initial response elided]"), "{shown}");
        assert!(!shown.contains(TOKEN) && !shown.contains(&xoauth2_ir()));
    }

    #[tokio::test]
    async fn imap_is_not_ok_when_the_login_is_accepted_but_inbox_will_not_open() {
        let (port, server) = scripted(vec![
            Step::Send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n"),
            Step::Expect("a4 AUTHENTICATE XOAUTH2 "),
            Step::Send("a4 OK AUTHENTICATE completed.\r\n"),
            Step::Expect("a5 EXAMINE INBOX"),
            Step::Send(
                "a5 BAD User is authenticated but not connected.\r\n* BYE Connection closed. 14\r\n",
            ),
        ])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::None).await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.reply, "a5 BAD User is authenticated but not connected.");
        let sent = server.await.unwrap();
        assert_eq!(sent[1], "a5 EXAMINE INBOX");
        let shown = format!("{} {:?}", r.reply, r.transcript);
        assert!(!shown.contains(TOKEN) && !shown.contains(&xoauth2_ir()[..20]));
    }

    #[tokio::test]
    async fn imap_without_sasl_ir_stops_when_the_server_will_not_continue() {
        let (port, server) = scripted(vec![
            Step::Send("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n"),
            Step::Expect("a4 AUTHENTICATE XOAUTH2"),
            Step::Send("a4 NO [UNAVAILABLE] try later\r\n"),
        ])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::None).await;
        assert!(!r.ok);
        assert_eq!(r.reply, "a4 NO [UNAVAILABLE] try later");
        assert_eq!(server.await.unwrap(), ["a4 AUTHENTICATE XOAUTH2"]);
    }

    #[tokio::test]
    async fn imap_with_sasl_ir_prefers_oauthbearer_and_reports_the_failure_challenge() {
        let challenge = STANDARD.encode(r#"{"status":"401","schemes":"bearer"}"#);
        let send: &'static str = Box::leak(format!("+ {challenge}\r\n").into_boxed_str());
        let (port, server) = scripted(vec![
            Step::Send(
                "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] ready\r\n",
            ),
            Step::Expect("a4 AUTHENTICATE OAUTHBEARER "),
            Step::Send(send),
            Step::Expect("AQ=="),
            Step::Send("a4 NO [AUTHENTICATIONFAILED] invalid token\r\n"),
            Step::Expect("a5 LOGOUT"),
            Step::Send("a5 OK bye\r\n"),
        ])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::None).await;
        assert!(!r.ok);
        assert_eq!(r.mechanism, Some(Mechanism::Oauthbearer));
        assert_eq!(
            r.reply,
            "a4 NO [AUTHENTICATIONFAILED] invalid token (challenge status 401)"
        );
        let sent = server.await.unwrap();
        let ir = sent[0]
            .strip_prefix("a4 AUTHENTICATE OAUTHBEARER ")
            .unwrap();
        let raw = String::from_utf8(STANDARD.decode(ir).unwrap()).unwrap();
        assert_eq!(
            raw,
            format!("n,a=ops@example.com,\x01host=localhost\x01port={port}\x01auth=Bearer {TOKEN}\x01\x01")
        );
        assert!(!r.transcript.join("\n").contains(ir));
    }

    #[tokio::test]
    async fn imap_reports_a_greeting_that_is_not_ok_and_nothing_offered() {
        let (port, _server) = scripted(vec![Step::Send("* BYE too many connections\r\n")]).await;
        let r = login(Protocol::Imap, port, TlsMode::None).await;
        assert_eq!(
            (r.ok, r.reply.as_str()),
            (false, "* BYE too many connections")
        );
        let (port, server) = scripted(vec![Step::Send(
            "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
        )])
        .await;
        let r = login(Protocol::Imap, port, TlsMode::None).await;
        assert!(!r.ok);
        assert_eq!(r.reply, "the server offers neither OAUTHBEARER nor XOAUTH2");
        nothing_secret(&server.await.unwrap(), &r);
    }

    #[tokio::test]
    async fn smtp_refuses_to_log_in_when_starttls_is_not_offered() {
        let (port, server) = scripted(vec![
            Step::Send("220 mail.example ESMTP\r\n"),
            Step::Expect("EHLO "),
            Step::Send("250-mail.example\r\n250-AUTH XOAUTH2\r\n250 8BITMIME\r\n"),
        ])
        .await;
        let r = login(Protocol::Smtp, port, TlsMode::Starttls).await;
        assert!(!r.ok);
        assert_eq!(r.reply, "the server does not offer STARTTLS");
        nothing_secret(&server.await.unwrap(), &r);
    }

    #[tokio::test]
    async fn smtp_refuses_data_injected_before_the_tls_handshake() {
        let (port, server) = scripted(vec![
            Step::Send("220 mail.example ESMTP\r\n"),
            Step::Expect("EHLO "),
            Step::Send("250-mail.example\r\n250 STARTTLS\r\n"),
            Step::Expect("STARTTLS"),
            Step::Send("220 2.0.0 Ready to start TLS\r\n250 AUTH XOAUTH2\r\n"),
        ])
        .await;
        let r = login(Protocol::Smtp, port, TlsMode::Starttls).await;
        assert!(!r.ok);
        assert_eq!(
            r.reply,
            "the server sent data after agreeing to STARTTLS; refused"
        );
        let sent = server.await.unwrap();
        assert_eq!(sent.len(), 2, "{sent:?}");
        nothing_secret(&sent, &r);
    }

    #[tokio::test]
    async fn smtp_reports_a_refused_starttls_and_a_bad_greeting() {
        let (port, server) = scripted(vec![
            Step::Send("220 mail.example ESMTP\r\n"),
            Step::Expect("EHLO "),
            Step::Send("250-mail.example\r\n250 STARTTLS\r\n"),
            Step::Expect("STARTTLS"),
            Step::Send("454 4.7.0 TLS not available\r\n"),
        ])
        .await;
        let r = login(Protocol::Smtp, port, TlsMode::Starttls).await;
        assert_eq!(
            (r.ok, r.reply.as_str()),
            (false, "454 4.7.0 TLS not available")
        );
        nothing_secret(&server.await.unwrap(), &r);
        let (port, _server) = scripted(vec![Step::Send("554 5.3.2 no service here\r\n")]).await;
        let r = login(Protocol::Smtp, port, TlsMode::Starttls).await;
        assert_eq!(
            (r.ok, r.reply.as_str()),
            (false, "554 5.3.2 no service here")
        );
    }

    #[tokio::test]
    async fn smtp_logs_in_with_xoauth2_and_quits() {
        let (port, server) = scripted(vec![
            Step::Send("220-mail.example ESMTP\r\n220 welcome\r\n"),
            Step::Expect("EHLO mailconnect.invalid"),
            Step::Send("250-mail.example\r\n250-SIZE 35882577\r\n250 AUTH=LOGIN XOAUTH2\r\n"),
            Step::Expect("AUTH XOAUTH2 "),
            Step::Send("235 2.7.0 Accepted\r\n"),
            Step::Expect("QUIT"),
            Step::Send("221 2.0.0 Bye\r\n"),
        ])
        .await;
        let r = login(Protocol::Smtp, port, TlsMode::None).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.reply, "235 2.7.0 Accepted");
        assert_eq!(r.mechanism, Some(Mechanism::Xoauth2));
        let sent = server.await.unwrap();
        assert_eq!(sent[1], format!("AUTH XOAUTH2 {}", xoauth2_ir()));
        assert_eq!(sent[2], "QUIT");
        assert!(!r.transcript.join("\n").contains(TOKEN));
    }

    #[tokio::test]
    async fn smtp_reports_the_failure_challenge_after_the_dummy_response() {
        let challenge = STANDARD.encode(r#"{"status":"invalid_token","scope":"mail"}"#);
        let send: &'static str = Box::leak(format!("334 {challenge}\r\n").into_boxed_str());
        let (port, server) = scripted(vec![
            Step::Send("220 mail.example ESMTP\r\n"),
            Step::Expect("EHLO "),
            Step::Send("250-mail.example\r\n250 AUTH XOAUTH2 PLAIN\r\n"),
            Step::Expect("AUTH XOAUTH2 "),
            Step::Send(send),
            Step::Expect(""),
            Step::Send("535 5.7.8 Username and Password not accepted\r\n"),
            Step::Expect("QUIT"),
            Step::Send("221 bye\r\n"),
        ])
        .await;
        let r = login(Protocol::Smtp, port, TlsMode::None).await;
        assert!(!r.ok);
        assert_eq!(
            r.reply,
            "535 5.7.8 Username and Password not accepted (challenge status invalid_token)"
        );
        let sent = server.await.unwrap();
        assert_eq!(sent[2], "", "the XOAUTH2 dummy response is empty");
        let (port, server) = scripted(vec![
            Step::Send("220 mail.example ESMTP\r\n"),
            Step::Expect("EHLO "),
            Step::Send("250-mail.example\r\n250 AUTH PLAIN LOGIN\r\n"),
        ])
        .await;
        let r = login(Protocol::Smtp, port, TlsMode::None).await;
        assert_eq!(
            r.reply,
            "the server offers neither OAUTHBEARER nor XOAUTH2 (AUTH PLAIN LOGIN)"
        );
        nothing_secret(&server.await.unwrap(), &r);
    }
}
