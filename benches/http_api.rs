//! The HTTP adapter's costs. One iteration:
//! - `http_api/broadcast_keepalive`: one `POST /v1/rooms/bench/broadcast` over a kept-alive
//!   connection, answered with its message ID (a member in the room receives it); the relay on
//!   its own thread, the client on the bench's.
//! - `http_api/broadcast_keepalive_8_in_flight`: 8 such requests at once (8 kept-alive
//!   connections); throughput in messages per second.
//! - `metrics/lane_write_record`: what the relay adds to each lane write for `/metrics` (a
//!   clock read and a histogram update: three relaxed atomic adds).

mod common;

use std::time::{Duration, Instant};

use common::{API_KEY, BenchRelay, client_runtime, short_runs};
use criterion::{Criterion, criterion_group, criterion_main};
use qrelay::server::stats::Histogram;

/// Requests at once in the throughput case.
const IN_FLIGHT: usize = 8;

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
                    broadcast(&client, &url).await;
                }
                start.elapsed()
            })
        })
    });
    // The same, IN_FLIGHT requests at a time (as many kept-alive connections): throughput.
    let mut group = c.benchmark_group("http_api");
    group.throughput(criterion::Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function(format!("broadcast_keepalive_{IN_FLIGHT}_in_flight"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut sends = tokio::task::JoinSet::new();
                    for _ in 0..IN_FLIGHT {
                        let (client, url) = (client.clone(), url.clone());
                        sends.spawn(async move { broadcast(&client, &url).await });
                    }
                    while let Some(sent) = sends.join_next().await {
                        sent.expect("send task");
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    runtime.block_on(relay.stop());
}

/// One API broadcast, answered with success.
async fn broadcast(client: &reqwest::Client, url: &str) {
    let response = client
        .post(url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(r#"{"payload":"hello from the backend"}"#)
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.expect("body");
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
