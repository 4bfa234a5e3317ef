//! Shared by the loopback benches: a relay on its own thread (a `current_thread` runtime, as
//! `qrelay serve` runs by default) with in-memory certificates and no frequency limits, and
//! clients of the client library on the bench's own runtime.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context;
use qrelay::auth::TokenKey;
use qrelay::certs::DevPki;
use qrelay::client::{Client, ClientConfig, Event, Events};
use qrelay::protocol::User;
use qrelay::server::{Identity, RateLimits, RelayThread, ServerConfig};
use rustls::pki_types::CertificateDer;

/// The bench relay's server API key.
pub const API_KEY: &str = "bench-api-key";

/// How long one step may take before the bench gives up (a lost reliable message would
/// otherwise hang it).
pub const STEP: Duration = Duration::from_secs(10);

/// Criterion settings for this project's benches: short runs, no plots, fewer bootstrap
/// resamples, so that the whole `cargo bench` stays within a few minutes on 2 cores.
pub fn short_runs(
    warm_up: Duration,
    measurement: Duration,
    samples: usize,
) -> criterion::Criterion {
    criterion::Criterion::default()
        .without_plots()
        .nresamples(20_000)
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .sample_size(samples)
}

/// A relay on 127.0.0.1 on its own thread.
pub struct BenchRelay {
    relay: RelayThread,
    ca: CertificateDer<'static>,
    tokens: TokenKey,
}

impl BenchRelay {
    /// Starts a relay with the benchmark profile (no frequency limits).
    pub fn start() -> anyhow::Result<BenchRelay> {
        Self::start_with(None)
    }

    /// The same, with the HTTP listener on 127.0.0.1 and [`API_KEY`].
    pub fn start_with_http() -> anyhow::Result<BenchRelay> {
        Self::start_with(Some("127.0.0.1:0".parse()?))
    }

    /// The HTTP listener's address, if it has one.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.relay.handle().http_addr()
    }

    fn start_with(http: Option<std::net::SocketAddr>) -> anyhow::Result<BenchRelay> {
        let pki = DevPki::generate()?;
        let (chain, key) = pki.server_identity()?;
        let secret = b"bench secret, not for production use";
        let tokens = TokenKey::new(secret);
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            limits: RateLimits::unlimited(),
            // Every bench client comes from 127.0.0.1.
            max_connections_per_address: 10_000,
            retry_above_handshakes: 10_000,
            http,
            web: None,
            ..ServerConfig::default()
        };
        let identity = Identity::new(chain, key, secret).with_api_key(API_KEY);
        let relay = RelayThread::start(config, identity)?;
        Ok(BenchRelay { relay, ca: pki.ca()?, tokens })
    }

    /// Connects a client as `user` (one UDP socket per client) and logs it in to `room`.
    pub async fn member(&self, user: &str, room: &str) -> anyhow::Result<(Client, Events)> {
        let config = ClientConfig::new(
            self.relay.local_addr(),
            "localhost",
            vec![self.ca.clone()],
            User { id: user.into(), name: user.into() },
        );
        let (client, events) = Client::connect(config).await.context("connect")?;
        let token = self.tokens.mint(user, None, true, Duration::from_secs(3600))?;
        client.login_room(room, &token).await.context("login")?;
        Ok((client, events))
    }

    /// Shuts the relay down and waits for its thread.
    pub async fn stop(self) {
        self.relay.stop().await;
    }
}

/// The next broadcast, barrage or command event, skipping user updates; fails on the end of
/// the room or the connection, or after [`STEP`].
pub async fn next_message(events: &mut Events) -> anyhow::Result<Event> {
    loop {
        let event = tokio::time::timeout(STEP, events.next())
            .await
            .context("no message in time")?
            .context("the connection ended")?;
        match event {
            Event::Broadcasts { .. } | Event::Barrages { .. } | Event::Command { .. } => {
                return Ok(event);
            }
            Event::UsersJoined { .. } | Event::UsersLeft { .. } | Event::TokenWillExpire { .. } => {
            }
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    }
}

/// A single-threaded runtime for the clients: the relay runs on its own thread, so client and
/// relay each keep one core, as a relay and its clients in separate processes would.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}
