//! How mailconnect proves who it is at a provider's token endpoint
//! (DESIGN.md "Credentials"): a client secret, a certificate (Microsoft),
//! a federated assertion read from a file (Microsoft workload identity), or
//! a private key (`private_key_jwt`, the generic provider). Exactly one per
//! provider; every token request the provider makes asks [`Credential::fields`]
//! for what to add to its form.
//!
//! The assertion is signed with `jsonwebtoken` (PS256 through ring, the
//! JWT crate the service already uses for callers' tokens); the
//! certificate is read with `x509-parser` (its validity, its public key)
//! and the key with `jsonwebtoken`'s PEM reader. Nothing here ever prints
//! a secret: `Debug` shows the kind and the thumbprint only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;

use super::TokenError;
use crate::diagnosis::Cause;
use crate::env::{err, ConfigError, Env};

/// `client_assertion_type` of every assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid: short, and well inside the
/// 10 minutes Entra allows.
const ASSERTION_LIFETIME_SECS: i64 = 300;

/// The one credential of a provider.
#[derive(Clone)]
pub enum Credential {
    Secret {
        secret: SecretString,
        /// `*_CLIENT_SECRET_EXPIRES_AT`, when the operator gave it.
        expires_at: Option<i64>,
    },
    Certificate(Arc<Certificate>),
    /// The file a federated identity token is read from at each request.
    Federated(PathBuf),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret { expires_at, .. } => f
                .debug_struct("Secret")
                .field("secret", &"[redacted]")
                .field("expires_at", expires_at)
                .finish(),
            Credential::Certificate(c) => c.fmt(f),
            Credential::Federated(path) => f.debug_tuple("Federated").field(path).finish(),
        }
    }
}

/// What a token request adds to its form to authenticate the client.
pub enum ClientAuth {
    /// `client_secret` (or HTTP Basic, where the provider prefers it).
    Secret(SecretString),
    /// `client_assertion_type` and `client_assertion`.
    Assertion(SecretString),
}

impl ClientAuth {
    /// The form fields, for a provider that takes the secret in the body.
    pub fn form(&self) -> Vec<(&'static str, &str)> {
        match self {
            ClientAuth::Secret(s) => vec![("client_secret", s.expose_secret())],
            ClientAuth::Assertion(a) => vec![
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", a.expose_secret()),
            ],
        }
    }
}

impl Credential {
    /// `secret`, `certificate`, `federated` or `key` (the status route).
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Secret { .. } => "secret",
            Credential::Certificate(_) => "certificate",
            Credential::Federated(_) => "federated",
        }
    }

    /// When it stops working, if it has a date of its own.
    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Credential::Secret { expires_at, .. } => *expires_at,
            Credential::Certificate(c) => Some(c.not_after),
            Credential::Federated(_) => None,
        }
    }

    /// What the next request to `token_url` sends to prove who we are: a
    /// fresh assertion for that very URL, or the federated token as it is
    /// on disk now.
    pub async fn client_auth(
        &self,
        client_id: &str,
        token_url: &Url,
    ) -> Result<ClientAuth, TokenError> {
        match self {
            Credential::Secret { secret, .. } => Ok(ClientAuth::Secret(secret.clone())),
            Credential::Certificate(c) => Ok(ClientAuth::Assertion(c.assertion(
                client_id,
                token_url.as_str(),
                crate::now(),
            ))),
            Credential::Federated(path) => read_assertion(path).await.map(ClientAuth::Assertion),
        }
    }
}

/// The federated token as the file holds it now (Kubernetes rewrites it
/// before it expires). A missing or empty file is our configuration's
/// fault, said plainly, never a crash.
async fn read_assertion(path: &Path) -> Result<SecretString, TokenError> {
    let unusable = |why: String| {
        tracing::error!(
            file = %path.display(),
            "{why}: MICROSOFT_OAUTH_CLIENT_ASSERTION_FILE gives no federated token"
        );
        TokenError::Misconfigured {
            error: "client_assertion_unavailable".into(),
            cause: Cause::ClientCredentialsInvalid,
        }
    };
    let raw = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| unusable(format!("cannot read the file ({e})")))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(unusable("the file is empty".into()));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// A certificate credential: the certificate and its RSA private key.
pub struct Certificate {
    key: EncodingKey,
    /// base64url SHA-256 of the DER (the assertion's `x5t#S256`).
    pub x5t_s256: String,
    /// SHA-1 of the DER in upper-case hex, as Entra's portal shows it.
    pub sha1_thumbprint: String,
    pub not_after: i64,
    pub subject: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("x5t#S256", &self.x5t_s256)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

impl Certificate {
    /// Reads a PEM file holding the certificate and its RSA private key
    /// (in either order). Refuses, saying why, a file it cannot read, a key
    /// that is not RSA or not the certificate's, and a certificate that
    /// has expired at `now`.
    pub fn load(path: &Path, now: i64) -> Result<Certificate, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        Certificate::from_pem(&pem, now)
    }

    pub fn from_pem(pem: &str, now: i64) -> Result<Certificate, String> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("holds no certificate (-----BEGIN CERTIFICATE-----)")?
            .map_err(|e| format!("holds an unreadable certificate: {e}"))?;
        let key_pem = private_key_block(pem)
            .ok_or("holds no private key (-----BEGIN PRIVATE KEY----- or RSA PRIVATE KEY)")?;
        let key = EncodingKey::from_rsa_pem(key_pem.as_bytes())
            .map_err(|_| "its private key is not an RSA key (Entra signs with RSA)".to_owned())?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("holds an unreadable certificate: {e}"))?;
        let not_after = cert.validity().not_after.timestamp();
        let subject = cert.subject().to_string();
        let Ok(x509_parser::public_key::PublicKey::RSA(public)) = cert.public_key().parsed() else {
            return Err("its certificate does not carry an RSA key".into());
        };
        if not_after <= now {
            return Err(format!(
                "its certificate expired on {}",
                crate::rfc3339(not_after)
            ));
        }
        let certificate = Certificate {
            key,
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref())),
            sha1_thumbprint: hex_upper(&sha1::Sha1::digest(der.as_ref())),
            not_after,
            subject,
        };
        // The key must be the certificate's: sign, then check with the
        // certificate's public key.
        let probe = certificate.assertion("probe", "https://probe.invalid/", now);
        // DER integers carry a leading zero byte when the top bit is set;
        // the raw components must not.
        let unsigned = |b: &'_ [u8]| -> Vec<u8> {
            let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
            b[first..].to_vec()
        };
        let decoding = jsonwebtoken::DecodingKey::from_rsa_raw_components(
            &unsigned(public.modulus),
            &unsigned(public.exponent),
        );
        let mut validation = jsonwebtoken::Validation::new(Algorithm::PS256);
        validation.set_audience(&["https://probe.invalid/"]);
        validation.validate_nbf = false;
        jsonwebtoken::decode::<serde_json::Value>(probe.expose_secret(), &decoding, &validation)
            .map_err(|_| "its private key does not belong to its certificate".to_owned())?;
        Ok(certificate)
    }

    /// A fresh client assertion for a request to `audience` (the token URL
    /// called): PS256, `x5t#S256`, `iss` = `sub` = client id, a unique
    /// `jti`, valid for five minutes.
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> SecretString {
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(self.x5t_s256.clone());
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        SecretString::from(
            jsonwebtoken::encode(&header, &claims, &self.key)
                .expect("an RSA key read at start-up signs"),
        )
    }
}

/// The text of the first PEM private key block of `pem`.
fn private_key_block(pem: &str) -> Option<String> {
    let begin = pem.find("-----BEGIN ")?;
    let mut rest = &pem[begin..];
    loop {
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let label = rest[..line_end].trim();
        if label.ends_with("PRIVATE KEY-----") {
            let kind = label
                .trim_start_matches("-----BEGIN ")
                .trim_end_matches("-----");
            let end_marker = format!("-----END {kind}-----");
            let end = rest.find(&end_marker)? + end_marker.len();
            return Some(rest[..end].to_owned());
        }
        let next = rest[line_end..].find("-----BEGIN ")?;
        rest = &rest[line_end + next..];
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The variables of one provider's credentials.
pub struct CredentialVars {
    pub provider: &'static str,
    pub client_id: &'static str,
    pub secret: &'static str,
    pub secret_expires_at: &'static str,
    /// Microsoft only.
    pub certificate: Option<&'static str>,
    /// Microsoft only.
    pub assertion_file: Option<&'static str>,
}

impl CredentialVars {
    /// The client id and the one credential, when the provider is
    /// configured: `None` when none of its variables is set; an error
    /// naming them when the id comes without a credential, a credential
    /// without the id, or two credentials at once.
    pub fn read<F: Fn(&str) -> Option<String>>(
        &self,
        env: &Env<F>,
        now: i64,
    ) -> Result<Option<(String, Credential)>, ConfigError> {
        let given: Vec<&'static str> = [Some(self.secret), self.certificate, self.assertion_file]
            .into_iter()
            .flatten()
            .filter(|v| env.get(v).is_some())
            .collect();
        let id = env.get(self.client_id).map(|s| s.trim().to_owned());
        let credential_var = match (&id, given.as_slice()) {
            (None, []) => return Ok(None),
            (Some(_), []) => {
                return Err(err(
                    self.secret,
                    format!(
                        "(or another credential) is required when {} is set",
                        self.client_id
                    ),
                ))
            }
            (None, [var, ..]) => {
                return Err(err(
                    self.client_id,
                    format!("is required when {var} is set"),
                ))
            }
            (Some(_), [one]) => *one,
            (Some(_), [first, second, ..]) => {
                return Err(err(
                    second,
                    format!("and {first} are both set: a provider takes exactly one credential"),
                ))
            }
        };
        let expires_at = match env.get(self.secret_expires_at) {
            None => None,
            Some(_) if credential_var != self.secret => {
                return Err(err(
                    self.secret_expires_at,
                    format!("is only for {}, which is not set", self.secret),
                ))
            }
            Some(raw) => Some(
                chrono::DateTime::parse_from_rfc3339(raw.trim())
                    .map_err(|e| {
                        err(
                            self.secret_expires_at,
                            format!("is not an RFC 3339 date ({e})"),
                        )
                    })?
                    .timestamp(),
            ),
        };
        let value = env.get(credential_var).unwrap_or_default();
        let credential = if credential_var == self.secret {
            Credential::Secret {
                secret: SecretString::from(value),
                expires_at,
            }
        } else if Some(credential_var) == self.certificate {
            let path = Path::new(value.trim());
            Credential::Certificate(Arc::new(
                Certificate::load(path, now)
                    .map_err(|e| err(credential_var, format!("{}: {e}", path.display())))?,
            ))
        } else {
            Credential::Federated(PathBuf::from(value.trim()))
        };
        Ok(Some((id.unwrap_or_default(), credential)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed RSA certificate and its key, valid until `not_after`.
    pub(crate) fn certificate_pem(not_after: i64) -> String {
        use rand::rngs::OsRng;
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let key_pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let pair =
            rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["mailconnect.test".into()]).unwrap();
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(not_after - 86_400 * 400).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.self_signed(&pair).unwrap();
        format!("{}{}", cert.pem(), key_pem.as_str())
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_certificate_signs_assertions_entra_accepts() {
        let pem = certificate_pem(NOW + 86_400 * 90);
        let c = Certificate::from_pem(&pem, NOW).unwrap();
        assert_eq!(c.not_after, NOW + 86_400 * 90);
        let a = c.assertion("client-1", "https://login.example/t/oauth2/v2.0/token", NOW);
        let header = jsonwebtoken::decode_header(a.expose_secret()).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(c.x5t_s256.as_str()));
        let body: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(a.expose_secret().split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(body["iss"], "client-1");
        assert_eq!(body["sub"], "client-1");
        assert_eq!(body["aud"], "https://login.example/t/oauth2/v2.0/token");
        assert!(body["exp"].as_i64().unwrap() - NOW <= 600);
        let again = c.assertion("client-1", "https://login.example/t/oauth2/v2.0/token", NOW);
        assert_ne!(
            a.expose_secret(),
            again.expose_secret(),
            "a fresh jti each time"
        );
        let shown = format!("{:?}", Credential::Certificate(Arc::new(c)));
        assert!(!shown.contains("PRIVATE") && shown.contains("[redacted]"));
    }

    #[test]
    fn an_unusable_certificate_file_is_refused_saying_why() {
        let good = certificate_pem(NOW + 86_400);
        let other = certificate_pem(NOW + 86_400);
        let cert_of = |p: &str| p[..p.find("-----BEGIN PRIVATE KEY").unwrap()].to_owned();
        let key_of = |p: &str| p[p.find("-----BEGIN PRIVATE KEY").unwrap()..].to_owned();
        let mismatched = format!("{}{}", cert_of(&good), key_of(&other));
        let expired = certificate_pem(NOW - 1);
        for (pem, says) in [
            (mismatched.as_str(), "does not belong"),
            (expired.as_str(), "expired on"),
            (cert_of(&good).as_str(), "no private key"),
            (key_of(&good).as_str(), "no certificate"),
        ] {
            let e = Certificate::from_pem(pem, NOW).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        // The key may come first.
        let swapped = format!("{}{}", key_of(&good), cert_of(&good));
        assert!(Certificate::from_pem(&swapped, NOW).is_ok());
    }

    fn vars() -> CredentialVars {
        CredentialVars {
            provider: "microsoft",
            client_id: "ID",
            secret: "SECRET",
            secret_expires_at: "SECRET_EXPIRES_AT",
            certificate: Some("CERT"),
            assertion_file: Some("ASSERTION"),
        }
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Option<(String, Credential)>, ConfigError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars().read(&Env(|k: &str| map.get(k).cloned()), NOW)
    }

    #[test]
    fn exactly_one_credential_per_provider() {
        assert!(read(&[]).unwrap().is_none());
        let e = read(&[("ID", "a"), ("SECRET", "s"), ("ASSERTION", "/f")]).unwrap_err();
        assert!(e.reason.contains("exactly one credential"), "{}", e.reason);
        assert_eq!(read(&[("ID", "a")]).unwrap_err().var, "SECRET");
        assert_eq!(read(&[("ASSERTION", "/f")]).unwrap_err().var, "ID");
        let (id, c) = read(&[("ID", "a"), ("ASSERTION", "/var/run/token")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (id.as_str(), c.kind(), c.expires_at()),
            ("a", "federated", None)
        );
        let (_, c) = read(&[
            ("ID", "a"),
            ("SECRET", "s"),
            ("SECRET_EXPIRES_AT", "2027-01-31T00:00:00Z"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.expires_at(), Some(1_801_353_600));
        assert_eq!(
            read(&[("ID", "a"), ("SECRET", "s"), ("SECRET_EXPIRES_AT", "soon")])
                .unwrap_err()
                .var,
            "SECRET_EXPIRES_AT"
        );
        let e = read(&[("ID", "a"), ("CERT", "/nonexistent.pem")]).unwrap_err();
        assert_eq!(e.var, "CERT");
        assert!(e.reason.contains("cannot read"), "{}", e.reason);
    }

    #[tokio::test]
    async fn a_federated_file_is_read_at_each_request_and_a_missing_one_is_misconfigured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let c = Credential::Federated(path.clone());
        let url = Url::parse("https://login.example/t/oauth2/v2.0/token").unwrap();
        let e = c.client_auth("a", &url).await.err().unwrap();
        assert!(matches!(e, TokenError::Misconfigured { .. }));
        std::fs::write(&path, "").unwrap();
        assert!(c.client_auth("a", &url).await.is_err());
        for token in ["first.jwt.token", "second.jwt.token"] {
            std::fs::write(&path, format!("{token}\n")).unwrap();
            let ClientAuth::Assertion(a) = c.client_auth("a", &url).await.unwrap() else {
                panic!("an assertion")
            };
            assert_eq!(a.expose_secret(), token);
        }
    }
}
