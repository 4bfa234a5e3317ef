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
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
