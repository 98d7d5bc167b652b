//! Client authentication at the token endpoint (RFC 6749 §2.3.1):
//! `client_secret_basic` or `client_secret_post`, never both at once
//! (`private_key_jwt` is [`super::client_assertion`]'s).

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
    /// A secret in the header and one in the body.
    BothMethods,
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
    /// `private_key_jwt`: a JWT signed with a key the client registered.
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

/// The client's id when `headers` and `form` authenticate the registered
/// client `client_id` with `client_secret`.
pub(crate) fn authenticate(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
    client_id: &str,
    client_secret: &str,
) -> Result<(String, Method), ClientAuthProblem> {
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
    let (secret, method) = match (&basic, get("client_secret")) {
        (Some(_), Some(_)) => return Err(ClientAuthProblem::BothMethods),
        (Some((_, s)), None) => (s.clone(), Method::Basic),
        (None, Some(s)) => (s.to_string(), Method::Post),
        (None, None) => return Err(ClientAuthProblem::NoSecret),
    };
    if secret != client_secret {
        return Err(ClientAuthProblem::WrongSecret(id));
    }
    Ok((id, method))
}
