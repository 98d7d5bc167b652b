//! id_token validation: signature against the provider's JWKS (fetched and
//! cached, re-fetched when an unknown `kid` appears), audience, expiry and
//! nonce here; the issuer rule is the provider's, so it is a closure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use url::Url;

use super::client::{bool_or_string, OAuthHttp};

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
    ttl: Duration,
    refetch_floor: Duration,
}

impl JwksCache {
    pub fn new(http: OAuthHttp) -> JwksCache {
        JwksCache::with_timing(http, JWKS_TTL, REFETCH_FLOOR)
    }

    /// The same with other lifetimes (tests of the cache).
    fn with_timing(http: OAuthHttp, ttl: Duration, refetch_floor: Duration) -> JwksCache {
        JwksCache {
            http,
            cache: Arc::default(),
            ttl,
            refetch_floor,
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
            let fresh = at.elapsed() < self.ttl;
            let has_kid = set.find(kid).is_some();
            if fresh && (has_kid || at.elapsed() < self.refetch_floor) {
                return Ok(set.clone());
            }
        }
        let set = self.fetch(url).await?;
        cache.insert(url.to_string(), (Instant::now(), set.clone()));
        Ok(set)
    }

    /// Validates signature, `aud`, `exp` and `nbf` (60 s leeway) and
    /// `nonce`, and returns the claims. The caller checks `iss`.
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
        validation.validate_nbf = true;
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

#[cfg(test)]
mod tests {
    use mailconnect_sandbox::{sign_claims, FakeMicrosoft, FakeMicrosoftConfig, IdTokenFlaw};
    use serde_json::{json, Value};

    use super::*;

    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    /// A fake whose JWKS publishes the sandbox key, and that JWKS's URL.
    async fn keys() -> (FakeMicrosoft, Url) {
        let cfg = FakeMicrosoftConfig::new(CLIENT, "secret", "http://127.0.0.1:1/cb");
        let ms = FakeMicrosoft::start(cfg).await.unwrap();
        let url = Url::parse(&format!("{}/common/discovery/v2.0/keys", ms.base_url())).unwrap();
        (ms, url)
    }

    fn cache(ttl: Duration, floor: Duration) -> JwksCache {
        let http = OAuthHttp::new(Duration::from_secs(2), &crate::tls::ExtraRoots::default());
        JwksCache::with_timing(http, ttl, floor)
    }

    fn claims() -> Value {
        let now = crate::now();
        json!({"iss": "https://issuer.example", "sub": "subject-1", "aud": CLIENT,
               "iat": now, "nbf": now, "exp": now + 600, "nonce": "nonce-1",
               "email": "ops@example.com", "email_verified": "true"})
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(key),
            v => claims.as_object_mut().unwrap().insert(key.into(), v),
        };
        claims
    }

    async fn check(
        jwks: &JwksCache,
        url: &Url,
        token: &str,
    ) -> Result<StandardClaims, IdTokenError> {
        jwks.validate::<StandardClaims>(token, url, CLIENT, "nonce-1")
            .await
    }

    #[tokio::test]
    async fn a_valid_id_token_yields_its_claims() {
        let (_ms, url) = keys().await;
        let jwks = JwksCache::new(OAuthHttp::new(
            Duration::from_secs(2),
            &crate::tls::ExtraRoots::default(),
        ));
        let c = check(&jwks, &url, &sign_claims(&claims(), None))
            .await
            .unwrap();
        assert_eq!(
            (c.sub.as_str(), c.iss.as_str(), c.nonce.as_deref()),
            ("subject-1", "https://issuer.example", Some("nonce-1"))
        );
        assert_eq!(c.email.as_deref(), Some("ops@example.com"));
        assert_eq!(c.email_verified, Some(true), "\"true\" as a string");
        // A minute of clock skew either way is forgiven.
        let now = crate::now();
        let skewed = with(
            with(claims(), "exp", json!(now - 30)),
            "nbf",
            json!(now + 30),
        );
        assert!(check(&jwks, &url, &sign_claims(&skewed, None))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn each_defect_is_refused_with_its_reason() {
        let (_ms, url) = keys().await;
        let jwks = cache(JWKS_TTL, REFETCH_FLOOR);
        let now = crate::now();
        let invalid = |why| Err(IdTokenError::Invalid(why));
        let cases: Vec<(Value, Option<IdTokenFlaw>, Result<(), IdTokenError>)> = vec![
            (
                claims(),
                Some(IdTokenFlaw::Hs256),
                invalid("not signed with an asymmetric key"),
            ),
            (claims(), Some(IdTokenFlaw::AlgNone), invalid("malformed")),
            (claims(), Some(IdTokenFlaw::NoKid), invalid("no kid")),
            (
                claims(),
                Some(IdTokenFlaw::UnknownKid),
                invalid("unknown kid"),
            ),
            (
                claims(),
                Some(IdTokenFlaw::OtherKey),
                invalid("bad signature"),
            ),
            (
                with(claims(), "aud", json!("another-app")),
                None,
                invalid("wrong audience"),
            ),
            (
                with(claims(), "aud", Value::Null),
                None,
                invalid("malformed"),
            ),
            (
                with(claims(), "iss", Value::Null),
                None,
                invalid("malformed"),
            ),
            (
                with(claims(), "exp", json!(now - 90)),
                None,
                invalid("expired"),
            ),
            (
                with(claims(), "exp", Value::Null),
                None,
                invalid("malformed"),
            ),
            (
                with(claims(), "nbf", json!(now + 90)),
                None,
                invalid("not yet valid"),
            ),
            (
                with(claims(), "nonce", json!("another-sign-in")),
                None,
                invalid("nonce mismatch"),
            ),
            (
                with(claims(), "nonce", Value::Null),
                None,
                invalid("nonce mismatch"),
            ),
            (claims(), None, Ok(())),
        ];
        for (claims, flaw, want) in cases {
            let token = sign_claims(&claims, flaw.as_ref());
            let got = check(&jwks, &url, &token).await.map(|_| ());
            assert_eq!(got, want, "{flaw:?} {claims}");
        }
        assert_eq!(
            check(&jwks, &url, "not-a-jwt").await.map(|_| ()),
            invalid("malformed")
        );
    }

    #[test]
    fn email_verified_may_be_a_bool_or_a_string() {
        for (raw, want) in [
            (json!(true), Some(true)),
            (json!(false), Some(false)),
            (json!("TRUE"), Some(true)),
            (json!("false"), Some(false)),
            (Value::Null, None),
        ] {
            let c: StandardClaims =
                serde_json::from_value(with(claims(), "email_verified", raw)).unwrap();
            assert_eq!(c.email_verified, want);
        }
    }

    #[tokio::test]
    async fn keys_that_cannot_be_fetched_or_read_are_unavailable() {
        let (ms, url) = keys().await;
        let token = sign_claims(&claims(), None);
        ms.set_jwks_down(true);
        let jwks = cache(JWKS_TTL, REFETCH_FLOOR);
        assert_eq!(
            check(&jwks, &url, &token).await.map(|_| ()),
            Err(IdTokenError::JwksUnavailable)
        );
        // A page that is not a key set (the discovery document).
        let not_keys = Url::parse(&format!(
            "{}/common/v2.0/.well-known/openid-configuration",
            ms.base_url()
        ))
        .unwrap();
        assert_eq!(
            check(&jwks, &not_keys, &token).await.map(|_| ()),
            Err(IdTokenError::JwksUnavailable)
        );
        // A failure is not cached: the keys are fetched once they are back.
        ms.set_jwks_down(false);
        assert!(check(&jwks, &url, &token).await.is_ok());
    }

    #[tokio::test]
    async fn keys_are_cached_and_fetched_again_only_when_stale_or_for_a_new_kid() {
        let (ms, url) = keys().await;
        let token = sign_claims(&claims(), None);
        let unknown = sign_claims(&claims(), Some(&IdTokenFlaw::UnknownKid));

        // Fresh keys serve every token, and an unknown kid does not fetch
        // again within the floor (a stream of forged kids costs nothing).
        let jwks = cache(JWKS_TTL, REFETCH_FLOOR);
        for _ in 0..3 {
            assert!(check(&jwks, &url, &token).await.is_ok());
        }
        assert!(check(&jwks, &url, &unknown).await.is_err());
        assert_eq!(ms.jwks_requests(), 1);

        // Past the floor an unknown kid fetches again (the provider may
        // have rotated its keys); a known one still does not.
        let jwks = cache(JWKS_TTL, Duration::ZERO);
        assert!(check(&jwks, &url, &token).await.is_ok());
        assert!(check(&jwks, &url, &token).await.is_ok());
        assert_eq!(ms.jwks_requests(), 2);
        assert!(check(&jwks, &url, &unknown).await.is_err());
        assert_eq!(ms.jwks_requests(), 3);

        // Stale keys are fetched again even for a known kid.
        let jwks = cache(Duration::ZERO, REFETCH_FLOOR);
        assert!(check(&jwks, &url, &token).await.is_ok());
        assert!(check(&jwks, &url, &token).await.is_ok());
        assert_eq!(ms.jwks_requests(), 5);
    }
}
