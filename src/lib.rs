//! qrelay: a QUIC relay for real-time room messaging.
//!
//! Map of the crate:
//! - [`protocol`]: wire types, limits, result codes and the codec (no I/O).
//! - [`transport`]: the one QUIC transport configuration, TLS setup and framed stream reading.
//! - [`auth`]: login tokens (HS256 JWTs).
//! - [`certs`]: the development CA, server certificate and token secret under `certs/`.
//! - [`server`]: the relay (router, rooms, lanes, connections).
//! - [`http`]: the HTTP adapter: server API, metrics, health, webhooks.
//! - [`client`]: the client library: connect, log in to rooms, send, receive events.
#![warn(missing_docs)]

pub mod auth;
pub mod certs;
pub mod client;
pub mod http;
pub mod protocol;
pub mod server;
pub mod transport;
