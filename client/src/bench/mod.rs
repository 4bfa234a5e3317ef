//! `qrelay-cli bench`: the load tool, for the scales criterion cannot reach.
//!
//! A run opens N connections (spread over a few shared UDP sockets) in M rooms, waits until
//! every receiver has seen its room's members join, lets S of the connections send at a total
//! target rate for a fixed duration, drains, and reports per message kind: deliveries/s,
//! one-way latency (the sender's stamp in the payload; every client is in this process),
//! lost and duplicated reliable messages, dropped and late barrage, and the relay's CPU time
//! and memory. Every phase is bounded in time.
//!
//! - `fleet`: the connection phase;
//! - `traffic`: senders, receivers and the live recorders;
//! - `report`: expected against received, percentiles, output;
//! - `procfs`: CPU time, memory and UDP drops from `/proc`.

mod fleet;
mod pacer;
pub mod peer;
mod procfs;
mod report;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use qrelay::auth::TokenKey;
use qrelay::certs::{DevPki, load_certs};
use qrelay::client::{ClientConfig, ReconnectPolicy};
use qrelay::protocol::{MAX_PAYLOAD, User};
use qrelay::server::{Identity, RateLimits, RelayThread, ServerConfig};
use serde_json::json;
use tokio::sync::watch;

use fleet::{Fleet, FleetPlan, Minter};
use procfs::CpuSource;
use report::{
    ConnectReport, KindReport, Latency, Ledger, NodeReport, Report, ServerReport,
    cpu_per_delivery_us, delivery, per_second,
};
use traffic::{BARRAGE_LATE, CommandTo, Kind, Live, Pacing, STAMP_LEN, SendPlan, run_sender};

/// Most connections one run opens: 10,000 receivers and a sender in one room (above the
/// relay's default `max_connections`; `benches/relay-bench.toml` allows it).
pub const MAX_CONNECTIONS: usize = 10_001;
/// Longest sending phase.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// Longest wait for outstanding deliveries, and for rooms to settle.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Highest total send rate, messages per second.
const MAX_RATE: f64 = 10_000_000.0;
/// How long the barrage count must stand still before the drain ends.
const BARRAGE_QUIET: Duration = Duration::from_millis(300);
/// How long closing connections may take at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Connections below which memory per connection is not reported.
const MIN_CONNECTIONS_FOR_MEMORY: usize = 100;

/// Options of `qrelay-cli bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Client connections to open (each logs in to one room), at most 10001.
    #[arg(long, default_value_t = 100, value_name = "N")]
    connections: usize,
    /// Rooms; connection i joins room i mod M.
    #[arg(long, default_value_t = 1, value_name = "M")]
    rooms: usize,
    /// How many of the connections send (the first S; 0 for an idle run).
    #[arg(long, default_value_t = 1, value_name = "S")]
    senders: usize,
    /// Message kinds to send, in turn (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "broadcast",
        value_name = "KIND,..."
    )]
    kind: Vec<Kind>,
    /// Whom a custom command goes to: everyone else in the room, or one member in turn.
    #[arg(long, value_enum, default_value = "all", value_name = "TO")]
    command_to: CommandTo,
    /// Target messages per second, all senders together.
    #[arg(long, default_value_t = 1000.0, value_name = "PER_SECOND")]
    rate: f64,
    /// How senders spread their messages: `even` sends each at its own instant (k / rate
    /// after the start); `tick` wakes every max(1 / rate, 1 ms) and sends what is due as a
    /// burst, which a relay can pack into fewer packets.
    #[arg(long, value_enum, default_value = "even", value_name = "MODE")]
    pacing: Pacing,
    /// How long to send, e.g. 10s or 1m (at most 10m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Payload bytes of each message (16 to 1024; the first 16 carry the timestamp).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    payload: usize,
    /// Run a relay inside this process (127.0.0.1:0, its own thread with a current_thread
    /// runtime, no frequency limits, in-memory certificates) instead of using --server.
    #[arg(long)]
    in_process: bool,
    /// PID of the external relay, to report its CPU time and memory; with --spread, one PID
    /// per --server address, in the same order (comma-separated), for each node's CPU time
    /// (memory is the first's).
    #[arg(long, value_delimiter = ',', value_name = "PID[,PID...]")]
    server_pid: Vec<u32>,
    /// Spread the connections over every --server address (relays of one cluster): the
    /// senders connect to the first, receiver i to address i mod the number of addresses.
    /// Without it every connection uses the first address.
    #[arg(long)]
    spread: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Connections per UDP socket (quinn endpoint).
    #[arg(long, default_value_t = 100, value_name = "N")]
    per_endpoint: usize,
    /// Receive and send buffer of each of those sockets, bytes (capped by the kernel's
    /// net.core.rmem_max and wmem_max).
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    socket_buffer: usize,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 20, value_name = "N")]
    connect_parallel: usize,
    /// Longest wait for every receiver to see its room's members before sending.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    settle: Duration,
    /// Runtime threads of this tool (1: everything on one thread, which keeps each delivery
    /// free of hops between cores; more when one thread cannot keep up with the traffic).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub threads: u16,
    /// Longest wait for outstanding deliveries after sending stops.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    drain: Duration,
}

/// The relay a run measures.
pub enum Target {
    /// A relay on a thread of this process.
    InProcess,
    /// A relay elsewhere on this machine.
    External {
        /// Address, TLS name, CA, timeouts (boxed: it is far larger than the other variant).
        client: Box<ClientConfig>,
        /// Mints (or hands out) a login token for a user ID.
        token: Minter,
        /// Its process (one per relay with `--spread`), for CPU time and memory.
        pids: Vec<u32>,
    },
}

/// Runs `qrelay-cli bench` and prints its report; fails when reliable messages were lost.
pub async fn main(common: &super::Common, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let target = if args.in_process {
        Target::InProcess
    } else {
        let roots = load_certs(&common.ca).context(
            "no CA certificate to trust (pass --ca, or use --in-process to start a relay here)",
        )?;
        let mut client =
            ClientConfig::new(common.server.clone(), &common.server_name, roots, placeholder());
        client.request_timeout = Duration::from_secs_f64(common.timeout);
        client.connect_timeout = client.request_timeout;
        // A lost connection is a result to report, not something to paper over.
        client.reconnect = ReconnectPolicy::disabled();
        let token: Minter = match &common.token {
            Some(token) => {
                let token = token.clone();
                Arc::new(move |_: &str| Ok(token.clone()))
            }
            None => {
                let key = TokenKey::from_file(&common.secret).with_context(|| {
                    format!("cannot read the token secret {}", common.secret.display())
                })?;
                Arc::new(move |user: &str| Ok(key.mint(user, None, true, TOKEN_TTL)?))
            }
        };
        Target::External { client: Box::new(client), token, pids: args.server_pid.clone() }
    };
    let json = args.json;
    let report = run(&args, target).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How long the tokens the tool mints are valid.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

fn placeholder() -> User {
    User { id: "bench".into(), name: "bench".into() }
}

/// Checks the options against the tool's bounds.
fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=MAX_CONNECTIONS).contains(&args.connections),
        "--connections must be 1 to {MAX_CONNECTIONS}"
    );
    ensure!((1..=args.connections).contains(&args.rooms), "--rooms must be 1 to --connections");
    ensure!(args.senders <= args.connections, "--senders must be at most --connections");
    ensure!(
        args.rate > 0.0 && args.rate <= MAX_RATE,
        "--rate must be above 0 and at most {MAX_RATE}"
    );
    ensure!(
        !args.duration.is_zero() && args.duration <= MAX_DURATION,
        "--duration must be above 0 and at most 10m"
    );
    ensure!(
        (STAMP_LEN..=MAX_PAYLOAD).contains(&args.payload),
        "--payload must be {STAMP_LEN} to {MAX_PAYLOAD} bytes"
    );
    ensure!(!args.kind.is_empty(), "--kind needs at least one kind");
    ensure!(args.per_endpoint >= 1 && args.connect_parallel >= 1, "counts must be at least 1");
    ensure!(
        args.settle <= MAX_WAIT && args.drain <= MAX_WAIT,
        "--settle and --drain must be at most 5m"
    );
    ensure!(!(args.spread && args.in_process), "--spread needs relays given with --server");
    ensure!(
        args.spread || args.server_pid.len() <= 1,
        "several --server-pid PIDs need --spread (one per --server address)"
    );
    Ok(())
}

/// Which of `nodes` relays connection `conn` uses: the senders (the first `senders`
/// connections) the first, receivers round-robin over all, by connection index (so with two
/// relays, the receiver of a 1 → 1 run is on the second).
fn node_of(conn: usize, senders: usize, nodes: usize) -> usize {
    if conn < senders { 0 } else { conn % nodes }
}

/// Runs one load scenario against `target` and returns its report.
pub async fn run(args: &BenchArgs, target: Target) -> anyhow::Result<Report> {
    validate(args)?;
    let run_id = rand::random::<u32>();
    let in_process = matches!(target, Target::InProcess);
    let (relay, client, token, pids) = match target {
        Target::InProcess => {
            let (relay, client, token) = start_relay(args.connections)?;
            (Some(relay), client, token, Vec::new())
        }
        Target::External { client, token, pids } => (None, *client, token, pids),
    };
    let pid = pids.first().copied();
    // One source per relay measured (the first is the relay of the senders).
    let cpus: Vec<CpuSource> = match &relay {
        Some(relay) => relay.os_thread_id().map(CpuSource::Thread).into_iter().collect(),
        None => pids.iter().map(|&pid| CpuSource::Process(pid)).collect(),
    };
    // None when nothing is measured (no --server-pid), not an empty sum of zero.
    let cpu_times =
        || (!cpus.is_empty()).then(|| cpus.iter().map(CpuSource::cpu_time).collect()).flatten();
    let total = |times: &Option<Vec<Duration>>| times.as_ref().map(|t| t.iter().sum::<Duration>());
    let measured = match (&relay, pids.as_slice()) {
        (Some(_), _) => "in-process relay thread".to_string(),
        (None, []) => report::NOT_MEASURED.to_string(),
        (None, [pid]) => format!("pid {pid}"),
        (None, pids) => {
            let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
            format!("pids {} together", pids.join(", "))
        }
    };
    // Resolved once for every connection of the run.
    let addrs = client.server.resolve().await?;
    let servers: Vec<SocketAddr> = match addrs.first() {
        None => anyhow::bail!("--server has no address"),
        Some(&first) if !args.spread => vec![first],
        Some(_) => addrs,
    };
    ensure!(
        servers.iter().all(|s| s.is_ipv6() == servers[0].is_ipv6()),
        "--spread needs the --server addresses in one address family"
    );
    ensure!(
        pids.len() <= 1 || pids.len() == servers.len(),
        "--server-pid gave {} PIDs for {} --server addresses",
        pids.len(),
        servers.len()
    );
    let server_ports: Vec<u16> = servers.iter().map(SocketAddr::port).collect();
    let udp_before = procfs::udp_buffer_errors();
    let server_drops_before = procfs::udp_socket_drops(&server_ports);
    let memory_before = pid.and_then(|pid| procfs::memory(Some(pid)));

    let plan = Arc::new(fleet_plan(args, run_id, servers, client, token));
    let live = Arc::new(Live::new(args.connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let connect_cpu_start = total(&cpu_times());
    let mut fleet = fleet::connect(&plan, live.clone(), stop_rx).await?;
    if let (Some(a), Some(b)) = (connect_cpu_start, total(&cpu_times())) {
        let used = b.saturating_sub(a);
        fleet.report.server_cpu_seconds = Some(used.as_secs_f64());
        fleet.report.server_cpu_per_handshake_us = (fleet.report.logged_in > 0)
            .then(|| used.as_secs_f64() * 1e6 / fleet.report.logged_in as f64);
    }
    let membership = fleet.membership(&plan);
    settle(&mut fleet.report, &live, &membership, args.settle).await;
    let memory_loaded = pid.and_then(|pid| procfs::memory(Some(pid)));

    // Traffic.
    let own = CpuSource::Process(std::process::id());
    let cpus_start = cpu_times();
    let own_start = own.cpu_time();
    let datagrams_start = fleet.datagrams_received();
    let start_ns = live.now_ns();
    let start = Instant::now();
    let draining = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(traffic_progress(live.clone(), start, draining.clone()));
    let senders = spawn_senders(args, &plan, &fleet, &live);
    let mut sender_tallies = Vec::with_capacity(senders.len());
    for sender in senders {
        sender_tallies.push(
            sender.await.context("a sender task failed")?.context("a sender's pacer failed")?,
        );
    }
    let send_seconds = start.elapsed().as_secs_f64();
    draining.store(true, Ordering::Relaxed);
    let ledger = Ledger::new(&membership, &sender_tallies, args.command_to);
    drain(&live, &ledger, &membership, args).await;
    let window = start.elapsed();
    let drain_seconds = window.as_secs_f64() - send_seconds;
    let cpus_end = cpu_times();
    let own_end = own.cpu_time();
    let datagrams_received = fleet.datagrams_received() - datagrams_start;
    progress.abort();

    // Collect.
    let _ = stop_tx.send(true);
    let mut receivers = Vec::with_capacity(fleet.receivers.len());
    for (conn, task) in std::mem::take(&mut fleet.receivers) {
        receivers.push((conn, task.await.context("a receiver task failed")?));
    }
    let client_memory = procfs::memory(None);
    let client_ports: Vec<u16> =
        fleet.endpoints.iter().filter_map(|e| e.local_addr().ok()).map(|a| a.port()).collect();
    let client_socket_drops = procfs::udp_socket_drops(&client_ports);
    let server_socket_drops = match (server_drops_before, procfs::udp_socket_drops(&server_ports)) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let counters = relay.as_ref().map(|relay| relay.handle().stats());
    close(&mut fleet).await;
    if let Some(relay) = relay {
        relay.stop().await;
    }
    let memory_after = pid.and_then(|pid| procfs::memory(Some(pid)));
    let udp_buffer_drops = match (udp_before, procfs::udp_buffer_errors()) {
        (Some((r0, s0)), Some((r1, s1))) => Some((r1.saturating_sub(r0), s1.saturating_sub(s0))),
        _ => None,
    };

    // Report.
    let last_ns = live.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_window = Duration::from_nanos(last_ns.saturating_sub(start_ns));
    let mut kinds = Vec::new();
    let mut all_delivered = 0;
    let (mut lost, mut duplicates) = (0, 0);
    for kind in Kind::ALL.into_iter().filter(|k| args.kind.contains(k)) {
        let mut sent = traffic::Sent::default();
        for tally in &sender_tallies {
            let s = &tally.kinds[kind.index()];
            sent.sent += s.sent;
            sent.accepted += s.accepted;
            sent.timeouts += s.timeouts;
            sent.errors += s.errors;
            for (code, n) in &s.refused {
                *sent.refused.entry(code.clone()).or_default() += n;
            }
        }
        let d = delivery(kind, &ledger, &membership, &receivers);
        all_delivered += d.delivered;
        if kind.reliable() {
            lost += d.missing;
            duplicates += d.duplicates;
        }
        kinds.push(KindReport {
            kind,
            sent: sent.sent,
            accepted: sent.accepted,
            refused: sent.refused,
            timeouts: sent.timeouts,
            errors: sent.errors,
            deliveries_per_sec: per_second(d.delivered, delivery_window),
            latency: Latency::of(&live.histogram(kind)),
            delivery: d,
            lost: if kind.reliable() { d.missing } else { 0 },
            dropped: if kind.reliable() { 0 } else { d.missing },
        });
    }
    let mut rooms_closed = BTreeMap::new();
    let (mut disconnected, mut foreign) = (0, 0);
    for (_, tally) in &receivers {
        if let Some(code) = &tally.room_closed {
            *rooms_closed.entry(code.clone()).or_default() += 1;
        }
        disconnected += u64::from(tally.disconnected);
        foreign += tally.foreign;
    }
    // Per relay measured, then together.
    let cpus_used: Option<Vec<Duration>> = match (&cpus_start, &cpus_end) {
        (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(a, b)| b.saturating_sub(*a)).collect()),
        _ => None,
    };
    let cpu_used = total(&cpus_used);
    let nodes = node_reports(args, &plan, &membership, &receivers, &pids, cpus_used.as_deref());
    // This process's CPU time over the same window, less the in-process relay's.
    let client_cpu_seconds = match (own_start, own_end) {
        (Some(a), Some(b)) => {
            let relay_part = if in_process { cpu_used.unwrap_or_default() } else { Duration::ZERO };
            Some(b.saturating_sub(a).saturating_sub(relay_part).as_secs_f64())
        }
        _ => None,
    };
    let logged_in = fleet.report.logged_in;
    let server = ServerReport {
        measured,
        cpu_seconds: cpu_used.map(|c| c.as_secs_f64()),
        cpu_utilisation: cpu_used.map(|c| c.as_secs_f64() / window.as_secs_f64().max(1e-3)),
        cpu_per_delivery_us: cpu_used.and_then(|c| cpu_per_delivery_us(c, all_delivered)),
        memory_before,
        memory_loaded,
        memory_after,
        kib_per_connection: match (memory_before, memory_loaded) {
            // With fewer connections the process's own noise swamps the figure.
            (Some(before), Some(loaded)) if logged_in >= MIN_CONNECTIONS_FOR_MEMORY => {
                Some(loaded.rss_kib.saturating_sub(before.rss_kib) as f64 / logged_in as f64)
            }
            _ => None,
        },
        counters,
    };
    Ok(Report {
        scenario: scenario(args),
        connect: fleet.report.clone(),
        send_seconds,
        drain_seconds,
        kinds,
        rooms_closed,
        disconnected,
        foreign_messages: foreign,
        late_sends: sender_tallies.iter().map(|s| s.late_sends).sum(),
        max_send_lag_ms: sender_tallies
            .iter()
            .map(|s| s.max_lag.as_secs_f64() * 1e3)
            .fold(0.0, f64::max),
        server,
        nodes,
        client_memory,
        client_cpu_seconds,
        udp_buffer_drops,
        server_socket_drops,
        client_socket_drops,
        datagrams_received,
        lost,
        duplicates,
    })
}

/// Starts the in-process relay: benchmark limits, room for every connection, in-memory
/// certificates and token key. Returns it with the client settings and token minter.
fn start_relay(connections: usize) -> anyhow::Result<(RelayThread, ClientConfig, Minter)> {
    let pki = DevPki::generate().context("cannot generate certificates")?;
    let (chain, key) = pki.server_identity().context("certificate")?;
    let secret: [u8; 32] = rand::random();
    let tokens = TokenKey::new(&secret);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        limits: RateLimits::unlimited(),
        max_connections: connections + 100,
        // Every connection of the tool comes from 127.0.0.1, and connects in parallel bursts.
        max_connections_per_address: connections + 100,
        retry_above_handshakes: connections + 100,
        max_members_per_room: connections + 1,
        http: None,
        web: None,
        ..ServerConfig::default()
    };
    let relay = RelayThread::start(config, Identity::new(chain, key, &secret))
        .context("cannot start the in-process relay")?;
    let mut client = ClientConfig::new(
        relay.local_addr(),
        "localhost",
        vec![pki.ca().context("CA certificate")?],
        placeholder(),
    );
    // A lost connection is a result to report, not something to paper over.
    client.reconnect = ReconnectPolicy::disabled();
    let token = Arc::new(move |user: &str| Ok(tokens.mint(user, None, true, TOKEN_TTL)?));
    Ok((relay, client, token))
}

/// Each relay's share of the run: its connections, the deliveries to them and (with a PID per
/// relay) its CPU time over the traffic window, `cpus` in the order of `plan.servers`.
fn node_reports(
    args: &BenchArgs,
    plan: &FleetPlan,
    membership: &report::Membership,
    receivers: &[(usize, traffic::ReceiverTally)],
    pids: &[u32],
    cpus: Option<&[Duration]>,
) -> Vec<NodeReport> {
    let mut nodes: Vec<NodeReport> = plan
        .servers
        .iter()
        .enumerate()
        .map(|(i, server)| NodeReport {
            server: server.to_string(),
            pid: (pids.len() == plan.servers.len()).then(|| pids[i]),
            cpu_seconds: cpus.filter(|c| c.len() == plan.servers.len()).map(|c| c[i].as_secs_f64()),
            ..NodeReport::default()
        })
        .collect();
    for (conn, room) in membership.room_of.iter().enumerate() {
        if room.is_some() {
            let node = &mut nodes[plan.server_of[conn]];
            if conn < args.senders { node.senders += 1 } else { node.receivers += 1 }
        }
    }
    for (conn, tally) in receivers {
        let kinds = args.kind.iter().map(|k| tally.kinds[k.index()].messages);
        nodes[plan.server_of[*conn]].deliveries += kinds.sum::<u64>();
    }
    for node in &mut nodes {
        node.cpu_per_delivery_us = node
            .cpu_seconds
            .and_then(|c| cpu_per_delivery_us(Duration::from_secs_f64(c), node.deliveries));
    }
    nodes
}

/// Users, rooms and sockets of a run.
fn fleet_plan(
    args: &BenchArgs,
    run_id: u32,
    servers: Vec<SocketAddr>,
    mut client: ClientConfig,
    token: Minter,
) -> FleetPlan {
    // The tool tells senders apart by the stamp in the payload and only counts members: a
    // member list in every client would cost it memory for the square of a room's size
    // (10⁸ entries for 10,000 receivers in one room).
    client.track_members = false;
    let n = args.connections;
    let room_of: Vec<usize> = (0..n).map(|i| i % args.rooms).collect();
    FleetPlan {
        server_of: (0..n).map(|i| node_of(i, args.senders, servers.len())).collect(),
        servers,
        client,
        token,
        users: (0..n).map(|i| format!("b{run_id:08x}-{i}")).collect(),
        room_names: room_of.iter().map(|r| format!("bench-{run_id:08x}-{r}")).collect(),
        room_of,
        rooms: args.rooms,
        per_endpoint: args.per_endpoint,
        parallel: args.connect_parallel,
        socket_buffer: args.socket_buffer,
    }
}

/// Waits until every receiver has seen every other logged-in member of its room (bounded).
async fn settle(
    report: &mut ConnectReport,
    live: &Live,
    membership: &report::Membership,
    bound: Duration,
) {
    let mut sizes = vec![0usize; membership.rooms];
    for room in membership.room_of.iter().flatten() {
        sizes[*room] += 1;
    }
    let receivers: Vec<(usize, usize)> = membership
        .room_of
        .iter()
        .enumerate()
        .filter_map(|(conn, room)| room.map(|room| (conn, sizes[room] - 1)))
        .collect();
    let settled = || {
        receivers
            .iter()
            .filter(|(conn, others)| live.members[*conn].load(Ordering::Relaxed) >= *others)
            .count()
    };
    let start = Instant::now();
    let mut last_print = Instant::now();
    while settled() < receivers.len() && start.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[settle {:5.1}s] {}/{} receivers have seen their whole room",
                start.elapsed().as_secs_f64(),
                settled(),
                receivers.len()
            );
        }
    }
    report.settled = settled() == receivers.len();
    report.settle_seconds = start.elapsed().as_secs_f64();
}

/// Starts one sender task per sending connection that logged in.
fn spawn_senders(
    args: &BenchArgs,
    plan: &Arc<FleetPlan>,
    fleet: &Fleet,
    live: &Arc<Live>,
) -> Vec<tokio::task::JoinHandle<std::io::Result<traffic::SenderTally>>> {
    let senders: Vec<usize> = (0..args.senders).filter(|&i| fleet.clients[i].is_some()).collect();
    // One list per room, shared by its senders (not one per sender: every connection may send).
    let mut members = vec![Vec::new(); plan.rooms];
    for (conn, client) in fleet.clients.iter().enumerate() {
        if client.is_some() {
            members[plan.room_of[conn]].push((conn, plan.users[conn].clone()));
        }
    }
    let members: Vec<Arc<[(usize, String)]>> = members.into_iter().map(Arc::from).collect();
    let mut tasks = Vec::with_capacity(senders.len());
    for &conn in &senders {
        let Some(client) = fleet.clients[conn].clone() else { continue };
        let send = SendPlan {
            conn,
            room: plan.room_names[conn].clone(),
            rate: args.rate / senders.len() as f64,
            kinds: args.kind.clone(),
            command_to: args.command_to,
            members: members[plan.room_of[conn]].clone(),
            payload: args.payload,
            duration: args.duration,
            pacing: args.pacing,
        };
        tasks.push(tokio::spawn(run_sender(client, send, live.clone())));
    }
    tasks
}

/// Waits (at most `--drain`) until every expected reliable delivery has arrived, then until
/// barrage stops arriving.
async fn drain(live: &Live, ledger: &Ledger, membership: &report::Membership, args: &BenchArgs) {
    let start = Instant::now();
    let want = ledger.reliable_total(membership);
    while live.reliable_delivered() < want && start.elapsed() < args.drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if args.kind.contains(&Kind::Barrage) {
        let barrage = &live.delivered[Kind::Barrage.index()];
        let mut seen = barrage.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        // Anything later than BARRAGE_LATE is late anyway; stop once it has been quiet.
        while quiet_since.elapsed() < BARRAGE_QUIET.max(BARRAGE_LATE)
            && start.elapsed() < args.drain
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = barrage.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
    }
}

/// Closes every connection and waits (bounded) for the closes to be sent.
async fn close(fleet: &mut Fleet) {
    for client in fleet.clients.iter().flatten() {
        client.close().await;
    }
    fleet.clients.clear();
    let mut idle = tokio::task::JoinSet::new();
    for endpoint in &fleet.endpoints {
        let endpoint = endpoint.clone();
        idle.spawn(async move { endpoint.wait_idle().await });
    }
    if tokio::time::timeout(CLOSE_WAIT, idle.join_all()).await.is_err() {
        eprintln!("warning: some connections had not finished closing after {CLOSE_WAIT:?}");
    }
}

/// One progress line per second while traffic runs.
async fn traffic_progress(live: Arc<Live>, start: Instant, draining: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_delivered = 0;
    loop {
        tick.tick().await;
        let (sent, accepted, delivered) = live.totals();
        let p99 = live
            .take_interval_p99()
            .map_or_else(|| "-".to_string(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3));
        eprintln!(
            "[{} {:5.1}s] sent {sent} accepted {accepted} delivered {delivered} ({}/s) p99 {p99}",
            if draining.load(Ordering::Relaxed) { "drain" } else { "send " },
            start.elapsed().as_secs_f64(),
            delivered - last_delivered,
        );
        last_delivered = delivered;
    }
}

/// The options of a run, for the report.
fn scenario(args: &BenchArgs) -> BTreeMap<String, serde_json::Value> {
    let value = json!({
        "connections": args.connections,
        "rooms": args.rooms,
        "senders": args.senders,
        "kinds": args.kind,
        "command_to": args.command_to,
        "rate": args.rate,
        "pacing": args.pacing,
        "duration_s": args.duration.as_secs_f64(),
        "payload": args.payload,
        "in_process": args.in_process,
        "per_endpoint": args.per_endpoint,
        "socket_buffer": args.socket_buffer,
        "connect_parallel": args.connect_parallel,
        "spread": args.spread,
    });
    match value {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests;
