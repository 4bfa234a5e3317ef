//! Shared test harness: an in-process relay on 127.0.0.1:0 with in-memory certificates, and a
//! raw protocol peer for tests that need to speak (or break) the wire format directly.
#![allow(dead_code)]

/// Relays as processes in a cluster over a real NATS server (tests/cluster.rs).
pub mod cluster;
/// Clients of a cluster room and the server API of a node (tests/cluster_api.rs, tests/cluster_recovery.rs).
pub mod peers;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qrelay::auth::TokenKey;
use qrelay::certs::DevPki;
use qrelay::protocol::{
    ControlFrame, LaneEvent, LaneHeader, MAX_SERVER_FRAME, Outcome, Request, RequestFrame, User,
    encode_frame,
};
use qrelay::server::{Identity, RateLimits, Server, ServerConfig, ServerHandle};
use qrelay::transport::{FrameReader, client_config};
use rustls::pki_types::CertificateDer;

/// Every await in a test is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.expect("test step timed out")
}

/// A relay running inside the test's runtime.
pub struct TestRelay {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub ca: CertificateDer<'static>,
    pub tokens: TokenKey,
    /// The certificates, to start the relay again with the same identity.
    pub pki: DevPki,
    /// The relay's `Server::run` task: it ends after shutdown.
    pub running: tokio::task::JoinHandle<()>,
}

/// The token secret of every test relay.
const SECRET: &[u8] = b"test secret, not for production use";

/// The server API key of every test relay (`Authorization: Bearer API_KEY`; it also signs
/// webhooks).
pub const API_KEY: &str = "test-api-key-not-for-production";

fn identity(pki: &DevPki) -> Identity {
    let (chain, key) = pki.server_identity().unwrap();
    Identity::new(chain, key, SECRET).with_api_key(API_KEY)
}

/// A config for tests: loopback, ephemeral port, no frequency limits unless a test sets them.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: RateLimits::unlimited(),
        http: None,
        web: None,
        ..ServerConfig::default()
    }
}

impl TestRelay {
    pub async fn start(config: ServerConfig) -> TestRelay {
        let pki = DevPki::generate().unwrap();
        let tokens = TokenKey::new(SECRET);
        let server = Server::bind(config, identity(&pki)).expect("bind");
        Self::run(server, pki, tokens)
    }

    /// Shuts the relay down and starts a new one on the same address, with the same
    /// certificates and token key (the restart of a real relay): rooms start anew.
    pub async fn restart(self, mut config: ServerConfig) -> TestRelay {
        self.handle.shutdown().await;
        let TestRelay { handle, addr, pki, tokens, .. } = self;
        drop(handle);
        config.listen = addr;
        // The old socket is released once the old connections' tasks have ended.
        let server = within(async {
            loop {
                match Server::bind(config.clone(), identity(&pki)) {
                    Ok(server) => return server,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        Self::run(server, pki, tokens)
    }

    fn run(server: Server, pki: DevPki, tokens: TokenKey) -> TestRelay {
        let handle = server.handle();
        let addr = server.local_addr().unwrap();
        let running = tokio::spawn(server.run());
        TestRelay { handle, addr, ca: pki.ca().unwrap(), tokens, pki, running }
    }

    /// A one-hour token for `user`, all rooms, may publish.
    pub fn token(&self, user: &str) -> String {
        self.tokens.mint(user, None, true, Duration::from_secs(3600)).unwrap()
    }

    /// A plain QUIC connection with the qrelay ALPN.
    pub async fn connect_raw(&self) -> quinn::Connection {
        self.connect_raw_with_idle(Duration::from_secs(10)).await
    }

    /// A plain QUIC connection whose idle timeout (and so keep-alive, a third of it) is `idle`.
    pub async fn connect_raw_with_idle(&self, idle: Duration) -> quinn::Connection {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(
            client_config(std::slice::from_ref(&self.ca), idle).unwrap(),
        );
        within(endpoint.connect(self.addr, "localhost").unwrap()).await.expect("connect")
    }

    /// A raw peer with its control stream open.
    pub async fn raw_peer(&self) -> RawPeer {
        self.raw_peer_on(self.connect_raw().await).await
    }

    /// A raw peer on an existing connection (its control stream is opened here).
    pub async fn raw_peer_on(&self, conn: quinn::Connection) -> RawPeer {
        let (send, recv) = conn.open_bi().await.unwrap();
        RawPeer { conn, send, control: FrameReader::new(recv, MAX_SERVER_FRAME), next_request: 0 }
    }

    /// A raw peer logged in to `room` as `user`, with that room's lane.
    pub async fn raw_member(&self, user: &str, room: &str) -> (RawPeer, FrameReader) {
        let peer = self.raw_peer().await;
        self.join(peer, user, room).await
    }

    /// Logs `peer` in to `room` as `user` and accepts the lane.
    pub async fn join(&self, mut peer: RawPeer, user: &str, room: &str) -> (RawPeer, FrameReader) {
        let outcome = peer.login(self, user, room).await;
        assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
        let lane = peer.accept_lane(room).await;
        (peer, lane)
    }
}

/// A peer that speaks the wire protocol by hand.
pub struct RawPeer {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub control: FrameReader,
    next_request: u32,
}

impl RawPeer {
    /// Sends one request and returns the outcome of its reply.
    pub async fn request(&mut self, body: Request) -> Outcome {
        self.next_request += 1;
        let request = self.next_request;
        let mut buf = BytesMut::new();
        encode_frame(&RequestFrame { request, body }, &mut buf).unwrap();
        within(self.send.write_all(&buf)).await.unwrap();
        loop {
            match within(self.control.next::<ControlFrame>()).await.unwrap() {
                Some(ControlFrame::Reply(reply)) if reply.request == request => {
                    return reply.outcome;
                }
                Some(_) => continue,
                None => panic!("control stream ended"),
            }
        }
    }

    pub async fn login(&mut self, relay: &TestRelay, user: &str, room: &str) -> Outcome {
        let user = User { id: user.into(), name: format!("{user} name") };
        let token = relay.token(&user.id);
        self.request(Request::Login { room: room.into(), user, token, recover: None }).await
    }

    pub async fn broadcast(&mut self, room: &str, payload: &'static [u8]) -> Outcome {
        self.request(Request::Broadcast { room: room.into(), payload: Bytes::from_static(payload) })
            .await
    }

    /// Accepts the next lane and checks its header names `room`.
    pub async fn accept_lane(&self, room: &str) -> FrameReader {
        let recv = within(self.conn.accept_uni()).await.unwrap();
        let mut lane = FrameReader::new(recv, MAX_SERVER_FRAME);
        let header: LaneHeader = within(lane.next()).await.unwrap().unwrap();
        assert_eq!(header.room, room);
        lane
    }

    /// Accepts the next lane, whichever room it is for.
    pub async fn accept_lane_any(&self) -> (String, FrameReader) {
        let recv = within(self.conn.accept_uni()).await.unwrap();
        let mut lane = FrameReader::new(recv, MAX_SERVER_FRAME);
        let header: LaneHeader = within(lane.next()).await.unwrap().unwrap();
        (header.room, lane)
    }

    /// Writes raw bytes on the control stream.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        within(self.send.write_all(bytes)).await.unwrap();
    }
}

/// A relay that drops peers silent for `idle_ms`, and a member of "lobby" that keeps its
/// connection alive with that timeout: the watcher of a peer that vanishes.
pub async fn relay_with_watcher(idle_ms: u64) -> (std::sync::Arc<TestRelay>, RawPeer, FrameReader) {
    let mut config = test_config();
    config.idle_timeout_ms = idle_ms;
    let relay = std::sync::Arc::new(TestRelay::start(config).await);
    let idle = Duration::from_millis(idle_ms);
    let conn = relay.connect_raw_with_idle(idle).await;
    let (watcher, lane) = relay.join(relay.raw_peer_on(conn).await, "watcher", "lobby").await;
    (relay, watcher, lane)
}

/// Runs `make` on a runtime of its own on another thread, then stops that runtime without
/// letting it send anything more: the peers `make` created vanish as if their network went
/// away (no close, no FIN), and the relay has to notice by its idle timeout.
pub async fn vanish<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
{
    within(tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ghost = rt.block_on(make());
        rt.shutdown_background();
        // Dropping the ghost's handles could try to close; it must not get the chance.
        std::mem::forget(ghost);
    }))
    .await
    .unwrap();
}

/// Waits (within a test step) until the relay's counters satisfy `done`.
pub async fn until(relay: &TestRelay, done: impl Fn(&qrelay::server::Stats) -> bool) {
    within(async {
        while !done(&relay.handle.stats()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The next broadcast batch on a lane, skipping user updates.
pub async fn next_broadcasts(lane: &mut FrameReader) -> Vec<qrelay::protocol::BroadcastMessage> {
    loop {
        match next_event(lane).await {
            LaneEvent::Broadcasts(messages) => return messages,
            LaneEvent::UsersJoined(_) | LaneEvent::UsersLeft(_) => continue,
            other => panic!("expected broadcasts, got {other:?}"),
        }
    }
}

/// The next lane event, skipping none.
pub async fn next_event(lane: &mut FrameReader) -> LaneEvent {
    within(lane.next::<LaneEvent>()).await.unwrap().expect("lane ended")
}

/// Waits until the connection is closed and returns the application close code.
pub async fn close_code(conn: &quinn::Connection) -> u64 {
    match within(conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// Honest members `alice` (sender) and `bob` (receiver) in `room`; asserts a broadcast from
/// alice still reaches bob.
pub async fn assert_room_still_served(relay: &TestRelay, room: &str) {
    let (mut alice, _alice_lane) = relay.raw_member("alice", room).await;
    let (_bob, mut bob_lane) = relay.raw_member("bob", room).await;
    let outcome = alice.broadcast(room, b"still here").await;
    assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    loop {
        if let LaneEvent::Broadcasts(messages) = next_event(&mut bob_lane).await {
            assert_eq!(messages[0].payload, Bytes::from_static(b"still here"));
            break;
        }
    }
}
