//! Fan-out through a real relay on loopback: one sender and N receivers (N = 10, 100) in one
//! room, 64-byte broadcasts, no frequency limits. The relay runs on its own thread; the sender
//! and every receiver share one other thread (see `common`).
//!
//! One iteration = one broadcast sent, its result returned to the sender, and the message
//! delivered (as an event of the client library) to every one of the N receivers.
//!
//! Run: `cargo bench --bench fanout`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qrelay::client::{Event, Events};
use tokio::sync::Notify;

use common::{BenchRelay, STEP, client_runtime};

/// Receivers per room.
const RECEIVERS: [usize; 2] = [10, 100];
/// The message size of the comparison table in issue 3.
const PAYLOAD: usize = 64;

/// Deliveries counted by the receivers' tasks; `done` fires when the count reaches `target`.
struct Arrivals {
    count: AtomicUsize,
    target: usize,
    done: Notify,
}

/// Counts every broadcast `events` delivers until the connection ends.
async fn count_arrivals(mut events: Events, arrivals: Arc<Arrivals>) {
    while let Some(event) = events.next().await {
        match event {
            Event::Broadcasts { messages, .. } => {
                let n = messages.len();
                let before = arrivals.count.fetch_add(n, Ordering::Relaxed);
                if before < arrivals.target && before + n >= arrivals.target {
                    arrivals.done.notify_one();
                }
            }
            Event::Disconnected { .. } | Event::RoomClosed { .. } => break,
            _ => {}
        }
    }
}

fn fanout(c: &mut Criterion) {
    let runtime = client_runtime();
    let relay = BenchRelay::start().expect("relay");
    let payload = Bytes::from(vec![0x42; PAYLOAD]);
    let mut group = c.benchmark_group("fanout");
    for n in RECEIVERS {
        let room = format!("fanout-{n}");
        let arrivals =
            Arc::new(Arrivals { count: AtomicUsize::new(0), target: n, done: Notify::new() });
        let (sender, receivers) = runtime.block_on(async {
            let mut receivers = Vec::with_capacity(n);
            for i in 0..n {
                let (client, events) =
                    relay.member(&format!("r{i}"), &room).await.expect("receiver");
                tokio::spawn(count_arrivals(events, arrivals.clone()));
                receivers.push(client);
            }
            let (sender, _events) = relay.member("sender", &room).await.expect("sender");
            (sender, receivers)
        });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("broadcast", n), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        arrivals.count.store(0, Ordering::Relaxed);
                        let (sent, all) = tokio::join!(
                            sender.send_broadcast_message(&room, payload.clone()),
                            tokio::time::timeout(STEP, arrivals.done.notified())
                        );
                        sent.expect("broadcast accepted");
                        all.expect("every receiver got the broadcast in time");
                    }
                    start.elapsed()
                })
            })
        });
        // Dropping the last handle closes each connection without waiting for it to drain.
        drop(sender);
        drop(receivers);
    }
    group.finish();
    runtime.block_on(relay.stop());
}

fn config() -> Criterion {
    common::short_runs(Duration::from_secs(1), Duration::from_secs(4), 20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout
}
criterion_main!(benches);
