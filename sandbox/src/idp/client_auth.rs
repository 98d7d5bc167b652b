//! Client authentication at the token endpoint (RFC 6749 §2.3.1):
//! `client_secret_basic`, `client_secret_post` or, at a fake that takes
//! them, a `client_assertion` (`private_key_jwt`, RFC 7523 §2.2) — never
//! two at once. The fake OpenID provider checks its assertions with
//! [`super::client_assertion`].

use std::collections::BTreeMap;

use axum::http::HeaderMap;

use super::http::decode_basic;

/// Why the client is not authenticated, in the order the checks run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientAuthProblem {
    /// An `Authorization` header that is not well-formed HTTP Basic.
    BadHeader,
    /// The header and the body name different clients.
    IdMismatch,
    /// Neither names a client.
    NoClientId,
    /// Not the registered client (its id).
    UnknownClient(String),
    /// Two ways of authenticating in one request (the first two found).
    BothMethods(Method, Method),
    /// No secret at all.
    NoSecret,
    /// The wrong secret for this client (its id).
    WrongSecret(String),
}

/// How a client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `client_secret_basic`: HTTP Basic with the client id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    Post,
    /// `private_key_jwt`: a signed JWT in `client_assertion`.
    PrivateKeyJwt,
}

impl Method {
    /// The name discovery documents use.
    pub fn name(self) -> &'static str {
        match self {
            Method::Basic => "client_secret_basic",
            Method::Post => "client_secret_post",
            Method::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// What a client shows to prove it is who it says, not yet checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    Secret(String, Method),
    Assertion {
        /// `client_assertion_type`, when sent.
        kind: Option<String>,
        assertion: String,
    },
}

/// The client a request names and the one proof it shows. With
/// `assertions` false, `client_assertion` is a field like any other, as at
/// a provider that knows no `private_key_jwt`.
pub(crate) fn identify(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
    client_id: &str,
    assertions: bool,
) -> Result<(String, Proof), ClientAuthProblem> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let basic = decode_basic(headers).map_err(|_| ClientAuthProblem::BadHeader)?;
    let id = match (&basic, get("client_id")) {
        (Some((bid, _)), Some(fid)) if bid != fid => return Err(ClientAuthProblem::IdMismatch),
        (Some((bid, _)), _) => bid.clone(),
        (None, Some(fid)) => fid.to_string(),
        (None, None) => return Err(ClientAuthProblem::NoClientId),
    };
    if id != client_id {
        return Err(ClientAuthProblem::UnknownClient(id));
    }
    let assertion = get("client_assertion").filter(|_| assertions);
    let mut proofs = Vec::new();
    if let Some((_, s)) = basic {
        proofs.push(Proof::Secret(s, Method::Basic));
    }
    if let Some(s) = get("client_secret") {
        proofs.push(Proof::Secret(s.to_string(), Method::Post));
    }
    if let Some(a) = assertion {
        proofs.push(Proof::Assertion {
            kind: get("client_assertion_type").map(str::to_string),
            assertion: a.to_string(),
        });
    }
    let method = |p: &Proof| match p {
        Proof::Secret(_, m) => *m,
        Proof::Assertion { .. } => Method::PrivateKeyJwt,
    };
    if let [first, second, ..] = proofs.as_slice() {
        return Err(ClientAuthProblem::BothMethods(
            method(first),
            method(second),
        ));
    }
    let proof = proofs.pop().ok_or(ClientAuthProblem::NoSecret)?;
    Ok((id, proof))
}

/// The client's id and method when `headers` and `form` authenticate the
/// registered client `client_id` with `client_secret`.
pub(crate) fn authenticate(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
    client_id: &str,
    client_secret: &str,
) -> Result<(String, Method), ClientAuthProblem> {
    match identify(headers, form, client_id, false)? {
        (id, Proof::Secret(secret, method)) if secret == client_secret => Ok((id, method)),
        // A wrong secret (an assertion is never identified here).
        (id, _) => Err(ClientAuthProblem::WrongSecret(id)),
    }
}
