//! `private_key_jwt` (OpenID Connect Core 9, RFC 7523 2.2): the client
//! proves who it is with a JWT signed by a key whose public half it
//! registered, instead of a secret.
//!
//! Checked strictly, so that a client that gets one detail wrong is
//! refused here rather than at a real provider: `client_assertion_type`
//! is RFC 7523's; the header's `kid` is the RFC 7638 thumbprint of a
//! registered key (whatever `kid` the registered JWK says) and its `alg`
//! one the fake lists and that key's type signs; the signature is that
//! key's; `iss` = `sub` = the client id; `aud` = the token endpoint URL;
//! `jti` is present and never seen before; `exp` is in the future and at
//! most [`MAX_LIFETIME_SECS`] away; `iat` and `nbf`, when present, are not
//! in the future.

use std::collections::{BTreeMap, HashSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::sha256;

/// RFC 7523's `client_assertion_type`.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The algorithms the fake takes for client assertions, as its discovery
/// lists them.
pub const ASSERTION_ALGS: [&str; 3] = ["PS256", "RS256", "ES256"];

/// An assertion valid longer than this is refused (Entra allows 10
/// minutes; a client signs a fresh one per request).
pub const MAX_LIFETIME_SECS: i64 = 600;

/// Clock skew forgiven on `exp`, `iat` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// An assertion that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub alg: String,
    pub kid: String,
    /// The client it authenticated.
    pub client_id: String,
    /// The JWT itself, so a test can show it never reached a log.
    pub assertion: String,
}

/// The public keys a client registered, and the `jti`s already spent.
#[derive(Default)]
pub(crate) struct ClientKeys {
    /// By RFC 7638 thumbprint.
    keys: BTreeMap<String, Jwk>,
    seen: HashSet<String>,
}

impl ClientKeys {
    /// Registers every key of a JWK Set (`{"keys": [...]}`).
    pub(crate) fn register(&mut self, jwks: &Value) -> anyhow::Result<()> {
        let keys = jwks["keys"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("a JWK Set has a \"keys\" array"))?;
        for jwk in keys {
            let thumbprint = thumbprint(jwk)?;
            self.keys
                .insert(thumbprint, serde_json::from_value(jwk.clone())?);
        }
        Ok(())
    }

    /// Checks the assertion of `form` for `client_id` at `audience` (the
    /// token endpoint URL); the reason for the `error_description` when it
    /// fails.
    pub(crate) fn verify(
        &mut self,
        form: &BTreeMap<String, String>,
        client_id: &str,
        audience: &str,
    ) -> Result<VerifiedAssertion, String> {
        if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return Err(format!("client_assertion_type must be {JWT_BEARER}"));
        }
        let assertion = form
            .get("client_assertion")
            .filter(|a| !a.is_empty())
            .ok_or("Missing parameter: client_assertion")?;
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|_| "The client_assertion is not a JWT.".to_owned())?;
        let kid = header.kid.ok_or("The client_assertion names no kid.")?;
        let alg = format!("{:?}", header.alg);
        if !ASSERTION_ALGS.contains(&alg.as_str()) {
            return Err(format!("alg {alg} is not allowed for client assertions."));
        }
        let jwk = self.keys.get(&kid).ok_or_else(|| {
            format!("kid {kid} is not the RFC 7638 thumbprint of a key the client registered.")
        })?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("Unusable key: {e}"))?;
        let claims = jsonwebtoken::decode::<Value>(
            assertion,
            &key,
            &validation(header.alg, client_id, audience),
        )
        .map_err(|e| refusal(e.kind()))?
        .claims;
        let now = chrono::Utc::now().timestamp();
        if claims["exp"].as_i64().unwrap_or(i64::MAX) > now + MAX_LIFETIME_SECS {
            return Err(format!(
                "The client_assertion is valid for more than {MAX_LIFETIME_SECS} s."
            ));
        }
        if claims["iat"].as_i64().unwrap_or(now) > now + LEEWAY_SECS as i64 {
            return Err("The client_assertion was issued in the future (iat).".into());
        }
        let jti = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty())
            .ok_or("The client_assertion has no jti.")?;
        if !self.seen.insert(jti.to_owned()) {
            return Err("The client_assertion was used already (jti).".into());
        }
        Ok(VerifiedAssertion {
            alg,
            kid,
            client_id: client_id.to_owned(),
            assertion: assertion.clone(),
        })
    }
}

fn validation(alg: Algorithm, client_id: &str, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_audience(&[audience]);
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_owned());
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v
}

/// The `error_description` for a JWT the library refused.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "The client_assertion's signature is not the key's.",
        ErrorKind::InvalidAlgorithm => "The client_assertion's alg does not fit its key.",
        ErrorKind::ExpiredSignature => "The client_assertion has expired.",
        ErrorKind::ImmatureSignature => "The client_assertion is not valid yet (nbf).",
        ErrorKind::InvalidAudience => "The client_assertion's aud must be the token endpoint URL.",
        ErrorKind::InvalidIssuer => "The client_assertion's iss must be the client_id.",
        ErrorKind::InvalidSubject => "The client_assertion's sub must be the client_id.",
        ErrorKind::MissingRequiredClaim(_) => {
            "The client_assertion lacks one of exp, iss, sub, aud."
        }
        _ => "The client_assertion is not a valid JWT.",
    }
    .to_owned()
}

/// RFC 7638: base64url SHA-256 of the key's required members, in
/// lexicographic order, without whitespace.
pub fn thumbprint(jwk: &Value) -> anyhow::Result<String> {
    let member = |name: &str| {
        jwk[name]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the JWK has no \"{name}\""))
    };
    let canonical = match member("kty")? {
        "RSA" => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            member("e")?,
            member("n")?
        ),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        other => anyhow::bail!("a {other} key cannot sign client assertions here"),
    };
    Ok(URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes())))
}
