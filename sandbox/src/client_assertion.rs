//! The app registration's credentials besides its secret, at the fake
//! Microsoft: the certificates uploaded to it (Certificates & secrets →
//! Certificates) and its federated identity credentials (workload identity
//! federation), and how the token endpoint checks a `client_assertion`
//! against them, as Entra does:
//!
//! * `client_assertion_type` must be `…:client-assertion-type:jwt-bearer`
//!   (missing: AADSTS900144; another: no credential at all, AADSTS7000218);
//!   a value that is no JWT: AADSTS50027; an `alg` other than RS256 and
//!   PS256: AADSTS5002738;
//! * a header naming a certificate (`x5t#S256`, or the legacy SHA-1 `x5t`)
//!   makes a certificate credential (Microsoft's "certificate credentials"
//!   page). Its certificate must be uploaded (else AADSTS700027, "The key
//!   was not found"), within its validity (AADSTS700027, "The key used is
//!   expired"), and have signed it (AADSTS700027); `iss` and `sub` must both
//!   be the client id (AADSTS700021), `aud` the token URL the request was
//!   posted to (AADSTS700023);
//! * a header naming only a `kid` makes a federated credential: a token of
//!   an external issuer. The app must have a federated credential (else
//!   AADSTS70021) for its `iss` (AADSTS700211), whose keys hold the `kid`
//!   and verify the signature (AADSTS700027), for its `sub` (AADSTS700213)
//!   and with an audience `aud` names (AADSTS700212);
//! * a header naming neither: AADSTS5002723;
//! * either way `exp` must be ahead and `nbf` not (AADSTS700024).
//!
//! Microsoft's documentation asks for a unique `jti` and an `exp` at most
//! 5–10 minutes after `nbf`, but says Entra "doesn't place restrictions on
//! the exp time currently", and MSAL (msal-node's `ClientAssertion`) sends
//! the same signed assertion again until it expires, so Entra takes a
//! replayed `jti`. The fake takes both too, and records them in each
//! [`SeenAssertion`] (`lifetime_secs`, `replayed`) for a test to hold the
//! client to mailconnect's own rules.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use crate::aadsts::AadstsError;
use crate::credentials::{x5t_s256, x5t_sha1, TOKEN_EXCHANGE_AUDIENCE};

/// The `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const WORKLOAD_IDENTITY_DOC: &str =
    "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

/// One client assertion the token endpoint read (one whose header and
/// claims decode), accepted or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenAssertion {
    /// The header's `alg`: Microsoft asks for PS256 and takes RS256 too.
    pub alg: String,
    /// The header's `x5t#S256` (a certificate's SHA-256 thumbprint).
    pub x5t_s256: Option<String>,
    /// The header's legacy `x5t` (SHA-1).
    pub x5t: Option<String>,
    /// The header's `kid` (a federated issuer's key).
    pub kid: Option<String>,
    /// `aud`, a string or each member of a list.
    pub aud: Vec<String>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    /// `exp - iat` in seconds, when both are numbers.
    pub lifetime_secs: Option<i64>,
    /// An earlier assertion had the same `jti` (Entra takes it anyway).
    pub replayed: bool,
    /// The token URL it was posted to.
    pub token_url: String,
    /// The AADSTS code it was refused with; `None` when accepted.
    pub refused: Option<u32>,
}

/// Why a client assertion does not authenticate the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A required parameter is missing (AADSTS900144).
    Missing(&'static str),
    /// Microsoft's AADSTS `code`, in these words, or in those of its row of
    /// [`crate::AADSTS_ERRORS`] when `None`.
    Aadsts(u32, Option<String>),
}

impl Refusal {
    fn code(&self) -> u32 {
        match self {
            Refusal::Missing(_) => 900144,
            Refusal::Aadsts(code, _) => *code,
        }
    }
}

/// AADSTS `code` in the words of its row.
fn refuse(code: u32) -> Refusal {
    Refusal::Aadsts(code, None)
}

/// AADSTS `code` in words that name what was presented.
fn refuse_saying(code: u32, text: impl Into<String>) -> Refusal {
    Refusal::Aadsts(code, Some(text.into()))
}

/// A certificate uploaded to the app registration.
struct Certificate {
    x5t_s256: String,
    x5t: String,
    /// The RSA public key (PKCS#1 DER), from its subjectPublicKeyInfo.
    public_key: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

/// A federated identity credential: tokens of `issuer` about `subject` for
/// `audience`, checked with the issuer's keys (which Entra would fetch).
struct Federated {
    issuer: String,
    subject: String,
    audience: String,
    keys: JwkSet,
}

/// The app registration's certificates and federated credentials, whether
/// it still takes its secret, and the assertions seen.
pub(crate) struct AppCredentials {
    certificates: Vec<Certificate>,
    federated: Vec<Federated>,
    pub secret_accepted: bool,
    seen: Vec<SeenAssertion>,
    jtis: HashSet<String>,
}

impl Default for AppCredentials {
    fn default() -> Self {
        AppCredentials {
            certificates: Vec::new(),
            federated: Vec::new(),
            secret_accepted: true,
            seen: Vec::new(),
            jtis: HashSet::new(),
        }
    }
}

/// An assertion being judged: what it says, and where, when and by whom
/// it was presented.
struct Presented<'a> {
    jwt: &'a str,
    header: &'a Header,
    claims: &'a Claims,
    token_url: &'a str,
    client_id: &'a str,
    now: DateTime<Utc>,
}

/// What an assertion says, read before anything is checked.
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Vec<String>,
    jti: Option<String>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

impl Claims {
    fn read(v: &Value) -> Claims {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let time = |k: &str| {
            v.get(k)
                .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))
        };
        let aud = match v.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Claims {
            iss: text("iss"),
            sub: text("sub"),
            aud,
            jti: text("jti"),
            iat: time("iat"),
            nbf: time("nbf"),
            exp: time("exp"),
        }
    }
}

impl AppCredentials {
    /// Uploads a certificate (its DER). Panics for one the Azure portal
    /// would not take: not an X.509 certificate with an RSA key.
    pub(crate) fn upload_certificate(&mut self, der: &[u8]) {
        let (not_before, not_after, public_key) = read_certificate(der)
            .expect("an X.509 certificate (DER) with an RSA public key, as the Azure portal takes");
        self.certificates.push(Certificate {
            x5t_s256: x5t_s256(der),
            x5t: x5t_sha1(der),
            public_key,
            not_before,
            not_after,
        });
    }

    /// Trusts `issuer`'s tokens about `subject` for Entra's token exchange
    /// audience, checked with the keys of `jwks`. Panics for a JWKS that
    /// does not parse.
    pub(crate) fn add_federated(&mut self, issuer: &str, subject: &str, jwks: Value) {
        let keys: JwkSet = serde_json::from_value(jwks).expect("a JWKS ({\"keys\": [...]})");
        self.federated.push(Federated {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            audience: TOKEN_EXCHANGE_AUDIENCE.to_string(),
            keys,
        });
    }

    pub(crate) fn seen(&self) -> Vec<SeenAssertion> {
        self.seen.clone()
    }

    /// Checks the assertion (of `client_assertion_type` `kind`) of client
    /// `client_id` posted to `token_url` as Entra does, at `now`, and
    /// records it.
    pub(crate) fn check(
        &mut self,
        kind: Option<&str>,
        assertion: &str,
        token_url: &str,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        match kind {
            None => return Err(Refusal::Missing("client_assertion_type")),
            Some(JWT_BEARER) => {}
            // Inferred: Entra knows no other kind, so the request carries
            // no credential it can use.
            Some(_) => return Err(refuse(7000218)),
        }
        let malformed = || refuse(50027);
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
        let claims = assertion
            .split('.')
            .nth(1)
            .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .filter(Value::is_object)
            .ok_or_else(malformed)?;
        let claims = Claims::read(&claims);
        let verdict = self.judge(&Presented {
            jwt: assertion,
            header: &header,
            claims: &claims,
            token_url,
            client_id,
            now,
        });
        let replayed = claims
            .jti
            .as_ref()
            .is_some_and(|jti| !self.jtis.insert(jti.clone()));
        self.seen.push(SeenAssertion {
            alg: format!("{:?}", header.alg),
            x5t_s256: header.x5t_s256.clone(),
            x5t: header.x5t.clone(),
            kid: header.kid.clone(),
            aud: claims.aud.clone(),
            iss: claims.iss.clone(),
            sub: claims.sub.clone(),
            jti: claims.jti.clone(),
            lifetime_secs: claims.exp.zip(claims.iat).map(|(exp, iat)| exp - iat),
            replayed,
            token_url: token_url.to_string(),
            refused: verdict.as_ref().err().map(Refusal::code),
        });
        verdict
    }

    fn judge(&self, p: &Presented) -> Result<(), Refusal> {
        let header = p.header;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
            return Err(refuse_saying(5002738, format!("Invalid JWT token. '{:?}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256,PS256'", header.alg)));
        }
        let thumbprint = header.x5t_s256.as_deref().or(header.x5t.as_deref());
        match (thumbprint, header.kid.as_deref()) {
            (Some(thumbprint), _) => self.check_certificate(thumbprint, p)?,
            (None, Some(kid)) => self.check_federated(kid, p)?,
            (None, None) => return Err(refuse(5002723)),
        }
        check_time(p.claims, p.now)
    }

    /// A certificate credential's checks (all but the time).
    fn check_certificate(&self, thumbprint: &str, p: &Presented) -> Result<(), Refusal> {
        let (claims, client_id) = (p.claims, p.client_id);
        let by_sha256 = p.header.x5t_s256.is_some();
        let found = self.certificates.iter().find(|c| {
            let registered = if by_sha256 { &c.x5t_s256 } else { &c.x5t };
            registered == thumbprint
        });
        // Entra names the key in hex, as the portal shows thumbprints.
        let hex: String = URL_SAFE_NO_PAD
            .decode(thumbprint)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let see_keys = format!("Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/{client_id}'");
        let Some(cert) = found else {
            return Err(refuse_saying(700027, format!("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{hex}', {see_keys}]")));
        };
        let t = p.now.timestamp();
        if t < cert.not_before || t > cert.not_after {
            let day = |unix: i64| {
                DateTime::from_timestamp(unix, 0)
                    .unwrap_or_default()
                    .format("%m/%d/%Y %H:%M:%S")
                    .to_string()
            };
            return Err(refuse_saying(700027, format!("The certificate with identifier used to sign the client assertion is expired on application. [Reason - The key used is expired., Thumbprint of key used by client: '{hex}', Found key 'Start={}, End={}', {see_keys}]", day(cert.not_before), day(cert.not_after))));
        }
        verify(p, &DecodingKey::from_rsa_der(&cert.public_key))?;
        let client = Some(client_id);
        if claims.iss.as_deref() != client || claims.sub.as_deref() != client {
            return Err(refuse(700021));
        }
        if claims.aud != [p.token_url] {
            return Err(refuse(700023));
        }
        Ok(())
    }

    /// A federated credential's checks (all but the time).
    fn check_federated(&self, kid: &str, p: &Presented) -> Result<(), Refusal> {
        let claims = p.claims;
        let iss = claims.iss.as_deref().unwrap_or("");
        let sub = claims.sub.as_deref().unwrap_or("");
        let aud = claims.aud.join(", ");
        let check_record = format!("Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WORKLOAD_IDENTITY_DOC}");
        if self.federated.is_empty() {
            return Err(refuse_saying(70021, format!("No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. {WORKLOAD_IDENTITY_DOC}")));
        }
        let of_issuer: Vec<&Federated> =
            self.federated.iter().filter(|f| f.issuer == iss).collect();
        if of_issuer.is_empty() {
            return Err(refuse_saying(700211, format!("No matching federated identity record found for presented assertion issuer '{iss}'. {check_record}")));
        }
        let key = of_issuer
            .iter()
            .find_map(|f| f.keys.find(kid))
            .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
            .ok_or_else(|| refuse(700027))?;
        verify(p, &key)?;
        let of_subject: Vec<&&Federated> = of_issuer.iter().filter(|f| f.subject == sub).collect();
        if of_subject.is_empty() {
            return Err(refuse_saying(700213, format!("No matching federated identity record found for presented assertion subject '{sub}'. {check_record}")));
        }
        if !of_subject.iter().any(|f| claims.aud.contains(&f.audience)) {
            return Err(refuse_saying(700212, format!("No matching federated identity record found for presented assertion audience '{aud}'. {check_record}")));
        }
        Ok(())
    }
}

/// The signature of the assertion with `key`; nothing else of it.
fn verify(p: &Presented, key: &DecodingKey) -> Result<(), Refusal> {
    let mut only_signature = Validation::new(p.header.alg);
    only_signature.required_spec_claims.clear();
    only_signature.validate_exp = false;
    only_signature.validate_nbf = false;
    only_signature.validate_aud = false;
    jsonwebtoken::decode::<Value>(p.jwt, key, &only_signature)
        .map(|_| ())
        .map_err(|_| refuse(700027))
}

/// `exp` ahead of `now` and `nbf` not; Microsoft's words name all three
/// times (a missing one as 1970).
fn check_time(claims: &Claims, now: DateTime<Utc>) -> Result<(), Refusal> {
    let t = now.timestamp();
    let live = claims.exp.is_some_and(|exp| exp > t) && claims.nbf.is_none_or(|nbf| nbf <= t);
    if live {
        return Ok(());
    }
    // .NET's round-trip format: seven digits of the second's fraction.
    let at = |time: DateTime<Utc>| {
        let ticks = time.timestamp_subsec_nanos() / 100;
        format!("{}.{ticks:07}Z", time.format("%Y-%m-%dT%H:%M:%S"))
    };
    let unix =
        |secs: Option<i64>| at(DateTime::from_timestamp(secs.unwrap_or(0), 0).unwrap_or_default());
    let words = AadstsError::lookup(700024).description;
    Err(refuse_saying(700024, format!("{words} Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .", at(now), unix(claims.nbf.or(claims.iat)), unix(claims.exp))))
}

/// A certificate's notBefore, notAfter (Unix seconds) and RSA public key
/// (the PKCS#1 DER in its subjectPublicKeyInfo, RFC 5280 §4.1.2.7).
fn read_certificate(der: &[u8]) -> Option<(i64, i64, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        cert.public_key().subject_public_key.data.to_vec(),
    ))
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::credentials::TestCertificate;

    #[test]
    fn a_certificate_gives_its_validity_and_key() {
        let not_after = Utc::now() + chrono::Duration::days(30);
        let cert = TestCertificate::new("mailconnect test", not_after);
        let (not_before, end, key) = read_certificate(cert.der()).expect("rcgen's DER reads");
        assert_eq!(end, not_after.timestamp());
        assert!(not_before < Utc::now().timestamp());
        // An RSAPublicKey (a SEQUENCE of modulus and exponent).
        use x509_parser::prelude::FromDer as _;
        let rsa = x509_parser::public_key::RSAPublicKey::from_der(&key)
            .expect("the key is PKCS#1")
            .1;
        assert!(rsa.key_size() >= 2048, "{}", rsa.key_size());
        assert!(read_certificate(b"not a certificate").is_none());
    }

    #[test]
    fn a_missing_nbf_counts_as_now_and_a_missing_exp_as_expired() {
        let now = Utc::now();
        let t = now.timestamp();
        let claims = |nbf, exp| Claims {
            iss: None,
            sub: None,
            aud: Vec::new(),
            jti: None,
            iat: Some(t),
            nbf,
            exp,
        };
        assert_eq!(check_time(&claims(None, Some(t + 60)), now), Ok(()));
        assert_eq!(check_time(&claims(Some(t), Some(t + 60)), now), Ok(()));
        for (nbf, exp) in [(None, None), (None, Some(t)), (Some(t + 5), Some(t + 60))] {
            let Err(Refusal::Aadsts(700024, Some(words))) = check_time(&claims(nbf, exp), now)
            else {
                panic!("{nbf:?} {exp:?} passed");
            };
            assert!(words.contains("Current time: "), "{words}");
        }
    }
}
