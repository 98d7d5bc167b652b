//! The HTTP layer's state: the [`Core`] every handler works with, and the
//! key that verifies callers' JWTs. Cheap to clone.

use std::sync::Arc;

use jsonwebtoken::DecodingKey;
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::core::{Core, Parts};
use crate::db::Db;
use crate::oauth::client::OAuthHttp;
use crate::oauth::registry::Registry;
use crate::oauth::state::StateSigner;
use crate::verify::Verifier;
use crate::webhooks::Webhooks;

#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    core: Core,
    caller_key: DecodingKey,
}

impl std::ops::Deref for App {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0.core
    }
}

impl App {
    pub fn new(config: &Config, db: Db, http: OAuthHttp) -> App {
        let core = Core::new(
            db,
            Parts {
                keys: config.keyring.clone(),
                providers: Registry::new(&config.providers, &http),
                states: StateSigner::new(&config.state_secret),
                return_url: config.return_url.clone(),
                public_url: config.public_url.clone(),
                schedule: config.schedule.clone(),
                pace: config.pace,
                verifier: Verifier::new(&config.extra_roots),
                webhooks: Webhooks::new(config.webhooks.clone()),
            },
        );
        App(Arc::new(Inner {
            core,
            caller_key: DecodingKey::from_secret(config.jwt_secret.expose_secret().as_bytes()),
        }))
    }

    /// The core, for background tasks that outlive a request.
    pub fn core(&self) -> &Core {
        &self.0.core
    }

    /// Verifies callers' JWTs (`JWT_SECRET`).
    pub fn caller_key(&self) -> &DecodingKey {
        &self.0.caller_key
    }
}
