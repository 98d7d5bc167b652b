//! Reading settings from the environment: the shared vocabulary every
//! module that owns settings uses (the core's in [`crate::config`], each
//! provider's in its own module), so every problem is reported the same
//! way: one line that names the variable.

use std::net::SocketAddr;

use secrecy::SecretString;
use url::Url;

use crate::domain::{MailServer, TlsMode};

/// A configuration problem: the variable and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

pub fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// Reads variables through `get`, so tests need not touch the process
/// environment. Empty values count as unset.
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    pub fn number(
        &self,
        var: &'static str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(err(
                    var,
                    format!("must be a whole number from {min} to {max}"),
                )),
            },
        }
    }

    pub fn url(&self, var: &'static str, default: &str) -> Result<Url, ConfigError> {
        let raw = self.get(var).unwrap_or_else(|| default.to_owned());
        parse_http_url(var, &raw)
    }

    /// A provider endpoint: secrets and codes travel to it, so `https`
    /// (plain `http` only where nothing leaves the machine).
    pub fn provider_url(&self, var: &'static str, default: &str) -> Result<Url, ConfigError> {
        let url = self.url(var, default)?;
        require_https(var, &url)?;
        Ok(url)
    }
}

pub fn parse_http_url(var: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw.trim()).map_err(|e| err(var, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(err(var, "must be an http(s) URL with a host"));
    }
    Ok(url)
}

/// Refuses a plain-http URL unless its host is loopback.
pub fn require_https(var: &'static str, url: &Url) -> Result<(), ConfigError> {
    if url.scheme() != "https" && !is_loopback_host(url.host_str().unwrap_or("")) {
        return Err(err(
            var,
            "must be an https URL (http only for a loopback host)",
        ));
    }
    Ok(())
}

/// The id and secret of a provider: both or neither.
pub fn client_pair<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    id_var: &'static str,
    secret_var: &'static str,
) -> Result<Option<(String, SecretString)>, ConfigError> {
    match (env.get(id_var), env.get(secret_var)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(err(secret_var, format!("is required when {id_var} is set"))),
        (None, Some(_)) => Err(err(id_var, format!("is required when {secret_var} is set"))),
        (Some(id), Some(secret)) => Ok(Some((id.trim().to_owned(), SecretString::from(secret)))),
    }
}

/// A provider's redirect URI: the variable, else the callback route on the
/// bind address.
pub fn redirect<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    var: &'static str,
    bind: SocketAddr,
    provider: &str,
) -> Result<Url, ConfigError> {
    match env.get(var) {
        Some(raw) => parse_http_url(var, &raw),
        None => Ok(default_redirect(bind, provider)),
    }
}

/// `host:port` and its TLS mode; `none` only where nothing leaves the machine.
pub fn mail_server<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    host_var: &'static str,
    tls_var: &'static str,
    default_tls: TlsMode,
    required_by: &str,
) -> Result<MailServer, ConfigError> {
    let raw = env.get(host_var).ok_or_else(|| {
        err(
            host_var,
            format!("is required when {required_by} is configured (host:port)"),
        )
    })?;
    let raw = raw.trim();
    let (host, port) = raw
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|p| *p > 0)?)))
        .ok_or_else(|| err(host_var, "must be host:port, e.g. mail.example.com:993"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(err(
            host_var,
            "must be host:port, e.g. mail.example.com:993",
        ));
    }
    let tls = match env.get(tls_var) {
        None => default_tls,
        Some(v) => {
            TlsMode::parse(&v).ok_or_else(|| err(tls_var, "must be implicit, starttls or none"))?
        }
    };
    if tls == TlsMode::None && !is_loopback_host(host) {
        return Err(err(
            tls_var,
            format!(
                "none sends tokens in clear text: only allowed for a loopback host, not {host}"
            ),
        ));
    }
    Ok(MailServer {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// `localhost` or a loopback IP address.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Without a configured redirect URI, the callback route on the bind address.
fn default_redirect(bind: SocketAddr, provider: &str) -> Url {
    let host = if bind.ip().is_unspecified() {
        format!("localhost:{}", bind.port())
    } else {
        bind.to_string()
    };
    Url::parse(&format!("http://{host}/api/oauth/{provider}/callback"))
        .expect("a socket address makes a valid URL")
}
