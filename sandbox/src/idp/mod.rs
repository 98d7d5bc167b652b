//! # The fake identity-provider core
//!
//! What every fake of this crate ([`crate::FakeMicrosoft`],
//! [`crate::google::FakeGoogle`], [`crate::oidc::FakeOidc`]) does the same
//! way, so that each of them keeps only what its provider does differently
//! (its endpoints' shapes, its error bodies, its scope and issuer rules):
//!
//! * [`keys`]: the sandbox signing key, the JWKS, id_token signing and
//!   [`IdTokenFlaw`]s;
//! * `http`: JSON answers, strict form parsing, HTTP Basic, bearer
//!   tokens, redirects in each response mode;
//! * `pkce` and `codes`: S256-only PKCE, and single-use, short-lived
//!   authorization codes bound to client, redirect URI and challenge;
//! * [`client_auth`]: `client_secret_basic` / `client_secret_post`, and
//!   which one proof (a secret or a `client_assertion`) a request shows;
//! * [`client_assertion`]: `private_key_jwt`, against the public keys a
//!   client registered;
//! * [`tokens`]: access tokens, and refresh tokens with their revocation,
//!   [`Rotation`] and inactivity rules;
//! * `users`: who signs in at authorize;
//! * [`faults`]: the [`Fault`]s a token endpoint plays instead of working;
//! * `core`: the knobs, counters and records every fake keeps
//!   (faults, id_token flaws, JWKS outage, next user, token-request log,
//!   requests in flight, what was issued).
//!
//! Only the types tests and callers name are public (the key helpers,
//! [`IdTokenFlaw`], [`Rotation`], [`Fault`], [`TokenRequestRecord`],
//! [`client_auth::Method`]); the crate root re-exports them under their
//! old paths. The machinery itself is crate-private.

pub mod client_assertion;
pub mod client_auth;
pub(crate) mod codes;
pub(crate) mod core;
pub mod faults;
pub(crate) mod http;
pub mod keys;
pub(crate) mod pkce;
pub mod tokens;
pub(crate) mod users;

pub use self::core::TokenRequestRecord;
pub use faults::Fault;
pub use keys::{jwk_exponent, jwk_modulus, sign_claims, IdTokenFlaw, KEY_ID};
pub use tokens::Rotation;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize().into()
}

/// A version-4-shaped uuid made of the first bytes of a hash: stable ids.
pub(crate) fn uuid_from_hash(h: &[u8; 32]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// "jane.doe@x" → "Jane Doe".
pub(crate) fn display_name(addr: &str) -> String {
    let local = addr.split('@').next().unwrap_or(addr);
    local
        .split(['.', '_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `prefix` + `chars` random base64url characters.
pub(crate) fn random_token(prefix: &str, chars: usize) -> String {
    let mut bytes = vec![0u8; chars.div_ceil(4) * 3];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut s = URL_SAFE_NO_PAD.encode(bytes);
    s.truncate(chars);
    format!("{prefix}{s}")
}
