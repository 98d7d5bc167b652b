//! Credentials a test holds to authenticate to the fakes the way mailconnect
//! does without a client secret: a certificate and its private key
//! ([`TestCertificate`], uploaded with
//! [`crate::FakeMicrosoft::upload_certificate`]) and an external token
//! issuer ([`FederatedIssuer`], trusted with
//! [`crate::FakeMicrosoft::add_federated_credential`]), such as a Kubernetes
//! cluster whose projected service-account tokens a workload presents.
//!
//! Each makes a fresh 2048-bit RSA key with the `rsa` crate: ring, which
//! rcgen and jsonwebtoken sign with, cannot make RSA keys.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::idp::sha256;

/// The audience Entra's federated identity credentials expect by default.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// A fresh RSA key: its PKCS#8 PEM and its public JWK members.
struct RsaKey {
    pkcs8_pem: String,
    /// JWK `n` and `e` (base64url, no padding).
    n: String,
    e: String,
}

fn new_rsa_key() -> RsaKey {
    let key =
        rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key can be made");
    let pkcs8_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an RSA key encodes as PKCS#8")
        .to_string();
    RsaKey {
        pkcs8_pem,
        n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }
}

/// `x5t#S256` of a certificate: base64url SHA-256 of its DER (RFC 7515 §4.1.8).
pub(crate) fn x5t_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sha256(der))
}

/// `x5t` of a certificate: base64url SHA-1 of its DER (RFC 7515 §4.1.7), the
/// thumbprint Windows and the Azure portal show in hex.
pub(crate) fn x5t_sha1(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha1::digest(der))
}

/// A self-signed certificate with its RSA private key, as an admin makes one
/// to upload to an app registration (the `.cer`) and to give mailconnect
/// (the PEM of `MICROSOFT_OAUTH_CLIENT_CERTIFICATE`).
pub struct TestCertificate {
    common_name: String,
    not_after: DateTime<Utc>,
    der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl TestCertificate {
    /// A certificate for `common_name` with a fresh key, valid until
    /// `not_after` (to the second) from a day before now, or before
    /// `not_after` when that has passed: an expired certificate is one
    /// `not_after` in the past. Panics when it cannot be made.
    pub fn new(common_name: &str, not_after: DateTime<Utc>) -> TestCertificate {
        let key = new_rsa_key();
        let key_pair =
            rcgen::KeyPair::from_pem_and_sign_algo(&key.pkcs8_pem, &rcgen::PKCS_RSA_SHA256)
                .expect("rcgen takes an RSA PKCS#8 key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let not_after = not_after.timestamp();
        let not_before = not_after.min(Utc::now().timestamp()) - 86_400;
        params.not_before = offset_date_time(not_before);
        params.not_after = offset_date_time(not_after);
        let cert = params
            .self_signed(&key_pair)
            .expect("a self-signed certificate can be made");
        TestCertificate {
            common_name: common_name.to_string(),
            not_after: DateTime::from_timestamp(not_after, 0).expect("a date rcgen took"),
            der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.pkcs8_pem,
        }
    }

    /// The certificate's DER: what the Azure portal uploads.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate alone, as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate, then its key, in one PEM file.
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// The `x5t#S256` an assertion signed with this certificate's key names.
    pub fn x5t_s256(&self) -> String {
        x5t_s256(&self.der)
    }

    /// The legacy `x5t` (SHA-1) an assertion may name instead.
    pub fn x5t(&self) -> String {
        x5t_sha1(&self.der)
    }
}

/// Never prints the private key.
impl fmt::Debug for TestCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCertificate")
            .field("common_name", &self.common_name)
            .field("not_after", &self.not_after)
            .field("x5t#S256", &self.x5t_s256())
            .finish_non_exhaustive()
    }
}

fn offset_date_time(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).expect("a date X.509 can hold")
}

/// An external OpenID issuer whose tokens an app registration may trust
/// through a federated identity credential, with its signing key: it mints
/// tokens shaped like a Kubernetes projected service-account token (RS256,
/// `kid` in the header, `aud` a list).
pub struct FederatedIssuer {
    issuer: String,
    kid: String,
    n: String,
    e: String,
    key: EncodingKey,
}

impl FederatedIssuer {
    /// An issuer named `issuer` (its `iss`, e.g. a cluster's OIDC issuer
    /// URL) with a fresh key.
    pub fn new(issuer: &str) -> FederatedIssuer {
        let key = new_rsa_key();
        // RFC 7638: the members in lexical order, no spaces.
        let jwk = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, key.e, key.n);
        FederatedIssuer {
            issuer: issuer.to_string(),
            kid: URL_SAFE_NO_PAD.encode(sha256(jwk.as_bytes())),
            key: EncodingKey::from_rsa_pem(key.pkcs8_pem.as_bytes())
                .expect("jsonwebtoken takes an RSA PKCS#8 key"),
            n: key.n,
            e: key.e,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer's public keys, as its `jwks_uri` serves them.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": self.n,
            "e": self.e,
        }]})
    }

    /// A token for `subject` and `audience` (e.g. [`TOKEN_EXCHANGE_AUDIENCE`]),
    /// issued now and valid for `lifetime`.
    pub fn mint(&self, subject: &str, audience: &str, lifetime: Duration) -> String {
        let now = Utc::now().timestamp();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        self.sign(&json!({
            "aud": [audience],
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": subject,
        }))
    }

    /// Any claims, signed RS256 under the issuer's `kid`: for tokens
    /// [`Self::mint`] does not make (another `iss`, an expired one, …).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("signing in memory works")
    }
}

/// Never prints the private key.
impl fmt::Debug for FederatedIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederatedIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}
