//! The relay: accepts QUIC connections, routes logins to rooms and fans messages out.
//!
//! - [`config`]: every setting and its default.
//! - `endpoint`: the UDP sockets and QUIC endpoints; several share one address
//!   (`SO_REUSEPORT`), each after the first on a thread of its own.
//! - `admission`: Retry under handshake load, total and per-address connection limits.
//! - `connection`: one client's control stream, datagrams and rooms.
//! - `router` / `room`: room ID → room; members, sequences, frequency limits, fan-out.
//! - `lane`: the per-(receiver, room) queue and writer task.
//! - `peer`: the transport under a connection: native QUIC or a WebTransport session.
//! - [`stats`]: counters of everything done, dropped or refused.
//! - `thread`: [`RelayThread`], a relay on a dedicated thread (benchmarks, the load tool).

mod admission;
pub mod config;
mod connection;
mod endpoint;
pub mod hooks;
mod lane;
pub(crate) mod peer;
mod rate;
pub(crate) mod room;
pub(crate) mod router;
pub mod stats;
mod thread;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quinn::VarInt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::{ClusterConfig, ClusterStorage, RateLimits, ServerConfig, TlsFiles};
pub use room::now_ms;
pub use stats::Stats;
pub use thread::RelayThread;

use crate::auth::TokenKey;
use crate::protocol::close;
use crate::transport::EndpointKeys;
use crate::webtransport::{CertResolver, WebTransportCert};
use stats::Counters;

/// Warnings clients can cause (protocol violations, connections refused at the limit),
/// throttled together.
pub(crate) static WARNINGS: stats::Throttle = stats::Throttle::new();

/// How often the relay logs a summary of what it did (at `info`; single events are `debug`).
const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

/// Bounds of the period at which empty rooms with expired history are removed.
const SWEEP_MIN: Duration = Duration::from_secs(1);
const SWEEP_MAX: Duration = Duration::from_secs(30);

/// How often the browsers' short-lived certificate is checked for renewal (it is renewed
/// days before it ends: hourly checks are plenty).
const DEV_CERT_CHECK: Duration = Duration::from_secs(3600);

/// How long [`ServerHandle::shutdown`] waits for clients to acknowledge the close.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The certificate or key was rejected.
    #[error("TLS setup failed")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind the UDP socket")]
    Io(#[from] std::io::Error),
    /// A TCP listener (server API, page) could not be bound.
    #[error("cannot listen on TCP {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A TCP listener on `addr` for the runtime the relay runs on.
fn listen_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    let listen = || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    };
    listen().map_err(|source| ServerError::Listen { addr, source })
}

/// The relay's TLS identity, token key and QUIC endpoint keys.
#[derive(Debug)]
pub struct Identity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Verifies login tokens.
    pub tokens: TokenKey,
    /// Stateless-reset and address-validation keys: derive them from a persistent secret so a
    /// restarted relay resets its old connections at once.
    pub endpoint_keys: EndpointKeys,
    /// The server API key (`Authorization: Bearer KEY`), which also signs webhooks. `None`:
    /// the `/v1` routes answer 401 (metrics and health stay open) and webhooks go unsigned.
    pub api_key: Option<String>,
    /// The certificate browsers get (WebTransport): a short-lived one the relay makes
    /// (development, the default) or `chain` (production).
    pub webtransport_cert: WebTransportCert,
    /// The token secret is the local development one: the page listener then mints tokens
    /// for any user at `/dev/token`, when it is on a loopback address. Default `false`.
    pub dev_tokens: bool,
}

impl Identity {
    /// An identity whose token key and endpoint keys both come from `secret`, as
    /// `qrelay serve` makes it from its token secret.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        secret: &[u8],
    ) -> Identity {
        Identity {
            chain,
            key,
            tokens: TokenKey::new(secret),
            endpoint_keys: EndpointKeys::derive(secret),
            api_key: None,
            webtransport_cert: WebTransportCert::ShortLived,
            dev_tokens: false,
        }
    }

    /// The same identity with `cert` for browsers.
    pub fn with_webtransport_cert(mut self, cert: WebTransportCert) -> Identity {
        self.webtransport_cert = cert;
        self
    }

    /// The same identity, marked as holding the development token secret (see
    /// [`Identity::dev_tokens`]).
    pub fn with_dev_tokens(mut self) -> Identity {
        self.dev_tokens = true;
        self
    }

    /// The same identity with a server API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Identity {
        self.api_key = Some(key.into());
        self
    }
}

/// State every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) tokens: TokenKey,
    /// The server API key.
    pub(crate) api_key: Option<String>,
    pub(crate) router: router::Router,
    pub(crate) counters: Counters,
    /// Room events for the webhooks.
    pub(crate) hooks: hooks::Hooks,
    /// The certificates of TLS handshakes, when WebTransport is on (the browsers' short-lived
    /// one is renewed here, and its hash given to pages).
    pub(crate) certs: Option<Arc<CertResolver>>,
    /// Whether the page listener mints development tokens (development secret, loopback).
    pub(crate) dev_tokens: bool,
    /// The cluster link, with `[cluster]` (`--nats`).
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    per_address: admission::PerAddress,
    last_session: AtomicU32,
}

impl Shared {
    pub(crate) fn next_session(&self) -> u32 {
        self.last_session.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

/// A bound relay, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    /// Every endpoint (never none); the first runs on the runtime that runs [`Server::run`].
    endpoints: Vec<quinn::Endpoint>,
    /// The threads of the endpoints after the first, waiting for [`Server::run`].
    threads: Vec<endpoint::EndpointThread>,
    /// The HTTP listener, if configured.
    http: Option<tokio::net::TcpListener>,
    /// The demo page's listener, if configured.
    web: Option<tokio::net::TcpListener>,
    /// The room events for the webhook sender, if webhooks are configured.
    hook_events: Option<tokio::sync::mpsc::Receiver<hooks::RoomEvent>>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

/// A cheap handle to a running relay: address, counters, shutdown.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    endpoints: Vec<quinn::Endpoint>,
    http: Option<SocketAddr>,
    web: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Server {
    /// Binds the UDP sockets (`config.endpoints` of them) and starts the threads of all but
    /// the first. Must be called inside a tokio runtime.
    pub fn bind(config: ServerConfig, identity: Identity) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let certs = if config.webtransport {
            let resolver = CertResolver::new(
                identity.chain.clone(),
                &identity.key,
                identity.webtransport_cert,
            )
            .map_err(|e| ServerError::Config(e.to_string()))?;
            Some(Arc::new(resolver))
        } else {
            None
        };
        let mut quic = match &certs {
            Some(certs) => crate::transport::server_config_with_resolver(
                certs.clone(),
                vec![crate::protocol::ALPN.to_vec(), crate::webtransport::ALPN_H3.to_vec()],
                &identity.endpoint_keys,
                config.idle_timeout(),
            )?,
            None => crate::transport::server_config(
                identity.chain,
                identity.key,
                &identity.endpoint_keys,
                config.idle_timeout(),
            )?,
        };
        // The transport parameters with this relay's settings (in place of the defaults).
        let mut transport = crate::transport::transport_config(
            crate::transport::Side::Server,
            config.idle_timeout(),
        );
        transport.enable_segmentation_offload(config.segmentation_offload);
        transport.send_window(config.send_window_bytes);
        crate::transport::ask_for_fewer_acks(&mut transport, config.ack_delay());
        if config.webtransport {
            crate::webtransport::session::allow_browser_streams(&mut transport);
        }
        quic.transport_config(Arc::new(transport));
        info!(
            ack_delay_ms = config.ack_delay_ms,
            send_window_bytes = config.send_window_bytes,
            segmentation_offload = config.segmentation_offload,
            "QUIC transport"
        );
        if config.insecure_dev_auth {
            warn!(
                "INSECURE DEV AUTH: tokens are not checked; anyone can log in as anyone. Never use this in production."
            );
        }
        let (hooks, hook_events) = if config.webhooks.is_empty() {
            (hooks::Hooks::default(), None)
        } else {
            let (hooks, events) = hooks::Hooks::new(config.webhook_queue);
            (hooks, Some(events))
        };
        let http = config.http.map(listen_tcp).transpose()?;
        let web = config.web.map(listen_tcp).transpose()?;
        let web_on_loopback = config.web.is_some_and(|addr| addr.ip().to_canonical().is_loopback());
        let cluster = config
            .cluster
            .clone()
            .map(|cluster| crate::cluster::Cluster::new(cluster, config.history_size));
        let shared = Arc::new(Shared {
            cluster,
            config,
            tokens: identity.tokens,
            api_key: identity.api_key,
            router: router::Router::default(),
            counters: Counters::default(),
            hooks,
            certs,
            dev_tokens: identity.dev_tokens && web_on_loopback,
            per_address: admission::PerAddress::default(),
            last_session: AtomicU32::new(0),
        });
        let (shutdown, _) = watch::channel(false);
        let (endpoints, threads) =
            endpoint::bind(&shared, quic, &identity.endpoint_keys, &shutdown)?;
        Ok(Server { endpoints, threads, http, web, hook_events, shared, shutdown })
    }

    /// A handle that stays valid while the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            endpoints: self.endpoints.clone(),
            http: self.http_addr(),
            web: self.web_addr(),
            shared: self.shared.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// The address the relay listens on (every endpoint's).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoints[0].local_addr()
    }

    /// The HTTP listener's address, if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// The demo page listener's address, if it has one.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// Accepts connections until [`ServerHandle::shutdown`] is called: on the first endpoint
    /// here, on the others in their threads. With several endpoints, returns once their
    /// threads have ended too.
    pub async fn run(self) {
        info!(addr = ?self.local_addr().ok(), endpoints = self.endpoints.len(), "relay listening");
        tokio::spawn(sweep_rooms(self.shared.clone(), self.shutdown.subscribe()));
        let cluster = self.shared.cluster.clone().map(|cluster| {
            let shared = self.shared.clone();
            tokio::spawn(crate::cluster::run(shared, cluster, self.shutdown.subscribe()))
        });
        tokio::spawn(log_summaries(self.shared.clone(), self.shutdown.subscribe()));
        if let Some(listener) = self.http {
            tokio::spawn(crate::http::serve(
                listener,
                self.shared.clone(),
                self.shutdown.subscribe(),
            ));
        }
        if let (Some(listener), Ok(quic)) = (self.web, self.endpoints[0].local_addr()) {
            tokio::spawn(crate::http::page::serve(
                listener,
                self.shared.clone(),
                quic,
                self.shutdown.subscribe(),
            ));
        }
        if let Some(certs) = self.shared.certs.clone() {
            tokio::spawn(renew_dev_cert(certs, self.shutdown.subscribe()));
        }
        if let Some(events) = self.hook_events {
            info!(urls = ?self.shared.config.webhooks, "webhooks on");
            tokio::spawn(crate::http::webhooks::run(self.shared.clone(), events));
        }
        let threads: Vec<_> = self.threads.into_iter().map(|thread| thread.start()).collect();
        endpoint::accept(&self.endpoints[0], &self.shared, self.shutdown.subscribe()).await;
        info!("relay stopped accepting");
        for done in threads {
            let _ = done.await;
        }
        // The cluster link stores the members' last records and says this node leaves.
        if let Some(cluster) = cluster {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, cluster).await;
        }
    }
}

/// Removes empty rooms once their history has expired, until shutdown.
async fn sweep_rooms(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_secs(shared.config.history_ttl_secs).clamp(SWEEP_MIN, SWEEP_MAX);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.router.sweep(&shared),
            _ = stop.changed() => return,
        }
    }
}

/// Replaces the browsers' short-lived certificate when it is due, until shutdown.
async fn renew_dev_cert(certs: Arc<CertResolver>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DEV_CERT_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => match certs.renew_if_due(std::time::SystemTime::now()) {
                Ok(Some(cert)) => info!(sha256 = %hex::encode(cert.sha256()), "renewed the WebTransport development certificate"),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cannot renew the WebTransport development certificate"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// Logs, every [`SUMMARY_PERIOD`] in which something happened, what the relay did since the
/// last summary and what it holds now, until shutdown.
async fn log_summaries(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SUMMARY_PERIOD);
    tick.tick().await;
    let mut last = shared.counters.snapshot();
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            _ = tick.tick() => {}
            // The part-minute before shutdown gets its summary too.
            _ = stop.changed() => stopping = true,
        }
        let now = shared.counters.snapshot();
        let suppressed = WARNINGS.take_suppressed();
        if now == last && suppressed == 0 {
            continue;
        }
        info!(
            connections = now.connections_open,
            rooms = now.rooms_open,
            lanes = now.lanes_open,
            history_bytes = now.history_bytes,
            accepted = now.connections_accepted - last.connections_accepted,
            logins = now.logins - last.logins,
            broadcasts = now.broadcasts - last.broadcasts,
            commands = now.commands - last.commands,
            barrages = now.barrages - last.barrages,
            refused = now.requests_refused - last.requests_refused,
            slow_receivers = now.slow_receivers - last.slow_receivers,
            violations = now.protocol_violations - last.protocol_violations,
            warnings_suppressed = suppressed,
            "relay summary (since the last; connections, rooms, lanes and history bytes now)"
        );
        last = now;
    }
}

impl ServerHandle {
    /// The address the relay listens on (every endpoint's).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoints[0].local_addr()
    }

    /// The HTTP listener's address, if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The demo page listener's address, if it has one.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web
    }

    /// A copy of the relay's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// How many rooms exist now.
    pub fn room_count(&self) -> usize {
        self.shared.router.room_count()
    }

    /// Stops accepting, ends every room lane with `SERVER_SHUTTING_DOWN`, closes every
    /// connection with close code `SHUTDOWN`, and waits (boundedly) for clients to acknowledge.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        // Give lane writers a moment to send what is queued and their final Closed event.
        let lanes = &self.shared.counters.lanes_open;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE / 2, async {
            while lanes.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        for endpoint in &self.endpoints {
            endpoint.close(VarInt::from_u32(close::SHUTDOWN), b"server shutting down");
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for endpoint in &self.endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }
}
