//! Counters of everything the relay did, dropped or refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::ErrorCode;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, updated with relaxed atomics.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Time from handing an event to a lane until the lane's writer takes it (per
            /// write: the first event of each write).
            pub lane_delay: Histogram,
            /// Time from a connection attempt's admission to the end of its handshake.
            pub handshake_time: Histogram,
            /// Refused requests by kind and code.
            pub refusals: Refusals,
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
    /// Lane events the room wrote straight into the receiver's stream (`lane_direct_writes`),
    /// without the lane's queue and writer task.
    lane_direct_writes,
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
    /// Browser connections (ALPN `h3`) that became a WebTransport session.
    webtransport_sessions,
    /// Browser connections closed before they became a session: no valid HTTP/3 SETTINGS and
    /// CONNECT in time, or a CONNECT to another path.
    webtransport_refused,
    /// Webhook events dropped because the webhook queue was full.
    webhooks_dropped,
    /// Webhook deliveries that got a 2xx answer.
    webhooks_sent,
    /// Webhook deliveries given up after their retries.
    webhooks_failed,
    /// Server API requests answered (any status).
    api_requests,
    /// Cluster: entries this node put into room logs (one per batch of broadcasts, one per
    /// command).
    cluster_log_entries,
    /// Cluster: room-log publishes that another node's entry got in before (retried with the
    /// room's newest state).
    cluster_publish_conflicts,
    /// Cluster: member records this node published (`Present` and `Absent`).
    cluster_member_records,
    /// Cluster: entries and records applied from the cluster's stream.
    cluster_applied,
    /// Cluster: messages from NATS that did not decode or named nothing valid, dropped.
    cluster_malformed,
    /// Cluster: barrage from other nodes not delivered here (unknown sender, the room's
    /// barrage limit, or no such room).
    cluster_barrage_dropped,
    /// Cluster: barrage this node could not hand to NATS (not connected, or its queue full).
    cluster_barrage_unsent,
    /// Cluster: nodes counted as lost (not heard from for `node_timeout_ms`).
    cluster_nodes_lost,
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

/// Upper bounds of the latency histograms' buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// A latency histogram of fixed buckets ([`LATENCY_BUCKETS_US`]) updated with relaxed atomics:
/// recording costs a few atomic adds, no lock and no allocation.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the observations, microseconds.
    sum_us: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (seconds), the sum (seconds) and the count, as
    /// Prometheus wants them; the last bucket is `+Inf`.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS_US.get(i).map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            out.push((bound, total));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (out, sum, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_infinity() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(40));
        histogram.record(Duration::from_micros(50));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(60));
        let (buckets, sum, count) = histogram.cumulative();
        assert_eq!(count, 4);
        assert_eq!(buckets[0], (50e-6, 2), "a bound includes its value");
        assert_eq!(buckets[6], (5e-3, 3));
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 4));
        assert!((sum - 60.00309).abs() < 1e-9);
    }
}

/// What a request was, for the refusal counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A login (QUIC).
    Login,
    /// A logout (QUIC).
    Logout,
    /// A broadcast (QUIC or server API).
    Broadcast,
    /// A barrage (QUIC datagram or server API).
    Barrage,
    /// A custom command (QUIC or server API).
    Command,
    /// A token renewal (QUIC).
    RenewToken,
    /// A page of a room's member list (QUIC).
    FetchMembers,
    /// Any other server API request (rooms, members, kick, close, tokens, authentication).
    Api,
}

impl RequestKind {
    /// Every kind, in the order of the refusal counts.
    pub const ALL: [RequestKind; 8] = [
        RequestKind::Login,
        RequestKind::Logout,
        RequestKind::Broadcast,
        RequestKind::Barrage,
        RequestKind::Command,
        RequestKind::RenewToken,
        RequestKind::FetchMembers,
        RequestKind::Api,
    ];

    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Login => "login",
            RequestKind::Logout => "logout",
            RequestKind::Broadcast => "broadcast",
            RequestKind::Barrage => "barrage",
            RequestKind::Command => "command",
            RequestKind::RenewToken => "renew_token",
            RequestKind::FetchMembers => "fetch_members",
            RequestKind::Api => "api",
        }
    }
}

/// Refused requests by kind and [`ErrorCode`]: one relaxed atomic per pair, no lock.
#[derive(Debug)]
pub struct Refusals {
    /// `RequestKind::ALL.len()` rows of `ErrorCode::ALL.len()` counts.
    counts: Box<[AtomicU64]>,
}

impl Default for Refusals {
    fn default() -> Self {
        let len = RequestKind::ALL.len() * ErrorCode::ALL.len();
        Self { counts: (0..len).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Refusals {
    /// Counts one refusal of a `kind` request with `code`.
    pub fn record(&self, kind: RequestKind, code: ErrorCode) {
        let Some(column) = ErrorCode::ALL.iter().position(|c| *c == code) else { return };
        let row = RequestKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.counts[row * ErrorCode::ALL.len() + column].fetch_add(1, Ordering::Relaxed);
    }

    /// Every (kind, code, count) with a count above zero.
    pub fn nonzero(&self) -> Vec<(RequestKind, ErrorCode, u64)> {
        let mut out = Vec::new();
        for (row, kind) in RequestKind::ALL.iter().enumerate() {
            for (column, code) in ErrorCode::ALL.iter().enumerate() {
                let count =
                    self.counts[row * ErrorCode::ALL.len() + column].load(Ordering::Relaxed);
                if count > 0 {
                    out.push((*kind, *code, count));
                }
            }
        }
        out
    }
}
