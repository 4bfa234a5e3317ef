//! What a client receives: room events, token warnings, connection state changes and the
//! end of the client.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::protocol::{BroadcastMessage, CommandMessage, ErrorCode, MAX_BATCH, User};

use super::connection::lock;
use super::rooms::HELD_BARRAGE_PER_ROOM;
use super::shared::Shared;
use super::stats::Stats;

/// Default for [`super::ClientConfig::event_queue`]: events buffered between the
/// connection's reader tasks and [`Events::next`]. When the consumer falls this far behind,
/// the lane readers wait (and, through QUIC flow control, so does the server's writer for this
/// client): backpressure, not loss. A consumer that stays behind until the server's lane queue
/// overflows is dropped from the room as too slow; the client then logs in again and the
/// missed broadcasts are replayed ([`Event::Recovered`]).
pub const EVENT_QUEUE: usize = 256;

/// The smallest [`super::ClientConfig::event_queue`]: one lane frame can become up to 8
/// events at once (a member-list difference after a re-login, the event itself, and up to
/// 256 held barrage messages in lists of 50), which must fit in the queue together.
pub const MIN_EVENT_QUEUE: usize = 8;
const _: () = assert!(MIN_EVENT_QUEUE >= 2 + HELD_BARRAGE_PER_ROOM.div_ceil(MAX_BATCH));

/// One thing that happened on the connection, in the order of its room's lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Users joined a room. The first such event after a login lists the members who were
    /// already there (not including this client); it is absent when the room was empty. A
    /// large room reports neither joins nor leaves: see [`Event::RoomMembers`] and
    /// [`Event::MemberCount`].
    UsersJoined {
        /// The room.
        room: String,
        /// Who joined.
        users: Vec<User>,
    },
    /// Users left a room.
    UsersLeft {
        /// The room.
        room: String,
        /// Who left.
        users: Vec<User>,
    },
    /// The room is large (more members than the relay's `large_room_above`): instead of the
    /// member list, this login gets the member count and the first page of the other
    /// members. Fetch the rest with [`super::Client::fetch_members`] from `next` (0: there is
    /// no more). From then on the room reports [`Event::MemberCount`] instead of
    /// [`Event::UsersJoined`] and [`Event::UsersLeft`].
    RoomMembers {
        /// The room.
        room: String,
        /// How many members the room has, this client included.
        count: u32,
        /// The first members, in session order (without this client).
        users: Vec<User>,
        /// The cursor of the next page for [`super::Client::fetch_members`]; 0 when this
        /// page holds every other member.
        next: u64,
    },
    /// A large room's member count changed (reported at most once per relay
    /// `user_update_interval_ms`, or with the room's next messages, in the room's order). A
    /// room that grows large while this client is in it reports this instead of user
    /// updates from then on: the member list the application kept is no longer updated.
    MemberCount {
        /// The room.
        room: String,
        /// How many members the room has, this client included.
        count: u32,
    },
    /// Broadcast messages, in ID order (up to 50).
    Broadcasts {
        /// The room.
        room: String,
        /// The messages.
        messages: Vec<BroadcastMessage>,
    },
    /// Barrage messages that arrived together (up to 50); barrage may be lost or reordered.
    ///
    /// A barrage datagram can arrive before the lane event that names its sender (the
    /// [`Event::UsersJoined`] of a member who just logged in and sent at once), or before the
    /// lane of a room this client just logged in to: datagrams and lanes are not ordered with
    /// respect to each other. The client then holds it, per room, at most 256 messages for at
    /// most 500 ms, and delivers it in a `Barrages` event (in arrival order) right after the
    /// `UsersJoined` that names the sender. Only when that does not come in time, or the hold
    /// overflows (oldest first), is it dropped and counted
    /// ([`super::ClientStats::barrage_unknown_sender`], `barrage_unknown_room`). Without
    /// [`super::ClientConfig::track_members`], only the room is waited for: senders are not
    /// named ([`ReceivedBarrage::from`] is `None`).
    Barrages {
        /// The room.
        room: String,
        /// The messages.
        messages: Vec<ReceivedBarrage>,
    },
    /// A custom command addressed to this client.
    Command {
        /// The room.
        room: String,
        /// The command.
        message: CommandMessage,
    },
    /// This client is no longer in the room: logged out, kicked because the same user logged
    /// in elsewhere, or a login again after a reconnect was refused (e.g. `TOKEN_EXPIRED`).
    /// With automatic reconnect off, also too slow a receiver or the server shutting down
    /// (with it on, those rooms are logged in to again and report [`Event::Recovered`]).
    RoomClosed {
        /// The room.
        room: String,
        /// Why ([`ErrorCode::LOGGED_OUT`], [`ErrorCode::KICKED_LOGGED_IN_ELSEWHERE`], …).
        code: ErrorCode,
        /// The server's explanation.
        detail: String,
    },
    /// The room was logged in to again (after a reconnect, or after the server dropped this
    /// client as too slow a receiver) and the server replays the broadcasts it missed. The
    /// replayed broadcasts follow as ordinary [`Event::Broadcasts`]; the client drops any it
    /// had already delivered, so every broadcast ID reaches the application at most once.
    ///
    /// With `complete: false` something is lost for good, and the application should say so
    /// or fetch it from its own source of truth:
    /// - `missed: Some((first, last))`: the room's history no longer reaches back; broadcasts
    ///   `first..=last` will never arrive (show a gap, or reload that range elsewhere);
    /// - the room was created anew (server restart, or the room stayed empty until its
    ///   history expired): broadcast IDs start again at 1 and nothing is known about what the
    ///   old sequence still carried; resynchronise the room's state. The history of the new
    ///   sequence is replayed, and `missed: Some((1, last))` names the IDs of the new sequence
    ///   it no longer holds (`None` when it reaches back to 1).
    ///
    /// Members who left while the client was away are reported just before this event as
    /// [`Event::UsersLeft`]; members who joined, as [`Event::UsersJoined`] (without
    /// [`super::ClientConfig::track_members`]: the whole member list, see there). Custom
    /// commands sent while the client was away are not recovered.
    Recovered {
        /// The room.
        room: String,
        /// Nothing was missed: every broadcast after the last one delivered is replayed.
        complete: bool,
        /// Broadcasts (first and last ID) no longer in the room's history.
        missed: Option<(u64, u64)>,
        /// How many broadcasts the server replays right after this event (those the client
        /// already had, or sent itself, are then dropped, so fewer may arrive).
        replayed: u64,
    },
    /// The connection to the relay changed state (the SDKs' room state callbacks); being
    /// connected is implicit after [`super::Client::connect`].
    ConnectionState(ConnectionState),
    /// The connection's token expires soon: call [`super::Client::renew_token`].
    TokenWillExpire {
        /// When it expires, in milliseconds since the Unix epoch.
        expires_at_ms: u64,
    },
    /// The client is done: closed by [`super::Client::close`], lost with automatic reconnect
    /// off, or reconnecting gave up (after [`ConnectionState::Failed`]). Always the last event;
    /// a lost connection that is reconnected does not produce it.
    Disconnected {
        /// The QUIC application close code (see [`crate::protocol::close`]), or `None` when the
        /// connection ended without one (idle timeout, transport error).
        code: Option<u64>,
        /// The close reason or the error that ended the connection.
        reason: String,
    },
}

/// The state of the connection, reported by [`Event::ConnectionState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// The connection was lost; attempt `attempt` (1, 2, …) to connect again follows after a
    /// backoff. Meanwhile requests fail at once with [`super::ClientError::Disconnected`].
    Reconnecting {
        /// Which attempt of this outage comes next, from 1.
        attempt: u32,
    },
    /// Connected again. Every room is being logged in to again; each reports
    /// [`Event::Recovered`] (or [`Event::RoomClosed`] if the server refused it).
    Reconnected,
    /// Reconnecting gave up (the policy's bound was reached); [`Event::Disconnected`] follows.
    Failed {
        /// Why: the bound and the last error.
        reason: String,
    },
}

/// A barrage message, its sender named from the room's member list (when the client tracks
/// members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBarrage {
    /// A per-room unique ID.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Who sent it: always `Some` when the client tracks members (the default). The datagram
    /// names its sender only by session number, which only the member list maps to a user:
    /// without [`super::ClientConfig::track_members`] this is `None`.
    pub from: Option<User>,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

/// The stream of [`Event`]s of one connection.
///
/// The queue is bounded ([`super::ClientConfig::event_queue`], default [`EVENT_QUEUE`]): a
/// consumer that stops reading makes the room lanes wait, which is intended (see
/// [`super::ClientConfig::event_queue`] for what follows). Barrage datagrams that arrive
/// meanwhile are dropped by QUIC's small datagram buffer, and barrage that is older than
/// [`super::ClientConfig::barrage_max_age`] when it is read is dropped here. Dropping `Events`
/// is allowed: events are then discarded.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
    /// The client's configuration, relay clock and counters (for the age rule).
    shared: Arc<Shared>,
}

impl Events {
    /// A channel pair of [`super::ClientConfig::event_queue`] events (at least
    /// [`MIN_EVENT_QUEUE`]): the sender for the reader tasks, the `Events` for the
    /// application.
    pub(crate) fn channel(shared: Arc<Shared>) -> (mpsc::Sender<Event>, Events) {
        let (tx, rx) = mpsc::channel(shared.config.event_queue.max(MIN_EVENT_QUEUE));
        (tx, Events { rx, shared })
    }

    /// The next event, or `None` after [`Event::Disconnected`] has been delivered.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let event = self.rx.recv().await?;
            if let Some(event) = self.fresh(event) {
                return Some(event);
            }
        }
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            let event = self.rx.try_recv().ok()?;
            if let Some(event) = self.fresh(event) {
                return Some(event);
            }
        }
    }

    /// Applies [`super::ClientConfig::barrage_max_age`] to a `Barrages` event: drops (and
    /// counts) the messages that are too old now, and the event if none is left.
    fn fresh(&self, event: Event) -> Option<Event> {
        let Some(max_age) = self.shared.config.barrage_max_age else { return Some(event) };
        let Event::Barrages { room, mut messages } = event else { return Some(event) };
        let now = self.shared.local_ms(Instant::now());
        let before = messages.len();
        {
            let clock = lock(&self.shared.relay_clock);
            messages.retain(|m| !clock.is_stale(max_age, now, m.sent_at_ms));
        }
        let stale = before - messages.len();
        if stale > 0 {
            Stats::add(&self.shared.stats.barrage_stale, stale as u64);
            tracing::debug!(room, stale, "barrage older than barrage_max_age dropped");
        }
        (!messages.is_empty()).then_some(Event::Barrages { room, messages })
    }
}
