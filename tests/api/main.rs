//! Integration tests: the real service over real HTTP, against a strict
//! fake of Microsoft's identity platform and Graph.

mod auth;
mod bodies;
mod callback;
mod connect;
mod google;
mod helpers;
mod id_tokens;
mod observability;
mod oidc;
mod openapi;
mod refresh;
mod refresher;
mod storage;
#[path = "../support/db.rs"]
mod support;
mod tokens;
mod webhooks;

#[path = "../support/receiver.rs"]
mod receiver;
