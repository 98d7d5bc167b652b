//! id_token validation: signature against the provider's JWKS (fetched and
//! cached, re-fetched when an unknown `kid` appears), audience, expiry and
//! nonce here; the issuer rule is the provider's, so it is a closure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::client::OAuthHttp;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdTokenError {
    #[error("the provider's signing keys could not be fetched")]
    JwksUnavailable,
    #[error("the id_token is invalid: {0}")]
    Invalid(&'static str),
}

/// A fresh JWKS is kept this long; an unknown `kid` forces a re-fetch, at
/// most once per `REFETCH_FLOOR` so a stream of forged kids cannot hammer
/// the provider.
const JWKS_TTL: Duration = Duration::from_secs(3600);
const REFETCH_FLOOR: Duration = Duration::from_secs(30);

/// Key sets by JWKS URL, with the time each was fetched.
type KeySets = HashMap<String, (Instant, Arc<JwkSet>)>;

#[derive(Clone)]
pub struct JwksCache {
    http: OAuthHttp,
    cache: Arc<Mutex<KeySets>>,
}

impl JwksCache {
    pub fn new(http: OAuthHttp) -> JwksCache {
        JwksCache {
            http,
            cache: Arc::default(),
        }
    }

    async fn fetch(&self, url: &Url) -> Result<Arc<JwkSet>, IdTokenError> {
        let set: JwkSet = self
            .http
            .client()
            .get(url.clone())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| IdTokenError::JwksUnavailable)?
            .json()
            .await
            .map_err(|_| IdTokenError::JwksUnavailable)?;
        Ok(Arc::new(set))
    }

    async fn key_set(&self, url: &Url, kid: &str) -> Result<Arc<JwkSet>, IdTokenError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, set)) = cache.get(url.as_str()) {
            let fresh = at.elapsed() < JWKS_TTL;
            let has_kid = set.find(kid).is_some();
            if fresh && (has_kid || at.elapsed() < REFETCH_FLOOR) {
                return Ok(set.clone());
            }
        }
        let set = self.fetch(url).await?;
        cache.insert(url.to_string(), (Instant::now(), set.clone()));
        Ok(set)
    }

    /// Validates signature, `aud`, `exp` (60 s leeway) and `nonce`, and
    /// returns the claims. The caller checks `iss`.
    pub async fn validate<C: DeserializeOwned + HasNonce>(
        &self,
        token: &str,
        jwks_url: &Url,
        client_id: &str,
        nonce: &str,
    ) -> Result<C, IdTokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| IdTokenError::Invalid("malformed"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(IdTokenError::Invalid("not signed with an asymmetric key"));
        }
        let kid = header.kid.ok_or(IdTokenError::Invalid("no kid"))?;
        let set = self.key_set(jwks_url, &kid).await?;
        let jwk = set.find(&kid).ok_or(IdTokenError::Invalid("unknown kid"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| IdTokenError::Invalid("unusable key"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[client_id]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 60;
        let claims = jsonwebtoken::decode::<C>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                IdTokenError::Invalid(match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::ImmatureSignature => "not yet valid",
                    _ => "malformed",
                })
            })?
            .claims;
        if claims.nonce() != Some(nonce) {
            return Err(IdTokenError::Invalid("nonce mismatch"));
        }
        Ok(claims)
    }
}

/// The standard OpenID Connect claims a provider without quirks is read by
/// (Google, the generic `oidc` provider).
#[derive(serde::Deserialize)]
pub struct StandardClaims {
    pub sub: String,
    pub iss: String,
    pub nonce: Option<String>,
    pub email: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub email_verified: Option<bool>,
}

impl HasNonce for StandardClaims {
    fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }
}

/// Claims structs expose their `nonce` for the common check.
pub trait HasNonce {
    fn nonce(&self) -> Option<&str>;
}

/// `email_verified` as a boolean or as `"true"` (Google has sent both;
/// other providers copy it).
pub fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrStr {
        Bool(bool),
        Str(String),
    }
    Ok(match Option::<BoolOrStr>::deserialize(d)? {
        None => None,
        Some(BoolOrStr::Bool(b)) => Some(b),
        Some(BoolOrStr::Str(s)) => Some(s.eq_ignore_ascii_case("true")),
    })
}
