//! The fake Exchange Online, over real TLS with a client that trusts only
//! its CA: tokens minted by the fake Microsoft through its token endpoint
//! (a user's by refresh, an app's by client credentials after admin
//! consent), each login rule, and Exchange's replies word for word.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mailconnect_sandbox::exchange::Login;
use mailconnect_sandbox::*;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value";
const REDIRECT: &str = "http://127.0.0.1:9999/api/oauth/microsoft/callback";
const CONTOSO: &str = "3f0c8a2e-6b1d-4c7e-9a55-0d2b7e4f1c63";
const FABRIKAM: &str = "8d4e1b7a-2c3f-4e90-b6a1-5f7c9d0e2b48";
const OPS: &str = "ops@contoso.example";
const MEGAN: &str = "megan@contoso.example";
const ADMIN: &str = "admin@contoso.example";
const SHARED: &str = "shared@contoso.example";
const IMAP_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const SMTP_SCOPE: &str = "https://outlook.office.com/SMTP.Send";
const MAIL_SCOPES: &str =
    "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send";
const EXAMINE_INBOX: &[&str] = &[
    "* 0 EXISTS",
    "* 0 RECENT",
    r"* FLAGS (\Seen \Answered \Flagged \Deleted \Draft $MDNSent)",
    r"* OK [PERMANENTFLAGS (\Seen \Answered \Flagged \Deleted \Draft $MDNSent)] Permanent flags",
    "* OK [UIDVALIDITY 14] UIDVALIDITY value",
    "* OK [UIDNEXT 1] The next unique identifier value",
];
const NOT_CONNECTED: &str = "BAD User is authenticated but not connected.";

// ---------------------------------------------------------------------------
// The sandbox: a fake Microsoft, its Exchange, a TLS client trusting the CA
// ---------------------------------------------------------------------------

struct Sandbox {
    ms: FakeMicrosoft,
    ex: FakeExchange,
    tls: TlsConnector,
}

fn user_of(upn: &str) -> FakeUser {
    let mut user = FakeUser::work(upn);
    user.tid = CONTOSO.to_string();
    user
}

/// Contoso's users (each with a mailbox), its admin, and a directory whose
/// admin can consent to the app; the shared mailbox exists.
async fn start() -> Sandbox {
    let mut cfg = FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT);
    cfg.users = vec![user_of(OPS), user_of(MEGAN), user_of(ADMIN)];
    let ms = FakeMicrosoft::start(cfg).await.unwrap();
    ms.add_directory(CONTOSO, &["contoso.example"]);
    ms.set_directory_admin(CONTOSO, ADMIN);
    ms.add_directory(FABRIKAM, &["fabrikam.example"]);
    let ex = FakeExchange::start(ms.clone()).await.unwrap();
    ex.add_mailbox(SHARED);
    let tls = connector(&ex.ca_pem());
    Sandbox { ms, ex, tls }
}

/// A client that trusts nothing but this CA.
fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(std::sync::Arc::new(config))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn token_request(ms: &FakeMicrosoft, tenant: &str, form: &[(&str, &str)]) -> String {
    let resp = http()
        .post(ms.token_endpoint(tenant))
        .form(form)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {body}"))
        .to_string()
}

/// A user's access token for `scope`, by a refresh at the token endpoint.
async fn user_token(ms: &FakeMicrosoft, upn: &str, scope: &str) -> String {
    let rt = ms.mint_refresh_token(upn);
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("refresh_token", rt.as_str()),
        ("scope", scope),
    ];
    token_request(ms, "organizations", &form).await
}

/// Contoso's admin consents to the app, which then gets an app token for
/// `{resource}/.default`.
async fn app_token(ms: &FakeMicrosoft, resource: &str) -> String {
    ms.set_user_for_next_login(ADMIN);
    let resp = http()
        .get(ms.admin_consent_endpoint(CONTOSO))
        .query(&[
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
            ("scope", "https://outlook.office.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    assert!(ms.directory_consented(CONTOSO));
    let scope = format!("{resource}/.default");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("scope", scope.as_str()),
    ];
    token_request(ms, CONTOSO, &form).await
}

fn xoauth2(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn oauthbearer(user: &str, token: &str) -> String {
    STANDARD.encode(format!(
        "n,a={user},\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01"
    ))
}

fn login(protocol: &'static str, username: &str, outcome: &'static str) -> Login {
    Login {
        protocol,
        mechanism: "XOAUTH2",
        username: username.to_string(),
        outcome,
    }
}

// ---------------------------------------------------------------------------
// A line client for both protocols
// ---------------------------------------------------------------------------

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    io: BufReader<Box<dyn Io>>,
}

impl Client {
    fn new(io: impl Io + 'static) -> Client {
        Client {
            io: BufReader::new(Box::new(io)),
        }
    }

    async fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\r\n").as_bytes()).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// The next line without CRLF; `None` once the server closed.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), self.io.read_line(&mut line))
            .await
            .expect("the server answers within 5 s");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
        }
    }

    async fn closed(&mut self) -> bool {
        self.line().await.is_none()
    }

    /// IMAP: sends `{tag} {command}`, and reads up to the tagged answer.
    async fn imap(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}")).await;
        let mut lines = Vec::new();
        while let Some(line) = self.line().await {
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// SMTP: one reply, all its lines.
    async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.line().await {
            let done = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// SMTP: sends a command and reads its reply's last line.
    async fn smtp(&mut self, command: &str) -> String {
        self.send(command).await;
        self.reply().await.pop().unwrap_or_default()
    }
}

impl Sandbox {
    /// A TLS connection to the IMAP port, and its greeting.
    async fn imap(&self) -> (Client, String) {
        let tcp = TcpStream::connect(self.ex.imap_addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = Client::new(self.tls.connect(name, tcp).await.unwrap());
        let greeting = client.line().await.unwrap();
        (client, greeting)
    }

    /// An IMAP session after `AUTHENTICATE XOAUTH2` (SASL-IR) as `user`.
    async fn imap_login(&self, user: &str, token: &str) -> (Client, Vec<String>) {
        let (mut client, _) = self.imap().await;
        let answer = client
            .imap(
                "A1",
                &format!("AUTHENTICATE XOAUTH2 {}", xoauth2(user, token)),
            )
            .await;
        (client, answer)
    }

    /// A plain connection to the SMTP port, and its greeting.
    async fn smtp(&self) -> (Client, String) {
        let tcp = TcpStream::connect(self.ex.smtp_addr()).await.unwrap();
        let mut client = Client::new(tcp);
        let greeting = client.line().await.unwrap();
        (client, greeting)
    }

    /// EHLO, STARTTLS and the TLS handshake; the EHLO reply over TLS.
    async fn smtp_secured(&self) -> (Client, Vec<String>) {
        let (mut client, _) = self.smtp().await;
        client.smtp("EHLO client.example").await;
        assert_eq!(client.smtp("STARTTLS").await, "220 2.0.0 SMTP server ready");
        let plain = client.io.into_inner();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = Client::new(self.tls.connect(name, plain).await.unwrap());
        client.send("EHLO client.example").await;
        let ehlo = client.reply().await;
        (client, ehlo)
    }

    /// A secured SMTP session and the reply to `AUTH XOAUTH2` as `user`.
    async fn smtp_login(&self, user: &str, token: &str) -> (Client, String) {
        let (mut client, _) = self.smtp_secured().await;
        let reply = client
            .smtp(&format!("AUTH XOAUTH2 {}", xoauth2(user, token)))
            .await;
        (client, reply)
    }
}

// ---------------------------------------------------------------------------
// IMAP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn imap_greets_and_lists_capabilities_as_exchange_online() {
    let sb = start().await;
    let (mut client, greeting) = sb.imap().await;
    let prefix = "* OK The Microsoft Exchange IMAP4 service is ready. [";
    assert!(greeting.starts_with(prefix), "{greeting}");
    let name = STANDARD
        .decode(greeting[prefix.len()..].trim_end_matches(']'))
        .unwrap();
    assert_eq!(name.len() % 2, 0, "a UTF-16LE server name");
    assert_eq!(
        client.imap("A0", "CAPABILITY").await,
        [
            "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
            "A0 OK CAPABILITY completed.",
        ]
    );
    assert_eq!(
        client.imap("A1", "ID (\"name\" \"mailconnect\")").await,
        [
            "* ID (\"name\" \"Microsoft.Exchange.Imap4.Imap4Server\" \"version\" \"15.20\")",
            "A1 OK ID completed.",
        ]
    );
    assert_eq!(client.imap("A2", "NOOP").await, ["A2 OK NOOP completed."]);
    assert_eq!(
        client.imap("A3", "LOGOUT").await,
        [
            "* BYE Microsoft Exchange Server IMAP4 server signing off.",
            "A3 OK LOGOUT completed.",
        ]
    );
    assert!(client.closed().await);
}

#[tokio::test]
async fn a_users_token_opens_their_own_mailbox_and_examine_reads_inbox() {
    let sb = start().await;
    let token = user_token(&sb.ms, OPS, MAIL_SCOPES).await;
    let (mut client, answer) = sb.imap_login("OPS@Contoso.example", &token).await;
    assert_eq!(answer, ["A1 OK AUTHENTICATE completed."]);
    assert_eq!(
        client.imap("A2", "CAPABILITY").await[0],
        "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION BACKENDAUTHENTICATE CHILDREN IDLE NAMESPACE LITERAL+"
    );
    let mut expected: Vec<String> = EXAMINE_INBOX.iter().map(|l| l.to_string()).collect();
    expected.push("A3 OK [READ-ONLY] EXAMINE completed.".into());
    assert_eq!(client.imap("A3", "EXAMINE INBOX").await, expected);
    assert_eq!(
        client.imap("A4", "NAMESPACE").await,
        [
            "* NAMESPACE ((\"\" \"/\")) NIL NIL",
            "A4 OK NAMESPACE completed."
        ]
    );
    assert_eq!(
        client.imap("A5", "LIST \"\" \"*\"").await,
        [
            "* LIST (\\HasNoChildren) \"/\" INBOX",
            "A5 OK LIST completed."
        ]
    );
    assert_eq!(
        client
            .imap("A6", "STATUS \"INBOX\" (MESSAGES UIDNEXT)")
            .await,
        [
            "* STATUS INBOX (MESSAGES 0 UIDNEXT 1)",
            "A6 OK STATUS completed."
        ]
    );
    assert_eq!(
        client.imap("A7", "SELECT \"Sent Items\"").await,
        ["A7 NO Sent Items doesn't exist."]
    );
    assert_eq!(
        client.imap("A8", "select inbox").await.last().unwrap(),
        "A8 OK [READ-WRITE] SELECT completed."
    );
    assert_eq!(
        client.imap("A9", "UNSELECT").await,
        ["A9 OK UNSELECT completed."]
    );
    assert_eq!(sb.ex.logins(), [login("imap", "OPS@Contoso.example", "ok")]);
}

#[tokio::test]
async fn full_access_opens_a_shared_mailbox() {
    let sb = start().await;
    sb.ex.grant_full_access(SHARED, OPS);
    let token = user_token(&sb.ms, OPS, IMAP_SCOPE).await;
    let (mut client, answer) = sb.imap_login(SHARED, &token).await;
    assert_eq!(answer, ["A1 OK AUTHENTICATE completed."]);
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await.last().unwrap(),
        "A2 OK [READ-ONLY] EXAMINE completed."
    );
    // Permissions on a mailbox that does not exist open nothing.
    sb.ex.grant_full_access("ghost@contoso.example", OPS);
    let (mut client, _) = sb.imap_login("ghost@contoso.example", &token).await;
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await,
        [format!("A2 {NOT_CONNECTED}")]
    );
    // Full Access is the user's, not anyone's with a token.
    let megan = user_token(&sb.ms, MEGAN, IMAP_SCOPE).await;
    let (mut client, answer) = sb.imap_login(SHARED, &megan).await;
    assert_eq!(answer, ["A1 OK AUTHENTICATE completed."]);
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await,
        [format!("A2 {NOT_CONNECTED}")]
    );
}

#[tokio::test]
async fn a_mailbox_the_token_may_not_open_logs_in_then_refuses_every_mailbox_command() {
    let sb = start().await;
    let token = user_token(&sb.ms, OPS, IMAP_SCOPE).await;
    for mailbox in [SHARED, MEGAN, "nobody@contoso.example"] {
        let (mut client, answer) = sb.imap_login(mailbox, &token).await;
        assert_eq!(answer, ["A1 OK AUTHENTICATE completed."], "{mailbox}");
        // CAPABILITY still works; the first mailbox command is refused, the
        // second too, with BYE, and the connection closes.
        assert_eq!(client.imap("A2", "CAPABILITY").await.len(), 2);
        assert_eq!(
            client.imap("A3", "EXAMINE INBOX").await,
            [format!("A3 {NOT_CONNECTED}")]
        );
        assert_eq!(
            client.imap("A4", "NAMESPACE").await,
            [format!("A4 {NOT_CONNECTED}")]
        );
        assert_eq!(client.line().await.unwrap(), "* BYE Connection closed. 14");
        assert!(client.closed().await, "{mailbox}");
    }
    let outcomes: Vec<&str> = sb.ex.logins().iter().map(|l| l.outcome).collect();
    assert_eq!(outcomes, ["not_connected"; 3]);
}

#[tokio::test]
async fn tokens_that_do_not_count_fail_authenticate() {
    let sb = start().await;
    let expired = user_token(&sb.ms, OPS, IMAP_SCOPE).await;
    sb.ms.expire_access_tokens();
    let smtp_only = user_token(&sb.ms, OPS, SMTP_SCOPE).await;
    let graph = user_token(&sb.ms, OPS, "User.Read").await;
    for token in ["EwA-never-issued".to_string(), smtp_only, graph, expired] {
        let (_, answer) = sb.imap_login(OPS, &token).await;
        assert_eq!(answer, ["A1 NO AUTHENTICATE failed."], "{token}");
    }
    let (mut client, _) = sb.imap().await;
    assert_eq!(
        client
            .imap("A1", "AUTHENTICATE XOAUTH2 bm90IGEgc2FzbCByZXNwb25zZQ==")
            .await,
        ["A1 NO AUTHENTICATE failed."]
    );
    // After a failed login the session is still not authenticated.
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await,
        ["A2 BAD Command received in Invalid state."]
    );
    let outcomes: Vec<&str> = sb.ex.logins().iter().map(|l| l.outcome).collect();
    assert_eq!(
        outcomes,
        [
            "bad_token",
            "bad_token",
            "bad_token",
            "bad_token",
            "malformed"
        ]
    );
}

#[tokio::test]
async fn authenticate_without_initial_response_continues_with_a_plus() {
    let sb = start().await;
    let token = user_token(&sb.ms, OPS, IMAP_SCOPE).await;
    let (mut client, _) = sb.imap().await;
    client.send("A1 AUTHENTICATE XOAUTH2").await;
    assert_eq!(client.line().await.unwrap(), "+ ");
    client.send(&xoauth2(OPS, &token)).await;
    assert_eq!(
        client.line().await.unwrap(),
        "A1 OK AUTHENTICATE completed."
    );
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await.last().unwrap(),
        "A2 OK [READ-ONLY] EXAMINE completed."
    );
    // A client may cancel the exchange with "*".
    let (mut client, _) = sb.imap().await;
    client.send("B1 AUTHENTICATE XOAUTH2").await;
    assert_eq!(client.line().await.unwrap(), "+ ");
    client.send("*").await;
    assert_eq!(
        client.line().await.unwrap(),
        "B1 NO The AUTH protocol exchange was canceled by the client."
    );
}

#[tokio::test]
async fn oauthbearer_is_taken_only_while_offered() {
    let sb = start().await;
    let token = user_token(&sb.ms, OPS, IMAP_SCOPE).await;
    let (mut client, _) = sb.imap().await;
    let command = format!("AUTHENTICATE OAUTHBEARER {}", oauthbearer(OPS, &token));
    assert_eq!(
        client.imap("A1", &command).await,
        ["A1 BAD Command Argument Error. 11"]
    );

    sb.ex.set_offers_oauthbearer(true);
    let (mut client, _) = sb.imap().await;
    assert!(client.imap("A0", "CAPABILITY").await[0].contains(" AUTH=XOAUTH2 AUTH=OAUTHBEARER "));
    assert_eq!(
        client.imap("A1", &command).await,
        ["A1 OK AUTHENTICATE completed."]
    );
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await.last().unwrap(),
        "A2 OK [READ-ONLY] EXAMINE completed."
    );
    // Without SASL-IR, and for a mailbox the token may not open.
    let (mut client, _) = sb.imap().await;
    client.send("B1 AUTHENTICATE OAUTHBEARER").await;
    assert_eq!(client.line().await.unwrap(), "+ ");
    client.send(&oauthbearer(SHARED, &token)).await;
    assert_eq!(
        client.line().await.unwrap(),
        "B1 OK AUTHENTICATE completed."
    );
    assert_eq!(
        client.imap("B2", "EXAMINE INBOX").await,
        [format!("B2 {NOT_CONNECTED}")]
    );
    let logins = sb.ex.logins();
    assert_eq!(
        logins
            .iter()
            .map(|l| (l.mechanism, l.outcome))
            .collect::<Vec<_>>(),
        [("OAUTHBEARER", "ok"), ("OAUTHBEARER", "not_connected")]
    );
}

#[tokio::test]
async fn an_app_token_opens_only_the_mailboxes_granted_to_its_directory() {
    let sb = start().await;
    let token = app_token(&sb.ms, "https://outlook.office.com").await;
    sb.ex.grant_app_access(SHARED, CONTOSO);
    sb.ex.grant_app_access(MEGAN, FABRIKAM);
    let (mut client, answer) = sb.imap_login(SHARED, &token).await;
    assert_eq!(answer, ["A1 OK AUTHENTICATE completed."]);
    assert_eq!(
        client.imap("A2", "EXAMINE INBOX").await.last().unwrap(),
        "A2 OK [READ-ONLY] EXAMINE completed."
    );
    // Not granted, or granted to the app in another directory.
    for mailbox in [OPS, MEGAN] {
        let (mut client, answer) = sb.imap_login(mailbox, &token).await;
        assert_eq!(answer, ["A1 OK AUTHENTICATE completed."]);
        assert_eq!(
            client.imap("A2", "EXAMINE INBOX").await,
            [format!("A2 {NOT_CONNECTED}")]
        );
    }
    // An app token for Graph carries no IMAP role.
    let graph = app_token(&sb.ms, "https://graph.microsoft.com").await;
    let (_, answer) = sb.imap_login(SHARED, &graph).await;
    assert_eq!(answer, ["A1 NO AUTHENTICATE failed."]);
}

#[tokio::test]
async fn passwords_are_refused_as_basic_authentication_is_off() {
    let sb = start().await;
    let (mut client, _) = sb.imap().await;
    assert_eq!(
        client.imap("A1", "LOGIN ops@contoso.example secret").await,
        ["A1 NO LOGIN failed."]
    );
    let plain = STANDARD.encode("\0ops@contoso.example\0secret");
    assert_eq!(
        client
            .imap("A2", &format!("AUTHENTICATE PLAIN {plain}"))
            .await,
        ["A2 NO AUTHENTICATE failed."]
    );
    let logins = sb.ex.logins();
    assert_eq!(
        logins
            .iter()
            .map(|l| (l.mechanism, l.username.as_str(), l.outcome))
            .collect::<Vec<_>>(),
        [
            ("LOGIN", OPS, "basic_auth_disabled"),
            ("PLAIN", OPS, "basic_auth_disabled")
        ]
    );
}

#[tokio::test]
async fn the_third_refused_imap_command_closes_the_session() {
    let sb = start().await;
    let (mut client, _) = sb.imap().await;
    assert_eq!(
        client.imap("A1", "EXAMINE INBOX").await,
        ["A1 BAD Command received in Invalid state."]
    );
    assert_eq!(
        client.imap("A2", "FROBNICATE").await,
        ["A2 BAD Command Error. 12"]
    );
    assert_eq!(
        client.imap("A3", "AUTHENTICATE").await,
        ["A3 BAD Command Argument Error. 12"]
    );
    assert_eq!(client.line().await.unwrap(), "* BYE Connection closed. 14");
    assert!(client.closed().await);
}

// ---------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn smtp_offers_starttls_and_auth_only_over_tls() {
    let sb = start().await;
    let (mut client, greeting) = sb.smtp().await;
    assert!(
        greeting.starts_with(
            "220 SBX1PR01CA0001.sandbox.invalid Microsoft ESMTP MAIL Service ready at "
        ),
        "{greeting}"
    );
    client.send("EHLO client.example").await;
    assert_eq!(
        client.reply().await,
        [
            "250-SBX1PR01CA0001.sandbox.invalid Hello [127.0.0.1]",
            "250-SIZE 157286400",
            "250-PIPELINING",
            "250-DSN",
            "250-ENHANCEDSTATUSCODES",
            "250-STARTTLS",
            "250-8BITMIME",
            "250-BINARYMIME",
            "250-CHUNKING",
            "250 SMTPUTF8",
        ]
    );
    let refused = client.smtp(&format!("MAIL FROM:<{OPS}>")).await;
    assert!(
        refused.starts_with(
            "451 5.7.3 STARTTLS is required to send mail [SBX1PR01CA0001.SANDBOX.INVALID "
        ),
        "{refused}"
    );
    let refused = client.smtp("AUTH XOAUTH2").await;
    assert!(
        refused.starts_with("504 5.7.4 Unrecognized authentication type ["),
        "{refused}"
    );
    assert_eq!(client.smtp("NOOP").await, "250 2.0.0 OK");

    let (mut client, ehlo) = sb.smtp_secured().await;
    assert_eq!(ehlo[5], "250-AUTH LOGIN XOAUTH2");
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")));
    let refused = client.smtp(&format!("MAIL FROM:<{OPS}>")).await;
    assert!(
        refused.starts_with("530 5.7.57 Client not authenticated to send mail. ["),
        "{refused}"
    );
    assert_eq!(
        client.smtp("QUIT").await,
        "221 2.0.0 Service closing transmission channel"
    );
    assert!(client.closed().await);
}

#[tokio::test]
async fn a_user_authenticates_and_sends_as_themselves() {
    let sb = start().await;
    let token = user_token(&sb.ms, OPS, SMTP_SCOPE).await;
    let (mut client, reply) = sb.smtp_login(OPS, &token).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    assert_eq!(
        client
            .smtp("MAIL FROM:<Ops@Contoso.example> SIZE=100")
            .await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        client.smtp("RCPT TO:<someone@example.org>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        client.smtp("DATA").await,
        "354 Start mail input; end with <CRLF>.<CRLF>"
    );
    client.send("Subject: hi\r\n\r\nhello").await;
    assert!(client.smtp(".").await.starts_with("250 2.0.0 OK <"));
    assert_eq!(sb.ex.messages_submitted(), 1);
    assert_eq!(
        client.smtp("QUIT").await,
        "221 2.0.0 Service closing transmission channel"
    );
    assert_eq!(sb.ex.logins(), [login("smtp", OPS, "ok")]);
}

#[tokio::test]
async fn auth_xoauth2_without_initial_response_answers_334_first() {
    let sb = start().await;
    let token = user_token(&sb.ms, OPS, SMTP_SCOPE).await;
    let (mut client, _) = sb.smtp_secured().await;
    assert_eq!(client.smtp("AUTH XOAUTH2").await, "334 ");
    assert_eq!(
        client.smtp(&xoauth2(OPS, &token)).await,
        "235 2.7.0 Authentication successful"
    );
}

#[tokio::test]
async fn sending_as_a_shared_mailbox_needs_send_as() {
    let sb = start().await;
    sb.ex.grant_full_access(SHARED, OPS);
    let token = user_token(&sb.ms, OPS, SMTP_SCOPE).await;
    let (mut client, _) = sb.smtp_login(OPS, &token).await;
    let refused = client.smtp(&format!("MAIL FROM:<{SHARED}>")).await;
    assert!(
        refused.starts_with(
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender ["
        ),
        "{refused}"
    );
    assert_eq!(sb.ex.logins(), [login("smtp", OPS, "send_as_denied")]);

    sb.ex.grant_send_as(SHARED, OPS);
    let (mut client, _) = sb.smtp_login(OPS, &token).await;
    assert_eq!(
        client.smtp(&format!("MAIL FROM:<{SHARED}>")).await,
        "250 2.1.0 Sender OK"
    );
    // Exchange refuses SMTP AUTH as the shared mailbox itself.
    let (_, reply) = sb.smtp_login(SHARED, &token).await;
    assert!(
        reply.starts_with("535 5.7.3 Authentication unsuccessful ["),
        "{reply}"
    );
    assert_eq!(sb.ex.logins()[2], login("smtp", SHARED, "wrong_user"));
}

#[tokio::test]
async fn smtp_auth_disabled_for_the_mailbox_refuses_the_login() {
    let sb = start().await;
    sb.ex.set_smtp_auth_disabled("OPS@contoso.example", true);
    let token = user_token(&sb.ms, OPS, SMTP_SCOPE).await;
    let (_, reply) = sb.smtp_login(OPS, &token).await;
    assert!(
        reply.starts_with("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. ["),
        "{reply}"
    );
    assert_eq!(sb.ex.logins(), [login("smtp", OPS, "smtp_auth_disabled")]);
    // A bad token is refused before the setting is looked at.
    let (_, reply) = sb.smtp_login(OPS, "EwA-never-issued").await;
    assert!(
        reply.starts_with("535 5.7.3 Authentication unsuccessful ["),
        "{reply}"
    );
    sb.ex.set_smtp_auth_disabled(OPS, false);
    let (_, reply) = sb.smtp_login(OPS, &token).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
}

#[tokio::test]
async fn smtp_tokens_that_do_not_count_are_refused() {
    let sb = start().await;
    let expired = user_token(&sb.ms, OPS, SMTP_SCOPE).await;
    sb.ms.expire_access_tokens();
    let imap_only = user_token(&sb.ms, OPS, IMAP_SCOPE).await;
    for token in [imap_only, expired, "EwA-never-issued".to_string()] {
        let (_, reply) = sb.smtp_login(OPS, &token).await;
        assert!(
            reply.starts_with("535 5.7.3 Authentication unsuccessful ["),
            "{reply}"
        );
    }
    let (mut client, _) = sb.smtp_secured().await;
    assert!(client
        .smtp("AUTH XOAUTH2 %%%")
        .await
        .starts_with("535 5.7.3 Authentication unsuccessful ["));
    let outcomes: Vec<&str> = sb.ex.logins().iter().map(|l| l.outcome).collect();
    assert_eq!(
        outcomes,
        ["bad_token", "bad_token", "bad_token", "malformed"]
    );
}

#[tokio::test]
async fn an_app_token_authenticates_as_its_granted_mailboxes_and_sends_as_with_send_as() {
    let sb = start().await;
    let token = app_token(&sb.ms, "https://outlook.office.com").await;
    sb.ex.grant_app_access(SHARED, CONTOSO);
    let (mut client, reply) = sb.smtp_login(SHARED, &token).await;
    assert_eq!(reply, "235 2.7.0 Authentication successful");
    assert_eq!(
        client.smtp(&format!("MAIL FROM:<{SHARED}>")).await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(client.smtp("RSET").await, "250 2.0.0 Resetting");
    assert!(client
        .smtp(&format!("MAIL FROM:<{OPS}>"))
        .await
        .starts_with("550 5.7.60 "));
    sb.ex.grant_app_send_as(OPS, CONTOSO);
    assert_eq!(
        client.smtp(&format!("MAIL FROM:<{OPS}>")).await,
        "250 2.1.0 Sender OK"
    );
    // A mailbox not granted to the app.
    let (_, reply) = sb.smtp_login(MEGAN, &token).await;
    assert!(reply.starts_with("535 5.7.3 "), "{reply}");
    let outcomes: Vec<&str> = sb.ex.logins().iter().map(|l| l.outcome).collect();
    assert_eq!(outcomes, ["send_as_denied", "wrong_user"]);
}

#[tokio::test]
async fn auth_login_is_refused_as_basic_authentication() {
    let sb = start().await;
    let (mut client, _) = sb.smtp_secured().await;
    assert_eq!(client.smtp("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(client.smtp(&STANDARD.encode(OPS)).await, "334 UGFzc3dvcmQ6");
    let refused = client.smtp(&STANDARD.encode("secret")).await;
    assert!(
        refused.starts_with(
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled. ["
        ),
        "{refused}"
    );
    assert!(client
        .smtp("AUTH PLAIN AGEAYg==")
        .await
        .starts_with("504 5.7.4 Unrecognized authentication type ["));
    assert!(client
        .smtp("XYZZY")
        .await
        .starts_with("500 5.3.3 Unrecognized command 'XYZZY' ["));
    assert_eq!(sb.ex.logins()[0].outcome, "basic_auth_disabled");
}

// ---------------------------------------------------------------------------
// Robustness, timeouts, shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn arbitrary_bytes_and_long_lines_do_not_hurt_the_servers() {
    let sb = start().await;
    let (mut client, _) = sb.imap().await;
    client.send_bytes(b"\xff\xfe\x00 BAD\r\n").await;
    assert_eq!(client.line().await.unwrap(), "??\0 BAD Command Error. 11");
    client.send_bytes(b"\r\n").await;
    assert_eq!(client.line().await.unwrap(), "* BAD Command Error. 12");
    client.send_bytes(&vec![b'a'; 70 * 1024]).await;
    assert_eq!(client.line().await.unwrap(), "* BAD Command Error. 12");
    assert_eq!(client.line().await.unwrap(), "* BYE Connection closed. 14");
    assert!(client.closed().await);

    let (mut client, _) = sb.smtp().await;
    client.send_bytes(b"\x00\x01\x02\xff garbage\r\n").await;
    assert!(client
        .line()
        .await
        .unwrap()
        .starts_with("500 5.3.3 Unrecognized command '"));
    client.send_bytes(&vec![b'x'; 70 * 1024]).await;
    assert!(client
        .line()
        .await
        .unwrap()
        .starts_with("500 5.3.3 Line too long ["));
    assert!(client.closed().await);

    // Not TLS at all, on the IMAP port: dropped, and the server goes on.
    let mut raw = TcpStream::connect(sb.ex.imap_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "closed at once");
    assert!(!String::from_utf8_lossy(&answer).contains("* OK"));
    let (_, greeting) = sb.imap().await;
    assert!(greeting.starts_with("* OK "));
}

#[tokio::test]
async fn silent_clients_are_disconnected() {
    let sb = start().await;
    sb.ex.set_idle_timeout(Duration::from_millis(200));
    let (mut imap, _) = sb.imap().await;
    let (mut smtp, _) = sb.smtp().await;
    assert_eq!(imap.line().await.unwrap(), "* BYE Connection is closed. 13");
    assert!(imap.closed().await);
    assert!(smtp
        .line()
        .await
        .unwrap()
        .starts_with("421 4.4.1 Connection timed out ["));
    assert!(smtp.closed().await);
}

#[tokio::test]
async fn the_certificate_chains_to_the_ca_for_localhost_and_127_0_0_1() {
    let sb = start().await;
    let pem = sb.ex.ca_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let tcp = TcpStream::connect(sb.ex.imap_addr()).await.unwrap();
    let ip = ServerName::try_from("127.0.0.1").unwrap();
    let mut client = Client::new(sb.tls.connect(ip, tcp).await.unwrap());
    assert!(client.line().await.unwrap().starts_with("* OK "));
    // Another server's CA is not trusted.
    let other = FakeExchange::start(sb.ms.clone()).await.unwrap();
    let tcp = TcpStream::connect(other.imap_addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    assert!(sb.tls.connect(name, tcp).await.is_err());
}

#[tokio::test]
async fn dropping_the_server_closes_its_connections_and_ports() {
    let sb = start().await;
    let (mut imap, _) = sb.imap().await;
    let (mut smtp, _) = sb.smtp().await;
    let (imap_addr, smtp_addr) = (sb.ex.imap_addr(), sb.ex.smtp_addr());
    sb.ex.shutdown();
    assert!(imap.closed().await);
    assert!(smtp.closed().await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(imap_addr).await.is_err());
    assert!(TcpStream::connect(smtp_addr).await.is_err());
}
