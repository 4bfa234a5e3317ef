//! The connection phase of a load run: many client connections spread over a few shared
//! UDP sockets (quinn endpoints), opened in parallel batches, each logged in to its room with
//! a receiver task started at once (so that join events never pile up).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use qrelay::client::{Client, ClientConfig};
use qrelay::protocol::User;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::report::{ConnectReport, Latency, Membership};
use super::traffic::{Live, Receiver, ReceiverTally};

/// Mints (or hands out) a login token for a user ID.
pub type Minter = Arc<dyn Fn(&str) -> anyhow::Result<String> + Send + Sync>;

/// Where and how to connect.
#[derive(Clone)]
pub struct FleetPlan {
    /// The relays' addresses (`client.server`, resolved; one unless `--spread`).
    pub servers: Vec<SocketAddr>,
    /// Index in `servers` of each connection's relay.
    pub server_of: Vec<usize>,
    /// TLS name, CA and timeouts; each connection sets its own user and relay.
    pub client: ClientConfig,
    /// A login token for a user ID.
    pub token: Minter,
    /// User ID of each connection.
    pub users: Vec<String>,
    /// Room name of each connection.
    pub room_names: Vec<String>,
    /// Room index of each connection.
    pub room_of: Vec<usize>,
    /// How many rooms.
    pub rooms: usize,
    /// Connections per UDP socket.
    pub per_endpoint: usize,
    /// Handshakes in flight at once.
    pub parallel: usize,
    /// Receive and send buffer of each UDP socket, bytes.
    pub socket_buffer: usize,
}

/// The connected clients and their receiver tasks.
pub struct Fleet {
    /// The shared UDP sockets.
    pub endpoints: Vec<quinn::Endpoint>,
    /// Each connection's client; `None` where it failed.
    pub clients: Vec<Option<Client>>,
    /// Each logged-in connection's receiver task.
    pub receivers: Vec<(usize, JoinHandle<ReceiverTally>)>,
    /// What the phase measured.
    pub report: ConnectReport,
}

impl Fleet {
    /// UDP datagrams the tool's connections have received from the relay so far.
    pub fn datagrams_received(&self) -> u64 {
        let connections = self.clients.iter().flatten().filter_map(Client::connection);
        connections.map(|conn| conn.stats().udp_rx.datagrams).sum()
    }

    /// Who is in which room.
    pub fn membership(&self, plan: &FleetPlan) -> Membership {
        let room_of = (0..self.clients.len())
            .map(|i| self.clients[i].as_ref().map(|_| plan.room_of[i]))
            .collect();
        Membership { room_of, rooms: plan.rooms }
    }
}

/// One connection's outcome.
type Connected = (usize, Result<(Client, JoinHandle<ReceiverTally>, Duration, Duration), String>);

/// Opens every connection, `plan.parallel` at a time, printing progress each second.
pub async fn connect(
    plan: &Arc<FleetPlan>,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Fleet> {
    let n = plan.users.len();
    // Every relay of a run is of one address family (checked when the plan is made).
    let bind: SocketAddr = if plan.servers[0].is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoints = (0..n.div_ceil(plan.per_endpoint))
        .map(|_| endpoint(bind, plan.socket_buffer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let permits = Arc::new(Semaphore::new(plan.parallel));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let progress = tokio::spawn(connect_progress(done.clone(), n, start));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let endpoint = endpoints[i / plan.per_endpoint].clone();
        let (plan, live, stop) = (plan.clone(), live.clone(), stop.clone());
        let (permits, done) = (permits.clone(), done.clone());
        tasks.spawn(async move {
            let outcome = async {
                let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                connect_one(&plan, i, &endpoint, live, stop).await
            }
            .await;
            done.fetch_add(1, Ordering::Relaxed);
            (i, outcome) as Connected
        });
    }
    let mut clients: Vec<Option<Client>> = vec![None; n];
    let mut receivers = Vec::with_capacity(n);
    let mut failures = BTreeMap::new();
    let mut handshake = histogram();
    let mut login = histogram();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok((client, receiver, shake, logged)))) => {
                handshake.saturating_record(shake.as_nanos() as u64);
                login.saturating_record(logged.as_nanos() as u64);
                clients[i] = Some(client);
                receivers.push((i, receiver));
            }
            Ok((_, Err(e))) => *failures.entry(e).or_default() += 1,
            Err(e) => *failures.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.abort();
    receivers.sort_by_key(|(i, _)| *i);
    let logged_in = receivers.len();
    let report = ConnectReport {
        connections: n,
        logged_in,
        failures,
        endpoints: endpoints.len(),
        seconds,
        handshakes_per_sec: logged_in as f64 / seconds.max(1e-3),
        handshake: Latency::of(&handshake),
        login: Latency::of(&login),
        ..ConnectReport::default()
    };
    Ok(Fleet { endpoints, clients, receivers, report })
}

/// A client endpoint on a UDP socket with `buffer`-byte receive and send buffers: one
/// socket carries many connections, so it gets the buffers of many (the kernel caps them at
/// `net.core.rmem_max` and `wmem_max`; the default, about 200 KiB, drops packets on loopback
/// under fan-out).
fn endpoint(bind: SocketAddr, buffer: usize) -> anyhow::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .context("cannot open a UDP socket")?;
    socket.set_recv_buffer_size(buffer).context("SO_RCVBUF")?;
    socket.set_send_buffer_size(buffer).context("SO_SNDBUF")?;
    socket.bind(&bind.into()).with_context(|| format!("cannot bind {bind}"))?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket.into(), runtime)
        .context("cannot start a QUIC endpoint")
}

/// Connects connection `i`, logs it in and starts its receiver.
async fn connect_one(
    plan: &FleetPlan,
    i: usize,
    endpoint: &quinn::Endpoint,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) -> Result<(Client, JoinHandle<ReceiverTally>, Duration, Duration), String> {
    let mut config = plan.client.clone();
    config.server = plan.servers[plan.server_of[i]].into();
    config.user = User { id: plan.users[i].clone(), name: plan.users[i].clone() };
    let token = (plan.token)(&plan.users[i]).map_err(|e| format!("token: {e}"))?;
    let started = Instant::now();
    let (client, events) =
        Client::connect_with(endpoint, config).await.map_err(|e| format!("connect: {e}"))?;
    let connected = Instant::now();
    // The receiver starts before the login so that the room's first events are read at once.
    let receiver = tokio::spawn(Receiver::new(live, i).run(events, stop));
    if let Err(e) = client.login_room(&plan.room_names[i], &token).await {
        receiver.abort();
        return Err(format!("login: {e}"));
    }
    Ok((client, receiver, connected - started, connected.elapsed()))
}

async fn connect_progress(done: Arc<AtomicUsize>, n: usize, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = done.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "[connect {secs:5.1}s] {done}/{n} attempts finished ({:.0}/s)",
            done as f64 / secs
        );
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}
