//! The OAuth `state`: a JWT signed with `OAUTH_STATE_SECRET` that names the
//! tenant, user, provider and account of one authorization request, and
//! carries the PKCE verifier and nonce sealed with AES-256-GCM (bound to its
//! `jti`), so they never reach the browser in clear and `authorize` stores
//! nothing. Recording its `jti` at the callback is what makes it work once.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Keeps state tokens apart from callers' JWTs even if one secret served both.
const AUDIENCE: &str = "mailconnect:oauth-state";
pub const LIFETIME_SECS: i64 = 600;
/// The `flw` claim of an admin-consent flow.
pub const FLOW_ADMIN_CONSENT: &str = "admin_consent";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateClaims {
    pub jti: String,
    /// Tenant of the admin who started the flow.
    pub tid: String,
    /// The admin's user id.
    pub sub: String,
    /// Provider the flow was started for (mix-up defence).
    pub prv: String,
    /// The account being re-authorised, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<String>,
    /// A validated relative path to return to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// `verifier nonce`, sealed with the token key ring (see [`crate::crypto`]).
    #[serde(default)]
    pub sec: String,
    /// For a flow bound to the browser that started it: the SHA-256 of the
    /// secret that browser holds in its flow cookie ([`BrowserBinding`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bnd: Option<String>,
    /// The kind of flow: absent for connecting a mailbox,
    /// [`FLOW_ADMIN_CONSENT`] for Microsoft's admin consent. A state is
    /// only accepted by a callback of its own kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flw: Option<String>,
    /// Admin consent: the directory it was started for (a GUID, a domain
    /// or `organizations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// A flow started from a connect link: the link's id. The callback
    /// then ends on the link's page and marks the link used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lnk: Option<String>,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StateError {
    /// Bad signature, wrong shape: nothing in it can be trusted.
    Invalid,
    /// Genuine but past its `exp`: its return address can still be trusted.
    Expired(Box<StateClaims>),
}

/// Binds a state to the browser that started it (RFC 9700 4.7.1): a
/// random secret goes to that browser in an HttpOnly, SameSite=Lax cookie
/// named after the state's `jti` (so flows started side by side in one
/// browser do not overwrite each other's), and its SHA-256 into the state.
/// The callback then works only in a browser holding the secret: a state
/// lifted from one browser and replayed in another is refused.
pub struct BrowserBinding {
    pub cookie_name: String,
    pub secret: SecretString,
}

/// Flow cookies are `__Host-` cookies: set only over a secure origin, for
/// this host and path `/`, never readable by another host.
pub const BINDING_COOKIE_PREFIX: &str = "__Host-mailconnect-flow-";

impl BrowserBinding {
    /// A new binding for the state `jti`, and the claim (`bnd`) to put in it.
    pub fn new(jti: &str) -> (BrowserBinding, String) {
        let secret = super::pkce::new_verifier();
        let claim = super::pkce::challenge(&secret);
        let binding = BrowserBinding {
            cookie_name: BrowserBinding::cookie_name(jti),
            secret,
        };
        (binding, claim)
    }

    /// The cookie of the flow whose state has this `jti`.
    pub fn cookie_name(jti: &str) -> String {
        let id: String = jti
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        format!("{BINDING_COOKIE_PREFIX}{id}")
    }

    /// Whether `secret` (the cookie's value) is the one `claim` was made from.
    pub fn matches(claim: &str, secret: &str) -> bool {
        super::pkce::challenge(&SecretString::from(secret.to_owned())) == claim
    }
}

pub struct StateSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl StateSigner {
    pub fn new(secret: &SecretString) -> StateSigner {
        let bytes = secret.expose_secret().as_bytes();
        StateSigner {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        }
    }

    pub fn claims(jti: String, tenant: &str, user: &str, provider: &str, now: i64) -> StateClaims {
        StateClaims {
            jti,
            tid: tenant.to_owned(),
            sub: user.to_owned(),
            prv: provider.to_owned(),
            acc: None,
            ret: None,
            sec: String::new(),
            bnd: None,
            flw: None,
            dir: None,
            lnk: None,
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + LIFETIME_SECS,
        }
    }

    pub fn sign(&self, claims: &StateClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of a serialisable struct cannot fail")
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<StateClaims, StateError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "aud"]);
        let claims = jsonwebtoken::decode::<StateClaims>(token, &self.decoding, &validation)
            .map_err(|_| StateError::Invalid)?
            .claims;
        if claims.exp <= now {
            return Err(StateError::Expired(Box::new(claims)));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(s: &str) -> StateSigner {
        StateSigner::new(&SecretString::from(s))
    }

    #[test]
    fn signed_state_verifies_and_round_trips() {
        let s = signer("state-secret-for-tests-0123456789");
        let mut claims = StateSigner::claims("j1".into(), "t1", "u1", "microsoft", 1000);
        claims.ret = Some("/settings".into());
        let token = s.sign(&claims);
        assert_eq!(s.verify(&token, 1001).unwrap(), claims);
    }

    #[test]
    fn forged_or_tampered_state_is_invalid() {
        let s = signer("state-secret-for-tests-0123456789");
        let claims = StateSigner::claims("j1".into(), "t1", "u1", "microsoft", 1000);
        let forged = signer("another-secret-entirely-0123456789").sign(&claims);
        assert_eq!(s.verify(&forged, 1001), Err(StateError::Invalid));
        let token = s.sign(&claims);
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = s.sign(&StateSigner::claims(
            "j2".into(),
            "t2",
            "u1",
            "microsoft",
            1000,
        ));
        parts[1] = evil.split('.').nth(1).unwrap();
        assert_eq!(s.verify(&parts.join("."), 1001), Err(StateError::Invalid));
        assert_eq!(s.verify("garbage", 1001), Err(StateError::Invalid));
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(s.verify(&none, 1001), Err(StateError::Invalid));
    }

    #[test]
    fn a_browser_binding_matches_only_its_own_secret() {
        let (binding, claim) = BrowserBinding::new("0190f0f0-1c2d-7e3f-8a4b-5c6d7e8f9a0b");
        assert_eq!(
            binding.cookie_name,
            "__Host-mailconnect-flow-0190f0f01c2d7e3f8a4b5c6d7e8f9a0b"
        );
        assert!(BrowserBinding::matches(
            &claim,
            binding.secret.expose_secret()
        ));
        let (other, _) = BrowserBinding::new("j2");
        assert!(!BrowserBinding::matches(
            &claim,
            other.secret.expose_secret()
        ));
        assert!(!BrowserBinding::matches(&claim, ""));
        assert!(!format!("{:?}", claim).contains(binding.secret.expose_secret()));
    }

    #[test]
    fn expired_state_is_reported_with_its_claims() {
        let s = signer("state-secret-for-tests-0123456789");
        let claims = StateSigner::claims("j1".into(), "t1", "u1", "microsoft", 1000);
        let token = s.sign(&claims);
        assert_eq!(
            s.verify(&token, 1000 + LIFETIME_SECS),
            Err(StateError::Expired(Box::new(claims)))
        );
    }
}
