//! Automatic reconnect: the supervisor task that starts a connection's readers and watches
//! the connection; when it is lost, connects again with exponential backoff and jitter,
//! logs back in to every room asking to recover what was missed, and reports each step as
//! [`Event::ConnectionState`]. Also the login again of a room whose lane the server closed
//! because this client fell behind.
//!
//! States: connected → (connection lost) → reconnecting, attempt 1, 2, … → connected again
//! (`Reconnected`), or → given up (`Failed`, then `Disconnected`). A close by the client
//! ([`super::Client::close`], last handle dropped) ends it in any state with `Disconnected`.

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, RecvStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::protocol::{ErrorCode, Outcome, close};

use super::connection::{Connection, Ended, lock};
use super::error::ClientError;
use super::event::{ConnectionState, Event};
use super::shared::Shared;
use super::stats::Stats;
use super::{control, datagrams, lanes, servers};

/// Default for [`ReconnectPolicy::initial_backoff`].
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Default for [`ReconnectPolicy::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default for [`ReconnectPolicy::max_elapsed`].
pub const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(120);

/// Doublings of the backoff after which it stays put (far beyond any sane `max_backoff`;
/// keeps the arithmetic from overflowing).
const MAX_DOUBLINGS: u32 = 20;

/// How a client reconnects after losing its connection.
///
/// Every connection loss other than a close by the client itself is reconnected: an idle
/// timeout, a transport error, a server close (including `SHUTDOWN`: a restarted server gets
/// its clients back). Not reconnected: a server close for something this client did that it
/// would do again (`PROTOCOL_VIOLATION`, `FRAME_TOO_LARGE`, `NO_CONTROL_STREAM`,
/// `LOGIN_TIMEOUT`), and a close
/// by the client (also one because the server broke the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Reconnect at all (default `true`). Off: a lost connection ends the client with
    /// [`Event::Disconnected`], and a lane the server closes as too slow or for its shutdown
    /// ends that room with [`Event::RoomClosed`].
    pub enabled: bool,
    /// The wait before the first attempt (default 100 ms); it doubles with each attempt.
    pub initial_backoff: Duration,
    /// The longest wait between attempts (default 5 s).
    pub max_backoff: Duration,
    /// Give up when the connection was lost this long ago (default 2 min): no attempt starts
    /// after it, and an attempt's handshake ends by it (and within
    /// [`super::ClientConfig::connect_timeout`]).
    pub max_elapsed: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_elapsed: DEFAULT_MAX_ELAPSED,
        }
    }
}

impl ReconnectPolicy {
    /// No reconnect: the first lost connection ends the client.
    pub fn disabled() -> Self {
        ReconnectPolicy { enabled: false, ..ReconnectPolicy::default() }
    }

    /// The wait before attempt `attempt` (from 1): `initial_backoff` doubled per earlier
    /// attempt, at most `max_backoff`, of which a random half is taken away ("equal jitter")
    /// so that the clients of a restarted server do not come back in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_with(attempt, rand::random::<f64>())
    }

    /// [`ReconnectPolicy::backoff`] with the random part given (`jitter` in 0..1).
    fn backoff_with(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
        let base = self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        base / 2 + (base / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Starts the readers of the client's first connection and the supervisor.
pub(crate) fn start(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    recv: RecvStream,
    events: mpsc::Sender<Event>,
) {
    let readers = start_readers(&shared, &connection, recv, &events);
    let span = tracing::info_span!("client", user = %shared.config.user.id);
    tokio::spawn(supervise(shared, connection, readers, events).instrument(span));
}

/// Logs in to `room` again on `connection`, asking to recover what was missed (after the
/// server closed its lane because this client fell behind).
pub(crate) async fn relogin(
    shared: &Shared,
    connection: &Arc<Connection>,
    room: &str,
    events: &mpsc::Sender<Event>,
) {
    let Some(login) = lock(&shared.rooms).relogin(room) else { return };
    let outcome = connection.request(login).await;
    relogged(shared, room, outcome, events).await;
}

/// Watches the connection; reconnects when it is lost, until the client is closed or
/// reconnecting gives up. Emits the last event.
async fn supervise(
    shared: Arc<Shared>,
    mut connection: Arc<Connection>,
    mut readers: Vec<JoinHandle<()>>,
    events: mpsc::Sender<Event>,
) {
    loop {
        let error = connection.quic.closed().await;
        let ended = connection.ended(&error);
        let again = shared.config.reconnect.enabled
            && !ended.by_client
            && resumable(&error)
            && shared.closed().is_none();
        if again {
            shared.reconnecting();
        } else {
            shared.ended(ended.reason.clone());
        }
        tracing::info!(conn = connection.quic.stable_id(), reason = %ended.reason, reconnect = again, "connection ended");
        // Everything the old connection delivered goes before what follows; the readers end
        // quickly once the connection is closed (unless the application stopped reading).
        for reader in readers.drain(..) {
            let _ = reader.await;
        }
        let dropped = lock(&shared.rooms).connection_lost();
        datagrams::count_dropped(&shared.stats, dropped);
        if !again {
            let _ = events.send(ended.event).await;
            return;
        }
        if shared.closed().is_some() {
            closed(&shared, &events, None).await;
            return;
        }
        match reconnect(&shared, &events, &ended).await {
            Some((new, new_readers)) => {
                Stats::add(&shared.stats.reconnects, 1);
                connection = new;
                readers = new_readers;
            }
            None => return,
        }
    }
}

/// Whether a connection that ended with `error` is worth connecting again: not when the
/// server closed it for something this client did (it would do it again).
fn resumable(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ApplicationClosed(closed) => !matches!(
            u32::try_from(closed.error_code.into_inner()),
            Ok(close::PROTOCOL_VIOLATION
                | close::FRAME_TOO_LARGE
                | close::NO_CONTROL_STREAM
                | close::LOGIN_TIMEOUT)
        ),
        ConnectionError::VersionMismatch => false,
        _ => true,
    }
}

/// Connects again with backoff until a connection is up and its rooms are being restored
/// (returns it and its readers), or gives up, or the client is closed (returns `None` after
/// emitting the last event).
async fn reconnect(
    shared: &Arc<Shared>,
    events: &mpsc::Sender<Event>,
    lost: &Ended,
) -> Option<(Arc<Connection>, Vec<JoinHandle<()>>)> {
    let policy = &shared.config.reconnect;
    let deadline = Instant::now() + policy.max_elapsed;
    let mut last_error = lost.reason.clone();
    for attempt in 1.. {
        let wait = policy.backoff(attempt);
        if Instant::now() + wait >= deadline {
            let reason = format!(
                "no connection within {} after {} attempts; last error: {last_error}",
                super::error::readable(policy.max_elapsed),
                attempt - 1
            );
            tracing::warn!(%reason, "reconnecting gave up");
            shared.ended(reason.clone());
            let _ = events.send(Event::ConnectionState(ConnectionState::Failed { reason })).await;
            let _ = events.send(lost.event.clone()).await;
            return None;
        }
        let _ =
            events.send(Event::ConnectionState(ConnectionState::Reconnecting { attempt })).await;
        let opened = tokio::select! {
            opened = async {
                tokio::time::sleep(wait).await;
                // Resolved anew each time (a DNS record may have changed), tried from the
                // address after the one that was lost.
                let addrs = super::resolve(&shared.config).await?;
                Connection::open_any(
                    &shared.endpoint,
                    &shared.quic,
                    &servers::after(&addrs, Some(lost.server)),
                    &shared.config.server_name,
                    shared.config.connect_timeout,
                    Some(deadline),
                    shared.config.request_timeout,
                )
                .await
            } => opened,
            _ = shared.wait_closed() => return closed(shared, events, None).await,
        };
        let (connection, recv) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                last_error = e.detail();
                continue;
            }
        };
        match restore(shared, &connection, recv, events).await {
            Restored::Up(readers) => return Some((connection, readers)),
            Restored::Lost(error) => {
                tracing::debug!(attempt, %error, "connection lost while logging in again");
                connection.close(close::NORMAL, "reconnect attempt abandoned");
                last_error = error;
            }
            Restored::Closed => return closed(shared, events, Some(&connection)).await,
        }
    }
    None
}

/// Ends a client closed while reconnecting.
async fn closed(
    shared: &Shared,
    events: &mpsc::Sender<Event>,
    connection: Option<&Connection>,
) -> Option<(Arc<Connection>, Vec<JoinHandle<()>>)> {
    let event = shared.close_event();
    if let (Some(connection), Event::Disconnected { code, reason }) = (connection, &event) {
        let code = code.and_then(|c| u32::try_from(c).ok()).unwrap_or(close::NORMAL);
        connection.close(code, reason);
    }
    shared.ended("the client was closed".into());
    let _ = events.send(event).await;
    None
}

/// How restoring the rooms on a new connection went.
enum Restored {
    /// The connection is installed; its readers run.
    Up(Vec<JoinHandle<()>>),
    /// The connection failed before it was installed.
    Lost(String),
    /// The client was closed meanwhile.
    Closed,
}

/// Logs in to every room again on a new connection, then installs it.
///
/// The logins are written first, so the server handles them before any request the
/// application makes once the connection is installed. The readers start only after the
/// `Reconnected` event is queued, so it comes before every room's `Recovered` event.
async fn restore(
    shared: &Arc<Shared>,
    connection: &Arc<Connection>,
    recv: RecvStream,
    events: &mpsc::Sender<Event>,
) -> Restored {
    let logins = lock(&shared.rooms).relogins();
    let mut sent = Vec::with_capacity(logins.len());
    for (room, login) in logins {
        // Waited for (each within the request timeout) only once the readers run.
        match connection.start_untimed(login) {
            Ok(exchange) => sent.push((room, exchange)),
            Err(e) => return Restored::Lost(e.detail()),
        }
    }
    if !shared.install(Arc::clone(connection)) {
        return Restored::Closed;
    }
    tracing::info!(conn = connection.quic.stable_id(), rooms = sent.len(), "reconnected");
    let _ = events.send(Event::ConnectionState(ConnectionState::Reconnected)).await;
    let readers = start_readers(shared, connection, recv, events);
    for (room, exchange) in sent {
        let outcome = tokio::time::timeout(shared.config.request_timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout));
        if let Ok(Outcome::Refused { code: ErrorCode::CLUSTER_UNAVAILABLE, detail }) = &outcome {
            // A relay of a cluster that cannot reach it now: the rooms stay, and the client
            // moves on (the next relay of its list, or this one again after the backoff).
            tracing::info!(room, detail, "the relay cannot reach its cluster: reconnecting");
            connection.quic.close(
                crate::protocol::close::NORMAL.into(),
                b"the relay cannot reach its cluster",
            );
            continue;
        }
        relogged(shared, &room, outcome, events).await;
    }
    Restored::Up(readers)
}

/// Records the outcome of a login again. A refusal ends the room with `RoomClosed`; a lost
/// connection leaves it to the next reconnect.
async fn relogged(
    shared: &Shared,
    room: &str,
    outcome: Result<Outcome, ClientError>,
    events: &mpsc::Sender<Event>,
) {
    let (code, detail) = match outcome {
        Ok(Outcome::LoggedIn { room_number, session }) => {
            tracing::debug!(room, room_number, session, "logged in again");
            lock(&shared.rooms).relogged_in(room, room_number);
            return;
        }
        Ok(Outcome::Refused { code, detail }) => (code, detail),
        Ok(other) => (ErrorCode::PROTOCOL, format!("unexpected reply {other:?}")),
        Err(ClientError::Disconnected(reason)) => {
            tracing::debug!(room, reason, "connection lost while logging in again");
            return;
        }
        Err(e) => (e.code(), e.detail()),
    };
    tracing::warn!(room, %code, detail, "logging in again failed: the room is closed");
    if lock(&shared.rooms).relogin_failed(room) {
        let _ = events.send(Event::RoomClosed { room: room.to_owned(), code, detail }).await;
    }
}

/// Spawns the reader tasks of one connection.
fn start_readers(
    shared: &Arc<Shared>,
    connection: &Arc<Connection>,
    recv: RecvStream,
    events: &mpsc::Sender<Event>,
) -> Vec<JoinHandle<()>> {
    let span = tracing::info_span!(
        "conn",
        conn = connection.quic.stable_id(),
        user = %shared.config.user.id
    );
    // Another connection may be to another relay, with another clock.
    lock(&shared.relay_clock).reset();
    let (shared, connection) = (Arc::clone(shared), Arc::clone(connection));
    vec![
        tokio::spawn(
            control::read_control(shared.clone(), connection.clone(), recv, events.clone())
                .instrument(span.clone()),
        ),
        tokio::spawn(
            lanes::accept_lanes(shared.clone(), connection.clone(), events.clone())
                .instrument(span.clone()),
        ),
        tokio::spawn(
            datagrams::read_datagrams(shared, connection, events.clone()).instrument(span),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_at_most_half_taken_away() {
        let policy = ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..ReconnectPolicy::default()
        };
        let ms = |attempt, jitter| policy.backoff_with(attempt, jitter).as_millis();
        assert_eq!([ms(1, 1.0), ms(2, 1.0), ms(3, 1.0), ms(4, 1.0)], [100, 200, 400, 800]);
        assert_eq!([ms(5, 1.0), ms(50, 1.0), ms(u32::MAX, 1.0)], [1000, 1000, 1000]);
        assert_eq!([ms(1, 0.0), ms(3, 0.5), ms(9, 0.0)], [50, 300, 500]);
        for attempt in 1..30 {
            let wait = policy.backoff(attempt);
            assert!(wait <= policy.max_backoff && wait >= policy.initial_backoff / 2);
        }
    }

    #[test]
    fn closes_caused_by_the_client_are_not_reconnected() {
        let app = |code: u32| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::new(),
            })
        };
        assert!(resumable(&app(close::SHUTDOWN)));
        assert!(resumable(&app(close::NORMAL)));
        assert!(resumable(&ConnectionError::TimedOut));
        assert!(resumable(&ConnectionError::Reset));
        assert!(!resumable(&app(close::PROTOCOL_VIOLATION)));
        assert!(!resumable(&app(close::NO_CONTROL_STREAM)));
        assert!(!resumable(&ConnectionError::VersionMismatch));
    }
}
