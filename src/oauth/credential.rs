//! How mailconnect proves who it is at a provider's token endpoint
//! (DESIGN.md "Credentials"): a client secret, a certificate (Microsoft),
//! a federated assertion read from a file (Microsoft workload identity), or
//! a private key (`private_key_jwt`, the generic provider). Exactly one per
//! provider; every token request the provider makes asks [`Credential::fields`]
//! for what to add to its form.
//!
//! The assertion is signed with `jsonwebtoken` (through ring, the JWT
//! crate the service already uses for callers' tokens); the certificate is
//! read with `x509-parser` (its validity, its public key) and its key with
//! `jsonwebtoken`'s PEM reader. A `private_key_jwt` key is read with `rsa`
//! or `p256`, which give its public half (the JWK and its RFC 7638
//! thumbprint, the assertions' `kid`) and the DER ring signs with. Nothing
//! here ever prints a secret: `Debug` shows the kind and the thumbprint
//! only.

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
    /// A private key for `private_key_jwt` (the generic provider).
    Key(Arc<SigningKey>),
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
            Credential::Key(key) => f.debug_tuple("Key").field(key).finish(),
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
            Credential::Key(_) => "key",
        }
    }

    /// When it stops working, if it has a date of its own.
    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Credential::Secret { expires_at, .. } => *expires_at,
            Credential::Certificate(c) => Some(c.not_after),
            Credential::Federated(_) | Credential::Key(_) => None,
        }
    }

    /// A key's public half, for the operator to register at the provider:
    /// its RFC 7638 thumbprint (the `kid` of every assertion) and its JWK.
    /// `None` for the other credentials.
    pub fn public_jwk(&self) -> Option<(&str, serde_json::Value)> {
        match self {
            Credential::Key(key) => Some((key.thumbprint(), key.public_jwk())),
            _ => None,
        }
    }

    /// What the next request to `token_url` sends to prove who we are: a
    /// fresh assertion for that very URL, or the federated token as it is
    /// on disk now. `signing_algs` are the algorithms the provider says it
    /// takes for assertions (discovery's
    /// `token_endpoint_auth_signing_alg_values_supported`), when it says;
    /// only a key chooses by them.
    pub async fn client_auth(
        &self,
        client_id: &str,
        token_url: &Url,
        signing_algs: Option<&[String]>,
    ) -> Result<ClientAuth, TokenError> {
        match self {
            Credential::Secret { secret, .. } => Ok(ClientAuth::Secret(secret.clone())),
            Credential::Certificate(c) => Ok(ClientAuth::Assertion(c.assertion(
                client_id,
                token_url.as_str(),
                crate::now(),
            ))),
            Credential::Federated(path) => read_assertion(path).await.map(ClientAuth::Assertion),
            Credential::Key(key) => {
                let alg = key
                    .algorithm(signing_algs)
                    .ok_or_else(|| no_common_algorithm(key, signing_algs.unwrap_or_default()))?;
                Ok(ClientAuth::Assertion(key.assertion(
                    client_id,
                    token_url.as_str(),
                    alg,
                    crate::now(),
                )))
            }
        }
    }
}

/// The provider takes none of the algorithms our key signs with: the
/// operator must change the key (or the provider's list), said plainly.
fn no_common_algorithm(key: &SigningKey, listed: &[String]) -> TokenError {
    tracing::error!(
        listed = ?listed,
        key_signs = ?key.public.algorithms(),
        "the provider takes none of the algorithms OIDC_OAUTH_CLIENT_KEY signs with \
         (its discovery's token_endpoint_auth_signing_alg_values_supported): an RSA key \
         signs PS256 or RS256, an EC P-256 key ES256"
    );
    TokenError::Misconfigured {
        error: "private_key_jwt_alg_unsupported".into(),
        cause: Cause::ClientCredentialsInvalid,
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

/// The claims of every client assertion (RFC 7523 3, OpenID Connect Core
/// 9): `iss` = `sub` = client id, `aud` the URL it is for, a unique `jti`,
/// valid for five minutes from `now`.
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

impl<'a> AssertionClaims<'a> {
    fn new(client_id: &'a str, audience: &'a str, now: i64) -> AssertionClaims<'a> {
        AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        }
    }
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
        let claims = AssertionClaims::new(client_id, audience, now);
        SecretString::from(
            jsonwebtoken::encode(&header, &claims, &self.key)
                .expect("an RSA key read at start-up signs"),
        )
    }
}

/// A `private_key_jwt` key (`OIDC_OAUTH_CLIENT_KEY`): RSA or EC P-256.
pub struct SigningKey {
    key: EncodingKey,
    public: PublicKey,
    /// RFC 7638 thumbprint of `public`: every assertion's `kid`.
    thumbprint: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kty", &self.public.kty())
            .field("kid", &self.thumbprint)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Refused at start-up: RSA moduli under this many bits (ring signs with
/// none, and identity providers refuse them).
const MIN_RSA_BITS: usize = 2048;

impl SigningKey {
    /// Reads a PEM file holding the key; see [`SigningKey::from_pem`].
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        SigningKey::from_pem(&pem)
    }

    /// Reads the first private key of `pem`: RSA (PKCS#8 or PKCS#1) or EC
    /// P-256 (PKCS#8 or SEC1). Refuses, saying why, anything else and a key
    /// that does not sign, so that no request ever finds out later.
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        use rsa::pkcs8::DecodePrivateKey;
        let block = private_key_block(pem).ok_or(
            "holds no private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        )?;
        let unreadable = |kind: &str| format!("holds an unreadable {kind}");
        let (public, key) = match pem_label(&block) {
            "RSA PRIVATE KEY" => rsa_parts(
                &rsa::pkcs1::DecodeRsaPrivateKey::from_pkcs1_pem(&block)
                    .map_err(|_| unreadable("RSA key"))?,
            )?,
            "EC PRIVATE KEY" => p256_parts(
                &p256::SecretKey::from_sec1_pem(&block)
                    .map_err(|_| "holds an EC key that is not on the P-256 curve".to_owned())?,
            )?,
            "PRIVATE KEY" => match rsa::RsaPrivateKey::from_pkcs8_pem(&block) {
                Ok(rsa) => rsa_parts(&rsa)?,
                Err(_) => p256_parts(&p256::SecretKey::from_pkcs8_pem(&block).map_err(|_| {
                    "holds a key that is neither RSA nor EC P-256 (only those sign here)".to_owned()
                })?)?,
            },
            "ENCRYPTED PRIVATE KEY" => {
                return Err("holds an encrypted key: store it decrypted \
                            (openssl pkey -in encrypted.pem -out key.pem)"
                    .into())
            }
            other => return Err(format!("holds a {other}, not an RSA or EC private key")),
        };
        let signing = SigningKey {
            key,
            thumbprint: public.thumbprint(),
            public,
        };
        for alg in signing.public.algorithms() {
            let claims = AssertionClaims::new("probe", "https://probe.invalid/", 0);
            signing
                .sign(*alg, &claims)
                .map_err(|e| format!("holds a key that cannot sign {alg:?}: {e}"))?;
        }
        Ok(signing)
    }

    /// The RFC 7638 thumbprint: the `kid` every assertion names.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK to register at the provider: the members
    /// RFC 7638 hashes, `kid` and `use`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = self.public.required_members();
        jwk.insert("kid".into(), self.thumbprint.clone().into());
        jwk.insert("use".into(), "sig".into());
        serde_json::Value::Object(jwk)
    }

    /// The algorithm to sign with at a provider that takes `supported`:
    /// the first of ours it lists (PS256 before RS256 for RSA; ES256 for
    /// EC), or, when it says nothing, the one every provider is expected
    /// to take (RS256, ES256). `None` when it lists none of ours.
    pub fn algorithm(&self, supported: Option<&[String]>) -> Option<Algorithm> {
        let Some(listed) = supported else {
            return Some(self.public.expected_algorithm());
        };
        self.public.algorithms().iter().copied().find(|alg| {
            listed
                .iter()
                .any(|l| l.parse::<Algorithm>().ok() == Some(*alg))
        })
    }

    /// A fresh client assertion for a request to `audience`, signed with
    /// `alg` and naming the key by its thumbprint.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        alg: Algorithm,
        now: i64,
    ) -> SecretString {
        let claims = AssertionClaims::new(client_id, audience, now);
        SecretString::from(
            self.sign(alg, &claims)
                .expect("a key checked at start-up signs with its algorithms"),
        )
    }

    fn sign(
        &self,
        alg: Algorithm,
        claims: &AssertionClaims,
    ) -> jsonwebtoken::errors::Result<String> {
        let mut header = Header::new(alg);
        header.kid = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

/// The public half and the signing key of an RSA private key.
fn rsa_parts(key: &rsa::RsaPrivateKey) -> Result<(PublicKey, EncodingKey), String> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "holds an RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed"
        ));
    }
    let der = key
        .to_pkcs1_der()
        .map_err(|e| format!("holds an RSA key that cannot be encoded: {e}"))?;
    Ok((
        PublicKey::Rsa {
            n: key.n().to_bytes_be(),
            e: key.e().to_bytes_be(),
        },
        EncodingKey::from_rsa_der(der.as_bytes()),
    ))
}

/// The public half and the signing key of an EC P-256 private key (ring
/// takes EC keys as PKCS#8 only, so a SEC1 one is re-encoded).
fn p256_parts(key: &p256::SecretKey) -> Result<(PublicKey, EncodingKey), String> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let point = key.public_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err("holds an EC key without a usable public point".into());
    };
    let der = key
        .to_pkcs8_der()
        .map_err(|e| format!("holds an EC key that cannot be encoded: {e}"))?;
    Ok((
        PublicKey::P256 {
            x: x.to_vec(),
            y: y.to_vec(),
        },
        EncodingKey::from_ec_der(der.as_bytes()),
    ))
}

/// The public half of a [`SigningKey`], as a JWK's raw members.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The point's coordinates, 32 bytes each.
    P256 { x: Vec<u8>, y: Vec<u8> },
}

impl PublicKey {
    fn kty(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "RSA",
            PublicKey::P256 { .. } => "EC",
        }
    }

    /// What it signs with, best first.
    fn algorithms(&self) -> &'static [Algorithm] {
        match self {
            PublicKey::Rsa { .. } => &[Algorithm::PS256, Algorithm::RS256],
            PublicKey::P256 { .. } => &[Algorithm::ES256],
        }
    }

    /// The one a provider that names none is expected to take: RS256 is
    /// what OpenID Connect asks every provider to support; ES256 the only
    /// one a P-256 key has.
    fn expected_algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Rsa { .. } => Algorithm::RS256,
            PublicKey::P256 { .. } => Algorithm::ES256,
        }
    }

    /// The JWK members RFC 7638 3.2 requires, in lexicographic order.
    fn required_members(&self) -> serde_json::Map<String, serde_json::Value> {
        let b64 = |bytes: &[u8]| serde_json::Value::from(URL_SAFE_NO_PAD.encode(bytes));
        let members = match self {
            PublicKey::Rsa { n, e } => vec![("e", b64(e)), ("kty", "RSA".into()), ("n", b64(n))],
            PublicKey::P256 { x, y } => vec![
                ("crv", "P-256".into()),
                ("kty", "EC".into()),
                ("x", b64(x)),
                ("y", b64(y)),
            ],
        };
        members
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    /// RFC 7638: base64url SHA-256 of the required members as JSON, in
    /// that order and without whitespace (serde_json keeps the order).
    fn thumbprint(&self) -> String {
        let canonical = serde_json::Value::Object(self.required_members()).to_string();
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// `RSA PRIVATE KEY` of `-----BEGIN RSA PRIVATE KEY-----…`.
fn pem_label(block: &str) -> &str {
    block
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("-----BEGIN ")
        .trim_end_matches("-----")
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
    /// `private_key_jwt`: the generic provider only.
    pub key: Option<&'static str>,
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
        let given: Vec<&'static str> = [
            Some(self.secret),
            self.certificate,
            self.assertion_file,
            self.key,
        ]
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
        let path = PathBuf::from(value.trim());
        let refused = |e: String| err(credential_var, format!("{}: {e}", path.display()));
        let credential = if credential_var == self.secret {
            Credential::Secret {
                secret: SecretString::from(value),
                expires_at,
            }
        } else if Some(credential_var) == self.certificate {
            Credential::Certificate(Arc::new(Certificate::load(&path, now).map_err(refused)?))
        } else if Some(credential_var) == self.key {
            Credential::Key(Arc::new(SigningKey::load(&path).map_err(refused)?))
        } else {
            Credential::Federated(path)
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

    /// An EC P-256 key as the generic provider reads it.
    pub(crate) fn p256_key() -> SigningKey {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        SigningKey::from_pem(&pem).unwrap()
    }

    fn rsa_key(bits: usize) -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).unwrap()
    }

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638 3.1's example key and thumbprint.
        let rfc = PublicKey::Rsa {
            n: b64("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"),
            e: b64("AQAB"),
        };
        assert_eq!(
            rfc.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // RFC 7517 A.1's EC key; the value is panva/jose's
        // calculateJwkThumbprint of it.
        let ec = PublicKey::P256 {
            x: b64("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"),
            y: b64("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"),
        };
        assert_eq!(
            ec.thumbprint(),
            "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
        );
    }

    /// The assertion's header and claims, once its signature checks out
    /// with the key's public JWK.
    fn verified(key: &SigningKey, assertion: &SecretString, alg: Algorithm) -> serde_json::Value {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_audience(&["https://idp.example/token"]);
        validation.set_issuer(&["client-1"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            assertion.expose_secret(),
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(key.thumbprint()));
        data.claims
    }

    #[test]
    fn keys_are_read_in_every_pem_form_and_sign_what_their_jwk_verifies() {
        use p256::pkcs8::EncodePrivateKey;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let lf = rsa::pkcs8::LineEnding::LF;
        let rsa = rsa_key(2048);
        let ec = p256::SecretKey::random(&mut rand::rngs::OsRng);
        // `openssl ecparam -genkey` writes the curve's block first.
        let sec1 = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            ec.to_sec1_pem(lf).unwrap().as_str()
        );
        for (pems, kty, alg) in [
            (
                [
                    rsa.to_pkcs8_pem(lf).unwrap().to_string(),
                    rsa.to_pkcs1_pem(lf).unwrap().to_string(),
                ],
                "RSA",
                Algorithm::PS256,
            ),
            (
                [ec.to_pkcs8_pem(lf).unwrap().to_string(), sec1],
                "EC",
                Algorithm::ES256,
            ),
        ] {
            let keys = pems.map(|pem| SigningKey::from_pem(&pem).unwrap());
            assert_eq!(
                keys[0].thumbprint(),
                keys[1].thumbprint(),
                "one key, one kid"
            );
            let key = &keys[1];
            assert_eq!(key.public_jwk()["kty"], kty);
            assert_eq!(key.public_jwk()["kid"], key.thumbprint());
            let a = key.assertion("client-1", "https://idp.example/token", alg, crate::now());
            let claims = verified(key, &a, alg);
            assert_eq!(claims["sub"], "client-1");
            let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
            assert_eq!(lifetime, 300);
            let again = key.assertion("client-1", "https://idp.example/token", alg, crate::now());
            assert_ne!(verified(key, &again, alg)["jti"], claims["jti"]);
        }
    }

    #[test]
    fn an_unusable_key_file_is_refused_saying_why() {
        use rsa::pkcs8::EncodePrivateKey;
        let lf = rsa::pkcs8::LineEnding::LF;
        let small = rsa_key(1024).to_pkcs8_pem(lf).unwrap();
        let other_curve = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem();
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        let cert_only = certificate_pem(NOW + 86_400);
        let cert_only = &cert_only[..cert_only.find("-----BEGIN PRIVATE KEY").unwrap()];
        let garbage = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
        for (pem, says) in [
            ("not a PEM file at all", "no private key"),
            (cert_only, "no private key"),
            (garbage, "neither RSA nor EC P-256"),
            (small.as_str(), "1024 bits"),
            (other_curve.as_str(), "neither RSA nor EC P-256"),
            (ed25519.as_str(), "neither RSA nor EC P-256"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "not on the P-256 curve",
            ),
        ] {
            let e = SigningKey::from_pem(pem).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_algorithm_is_ours_the_provider_lists_best_first() {
        let rsa = SigningKey::from_pem(
            &rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&rsa_key(2048), rsa::pkcs8::LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let ec = p256_key();
        let list = |algs: &[&str]| algs.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        for (key, listed, chosen) in [
            (&rsa, None, Some(Algorithm::RS256)),
            (
                &rsa,
                Some(list(&["RS256", "ES256", "PS256"])),
                Some(Algorithm::PS256),
            ),
            (
                &rsa,
                Some(list(&["HS256", "RS256"])),
                Some(Algorithm::RS256),
            ),
            (&rsa, Some(list(&["ES256", "EdDSA"])), None),
            (&ec, None, Some(Algorithm::ES256)),
            (&ec, Some(list(&["PS256", "ES256"])), Some(Algorithm::ES256)),
            (&ec, Some(list(&["RS256", "ES384"])), None),
        ] {
            assert_eq!(
                key.algorithm(listed.as_deref()),
                chosen,
                "{key:?} {listed:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_provider_that_takes_none_of_the_keys_algorithms_is_misconfigured() {
        let key = Credential::Key(Arc::new(p256_key()));
        let url = Url::parse("https://idp.example/token").unwrap();
        let e = key
            .client_auth("client-1", &url, Some(&["RS256".to_owned()]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), "private_key_jwt_alg_unsupported");
        assert_eq!(e.cause(), Cause::ClientCredentialsInvalid);
        let ClientAuth::Assertion(a) = key.client_auth("client-1", &url, None).await.unwrap()
        else {
            panic!("an assertion")
        };
        let Credential::Key(k) = &key else {
            unreachable!()
        };
        assert_eq!(verified(k, &a, Algorithm::ES256)["aud"], url.as_str());
    }

    #[test]
    fn a_key_shows_its_thumbprint_never_itself() {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let key = Credential::Key(Arc::new(SigningKey::from_pem(&pem).unwrap()));
        let (kid, jwk) = key.public_jwk().unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains(kid) && shown.contains("[redacted]"),
            "{shown}"
        );
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!shown.contains(&body[..20]));
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode(secret.to_bytes())));
        assert_eq!(jwk.get("d"), None, "the JWK is the public half");
        assert_eq!((key.kind(), key.expires_at()), ("key", None));
    }

    fn vars() -> CredentialVars {
        CredentialVars {
            provider: "microsoft",
            client_id: "ID",
            secret: "SECRET",
            secret_expires_at: "SECRET_EXPIRES_AT",
            certificate: Some("CERT"),
            assertion_file: Some("ASSERTION"),
            key: Some("KEY"),
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

    #[test]
    fn a_key_file_is_a_credential_of_its_own() {
        use p256::pkcs8::EncodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        std::fs::write(&path, pem.as_bytes()).unwrap();
        let file = path.to_str().unwrap();
        let (id, c) = read(&[("ID", "a"), ("KEY", file)]).unwrap().unwrap();
        assert_eq!((id.as_str(), c.kind()), ("a", "key"));
        assert!(c.public_jwk().is_some());
        let e = read(&[("ID", "a"), ("SECRET", "s"), ("KEY", file)]).unwrap_err();
        assert!(e.reason.contains("exactly one credential"), "{}", e.reason);
        std::fs::write(&path, "not a key").unwrap();
        let e = read(&[("ID", "a"), ("KEY", file)]).unwrap_err();
        assert_eq!(e.var, "KEY");
        assert!(
            e.reason.contains(file) && e.reason.contains("no private key"),
            "{}",
            e.reason
        );
        let e = read(&[("ID", "a"), ("KEY", "/nonexistent.pem")]).unwrap_err();
        assert!(e.reason.contains("cannot read"), "{}", e.reason);
    }

    #[tokio::test]
    async fn a_federated_file_is_read_at_each_request_and_a_missing_one_is_misconfigured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let c = Credential::Federated(path.clone());
        let url = Url::parse("https://login.example/t/oauth2/v2.0/token").unwrap();
        let e = c.client_auth("a", &url, None).await.err().unwrap();
        assert!(matches!(e, TokenError::Misconfigured { .. }));
        std::fs::write(&path, "").unwrap();
        assert!(c.client_auth("a", &url, None).await.is_err());
        for token in ["first.jwt.token", "second.jwt.token"] {
            std::fs::write(&path, format!("{token}\n")).unwrap();
            let ClientAuth::Assertion(a) = c.client_auth("a", &url, None).await.unwrap() else {
                panic!("an assertion")
            };
            assert_eq!(a.expose_secret(), token);
        }
    }
}
