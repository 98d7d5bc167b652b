//! The sandbox signing key, the JWKS that publishes it, and id_token
//! signing (with the header and signature defects of [`IdTokenFlaw`]).

use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::http::json_response;

/// `kid` of the sandbox signing key, as published at the JWKS endpoint.
pub const KEY_ID: &str = "sandbox-key-1";

pub(crate) const RSA_PEM: &[u8] = include_bytes!("../sandbox_rsa.pem");
/// Another RSA key, never published: what [`IdTokenFlaw::OtherKey`] signs with.
const OTHER_RSA_PEM: &[u8] = include_bytes!("../other_rsa.pem");
const RSA_N: &str = include_str!("../sandbox_rsa.jwk.n");
const RSA_E: &str = "AQAB";

/// The JWK modulus (`n`, base64url without padding) of the sandbox signing key.
pub fn jwk_modulus() -> &'static str {
    RSA_N.trim()
}

/// The JWK exponent (`e`) of the sandbox signing key.
pub fn jwk_exponent() -> &'static str {
    RSA_E
}

/// A defect the fakes put in the id_tokens they issue, when asked
/// ([`crate::FakeMicrosoft::set_id_token_flaw`], `FakeGoogle::set_id_token_flaw`,
/// `FakeOidc::set_id_token_flaw`), so that each check of a client's id_token
/// validation can be shown to refuse it. Off by default: id_tokens are then
/// valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdTokenFlaw {
    /// `aud` names this other application.
    Audience(String),
    /// `iss` is this value.
    Issuer(String),
    /// Microsoft: a genuine-looking token of this other directory (`tid`
    /// and `iss` both name it).
    Directory(String),
    /// Microsoft: `tid` names this directory while `iss` names the user's.
    Tid(String),
    /// Microsoft: no `tid` claim.
    NoTid,
    /// `exp` an hour ago.
    Expired,
    /// `nbf` an hour from now.
    NotYetValid,
    /// The header names a `kid` the JWKS does not publish.
    UnknownKid,
    /// The header names no `kid`.
    NoKid,
    /// HS256 with the published RSA modulus as the HMAC secret (the
    /// algorithm-confusion attack).
    Hs256,
    /// `alg: none` and no signature.
    AlgNone,
    /// Signed with another RSA key under the sandbox's `kid`.
    OtherKey,
    /// The token response carries no id_token at all.
    Omitted,
}

impl IdTokenFlaw {
    /// Applies the claim-level flaws common to all fakes.
    pub(crate) fn apply_to_claims(&self, claims: &mut serde_json::Map<String, Value>, now: i64) {
        match self {
            IdTokenFlaw::Audience(aud) => {
                claims.insert("aud".into(), aud.clone().into());
            }
            IdTokenFlaw::Issuer(iss) => {
                claims.insert("iss".into(), iss.clone().into());
            }
            IdTokenFlaw::Expired => {
                claims.insert("iat".into(), (now - 7200).into());
                claims.insert("exp".into(), (now - 3600).into());
            }
            IdTokenFlaw::NotYetValid => {
                claims.insert("nbf".into(), (now + 3600).into());
            }
            _ => {}
        }
    }
}

/// The sandbox signing key, parsed once per fake.
pub(crate) struct Signer {
    key: EncodingKey,
}

impl Signer {
    pub(crate) fn new() -> anyhow::Result<Signer> {
        Ok(Signer {
            key: EncodingKey::from_rsa_pem(RSA_PEM)?,
        })
    }

    /// Signs id_token claims with the sandbox key under [`KEY_ID`], or the
    /// way `flaw` asks.
    pub(crate) fn sign(
        &self,
        claims: &Value,
        flaw: Option<&IdTokenFlaw>,
    ) -> Result<String, String> {
        sign_id_token(claims, flaw, &self.key)
    }
}

fn sign_id_token(
    claims: &Value,
    flaw: Option<&IdTokenFlaw>,
    key: &EncodingKey,
) -> Result<String, String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_ID.to_string());
    header.typ = Some("JWT".to_string());
    let other;
    let secret;
    let mut key = key;
    match flaw {
        Some(IdTokenFlaw::UnknownKid) => header.kid = Some("sandbox-key-unpublished".into()),
        Some(IdTokenFlaw::NoKid) => header.kid = None,
        Some(IdTokenFlaw::OtherKey) => {
            other = EncodingKey::from_rsa_pem(OTHER_RSA_PEM).map_err(|e| e.to_string())?;
            key = &other;
        }
        Some(IdTokenFlaw::Hs256) => {
            header.alg = Algorithm::HS256;
            secret = EncodingKey::from_secret(jwk_modulus().as_bytes());
            key = &secret;
        }
        Some(IdTokenFlaw::AlgNone) => {
            let head = json!({"alg": "none", "typ": "JWT", "kid": KEY_ID});
            return Ok(format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(head.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ));
        }
        _ => {}
    }
    jsonwebtoken::encode(&header, claims, key).map_err(|e| e.to_string())
}

/// Signs `claims` as the fakes sign id_tokens (the sandbox key, `kid`
/// [`KEY_ID`], RS256), or with the header or signature defect of `flaw`:
/// for unit tests of a client's id_token checks against a fake's JWKS.
pub fn sign_claims(claims: &Value, flaw: Option<&IdTokenFlaw>) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PEM).expect("the sandbox key parses");
    sign_id_token(claims, flaw, &key).expect("signing in memory works")
}

/// The `at_hash` of an access token (RS256: the left half of its SHA-256).
pub(crate) fn at_hash(access_token: &str) -> String {
    let digest = super::sha256(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The JWKS endpoint's state: counted, and down on request.
#[derive(Default)]
pub(crate) struct Jwks {
    pub down: bool,
    pub requests: usize,
}

impl Jwks {
    /// Counts one GET and answers it: the JWKS every fake publishes, or 503
    /// while down.
    pub(crate) fn serve(&mut self) -> Response {
        self.requests += 1;
        if self.down {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "temporarily_unavailable"}),
            );
        }
        json_response(
            StatusCode::OK,
            &json!({"keys": [{
                "kty": "RSA",
                "use": "sig",
                "kid": KEY_ID,
                "alg": "RS256",
                "n": jwk_modulus(),
                "e": RSA_E,
            }]}),
        )
    }
}
