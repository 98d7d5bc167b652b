//! Integration tests: the real service over real HTTP, against a strict
//! fake of Microsoft's identity platform and Graph.

mod auth;
mod bodies;
mod callback;
mod connect;
mod google;
mod helpers;
mod observability;
mod refresh;
mod storage;
mod webhooks;

#[path = "../support/receiver.rs"]
mod receiver;
