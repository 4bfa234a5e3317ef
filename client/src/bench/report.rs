//! The load run's report: what every receiver should have got (from what the senders had
//! accepted), what it got, the latency percentiles, and the costs measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::procfs::Memory;
use super::traffic::{CommandTo, Kind, ReceiverTally, SenderTally};

/// Who is where: the room of every connection that logged in.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Room index of each connection; `None` for one that failed to connect or log in.
    pub room_of: Vec<Option<usize>>,
    /// How many rooms.
    pub rooms: usize,
}

/// Accepted messages, arranged to answer "how many should this receiver get?".
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Per kind, per room: accepted messages addressed to everyone else in the room.
    room_all: [Vec<u64>; 3],
    /// Per kind, per connection: of those, the ones this connection sent (it does not get
    /// its own).
    own_all: [Vec<u64>; 3],
    /// Per connection: accepted commands addressed to it alone.
    direct: Vec<u64>,
}

impl Ledger {
    /// Adds up the senders' tallies.
    pub fn new(membership: &Membership, senders: &[SenderTally], command_to: CommandTo) -> Ledger {
        let conns = membership.room_of.len();
        let mut ledger = Ledger {
            room_all: std::array::from_fn(|_| vec![0; membership.rooms]),
            own_all: std::array::from_fn(|_| vec![0; conns]),
            direct: vec![0; conns],
        };
        for sender in senders {
            let Some(room) = membership.room_of.get(sender.conn).copied().flatten() else {
                continue;
            };
            for kind in Kind::ALL {
                let mut accepted = sender.kinds[kind.index()].accepted;
                if kind == Kind::Command && command_to == CommandTo::One {
                    // Addressed ones go to `direct`; any sent to everyone (a room with no
                    // other member) stay here.
                    accepted -= sender.direct.values().sum::<u64>();
                }
                ledger.room_all[kind.index()][room] += accepted;
                ledger.own_all[kind.index()][sender.conn] += accepted;
            }
            for (&target, &n) in &sender.direct {
                if let Some(slot) = ledger.direct.get_mut(target) {
                    *slot += n;
                }
            }
        }
        ledger
    }

    /// Messages of `kind` that connection `conn` in `room` should have received.
    pub fn expected(&self, kind: Kind, conn: usize, room: usize) -> u64 {
        let all = self.room_all[kind.index()][room] - self.own_all[kind.index()][conn];
        all + if kind == Kind::Command { self.direct[conn] } else { 0 }
    }

    /// Deliveries expected over every receiver, all reliable kinds.
    pub fn reliable_total(&self, membership: &Membership) -> u64 {
        membership
            .room_of
            .iter()
            .enumerate()
            .filter_map(|(conn, room)| room.map(|room| (conn, room)))
            .flat_map(|(conn, room)| {
                Kind::ALL.into_iter().filter(|k| k.reliable()).map(move |k| (k, conn, room))
            })
            .map(|(kind, conn, room)| self.expected(kind, conn, room))
            .sum()
    }
}

/// Expected against received, over every receiver, for one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Deliveries the senders' accepted messages call for.
    pub expected: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Expected but not delivered (per receiver, summed). For barrage: dropped.
    pub missing: u64,
    /// Delivered beyond what was expected (e.g. accepted messages whose result timed out).
    pub extra: u64,
    /// Delivered more than once.
    pub duplicates: u64,
    /// Barrage delivered more than 100 ms after it was sent.
    pub late: u64,
}

/// Compares, receiver by receiver, what arrived with what should have.
pub fn delivery(
    kind: Kind,
    ledger: &Ledger,
    membership: &Membership,
    receivers: &[(usize, ReceiverTally)],
) -> Delivery {
    let mut d = Delivery::default();
    for (conn, tally) in receivers {
        let Some(room) = membership.room_of.get(*conn).copied().flatten() else { continue };
        let expected = ledger.expected(kind, *conn, room);
        let got = tally.kinds[kind.index()];
        d.expected += expected;
        d.delivered += got.messages;
        d.missing += expected.saturating_sub(got.messages);
        d.extra += got.messages.saturating_sub(expected);
        d.duplicates += got.duplicates;
        d.late += got.late;
    }
    d
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Messages timed.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            count: histogram.len(),
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

/// Everything measured about one kind.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    /// The kind.
    pub kind: Kind,
    /// Send calls made.
    pub sent: u64,
    /// Accepted by the relay.
    pub accepted: u64,
    /// Refused, by error code name.
    pub refused: BTreeMap<String, u64>,
    /// Sends with no result in time.
    pub timeouts: u64,
    /// Sends that failed otherwise.
    pub errors: u64,
    /// Deliveries per second, from the first send to the last delivery.
    pub deliveries_per_sec: f64,
    /// One-way latency, sender's call to the receiver's event.
    pub latency: Latency,
    /// Expected against received.
    pub delivery: Delivery,
    /// Reliable messages lost: `delivery.missing` for broadcast and command, 0 for barrage.
    pub lost: u64,
    /// Barrage dropped: `delivery.missing` for barrage, 0 otherwise.
    pub dropped: u64,
}

/// The connection phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectReport {
    /// Connections asked for.
    pub connections: usize,
    /// Connected and logged in.
    pub logged_in: usize,
    /// Failed to connect or log in, by error.
    pub failures: BTreeMap<String, u64>,
    /// UDP sockets (quinn endpoints) the connections share.
    pub endpoints: usize,
    /// Wall time from the first handshake to the last login.
    pub seconds: f64,
    /// Handshakes (each followed by its login) per second over that time.
    pub handshakes_per_sec: f64,
    /// Time of one QUIC handshake.
    pub handshake: Latency,
    /// Time of one login request after it.
    pub login: Latency,
    /// The relay's CPU time during the phase (handshakes, logins, join events).
    pub server_cpu_seconds: Option<f64>,
    /// That per connection, microseconds.
    pub server_cpu_per_handshake_us: Option<f64>,
    /// Whether every receiver saw every other member of its room join before traffic.
    pub settled: bool,
    /// How long that took (or the bound, if it never did).
    pub settle_seconds: f64,
}

/// Costs on the relay's side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    /// Where the figures come from: `in-process relay thread`, `pid N`, or `none` (then
    /// every figure is `null`).
    pub measured: String,
    /// CPU time (user + system) from the first send to the end of the drain.
    pub cpu_seconds: Option<f64>,
    /// That CPU time over the wall time of the same window (1.0 = one core busy).
    pub cpu_utilisation: Option<f64>,
    /// CPU time per delivery (every kind), microseconds.
    pub cpu_per_delivery_us: Option<f64>,
    /// Memory before the first connection (external relay only).
    pub memory_before: Option<Memory>,
    /// Memory with every connection logged in, before traffic (external relay only).
    pub memory_loaded: Option<Memory>,
    /// Memory at the end (external relay only).
    pub memory_after: Option<Memory>,
    /// (loaded − before) / connections logged in, KiB.
    pub kib_per_connection: Option<f64>,
    /// The relay's own counters (in-process relay only).
    pub counters: Option<qrelay::server::Stats>,
}

/// One relay's share of a run (one per `--server` address with `--spread`, else one).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReport {
    /// The relay's address.
    pub server: String,
    /// Sending connections on it (logged in).
    pub senders: usize,
    /// Other connections on it (logged in).
    pub receivers: usize,
    /// Deliveries of every kind to its connections.
    pub deliveries: u64,
    /// Its PID, when one was given per relay.
    pub pid: Option<u32>,
    /// Its CPU time over the traffic window (the same window as `server.cpu_seconds`).
    pub cpu_seconds: Option<f64>,
    /// That per delivery to its own connections, microseconds.
    pub cpu_per_delivery_us: Option<f64>,
}

/// The whole report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario as run.
    pub scenario: BTreeMap<String, serde_json::Value>,
    /// The connection phase.
    pub connect: ConnectReport,
    /// Seconds senders sent for.
    pub send_seconds: f64,
    /// Seconds spent waiting for outstanding deliveries after sending stopped.
    pub drain_seconds: f64,
    /// Per kind sent.
    pub kinds: Vec<KindReport>,
    /// Room lanes that ended during the run, by close code.
    pub rooms_closed: BTreeMap<String, u64>,
    /// Connections that ended during the run.
    pub disconnected: u64,
    /// Messages in the rooms without this tool's stamp.
    pub foreign_messages: u64,
    /// Sends made more than 10 ms behind their schedule (the tool could not keep the rate).
    pub late_sends: u64,
    /// The largest delay of a send behind its schedule, ms.
    pub max_send_lag_ms: f64,
    /// The relay's costs (every relay's together when several PIDs were given).
    pub server: ServerReport,
    /// Each relay's share: connections, deliveries, CPU time.
    pub nodes: Vec<NodeReport>,
    /// This process's memory at the end.
    pub client_memory: Option<Memory>,
    /// CPU time of the tool itself (the in-process relay's excluded) over the traffic window:
    /// near 2 s per second on 2 cores means the tool, not the relay, was the limit.
    pub client_cpu_seconds: Option<f64>,
    /// Datagrams the kernel dropped for full UDP buffers during the run (machine-wide; on
    /// loopback this is packet loss): receive, send.
    pub udp_buffer_drops: Option<(u64, u64)>,
    /// Datagrams dropped during the run by the relay's UDP socket (full receive buffer).
    pub server_socket_drops: Option<u64>,
    /// Datagrams dropped by this tool's UDP sockets.
    pub client_socket_drops: Option<u64>,
    /// UDP datagrams the tool's connections received over the traffic window (messages,
    /// acknowledgements and the rest): deliveries per datagram shows how well the relay
    /// packs messages.
    pub datagrams_received: u64,
    /// Reliable messages lost, every kind.
    pub lost: u64,
    /// Reliable messages delivered twice, every kind.
    pub duplicates: u64,
}

impl Report {
    /// Whether the run passed: every connection logged in, no send refused, nothing reliable
    /// lost or duplicated.
    pub fn ok(&self) -> bool {
        self.problems().is_empty()
    }

    /// Why the run did not measure what was asked, with what to do about it.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let c = &self.connect;
        if c.logged_in < c.connections {
            problems.push(format!(
                "{} of {} connections did not log in (failures above); a relay on default \
                 settings takes 100 connections per address: start it with --config \
                 benches/relay-bench.toml",
                c.connections - c.logged_in,
                c.connections
            ));
        }
        let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
        for kind in &self.kinds {
            for (code, n) in &kind.refused {
                *refused.entry(code).or_default() += n;
            }
        }
        if !refused.is_empty() {
            problems.push(format!(
                "sends refused ({}): the relay's frequency limits apply; start it with \
                 --limits benchmark or --config benches/relay-bench.toml",
                counts(&refused)
            ));
        }
        if self.lost > 0 || self.duplicates > 0 {
            problems.push(format!(
                "{} reliable messages lost, {} duplicated",
                self.lost, self.duplicates
            ));
        }
        problems
    }

    /// The report for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        // The options that shape the traffic, so that two reports can be told apart.
        let shown = ["connections", "rooms", "senders", "kinds", "rate", "pacing", "payload"];
        let scenario: Vec<String> = shown
            .iter()
            .filter_map(|key| Some(format!("{key} {}", plain(self.scenario.get(*key)?))))
            .collect();
        let _ = writeln!(out, "scenario: {}", scenario.join(", "));
        let c = &self.connect;
        let _ = writeln!(
            out,
            "connect: {}/{} logged in over {} endpoints in {:.2} s: {:.0} handshakes/s \
             (handshake p50 {} p99 {} max {}, login p50 {}){}",
            c.logged_in,
            c.connections,
            c.endpoints,
            c.seconds,
            c.handshakes_per_sec,
            ms(c.handshake.p50_us),
            ms(c.handshake.p99_us),
            ms(c.handshake.max_us),
            ms(c.login.p50_us),
            if c.failures.is_empty() {
                String::new()
            } else {
                format!("; failures: {}", counts(&c.failures))
            }
        );
        let _ = writeln!(
            out,
            "relay cpu while connecting: {} ({} per connection); rooms settled: {} after {:.2} s",
            opt(c.server_cpu_seconds, |v| format!("{v:.2} s")),
            opt(c.server_cpu_per_handshake_us, |v| format!("{v:.0} µs")),
            if c.settled { "yes" } else { "NO" },
            c.settle_seconds
        );
        let _ = writeln!(
            out,
            "traffic: {:.2} s sending, {:.2} s draining",
            self.send_seconds, self.drain_seconds
        );
        for k in &self.kinds {
            let d = &k.delivery;
            let _ = writeln!(
                out,
                "{}: sent {}, accepted {} (refused: {}; timeouts {}; errors {})",
                k.kind.name(),
                k.sent,
                k.accepted,
                counts(&k.refused),
                k.timeouts,
                k.errors,
            );
            // More deliveries than accepted messages is the point of a relay: say why.
            let each = match k.kind {
                Kind::Command => "each accepted command counts once per receiver it targets",
                _ => "each accepted message counts once per other member of its room",
            };
            let _ = writeln!(
                out,
                "  deliveries: {} of {} expected ({each}), {:.0}/s",
                d.delivered, d.expected, k.deliveries_per_sec
            );
            let l = &k.latency;
            if l.count == 0 {
                let _ = writeln!(out, "  latency: nothing timed");
            } else {
                let _ = writeln!(
                    out,
                    "  latency p50 {} p90 {} p99 {} p99.9 {} max {} ({} timed)",
                    ms(l.p50_us),
                    ms(l.p90_us),
                    ms(l.p99_us),
                    ms(l.p999_us),
                    ms(l.max_us),
                    l.count
                );
            }
            if k.kind.reliable() {
                let _ = writeln!(
                    out,
                    "  lost {}  duplicates {}  extra {}",
                    k.lost, d.duplicates, d.extra
                );
            } else {
                let _ = writeln!(
                    out,
                    "  dropped {}  late (>100 ms) {}  duplicates {}  extra {}",
                    k.dropped, d.late, d.duplicates, d.extra
                );
            }
        }
        if !self.rooms_closed.is_empty() || self.disconnected > 0 {
            let _ = writeln!(
                out,
                "rooms closed during the run: {}; connections lost: {}",
                counts(&self.rooms_closed),
                self.disconnected
            );
        }
        let s = &self.server;
        if s.cpu_seconds.is_none() && s.measured == NOT_MEASURED {
            let _ = writeln!(
                out,
                "server: not measured (pass --server-pid PID for the relay's CPU time and memory)"
            );
        } else {
            let _ = writeln!(
                out,
                "server ({}): cpu {} ({} of a core), {} per delivery",
                s.measured,
                opt(s.cpu_seconds, |v| format!("{v:.2} s")),
                opt(s.cpu_utilisation, |v| format!("{:.0} %", v * 100.0)),
                opt(s.cpu_per_delivery_us, |v| format!("{v:.3} µs")),
            );
        }
        // One line per relay when the run used several (--spread); one relay is said above.
        for node in self.nodes.iter().filter(|_| self.nodes.len() > 1) {
            let _ = writeln!(
                out,
                "node {}{}: {} senders, {} receivers, {} deliveries, cpu {}, {} per delivery",
                node.server,
                node.pid.map_or_else(String::new, |pid| format!(" (pid {pid})")),
                node.senders,
                node.receivers,
                node.deliveries,
                opt(node.cpu_seconds, |v| format!("{v:.2} s")),
                opt(node.cpu_per_delivery_us, |v| format!("{v:.3} µs")),
            );
        }
        if let (Some(before), Some(loaded)) = (s.memory_before, s.memory_loaded) {
            let _ = writeln!(
                out,
                "server memory: {} KiB before, {} KiB loaded ({}), peak {} KiB",
                before.rss_kib,
                loaded.rss_kib,
                s.kib_per_connection.map_or_else(
                    || "per connection: n/a below 100 connections".to_string(),
                    |v| format!("{v:.1} KiB per connection")
                ),
                s.memory_after.map_or(loaded.peak_kib, |m| m.peak_kib)
            );
        }
        let _ = writeln!(
            out,
            "client: cpu {} while sending and draining, rss {} KiB (peak {}); sends behind schedule >10 ms: {} (max lag {:.1} ms)",
            opt(self.client_cpu_seconds, |v| format!("{v:.2} s")),
            self.client_memory.map_or(0, |m| m.rss_kib),
            self.client_memory.map_or(0, |m| m.peak_kib),
            self.late_sends,
            self.max_send_lag_ms,
        );
        let delivered: u64 = self.kinds.iter().map(|k| k.delivery.delivered).sum();
        let _ = writeln!(
            out,
            "datagrams from the relay: {} ({:.2} deliveries per datagram)",
            self.datagrams_received,
            delivered as f64 / self.datagrams_received.max(1) as f64,
        );
        let _ = writeln!(
            out,
            "UDP drops: relay socket {}, tool sockets {}, whole machine (rcv, snd) {}",
            opt(self.server_socket_drops, |n| n.to_string()),
            opt(self.client_socket_drops, |n| n.to_string()),
            opt(self.udp_buffer_drops, |(r, s)| format!("{r}, {s}")),
        );
        let problems = self.problems();
        if problems.is_empty() {
            let _ =
                writeln!(out, "PASS: every connection logged in, 0 refused, 0 lost, 0 duplicated");
        }
        for problem in problems {
            let _ = writeln!(out, "FAIL: {problem}");
        }
        out
    }
}

/// [`ServerReport::measured`] when the relay's process is not known.
pub const NOT_MEASURED: &str = "none";

/// Counts by name, `NAME n, NAME n`, or `none`.
fn counts<K: std::fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = counts.iter().map(|(name, n)| format!("{name} {n}")).collect();
    parts.join(", ")
}

/// Deliveries per second over a window, never dividing by (almost) zero.
pub fn per_second(count: u64, window: Duration) -> f64 {
    count as f64 / window.as_secs_f64().max(1e-3)
}

/// Server CPU time per delivery, in microseconds.
pub fn cpu_per_delivery_us(cpu: Duration, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| cpu.as_secs_f64() * 1e6 / deliveries as f64)
}

fn ms(us: f64) -> String {
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.1} µs") }
}

/// A JSON value as people read it: strings without quotes, lists joined with commas.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn opt<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "n/a".to_string(), show)
}

#[cfg(test)]
mod tests {
    use super::super::traffic::{Received, Sent};
    use super::*;

    fn sender(conn: usize, accepted: [u64; 3], direct: &[(usize, u64)]) -> SenderTally {
        let mut tally = SenderTally { conn, ..SenderTally::default() };
        for kind in Kind::ALL {
            tally.kinds[kind.index()] = Sent {
                sent: accepted[kind.index()],
                accepted: accepted[kind.index()],
                ..Sent::default()
            };
        }
        tally.direct = direct.iter().copied().collect();
        tally
    }

    fn receiver(conn: usize, messages: [u64; 3]) -> (usize, ReceiverTally) {
        let mut tally = ReceiverTally::default();
        for kind in Kind::ALL {
            tally.kinds[kind.index()] =
                Received { messages: messages[kind.index()], ..Received::default() };
        }
        (conn, tally)
    }

    /// Two rooms: 0 holds connections 0, 2, 4; 1 holds 1, 3; connection 5 never logged in.
    fn membership() -> Membership {
        Membership { room_of: vec![Some(0), Some(1), Some(0), Some(1), Some(0), None], rooms: 2 }
    }

    #[test]
    fn receivers_expect_their_room_minus_their_own() {
        // Connection 0 and 2 send in room 0, 1 in room 1.
        let senders =
            [sender(0, [10, 5, 2], &[]), sender(2, [7, 0, 0], &[]), sender(1, [3, 0, 1], &[])];
        let ledger = Ledger::new(&membership(), &senders, CommandTo::All);
        assert_eq!(ledger.expected(Kind::Broadcast, 0, 0), 7);
        assert_eq!(ledger.expected(Kind::Broadcast, 2, 0), 10);
        assert_eq!(ledger.expected(Kind::Broadcast, 4, 0), 17);
        assert_eq!(ledger.expected(Kind::Broadcast, 3, 1), 3);
        assert_eq!(ledger.expected(Kind::Broadcast, 1, 1), 0);
        assert_eq!(ledger.expected(Kind::Barrage, 4, 0), 5);
        assert_eq!(ledger.expected(Kind::Command, 3, 1), 1);
        // Broadcast 7+10+17+0+3, command 0+2+2+0+1 (barrage is not reliable).
        assert_eq!(ledger.reliable_total(&membership()), 37 + 5);
    }

    #[test]
    fn commands_to_one_member_count_for_that_member_only() {
        // Connection 0 sent 6 commands: 4 to connection 2, 2 to connection 4.
        let senders = [sender(0, [0, 0, 6], &[(2, 4), (4, 2)])];
        let ledger = Ledger::new(&membership(), &senders, CommandTo::One);
        assert_eq!(ledger.expected(Kind::Command, 2, 0), 4);
        assert_eq!(ledger.expected(Kind::Command, 4, 0), 2);
        assert_eq!(ledger.expected(Kind::Command, 0, 0), 0);
        assert_eq!(ledger.expected(Kind::Command, 3, 1), 0);
    }

    #[test]
    fn missing_and_extra_are_counted_per_receiver() {
        let senders = [sender(0, [10, 10, 0], &[])];
        let ledger = Ledger::new(&membership(), &senders, CommandTo::All);
        let mut late = receiver(4, [10, 6, 0]);
        late.1.kinds[Kind::Barrage.index()].late = 2;
        // Connection 2 missed 3 broadcasts; 4 got them all; 1 (other room) got one extra;
        // 5 never logged in and is not counted.
        let receivers =
            [receiver(2, [7, 10, 0]), late, receiver(1, [1, 0, 0]), receiver(5, [9, 9, 9])];
        let broadcast = delivery(Kind::Broadcast, &ledger, &membership(), &receivers);
        assert_eq!(
            broadcast,
            Delivery { expected: 20, delivered: 18, missing: 3, extra: 1, duplicates: 0, late: 0 }
        );
        let barrage = delivery(Kind::Barrage, &ledger, &membership(), &receivers);
        assert_eq!((barrage.expected, barrage.missing, barrage.late), (20, 4, 2));
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() <= 1.0, "{l:?}");
        assert_eq!(Latency::of(&Histogram::new(3).unwrap()), Latency::default());
    }

    #[test]
    fn counts_read_as_names_and_numbers() {
        assert_eq!(counts(&BTreeMap::<String, u64>::new()), "none");
        let refused = BTreeMap::from([("ROOM_RATE_LIMITED", 3), ("USER_RATE_LIMITED", 40)]);
        assert_eq!(counts(&refused), "ROOM_RATE_LIMITED 3, USER_RATE_LIMITED 40");
    }

    #[test]
    fn rates_and_cpu_per_delivery() {
        assert_eq!(per_second(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_second(5, Duration::ZERO), 5000.0);
        assert_eq!(cpu_per_delivery_us(Duration::from_millis(500), 1_000_000), Some(0.5));
        assert_eq!(cpu_per_delivery_us(Duration::from_secs(1), 0), None);
    }
}
