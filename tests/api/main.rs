//! Integration tests: the real service over real HTTP, against a strict
//! fake of Microsoft's identity platform and Graph.

mod admin_consent;
mod app_mailboxes;
mod auth;
mod bodies;
mod callback;
mod connect;
mod connect_links;
mod credentials;
mod diagnosis;
mod exchange;
mod google;
mod hardening;
mod helpers;
mod id_tokens;
mod observability;
mod oidc;
mod openapi;
mod outages;
mod pace;
mod providers;
mod refresh;
mod refresher;
mod shared;
mod slow_clients;
mod storage;
#[path = "../support/db.rs"]
mod support;
mod tokens;
mod upgrade;
mod warm;
mod webhooks;

#[path = "../support/receiver.rs"]
mod receiver;
