//! Counters of what the client received, dropped or could not match.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a client's counters (see [`super::Client::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Barrage messages received and queued as events for the application (those then
    /// dropped as too old, `barrage_stale`, included).
    pub barrage_received: u64,
    /// Barrage messages dropped when the application read their event, being older than
    /// [`super::ClientConfig::barrage_max_age`] (the application fell behind, or they waited
    /// on the way).
    pub barrage_stale: u64,
    /// Barrage datagrams dropped because no open room lane has their room number: not
    /// logged in (e.g. one that crossed a logout), or held for a login's lane header that did
    /// not come within 500 ms, or pushed out of the full hold (see [`super::Event::Barrages`]).
    pub barrage_unknown_room: u64,
    /// Barrage datagrams dropped because their sender is not a known member of the room: held
    /// for the `UsersJoined` naming the sender, which did not come within 500 ms (the sender
    /// already left), or pushed out of the full hold, or held when the connection was lost.
    pub barrage_unknown_sender: u64,
    /// Datagrams dropped because they did not decode.
    pub datagrams_malformed: u64,
    /// Replies that matched no waiting request: it had timed out, or its [`super::Pending`]
    /// result had been dropped.
    pub late_replies: u64,
    /// Broadcasts dropped because the application already had them (a replay after a
    /// re-login overlapping what arrived before) or because this client sent them.
    pub broadcast_duplicates: u64,
    /// Successful automatic reconnects.
    pub reconnects: u64,
    /// Moves to a new UDP socket without a reconnect: by [`super::Client::rebind`], or
    /// because the socket failed.
    pub rebinds: u64,
}

/// The live counters behind [`ClientStats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) barrage_received: AtomicU64,
    pub(crate) barrage_stale: AtomicU64,
    pub(crate) barrage_unknown_room: AtomicU64,
    pub(crate) barrage_unknown_sender: AtomicU64,
    pub(crate) datagrams_malformed: AtomicU64,
    pub(crate) late_replies: AtomicU64,
    pub(crate) broadcast_duplicates: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) rebinds: AtomicU64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            barrage_received: get(&self.barrage_received),
            barrage_stale: get(&self.barrage_stale),
            barrage_unknown_room: get(&self.barrage_unknown_room),
            barrage_unknown_sender: get(&self.barrage_unknown_sender),
            datagrams_malformed: get(&self.datagrams_malformed),
            late_replies: get(&self.late_replies),
            broadcast_duplicates: get(&self.broadcast_duplicates),
            reconnects: get(&self.reconnects),
            rebinds: get(&self.rebinds),
        }
    }
}
