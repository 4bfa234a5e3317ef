//! The traffic of a load run: senders that keep a target rate, receivers that check and time
//! every message, and the live recorders both report into.
//!
//! A payload carries its send time: nanoseconds since the run's shared `Instant` (every client
//! is in this process), the sender's connection index and a marker, then padding.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use qrelay::client::{Client, ClientError, Event, Events, Pending};
use serde::Serialize;
use tokio::sync::watch;

use super::pacer::Pacer;

/// Bytes of the stamp at the start of every payload; the smallest payload the tool sends.
pub const STAMP_LEN: usize = 16;
/// Marks a payload as this tool's (bytes 12..16 of the stamp).
const MARKER: &[u8; 4] = b"qrb1";
/// A barrage delivered later than this after it was sent counts as late.
pub const BARRAGE_LATE: Duration = Duration::from_millis(100);
/// Sends one sender may have waiting for their result; past this it waits (and lags).
const MAX_IN_FLIGHT: usize = 4096;
/// A send this much behind its schedule counts as late.
const SEND_LAG_LATE: Duration = Duration::from_millis(10);
/// Longest latency the histograms hold (longer ones are recorded as this).
const HISTOGRAM_MAX: Duration = Duration::from_secs(60);
/// How many barrage IDs behind the newest one a receiver still checks for duplicates.
const BARRAGE_WINDOW: u64 = 64;

/// A message kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Reliable, ordered, to everyone else in the room.
    Broadcast,
    /// Best effort datagram, to everyone else in the room.
    Barrage,
    /// Reliable custom command (see `--command-to`).
    Command,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 3] = [Kind::Broadcast, Kind::Barrage, Kind::Command];

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether every accepted message must arrive.
    pub fn reliable(self) -> bool {
        self != Kind::Barrage
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Broadcast => "broadcast",
            Kind::Barrage => "barrage",
            Kind::Command => "command",
        }
    }
}

/// Whom a custom command is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandTo {
    /// Everyone else in the room (an empty target list).
    All,
    /// One other member, round-robin over the room.
    One,
}

/// Latency histograms and delivery counters that every receiver reports into.
#[derive(Debug)]
pub struct Live {
    /// Time zero of every stamp.
    pub base: Instant,
    /// Histograms, behind one lock taken once per receiver wake-up.
    recorders: Mutex<Recorders>,
    /// Messages delivered (duplicates excluded), per kind.
    pub delivered: [AtomicU64; 3],
    /// Messages sent, per kind.
    pub sent: [AtomicU64; 3],
    /// Messages accepted by the relay, per kind.
    pub accepted: [AtomicU64; 3],
    /// When the last delivery was recorded, ns since `base`.
    pub last_delivery_ns: AtomicU64,
    /// Other members each connection has seen in its room (joins minus leaves).
    pub members: Vec<AtomicUsize>,
}

#[derive(Debug)]
struct Recorders {
    /// Whole-run latency, per kind.
    total: [Histogram<u64>; 3],
    /// Latency since the last progress line, all kinds.
    interval: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX.as_nanos() as u64, 3).expect("valid bounds")
}

impl Live {
    /// Fresh recorders for `connections` connections, with time zero now.
    pub fn new(connections: usize) -> Live {
        Live {
            base: Instant::now(),
            recorders: Mutex::new(Recorders {
                total: [histogram(), histogram(), histogram()],
                interval: histogram(),
            }),
            delivered: Default::default(),
            sent: Default::default(),
            accepted: Default::default(),
            last_delivery_ns: AtomicU64::new(0),
            members: (0..connections).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Nanoseconds since `base`.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Recorders> {
        self.recorders.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The 99th percentile since the last call, then starts a new interval.
    pub fn take_interval_p99(&self) -> Option<Duration> {
        let mut recorders = self.lock();
        let p99 = (!recorders.interval.is_empty())
            .then(|| Duration::from_nanos(recorders.interval.value_at_quantile(0.99)));
        recorders.interval.reset();
        p99
    }

    /// A copy of the whole-run histogram of `kind`.
    pub fn histogram(&self, kind: Kind) -> Histogram<u64> {
        self.lock().total[kind.index()].clone()
    }

    /// Sums over every kind.
    pub fn totals(&self) -> (u64, u64, u64) {
        let sum =
            |counters: &[AtomicU64; 3]| counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        (sum(&self.sent), sum(&self.accepted), sum(&self.delivered))
    }

    /// Reliable messages delivered so far, all kinds.
    pub fn reliable_delivered(&self) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| k.reliable())
            .map(|k| self.delivered[k.index()].load(Ordering::Relaxed))
            .sum()
    }
}

/// A payload of `len` bytes stamped with `sent_ns` and `sender`.
pub fn stamp(len: usize, sent_ns: u64, sender: u32) -> Bytes {
    let mut payload = BytesMut::with_capacity(len.max(STAMP_LEN));
    payload.put_u64_le(sent_ns);
    payload.put_u32_le(sender);
    payload.put_slice(MARKER);
    payload.resize(len.max(STAMP_LEN), 0);
    payload.freeze()
}

/// The send time of a payload this tool stamped, or `None` for anyone else's.
pub fn stamped_ns(payload: &[u8]) -> Option<u64> {
    if payload.len() < STAMP_LEN || &payload[12..16] != MARKER {
        return None;
    }
    Some(u64::from_le_bytes(payload[..8].try_into().ok()?))
}

/// What one receiver saw of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Distinct messages delivered.
    pub messages: u64,
    /// Messages delivered again (reliable: an ID not above the last one on the lane; barrage:
    /// an ID seen within the last [`BARRAGE_WINDOW`]).
    pub duplicates: u64,
    /// Barrage delivered more than [`BARRAGE_LATE`] after it was sent.
    pub late: u64,
}

/// What one receiver saw during the run.
#[derive(Debug, Clone, Default)]
pub struct ReceiverTally {
    /// Per kind.
    pub kinds: [Received; 3],
    /// Messages without this tool's stamp (someone else in the room).
    pub foreign: u64,
    /// The code of the `RoomClosed` event, if the room lane ended during the run.
    pub room_closed: Option<String>,
    /// Whether the connection ended during the run.
    pub disconnected: bool,
}

/// The receiving side of one connection: checks and times every message until `stop`.
pub struct Receiver {
    live: Arc<Live>,
    /// This receiver's connection index.
    conn: usize,
    tally: ReceiverTally,
    last_broadcast: u64,
    last_command: u64,
    barrage_newest: u64,
    /// Bit `i` set: barrage ID `barrage_newest - i` was seen.
    barrage_seen: u64,
    /// Latencies not yet in the shared histograms.
    samples: Vec<(Kind, u64)>,
}

impl Receiver {
    /// The receiver of connection `conn`.
    pub fn new(live: Arc<Live>, conn: usize) -> Receiver {
        Receiver {
            live,
            conn,
            tally: ReceiverTally::default(),
            last_broadcast: 0,
            last_command: 0,
            barrage_newest: 0,
            barrage_seen: 0,
            samples: Vec::with_capacity(64),
        }
    }

    /// Reads `events` until `stop` turns true or the connection ends.
    pub async fn run(
        mut self,
        mut events: Events,
        mut stop: watch::Receiver<bool>,
    ) -> ReceiverTally {
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                event = events.next() => event,
            };
            let Some(event) = event else { break };
            let mut open = self.handle(event);
            // Take whatever else is ready, then report once for the whole wake-up.
            while open && let Some(event) = events.try_next() {
                open = self.handle(event);
            }
            self.flush();
            if !open {
                break;
            }
        }
        self.flush();
        self.tally
    }

    /// Accounts one event; `false` once the connection has ended.
    fn handle(&mut self, event: Event) -> bool {
        let now = self.live.now_ns();
        match event {
            Event::Broadcasts { messages, .. } => {
                for m in messages {
                    let fresh = m.id > self.last_broadcast;
                    self.last_broadcast = self.last_broadcast.max(m.id);
                    self.message(Kind::Broadcast, &m.payload, fresh, now);
                }
            }
            Event::Command { message, .. } => {
                let fresh = message.id > self.last_command;
                self.last_command = self.last_command.max(message.id);
                self.message(Kind::Command, &message.payload, fresh, now);
            }
            Event::Barrages { messages, .. } => {
                for m in messages {
                    let fresh = self.barrage_fresh(m.id);
                    self.message(Kind::Barrage, &m.payload, fresh, now);
                }
            }
            Event::UsersJoined { users, .. } => {
                self.live.members[self.conn].fetch_add(users.len(), Ordering::Relaxed);
            }
            Event::UsersLeft { users, .. } => {
                self.live.members[self.conn].fetch_sub(users.len(), Ordering::Relaxed);
            }
            // A large room tells its count (this connection included), not who is there.
            Event::RoomMembers { count, .. } | Event::MemberCount { count, .. } => {
                let others = (count as usize).saturating_sub(1);
                self.live.members[self.conn].store(others, Ordering::Relaxed);
            }
            Event::RoomClosed { code, .. } => {
                self.tally.room_closed.get_or_insert_with(|| code.name().to_string());
            }
            Event::TokenWillExpire { .. } | Event::Recovered { .. } | Event::ConnectionState(_) => {
            }
            Event::Disconnected { .. } => {
                self.tally.disconnected = true;
                return false;
            }
        }
        true
    }

    fn message(&mut self, kind: Kind, payload: &[u8], fresh: bool, now_ns: u64) {
        let Some(sent_ns) = stamped_ns(payload) else {
            self.tally.foreign += 1;
            return;
        };
        let received = &mut self.tally.kinds[kind.index()];
        if !fresh {
            received.duplicates += 1;
            return;
        }
        received.messages += 1;
        let latency = now_ns.saturating_sub(sent_ns);
        if kind == Kind::Barrage && latency > BARRAGE_LATE.as_nanos() as u64 {
            received.late += 1;
        }
        self.samples.push((kind, latency));
    }

    /// Whether barrage `id` is new, within a window of recent IDs (barrage may be reordered).
    fn barrage_fresh(&mut self, id: u64) -> bool {
        if id > self.barrage_newest {
            let shift = id - self.barrage_newest;
            self.barrage_seen =
                if shift >= BARRAGE_WINDOW { 0 } else { self.barrage_seen << shift };
            self.barrage_seen |= 1;
            self.barrage_newest = id;
            return true;
        }
        let age = self.barrage_newest - id;
        if age >= BARRAGE_WINDOW {
            return true; // too old to tell: counted as new
        }
        let bit = 1u64 << age;
        let fresh = self.barrage_seen & bit == 0;
        self.barrage_seen |= bit;
        fresh
    }

    /// Moves the pending latencies into the shared histograms.
    fn flush(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut counts = [0u64; 3];
        {
            let mut recorders = self.live.lock();
            for &(kind, latency) in &self.samples {
                recorders.total[kind.index()].saturating_record(latency.max(1));
                recorders.interval.saturating_record(latency.max(1));
                counts[kind.index()] += 1;
            }
        }
        for kind in Kind::ALL {
            self.live.delivered[kind.index()].fetch_add(counts[kind.index()], Ordering::Relaxed);
        }
        self.live.last_delivery_ns.fetch_max(self.live.now_ns(), Ordering::Relaxed);
        self.samples.clear();
    }
}

/// What one sender did, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Send calls made.
    pub sent: u64,
    /// Accepted by the relay (a result with a message ID).
    pub accepted: u64,
    /// Refused by the relay or the client library, by error code name.
    pub refused: BTreeMap<String, u64>,
    /// No result in time (for barrage: the datagram or its result was lost).
    pub timeouts: u64,
    /// Failed otherwise (connection lost, …).
    pub errors: u64,
}

/// What one sender did during the run.
#[derive(Debug, Clone, Default)]
pub struct SenderTally {
    /// The sender's connection index.
    pub conn: usize,
    /// Per kind.
    pub kinds: [Sent; 3],
    /// Accepted commands addressed to one member (`--command-to one`), by target connection.
    pub direct: HashMap<usize, u64>,
    /// Sends made more than [`SEND_LAG_LATE`] after their scheduled time.
    pub late_sends: u64,
    /// The largest delay of a send behind its schedule.
    pub max_lag: Duration,
}

/// What a sender sends and how fast.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// The sender's connection index.
    pub conn: usize,
    /// The room it sends in.
    pub room: String,
    /// Messages per second from this sender.
    pub rate: f64,
    /// Kinds, taken in turn.
    pub kinds: Vec<Kind>,
    /// How commands are addressed.
    pub command_to: CommandTo,
    /// The room's members (connection index, user ID) in connection order, this sender
    /// included, for `--command-to one`; shared by the room's senders.
    pub members: Arc<[(usize, String)]>,
    /// Payload size.
    pub payload: usize,
    /// How long to send.
    pub duration: Duration,
    /// How sends are spread over time.
    pub pacing: Pacing,
}

/// How a sender spreads its messages over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// Each message at its own instant, `k / rate` after the start (what a real sender that
    /// is not in a hurry does; microsecond precision on Linux).
    Even,
    /// A wake-up every `max(1 / rate, 1 ms)`, sending every message due by then as one burst
    /// (the tool's only mode before 2026-12-01; a relay can pack a burst into fewer packets).
    Tick,
}

impl SendPlan {
    /// The `k`th other member of the room, round-robin (an index into `members`); `None`
    /// when the sender is alone.
    fn other(&self, k: usize) -> Option<usize> {
        let me = self.members.binary_search_by_key(&self.conn, |(conn, _)| *conn).ok();
        let others = self.members.len() - usize::from(me.is_some());
        if others == 0 {
            return None;
        }
        let i = k % others;
        Some(match me {
            Some(me) if i >= me => i + 1,
            _ => i,
        })
    }
}

/// Sends at `plan.rate` for `plan.duration`, without waiting for one result before the next
/// send (each send returns a [`Pending`] result at once), then waits for every outstanding
/// result.
pub async fn run_sender(
    client: Client,
    plan: SendPlan,
    live: Arc<Live>,
) -> std::io::Result<SenderTally> {
    let mut tally = SenderTally { conn: plan.conn, ..SenderTally::default() };
    let mut clock = SendClock::new(plan.pacing, plan.rate)?;
    // Sends whose result is not recorded yet, oldest first.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let start = Instant::now();
    let mut count: u64 = 0;
    'sending: loop {
        clock.wait(start, count).await?;
        let elapsed = start.elapsed();
        if elapsed >= plan.duration {
            break;
        }
        // Message k is due at k / rate: send every one that is due by now (with even pacing,
        // more than one only when the sender fell behind).
        let due = (elapsed.as_secs_f64() * plan.rate) as u64 + 1;
        while count < due {
            if in_flight.len() >= MAX_IN_FLIGHT {
                // Results can come out of order (a lost barrage waits for its timeout): take
                // every one that is in, and wait for the oldest only if none is.
                in_flight.retain_mut(|send| match ready_now(&mut send.result) {
                    Some(result) => {
                        record(&mut tally, &live, send.kind, send.target, result);
                        false
                    }
                    None => true,
                });
            }
            while in_flight.len() >= MAX_IN_FLIGHT {
                let Some(oldest) = in_flight.pop_front() else { break };
                let result = oldest.result.await;
                record(&mut tally, &live, oldest.kind, oldest.target, result);
                if start.elapsed() >= plan.duration {
                    break 'sending;
                }
            }
            let lag =
                start.elapsed().saturating_sub(Duration::from_secs_f64(count as f64 / plan.rate));
            tally.max_lag = tally.max_lag.max(lag);
            if lag > SEND_LAG_LATE {
                tally.late_sends += 1;
            }
            let kind = plan.kinds[count as usize % plan.kinds.len()];
            let target = match (kind, plan.command_to) {
                (Kind::Command, CommandTo::One) => plan.other(count as usize / plan.kinds.len()),
                _ => None,
            };
            tally.kinds[kind.index()].sent += 1;
            live.sent[kind.index()].fetch_add(1, Ordering::Relaxed);
            let result = start_one(&client, &plan, &live, kind, target);
            in_flight.push_back(InFlight {
                kind,
                target: target.map(|t| plan.members[t].0),
                result,
            });
            count += 1;
        }
        // The results that are in, oldest first (they mostly come in send order).
        while let Some(oldest) = in_flight.front_mut()
            && let Some(result) = ready_now(&mut oldest.result)
        {
            record(&mut tally, &live, oldest.kind, oldest.target, result);
            in_flight.pop_front();
        }
    }
    for send in in_flight {
        let result = send.result.await;
        record(&mut tally, &live, send.kind, send.target, result);
    }
    Ok(tally)
}

/// When a sender wakes up to send.
enum SendClock {
    /// Until message `count` is due.
    Even { pacer: Pacer, rate: f64 },
    /// At the next tick.
    Tick(tokio::time::Interval),
}

impl SendClock {
    fn new(pacing: Pacing, rate: f64) -> std::io::Result<SendClock> {
        Ok(match pacing {
            Pacing::Even => SendClock::Even { pacer: Pacer::new()?, rate },
            Pacing::Tick => {
                let interval = Duration::from_secs_f64(1.0 / rate).max(Duration::from_millis(1));
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                SendClock::Tick(ticker)
            }
        })
    }

    /// Waits until message `count` (counted from 0 at `start`) is due, or the next tick.
    async fn wait(&mut self, start: Instant, count: u64) -> std::io::Result<()> {
        match self {
            SendClock::Even { pacer, rate } => {
                pacer.until(start + Duration::from_secs_f64(count as f64 / *rate)).await
            }
            SendClock::Tick(ticker) => {
                ticker.tick().await;
                Ok(())
            }
        }
    }
}

/// A send whose result has not been recorded yet.
struct InFlight {
    kind: Kind,
    /// The target connection of a command to one member.
    target: Option<usize>,
    /// The message ID, when it comes.
    result: Pending<u64>,
}

/// Starts one send of `kind` (to member `target` for a command to one).
fn start_one(
    client: &Client,
    plan: &SendPlan,
    live: &Live,
    kind: Kind,
    target: Option<usize>,
) -> Pending<u64> {
    let payload = stamp(plan.payload, live.now_ns(), plan.conn as u32);
    let room = plan.room.as_str();
    match kind {
        Kind::Broadcast => client.start_broadcast_message(room, payload),
        Kind::Barrage => client.start_barrage_message(room, payload),
        Kind::Command => match target {
            Some(t) => client.start_custom_command(room, payload, &[plan.members[t].1.as_str()]),
            None => client.start_custom_command(room, payload, &[]),
        },
    }
}

/// The result of `pending` if it is in now, without waiting.
fn ready_now(pending: &mut Pending<u64>) -> Option<Result<u64, ClientError>> {
    match Pin::new(pending).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

/// Counts the result of one send of `kind` (a command to connection `target`, if one).
fn record(
    tally: &mut SenderTally,
    live: &Live,
    kind: Kind,
    target: Option<usize>,
    result: Result<u64, ClientError>,
) {
    let sent = &mut tally.kinds[kind.index()];
    match result {
        Ok(_) => {
            sent.accepted += 1;
            live.accepted[kind.index()].fetch_add(1, Ordering::Relaxed);
            if let Some(target) = target {
                *tally.direct.entry(target).or_default() += 1;
            }
        }
        Err(ClientError::Timeout) => sent.timeouts += 1,
        Err(e @ (ClientError::Refused { .. } | ClientError::Invalid { .. })) => {
            *sent.refused.entry(e.code().name().to_string()).or_default() += 1;
        }
        Err(_) => sent.errors += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_foreign_payloads_are_recognised() {
        let payload = stamp(64, 123_456_789, 7);
        assert_eq!(payload.len(), 64);
        assert_eq!(stamped_ns(&payload), Some(123_456_789));
        assert_eq!(stamp(3, 1, 1).len(), STAMP_LEN);
        assert_eq!(stamped_ns(b"hello, room"), None);
        assert_eq!(stamped_ns(&[0u8; 64]), None);
    }

    #[test]
    fn barrage_window_finds_duplicates_and_accepts_reordering() {
        let mut receiver = Receiver::new(Arc::new(Live::new(1)), 0);
        assert!(receiver.barrage_fresh(5));
        assert!(receiver.barrage_fresh(3)); // late, reordered
        assert!(!receiver.barrage_fresh(3));
        assert!(!receiver.barrage_fresh(5));
        assert!(receiver.barrage_fresh(100)); // window jumps
        assert!(receiver.barrage_fresh(99));
        assert!(!receiver.barrage_fresh(100));
        assert!(receiver.barrage_fresh(5)); // too old to tell
    }

    #[test]
    fn commands_to_one_go_round_the_other_members() {
        let members: Arc<[(usize, String)]> =
            [1, 4, 7].iter().map(|&conn| (conn, format!("u{conn}"))).collect();
        let plan = |conn| SendPlan {
            conn,
            room: "r".into(),
            rate: 1.0,
            kinds: vec![Kind::Command],
            command_to: CommandTo::One,
            members: members.clone(),
            payload: STAMP_LEN,
            duration: Duration::from_secs(1),
            pacing: Pacing::Even,
        };
        let targets = |conn| (0..4).map(|k| plan(conn).other(k)).collect::<Vec<_>>();
        assert_eq!(targets(4), vec![Some(0), Some(2), Some(0), Some(2)]);
        assert_eq!(targets(1), vec![Some(1), Some(2), Some(1), Some(2)]);
        let alone = SendPlan { members: Arc::from([(4, "u4".to_string())]), ..plan(4) };
        assert_eq!(alone.other(0), None);
    }

    #[test]
    fn reliable_duplicates_are_ids_not_above_the_last() {
        let live = Arc::new(Live::new(1));
        let mut receiver = Receiver::new(live.clone(), 0);
        let message = |id| qrelay::protocol::BroadcastMessage {
            id,
            sent_at_ms: 0,
            from: qrelay::protocol::User { id: "a".into(), name: "a".into() },
            payload: stamp(16, 0, 0),
        };
        let event = |ids: &[u64]| Event::Broadcasts {
            room: "r".into(),
            messages: ids.iter().map(|&id| message(id)).collect(),
        };
        assert!(receiver.handle(event(&[1, 2, 3])));
        assert!(receiver.handle(event(&[3, 4])));
        receiver.flush();
        let broadcast = receiver.tally.kinds[Kind::Broadcast.index()];
        assert_eq!((broadcast.messages, broadcast.duplicates), (4, 1));
        assert_eq!(live.delivered[Kind::Broadcast.index()].load(Ordering::Relaxed), 4);
        assert_eq!(live.histogram(Kind::Broadcast).len(), 4);
    }
}
