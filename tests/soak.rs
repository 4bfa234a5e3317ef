//! Soak: hundreds of clients of the client library in several rooms of one in-process relay
//! with the **default** frequency limits, for `QRELAY_SOAK_SECS` seconds (default 20).
//!
//! Per room: a core of members that stay the whole run (five broadcasters, four barrage
//! senders, a commander to several, a commander to one, listeners, and two slow receivers),
//! plus churn slots whose clients join and leave over and over: by logout, by closing, or by
//! vanishing (their own runtime is shut down, so no close is sent and the relay must time them
//! out). All three kinds are sent at 95 % of the documented rates, so a paced sender never hits
//! a limit. The commander to one also drives the slow receivers: one at a time stops reading
//! while 1 KiB commands are sent to it at 150/s (the limit is 200/s) until the relay drops it as
//! too slow (`SLOW_RECEIVER`, seen as `UNKNOWN_TARGET_USER` for the next command); it then reads
//! again and the client logs in again and recovers by itself.
//!
//! At the end, for every member that stayed: it received exactly the broadcasts accepted in its
//! room minus its own, in order, each once; every command addressed to it exactly once, except
//! those sent while it was out of the room (only between a close and its `Recovered` event, as
//! documented: commands are not recoverable); no rate-limit refusal; the relay's counters back
//! to zero, the rooms gone once their history expired, heap in use (a counting allocator) back
//! near its start level and RSS (trimmed) near its warm-up level, no file descriptor leaked, no
//! panic in any thread. `RUST_LOG` turns on the relay's and the clients' logs.
//!
//! Knobs (environment): `QRELAY_SOAK_SECS` (20), `QRELAY_SOAK_ROOMS` (5),
//! `QRELAY_SOAK_STAYERS` per room (36, of which 2 slow), `QRELAY_SOAK_CHURN` slots per room (12),
//! `QRELAY_SOAK_SEED`. A long run by hand:
//! `QRELAY_SOAK_SECS=300 cargo test --release --test soak -- --nocapture`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{TestRelay, test_config};
use qrelay::client::{Client, ClientConfig, ClientError, ConnectionState, Event, Events};
use qrelay::protocol::{ErrorCode, User};
use qrelay::server::RateLimits;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

/// Share of each documented rate the paced senders use: below the limit, so token-bucket
/// timing never refuses them, yet at the rate for every practical purpose.
const PACE: f64 = 0.95;
/// Commands per second to the slow receiver under pressure (limit: 200/s to one user).
const PRESSURE_PER_SEC: f64 = 150.0;
/// Pressure commands in flight at once. The receiver's buffers (client event queue, QUIC
/// windows, relay lane queue) take about 640 of them; sent one round trip at a time, a machine
/// whose other core is busy manages about 10 a second and never fills them. In batches, each
/// costs one round trip per batch (25 of them stay within the 200/s burst of the limit), so a
/// receiver that does not read is dropped on any machine.
const PRESSURE_BATCH: usize = 25;
/// Commands per second to one user outside pressure.
const DIRECT_PER_SEC: f64 = 20.0;
/// The relay's idle timeout (and the clients'): how soon a vanished client is gone.
const IDLE: Duration = Duration::from_secs(2);
/// History kept for recovery: far more than a slow receiver misses between its close and its
/// login again (about a second of broadcasts at 10/s).
const HISTORY_SIZE: usize = 100;
/// Short, so that the rooms are gone soon after the run, yet longer than a slow receiver's
/// recovery on a machine whose other core is busy (up to 6 s was seen; with 5 s a broadcast
/// expired before the receiver came back for it).
const HISTORY_TTL_SECS: u64 = 10;
/// Small, so that a slow receiver is dropped within seconds; `validate()` wants it above
/// history + member-list frames (1000 members: 5 frames).
const LANE_QUEUE: usize = 128;
/// The longest a slow receiver is kept from reading in one cycle: longer than any run (the
/// pressure goes on until the relay drops it; on a busy machine that can take most of a run).
const MAX_PRESSURE: Duration = Duration::from_secs(120);
/// The longest the run is extended for its first complete slow cycle.
const MAX_EXTRA: Duration = Duration::from_secs(60);
/// Between slow cycles of a room.
const SLOW_GAP: Duration = Duration::from_secs(2);
/// Stayers per shared client endpoint (UDP socket).
const PER_ENDPOINT: usize = 25;
/// Bound of every single step (connect, login, request, wait).
const STEP: Duration = Duration::from_secs(30);

/// Roles by index among a room's stayers.
const BROADCASTERS: std::ops::Range<usize> = 0..5;
const BARRAGERS: std::ops::Range<usize> = 5..9;
const MULTI: usize = 9;
const DIRECT: usize = 10;
/// Slow receivers per room: the last stayers.
const SLOW: usize = 2;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics in every thread and task, then reports them as usual.
fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// Counts the bytes allocated and not yet freed, process-wide (the relay's and the clients'
/// heap, and this test's bookkeeping), to tell a leak from memory the allocator keeps.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping is one atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes allocated and not freed, in KiB.
fn live_kib() -> u64 {
    (LIVE.load(Ordering::Relaxed).max(0) / 1024) as u64
}

/// Hands the allocator's free memory back to the system (glibc keeps freed memory in its
/// per-thread arenas), so that RSS shows what is in use.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// File descriptors open in this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time used by this process (user + system), in seconds (USER_HZ = 100).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// The host's count of UDP datagrams dropped because a socket's receive buffer was full
/// (host-wide: other processes' drops count too).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Datagrams the kernel dropped at the UDP sockets bound to `ports` because their receive
/// buffer was full (the `drops` column of /proc/net/udp).
fn socket_drops(ports: &[u16]) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit_once(':')?.1;
            let port = u16::from_str_radix(port, 16).ok()?;
            ports.contains(&port).then(|| fields.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// Heap bytes held by the run's logs of accepted messages (kept to the end for the checks).
fn log_bytes(logs: &[Mutex<RoomLog>]) -> u64 {
    logs.iter()
        .map(|log| {
            let log = lock(log);
            let lists: usize = log
                .commands
                .iter()
                .map(|c| match &c.to {
                    Targets::All => 0,
                    Targets::Only(to) => to.capacity() * size_of::<u32>(),
                })
                .sum();
            (log.broadcasts.capacity() * size_of::<(u64, u32)>()
                + log.commands.capacity() * size_of::<Accepted>()
                + lists) as u64
        })
        .sum()
}

fn env<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A small deterministic generator (xorshift64*), one per task.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn step(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.step() % n.max(1) as u64) as usize
    }
}

/// The run's size.
#[derive(Debug, Clone)]
struct Plan {
    secs: u64,
    rooms: usize,
    stayers: usize,
    churn: usize,
    seed: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let plan = Plan {
            secs: env("QRELAY_SOAK_SECS", 20),
            rooms: env("QRELAY_SOAK_ROOMS", 5),
            stayers: env("QRELAY_SOAK_STAYERS", 36),
            churn: env("QRELAY_SOAK_CHURN", 12),
            seed: env("QRELAY_SOAK_SEED", 1),
        };
        assert!(plan.rooms >= 1 && plan.stayers > DIRECT + SLOW + 1, "{plan:?}");
        plan
    }

    fn room(room: usize) -> String {
        format!("soak{room}")
    }

    fn user(room: usize, i: usize) -> String {
        format!("r{room}u{i}")
    }

    fn is_slow(&self, i: usize) -> bool {
        i >= self.stayers - SLOW
    }
}

/// A set of IDs (per-room sequences are dense: a bit vector).
#[derive(Debug, Default)]
struct Ids {
    words: Vec<u64>,
    count: u64,
}

impl Ids {
    /// Adds `id`; `false` if it was there already.
    fn insert(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let new = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        self.count += u64::from(new);
        new
    }

    fn contains(&self, id: u64) -> bool {
        self.words.get((id / 64) as usize).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| i as u64 * 64 + b)
        })
    }
}

/// Who a command was for.
#[derive(Debug)]
enum Targets {
    /// Everyone else in the room.
    All,
    /// These stayers (global indices).
    Only(Vec<u32>),
}

/// A command the relay accepted.
#[derive(Debug)]
struct Accepted {
    id: u64,
    /// The sender's global stayer index, or `u32::MAX` for a churner.
    from: u32,
    to: Targets,
}

/// What the relay accepted in one room, from the senders' `Sent` IDs.
#[derive(Debug, Default)]
struct RoomLog {
    /// Broadcast ID and sender (global stayer index).
    broadcasts: Vec<(u64, u32)>,
    commands: Vec<Accepted>,
}

/// What the senders and churners did.
#[derive(Debug, Default)]
struct Tally {
    broadcasts: AtomicU64,
    barrages: AtomicU64,
    barrage_timeouts: AtomicU64,
    commands_one: AtomicU64,
    commands_many: AtomicU64,
    rate_limited: AtomicU64,
    /// Commands refused with SLOW_RECEIVER: their only target had just been dropped as too
    /// slow, and the sender was told (not an error).
    commands_to_dropped: AtomicU64,
    cuts: AtomicU64,
    /// The longest time from a cut to the slow receiver's `Recovered` event.
    slowest_recovery_ms: AtomicU64,
    /// Slow cycles completed: cut, then recovered (as the commander to one saw them).
    cycles_done: AtomicU64,
    churn_logouts: AtomicU64,
    churn_closes: AtomicU64,
    churn_kills: AtomicU64,
    churn_join_failures: AtomicU64,
    first_join_failures: Mutex<Vec<String>>,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Something that should not happen (it fails the test).
    fn error(&self, what: String) {
        Tally::add(&self.errors);
        let mut first = lock(&self.first_errors);
        if first.len() < 30 {
            first.push(what);
        }
    }

    /// A request that failed; rate-limit refusals are also counted apart.
    fn failed(&self, what: &str, error: &ClientError) {
        if matches!(
            error.code(),
            ErrorCode::USER_RATE_LIMITED
                | ErrorCode::ROOM_RATE_LIMITED
                | ErrorCode::LOGIN_RATE_LIMITED
        ) {
            Tally::add(&self.rate_limited);
        }
        self.error(format!("{what}: {error}"));
    }
}

/// Everything the tasks share.
struct Ctx {
    plan: Plan,
    relay: TestRelay,
    /// Set when the run's time is up: senders and churners stop.
    stop: AtomicBool,
    /// Set before the stayers are closed: their `Disconnected` is expected from then on.
    closing: AtomicBool,
    tally: Tally,
    logs: Vec<Mutex<RoomLog>>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn config(&self, user: &str) -> ClientConfig {
        let user = User { id: user.into(), name: format!("{user} name") };
        let mut config =
            ClientConfig::new(self.relay.addr, "localhost", vec![self.relay.ca.clone()], user);
        config.idle_timeout = IDLE;
        config
    }
}

/// The fields of a `Recovered` event: complete, missed, replayed.
type Recovery = (bool, Option<(u64, u64)>, u64);

/// What one stayer received.
#[derive(Debug, Default)]
struct Seen {
    broadcasts: Ids,
    last_broadcast: u64,
    commands: Ids,
    last_command: u64,
    /// For each `Recovered` event: the last command ID received before it and the first after
    /// it (the commands lost while out of the room lie strictly between).
    gaps: Vec<(u64, Option<u64>)>,
    recovered: Vec<Recovery>,
    barrages: Ids,
    barrage_duplicates: u64,
    states: Vec<ConnectionState>,
    unexpected: Vec<String>,
}

impl Seen {
    fn unexpected(&mut self, what: String) {
        if self.unexpected.len() < 10 {
            self.unexpected.push(what);
        }
    }
}

/// A member that stays the whole run.
struct Stayer {
    room: usize,
    index: u32,
    user: String,
    client: Client,
    seen: Arc<Mutex<Seen>>,
    /// For a slow receiver: `true` stops its reading.
    pause: Option<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

/// Reads a stayer's events (unless paused) and files them.
async fn consume(
    ctx: Arc<Ctx>,
    me: String,
    mut events: Events,
    seen: Arc<Mutex<Seen>>,
    mut pause: Option<watch::Receiver<bool>>,
) {
    loop {
        let event = match pause.as_mut() {
            Some(pause) => {
                while *pause.borrow_and_update() {
                    if pause.changed().await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    event = events.next() => event,
                    _ = pause.changed() => continue,
                }
            }
            None => events.next().await,
        };
        let Some(event) = event else { return };
        let mut seen = lock(&seen);
        match event {
            Event::Broadcasts { messages, .. } => {
                for m in messages {
                    if m.from.id == me {
                        seen.unexpected(format!("own broadcast {} echoed", m.id));
                    }
                    if m.id <= seen.last_broadcast {
                        let last = seen.last_broadcast;
                        seen.unexpected(format!("broadcast {} after {last}", m.id));
                    }
                    seen.last_broadcast = seen.last_broadcast.max(m.id);
                    seen.broadcasts.insert(m.id);
                }
            }
            Event::Command { message, .. } => {
                if message.id <= seen.last_command {
                    let last = seen.last_command;
                    seen.unexpected(format!("command {} after {last}", message.id));
                }
                seen.last_command = seen.last_command.max(message.id);
                seen.commands.insert(message.id);
                if let Some(gap) = seen.gaps.last_mut()
                    && gap.1.is_none()
                {
                    gap.1 = Some(message.id);
                }
            }
            Event::Barrages { messages, .. } => {
                for m in messages {
                    if m.from.as_ref().is_some_and(|from| from.id == me) {
                        seen.unexpected(format!("own barrage {} echoed", m.id));
                    }
                    if !seen.barrages.insert(m.id) {
                        seen.barrage_duplicates += 1;
                    }
                }
            }
            Event::Recovered { complete, missed, replayed, .. } => {
                seen.recovered.push((complete, missed, replayed));
                let last = seen.last_command;
                seen.gaps.push((last, None));
            }
            Event::ConnectionState(state) => seen.states.push(state),
            Event::UsersJoined { .. } | Event::UsersLeft { .. } => {}
            Event::Disconnected { .. } if ctx.closing.load(Ordering::Relaxed) => {}
            other => seen.unexpected(format!("{other:?}")),
        }
    }
}

/// Connects and logs in the stayers of every room, `PER_ENDPOINT` per shared endpoint.
async fn connect_stayers(ctx: &Arc<Ctx>, endpoints: &[quinn::Endpoint]) -> Vec<Stayer> {
    let plan = &ctx.plan;
    let mut all: Vec<(usize, usize)> = Vec::new();
    for room in 0..plan.rooms {
        all.extend((0..plan.stayers).map(|i| (room, i)));
    }
    let mut stayers = Vec::with_capacity(all.len());
    for chunk in all.chunks(16) {
        let mut joins = JoinSet::new();
        for &(room, i) in chunk {
            let (ctx, index) = (Arc::clone(ctx), room * plan.stayers + i);
            let endpoint = endpoints[index % endpoints.len()].clone();
            joins.spawn(async move {
                let user = Plan::user(room, i);
                let config = ctx.config(&user);
                let (client, events) =
                    tokio::time::timeout(STEP, Client::connect_with(&endpoint, config))
                        .await
                        .expect("connect in time")
                        .expect("connect");
                let token = ctx.relay.token(&user);
                tokio::time::timeout(STEP, client.login_room(&Plan::room(room), &token))
                    .await
                    .expect("login in time")
                    .expect("login");
                let (pause, paused) = if ctx.plan.is_slow(i) {
                    let (tx, rx) = watch::channel(false);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                let seen = Arc::new(Mutex::new(Seen::default()));
                let task = tokio::spawn(consume(
                    Arc::clone(&ctx),
                    user.clone(),
                    events,
                    Arc::clone(&seen),
                    paused,
                ));
                Stayer { room, index: index as u32, user, client, seen, pause, task }
            });
        }
        while let Some(stayer) = joins.join_next().await {
            stayers.push(stayer.expect("stayer task"));
        }
    }
    stayers.sort_by_key(|s| s.index);
    stayers
}

/// A ticker at `PACE` of `rate` per second that never bursts to catch up.
fn pace(rate: f64) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / (rate * PACE)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// A payload of 1 to 1024 bytes naming what it is.
fn payload(what: &str, n: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("{what} {n} ").into_bytes();
    bytes.resize(len.clamp(bytes.len(), 1024), b'.');
    bytes
}

type Member = (u32, String, Client);

fn member(stayer: &Stayer) -> Member {
    (stayer.index, stayer.user.clone(), stayer.client.clone())
}

/// Broadcasts in `room` at 10/s × PACE, round robin over the broadcasters (each 2/s × PACE).
async fn broadcasts(ctx: Arc<Ctx>, room: usize, senders: Vec<Member>) {
    assert!(senders.len() >= 5, "five broadcasters keep each at 2/s");
    let name = Plan::room(room);
    let mut tick = pace(10.0);
    let mut rng = Rng::new(ctx.plan.seed ^ ((room as u64) << 8) ^ 1);
    let mut n = 0u64;
    while !ctx.stopped() {
        tick.tick().await;
        let (index, _, client) = &senders[n as usize % senders.len()];
        n += 1;
        let body = payload("broadcast", n, 16 + rng.below(500));
        match client.send_broadcast_message(&name, body).await {
            Ok(id) => {
                lock(&ctx.logs[room]).broadcasts.push((id, *index));
                Tally::add(&ctx.tally.broadcasts);
            }
            Err(e) => ctx.tally.failed("broadcast", &e),
        }
    }
}

/// Barrage in `room` at 20/s × PACE, round robin over the barrage senders.
async fn barrages(ctx: Arc<Ctx>, room: usize, senders: Vec<Member>) {
    let name = Arc::new(Plan::room(room));
    let mut tick = pace(20.0);
    let in_flight = Arc::new(Semaphore::new(8));
    let mut sends = JoinSet::new();
    let mut n = 0u64;
    while !ctx.stopped() {
        tick.tick().await;
        let (_, _, client) = senders[n as usize % senders.len()].clone();
        n += 1;
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let (ctx, name) = (Arc::clone(&ctx), Arc::clone(&name));
        sends.spawn(async move {
            match client.send_barrage_message(name.as_str(), payload("barrage", n, 64)).await {
                Ok(_) => Tally::add(&ctx.tally.barrages),
                // Best effort: the datagram or its reply was lost (not an error).
                Err(ClientError::Timeout) => Tally::add(&ctx.tally.barrage_timeouts),
                Err(e) => ctx.tally.failed("barrage", &e),
            }
            drop(permit);
        });
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

/// Records an accepted command, or the failure.
fn command_result(
    ctx: &Ctx,
    room: usize,
    from: u32,
    to: Targets,
    result: Result<u64, ClientError>,
) {
    match result {
        Ok(id) => {
            let counter = if matches!(&to, Targets::Only(t) if t.len() == 1) {
                &ctx.tally.commands_one
            } else {
                &ctx.tally.commands_many
            };
            Tally::add(counter);
            lock(&ctx.logs[room]).commands.push(Accepted { id, from, to });
        }
        Err(e) if e.code() == ErrorCode::SLOW_RECEIVER => {
            Tally::add(&ctx.tally.commands_to_dropped)
        }
        Err(e) => ctx.tally.failed("command", &e),
    }
}

/// Commands to several in `room` at 10/s × PACE from one commander: every other member, or
/// three of the core (the slow receivers are left out: they may be out of the room, which
/// refuses the whole command).
async fn commands_to_many(ctx: Arc<Ctx>, room: usize, commander: Member, core: Vec<(u32, String)>) {
    let name = Plan::room(room);
    let (from, _, client) = commander;
    let mut tick = pace(10.0);
    let mut rng = Rng::new(ctx.plan.seed ^ ((room as u64) << 8) ^ 2);
    let mut n = 0u64;
    while !ctx.stopped() {
        tick.tick().await;
        n += 1;
        let body = payload("to-many", n, 16 + rng.below(200));
        if n.is_multiple_of(2) {
            let result = client.send_custom_command(&name, body, &[]).await;
            command_result(&ctx, room, from, Targets::All, result);
        } else {
            let mut picked: Vec<&(u32, String)> = Vec::new();
            while picked.len() < 3 {
                let candidate = &core[rng.below(core.len())];
                if !picked.iter().any(|p| p.0 == candidate.0) {
                    picked.push(candidate);
                }
            }
            let to: Vec<&str> = picked.iter().map(|p| p.1.as_str()).collect();
            let result = client.send_custom_command(&name, body, &to).await;
            command_result(
                &ctx,
                room,
                from,
                Targets::Only(picked.iter().map(|p| p.0).collect()),
                result,
            );
        }
    }
}

/// A slow receiver as the commander to one sees it.
struct Slow {
    index: u32,
    client: Client,
    user: String,
    pause: watch::Sender<bool>,
    seen: Arc<Mutex<Seen>>,
}

/// What the commander to one is doing.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Commands to random members at 20/s until the next slow cycle.
    Normal { until: Instant },
    /// The slow receiver `which` does not read; 1 KiB commands to it at 150/s.
    Pressure { which: usize, since: Instant },
    /// It reads again; waiting for its `Recovered` event.
    Recovering { which: usize, since: Instant, before: usize },
}

/// Commands to one in `room`: at 20/s to random members, and in cycles at 150/s to a slow
/// receiver that stopped reading, until the relay drops it (the next command to it is refused
/// with `UNKNOWN_TARGET_USER`); then it reads again and recovers.
async fn commands_to_one(
    ctx: Arc<Ctx>,
    room: usize,
    commander: Member,
    targets: Vec<(u32, String)>,
    slow: Vec<Slow>,
) {
    let name = Plan::room(room);
    let (from, _, client) = commander;
    let mut rng = Rng::new(ctx.plan.seed ^ ((room as u64) << 8) ^ 3);
    let mut normal = pace(DIRECT_PER_SEC / PACE);
    let mut pressure = pace(PRESSURE_PER_SEC / PACE / PRESSURE_BATCH as f64);
    let start = Instant::now() + Duration::from_millis(1000 + 500 * room as u64);
    let mut phase = Phase::Normal { until: start };
    let mut next_slow = 0;
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        match phase {
            Phase::Normal { until } => {
                normal.tick().await;
                let (index, user) = &targets[rng.below(targets.len())];
                let result =
                    client.send_custom_command(&name, payload("to-one", n, 32), &[user]).await;
                command_result(&ctx, room, from, Targets::Only(vec![*index]), result);
                if Instant::now() >= until && !slow.is_empty() {
                    let which = next_slow % slow.len();
                    next_slow += 1;
                    let _ = slow[which].pause.send(true);
                    phase = Phase::Pressure { which, since: Instant::now() };
                }
            }
            Phase::Pressure { which, since } => {
                pressure.tick().await;
                let target = &slow[which];
                let mut batch = JoinSet::new();
                for _ in 0..PRESSURE_BATCH {
                    n += 1;
                    let (client, name, user) = (client.clone(), name.clone(), target.user.clone());
                    let body = payload("pressure", n, 1024);
                    batch.spawn(async move {
                        client.send_custom_command(&name, body, &[user.as_str()]).await
                    });
                }
                let mut dropped = false;
                while let Some(sent) = batch.join_next().await {
                    match sent {
                        Ok(Err(e)) if e.code() == ErrorCode::UNKNOWN_TARGET_USER => dropped = true,
                        Ok(result) => command_result(
                            &ctx,
                            room,
                            from,
                            Targets::Only(vec![target.index]),
                            result,
                        ),
                        Err(e) => ctx.tally.error(format!("pressure command task: {e}")),
                    }
                }
                if dropped {
                    // Dropped as too slow: let it read again. Its recoveries are counted
                    // first: once it reads, it can recover within milliseconds.
                    Tally::add(&ctx.tally.cuts);
                    let before = lock(&target.seen).recovered.len();
                    let _ = target.pause.send(false);
                    phase = Phase::Recovering { which, since: Instant::now(), before };
                } else if since.elapsed() > MAX_PRESSURE {
                    ctx.tally.error(format!("{} was never dropped as too slow", target.user));
                    let _ = target.pause.send(false);
                    phase = Phase::Normal { until: Instant::now() + SLOW_GAP };
                }
            }
            Phase::Recovering { which, since, before } => {
                // Not to the one recovering: it may not be back in the room yet.
                normal.tick().await;
                let (index, user) = &targets[rng.below(targets.len())];
                if *index != slow[which].index {
                    let result =
                        client.send_custom_command(&name, payload("to-one", n, 32), &[user]).await;
                    command_result(&ctx, room, from, Targets::Only(vec![*index]), result);
                }
                if lock(&slow[which].seen).recovered.len() > before {
                    let took = since.elapsed().as_millis() as u64;
                    ctx.tally.slowest_recovery_ms.fetch_max(took, Ordering::Relaxed);
                    Tally::add(&ctx.tally.cycles_done);
                    phase = Phase::Normal { until: Instant::now() + SLOW_GAP };
                } else if since.elapsed() > STEP {
                    let target = &slow[which];
                    let seen = lock(&target.seen);
                    ctx.tally.error(format!(
                        "{} did not recover within {STEP:?} (recovered {} before, {} now; paused {}; rooms {:?}; connected {}; {:?})",
                        target.user,
                        before,
                        seen.recovered.len(),
                        *target.pause.borrow(),
                        target.client.rooms(),
                        target.client.connection().is_some(),
                        target.client.stats(),
                    ));
                    phase = Phase::Normal { until: Instant::now() + SLOW_GAP };
                }
            }
        }
    }
    // Let a receiver still under pressure read again, and wait (boundedly) for its recovery.
    if let Phase::Pressure { which, .. } = phase {
        let _ = slow[which].pause.send(false);
    }
    for s in &slow {
        let _ = s.pause.send(false);
    }
}

/// How a churner leaves.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Logout,
    Close,
    Vanish,
}

/// One churn slot of `room`: clients that join, stay a little, and leave, until the end.
async fn churn(
    ctx: Arc<Ctx>,
    room: usize,
    slot: usize,
    endpoint: quinn::Endpoint,
    core: Vec<(u32, String)>,
) {
    let name = Plan::room(room);
    let mut rng = Rng::new(ctx.plan.seed ^ ((room as u64) << 16) ^ ((slot as u64) << 4) ^ 5);
    let mut n = 0;
    // Spread the first logins over 3 s: 60 handshakes at once, next to the stayers' traffic,
    // overflow the relay's socket buffer on a machine whose other core is busy.
    tokio::time::sleep(Duration::from_millis(rng.below(3000) as u64)).await;
    while !ctx.stopped() {
        n += 1;
        let user = format!("r{room}c{slot}n{n}");
        let life = Duration::from_millis(500 + rng.below(3000) as u64);
        let fate = match rng.below(10) {
            0 | 1 => Fate::Vanish,
            2 | 3 => Fate::Close,
            _ => Fate::Logout,
        };
        let token = ctx.relay.token(&user);
        let config = ctx.config(&user);
        if let Fate::Vanish = fate {
            let room_name = name.clone();
            match tokio::task::spawn_blocking(move || vanish(config, room_name, token, life)).await
            {
                Ok(Ok(())) => Tally::add(&ctx.tally.churn_kills),
                Ok(Err(e)) => join_failed(&ctx, &user, &e),
                Err(e) => ctx.tally.error(format!("vanishing churner {user}: {e}")),
            }
        } else {
            let joined = async {
                let (client, events) = Client::connect_with(&endpoint, config).await?;
                client.login_room(&name, &token).await?;
                Ok::<_, ClientError>((client, events))
            };
            let (client, mut events) = match tokio::time::timeout(STEP, joined).await {
                Ok(Ok(joined)) => joined,
                Ok(Err(e)) => {
                    join_failed(&ctx, &user, &e);
                    continue;
                }
                Err(_) => {
                    join_failed(&ctx, &user, &ClientError::Timeout);
                    continue;
                }
            };
            let drain = tokio::spawn(async move { while events.next().await.is_some() {} });
            // Now and then a command to one core member.
            if rng.below(2) == 0 {
                let (index, to) = &core[rng.below(core.len())];
                let result =
                    client.send_custom_command(&name, payload("churner", n, 48), &[to]).await;
                command_result(&ctx, room, u32::MAX, Targets::Only(vec![*index]), result);
            }
            tokio::time::sleep(life).await;
            if let Fate::Logout = fate {
                match tokio::time::timeout(STEP, client.logout_room(&name)).await {
                    Ok(Ok(())) => Tally::add(&ctx.tally.churn_logouts),
                    Ok(Err(e)) => ctx.tally.failed(&format!("churner {user} logout"), &e),
                    Err(_) => ctx.tally.error(format!("churner {user} logout: timed out")),
                }
            } else {
                Tally::add(&ctx.tally.churn_closes);
            }
            client.close().await;
            drop(client);
            if tokio::time::timeout(STEP, drain).await.is_err() {
                ctx.tally.error(format!("churner {user}: events did not end after close"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300) as u64)).await;
    }
}

/// A churner that could not join. A handshake that gets no answer within the client's idle
/// timeout (2 s here) fails (`NoAnswer`, or `Connect` when it timed out midway): it happens when
/// the relay's UDP socket drops packets (the kernel's receive buffer overflows while the relay,
/// in a debug build, shares a busy machine with 240 clients); counted, reported and bounded (at
/// most 5 % of attempts), not an error. Any other failure is one.
fn join_failed(ctx: &Ctx, user: &str, error: &ClientError) {
    match error {
        ClientError::Connect(_)
        | ClientError::NoAnswer { .. }
        | ClientError::Disconnected(_)
        | ClientError::Timeout => {
            Tally::add(&ctx.tally.churn_join_failures);
            let mut first = lock(&ctx.tally.first_join_failures);
            if first.len() < 5 {
                first.push(format!("{user}: {error}"));
            }
        }
        other => ctx.tally.failed(&format!("churner {user} joining"), other),
    }
}

/// A client on its own runtime and socket that joins `room`, reads for `life`, and vanishes:
/// the runtime is shut down, so nothing more is sent (no close); the relay must time it out.
fn vanish(
    config: ClientConfig,
    room: String,
    token: String,
    life: Duration,
) -> Result<(), ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for a vanishing client");
    let result = rt.block_on(async {
        let joined = async {
            let (client, events) = Client::connect(config).await?;
            client.login_room(&room, &token).await?;
            Ok::<_, ClientError>((client, events))
        };
        let (client, mut events) =
            tokio::time::timeout(STEP, joined).await.map_err(|_| ClientError::Timeout)??;
        let _ = tokio::time::timeout(life, async { while events.next().await.is_some() {} }).await;
        Ok::<_, ClientError>((client, events))
    });
    rt.shutdown_background();
    // Dropped after its runtime: the close it asks for can no longer be sent.
    drop(result?);
    Ok(())
}

/// Polls `done` every 50 ms until it holds or `limit` passes; whether it held.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Totals over the stayers' checks.
#[derive(Debug, Default)]
struct Checked {
    broadcasts: u64,
    commands: u64,
    commands_lost_while_out: u64,
    barrages: u64,
    barrage_duplicates: u64,
    recoveries: u64,
    connection_losses: u64,
}

/// Checks what `stayer` received against what its room accepted; failures go to `failures`.
fn check(stayer: &Stayer, log: &RoomLog, checked: &mut Checked, failures: &mut Vec<String>) {
    let seen = lock(&stayer.seen);
    let who = &stayer.user;
    for what in &seen.unexpected {
        failures.push(format!("{who}: unexpected: {what}"));
    }
    // Broadcasts: exactly the accepted IDs minus its own (order was checked on arrival).
    let expected: Vec<u64> = log
        .broadcasts
        .iter()
        .filter(|(_, from)| *from != stayer.index)
        .map(|(id, _)| *id)
        .collect();
    let missing: Vec<u64> =
        expected.iter().copied().filter(|id| !seen.broadcasts.contains(*id)).collect();
    if !missing.is_empty() || seen.broadcasts.count != expected.len() as u64 {
        failures.push(format!(
            "{who}: {} broadcasts received, {} expected; missing {:?}",
            seen.broadcasts.count,
            expected.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    checked.broadcasts += seen.broadcasts.count;
    // Commands: each addressed to it exactly once, except while it was out of the room.
    let mut addressed = Ids::default();
    for c in &log.commands {
        let mine = match &c.to {
            Targets::All => c.from != stayer.index,
            Targets::Only(to) => to.contains(&stayer.index),
        };
        if mine {
            addressed.insert(c.id);
        }
    }
    for id in seen.commands.iter() {
        if !addressed.contains(id) {
            failures.push(format!("{who}: command {id} received but not addressed to it"));
        }
    }
    for id in addressed.iter().filter(|id| !seen.commands.contains(*id)) {
        let excused =
            seen.gaps.iter().any(|&(before, after)| id > before && after.is_none_or(|a| id < a));
        if excused {
            checked.commands_lost_while_out += 1;
        } else {
            failures.push(format!("{who}: command {id} never received (gaps {:?})", seen.gaps));
        }
    }
    checked.commands += seen.commands.count;
    // Recovery never lost anything: the history covers every outage.
    for r in &seen.recovered {
        if !r.0 {
            failures.push(format!("{who}: incomplete recovery {r:?}"));
        }
    }
    checked.recoveries += seen.recovered.len() as u64;
    checked.connection_losses += seen
        .states
        .iter()
        .filter(|s| matches!(s, ConnectionState::Reconnecting { attempt: 1 }))
        .count() as u64;
    checked.barrages += seen.barrages.count;
    checked.barrage_duplicates += seen.barrage_duplicates;
    if seen.barrage_duplicates > 0 {
        failures.push(format!("{who}: {} barrage duplicates", seen.barrage_duplicates));
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    count_panics();
    if std::env::var_os("RUST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::from_default_env();
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let fds_start = open_fds();
    let began = Instant::now();
    let cpu_began = cpu_secs();
    let (rss_start, live_start) = (rss_kib(), live_kib());
    let udp_drops_start = udp_rcvbuf_errors();
    let plan = Plan::from_env();

    // The relay: default frequency limits, everyone from 127.0.0.1, vanished clients gone
    // after 2 s, small lane queues, short history, a larger socket buffer.
    let mut config = test_config();
    config.limits = RateLimits::default();
    config.max_connections_per_address = 10_000;
    config.idle_timeout_ms = IDLE.as_millis() as u64;
    config.max_members_per_room = 1000;
    config.lane_queue = LANE_QUEUE;
    config.history_size = HISTORY_SIZE;
    config.history_ttl_secs = HISTORY_TTL_SECS;
    // 240 clients share this process with the relay: on a machine whose other core is busy the
    // relay's socket overflows at the kernel's default 208 KiB and handshakes are lost. Ask for
    // more (Linux grants up to net.core.rmem_max; the drops are reported either way).
    config.udp_buffer_bytes = 2 * 1024 * 1024;
    let relay = TestRelay::start(config).await;
    let ctx = Arc::new(Ctx {
        plan: plan.clone(),
        relay,
        stop: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        tally: Tally::default(),
        logs: (0..plan.rooms).map(|_| Mutex::new(RoomLog::default())).collect(),
    });
    let bind = "127.0.0.1:0".parse().unwrap();
    let stayer_count = plan.rooms * plan.stayers;
    let endpoints: Vec<quinn::Endpoint> = (0..stayer_count.div_ceil(PER_ENDPOINT))
        .map(|_| quinn::Endpoint::client(bind).expect("endpoint"))
        .collect();
    let churn_endpoints: Vec<quinn::Endpoint> =
        (0..2).map(|_| quinn::Endpoint::client(bind).expect("endpoint")).collect();

    let mut stayers = connect_stayers(&ctx, &endpoints).await;
    let joined_after = began.elapsed();

    // Peak RSS, sampled.
    let peak = Arc::new(AtomicU64::new(rss_kib()));
    let sampler = tokio::spawn({
        let peak = Arc::clone(&peak);
        async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    // The traffic.
    let mut tasks = JoinSet::new();
    for room in 0..plan.rooms {
        let members: Vec<&Stayer> = stayers.iter().filter(|s| s.room == room).collect();
        let pick = |range: std::ops::Range<usize>| -> Vec<Member> {
            members[range].iter().map(|s| member(s)).collect()
        };
        let core: Vec<(u32, String)> = members
            .iter()
            .enumerate()
            .filter(|(i, _)| !plan.is_slow(*i))
            .map(|(_, s)| (s.index, s.user.clone()))
            .collect();
        let slow: Vec<Slow> = members
            .iter()
            .filter_map(|s| {
                s.pause.as_ref().map(|pause| Slow {
                    index: s.index,
                    client: s.client.clone(),
                    user: s.user.clone(),
                    pause: pause.clone(),
                    seen: Arc::clone(&s.seen),
                })
            })
            .collect();
        let everyone: Vec<(u32, String)> =
            members.iter().map(|s| (s.index, s.user.clone())).collect();
        let multi = member(members[MULTI]);
        let direct = member(members[DIRECT]);
        let others = |among: &[(u32, String)], me: u32| {
            among.iter().filter(|c| c.0 != me).cloned().collect::<Vec<_>>()
        };
        tasks.spawn(broadcasts(Arc::clone(&ctx), room, pick(BROADCASTERS)));
        tasks.spawn(barrages(Arc::clone(&ctx), room, pick(BARRAGERS)));
        tasks.spawn(commands_to_many(
            Arc::clone(&ctx),
            room,
            multi.clone(),
            others(&core, multi.0),
        ));
        tasks.spawn(commands_to_one(
            Arc::clone(&ctx),
            room,
            direct.clone(),
            others(&everyone, direct.0),
            slow,
        ));
        for slot in 0..plan.churn {
            let endpoint = churn_endpoints[slot % churn_endpoints.len()].clone();
            tasks.spawn(churn(Arc::clone(&ctx), room, slot, endpoint, core.clone()));
        }
    }

    // Warm-up, then the rest of the run.
    let run = Duration::from_secs(plan.secs);
    let warm_up = (run / 4).min(Duration::from_secs(5));
    tokio::time::sleep(warm_up).await;
    let (live_warm, rss_warm_raw) = (live_kib(), rss_kib());
    trim();
    let rss_warm = rss_kib();
    tokio::time::sleep(run - warm_up).await;
    // The run must include a whole slow cycle (a receiver that does not read is dropped and
    // recovers): on a machine whose other core is busy it can take longer than the run, so the
    // traffic goes on until one has completed, up to MAX_EXTRA more.
    let extra = Instant::now();
    while Tally::get(&ctx.tally.cycles_done) == 0 && extra.elapsed() < MAX_EXTRA {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let extended = extra.elapsed();
    ctx.stop.store(true, Ordering::Relaxed);
    let stopping = Instant::now();
    while let Some(done) =
        tokio::time::timeout(STEP, tasks.join_next()).await.expect("tasks stop in time")
    {
        done.expect("a sender or churner task panicked");
    }
    let stopped_in = stopping.elapsed();

    // A fence per room: once every stayer has the room's last broadcast, it has everything sent
    // before it (one lane, in order).
    let mut fences = Vec::new();
    for room in 0..plan.rooms {
        let sender = stayers.iter().find(|s| s.room == room).expect("a broadcaster");
        let id = tokio::time::timeout(
            STEP,
            sender.client.send_broadcast_message(&Plan::room(room), "fence"),
        )
        .await
        .expect("fence in time")
        .expect("fence accepted");
        lock(&ctx.logs[room]).broadcasts.push((id, sender.index));
        fences.push((sender.index, id));
    }
    let fenced = wait_for(STEP, || {
        stayers.iter().all(|s| {
            let (sender, id) = fences[s.room];
            s.index == sender || lock(&s.seen).broadcasts.contains(id)
        })
    })
    .await;

    // The checks of what every stayer received.
    let mut failures: Vec<String> = Vec::new();
    if !fenced {
        failures.push("not every stayer received its room's last broadcast in time".into());
    }
    let mut checked = Checked::default();
    for stayer in &stayers {
        let log = lock(&ctx.logs[stayer.room]);
        check(stayer, &log, &mut checked, &mut failures);
    }
    for (room, log) in ctx.logs.iter().enumerate() {
        // Every ID up to the last was accepted by someone we know of (a broadcast whose reply
        // was lost would show here).
        let log = lock(log);
        let mut ids: Vec<u64> = log.broadcasts.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if ids != (1..=ids.len() as u64).collect::<Vec<_>>() {
            failures.push(format!("room {room}: accepted broadcast IDs are not 1..=n"));
        }
    }
    let client_stats: Vec<_> = stayers.iter().map(|s| s.client.stats()).collect();
    let reconnects: u64 = client_stats.iter().map(|s| s.reconnects).sum();
    let duplicates_dropped: u64 = client_stats.iter().map(|s| s.broadcast_duplicates).sum();
    let server_during = ctx.relay.handle.stats();
    let relay_drops = socket_drops(&[ctx.relay.addr.port()]);
    let client_ports: Vec<u16> = endpoints
        .iter()
        .chain(&churn_endpoints)
        .filter_map(|e| e.local_addr().ok().map(|a| a.port()))
        .collect();
    let client_drops = socket_drops(&client_ports);

    // Everyone leaves; the relay must come back to its start level.
    ctx.closing.store(true, Ordering::Relaxed);
    for stayer in &stayers {
        stayer.client.close().await;
    }
    for endpoint in endpoints.iter().chain(&churn_endpoints) {
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    }
    for stayer in stayers.drain(..) {
        let Stayer { client, task, .. } = stayer;
        drop(client);
        if tokio::time::timeout(STEP, task).await.is_err() {
            failures.push("a stayer's events did not end after close".into());
        }
    }
    drop(endpoints);
    drop(churn_endpoints);
    let handle = ctx.relay.handle.clone();
    let drained = wait_for(STEP, || {
        let stats = handle.stats();
        stats.connections_open == 0 && stats.lanes_open == 0
    })
    .await;
    let server_after = handle.stats();
    if !drained {
        failures.push(format!(
            "connections_open {} and lanes_open {} after everyone left",
            server_after.connections_open, server_after.lanes_open
        ));
    }
    let rooms_gone =
        wait_for(Duration::from_secs(2 * HISTORY_TTL_SECS + 10), || handle.room_count() == 0).await;
    if !rooms_gone {
        failures.push(format!("{} rooms left after their history expired", handle.room_count()));
    }
    sampler.abort();
    // Churners that were vanishing when the traffic stopped end on threads of their own (their
    // runtime and socket go when their life is over): on a busy machine that takes a while.
    // Wait for their sockets to close before measuring what is left.
    let _ = wait_for(Duration::from_secs(15), || open_fds() <= fds_start + 1).await;
    let (live_end, rss_end_raw) = (live_kib(), rss_kib());
    let logs_kib = log_bytes(&ctx.logs) / 1024;
    let fds_end = open_fds();
    let udp_drops = udp_rcvbuf_errors().saturating_sub(udp_drops_start);
    trim();
    let rss_end = rss_kib();
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_end_raw);

    let tally = &ctx.tally;
    let cpu = cpu_secs() - cpu_began;
    let elapsed = began.elapsed();
    println!(
        "soak summary ({} s of traffic + {:.1} s until a slow cycle completed, seed {})",
        plan.secs,
        extended.as_secs_f64(),
        plan.seed
    );
    println!(
        "  clients: {} stayers ({} slow) in {} rooms, joined in {:.1} s; churn: {} slots/room, {} logouts, {} closes, {} vanished, {} could not join",
        stayer_count,
        SLOW * plan.rooms,
        plan.rooms,
        joined_after.as_secs_f64(),
        plan.churn,
        Tally::get(&tally.churn_logouts),
        Tally::get(&tally.churn_closes),
        Tally::get(&tally.churn_kills),
        Tally::get(&tally.churn_join_failures),
    );
    println!(
        "  sent (accepted): broadcast {}, barrage {} (+{} lost on the way: relay received {} barrage datagrams; UDP receive-buffer drops: relay socket {}, shared client sockets {}, host {}), command to one {}, to several {}",
        Tally::get(&tally.broadcasts),
        Tally::get(&tally.barrages),
        Tally::get(&tally.barrage_timeouts),
        server_during.datagrams_received,
        relay_drops,
        client_drops,
        udp_drops,
        Tally::get(&tally.commands_one),
        Tally::get(&tally.commands_many),
    );
    println!(
        "  received by stayers: broadcast {}, command {} ({} lost while out of the room, excused), barrage {}",
        checked.broadcasts, checked.commands, checked.commands_lost_while_out, checked.barrages,
    );
    println!(
        "  slow receivers: {} (relay counter), {} cuts seen by the sender, {} recoveries (slowest {} ms after the cut); connections lost {}, reconnects {}; replayed duplicates dropped {}",
        server_during.slow_receivers,
        Tally::get(&tally.cuts),
        checked.recoveries,
        Tally::get(&tally.slowest_recovery_ms),
        checked.connection_losses,
        reconnects,
        duplicates_dropped,
    );
    println!(
        "  relay: {} connections accepted, {} logins, {} requests refused ({} rate-limited, {} commands whose target was just dropped as slow), {} datagrams sent; after: {} connections, {} lanes, {} rooms",
        server_during.connections_accepted,
        server_during.logins,
        server_during.requests_refused,
        Tally::get(&tally.rate_limited),
        Tally::get(&tally.commands_to_dropped),
        server_during.datagrams_sent,
        server_after.connections_open,
        server_after.lanes_open,
        handle.room_count(),
    );
    println!(
        "  RSS MiB: start {:.1}, warm {:.1} ({:.1} before trim), peak {:.1}, end {:.1} ({:.1} before trim); heap in use MiB: start {:.1}, warm {:.1}, end {:.1} (of which the test's logs {:.1})",
        mib(rss_start),
        mib(rss_warm),
        mib(rss_warm_raw),
        mib(rss_peak),
        mib(rss_end),
        mib(rss_end_raw),
        mib(live_start),
        mib(live_warm),
        mib(live_end),
        mib(logs_kib),
    );
    println!(
        "  open file descriptors: {fds_start} at the start, {fds_end} at the end; CPU {:.1} s over {:.1} s (stopping took {:.1} s)",
        cpu,
        elapsed.as_secs_f64(),
        stopped_in.as_secs_f64(),
    );

    for failure in lock(&tally.first_join_failures).iter() {
        println!("  churner that could not join: {failure}");
    }
    let churn_attempts = Tally::get(&tally.churn_logouts)
        + Tally::get(&tally.churn_closes)
        + Tally::get(&tally.churn_kills)
        + Tally::get(&tally.churn_join_failures);
    if Tally::get(&tally.churn_join_failures) * 20 > churn_attempts {
        failures.push(format!(
            "{} of {churn_attempts} churners could not join: {:?}",
            Tally::get(&tally.churn_join_failures),
            lock(&tally.first_join_failures)
        ));
    }
    for e in lock(&tally.first_errors).iter() {
        failures.push(format!("sender/churner: {e}"));
    }
    if Tally::get(&tally.errors) > 0 {
        failures.push(format!("{} sender/churner errors in all", Tally::get(&tally.errors)));
    }
    if server_during.slow_receivers == 0 {
        failures.push("no receiver was ever dropped as too slow".into());
    }
    if checked.recoveries == 0 {
        failures.push("no slow receiver ever recovered".into());
    }
    if rss_end > rss_warm + 64 * 1024 {
        failures.push(format!("RSS grew from {:.1} to {:.1} MiB", mib(rss_warm), mib(rss_end)));
    }
    // What the allocator reports in use: a leak per connection or per message shows here, free
    // memory the allocator keeps does not.
    let leftover = live_end.saturating_sub(live_start + logs_kib);
    if leftover > 16 * 1024 {
        failures.push(format!("{:.1} MiB of heap still in use after everyone left", mib(leftover)));
    }
    if fds_end > fds_start + 32 {
        failures
            .push(format!("{fds_start} file descriptors open at the start, {fds_end} at the end"));
    }
    let panics = PANICS.load(Ordering::SeqCst);
    if panics > 0 {
        failures.push(format!("{panics} panics"));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
