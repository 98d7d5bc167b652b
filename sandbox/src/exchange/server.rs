//! The servers' plumbing: TLS made at start, the two listeners, line I/O
//! that is bounded and timed, and the loop that feeds a session its lines.
//! Everything here stops when the [`FakeExchange`](super::FakeExchange)'s
//! stop sender is dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::imap::ImapSession;
use super::smtp::SmtpSession;
use super::{ServerCert, Shared};

/// The longest line (command, or SASL response) a client may send: room for
/// the longest Entra access token in an XOAUTH2 response, and a bound.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// How long a closing connection still reads what the client sends.
const LINGER: Duration = Duration::from_millis(250);

/// Where the started servers listen, and the certificate a client trusts
/// for them.
pub(super) struct Started {
    pub imap_addr: SocketAddr,
    pub smtp_addr: SocketAddr,
    pub ca_pem: String,
}

/// What a connection needs besides its socket.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    tls: TlsAcceptor,
    stop: watch::Receiver<()>,
}

pub(super) async fn start(
    shared: Arc<Shared>,
    stop: watch::Receiver<()>,
    cert: ServerCert,
) -> anyhow::Result<Started> {
    let (tls, ca_pem) = make_tls(cert).context("making the fake Exchange's certificates")?;
    let ctx = Ctx { shared, tls, stop };
    let imap = TcpListener::bind("127.0.0.1:0").await?;
    let smtp = TcpListener::bind("127.0.0.1:0").await?;
    let started = Started {
        imap_addr: imap.local_addr()?,
        smtp_addr: smtp.local_addr()?,
        ca_pem,
    };
    tokio::spawn(accept(imap, ctx.clone(), imap_connection));
    tokio::spawn(accept(smtp, ctx, smtp_connection));
    Ok(started)
}

/// The names every certificate of the fake is valid for.
fn server_names() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// The acceptor serving `cert`'s chain, and the PEM a client must trust.
fn make_tls(cert: ServerCert) -> anyhow::Result<(TlsAcceptor, String)> {
    let (chain, key, trusted_pem) = match cert {
        ServerCert::SignedByCa => signed_by_ca()?,
        ServerCert::SelfSignedCa => self_signed_ca()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    Ok((TlsAcceptor::from(Arc::new(config)), trusted_pem))
}

/// A server's chain, the key of its first certificate, and the PEM a
/// client trusts.
type Made = (Vec<CertificateDer<'static>>, KeyPair, String);

/// A CA, and a leaf signed by it (a client that trusts a certificate as its
/// own CA refuses it as a server's): the chain is the leaf and the CA, the
/// PEM the CA's.
fn signed_by_ca() -> anyhow::Result<Made> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "mailconnect sandbox Exchange CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(server_names())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;
    let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    Ok((chain, leaf_key, ca_cert.pem()))
}

/// One self-signed certificate marked as a CA, the shape `openssl req
/// -x509` gives by default: the chain and the PEM are that certificate.
fn self_signed_ca() -> anyhow::Result<Made> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(server_names())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((vec![cert.der().clone()], key, cert.pem()))
}

/// Accepts until stopped, each connection on its own task.
async fn accept<F, Fut>(listener: TcpListener, mut ctx: Ctx, serve: F)
where
    F: Fn(TcpStream, IpAddr, Ctx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    tokio::spawn(serve(stream, peer.ip(), ctx.clone()));
                }
            }
            _ = ctx.stop.changed() => return,
        }
    }
}

/// IMAP: TLS at once (port 993), then the session.
async fn imap_connection(stream: TcpStream, _peer: IpAddr, ctx: Ctx) {
    let idle = ctx.shared.lock().idle_timeout;
    let Some(tls) = handshake(&ctx.tls, stream, idle).await else {
        return;
    };
    let mut session = ImapSession::new(ctx.shared.clone());
    let mut wire = Wire::new(tls, idle, ctx.stop);
    if wire.send(&session.greeting()).await {
        converse(&mut wire, &mut session).await;
    }
}

/// SMTP: in the clear until STARTTLS (port 587), then the same session
/// over TLS. Whatever the client sent after STARTTLS before the handshake
/// is dropped, as RFC 3207 asks.
async fn smtp_connection(stream: TcpStream, peer: IpAddr, ctx: Ctx) {
    let idle = ctx.shared.lock().idle_timeout;
    let mut session = SmtpSession::new(ctx.shared.clone(), peer);
    let mut wire = Wire::new(stream, idle, ctx.stop.clone());
    if !wire.send(&session.greeting()).await || !converse(&mut wire, &mut session).await {
        return;
    }
    let Some(tls) = handshake(&ctx.tls, wire.stream, idle).await else {
        return;
    };
    converse(&mut Wire::new(tls, idle, ctx.stop), &mut session).await;
}

async fn handshake(
    tls: &TlsAcceptor,
    stream: TcpStream,
    idle: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::time::timeout(idle, tls.accept(stream))
        .await
        .ok()?
        .ok()
}

/// What a session answers a line with, and what happens next.
pub(super) struct Reply {
    /// Sent as is, then CRLF (lines inside are joined with CRLF too);
    /// nothing at all when empty.
    pub text: String,
    pub then: Then,
}

pub(super) enum Then {
    Read,
    Close,
    /// Switch the connection to TLS (SMTP's STARTTLS), then read on.
    StartTls,
}

impl Reply {
    pub(super) fn read(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            then: Then::Read,
        }
    }

    /// No answer (a line of a message being sent).
    pub(super) fn silent() -> Reply {
        Reply::read(String::new())
    }

    pub(super) fn close(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            then: Then::Close,
        }
    }
}

/// A protocol's session: what it says first, and to each line.
pub(super) trait Session {
    fn greeting(&self) -> String;
    fn on_line(&mut self, line: &[u8]) -> Reply;
    /// Said before closing a connection that stayed silent too long.
    fn on_timeout(&self) -> String;
    /// Said before closing a connection whose line grew past [`MAX_LINE`].
    fn on_too_long(&self) -> String;
}

/// Feeds the session its lines until one side ends; true when the session
/// asked for TLS.
async fn converse<S, P>(wire: &mut Wire<S>, session: &mut P) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Session,
{
    loop {
        let reply = match wire.read_line().await {
            Input::Line(line) => session.on_line(&line),
            Input::TimedOut => Reply::close(session.on_timeout()),
            Input::TooLong => Reply::close(session.on_too_long()),
            Input::Closed => return false,
        };
        if !reply.text.is_empty() && !wire.send(&reply.text).await {
            return false;
        }
        match reply.then {
            Then::Read => {}
            Then::Close => {
                wire.shutdown().await;
                return false;
            }
            Then::StartTls => return true,
        }
    }
}

enum Input {
    Line(Vec<u8>),
    TooLong,
    TimedOut,
    /// The client went away, or the server is stopping.
    Closed,
}

/// A connection read line by line (each bounded by [`MAX_LINE`], each read
/// and write bounded by the idle timeout) until the server stops.
struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    idle: Duration,
    stop: watch::Receiver<()>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(stream: S, idle: Duration, stop: watch::Receiver<()>) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
            idle,
            stop,
        }
    }

    /// The next line without its CRLF (or bare LF).
    async fn read_line(&mut self) -> Input {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Input::Line(line);
            }
            if self.buf.len() > MAX_LINE {
                return Input::TooLong;
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::select! {
                read = tokio::time::timeout(self.idle, self.stream.read(&mut chunk)) => read,
                _ = self.stop.changed() => return Input::Closed,
            };
            match read {
                Err(_) => return Input::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Input::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `text` and CRLF; false when the client cannot take it.
    async fn send(&mut self, text: &str) -> bool {
        let out = format!("{text}\r\n");
        let write = async {
            self.stream.write_all(out.as_bytes()).await?;
            self.stream.flush().await
        };
        matches!(tokio::time::timeout(self.idle, write).await, Ok(Ok(())))
    }

    /// Closes our side, then reads and drops what the client still sends
    /// for a moment: closing with unread bytes would reset the connection,
    /// and the client could lose the last reply.
    async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.idle, self.stream.shutdown()).await;
        let drain = async {
            let mut chunk = [0u8; 4096];
            while matches!(self.stream.read(&mut chunk).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(LINGER.min(self.idle), drain).await;
    }
}
