//! The provider registry: the one place that lists the provider modules.
//! Each module owns its settings (`from_env`), quirks and defaults; the
//! rest of mailconnect iterates over what is registered here.

use std::net::SocketAddr;
use std::sync::Arc;

use super::client::OAuthHttp;
use super::google::{Google, GoogleConfig};
use super::microsoft::{Microsoft, MicrosoftConfig};
use super::oidc::{Oidc, OidcConfig};
use super::{Naming, Provider};
use crate::domain::ProviderKind;
use crate::env::{ConfigError, Env};

/// One configured provider's settings. (Built once at start-up, so the
/// variants' sizes do not matter.)
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ProviderConfig {
    Microsoft(MicrosoftConfig),
    Google(GoogleConfig),
    Oidc(OidcConfig),
}

impl ProviderConfig {
    /// Every provider whose settings are present, in [`ProviderKind::ALL`]
    /// order; the first problem in any of them, naming its variable.
    pub fn all_from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        bind: SocketAddr,
    ) -> Result<Vec<ProviderConfig>, ConfigError> {
        let mut configured = Vec::new();
        for kind in ProviderKind::ALL {
            let found = match kind {
                ProviderKind::Microsoft => {
                    MicrosoftConfig::from_env(env, bind)?.map(ProviderConfig::Microsoft)
                }
                ProviderKind::Google => {
                    GoogleConfig::from_env(env, bind)?.map(ProviderConfig::Google)
                }
                ProviderKind::Oidc => OidcConfig::from_env(env, bind)?.map(ProviderConfig::Oidc),
            };
            configured.extend(found);
        }
        Ok(configured)
    }

    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderConfig::Microsoft(_) => ProviderKind::Microsoft,
            ProviderConfig::Google(_) => ProviderKind::Google,
            ProviderConfig::Oidc(_) => ProviderKind::Oidc,
        }
    }

    pub fn credential(&self) -> &super::credential::Credential {
        match self {
            ProviderConfig::Microsoft(c) => &c.credential,
            ProviderConfig::Google(c) => &c.credential,
            ProviderConfig::Oidc(c) => &c.credential,
        }
    }
}

/// How provider `kind` is named to people, configured or not.
pub fn naming(kind: ProviderKind) -> Naming {
    match kind {
        ProviderKind::Microsoft => super::microsoft::NAMING,
        ProviderKind::Google => super::google::NAMING,
        ProviderKind::Oidc => super::oidc::NAMING,
    }
}

/// The configured providers, in [`ProviderKind::ALL`] order.
pub struct Registry {
    configured: Vec<Arc<dyn Provider>>,
    /// Microsoft again, typed, for what only Microsoft has (admin consent,
    /// app tokens).
    microsoft: Option<Arc<Microsoft>>,
}

impl Registry {
    pub fn new(settings: &[ProviderConfig], http: &OAuthHttp) -> Registry {
        let mut registry = Registry {
            configured: Vec::new(),
            microsoft: None,
        };
        for config in settings {
            let provider: Arc<dyn Provider> = match config {
                ProviderConfig::Microsoft(c) => {
                    let microsoft = Arc::new(Microsoft::new(c.clone(), http.clone()));
                    registry.microsoft = Some(microsoft.clone());
                    microsoft
                }
                ProviderConfig::Google(c) => Arc::new(Google::new(c.clone(), http.clone())),
                ProviderConfig::Oidc(c) => Arc::new(Oidc::new(c.clone(), http.clone())),
            };
            registry.configured.push(provider);
        }
        registry
    }

    /// Microsoft, when configured.
    pub fn microsoft(&self) -> Option<&Arc<Microsoft>> {
        self.microsoft.as_ref()
    }

    pub fn get(&self, kind: ProviderKind) -> Option<&Arc<dyn Provider>> {
        self.configured.iter().find(|p| p.kind() == kind)
    }

    /// The configured providers.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.configured.iter()
    }
}
