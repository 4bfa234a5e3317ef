//! `qrelay-cli peer-bench`: the load of `qrelay-cli bench` (one room, evenly paced senders,
//! stamped payloads, every delivery timed) against Redis pub/sub or NATS core pub/sub, so
//! that BENCHMARKS.md can put their figures beside the relay's, measured in the same run on
//! the same machine.
//!
//! The room is one channel (Redis) or subject (NATS). `--connections N --senders S` opens N
//! TCP connections: S publish and the other N − S subscribe, so a message has N − S receivers,
//! as in a qrelay room of N members with S senders (there each sender also receives the
//! others' messages; with one sender the two are the same). Redis and NATS core pub/sub
//! promise no delivery, but over loopback TCP nothing should be lost: every message missing
//! at a subscriber is reported as lost.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use super::pacer::Pacer;
use super::procfs::{self, CpuSource};
use super::report::{Latency, cpu_per_delivery_us, per_second};
use super::traffic::{STAMP_LEN, stamp, stamped_ns};

/// Most connections one run opens (as `qrelay-cli bench`).
const MAX_CONNECTIONS: usize = super::MAX_CONNECTIONS;
/// The channel or subject every connection uses.
const ROOM: &str = "qrelay-peer-bench";
/// Longest latency recorded (longer ones count as this).
const HISTOGRAM_MAX: Duration = Duration::from_secs(60);
/// How long to wait for the subscriptions to be in place before sending.
const SUBSCRIBE_WAIT: Duration = Duration::from_millis(300);

/// Which system a peer run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Redis pub/sub (`PUBLISH` / `SUBSCRIBE`), `redis://HOST:PORT`.
    Redis,
    /// NATS core pub/sub, `nats://HOST:PORT`.
    Nats,
}

impl System {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Redis => "redis",
            System::Nats => "nats",
        }
    }
}

/// Options of `qrelay-cli peer-bench`.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// The system to measure.
    #[arg(long, value_enum)]
    system: System,
    /// Its address: redis://127.0.0.1:6379 or nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    url: String,
    /// TCP connections to open, senders included (at most 10001).
    #[arg(long, default_value_t = 100, value_name = "N")]
    connections: usize,
    /// How many of the connections publish (the others subscribe).
    #[arg(long, default_value_t = 1, value_name = "S")]
    senders: usize,
    /// Target messages per second, all senders together.
    #[arg(long, default_value_t = 1000.0, value_name = "PER_SECOND")]
    rate: f64,
    /// How senders spread their messages (as `qrelay-cli bench --pacing`).
    #[arg(long, value_enum, default_value = "even", value_name = "MODE")]
    pacing: super::Pacing,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Payload bytes of each message (16 to 1024).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    payload: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 50, value_name = "N")]
    connect_parallel: usize,
    /// Longest wait for outstanding deliveries after sending stops.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    drain: Duration,
    /// PID of the server (redis-server, nats-server), to report its CPU time and memory.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What a peer run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// The system measured.
    pub system: System,
    /// Connections, senders included.
    pub connections: usize,
    /// Publishing connections.
    pub senders: usize,
    /// Offered messages per second.
    pub rate: f64,
    /// How senders spread their messages.
    pub pacing: super::Pacing,
    /// Payload bytes.
    pub payload: usize,
    /// Seconds spent connecting and subscribing every connection.
    pub connect_seconds: f64,
    /// Messages published.
    pub sent: u64,
    /// Deliveries expected (`sent` times the subscribers).
    pub expected: u64,
    /// Deliveries that arrived.
    pub delivered: u64,
    /// Deliveries that did not arrive within the drain.
    pub lost: u64,
    /// Deliveries per second over the run (first send to last delivery).
    pub deliveries_per_second: f64,
    /// Send-to-receive latency of every delivery.
    pub latency: Latency,
    /// The server's CPU time during the traffic, seconds.
    pub server_cpu_seconds: Option<f64>,
    /// The server's CPU time per delivery, µs.
    pub server_cpu_per_delivery_us: Option<f64>,
    /// The server's resident memory after connecting, KiB.
    pub server_rss_kib: Option<u64>,
    /// This tool's CPU time during the traffic, seconds.
    pub tool_cpu_seconds: Option<f64>,
}

/// Runs `qrelay-cli peer-bench` and prints its report; fails when deliveries were lost.
pub async fn main(args: PeerArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(if report.lost == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn validate(args: &PeerArgs) -> anyhow::Result<()> {
    ensure!(
        (2..=MAX_CONNECTIONS).contains(&args.connections),
        "--connections must be 2 to {MAX_CONNECTIONS}"
    );
    ensure!(
        (1..args.connections).contains(&args.senders),
        "--senders must be at least 1 and leave a subscriber"
    );
    ensure!(args.rate > 0.0 && args.rate <= 10_000_000.0, "--rate must be above 0");
    ensure!(!args.duration.is_zero(), "--duration must be above 0");
    ensure!(
        (STAMP_LEN..=qrelay::protocol::MAX_PAYLOAD).contains(&args.payload),
        "--payload must be {STAMP_LEN} to {} bytes",
        qrelay::protocol::MAX_PAYLOAD
    );
    ensure!(args.connect_parallel >= 1, "--connect-parallel must be at least 1");
    let scheme = match args.system {
        System::Redis => "redis://",
        System::Nats => "nats://",
    };
    ensure!(args.url.starts_with(scheme), "--url for {} starts with {scheme}", args.system.name());
    Ok(())
}

/// A connection that publishes.
enum Publisher {
    /// Replies come back in order; the connection is shared by the publish tasks.
    Redis(redis::aio::MultiplexedConnection),
    Nats(async_nats::Client),
}

/// The counters every subscriber adds to.
struct Tally {
    /// The instant payload stamps count from.
    epoch: Instant,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
}

impl Tally {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

async fn run(args: &PeerArgs) -> anyhow::Result<PeerReport> {
    let subscribers = args.connections - args.senders;
    let tally = Arc::new(Tally {
        epoch: Instant::now(),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = args.server_pid.map(CpuSource::Process);

    // Connect: subscribers first, each with its own receiving task.
    let connect_start = Instant::now();
    let mut receivers = tokio::task::JoinSet::new();
    let mut opened = 0;
    while opened < subscribers {
        let batch = args.connect_parallel.min(subscribers - opened);
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let url = args.url.clone();
            let system = args.system;
            connecting.spawn(async move { subscribe(system, &url).await });
        }
        while let Some(subscribed) = connecting.join_next().await {
            let stream = subscribed.context("a subscribing task failed")??;
            receivers.spawn(receive(stream, tally.clone(), stop_rx.clone()));
        }
        opened += batch;
        eprintln!("[connect] {opened}/{subscribers} subscribed");
    }
    let mut publishers = Vec::with_capacity(args.senders);
    for _ in 0..args.senders {
        publishers.push(connect(args.system, &args.url).await?);
    }
    // A SUBSCRIBE is in place once its reply came (Redis) or once the server has the
    // connection's flushed protocol (NATS); a short pause covers the last ones either way.
    tokio::time::sleep(SUBSCRIBE_WAIT).await;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let server_rss_kib =
        args.server_pid.and_then(|pid| procfs::memory(Some(pid))).map(|m| m.rss_kib);

    // Traffic.
    let own = CpuSource::Process(std::process::id());
    let (server_start, own_start) = (server.as_ref().and_then(CpuSource::cpu_time), own.cpu_time());
    let start_ns = tally.now_ns();
    let mut senders = tokio::task::JoinSet::new();
    for peer in publishers {
        let (rate, duration, payload, pacing) =
            (args.rate / args.senders as f64, args.duration, args.payload, args.pacing);
        let tally = tally.clone();
        senders.spawn(async move { publish(peer, rate, pacing, duration, payload, tally).await });
    }
    let progress = tokio::spawn(progress(tally.clone()));
    let mut sent = 0;
    while let Some(result) = senders.join_next().await {
        sent += result.context("a sending task failed")??;
    }
    let expected = sent * subscribers as u64;
    let drain_start = Instant::now();
    while tally.delivered.load(Ordering::Relaxed) < expected && drain_start.elapsed() < args.drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server_end = server.as_ref().and_then(CpuSource::cpu_time);
    let own_end = own.cpu_time();
    progress.abort();
    let _ = stop_tx.send(true);
    let mut histogram = new_histogram();
    while let Some(result) = receivers.join_next().await {
        histogram.add(result.context("a receiving task failed")??)?;
    }

    let delivered = tally.delivered.load(Ordering::Relaxed);
    let window = Duration::from_nanos(
        tally.last_delivery_ns.load(Ordering::Relaxed).saturating_sub(start_ns),
    );
    let server_cpu = server_start.zip(server_end).map(|(a, b)| b.saturating_sub(a));
    Ok(PeerReport {
        system: args.system,
        connections: args.connections,
        senders: args.senders,
        rate: args.rate,
        pacing: args.pacing,
        payload: args.payload,
        connect_seconds,
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        deliveries_per_second: per_second(delivered, window),
        latency: Latency::of(&histogram),
        server_cpu_seconds: server_cpu.map(|d| d.as_secs_f64()),
        server_cpu_per_delivery_us: server_cpu.and_then(|d| cpu_per_delivery_us(d, delivered)),
        server_rss_kib,
        tool_cpu_seconds: own_start.zip(own_end).map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
    })
}

/// A connection that will publish.
async fn connect(system: System, url: &str) -> anyhow::Result<Publisher> {
    let cannot = || format!("cannot connect to {url}");
    Ok(match system {
        System::Redis => Publisher::Redis(
            redis::Client::open(url)
                .context("bad --url")?
                .get_multiplexed_async_connection()
                .await
                .with_context(cannot)?,
        ),
        System::Nats => Publisher::Nats(async_nats::connect(url).await.with_context(cannot)?),
    })
}

/// The payloads one subscribed connection receives.
type Payloads = std::pin::Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>;

/// A connection subscribed to the room.
async fn subscribe(system: System, url: &str) -> anyhow::Result<Payloads> {
    Ok(match system {
        System::Redis => {
            let client = redis::Client::open(url).context("bad --url")?;
            let mut pubsub = client
                .get_async_pubsub()
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            pubsub.subscribe(ROOM).await.context("SUBSCRIBE failed")?;
            Box::pin(
                pubsub.into_on_message().map(|m| Bytes::copy_from_slice(m.get_payload_bytes())),
            )
        }
        System::Nats => {
            let client = async_nats::connect(url)
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            let subscriber = client.subscribe(ROOM).await.context("SUBSCRIBE failed")?;
            client.flush().await.context("NATS flush failed")?;
            // The subscriber keeps its client's connection open.
            Box::pin(subscriber.map(|m| m.payload))
        }
    })
}

/// Times every stamped payload until told to stop; returns the latencies (ns).
async fn receive(
    mut payloads: Payloads,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = new_histogram();
    loop {
        tokio::select! {
            payload = payloads.next() => {
                let Some(payload) = payload else { bail!("a subscriber's connection ended") };
                let now = tally.now_ns();
                if let Some(sent) = stamped_ns(&payload) {
                    histogram.saturating_record(now.saturating_sub(sent).max(1));
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    tally.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => return Ok(histogram),
        }
    }
}

/// Publishes at `rate` for `duration`; returns how many messages were published.
async fn publish(
    publisher: Publisher,
    rate: f64,
    pacing: super::Pacing,
    duration: Duration,
    payload: usize,
    tally: Arc<Tally>,
) -> anyhow::Result<u64> {
    let mut pacer = Pacer::new()?;
    let tick = Duration::from_secs_f64(1.0 / rate).max(Duration::from_millis(1));
    let start = Instant::now();
    let mut count: u64 = 0;
    // Redis replies (subscriber counts) come back in order on the multiplexed connection;
    // each publish is its own task so that a slow reply never delays the next send.
    let mut replies = tokio::task::JoinSet::new();
    loop {
        match pacing {
            super::Pacing::Even => {
                pacer.until(start + Duration::from_secs_f64(count as f64 / rate)).await?
            }
            super::Pacing::Tick => {
                let ticks = start.elapsed().as_nanos() / tick.as_nanos() + 1;
                pacer.until(start + tick * ticks as u32).await?;
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64 + 1;
        while count < due {
            let message = stamp(payload, tally.now_ns(), 0);
            match &publisher {
                Publisher::Redis(connection) => {
                    let mut connection = connection.clone();
                    replies.spawn(async move {
                        redis::cmd("PUBLISH")
                            .arg(ROOM)
                            .arg(&message[..])
                            .query_async::<i64>(&mut connection)
                            .await
                    });
                }
                Publisher::Nats(client) => {
                    client.publish(ROOM, message).await.context("NATS publish failed")?;
                }
            }
            count += 1;
        }
        while let Some(reply) = replies.try_join_next() {
            reply.context("a publish task failed")?.context("PUBLISH failed")?;
        }
    }
    while let Some(reply) = replies.join_next().await {
        reply.context("a publish task failed")?.context("PUBLISH failed")?;
    }
    if let Publisher::Nats(client) = &publisher {
        client.flush().await.context("NATS flush failed")?;
    }
    Ok(count)
}

/// One progress line per second while traffic runs.
async fn progress(tally: Arc<Tally>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let delivered = tally.delivered.load(Ordering::Relaxed);
        eprintln!("[traffic] delivered {delivered} ({}/s)", delivered - last);
        last = delivered;
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX.as_nanos() as u64, 3)
        .expect("constant histogram bounds are valid")
}

impl PeerReport {
    /// The report as people read it.
    pub fn human(&self) -> String {
        let ms = |us: f64| {
            if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.1} µs") }
        };
        let l = &self.latency;
        let mut out = format!(
            "{}: {} connections ({} publishing), {}/s offered ({} pacing), {} B payloads\n",
            self.system.name(),
            self.connections,
            self.senders,
            self.rate,
            format!("{:?}", self.pacing).to_lowercase(),
            self.payload
        );
        out += &format!("  connected and subscribed in {:.2} s\n", self.connect_seconds);
        out += &format!(
            "  deliveries: {} of {} expected ({} lost), {:.0}/s\n",
            self.delivered, self.expected, self.lost, self.deliveries_per_second
        );
        out += &format!(
            "  latency p50 {} p90 {} p99 {} p99.9 {} max {}\n",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        match (self.server_cpu_seconds, self.server_cpu_per_delivery_us) {
            (Some(cpu), Some(per)) => {
                out += &format!("  server cpu {cpu:.2} s, {per:.3} µs per delivery\n")
            }
            _ => out += "  server cpu: n/a (pass --server-pid)\n",
        }
        if let Some(cpu) = self.tool_cpu_seconds {
            out += &format!("  tool cpu {cpu:.2} s\n");
        }
        out
    }
}
