//! The HTTP adapter's costs. One iteration:
//! - `http_api/broadcast_keepalive`: one `POST /v1/rooms/bench/broadcast` over a kept-alive
//!   connection, answered with its message ID (a member in the room receives it); the relay on
//!   its own thread, the client on the bench's.
//! - `metrics/lane_write_record`: what the relay adds to each lane write for `/metrics` (a
//!   clock read and a histogram update: three relaxed atomic adds).

mod common;

use std::time::{Duration, Instant};

use common::{API_KEY, BenchRelay, client_runtime, short_runs};
use criterion::{Criterion, criterion_group, criterion_main};
use qrelay::server::stats::Histogram;

fn http_api(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = client_runtime();
    let relay = BenchRelay::start_with_http().expect("relay");
    let http = relay.http_addr().expect("the bench relay has an HTTP listener");
    let (_member, mut events) =
        runtime.block_on(relay.member("listener", "bench")).expect("member");
    // The member's events are drained so that its lane never fills.
    runtime.spawn(async move { while events.next().await.is_some() {} });
    let client = reqwest::Client::new();
    let url = format!("http://{http}/v1/rooms/bench/broadcast");
    c.bench_function("http_api/broadcast_keepalive", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let response = client
                        .post(&url)
                        .bearer_auth(API_KEY)
                        .header("content-type", "application/json")
                        .body(r#"{"payload":"hello from the backend"}"#)
                        .send()
                        .await
                        .expect("request");
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.expect("body");
                }
                start.elapsed()
            })
        })
    });
    runtime.block_on(relay.stop());
}

fn metrics(c: &mut Criterion) {
    let histogram = Histogram::default();
    c.bench_function("metrics/lane_write_record", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let queued_at = tokio::time::Instant::now();
                histogram.record(std::hint::black_box(queued_at).elapsed());
            }
            start.elapsed()
        })
    });
}

criterion_group! {
    name = benches;
    config = short_runs(Duration::from_secs(1), Duration::from_secs(5), 30);
    targets = http_api, metrics
}
criterion_main!(benches);
