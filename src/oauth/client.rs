//! Requests to a provider's token endpoint and what their answers mean.
//!
//! Hand-written on reqwest rather than through the `oauth2` crate because
//! the rules we must keep are about the edges that crate hides: `expires_in`
//! may arrive as a string, `Retry-After` must be honoured, and the class of
//! an error (user, operator, passing) decides what is stored.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::TokenSet;
use crate::diagnosis::{aadsts_code, Cause};

/// A token request that did not yield tokens, split by who must act. Each
/// carries its [`Cause`]: the class decides what happens, the cause only
/// explains it (DESIGN.md "Diagnosis").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The user must reconnect (`invalid_grant`, `interaction_required`,
    /// `consent_required`). Never retried.
    #[error("the provider refused the grant ({error}); the user must reconnect")]
    Reauth { error: String, cause: Cause },
    /// Our client registration is broken (`invalid_client`,
    /// `unauthorized_client`): an operator must act; no account changes.
    #[error("the provider refused our client credentials ({error})")]
    Misconfigured { error: String, cause: Cause },
    /// Any other OAuth error: the request itself was wrong.
    #[error("the provider refused the request ({error}, HTTP {status})")]
    Refused {
        error: String,
        status: u16,
        cause: Cause,
    },
    /// May pass: 429, 5xx, timeouts, refused connections, unreadable answers.
    #[error("the provider is unavailable: {reason}")]
    Transient {
        retry_after: Option<Duration>,
        reason: String,
        cause: Cause,
    },
}

impl TokenError {
    /// Classifies an OAuth `error` code. Only the code counts, never the
    /// description text; the AADSTS number (`aadsts`) only explains, with
    /// one exception: AADSTS50196, a throttled request loop, passes
    /// whatever its `error`. Microsoft may put the precise cause in
    /// `suberror`; `invalid_grant` covers it either way.
    pub fn from_oauth_error(error: &str, status: u16, aadsts: Option<u32>) -> TokenError {
        let cause = Cause::of_oauth(error, aadsts, status);
        if aadsts == Some(50196) {
            return TokenError::Transient {
                retry_after: None,
                reason: format!("{} (AADSTS50196)", sanitize_code(error)),
                cause,
            };
        }
        match error {
            "invalid_grant" | "interaction_required" | "consent_required" | "login_required" => {
                TokenError::Reauth {
                    error: error.to_owned(),
                    cause,
                }
            }
            "invalid_client" | "unauthorized_client" => TokenError::Misconfigured {
                error: error.to_owned(),
                cause,
            },
            "temporarily_unavailable" | "server_error" => TokenError::Transient {
                retry_after: None,
                reason: error.to_owned(),
                cause,
            },
            _ => TokenError::Refused {
                error: sanitize_code(error),
                status,
                cause,
            },
        }
    }

    /// A passing failure that is not the provider's answer (a timeout, a
    /// refused connection, an unreadable document).
    pub fn unavailable(reason: impl Into<String>) -> TokenError {
        TokenError::Transient {
            retry_after: None,
            reason: reason.into(),
            cause: Cause::ProviderUnavailable,
        }
    }

    /// A short code for logs, metrics and `last_error`.
    pub fn code(&self) -> &str {
        match self {
            TokenError::Reauth { error, .. }
            | TokenError::Misconfigured { error, .. }
            | TokenError::Refused { error, .. } => error,
            TokenError::Transient { .. } => "provider_unavailable",
        }
    }

    /// Why, in the closed list of causes.
    pub fn cause(&self) -> Cause {
        match self {
            TokenError::Reauth { cause, .. }
            | TokenError::Misconfigured { cause, .. }
            | TokenError::Refused { cause, .. }
            | TokenError::Transient { cause, .. } => *cause,
        }
    }
}

/// Keeps a provider-chosen error code printable and short, since it ends up
/// in logs and in the status route.
fn sanitize_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.' || *c == '-')
        .take(64)
        .collect()
}

/// The HTTP client for every provider: no redirects (a token endpoint that
/// redirects is misconfigured or hostile), bounded time, rustls.
#[derive(Clone)]
pub struct OAuthHttp {
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
    #[serde(default)]
    suberror: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    /// Microsoft's AADSTS numbers.
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// A token endpoint's success answer, with the id_token kept apart.
pub struct TokenResponse {
    pub tokens: TokenSet,
    pub id_token: Option<String>,
}

/// When a provider omits `expires_in`, assume an hour, the common lifetime.
const DEFAULT_EXPIRES_IN: i64 = 3600;

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(i64),
        Float(f64),
        Str(String),
    }
    Ok(match Option::<NumOrStr>::deserialize(d)? {
        None => None,
        Some(NumOrStr::Num(n)) => Some(n),
        Some(NumOrStr::Float(f)) => Some(f as i64),
        Some(NumOrStr::Str(s)) => Some(s.trim().parse().map_err(serde::de::Error::custom)?),
    })
}

impl OAuthHttp {
    /// `extra_roots` are trusted beside the system's (private identity
    /// providers), the same way as for the mail logins: through the one
    /// rustls configuration of [`crate::tls`].
    pub fn new(timeout: Duration, extra_roots: &crate::tls::ExtraRoots) -> OAuthHttp {
        let mut tls = (*extra_roots.client_config()).clone();
        // reqwest sets ALPN only on a configuration it builds itself.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("mailconnect/", env!("CARGO_PKG_VERSION")))
            // Taken only when reqwest's rustls is tokio-rustls' (one
            // version in Cargo.lock); else `build` fails, at start-up.
            .use_preconfigured_tls(tls)
            .build()
            .expect("the TLS backend initialises");
        OAuthHttp { client }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// POSTs a form to a token endpoint and reads the answer.
    pub async fn token_request(
        &self,
        endpoint: &Url,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenError> {
        self.token_request_as(endpoint, None, form).await
    }

    /// The same, authenticating the client with HTTP Basic
    /// (`client_secret_basic`) when `basic` is given.
    pub async fn token_request_as(
        &self,
        endpoint: &Url,
        basic: Option<(&str, &SecretString)>,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenError> {
        let started = std::time::Instant::now();
        let mut request = self
            .client
            .post(endpoint.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form);
        if let Some((id, secret)) = basic {
            request = request.header(reqwest::header::AUTHORIZATION, basic_auth(id, secret));
        }
        let response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        tracing::debug!(
            endpoint = %endpoint_for_log(endpoint),
            status = status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "token endpoint answered"
        );
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(TokenError::Transient {
                retry_after,
                reason: format!("HTTP {}", status.as_u16()),
                cause: if status.as_u16() == 429 {
                    Cause::Throttled
                } else {
                    Cause::ProviderUnavailable
                },
            });
        }
        if !status.is_success() {
            return Err(match serde_json::from_slice::<RawError>(&body) {
                Ok(e) => {
                    let code = match e.suberror.as_deref() {
                        Some(sub @ ("consent_required" | "interaction_required"))
                            if e.error == "invalid_grant" =>
                        {
                            sub.to_owned()
                        }
                        _ => e.error,
                    };
                    let aadsts = aadsts_code(&e.error_codes, e.error_description.as_deref());
                    let err = TokenError::from_oauth_error(&code, status.as_u16(), aadsts);
                    match err {
                        TokenError::Transient { reason, cause, .. } => TokenError::Transient {
                            retry_after,
                            reason,
                            cause,
                        },
                        other => other,
                    }
                }
                Err(_) => TokenError::Refused {
                    error: "unreadable_error_response".into(),
                    status: status.as_u16(),
                    cause: Cause::ProviderUnavailable,
                },
            });
        }
        let raw: RawTokenResponse = serde_json::from_slice(&body)
            .map_err(|_| TokenError::unavailable("the token response was not the expected JSON"))?;
        if raw.access_token.is_empty() {
            return Err(TokenError::unavailable(
                "the token response had an empty access_token",
            ));
        }
        let expires_in = raw
            .expires_in
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_EXPIRES_IN);
        Ok(TokenResponse {
            tokens: TokenSet {
                access_token: SecretString::from(raw.access_token),
                refresh_token: raw
                    .refresh_token
                    .filter(|t| !t.is_empty())
                    .map(SecretString::from),
                expires_at: crate::now() + expires_in,
                scopes: raw
                    .scope
                    .map(|s| s.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
            },
            id_token: raw.id_token,
        })
    }
}

/// `client_secret_basic` (RFC 6749 2.3.1): id and secret are form-encoded
/// before they are joined and base64-encoded.
pub fn basic_auth(client_id: &str, secret: &SecretString) -> String {
    use base64::Engine;
    use secrecy::ExposeSecret;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let joined = format!("{}:{}", enc(client_id), enc(secret.expose_secret()));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(joined)
    )
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

/// The claims about an address that userinfo answers with.
#[derive(Deserialize)]
struct UserInfo {
    sub: String,
    email: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    email_verified: Option<bool>,
}

impl OAuthHttp {
    /// The address from an OpenID userinfo endpoint, only if it is verified
    /// and the answer is about `sub` (the id_token's subject).
    pub async fn userinfo_address(
        &self,
        endpoint: &Url,
        access_token: &SecretString,
        sub: &str,
    ) -> Option<String> {
        let info: UserInfo = self
            .client
            .get(endpoint.clone())
            .bearer_auth(secrecy::ExposeSecret::expose_secret(access_token))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        if info.sub != sub {
            tracing::warn!("userinfo answered for another subject; refused");
            return None;
        }
        if info.email_verified != Some(true) {
            tracing::warn!("userinfo reports no verified address; refused");
            return None;
        }
        info.email
    }
}

/// Endpoints carry no secrets, but strip any query all the same.
pub fn endpoint_for_log(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}

pub fn transport_error(e: &reqwest::Error) -> TokenError {
    let reason = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    TokenError::unavailable(reason)
}

/// `Retry-After` as delta-seconds or an HTTP date, capped at an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let secs = match raw.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
            (when.timestamp() - crate::now()).max(0) as u64
        }
    };
    Some(Duration::from_secs(secs.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listed_self_signed_ca_certificate_is_trusted_by_the_provider_client_and_no_other() {
        use crate::tls::testing::{extra_file, params, self_signed, serve};
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        let listed = self_signed(params(&["127.0.0.1"], true));
        let other = self_signed(params(&["127.0.0.1"], true));
        let http = OAuthHttp::new(Duration::from_secs(5), &extra_file(&[&listed]));
        for (server, trusted) in [(&listed, true), (&other, false)] {
            let addr = serve(vec![server.der()], &server.key, OK).await;
            let answer = http.client().get(format!("https://{addr}/")).send().await;
            match trusted {
                true => assert_eq!(answer.unwrap().text().await.unwrap(), "{}"),
                false => assert!(answer.unwrap_err().is_connect()),
            }
        }
    }

    #[test]
    fn errors_are_classified_by_code_only() {
        assert!(matches!(
            TokenError::from_oauth_error("invalid_grant", 400, None),
            TokenError::Reauth { .. }
        ));
        assert!(matches!(
            TokenError::from_oauth_error("interaction_required", 400, None),
            TokenError::Reauth { .. }
        ));
        assert!(matches!(
            TokenError::from_oauth_error("invalid_client", 401, None),
            TokenError::Misconfigured { .. }
        ));
        assert!(matches!(
            TokenError::from_oauth_error("unauthorized_client", 400, None),
            TokenError::Misconfigured { .. }
        ));
        assert!(matches!(
            TokenError::from_oauth_error("invalid_scope", 400, None),
            TokenError::Refused { .. }
        ));
        assert_eq!(
            TokenError::from_oauth_error("weird\r\ncode<script>", 400, None).code(),
            "weirdcodescript"
        );
    }

    #[test]
    fn the_aadsts_code_explains_and_only_50196_changes_the_class() {
        let e = TokenError::from_oauth_error("invalid_grant", 400, Some(700082));
        assert!(matches!(e, TokenError::Reauth { .. }));
        assert_eq!(e.cause(), Cause::RefreshTokenInactive);
        let e = TokenError::from_oauth_error("invalid_client", 401, Some(7000222));
        assert!(matches!(e, TokenError::Misconfigured { .. }));
        assert_eq!(e.cause(), Cause::ClientSecretExpired);
        let e = TokenError::from_oauth_error("invalid_grant", 400, Some(50196));
        assert!(matches!(e, TokenError::Transient { .. }));
        assert_eq!(e.cause(), Cause::Throttled);
    }

    #[test]
    fn expires_in_may_be_a_string() {
        let r: RawTokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":"3599"}"#).unwrap();
        assert_eq!(r.expires_in, Some(3599));
        let r: RawTokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        assert_eq!(r.expires_in, Some(3599));
        let r: RawTokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(r.expires_in, None);
        assert!(serde_json::from_str::<RawTokenResponse>(
            r#"{"access_token":"a","expires_in":"soon"}"#
        )
        .is_err());
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret() {
        // RFC 6749 2.3.1: "a b" and "p:w/+" are encoded before joining.
        let header = basic_auth("a b", &SecretString::from("p:w/+"));
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(raw).unwrap(), "a+b:p%3Aw%2F%2B");
    }

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3600)));
        h.insert("retry-after", "nonsense".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
