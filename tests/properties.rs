//! Property tests of everything that parses what a client, a provider, a
//! mail server or an operator sends: the OAuth state, callers' JWTs, the
//! callback query, the verify route's IMAP/SMTP replies, the XOAUTH2 and
//! OAUTHBEARER strings, and the configuration. Each property holds for
//! every input proptest generates, not just the examples of the unit tests;
//! `fuzz/` runs the same parsers under a coverage-guided fuzzer for longer.
//!
//! Kept fast (a few seconds in all): `PROPTEST_CASES` raises the count.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::HeaderValue;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use mailconnect::config::{Config, Env};
use mailconnect::core::flow::CallbackQuery;
use mailconnect::domain::{MailboxAddress, ReturnPath};
use mailconnect::http::auth::{mint, verify_bearer, Role};
use mailconnect::oauth::state::{StateClaims, StateError, StateSigner};
use mailconnect::oauth::{MailServer, TlsMode};
use mailconnect::tls::ExtraRoots;
use mailconnect::verify::{sanitize_reply, Credentials, LoginReport, Mechanism, Verifier};
use mailconnect::xoauth2::{oauthbearer, xoauth2};
use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};

const SECRET: &str = "property-test-secret-0123456789abcdef";
const NOW: i64 = 1_800_000_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, including control characters and non-ASCII.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// A token-like value: base64url characters and dots, as providers issue.
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.~+/=-]{8,120}"
}

/// Replaces the character at `at` (modulo the length) with another one.
fn tamper(s: &str, at: usize, with: char) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let i = at % chars.len();
    chars[i] = if chars[i] == with {
        if with == 'A' {
            'B'
        } else {
            'A'
        }
    } else {
        with
    };
    chars.into_iter().collect()
}

// ------------------------------------------------------------------ state

fn state_claims() -> impl Strategy<Value = StateClaims> {
    (
        "[a-zA-Z0-9-]{1,40}",
        text(60),
        text(60),
        prop::sample::select(vec!["microsoft", "google", "oidc"]),
        proptest::option::of(text(40)),
        proptest::option::of(text(80)),
        text(120),
        1i64..=600,
    )
        .prop_map(|(jti, tid, sub, prv, acc, ret, sec, ttl)| {
            let mut c = StateSigner::claims(jti, &tid, &sub, prv, NOW);
            c.acc = acc;
            c.ret = ret;
            c.sec = sec;
            c.exp = NOW + ttl;
            c
        })
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a state carries comes back unchanged from its own signature.
    #[test]
    fn a_signed_state_verifies_to_its_claims(claims in state_claims()) {
        let s = StateSigner::new(&SecretString::from(SECRET));
        let token = s.sign(&claims);
        prop_assert_eq!(s.verify(&token, NOW), Ok(claims.clone()));
        // Past its exp it is reported expired, with the same claims.
        prop_assert_eq!(
            s.verify(&token, claims.exp),
            Err(StateError::Expired(Box::new(claims)))
        );
    }

    /// Changing any one character of a state makes it invalid: nothing in
    /// a tampered state is trusted, not even its return address.
    #[test]
    fn a_tampered_state_is_invalid(
        claims in state_claims(),
        at in any::<usize>(),
        with in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()),
    ) {
        let s = StateSigner::new(&SecretString::from(SECRET));
        let token = s.sign(&claims);
        let bad = tamper(&token, at, with);
        prop_assert_eq!(s.verify(&bad, NOW), Err(StateError::Invalid));
    }

    /// A state signed with another secret, or a caller JWT, is not a state.
    #[test]
    fn a_foreign_state_is_invalid(claims in state_claims(), other in "[ -~]{1,64}") {
        prop_assume!(other != SECRET);
        let s = StateSigner::new(&SecretString::from(SECRET));
        let forged = StateSigner::new(&SecretString::from(other)).sign(&claims);
        prop_assert_eq!(s.verify(&forged, NOW), Err(StateError::Invalid));
        let caller = mint(SECRET.as_bytes(), "u", "t", Role::Admin, 60);
        prop_assert_eq!(s.verify(&caller, NOW), Err(StateError::Invalid));
    }

    /// Arbitrary text never verifies and never panics.
    #[test]
    fn arbitrary_text_is_not_a_state(raw in text(300), dotted in "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}") {
        let s = StateSigner::new(&SecretString::from(SECRET));
        prop_assert_eq!(s.verify(&raw, NOW), Err(StateError::Invalid));
        prop_assert_eq!(s.verify(&dotted, NOW), Err(StateError::Invalid));
    }
}

// ------------------------------------------------------------- caller JWT

fn key() -> DecodingKey {
    DecodingKey::from_secret(SECRET.as_bytes())
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

/// What DESIGN.md allows: tenant 1 to 200 bytes without control
/// characters, sub 1 to 200 bytes.
fn valid_caller(tenant: &str, sub: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 200
        && !tenant.chars().any(char::is_control)
        && !sub.is_empty()
        && sub.len() <= 200
}

fn sign_claims(claims: &serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// A token minted with the secret authenticates exactly when its
    /// tenant and sub are acceptable, and carries them unchanged.
    #[test]
    fn a_minted_caller_token_carries_its_claims(
        tenant in text(220),
        sub in text(220),
        admin in any::<bool>(),
    ) {
        let role = if admin { Role::Admin } else { Role::Service };
        let token = mint(SECRET.as_bytes(), &sub, &tenant, role, 300);
        match verify_bearer(Some(&bearer(&token)), &key()) {
            Ok(caller) => {
                prop_assert!(valid_caller(&tenant, &sub));
                prop_assert_eq!(caller.tenant.as_str(), tenant.as_str());
                prop_assert_eq!(caller.user_id, sub);
                prop_assert_eq!(caller.role, Some(role));
            }
            Err(e) => {
                prop_assert!(!valid_caller(&tenant, &sub), "refused: {e:?}");
                prop_assert!(matches!(e, mailconnect::http::error::ApiError::Unauthorized(_)));
            }
        }
    }

    /// Any change to a token, another secret, another algorithm, `none`,
    /// a missing claim or a past `exp` is a 401; an unknown role is a
    /// caller with no role.
    #[test]
    fn only_genuine_current_hs256_tokens_authenticate(
        at in any::<usize>(),
        with in prop::sample::select("ABCabc0189-_.".chars().collect::<Vec<_>>()),
        other in "[ -~]{1,64}",
        role in "[a-z]{0,12}",
        ttl in 1i64..100_000,
    ) {
        prop_assume!(other != SECRET);
        let now = mailconnect::now();
        let claims = serde_json::json!({"sub": "u", "tenant_id": "t", "role": role, "exp": now + ttl});
        let good = sign_claims(&claims, Algorithm::HS256, SECRET.as_bytes());
        let caller = verify_bearer(Some(&bearer(&good)), &key()).unwrap();
        let expected = match role.as_str() {
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        };
        prop_assert_eq!(caller.role, expected);

        let refused = |token: &str| verify_bearer(Some(&bearer(token)), &key()).is_err();
        prop_assert!(refused(&tamper(&good, at, with)));
        prop_assert!(refused(&sign_claims(&claims, Algorithm::HS256, other.as_bytes())));
        prop_assert!(refused(&sign_claims(&claims, Algorithm::HS384, SECRET.as_bytes())));
        prop_assert!(refused(&sign_claims(&claims, Algorithm::HS512, SECRET.as_bytes())));
        let payload = good.split('.').nth(1).unwrap();
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        prop_assert!(refused(&unsigned));
        for missing in ["sub", "tenant_id", "role", "exp"] {
            let mut c = claims.clone();
            c.as_object_mut().unwrap().remove(missing);
            prop_assert!(refused(&sign_claims(&c, Algorithm::HS256, SECRET.as_bytes())), "without {missing}");
        }
        let mut past = claims.clone();
        past["exp"] = serde_json::json!(now - ttl);
        prop_assert!(refused(&sign_claims(&past, Algorithm::HS256, SECRET.as_bytes())));
    }

    /// Whatever bytes arrive in the header: an answer, never a panic, and
    /// never a caller unless it is a genuine token.
    #[test]
    fn arbitrary_authorization_headers_are_refused(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(v) = HeaderValue::from_bytes(&raw) {
            prop_assert!(verify_bearer(Some(&v), &key()).is_err());
        }
        prop_assert!(verify_bearer(None, &key()).is_err());
    }
}

// --------------------------------------------------------- callback query

proptest! {
    #![proptest_config(config())]

    /// Each of `code`, `state`, `error`, `error_description` is the first
    /// value given for its name, however the query is encoded; other names
    /// are ignored.
    #[test]
    fn the_callback_query_keeps_the_first_value_of_each_name(
        pairs in proptest::collection::vec(
            (prop::sample::select(vec!["code", "state", "error", "error_description", "other", "", "stat", "code "]), text(40)),
            0..12),
    ) {
        let raw = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let q = CallbackQuery::parse(Some(&raw));
        let first = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        prop_assert_eq!(q.code, first("code"));
        prop_assert_eq!(q.state, first("state"));
        prop_assert_eq!(q.error, first("error"));
        prop_assert_eq!(q.error_description, first("error_description"));
    }

    /// Any raw query at all parses (lossily) without a panic.
    #[test]
    fn any_raw_callback_query_parses(raw in text(300)) {
        let _ = CallbackQuery::parse(Some(&raw));
    }
}

// ------------------------------------------------------------ return paths

/// Paths built from the pieces open redirects are made of.
fn return_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9_~!$&'()*+,;=:@-]{1,6}",
        prop::sample::select(vec![
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5C",
            "%252e",
            "\\",
            "?",
            "#",
            "%",
            "@",
            ":",
            "evil.example",
            "http:",
            "%09",
            "\t",
            "\n",
            " ",
            "\u{3000}",
            "é",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
    ];
    (
        prop::sample::select(vec!["/", "//", "/\\", "", "http://", "/%2f"]),
        proptest::collection::vec(piece, 0..10),
    )
        .prop_map(|(start, pieces)| format!("{start}{}", pieces.concat()))
}

/// Whether a browser on `https://app.example/page` that follows
/// `Location: loc` stays on app.example.
fn stays_on_host(loc: &str) -> bool {
    let base = url::Url::parse("https://app.example/page").unwrap();
    loc.starts_with('/')
        && !loc.starts_with("//")
        && !loc.contains('\\')
        && base
            .join(loc)
            .is_ok_and(|u| u.host_str() == Some("app.example"))
}

proptest! {
    #![proptest_config(config())]

    /// Every return path the service accepts sends the browser back to this
    /// host, whatever the outcome parameters, and satisfies the rule the
    /// OpenAPI document states (printable ASCII, one leading `/`, no dot
    /// segment, no encoded dot, slash or backslash in the path).
    #[test]
    fn accepted_return_paths_stay_on_this_host(
        raw in return_path(),
        params in proptest::collection::vec((text(8), text(8)), 0..3),
    ) {
        let Ok(path) = ReturnPath::parse(&raw) else { return Ok(()) };
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let loc = path.location(&pairs);
        prop_assert!(stays_on_host(&loc), "{raw:?} → {loc:?}");
        let before_query = raw.split(['?', '#']).next().unwrap().to_ascii_lowercase();
        prop_assert!(raw.len() <= 2048 && raw.starts_with('/') && !raw.starts_with("//"));
        prop_assert!(raw.chars().all(|c| c.is_ascii_graphic() && c != '\\'));
        prop_assert!(!["%2e", "%2f", "%5c"].iter().any(|e| before_query.contains(e)));
        prop_assert!(!before_query.split('/').any(|s| s == "." || s == ".."));
    }
}

// ------------------------------------------------------- XOAUTH2 / OAUTHBEARER

/// A plausible mailbox address (MailboxAddress accepts a wide set).
fn address() -> impl Strategy<Value = MailboxAddress> {
    (
        "[a-zA-Z0-9._%+=,!#$&'*/?^`{|}~-]{1,40}",
        "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,10}){1,3}",
    )
        .prop_filter_map("not an address", |(l, d)| {
            MailboxAddress::parse(&format!("{l}@{d}")).ok()
        })
}

proptest! {
    #![proptest_config(config())]

    /// XOAUTH2 is exactly `user=A ^A auth=Bearer T ^A ^A`, base64.
    #[test]
    fn xoauth2_decodes_to_its_address_and_token(addr in address(), tok in token()) {
        let sasl = xoauth2(&addr, &SecretString::from(tok.clone()));
        let raw = String::from_utf8(STANDARD.decode(sasl.expose_secret()).unwrap()).unwrap();
        let parts: Vec<&str> = raw.split('\x01').collect();
        let user = format!("user={}", addr.as_str());
        let auth = format!("auth=Bearer {tok}");
        prop_assert_eq!(parts, vec![user.as_str(), auth.as_str(), "", ""]);
    }

    /// OAUTHBEARER (RFC 7628): the GS2 header names the address, escaped
    /// so that it cannot end the header early, then host, port and token.
    #[test]
    fn oauthbearer_decodes_to_its_parts(
        addr in address(),
        host in "[a-z0-9.-]{1,40}",
        port in any::<u16>(),
        tok in token(),
    ) {
        let sasl = oauthbearer(&addr, &host, port, &SecretString::from(tok.clone()));
        let raw = String::from_utf8(STANDARD.decode(sasl.expose_secret()).unwrap()).unwrap();
        let (gs2, rest) = raw.split_once('\x01').unwrap();
        let authzid = gs2.strip_prefix("n,a=").unwrap().strip_suffix(',').unwrap();
        prop_assert!(!authzid.contains(','));
        let unescaped = authzid.replace("=2C", ",").replace("=3D", "=");
        prop_assert_eq!(unescaped.as_str(), addr.as_str());
        let kv: Vec<&str> = rest.split('\x01').collect();
        let (h, p, a) = (format!("host={host}"), format!("port={port}"), format!("auth=Bearer {tok}"));
        prop_assert_eq!(kv, vec![h.as_str(), p.as_str(), a.as_str(), "", ""]);
    }

    /// An address is checked once: what parse accepts parses again to the
    /// same address, is lower case, and holds no whitespace or control
    /// character (so it cannot break a SASL string or a log line).
    #[test]
    fn mailbox_addresses_parse_to_a_fixed_point(raw in text(80), l in "[A-Za-z0-9.+_-]{1,20}", d in "[A-Za-z0-9.-]{1,20}") {
        for candidate in [raw, format!("{l}@{d}")] {
            if let Ok(a) = MailboxAddress::parse(&candidate) {
                prop_assert_eq!(MailboxAddress::parse(a.as_str()), Ok(a.clone()));
                prop_assert!(!a.as_str().chars().any(|c| c.is_whitespace() || c.is_control()));
                prop_assert!(a.as_str().contains('@'));
                prop_assert!(a.as_str().len() <= 254);
            }
        }
    }
}

// ---------------------------------------------------------- verify replies

const ACCESS_TOKEN: &str = "EwBwA8l6BAAUs5+HQn0N+h2FxWzLS31ZgQVuHsYAAaYVZ1OlKpM0Lx4oE8";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn replay(imap: bool, script: &[u8], tls: TlsMode, allowed: &[Mechanism]) -> LoginReport {
    let user = MailboxAddress::parse("ops@contoso.example").unwrap();
    let token = SecretString::from(ACCESS_TOKEN);
    let creds = Credentials {
        user: &user,
        token: &token,
    };
    let server = MailServer {
        host: "mail.contoso.example".into(),
        port: if imap { 993 } else { 587 },
        tls,
    };
    let verifier = Verifier::new(&ExtraRoots::default());
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            if imap {
                verifier.replay_imap(script, &server, &creds, allowed).await
            } else {
                verifier.replay_smtp(script, &server, &creds, allowed).await
            }
        })
        .await
        .expect("a scripted conversation ends at once")
    })
}

/// Every secret the client sent: the token and both initial responses.
fn secrets() -> Vec<String> {
    let user = MailboxAddress::parse("ops@contoso.example").unwrap();
    let token = SecretString::from(ACCESS_TOKEN);
    let mut out = vec![
        ACCESS_TOKEN.to_owned(),
        xoauth2(&user, &token).expose_secret().to_owned(),
    ];
    for port in [993, 587] {
        out.push(
            oauthbearer(&user, "mail.contoso.example", port, &token)
                .expose_secret()
                .to_owned(),
        );
    }
    out
}

/// Lines a server may send, hostile ones included: ours echoed back (with
/// control characters inside), token-like words, challenges, garbage.
fn server_line(imap: bool) -> impl Strategy<Value = Vec<u8>> {
    let secrets = secrets();
    let echoed = (
        prop::sample::select(secrets),
        any::<usize>(),
        prop::sample::select(vec!["\x07", "\x1b", "\x00", "\t", "\x7f", "\u{85}"]),
    )
        .prop_map(|(s, at, ctl)| {
            let at = at % (s.len() + 1);
            format!("{}{ctl}{}", &s[..at], &s[at..])
        });
    let common = prop_oneof![
        echoed
            .clone()
            .prop_map(|s| format!("* NO {s}\r\n").into_bytes()),
        echoed.prop_map(|s| format!("a4 NO [AUTHENTICATIONFAILED] {s}\r\n").into_bytes()),
        Just(
            format!(
                "+ {}\r\n",
                STANDARD.encode(r#"{"status":"401","schemes":"bearer"}"#)
            )
            .into_bytes()
        ),
        Just(
            format!(
                "334 {}\r\n",
                STANDARD.encode(r#"{"status":"invalid_token","scope":"https://mail.google.com/"}"#)
            )
            .into_bytes()
        ),
        proptest::collection::vec(any::<u8>(), 0..80),
        text(80).prop_map(|t| format!("{t}\r\n").into_bytes()),
    ];
    let good = if imap {
        prop::sample::select(vec![
            "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] ready\r\n",
            "* OK ready\r\n",
            "* CAPABILITY IMAP4rev1 STARTTLS AUTH=XOAUTH2\r\n",
            "a1 OK done\r\n",
            "a2 OK begin TLS\r\n",
            "+ \r\n",
            "a4 OK AUTHENTICATE completed\r\n",
            "a4 NO AUTHENTICATE failed\r\n",
            "a5 OK bye\r\n",
            "a5 OK [READ-ONLY] EXAMINE completed.\r\n",
            "a5 BAD User is authenticated but not connected.\r\n",
            "a6 OK bye\r\n",
            "* BYE\r\n",
        ])
        .boxed()
    } else {
        prop::sample::select(vec![
            "220 mx ESMTP ready\r\n",
            "250-mx hello\r\n",
            "250-AUTH LOGIN XOAUTH2 OAUTHBEARER\r\n",
            "250-STARTTLS\r\n",
            "250 SIZE 1000\r\n",
            "235 2.7.0 accepted\r\n",
            "535 5.7.3 Authentication unsuccessful\r\n",
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled\r\n",
            "221 bye\r\n",
            "220 go ahead\r\n",
        ])
        .boxed()
    };
    prop_oneof![good.prop_map(|s| s.as_bytes().to_vec()), common]
}

fn script(imap: bool) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(server_line(imap), 0..14).prop_map(|l| l.concat())
}

fn tls_mode() -> impl Strategy<Value = TlsMode> {
    prop::sample::select(vec![
        TlsMode::None,
        TlsMode::None,
        TlsMode::Starttls,
        TlsMode::Implicit,
    ])
}

fn mechanisms() -> impl Strategy<Value = Vec<Mechanism>> {
    prop::sample::select(vec![
        vec![Mechanism::Oauthbearer, Mechanism::Xoauth2],
        vec![Mechanism::Xoauth2],
        vec![Mechanism::Oauthbearer],
        vec![],
    ])
}

fn assert_report_is_clean(r: &LoginReport) -> Result<(), TestCaseError> {
    prop_assert!(
        r.reply.chars().count() <= 301,
        "reply too long: {}",
        r.reply.len()
    );
    prop_assert!(
        !r.reply.chars().any(char::is_control),
        "control character in {:?}",
        r.reply
    );
    for line in std::iter::once(&r.reply).chain(&r.transcript) {
        // What a log line or the admin sees, with control characters as a
        // terminal or log viewer would drop them.
        let visible: String = line.chars().filter(|c| !c.is_control()).collect();
        for s in secrets() {
            prop_assert!(!visible.contains(&s), "a secret in {:?}", line);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Whatever an IMAP server sends, the login ends with a report at once,
    /// and no secret we sent (nor anything token-like) shows in it, even
    /// when the server echoes it back with control characters inside.
    #[test]
    fn imap_replies_never_leak_or_hang(s in script(true), tls in tls_mode(), allowed in mechanisms()) {
        let r = replay(true, &s, tls, &allowed);
        assert_report_is_clean(&r)?;
        if r.ok {
            prop_assert!(r.mechanism.is_some());
            prop_assert!(r.reply.starts_with("a4 "));
        }
    }

    /// The same for SMTP submission.
    #[test]
    fn smtp_replies_never_leak_or_hang(s in script(false), tls in tls_mode(), allowed in mechanisms()) {
        let r = replay(false, &s, tls, &allowed);
        assert_report_is_clean(&r)?;
        if r.ok {
            prop_assert!(r.mechanism.is_some());
            prop_assert!(r.reply.starts_with("235"));
        }
    }

    /// Arbitrary bytes from a server: still a report, still clean.
    #[test]
    fn arbitrary_server_bytes_end_in_a_report(raw in proptest::collection::vec(any::<u8>(), 0..600), imap in any::<bool>()) {
        let r = replay(imap, &raw, TlsMode::None, &Mechanism::PREFERRED);
        assert_report_is_clean(&r)?;
    }

    /// The sanitizer alone: bounded, no control characters, no secret.
    #[test]
    fn sanitized_replies_hold_no_secret(line in text(400), s in prop::sample::select(secrets()), at in any::<usize>()) {
        let at = at % (s.len() + 1);
        let hostile = format!("{line} {}\u{7}{} {line}", &s[..at], &s[at..]);
        for input in [&line, &hostile] {
            let out = sanitize_reply(input, &[&s]);
            prop_assert!(!out.contains(&s));
            prop_assert!(!out.chars().any(char::is_control));
            prop_assert!(out.chars().count() <= 301);
        }
    }
}

/// A well-behaved server logs in: the replay itself is sound.
#[test]
fn a_well_behaved_server_accepts_the_login() {
    let imap = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER] ready\r\n\
                 a4 OK AUTHENTICATE completed\r\na5 OK [READ-ONLY] EXAMINE completed.\r\na6 OK bye\r\n";
    let r = replay(true, imap, TlsMode::None, &Mechanism::PREFERRED);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.mechanism, Some(Mechanism::Oauthbearer));
    let smtp = b"220 mx ready\r\n250-mx\r\n250 AUTH XOAUTH2\r\n235 2.7.0 ok\r\n221 bye\r\n";
    let r = replay(false, smtp, TlsMode::None, &Mechanism::PREFERRED);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.mechanism, Some(Mechanism::Xoauth2));
}

// ------------------------------------------------------------ configuration

/// The variables the fuzzer sets, with values drawn from plausible and
/// broken ones. `MAILCONNECT_EXTRA_CA_FILE` is left out: it reads a file.
const VARS: &[&str] = &[
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
    "OIDC_OAUTH_CLIENT_KEY",
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
    "MAILCONNECT_REFRESH_WARM_WINDOW_SECS",
    "MAILCONNECT_REFRESH_LEASE_SECS",
    "MAILCONNECT_REFRESH_CONCURRENCY",
    "MAILCONNECT_REFRESH_POLL_SECS",
    "MAILCONNECT_PROVIDER_RATE_LIMIT",
    "MAILCONNECT_WEBHOOK_URL",
    "MAILCONNECT_WEBHOOK_SECRET",
    "MAILCONNECT_WEBHOOK_POLL_MS",
    "MAILCONNECT_WEBHOOK_BACKOFF_BASE_MS",
    "MAILCONNECT_WEBHOOK_BACKOFF_CAP_MS",
    "MAILCONNECT_WEBHOOK_GIVE_UP_SECS",
    "MAILCONNECT_WEBHOOK_TIMEOUT_MS",
];

/// Marks a secret value so a test can look for it in any output.
const MARK: &str = "SeCrEtMaRk";

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:8080",
            "[::1]:0",
            "0.0.0.0:80",
            "sqlite://x.db",
            "postgres://u@h/d",
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "/",
            "//evil.example",
            "https://login.example.com",
            "http://127.0.0.1:9",
            "http://[::1]:1/x",
            "common",
            "organizations",
            "contoso.onmicrosoft.com",
            "11111111-2222-3333-4444-555555555555",
            "mail.example.com:993",
            "localhost:143",
            "implicit",
            "starttls",
            "none",
            "on",
            "off",
            "openid email",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "60",
            "0",
            "-1",
            "99999999999999999999",
            " ",
            "\n",
            "http://user:pw@example.com/h",
        ])
        .prop_map(str::to_owned),
        text(40),
        "[a-z]{0,8}://[a-z0-9.:\\[\\]@-]{0,20}(/[a-z]{0,5})?",
        "[a-zA-Z0-9_-]{1,6}:[A-Za-z0-9+/=_-]{0,50}(,[a-z0-9]{1,4}:[A-Za-z0-9+/=]{0,50})?",
        "[0-9]{1,6}",
        text(20).prop_map(|t| format!("{MARK}{t}")),
    ]
}

fn environment() -> impl Strategy<Value = HashMap<String, String>> {
    proptest::collection::hash_map(
        prop::sample::select(VARS.to_vec()).prop_map(str::to_owned),
        value(),
        0..20,
    )
}

const SECRET_VARS: &[&str] = &[
    "JWT_SECRET",
    "OAUTH_STATE_SECRET",
    "TOKEN_ENCRYPTION_KEYS",
    "MICROSOFT_OAUTH_CLIENT_SECRET",
    "GOOGLE_OAUTH_CLIENT_SECRET",
    "OIDC_OAUTH_CLIENT_SECRET",
    "MAILCONNECT_WEBHOOK_SECRET",
];

proptest! {
    #![proptest_config(config())]

    /// Any environment either configures the service or stops it with one
    /// line that names a variable that is involved, and never a secret;
    /// a configuration's Debug output holds no secret either.
    #[test]
    fn any_environment_is_a_config_or_one_clear_line(vars in environment(), dev in any::<bool>()) {
        let env = Env(|k: &str| vars.get(k).cloned());
        let secret_values: Vec<&String> = SECRET_VARS
            .iter()
            .filter_map(|v| vars.get(*v))
            .filter(|v| v.starts_with(MARK))
            .collect();
        match Config::from_env(&env, dev) {
            Ok(config) => {
                let shown = format!("{config:?}");
                for s in &secret_values {
                    prop_assert!(!shown.contains(s.as_str()), "Debug shows a secret");
                }
            }
            Err(e) => {
                let line = e.to_string();
                prop_assert!(VARS.contains(&e.var) || e.var == "MAILCONNECT_EXTRA_CA_FILE", "unknown variable {}", e.var);
                prop_assert!(line.starts_with(e.var));
                prop_assert!(!line.contains('\n') && !line.contains('\r'), "more than one line: {line:?}");
                for s in &secret_values {
                    prop_assert!(!line.contains(s.as_str()), "a secret in {line:?}");
                }
            }
        }
    }
}
