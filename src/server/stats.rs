//! Counters of everything the relay did, dropped or refused.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, updated with relaxed atomics.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter.
            pub fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats! {
    /// Connections that completed the handshake.
    connections_accepted,
    /// Connections refused at the handshake: `max_connections` or
    /// `max_connections_per_address` was reached.
    connections_refused,
    /// Of `connections_refused`, those refused for `max_connections_per_address`.
    connections_refused_per_address,
    /// Connection attempts answered with a QUIC Retry (address validation under handshake
    /// load, see `retry_above_handshakes`).
    retries,
    /// Connections open now (handshakes in progress included).
    connections_open,
    /// Handshakes in progress now.
    handshakes_in_progress,
    /// Room lanes whose writer is running now.
    lanes_open,
    /// Successful logins.
    logins,
    /// Requests refused with an error code (logins included).
    requests_refused,
    /// Broadcasts accepted.
    broadcasts,
    /// Broadcast deliveries queued to receivers' lanes.
    broadcast_deliveries,
    /// Custom commands accepted.
    commands,
    /// Barrage messages accepted.
    barrages,
    /// Barrage datagrams received from clients (valid or not).
    datagrams_received,
    /// Barrage datagrams handed to quinn for receivers.
    datagrams_sent,
    /// Barrage datagrams that could not be sent to a receiver (too large for the path, or the
    /// receiver does not accept datagrams).
    datagrams_unsendable,
    /// Barrage datagrams that pushed an older one out of a congested receiver's send queue
    /// (64 KiB per connection): each is one barrage dropped for that receiver.
    datagrams_dropped_congested,
    /// Received datagrams that did not decode, and were dropped.
    datagrams_malformed,
    /// Connections closed for breaking the protocol (malformed or oversize frames).
    protocol_violations,
    /// Receivers whose lane was closed because they fell too far behind.
    slow_receivers,
    /// Bytes queued in all room lanes now (encoded events not yet handed to QUIC; bytes
    /// shared by several lanes count once per lane).
    lane_bytes,
    /// Lanes whose stream the client did not accept within `lane_open_timeout_ms`.
    lanes_open_timed_out,
    /// Rooms that exist now (rooms kept only for their history included).
    rooms_open,
    /// Bytes of broadcast history held by all rooms now.
    history_bytes,
    /// Broadcasts dropped from a room's history before their time to live to keep
    /// `history_bytes` under `max_history_bytes`.
    history_evicted,
    /// Empty rooms removed before their history expired, for `max_history_bytes` or
    /// `max_rooms`.
    rooms_evicted,
    /// Connections closed because they were in no room for `login_timeout_ms`.
    login_timeouts,
    /// Connections closed because they did not take their control-stream replies for
    /// `control_stall_ms`.
    control_stalls,
}

/// Lets at most [`Throttle::PER_MINUTE`] log lines of one kind through per minute and counts
/// the rest, so a client repeating a mistake in a loop cannot flood the log; the periodic
/// summary reports how many were held back.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// The minute (since the Unix epoch) being counted.
    minute: AtomicU64,
    /// Lines let through in that minute.
    count: AtomicU64,
    /// Lines held back since the last summary.
    suppressed: AtomicU64,
}

impl Throttle {
    /// Lines of one kind let through per minute.
    pub(crate) const PER_MINUTE: u64 = 10;

    /// A throttle that has let nothing through yet.
    pub(crate) const fn new() -> Self {
        Self { minute: AtomicU64::new(0), count: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Whether one more line may be logged now.
    pub(crate) fn allow(&self) -> bool {
        let minute = super::now_ms() / 60_000;
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_MINUTE {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Lines held back since the last call.
    pub(crate) fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
