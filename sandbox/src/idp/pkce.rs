//! PKCE (RFC 7636) as the fakes require it: S256 only, always.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Why authorize refuses the PKCE parameters it got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChallengeProblem {
    /// No `code_challenge`.
    Missing,
    /// `code_challenge_method` is not `S256` (`plain`, or none at all).
    NotS256,
    /// Not 43 base64url characters (the size of a SHA-256 without padding).
    Malformed,
}

/// The `code_challenge` of an authorize request, when it is a well-formed
/// S256 one.
pub(crate) fn check_challenge<'a>(
    challenge: Option<&'a str>,
    method: Option<&str>,
) -> Result<&'a str, ChallengeProblem> {
    let challenge = challenge.ok_or(ChallengeProblem::Missing)?;
    if method != Some("S256") {
        return Err(ChallengeProblem::NotS256);
    }
    let shaped = challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !shaped {
        return Err(ChallengeProblem::Malformed);
    }
    Ok(challenge)
}

/// `BASE64URL(SHA256(verifier)) == challenge`.
pub(crate) fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    URL_SAFE_NO_PAD.encode(super::sha256(verifier.as_bytes())) == challenge
}
