//! Authorization codes: random, single use, short-lived, bound to the
//! client, the redirect URI and the PKCE challenge of their authorize
//! request (RFC 6749 §4.1.3, RFC 7636 §4.6).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::pkce;

/// How long a code may wait to be redeemed.
pub(crate) const CODE_LIFETIME_SECS: i64 = 600;

/// One issued code; `data` is what the provider needs at redemption (the
/// user, the scopes, …).
pub(crate) struct Code<T> {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
    pub data: T,
}

/// Why a code is not redeemable, in the order the checks run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CodeProblem {
    Used,
    Expired,
    OtherClient,
    NoRedirectUri,
    OtherRedirectUri,
    NoVerifier,
    WrongVerifier,
}

impl<T> Code<T> {
    /// Unused, unexpired and issued to `client_id` (checked in that order).
    pub(crate) fn check_issued_to(&self, client_id: &str) -> Result<(), CodeProblem> {
        if self.used {
            return Err(CodeProblem::Used);
        }
        if Utc::now() >= self.expires_at {
            return Err(CodeProblem::Expired);
        }
        if self.client_id != client_id {
            return Err(CodeProblem::OtherClient);
        }
        Ok(())
    }

    /// The same `redirect_uri` as at authorize, then a `code_verifier` that
    /// matches the challenge.
    pub(crate) fn check_binding(
        &self,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<(), CodeProblem> {
        match redirect_uri {
            None => return Err(CodeProblem::NoRedirectUri),
            Some(r) if r != self.redirect_uri => return Err(CodeProblem::OtherRedirectUri),
            Some(_) => {}
        }
        let verifier = verifier.ok_or(CodeProblem::NoVerifier)?;
        if !pkce::verifier_matches(verifier, &self.code_challenge) {
            return Err(CodeProblem::WrongVerifier);
        }
        Ok(())
    }
}

/// The codes a fake issued.
pub(crate) struct Codes<T>(HashMap<String, Code<T>>);

impl<T> Default for Codes<T> {
    fn default() -> Self {
        Codes(HashMap::new())
    }
}

/// What authorize binds a code to.
pub(crate) struct Binding<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
    pub nonce: Option<String>,
}

impl<T> Codes<T> {
    /// A new code (`prefix` + `chars` random characters), live for
    /// [`CODE_LIFETIME_SECS`].
    pub(crate) fn issue(&mut self, prefix: &str, chars: usize, to: Binding<'_>, data: T) -> String {
        let code = super::random_token(prefix, chars);
        self.0.insert(
            code.clone(),
            Code {
                client_id: to.client_id.to_string(),
                redirect_uri: to.redirect_uri.to_string(),
                code_challenge: to.code_challenge.to_string(),
                nonce: to.nonce,
                expires_at: Utc::now() + chrono::Duration::seconds(CODE_LIFETIME_SECS),
                used: false,
                data,
            },
        );
        code
    }

    pub(crate) fn get(&self, code: &str) -> Option<&Code<T>> {
        self.0.get(code)
    }

    /// A code is redeemed once.
    pub(crate) fn mark_used(&mut self, code: &str) {
        if let Some(c) = self.0.get_mut(code) {
            c.used = true;
        }
    }

    /// Every code issued so far is expired from now on.
    pub(crate) fn expire_all(&mut self) {
        let past = Utc::now() - chrono::Duration::seconds(1);
        for c in self.0.values_mut() {
            c.expires_at = past;
        }
    }
}
