//! One-to-one latency through a real relay on loopback: alice sends, bob receives, in one
//! room, 64-byte payloads, no frequency limits. The relay runs on its own thread; both clients
//! share one other thread (see `common`).
//!
//! One iteration = one message sent and received: alice's send call returns its result AND
//! bob's client library delivers the message as an event (both awaited together; the relay
//! answers the sender before the receiver's lane is written, so the delivery ends the
//! iteration). Kinds: `broadcast` (reliable, room lane), `barrage` (QUIC datagram),
//! `command` (custom command to bob, room lane).
//!
//! Run: `cargo bench --bench latency`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use qrelay::client::Event;

use common::{BenchRelay, client_runtime, next_message};

const ROOM: &str = "latency";
/// The message size of the comparison table in issue 3.
const PAYLOAD: usize = 64;

fn latency(c: &mut Criterion) {
    let runtime = client_runtime();
    let relay = BenchRelay::start().expect("relay");
    let ((alice, _alice_events), (_bob, mut bob_events)) = runtime.block_on(async {
        let bob = relay.member("bob", ROOM).await.expect("bob");
        let alice = relay.member("alice", ROOM).await.expect("alice");
        (alice, bob)
    });
    let payload = Bytes::from(vec![0x42; PAYLOAD]);
    let mut group = c.benchmark_group("latency_1to1");

    group.bench_function("broadcast", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (sent, got) = tokio::join!(
                        alice.send_broadcast_message(ROOM, payload.clone()),
                        next_message(&mut bob_events)
                    );
                    sent.expect("broadcast accepted");
                    assert!(matches!(got.expect("delivery"), Event::Broadcasts { .. }));
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("command", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (sent, got) = tokio::join!(
                        alice.send_custom_command(ROOM, payload.clone(), &["bob"]),
                        next_message(&mut bob_events)
                    );
                    sent.expect("command accepted");
                    assert!(matches!(got.expect("delivery"), Event::Command { .. }));
                }
                start.elapsed()
            })
        })
    });

    // A barrage datagram may be dropped (it never is on an idle loopback, but a busy machine
    // can): a lost one is counted and reported, and its iteration costs the wait.
    let mut lost = 0u64;
    group.bench_function("barrage", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (sent, got) = tokio::join!(
                        alice.send_barrage_message(ROOM, payload.clone()),
                        tokio::time::timeout(BARRAGE_WAIT, next_message(&mut bob_events))
                    );
                    match (sent, got) {
                        (Ok(_), Ok(Ok(Event::Barrages { .. }))) => {}
                        (_, Err(_)) => lost += 1,
                        (sent, got) => panic!("barrage: {sent:?} / {got:?}"),
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    if lost > 0 {
        eprintln!(
            "latency_1to1/barrage: {lost} barrage messages lost (each cost {BARRAGE_WAIT:?})"
        );
    }
    runtime.block_on(relay.stop());
}

/// How long an iteration waits for a barrage before counting it lost.
const BARRAGE_WAIT: Duration = Duration::from_millis(500);

fn config() -> Criterion {
    common::short_runs(Duration::from_secs(1), Duration::from_secs(3), 30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = latency
}
criterion_main!(benches);
