//! What a client receives: room events, token warnings and the end of the connection.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::{BroadcastMessage, CommandMessage, ErrorCode, User};

/// Events buffered between the connection's reader tasks and [`Events::next`]. When the
/// consumer falls this far behind, the lane readers wait (and, through QUIC flow control,
/// so does the server's writer for this client): backpressure, not loss.
pub const EVENT_QUEUE: usize = 256;

/// One thing that happened on the connection, in the order of its room's lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Users joined a room. The first such event after a login lists the members who were
    /// already there (not including this client); it is absent when the room was empty.
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
    /// Broadcast messages, in ID order (up to 50).
    Broadcasts {
        /// The room.
        room: String,
        /// The messages.
        messages: Vec<BroadcastMessage>,
    },
    /// Barrage messages that arrived together (up to 50); barrage may be lost or reordered.
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
    /// in elsewhere, too slow a receiver, or the server is shutting down.
    RoomClosed {
        /// The room.
        room: String,
        /// Why ([`ErrorCode::LOGGED_OUT`], [`ErrorCode::KICKED_LOGGED_IN_ELSEWHERE`], …).
        code: ErrorCode,
        /// The server's explanation.
        detail: String,
    },
    /// The answer to a recovering login: whether every missed broadcast follows (`complete`),
    /// which ones are lost for good, and how many are replayed next.
    Recovered {
        /// The room.
        room: String,
        /// Nothing was missed: every broadcast after the last one seen is replayed.
        complete: bool,
        /// Broadcasts (first and last ID) no longer in the room's history.
        missed: Option<(u64, u64)>,
        /// How many broadcasts are replayed right after this event.
        replayed: u64,
    },
    /// The connection's token expires soon: call [`super::Client::renew_token`].
    TokenWillExpire {
        /// When it expires, in milliseconds since the Unix epoch.
        expires_at_ms: u64,
    },
    /// The connection is closed; this is the last event.
    Disconnected {
        /// The QUIC application close code (see [`crate::protocol::close`]), or `None` when the
        /// connection ended without one (idle timeout, transport error).
        code: Option<u64>,
        /// The close reason or the error that ended the connection.
        reason: String,
    },
}

/// A barrage message with its sender resolved from the room's member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBarrage {
    /// A per-room unique ID.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Who sent it.
    pub from: User,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

/// The stream of [`Event`]s of one connection.
///
/// The queue is bounded ([`EVENT_QUEUE`]): a consumer that stops reading makes the room
/// lanes wait, which is intended. Barrage datagrams that arrive meanwhile are dropped by
/// QUIC's small datagram buffer. Dropping `Events` is allowed: events are then discarded.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// A channel pair: the sender for the reader tasks, the `Events` for the application.
    pub(crate) fn channel() -> (mpsc::Sender<Event>, Events) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        (tx, Events { rx })
    }

    /// The next event, or `None` after [`Event::Disconnected`] has been delivered.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}
