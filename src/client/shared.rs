//! What the [`super::Client`] handles, the reader tasks and the reconnect supervisor share
//! for the client's whole life: the current connection (swapped on reconnect), the rooms,
//! the counters, the client's own socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::close;

use super::ClientConfig;
use super::connection::{Connection, lock};
use super::error::ClientError;
use super::freshness::RelayClock;
use super::rooms::{LaneId, Rooms};
use super::socket::OwnSocket;
use super::stats::Stats;

/// The client-wide state.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where and as whom to connect, timeouts, reconnect policy.
    pub(crate) config: ClientConfig,
    /// The UDP endpoint every connection of this client uses (kept across reconnects).
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint's socket when the client owns the endpoint ([`super::Client::connect`]),
    /// to move it to a new one; `None` on a shared endpoint.
    pub(crate) own_socket: Option<Arc<OwnSocket>>,
    /// The QUIC client configuration (TLS roots, transport parameters).
    pub(crate) quic: quinn::ClientConfig,
    /// The current connection, or why there is none.
    link: Mutex<Link>,
    /// Wakes the supervisor when [`Shared::close`] is called while it reconnects.
    closing: Notify,
    /// Memberships and the lanes of the current connection.
    pub(crate) rooms: Mutex<Rooms>,
    /// Counters.
    pub(crate) stats: Stats,
    /// The last lane ID handed out (IDs are unique across connections).
    last_lane: AtomicU64,
    /// The relay's clock as seen from the current connection's barrage, for
    /// [`super::ClientConfig::barrage_max_age`].
    pub(crate) relay_clock: Mutex<RelayClock>,
    /// Time zero of this client's clock for [`RelayClock`] (monotonic).
    started: Instant,
}

/// The current connection and whether the application closed the client.
#[derive(Debug)]
struct Link {
    /// The connection state.
    state: LinkState,
    /// Set by [`Shared::close`]: the code and reason for the last event. No connection is
    /// installed after it.
    closed: Option<(u32, String)>,
}

/// Whether requests can be sent now.
#[derive(Debug)]
enum LinkState {
    /// Connected: requests go here.
    Up(Arc<Connection>),
    /// Lost, connecting again: requests fail at once.
    Reconnecting,
    /// Done for good, for this reason: requests fail at once.
    Ended(String),
}

impl Shared {
    /// The state of a client whose first connection is `connection`.
    pub(crate) fn new(
        config: ClientConfig,
        endpoint: quinn::Endpoint,
        own_socket: Option<Arc<OwnSocket>>,
        quic: quinn::ClientConfig,
        connection: Arc<Connection>,
    ) -> Self {
        let rooms = Rooms::new(config.user.clone(), config.reconnect.enabled, config.track_members);
        Shared {
            config,
            endpoint,
            own_socket,
            quic,
            link: Mutex::new(Link { state: LinkState::Up(connection), closed: None }),
            closing: Notify::new(),
            rooms: Mutex::new(rooms),
            stats: Stats::default(),
            last_lane: AtomicU64::new(0),
            relay_clock: Mutex::new(RelayClock::default()),
            started: Instant::now(),
        }
    }

    /// This client's clock at `at`, in milliseconds since the client started.
    pub(crate) fn local_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection to send a request on. Fails at once with
    /// [`ClientError::Disconnected`] while reconnecting and after the end.
    pub(crate) fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        match &lock(&self.link).state {
            LinkState::Up(connection) => Ok(Arc::clone(connection)),
            LinkState::Reconnecting => {
                Err(ClientError::Disconnected("the connection was lost; reconnecting".into()))
            }
            LinkState::Ended(reason) => Err(ClientError::Disconnected(reason.clone())),
        }
    }

    /// The current connection, if connected.
    pub(crate) fn current(&self) -> Option<Arc<Connection>> {
        self.connection().ok()
    }

    /// Closes the client: the current connection with `code`, or, while reconnecting, the
    /// supervisor stops; so does the socket watcher. The first close's code and reason are
    /// kept for the last event.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        let mut link = lock(&self.link);
        link.closed.get_or_insert_with(|| (code, reason.to_owned()));
        if let LinkState::Up(connection) = &link.state {
            connection.close(code, reason);
        }
        drop(link);
        // Stored as a permit if the supervisor is not waiting right now.
        self.closing.notify_one();
        if let Some(own_socket) = &self.own_socket {
            own_socket.stop();
        }
    }

    /// The code and reason of [`Shared::close`], once it was called.
    pub(crate) fn closed(&self) -> Option<(u32, String)> {
        lock(&self.link).closed.clone()
    }

    /// Waits until [`Shared::close`] is called (returns at once if it was).
    pub(crate) async fn wait_closed(&self) {
        if self.closed().is_none() {
            self.closing.notified().await;
        }
    }

    /// The connection is lost: requests fail at once until one is installed again.
    pub(crate) fn reconnecting(&self) {
        lock(&self.link).state = LinkState::Reconnecting;
    }

    /// The client is done for good.
    pub(crate) fn ended(&self, reason: String) {
        lock(&self.link).state = LinkState::Ended(reason);
    }

    /// Makes `connection` the one requests go to. Returns `false` (and installs nothing) if
    /// the client was closed meanwhile.
    pub(crate) fn install(&self, connection: Arc<Connection>) -> bool {
        let mut link = lock(&self.link);
        if link.closed.is_some() {
            return false;
        }
        link.state = LinkState::Up(connection);
        true
    }

    /// A new lane ID.
    pub(crate) fn next_lane(&self) -> LaneId {
        self.last_lane.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The code and reason of a close by the application, for `Disconnected`.
    pub(crate) fn close_event(&self) -> super::Event {
        let (code, reason) =
            self.closed().unwrap_or_else(|| (close::NORMAL, "client closed".to_owned()));
        super::Event::Disconnected { code: Some(u64::from(code)), reason }
    }
}
