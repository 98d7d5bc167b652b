//! Configuration from the environment, as DESIGN.md lists it. Every problem
//! is reported as one line that names the variable.

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngCore;
use secrecy::SecretString;
use url::Url;

use crate::core::pace::Pace;
use crate::core::refresh::sweep::SweepConfig;
use crate::core::refresh::{Schedule, WarmWindow};
use crate::crypto::Keyring;
use crate::domain::ReturnUrl;
use crate::env::{err, parse_http_url};
pub use crate::env::{ConfigError, Env};
use crate::oauth::registry::ProviderConfig;
use crate::tls::ExtraRoots;
use crate::webhooks::{DeliveryConfig, Endpoint, WebhookConfig, WebhookSecret};

#[derive(Debug)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: String,
    pub jwt_secret: SecretString,
    pub state_secret: SecretString,
    pub keyring: Keyring,
    /// Where the browser goes after the callback (absolute URL or path).
    pub return_url: ReturnUrl,
    /// `MAILCONNECT_PUBLIC_URL`: the service's address as browsers reach
    /// it, the base of connect links (no trailing `/`).
    pub public_url: Url,
    /// The configured providers' settings, each read by its own module.
    pub providers: Vec<ProviderConfig>,
    /// `MAILCONNECT_EXTRA_CA_FILE`: roots trusted beside the system's.
    pub extra_roots: ExtraRoots,
    pub schedule: Schedule,
    /// How long one provider request may take (`MAILCONNECT_PROVIDER_TIMEOUT_SECS`).
    pub provider_timeout: std::time::Duration,
    /// `MAILCONNECT_PROVIDER_RATE_LIMIT`: token requests per second per
    /// provider (and Microsoft directory), shared by every replica.
    pub pace: Pace,
    pub refresher: SweepConfig,
    /// How often this replica writes the token uses it noted
    /// (`MAILCONNECT_USE_FLUSH_SECS`, internal: tests shorten it).
    pub use_flush: Duration,
    pub http: HttpLimits,
    pub webhooks: WebhookConfig,
    pub dev: bool,
}

/// The limits, from `MAILCONNECT_HTTP_*` (see the README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// How long a provider request may take before it counts as failed, unless
/// `MAILCONNECT_PROVIDER_TIMEOUT_SECS` says otherwise.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// What `serve` runs beside the API, and the HTTP limits it serves with.
#[derive(Clone, Debug)]
pub struct Serving {
    pub refresher: SweepConfig,
    pub use_flush: Duration,
    pub http: HttpLimits,
}

impl Config {
    pub fn serving(&self) -> Serving {
        Serving {
            refresher: self.refresher.clone(),
            use_flush: self.use_flush,
            http: self.http.clone(),
        }
    }
}

/// `MAILCONNECT_REFRESH_WARM_WINDOW_SECS` (default a day): how recently a
/// token must have been handed out for the account to be renewed ahead of
/// expiry; `all` keeps every account warm.
fn warm_window<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<WarmWindow, ConfigError> {
    const VAR: &str = "MAILCONNECT_REFRESH_WARM_WINDOW_SECS";
    const MAX: i64 = 90 * 86_400;
    match env.get(VAR).as_deref().map(str::trim) {
        None => Ok(WarmWindow::Secs(86_400)),
        Some("all") => Ok(WarmWindow::All),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(WarmWindow::Secs(n)),
            _ => Err(err(
                VAR,
                format!("must be all or a whole number from 1 to {MAX}"),
            )),
        },
    }
}

/// The process's environment, read through [`Env`].
pub fn process_env() -> Env<impl Fn(&str) -> Option<String>> {
    Env(|v| std::env::var(v).ok())
}

/// Where every listening command (`serve`, `serve --dev`, `demo`) listens:
/// `MAILCONNECT_BIND`, which a `--bind` flag overrides by being set into it
/// first. In dev mode (`serve --dev` and `demo`) loopback only, since their
/// secrets are made up or their sign-ins fake.
pub fn listen_address<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    dev: bool,
) -> Result<SocketAddr, ConfigError> {
    let raw = env
        .get("MAILCONNECT_BIND")
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let bind: SocketAddr = raw
        .trim()
        .parse()
        .map_err(|_| err("MAILCONNECT_BIND", "must be host:port, e.g. 127.0.0.1:8080"))?;
    if dev && !bind.ip().is_loopback() {
        return Err(err(
            "MAILCONNECT_BIND",
            "dev mode binds loopback only (use 127.0.0.1 or [::1])",
        ));
    }
    Ok(bind)
}

/// `MAILCONNECT_PUBLIC_URL` (default `http://{MAILCONNECT_BIND}`): an
/// absolute http(s) URL without query or fragment; connect links are
/// `{it}/connect/{token}`, so a trailing `/` is dropped.
fn public_url<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    bind: SocketAddr,
) -> Result<Url, ConfigError> {
    const VAR: &str = "MAILCONNECT_PUBLIC_URL";
    let raw = env.get(VAR).unwrap_or_else(|| format!("http://{bind}"));
    let mut url = parse_http_url(VAR, &raw)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(VAR, "must have no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(VAR, "must not hold credentials"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

impl Config {
    pub fn from_process_env(dev: bool) -> Result<Config, ConfigError> {
        Config::from_env(&process_env(), dev)
    }

    /// In dev mode, missing secrets are made up for this run and the service
    /// binds loopback only.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        dev: bool,
    ) -> Result<Config, ConfigError> {
        let bind = listen_address(env, dev)?;

        let database_url = env
            .get("DATABASE_URL")
            .unwrap_or_else(|| "sqlite://mailconnect.db".into());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(err(
                "DATABASE_URL",
                "must start with sqlite:// or postgres://",
            ));
        }

        let secret = |var: &'static str| -> Result<SecretString, ConfigError> {
            match env.get(var) {
                Some(v) => {
                    if v.len() < 32 {
                        tracing::warn!("{var} is shorter than 32 bytes; use a longer random value");
                    }
                    Ok(SecretString::from(v))
                }
                None if dev => Ok(SecretString::from(random_secret())),
                None => Err(err(var, "is required (or run with --dev)")),
            }
        };
        let jwt_secret = secret("JWT_SECRET")?;
        let state_secret = secret("OAUTH_STATE_SECRET")?;

        let keyring = match env.get("TOKEN_ENCRYPTION_KEYS") {
            Some(raw) => Keyring::parse(&raw).map_err(|e| err("TOKEN_ENCRYPTION_KEYS", e))?,
            None if dev => Keyring::random("dev"),
            None => {
                return Err(err(
                    "TOKEN_ENCRYPTION_KEYS",
                    "is required: comma list of kid:base64(32 bytes) (or run with --dev)",
                ))
            }
        };

        let return_url =
            ReturnUrl::parse(&env.get("OAUTH_RETURN_URL").unwrap_or_else(|| "/".into()))
                .map_err(|e| err("OAUTH_RETURN_URL", e))?;

        let public_url = public_url(env, bind)?;

        let providers = ProviderConfig::all_from_env(env, bind)?;
        let extra_roots = match env.get("MAILCONNECT_EXTRA_CA_FILE") {
            None => ExtraRoots::default(),
            Some(path) => ExtraRoots::load(std::path::Path::new(path.trim()))
                .map_err(|e| err("MAILCONNECT_EXTRA_CA_FILE", format!("{}: {e}", path.trim())))?,
        };

        let schedule = Schedule {
            lead_secs: env.number("MAILCONNECT_REFRESH_LEAD_SECS", 600, 60, 86_400)?,
            idle_secs: env.number(
                "MAILCONNECT_REFRESH_IDLE_SECS",
                7 * 86_400,
                3_600,
                80 * 86_400,
            )?,
            lease_secs: env.number("MAILCONNECT_REFRESH_LEASE_SECS", 60, 2, 3_600)?,
            backoff_base_secs: env.number("MAILCONNECT_REFRESH_BACKOFF_BASE_SECS", 30, 1, 3_600)?,
            backoff_cap_secs: env.number(
                "MAILCONNECT_REFRESH_BACKOFF_CAP_SECS",
                3_600,
                1,
                86_400,
            )?,
            warm_window: warm_window(env)?,
        };
        let provider_timeout = std::time::Duration::from_secs(env.number(
            "MAILCONNECT_PROVIDER_TIMEOUT_SECS",
            PROVIDER_TIMEOUT.as_secs() as i64,
            1,
            60,
        )? as u64);
        if !schedule.lease_outlasts(provider_timeout) {
            return Err(err(
                "MAILCONNECT_REFRESH_LEASE_SECS",
                format!(
                    "must be longer than twice the provider timeout ({} s, \
                     MAILCONNECT_PROVIDER_TIMEOUT_SECS): a refresh holds the lease while it \
                     asks the provider",
                    provider_timeout.as_secs()
                ),
            ));
        }
        if schedule.backoff_cap_secs < schedule.backoff_base_secs {
            return Err(err(
                "MAILCONNECT_REFRESH_BACKOFF_CAP_SECS",
                "must not be less than MAILCONNECT_REFRESH_BACKOFF_BASE_SECS",
            ));
        }
        let pace = Pace {
            per_second: env.number("MAILCONNECT_PROVIDER_RATE_LIMIT", 50, 1, 100_000)?,
        };
        let refresher = SweepConfig {
            enabled: match env.get("MAILCONNECT_REFRESHER").as_deref().map(str::trim) {
                None | Some("on") => true,
                Some("off") => false,
                Some(_) => return Err(err("MAILCONNECT_REFRESHER", "must be on or off")),
            },
            concurrency: env.number("MAILCONNECT_REFRESH_CONCURRENCY", 32, 1, 1024)? as usize,
            poll: std::time::Duration::from_secs(env.number(
                "MAILCONNECT_REFRESH_POLL_SECS",
                15,
                1,
                300,
            )? as u64),
        };

        let use_flush =
            Duration::from_secs(env.number("MAILCONNECT_USE_FLUSH_SECS", 30, 1, 300)? as u64);

        let secs = |var: &'static str, default: u64, max: i64| {
            env.number(var, default as i64, 1, max)
                .map(|n| std::time::Duration::from_secs(n as u64))
        };
        let defaults = HttpLimits::default();
        let http = HttpLimits {
            header_timeout: secs(
                "MAILCONNECT_HTTP_HEADER_TIMEOUT_SECS",
                defaults.header_timeout.as_secs(),
                3_600,
            )?,
            body_timeout: secs(
                "MAILCONNECT_HTTP_BODY_TIMEOUT_SECS",
                defaults.body_timeout.as_secs(),
                3_600,
            )?,
            idle_timeout: secs(
                "MAILCONNECT_HTTP_IDLE_TIMEOUT_SECS",
                defaults.idle_timeout.as_secs(),
                86_400,
            )?,
            max_connections: env.number(
                "MAILCONNECT_HTTP_MAX_CONNECTIONS",
                defaults.max_connections as i64,
                1,
                1_000_000,
            )? as usize,
        };

        let webhooks = Self::webhooks(env, bind)?;

        Ok(Config {
            bind,
            database_url,
            jwt_secret,
            state_secret,
            keyring,
            return_url,
            public_url,
            providers,
            extra_roots,
            schedule,
            provider_timeout,
            pace,
            refresher,
            use_flush,
            http,
            webhooks,
            dev,
        })
    }

    /// `MAILCONNECT_WEBHOOK_URL` is a comma list of endpoints;
    /// `MAILCONNECT_WEBHOOK_SECRET` one secret for all of them, or a comma
    /// list with one secret per URL, in the same order.
    fn webhooks<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        bind: SocketAddr,
    ) -> Result<WebhookConfig, ConfigError> {
        const URL: &str = "MAILCONNECT_WEBHOOK_URL";
        const SECRET: &str = "MAILCONNECT_WEBHOOK_SECRET";
        let ms = |var: &'static str, default: i64, min: i64, max: i64| {
            env.number(var, default, min, max)
                .map(|n| std::time::Duration::from_millis(n as u64))
        };
        let defaults = DeliveryConfig::default();
        let delivery = DeliveryConfig {
            poll: ms("MAILCONNECT_WEBHOOK_POLL_MS", 2_000, 10, 300_000)?,
            backoff_base: ms("MAILCONNECT_WEBHOOK_BACKOFF_BASE_MS", 5_000, 10, 3_600_000)?,
            backoff_cap: ms(
                "MAILCONNECT_WEBHOOK_BACKOFF_CAP_MS",
                3_600_000,
                10,
                86_400_000,
            )?,
            give_up_after: std::time::Duration::from_secs(env.number(
                "MAILCONNECT_WEBHOOK_GIVE_UP_SECS",
                defaults.give_up_after.as_secs() as i64,
                1,
                30 * 86_400,
            )? as u64),
            timeout: ms("MAILCONNECT_WEBHOOK_TIMEOUT_MS", 10_000, 50, 60_000)?,
        };
        let (urls, secrets) = match (env.get(URL), env.get(SECRET)) {
            (None, None) => {
                return Ok(WebhookConfig {
                    endpoints: Vec::new(),
                    delivery,
                })
            }
            (Some(_), None) => return Err(err(SECRET, format!("is required when {URL} is set"))),
            (None, Some(_)) => return Err(err(URL, format!("is required when {SECRET} is set"))),
            (Some(u), Some(s)) => (u, s),
        };
        let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
        let secrets: Vec<WebhookSecret> = secrets
            .split(',')
            .enumerate()
            .map(|(i, s)| {
                WebhookSecret::parse(s).map_err(|e| err(SECRET, format!("secret {}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?;
        if secrets.len() != 1 && secrets.len() != urls.len() {
            return Err(err(
                SECRET,
                format!(
                    "give one secret, or one per URL ({} URLs, {} secrets)",
                    urls.len(),
                    secrets.len()
                ),
            ));
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (i, raw) in urls.iter().enumerate() {
            let url = parse_http_url(URL, raw)?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(err(URL, "must not carry a user name or password"));
            }
            if points_at(&url, bind) {
                return Err(err(
                    URL,
                    format!(
                        "{} points at this service itself ({bind}); give the receiver's address",
                        url.origin().ascii_serialization()
                    ),
                ));
            }
            if endpoints.iter().any(|e| e.url == url) {
                return Err(err(URL, "lists the same URL twice"));
            }
            let secret = secrets[if secrets.len() == 1 { 0 } else { i }].clone();
            endpoints.push(Endpoint { url, secret });
        }
        Ok(WebhookConfig {
            endpoints,
            delivery,
        })
    }
}

/// Whether `url` would reach this service: its port on its own bind
/// address, on loopback or on the unspecified address.
fn points_at(url: &Url, bind: SocketAddr) -> bool {
    use std::net::IpAddr;
    if url.port_or_known_default() != Some(bind.port()) {
        return false;
    }
    let ip = match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            return d == "localhost" || d.ends_with(".localhost");
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        None => return false,
    };
    ip.is_loopback() || ip.is_unspecified() || ip == bind.ip()
}

pub fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::oauth::google::{self, GoogleConfig};
    use crate::oauth::microsoft::MicrosoftConfig;
    use crate::oauth::oidc::OidcConfig;
    use crate::oauth::TlsMode;

    fn with(vars: &[(&str, &str)], dev: bool) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(&Env(move |k| map.get(k).cloned()), dev)
    }

    fn microsoft(c: Config) -> Option<MicrosoftConfig> {
        c.providers.into_iter().find_map(|p| match p {
            ProviderConfig::Microsoft(m) => Some(m),
            _ => None,
        })
    }

    fn google(c: Config) -> Option<GoogleConfig> {
        c.providers.into_iter().find_map(|p| match p {
            ProviderConfig::Google(g) => Some(g),
            _ => None,
        })
    }

    fn oidc(c: Config) -> Option<OidcConfig> {
        c.providers.into_iter().find_map(|p| match p {
            ProviderConfig::Oidc(o) => Some(o),
            _ => None,
        })
    }

    const BASE: [(&str, &str); 3] = [
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("OAUTH_STATE_SECRET", "fedcba9876543210fedcba9876543210"),
        (
            "TOKEN_ENCRYPTION_KEYS",
            "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        ),
    ];

    #[test]
    fn public_url_defaults_to_the_bind_address_and_refuses_queries() {
        let c = with(&[("MAILCONNECT_BIND", "127.0.0.1:9090")], true).unwrap();
        assert_eq!(c.public_url.as_str(), "http://127.0.0.1:9090/");
        let c = with(
            &[("MAILCONNECT_PUBLIC_URL", "https://mail.example.com/mc/")],
            true,
        )
        .unwrap();
        assert_eq!(c.public_url.as_str(), "https://mail.example.com/mc");
        for bad in [
            "/connect",
            "ftp://x.example",
            "https://x.example/?a=1",
            "https://x.example/#f",
        ] {
            let e = with(&[("MAILCONNECT_PUBLIC_URL", bad)], true).unwrap_err();
            assert_eq!(e.var, "MAILCONNECT_PUBLIC_URL", "{bad}");
        }
    }

    #[test]
    fn production_mode_names_each_missing_secret() {
        let e = with(&[], false).unwrap_err();
        assert_eq!(e.var, "JWT_SECRET");
        let e = with(&BASE[..2], false).unwrap_err();
        assert_eq!(e.var, "TOKEN_ENCRYPTION_KEYS");
        assert!(with(&BASE, false).is_ok());
    }

    #[test]
    fn dev_mode_fills_secrets_and_refuses_public_binds() {
        let c = with(&[], true).unwrap();
        assert!(c.providers.is_empty());
        let e = with(&[("MAILCONNECT_BIND", "0.0.0.0:8080")], true).unwrap_err();
        assert_eq!(e.var, "MAILCONNECT_BIND");
    }

    #[test]
    fn malformed_values_are_named() {
        let mut v = BASE.to_vec();
        v.push(("MICROSOFT_OAUTH_CLIENT_ID", "abc"));
        assert_eq!(
            with(&v, false).unwrap_err().var,
            "MICROSOFT_OAUTH_CLIENT_SECRET"
        );
        v.push(("MICROSOFT_OAUTH_CLIENT_SECRET", "s"));
        v.push(("MICROSOFT_OAUTH_TENANT_ID", "not a tenant!"));
        assert_eq!(
            with(&v, false).unwrap_err().var,
            "MICROSOFT_OAUTH_TENANT_ID"
        );
        v.pop();
        v.push(("MICROSOFT_OAUTH_AUTHORITY", "ftp://x"));
        assert_eq!(
            with(&v, false).unwrap_err().var,
            "MICROSOFT_OAUTH_AUTHORITY"
        );
        v.pop();
        let c = with(&v, false).unwrap();
        let ms = microsoft(c).unwrap();
        assert_eq!(ms.tenant.as_str(), "common");
        assert_eq!(
            ms.redirect_uri.as_str(),
            "http://127.0.0.1:8080/api/oauth/microsoft/callback"
        );
        let mut v = BASE.to_vec();
        v.push(("DATABASE_URL", "mysql://x"));
        assert_eq!(with(&v, false).unwrap_err().var, "DATABASE_URL");
    }

    #[test]
    fn google_is_configured_by_id_and_secret_with_overridable_endpoints() {
        let mut v = BASE.to_vec();
        v.push(("GOOGLE_OAUTH_CLIENT_SECRET", "s"));
        assert_eq!(with(&v, false).unwrap_err().var, "GOOGLE_OAUTH_CLIENT_ID");
        v.push(("GOOGLE_OAUTH_CLIENT_ID", "id.apps.googleusercontent.com"));
        v.push(("GOOGLE_OAUTH_TOKEN_URL", "http://127.0.0.1:9/token"));
        let g = google(with(&v, false).unwrap()).unwrap();
        assert_eq!(g.token_url.as_str(), "http://127.0.0.1:9/token");
        assert_eq!(g.auth_url.as_str(), google::DEFAULT_AUTH_URL);
        v.push(("GOOGLE_OAUTH_JWKS_URL", "not a url"));
        assert_eq!(with(&v, false).unwrap_err().var, "GOOGLE_OAUTH_JWKS_URL");
    }

    #[test]
    fn provider_endpoints_must_be_https_unless_loopback() {
        let mut ms = BASE.to_vec();
        ms.extend([
            ("MICROSOFT_OAUTH_CLIENT_ID", "abc"),
            ("MICROSOFT_OAUTH_CLIENT_SECRET", "s"),
        ]);
        let mut google = BASE.to_vec();
        google.extend([
            ("GOOGLE_OAUTH_CLIENT_ID", "id.apps.googleusercontent.com"),
            ("GOOGLE_OAUTH_CLIENT_SECRET", "s"),
        ]);
        for (base, var) in [
            (&ms, "MICROSOFT_OAUTH_AUTHORITY"),
            (&ms, "MICROSOFT_GRAPH_URL"),
            (&google, "GOOGLE_OAUTH_AUTH_URL"),
            (&google, "GOOGLE_OAUTH_TOKEN_URL"),
            (&google, "GOOGLE_OAUTH_USERINFO_URL"),
            (&google, "GOOGLE_OAUTH_REVOKE_URL"),
            (&google, "GOOGLE_OAUTH_JWKS_URL"),
        ] {
            for bad in ["http://login.example.com", "http://10.0.0.1:8080/x"] {
                let e = with(&replace(base, var, bad), false).unwrap_err();
                assert_eq!(e.var, var, "{var}={bad}");
                assert!(e.reason.contains("https"), "{e}");
            }
            for good in [
                "https://login.example.com",
                "http://127.0.0.1:9000",
                "http://localhost:9000",
                "http://[::1]:9000",
            ] {
                assert!(
                    with(&replace(base, var, good), false).is_ok(),
                    "{var}={good}"
                );
            }
        }
    }

    fn oidc_vars() -> Vec<(&'static str, &'static str)> {
        let mut v = BASE.to_vec();
        v.extend([
            ("OIDC_OAUTH_ISSUER", "https://idp.example/realms/mail"),
            ("OIDC_OAUTH_CLIENT_ID", "mailconnect"),
            ("OIDC_OAUTH_CLIENT_SECRET", "oidc-client-secret-value"),
            ("OIDC_IMAP_HOST", "imap.example.com:993"),
            ("OIDC_SMTP_HOST", "smtp.example.com:587"),
        ]);
        v
    }

    fn without(v: &[(&'static str, &'static str)], var: &str) -> Vec<(&'static str, &'static str)> {
        v.iter().filter(|(k, _)| *k != var).cloned().collect()
    }

    fn replace(
        v: &[(&'static str, &'static str)],
        var: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v = without(v, var);
        v.push((var, value));
        v
    }

    #[test]
    fn oidc_is_configured_by_issuer_id_and_secret_with_mail_hosts() {
        let c = oidc(with(&oidc_vars(), false).unwrap()).unwrap();
        assert_eq!(c.issuer, "https://idp.example/realms/mail");
        assert_eq!(c.scopes, "openid email offline_access");
        assert_eq!(c.imap.port, 993);
        assert_eq!(c.imap.tls, TlsMode::Implicit);
        assert_eq!(c.smtp.tls, TlsMode::Starttls);
        assert_eq!(
            c.redirect_uri.as_str(),
            "http://127.0.0.1:8080/api/oauth/oidc/callback"
        );
        assert!(oidc(with(&BASE, false).unwrap()).is_none());
        for var in [
            "OIDC_OAUTH_ISSUER",
            "OIDC_OAUTH_CLIENT_ID",
            "OIDC_OAUTH_CLIENT_SECRET",
            "OIDC_IMAP_HOST",
            "OIDC_SMTP_HOST",
        ] {
            let e = with(&without(&oidc_vars(), var), false).unwrap_err();
            assert_eq!(e.var, var);
        }
    }

    #[test]
    fn microsoft_mail_hosts_may_be_overridden_with_their_tls_modes() {
        let mut v = BASE.to_vec();
        v.extend([
            (
                "MICROSOFT_OAUTH_CLIENT_ID",
                "11111111-2222-3333-4444-555555555555",
            ),
            ("MICROSOFT_OAUTH_CLIENT_SECRET", "secret-value"),
        ]);
        let m = microsoft(with(&v, false).unwrap()).unwrap();
        assert!(m.imap.is_none() && m.smtp.is_none());
        let mut o = replace(&v, "MICROSOFT_IMAP_HOST", "127.0.0.1:1993");
        o = replace(&o, "MICROSOFT_SMTP_HOST", "localhost:1587");
        let m = microsoft(with(&o, false).unwrap()).unwrap();
        let (imap, smtp) = (m.imap.unwrap(), m.smtp.unwrap());
        assert_eq!(
            (imap.host.as_str(), imap.port, imap.tls),
            ("127.0.0.1", 1993, TlsMode::Implicit)
        );
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("localhost", 1587, TlsMode::Starttls)
        );
        for (var, bad) in [
            ("MICROSOFT_IMAP_HOST", "imap.example.com"),
            ("MICROSOFT_SMTP_TLS", "ssl"),
        ] {
            let e = with(&replace(&o, var, bad), false).unwrap_err();
            assert_eq!(e.var, var, "{var}={bad}");
        }
        // A TLS mode without its host is a mistake, not ignored.
        let e = with(&replace(&v, "MICROSOFT_IMAP_TLS", "starttls"), false).unwrap_err();
        assert_eq!(e.var, "MICROSOFT_IMAP_TLS");
    }

    #[test]
    fn oidc_values_are_checked() {
        let v = oidc_vars();
        for (var, bad) in [
            ("OIDC_OAUTH_ISSUER", "http://idp.example"),
            ("OIDC_OAUTH_ISSUER", "not a url"),
            ("OIDC_OAUTH_SCOPES", "email offline_access"),
            ("OIDC_OAUTH_RESOURCE", "relative/path"),
            ("OIDC_OAUTH_RESOURCE", "https://mail.example/#x"),
            ("OIDC_IMAP_HOST", "imap.example.com"),
            ("OIDC_IMAP_HOST", "imap.example.com:99999"),
            ("OIDC_SMTP_TLS", "ssl"),
            ("OIDC_IMAP_TLS", "none"),
        ] {
            let e = with(&replace(&v, var, bad), false).unwrap_err();
            assert_eq!(e.var, var, "{var}={bad}");
        }
        // Clear text and plain http only where nothing leaves the machine.
        let mut v = replace(&v, "OIDC_OAUTH_ISSUER", "http://127.0.0.1:4000");
        v = replace(&v, "OIDC_IMAP_HOST", "127.0.0.1:1143");
        v = replace(&v, "OIDC_IMAP_TLS", "none");
        v = replace(&v, "OIDC_SMTP_HOST", "[::1]:1587");
        v = replace(&v, "OIDC_SMTP_TLS", "implicit");
        v = replace(&v, "OIDC_OAUTH_RESOURCE", "urn:example:mail");
        let c = oidc(with(&v, false).unwrap()).unwrap();
        assert_eq!(c.imap.tls, TlsMode::None);
        assert_eq!(c.smtp.host, "::1");
        assert_eq!(c.smtp.tls, TlsMode::Implicit);
        assert_eq!(c.resource.as_deref(), Some("urn:example:mail"));
    }

    #[test]
    fn a_bad_extra_ca_file_is_named() {
        let mut v = BASE.to_vec();
        v.push(("MAILCONNECT_EXTRA_CA_FILE", "/nonexistent/ca.pem"));
        let e = with(&v, false).unwrap_err();
        assert_eq!(e.var, "MAILCONNECT_EXTRA_CA_FILE");
        assert!(e.to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn webhook_urls_must_be_http_and_not_this_service() {
        const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let with_hook = |url: &str, secret: &str| {
            let mut v = BASE.to_vec();
            v.push(("MAILCONNECT_WEBHOOK_URL", url));
            v.push(("MAILCONNECT_WEBHOOK_SECRET", secret));
            with(&v, false)
        };
        for bad in [
            "ftp://hooks.example.com/x",
            "not a url",
            "http://127.0.0.1:8080/hook",
            "http://localhost:8080/hook",
            "http://0.0.0.0:8080/hook",
            "http://[::1]:8080/hook",
            "https://user:pw@hooks.example.com/x",
        ] {
            let e = with_hook(bad, SECRET).unwrap_err();
            assert_eq!(e.var, "MAILCONNECT_WEBHOOK_URL", "{bad}");
        }
        for bad in ["C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_%%%", ""] {
            let e = with_hook("https://hooks.example.com/x", bad).unwrap_err();
            assert_eq!(e.var, "MAILCONNECT_WEBHOOK_SECRET", "{bad}");
        }
        let c = with_hook(
            "https://a.example.com/x, http://127.0.0.1:9000/hook",
            SECRET,
        )
        .unwrap();
        assert_eq!(c.webhooks.endpoints.len(), 2);
        let e = with_hook(
            "https://a.example.com/x,https://b.example.com/y",
            &format!("{SECRET},{SECRET},{SECRET}"),
        )
        .unwrap_err();
        assert_eq!(e.var, "MAILCONNECT_WEBHOOK_SECRET");
        assert!(!format!("{c:?}").contains("C2FVsBQ"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut v = BASE.to_vec();
        v.push(("MICROSOFT_OAUTH_CLIENT_ID", "abc"));
        v.push(("MICROSOFT_OAUTH_CLIENT_SECRET", "very-secret-client-value"));
        v.extend(oidc_vars().into_iter().skip(BASE.len()));
        let shown = format!("{:?}", with(&v, false).unwrap());
        for secret in [
            "very-secret-client-value",
            "oidc-client-secret-value",
            "0123456789abcdef",
            "fedcba9876543210",
            "AQEBAQEB",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
    }

    #[test]
    fn the_warm_window_is_seconds_or_all() {
        let window = |value: &'static str| {
            let mut v = BASE.to_vec();
            v.push(("MAILCONNECT_REFRESH_WARM_WINDOW_SECS", value));
            with(&v, false)
        };
        assert_eq!(
            with(&BASE, false).unwrap().schedule.warm_window,
            WarmWindow::Secs(86_400)
        );
        assert_eq!(
            window("3600").unwrap().schedule.warm_window,
            WarmWindow::Secs(3_600)
        );
        assert_eq!(
            window(" all ").unwrap().schedule.warm_window,
            WarmWindow::All
        );
        for bad in ["0", "-5", "ALL", "1h", "7776001"] {
            let e = window(bad).unwrap_err();
            assert_eq!(e.var, "MAILCONNECT_REFRESH_WARM_WINDOW_SECS", "{bad}");
            assert!(e.reason.contains("all or a whole number"), "{}", e.reason);
        }
    }

    #[test]
    fn the_provider_budget_is_a_positive_rate() {
        let rate = |value: &'static str| {
            let mut v = BASE.to_vec();
            v.push(("MAILCONNECT_PROVIDER_RATE_LIMIT", value));
            with(&v, false)
        };
        assert_eq!(with(&BASE, false).unwrap().pace.per_second, 50);
        assert_eq!(rate("400").unwrap().pace.per_second, 400);
        for bad in ["0", "-1", "100001", "fast"] {
            let e = rate(bad).unwrap_err();
            assert_eq!(e.var, "MAILCONNECT_PROVIDER_RATE_LIMIT", "{bad}");
        }
    }

    #[test]
    fn a_lease_must_outlast_two_provider_requests() {
        let lease = |secs: &'static str, timeout: Option<&'static str>| {
            let mut v = BASE.to_vec();
            v.push(("MAILCONNECT_REFRESH_LEASE_SECS", secs));
            if let Some(t) = timeout {
                v.push(("MAILCONNECT_PROVIDER_TIMEOUT_SECS", t));
            }
            with(&v, false)
        };
        // The default timeout is 10 s: a 2-second lease (the smallest the
        // variable takes) could lapse while the provider still answers.
        for secs in ["2", "20"] {
            let e = lease(secs, None).unwrap_err();
            assert_eq!(e.var, "MAILCONNECT_REFRESH_LEASE_SECS", "{secs}");
            assert!(e.reason.contains("provider timeout (10 s"), "{}", e.reason);
        }
        let c = lease("21", None).unwrap();
        assert_eq!(
            (c.schedule.lease_secs, c.provider_timeout),
            (21, std::time::Duration::from_secs(10))
        );
        assert!(lease("3", Some("1")).is_ok());
        assert!(lease("2", Some("1")).is_err());
        assert_eq!(
            lease("60", Some("0")).unwrap_err().var,
            "MAILCONNECT_PROVIDER_TIMEOUT_SECS"
        );
        let c = with(&BASE, false).unwrap();
        assert!(c.schedule.lease_outlasts(c.provider_timeout));
    }
}
