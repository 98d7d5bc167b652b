//! The state every handler and background task shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::DecodingKey;
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::crypto::Keyring;
use crate::db::Db;
use crate::domain::ProviderKind;
use crate::oauth::client::OAuthHttp;
use crate::oauth::registry::Registry;
use crate::oauth::state::StateSigner;
use crate::oauth::Provider;
use crate::refresh::Schedule;
use crate::tokens::Refresher;
use crate::verify::Verifier;
use crate::webhooks::Webhooks;

#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub keys: Keyring,
    pub providers: Providers,
    pub states: StateSigner,
    pub caller_key: DecodingKey,
    pub return_url: crate::domain::ReturnUrl,
    pub refresher: Refresher,
    pub schedule: Schedule,
    pub verifier: Verifier,
    pub webhooks: Webhooks,
    /// Refresh answers the database has not taken yet.
    pub unsaved: crate::refresh::Unsaved,
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl App {
    pub fn new(config: &Config, db: Db, http: OAuthHttp) -> App {
        let providers = Providers {
            registry: Registry::new(&config.providers, &http),
            errors: Mutex::default(),
        };
        App(Arc::new(Inner {
            refresher: Refresher::new(),
            db,
            keys: config.keyring.clone(),
            providers,
            states: StateSigner::new(&config.state_secret),
            caller_key: DecodingKey::from_secret(config.jwt_secret.expose_secret().as_bytes()),
            return_url: config.return_url.clone(),
            schedule: config.schedule.clone(),
            verifier: Verifier::new(&config.extra_roots),
            webhooks: Webhooks::new(config.webhooks.clone()),
            unsaved: crate::refresh::Unsaved::default(),
        }))
    }
}

/// The configured providers, and the last configuration error each one
/// reported (an expired client secret, say), shown by the status route.
pub struct Providers {
    registry: Registry,
    errors: Mutex<HashMap<ProviderKind, String>>,
}

impl Providers {
    pub fn get(&self, kind: ProviderKind) -> Option<&Arc<dyn Provider>> {
        self.registry.get(kind)
    }

    /// The configured providers, in registry order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.registry.iter()
    }

    pub fn set_error(&self, kind: ProviderKind, error: Option<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(e) => errors.insert(kind, e),
            None => errors.remove(&kind),
        };
    }

    pub fn error(&self, kind: ProviderKind) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.get(&kind).cloned()
    }
}
