//! The core: what mailconnect does, free of HTTP. Routes, the CLI and the
//! background tasks call in here with a [`Core`]; nothing here names axum
//! or the API's error type: each operation returns its own error
//! ([`flow::FlowError`], [`refresh::on_demand::GrantError`]), which
//! `http/error.rs` maps to answers in one place.
//!
//! - [`flow`]: the authorization code flow: authorize, callback, disconnect.
//! - [`links`]: connect links, which let a mailbox's owner start the flow.
//! - [`refresh`]: one refresh, the on-demand gate of the token route, the
//!   background sweep, provider health, answers kept until stored.
//! - [`mailboxes`]: adding the mailboxes nobody signs in to (`shared`, `app`).
//! - [`shared`]: shared mailboxes following their delegate.

pub mod app_tokens;
pub mod callback;
pub mod consent;
pub mod credentials;
pub mod flow;
pub mod links;
pub mod mailboxes;
pub mod pace;
pub mod refresh;
pub mod shared;

use std::ops::Deref;
use std::sync::Arc;

use crate::crypto::Keyring;
use crate::db::Db;
use crate::domain::{ProviderKind, ReturnUrl};
use crate::oauth::registry::Registry;
use crate::oauth::state::StateSigner;
use crate::oauth::Provider;
use crate::verify::Verifier;
use crate::webhooks::Webhooks;
use pace::Pace;
use refresh::on_demand::OnDemand;
use refresh::uses::Uses;
use refresh::{Schedule, Unsaved};

/// The state the core works with, shared by every request and task of a
/// replica. Cheap to clone.
#[derive(Clone)]
pub struct Core(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub keys: Keyring,
    pub providers: Registry,
    pub states: StateSigner,
    /// Where the browser goes after the callback (`OAUTH_RETURN_URL`).
    pub return_url: ReturnUrl,
    /// `MAILCONNECT_PUBLIC_URL`, the base of connect links.
    pub public_url: url::Url,
    pub schedule: Schedule,
    /// The shared budget of provider token requests.
    pub pace: Pace,
    /// The token route's gate: one refresh per account in this process.
    pub on_demand: OnDemand,
    pub verifier: Verifier,
    pub webhooks: Arc<Webhooks>,
    /// Refresh answers the database has not taken yet.
    pub unsaved: Unsaved,
    /// Token hand-outs noted and not written yet.
    pub uses: Uses,
}

/// What a [`Core`] is made of, beside its database.
pub struct Parts {
    pub keys: Keyring,
    pub providers: Registry,
    pub states: StateSigner,
    pub return_url: ReturnUrl,
    pub public_url: url::Url,
    pub schedule: Schedule,
    pub pace: Pace,
    pub verifier: Verifier,
    pub webhooks: Webhooks,
}

impl Core {
    pub fn new(db: Db, parts: Parts) -> Core {
        Core(Arc::new(Inner {
            db,
            keys: parts.keys,
            providers: parts.providers,
            states: parts.states,
            return_url: parts.return_url,
            public_url: parts.public_url,
            schedule: parts.schedule,
            pace: parts.pace,
            on_demand: OnDemand::new(),
            verifier: parts.verifier,
            webhooks: Arc::new(parts.webhooks),
            unsaved: Unsaved::default(),
            uses: Uses::default(),
        }))
    }

    /// This replica's lease-holder id (each task adds its own suffix).
    pub fn owner(&self) -> &str {
        &self.on_demand.owner
    }

    /// The configured provider `kind`, if it is.
    pub fn provider(&self, kind: ProviderKind) -> Option<&Arc<dyn Provider>> {
        self.providers.get(kind)
    }
}

impl Deref for Core {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
