//! Room events for the application's webhooks: the room core emits them (in room order, under
//! the room's lock) into one bounded queue without waiting; the webhook sender
//! (`crate::http::webhooks`) delivers them. A full queue drops the event and counts it.

use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::sync::mpsc;

use super::now_ms;
use super::stats::Counters;
use crate::protocol::User;

/// How a member left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client logged out.
    Logout,
    /// The connection closed or was lost.
    Disconnected,
    /// The same user logged in from another connection.
    Replaced,
    /// The receiver fell too far behind, or its lane failed.
    SlowReceiver,
    /// The server API kicked the user.
    Kicked,
    /// The server API closed the room.
    RoomClosed,
    /// The relay is shutting down.
    Shutdown,
}

/// One thing that happened in a room, as the webhook body carries it (JSON, `event` names the
/// variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoomEvent {
    /// The room was created by its first login.
    RoomCreated {
        /// The room ID.
        room: String,
        /// When, ms since the Unix epoch (server clock).
        at_ms: u64,
    },
    /// The room was removed (empty and its history expired or evicted, or closed by the API).
    RoomClosed {
        /// The room ID.
        room: String,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
    /// A user logged in to the room.
    UserJoined {
        /// The room ID.
        room: String,
        /// Who.
        user: User,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
    /// A user left the room.
    UserLeft {
        /// The room ID.
        room: String,
        /// Who.
        user: User,
        /// Why.
        reason: LeaveReason,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
}

impl RoomEvent {
    /// The room it happened in.
    pub fn room(&self) -> &str {
        match self {
            RoomEvent::RoomCreated { room, .. }
            | RoomEvent::RoomClosed { room, .. }
            | RoomEvent::UserJoined { room, .. }
            | RoomEvent::UserLeft { room, .. } => room,
        }
    }
}

/// The room core's end of the webhook queue; without webhooks configured it does nothing.
#[derive(Debug, Default)]
pub struct Hooks {
    tx: Option<mpsc::Sender<RoomEvent>>,
}

impl Hooks {
    /// Hooks that queue up to `depth` events for the returned receiver.
    pub fn new(depth: usize) -> (Hooks, mpsc::Receiver<RoomEvent>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        (Hooks { tx: Some(tx) }, rx)
    }

    /// Queues the event `make` builds, if webhooks are on; never waits.
    pub fn emit(&self, counters: &Counters, make: impl FnOnce(u64) -> RoomEvent) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(make(now_ms())) {
            Ok(()) => {}
            Err(_) => {
                counters.webhooks_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether webhooks are on.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}
