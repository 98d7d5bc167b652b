//! The fuzz targets' bodies, one function per target; each `src/bin/*.rs`
//! hands AFL++'s input to one of them. A function panics (and so AFL++
//! records a crash) when mailconnect panics or breaks a property that
//! must hold for every input:
//!
//! - `state`: the OAuth state verifier. The input is a raw token, or a
//!   header and claims that the harness signs with the right key, so the
//!   fuzzer reaches the claim checks that a forger never could. Only an
//!   HS256 state with our audience and a future `exp` verifies.
//! - `caller_jwt`: callers' `Authorization` header, the same way. Only an
//!   HS256 token with acceptable `sub`, `tenant_id` and a future `exp`
//!   authenticates, and it carries exactly its claims.
//! - `callback`: the callback's raw query, then its state; the same text
//!   as a `return_to`: accepted, it keeps every redirect on this host.
//! - `verify`: a scripted IMAP or SMTP server for the verify route. The
//!   login ends with a bounded report that holds no control character and
//!   no secret we sent.
//! - `sasl`: mailbox addresses and the XOAUTH2/OAUTHBEARER strings built
//!   from them decode back to exactly their parts.
//! - `config`: an environment of the variables DESIGN.md lists. It is a
//!   configuration or one line that names a variable.

use std::sync::LazyLock;

use axum::http::HeaderValue;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use mailconnect::config::{Config, Env};
use mailconnect::domain::{MailboxAddress, ReturnPath};
use mailconnect::core::flow::CallbackQuery;
use mailconnect::http::auth::{verify_bearer, Role};
use mailconnect::oauth::state::{StateError, StateSigner};
use mailconnect::oauth::{MailServer, TlsMode};
use mailconnect::tls::ExtraRoots;
use mailconnect::verify::{LoginReport, Mechanism, Verifier};
use mailconnect::xoauth2::{oauthbearer, xoauth2};
use secrecy::{ExposeSecret, SecretString};

/// The key the harness signs with (states and caller JWTs alike).
pub const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789";
/// The state audience, as `oauth::state` sets it.
const STATE_AUDIENCE: &str = "mailconnect:oauth-state";
/// "Now" for the state checks (caller JWTs use the clock: jsonwebtoken does).
pub const NOW: i64 = 1_800_000_000;

static SIGNER: LazyLock<StateSigner> =
    LazyLock::new(|| StateSigner::new(&SecretString::from(SECRET)));
static CALLER_KEY: LazyLock<DecodingKey> =
    LazyLock::new(|| DecodingKey::from_secret(SECRET.as_bytes()));

/// `header.payload.signature` signed HS256 with [`SECRET`], whatever the
/// header claims: a token signed with the right key under a wrong `alg`
/// must still be refused.
fn sign_raw(header: &[u8], payload: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HS256 signs anything");
    format!("{message}.{sig}")
}

/// Whether `token` is `text.signature` with our HS256 signature of `text`.
fn genuinely_signed(token: &str) -> bool {
    let Some((text, sig)) = token.rsplit_once('.') else {
        return false;
    };
    jsonwebtoken::crypto::sign(
        text.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .is_ok_and(|s| s == sig)
}

/// Splits the input into a mode byte and a raw token or a signed one.
enum Token {
    Raw(String),
    /// Signed with the right key; the header's `alg` and whether the
    /// payload is a JSON object as the harness saw them.
    Signed {
        token: String,
        alg: Option<String>,
        payload: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

/// The JSON the harness reads from a header or payload. Lossy: serde_json
/// skips a field the target type does not name without checking its UTF-8
/// (first run: states with `"x": "\xff"` verified and the harness, reading
/// strictly, called that a forgery).
fn json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Option<T> {
    serde_json::from_str(&String::from_utf8_lossy(raw)).ok()
}

fn token(data: &[u8]) -> Option<Token> {
    let (&mode, rest) = data.split_first()?;
    Some(match mode % 3 {
        0 => Token::Raw(String::from_utf8_lossy(rest).into_owned()),
        1 => Token::Signed {
            token: sign_raw(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
            alg: Some("HS256".into()),
            payload: json(rest),
        },
        _ => {
            let at = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let (header, payload) = (&rest[..at], rest.get(at + 1..).unwrap_or_default());
            let alg = json::<serde_json::Value>(header)
                .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
            Token::Signed {
                token: sign_raw(header, payload),
                alg,
                payload: json(payload),
            }
        }
    })
}

pub fn state(data: &[u8]) {
    let Some(t) = token(data) else { return };
    match t {
        Token::Raw(raw) => {
            // Only a token carrying our own signature of its text verifies.
            if SIGNER.verify(&raw, NOW) != Err(StateError::Invalid) {
                assert!(
                    genuinely_signed(&raw),
                    "a state verified without our signature"
                );
            }
        }
        Token::Signed {
            token,
            alg,
            payload,
        } => {
            let outcome = SIGNER.verify(&token, NOW);
            let claims = match &outcome {
                Ok(c) => {
                    assert!(c.exp > NOW);
                    c
                }
                Err(StateError::Expired(c)) => {
                    assert!(c.exp <= NOW);
                    c
                }
                Err(StateError::Invalid) => return,
            };
            assert_eq!(
                alg.as_deref(),
                Some("HS256"),
                "a state verified under another alg"
            );
            assert!(
                payload.is_some(),
                "a state verified from a non-object payload"
            );
            let aud = &payload.unwrap()["aud"];
            assert!(
                aud == STATE_AUDIENCE
                    || aud
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| v == STATE_AUDIENCE)),
                "a state verified without our audience: {aud}"
            );
            assert_eq!(claims.aud, STATE_AUDIENCE);
        }
    }
}

pub fn caller_jwt(data: &[u8]) {
    let Some(t) = token(data) else { return };
    let (token, alg, payload) = match t {
        Token::Raw(raw) => {
            // Raw bytes as the whole header value, then as a bearer token:
            // a caller only with our own signature of the token's text.
            if let Ok(v) = HeaderValue::from_bytes(raw.as_bytes()) {
                if verify_bearer(Some(&v), &CALLER_KEY).is_ok() {
                    let token = raw.get(7..).unwrap_or_default().trim();
                    assert!(raw[..7].eq_ignore_ascii_case("bearer "));
                    assert!(genuinely_signed(token), "a caller without our signature");
                }
            }
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {raw}")) {
                if verify_bearer(Some(&v), &CALLER_KEY).is_ok() {
                    assert!(
                        genuinely_signed(raw.trim()),
                        "a caller without our signature"
                    );
                }
            }
            return;
        }
        Token::Signed {
            token,
            alg,
            payload,
        } => (token, alg, payload),
    };
    let header = HeaderValue::from_str(&format!("Bearer {token}")).expect("base64 is a header");
    let Ok(caller) = verify_bearer(Some(&header), &CALLER_KEY) else {
        return;
    };
    assert_eq!(alg.as_deref(), Some("HS256"), "a caller under another alg");
    let claims = payload.expect("a caller from a non-object payload");
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let tenant = text("tenant_id").expect("a caller without a string tenant_id");
    let sub = text("sub").expect("a caller without a string sub");
    assert_eq!(caller.tenant.as_str(), tenant);
    assert_eq!(caller.user_id, sub);
    assert!(!tenant.is_empty() && tenant.len() <= 200 && !tenant.chars().any(char::is_control));
    assert!(!sub.is_empty() && sub.len() <= 200);
    let role = match text("role").as_deref() {
        Some("admin") => Some(Role::Admin),
        Some("service") => Some(Role::Service),
        _ => None,
    };
    assert_eq!(caller.role, role);
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_f64())
        .expect("a caller without exp");
    // jsonwebtoken accepts exp == now; a second of slack for the clock.
    assert!(
        exp + 1.0 >= mailconnect::now() as f64,
        "a caller with a past exp"
    );
}

pub fn callback(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let q = CallbackQuery::parse(Some(&raw));
    // The first value of each name, as the form decoder sees it.
    let first = |name: &str| {
        url::form_urlencoded::parse(raw.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(q.code, first("code"));
    assert_eq!(q.state, first("state"));
    assert_eq!(q.error, first("error"));
    assert_eq!(q.error_description, first("error_description"));
    if let Some(s) = &q.state {
        assert_eq!(SIGNER.verify(s, NOW), Err(StateError::Invalid));
    }
    // The same text as a return_to: accepted, every Location built from it
    // (with the query's values as outcome parameters) stays on this host.
    if let Ok(path) = ReturnPath::parse(&raw) {
        let params = [
            ("oauth", q.code.as_deref().unwrap_or("connected")),
            ("reason", q.error.as_deref().unwrap_or("")),
        ];
        let loc = path.location(&params);
        let base = url::Url::parse("https://app.example/page").unwrap();
        assert!(
            loc.starts_with('/') && !loc.starts_with("//") && !loc.contains('\\'),
            "{raw:?} sends the browser to {loc:?}"
        );
        assert_eq!(
            base.join(&loc)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .as_deref(),
            Some("app.example"),
            "{raw:?} sends the browser to {loc:?}"
        );
    }
}

const ACCESS_TOKEN: &str = "EwBwA8l6BAAUs5+HQn0N+h2FxWzLS31ZgQVuHsYAAaYVZ1OlKpM0Lx4oE8";
const USER: &str = "ops@contoso.example";
const HOST: &str = "mail.contoso.example";

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| Verifier::new(&ExtraRoots::default()));
static SECRETS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let user = MailboxAddress::parse(USER).unwrap();
    let token = SecretString::from(ACCESS_TOKEN);
    let mut out = vec![
        ACCESS_TOKEN.to_owned(),
        xoauth2(&user, &token).expose_secret().to_owned(),
    ];
    for port in [993, 587] {
        out.push(
            oauthbearer(&user, HOST, port, &token)
                .expose_secret()
                .to_owned(),
        );
    }
    out
});

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
}

/// Replays `script` as the server of an IMAP (`imap`) or SMTP login.
pub fn replay(imap: bool, tls: TlsMode, allowed: &[Mechanism], script: &[u8]) -> LoginReport {
    let user = MailboxAddress::parse(USER).unwrap();
    let token = SecretString::from(ACCESS_TOKEN);
    let creds = mailconnect::verify::Credentials {
        user: &user,
        token: &token,
    };
    let server = MailServer {
        host: HOST.into(),
        port: if imap { 993 } else { 587 },
        tls,
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            if imap {
                VERIFIER.replay_imap(script, &server, &creds, allowed).await
            } else {
                VERIFIER.replay_smtp(script, &server, &creds, allowed).await
            }
        })
    })
}

pub fn verify(data: &[u8]) {
    let Some((&mode, script)) = data.split_first() else {
        return;
    };
    let imap = mode & 1 == 0;
    let tls = match (mode >> 1) & 3 {
        0 | 1 => TlsMode::None,
        2 => TlsMode::Starttls,
        _ => TlsMode::Implicit,
    };
    let allowed: &[Mechanism] = match (mode >> 3) & 3 {
        0 => &Mechanism::PREFERRED,
        1 => &[Mechanism::Xoauth2],
        2 => &[Mechanism::Oauthbearer],
        _ => &[],
    };
    let r = replay(imap, tls, allowed, script);
    assert!(r.reply.chars().count() <= 301, "an over-long reply");
    assert!(
        !r.reply.chars().any(char::is_control),
        "a control character in the reply"
    );
    for line in std::iter::once(&r.reply).chain(&r.transcript) {
        let visible: String = line.chars().filter(|c| !c.is_control()).collect();
        for s in SECRETS.iter() {
            assert!(!visible.contains(s.as_str()), "a secret in {line:?}");
        }
    }
    if r.ok {
        assert!(r.mechanism.is_some());
        assert!(allowed.contains(&r.mechanism.unwrap()));
    }
}

pub fn sasl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (addr, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let (token, host) = rest.split_once('\n').unwrap_or((rest, "imap.example.com"));
    let Ok(address) = MailboxAddress::parse(addr) else {
        return;
    };
    // Parsed once, it stays what it is.
    assert_eq!(MailboxAddress::parse(address.as_str()), Ok(address.clone()));
    assert!(!address
        .as_str()
        .chars()
        .any(|c| c.is_whitespace() || c.is_control()));
    assert!(address.as_str().len() <= 254);
    let secret = SecretString::from(token.to_owned());

    let raw = STANDARD
        .decode(xoauth2(&address, &secret).expose_secret())
        .expect("XOAUTH2 is base64");
    let expected = format!("user={}\x01auth=Bearer {token}\x01\x01", address.as_str());
    assert_eq!(raw, expected.as_bytes());
    // The address cannot end the user field early.
    assert!(!address.as_str().contains('\x01'));

    let port = data.len() as u16;
    let raw = STANDARD
        .decode(oauthbearer(&address, host, port, &secret).expose_secret())
        .expect("OAUTHBEARER is base64");
    let raw = String::from_utf8(raw).expect("built from text");
    let gs2 = raw.split('\x01').next().unwrap();
    let authzid = gs2
        .strip_prefix("n,a=")
        .and_then(|a| a.strip_suffix(','))
        .expect("a GS2 header n,a=…,");
    assert!(
        !authzid.contains(','),
        "an unescaped comma ends the authzid early"
    );
    assert_eq!(
        authzid.replace("=2C", ",").replace("=3D", "="),
        address.as_str()
    );
    assert!(raw.ends_with(&format!("\x01auth=Bearer {token}\x01\x01")));
}

/// The variables of DESIGN.md (`MAILCONNECT_EXTRA_CA_FILE` left out: it
/// names a file to read).
pub const VARS: &[&str] = &[
    "MAILCONNECT_BIND",
    "DATABASE_URL",
    "JWT_SECRET",
    "OAUTH_STATE_SECRET",
    "TOKEN_ENCRYPTION_KEYS",
    "OAUTH_RETURN_URL",
    "MICROSOFT_OAUTH_CLIENT_ID",
    "MICROSOFT_OAUTH_CLIENT_SECRET",
    "MICROSOFT_OAUTH_TENANT_ID",
    "MICROSOFT_OAUTH_REDIRECT_URI",
    "MICROSOFT_OAUTH_AUTHORITY",
    "MICROSOFT_GRAPH_URL",
    "GOOGLE_OAUTH_CLIENT_ID",
    "GOOGLE_OAUTH_CLIENT_SECRET",
    "GOOGLE_OAUTH_REDIRECT_URI",
    "GOOGLE_OAUTH_AUTH_URL",
    "GOOGLE_OAUTH_TOKEN_URL",
    "GOOGLE_OAUTH_USERINFO_URL",
    "GOOGLE_OAUTH_REVOKE_URL",
    "GOOGLE_OAUTH_JWKS_URL",
    "OIDC_OAUTH_ISSUER",
    "OIDC_OAUTH_CLIENT_ID",
    "OIDC_OAUTH_CLIENT_SECRET",
    "OIDC_OAUTH_REDIRECT_URI",
    "OIDC_OAUTH_SCOPES",
    "OIDC_OAUTH_RESOURCE",
    "OIDC_IMAP_HOST",
    "OIDC_SMTP_HOST",
    "OIDC_IMAP_TLS",
    "OIDC_SMTP_TLS",
    "MAILCONNECT_REFRESHER",
    "MAILCONNECT_REFRESH_LEAD_SECS",
    "MAILCONNECT_REFRESH_IDLE_SECS",
    "MAILCONNECT_REFRESH_LEASE_SECS",
    "MAILCONNECT_REFRESH_CONCURRENCY",
    "MAILCONNECT_REFRESH_POLL_SECS",
    "MAILCONNECT_WEBHOOK_URL",
    "MAILCONNECT_WEBHOOK_SECRET",
    "MAILCONNECT_WEBHOOK_POLL_MS",
    "MAILCONNECT_WEBHOOK_BACKOFF_BASE_MS",
    "MAILCONNECT_WEBHOOK_BACKOFF_CAP_MS",
    "MAILCONNECT_WEBHOOK_GIVE_UP_SECS",
    "MAILCONNECT_WEBHOOK_TIMEOUT_MS",
];

/// Secrets whose value may be anything non-empty.
const SECRET_VARS: [&str; 5] = [
    "JWT_SECRET",
    "OAUTH_STATE_SECRET",
    "MICROSOFT_OAUTH_CLIENT_SECRET",
    "GOOGLE_OAUTH_CLIENT_SECRET",
    "OIDC_OAUTH_CLIENT_SECRET",
];

/// The input is `NAME=value` lines; a line whose name is not listed names
/// the variable at index (first byte mod count) instead, so the fuzzer
/// need not spell names. The first byte's low bit is dev mode.
pub fn config(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut vars = std::collections::HashMap::new();
    for line in text.split('\n') {
        let (name, value) = line.split_once('=').unwrap_or(("", line));
        let name = match VARS.iter().find(|v| **v == name) {
            Some(v) => *v,
            None => VARS[name.bytes().next().unwrap_or(0) as usize % VARS.len()],
        };
        vars.insert(name, value.to_owned());
    }
    let env = Env(|k: &str| vars.get(k).cloned());
    match Config::from_env(&env, mode & 1 == 1) {
        Ok(config) => {
            // Debug output does not depend on a secret's value: the same
            // environment with the secret replaced shows the same text.
            let shown = format!("{config:?}");
            for v in SECRET_VARS {
                if vars.get(v).is_some_and(|s| !s.trim().is_empty()) {
                    let mut other = vars.clone();
                    other.insert(v, "replaced-secret".into());
                    let env = Env(|k: &str| other.get(k).cloned());
                    let again = Config::from_env(&env, mode & 1 == 1).expect("same validity");
                    assert_eq!(shown, format!("{again:?}"), "{v} shows in Debug output");
                }
            }
        }
        Err(e) => {
            let line = e.to_string();
            assert!(VARS.contains(&e.var), "an error naming {}", e.var);
            assert!(line.starts_with(e.var));
            assert!(!line.contains(['\n', '\r']), "more than one line: {line:?}");
        }
    }
}
