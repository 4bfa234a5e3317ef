//! qrelay: a QUIC relay for real-time room messaging.
//!
//! Map of the crate (the modules of a feature that is off are not built):
//! - `protocol`: wire types, limits, result codes and the codec (no I/O).
//! - `transport`: the one QUIC transport configuration, TLS setup and framed stream reading.
//! - `auth`: login tokens (HS256 JWTs). Feature `server`.
//! - `certs`: the development CA, server certificate and token secret under `certs/`. Feature
//!   `server`.
//! - `server`: the relay (router, rooms, lanes, connections). Feature `server`.
//! - `http`: the HTTP adapter: server API, metrics, health, webhooks, and the demo page's
//!   listener. Feature `server`.
//! - `webtransport`: the WebTransport adapter: browser sessions on the relay's UDP port, the
//!   certificate browsers see. Feature `server`.
//! - `client`: the client library: connect, log in to rooms, send, receive events. Feature
//!   `client`.
//!
//! Cargo features (both on by default): `client` builds `client`; `server` builds `server`,
//! `http`, `auth`, `certs`, the server half of `transport` and the `qrelay` binary.
//! `protocol` and the client half of `transport` are always built. An application that only
//! talks to a relay builds the client alone, without the relay's dependencies (certificate
//! generation, JWT, TOML, HTTP):
//! `qrelay = { version = "0.1", default-features = false, features = ["client"] }`.
#![warn(missing_docs)]

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod http;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod transport;
#[cfg(feature = "server")]
pub mod webtransport;
