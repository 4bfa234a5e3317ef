//! Codec micro-benchmarks: encode and decode of every message kind on the wire, with 64-byte
//! and 1024-byte payloads. No I/O.
//!
//! One iteration = encoding one message into a reused buffer (`encode`), or decoding one
//! complete frame or datagram (`decode`; the frame is copied into a fresh buffer outside the
//! timed part). For `lane_batch_50` one iteration handles the whole batch of 50 broadcasts
//! (the throughput column counts 50 elements).
//!
//! Run: `cargo bench --bench codec`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qrelay::protocol::{
    BarrageMessage, BroadcastMessage, ClientDatagram, CommandMessage, LaneEvent, MAX_BATCH,
    MAX_REQUEST_FRAME, MAX_SERVER_FRAME, Request, RequestFrame, ServerDatagram, User,
    decode_datagram, decode_frame, encode_body, encode_broadcast_batch, encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The payload sizes measured: a typical small message and the protocol maximum.
const PAYLOADS: [usize; 2] = [64, 1024];

fn user() -> User {
    User { id: "user-0042".into(), name: "Benchmark User 42".into() }
}

fn payload(len: usize) -> Bytes {
    Bytes::from(vec![0xA5; len])
}

fn broadcast_message(id: u64, len: usize) -> BroadcastMessage {
    BroadcastMessage { id, sent_at_ms: 1_750_000_000_000 + id, from: user(), payload: payload(len) }
}

/// Benchmarks `encode_frame` and `decode_frame` of one framed message.
fn frame_pair<T>(c: &mut Criterion, group: &str, len: usize, msg: T, max: usize)
where
    T: Serialize + DeserializeOwned,
{
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function(BenchmarkId::new("encode", len), |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(black_box(&msg), &mut buf).expect("encode");
        })
    });
    let mut encoded = BytesMut::new();
    encode_frame(&msg, &mut encoded).expect("encode");
    g.bench_function(BenchmarkId::new("decode", len), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&encoded[..]),
            |frame| decode_frame::<T>(frame, max).expect("decode").expect("complete"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Benchmarks `encode_body` and `decode_datagram` of one datagram.
fn datagram_pair<T>(c: &mut Criterion, group: &str, len: usize, msg: T)
where
    T: Serialize + DeserializeOwned,
{
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("encode", len), |b| {
        b.iter(|| encode_body(black_box(&msg)).expect("encode"))
    });
    let encoded = encode_body(&msg).expect("encode");
    g.bench_function(BenchmarkId::new("decode", len), |b| {
        b.iter(|| decode_datagram::<T>(black_box(&encoded)).expect("decode"))
    });
    g.finish();
}

/// A lane batch of `n` broadcasts: spliced from once-encoded bodies (what the relay does per
/// receiver), and decoded as a receiver does.
fn lane_batch(c: &mut Criterion, n: usize, len: usize) {
    let mut g = c.benchmark_group(format!("lane_batch_{n}"));
    g.throughput(Throughput::Elements(n as u64));
    let bodies: Vec<Bytes> = (0..n as u64)
        .map(|id| encode_body(&broadcast_message(id + 1, len)).expect("encode"))
        .collect();
    let mut buf = BytesMut::with_capacity(128 * 1024);
    g.bench_function(BenchmarkId::new("encode", len), |b| {
        b.iter(|| {
            buf.clear();
            encode_broadcast_batch(black_box(&bodies), &mut buf).expect("encode");
        })
    });
    let mut encoded = BytesMut::new();
    encode_broadcast_batch(&bodies, &mut encoded).expect("encode");
    g.bench_function(BenchmarkId::new("decode", len), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&encoded[..]),
            |frame| {
                decode_frame::<LaneEvent>(frame, MAX_SERVER_FRAME).expect("decode").expect("whole")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let login = RequestFrame {
        request: 1,
        body: Request::Login {
            room: "lobby".into(),
            user: user(),
            token: "t".repeat(200), // about the size of a minted HS256 token
            recover: None,
        },
    };
    frame_pair(c, "request_login", 0, login, MAX_REQUEST_FRAME);
    for len in PAYLOADS {
        let broadcast = RequestFrame {
            request: 7,
            body: Request::Broadcast { room: "lobby".into(), payload: payload(len) },
        };
        frame_pair(c, "request_broadcast", len, broadcast, MAX_REQUEST_FRAME);
        let command = RequestFrame {
            request: 8,
            body: Request::Command {
                room: "lobby".into(),
                to: vec!["user-0007".into()],
                payload: payload(len),
            },
        };
        frame_pair(c, "request_command", len, command, MAX_REQUEST_FRAME);

        // The relay encodes each broadcast once; receivers' batches splice that encoding.
        let mut g = c.benchmark_group("broadcast_body");
        g.throughput(Throughput::Elements(1));
        let message = broadcast_message(1, len);
        g.bench_function(BenchmarkId::new("encode", len), |b| {
            b.iter(|| encode_body(black_box(&message)).expect("encode"))
        });
        g.finish();
        lane_batch(c, 1, len);
        lane_batch(c, MAX_BATCH, len);

        let command = LaneEvent::Command(CommandMessage {
            id: 3,
            sent_at_ms: 1_750_000_000_000,
            from: user(),
            payload: payload(len),
        });
        frame_pair(c, "lane_command", len, command, MAX_SERVER_FRAME);

        let up = ClientDatagram::Barrage { room_number: 12, request: 99, payload: payload(len) };
        datagram_pair(c, "barrage_client_datagram", len, up);
        let down = ServerDatagram::Barrage(BarrageMessage {
            room_number: 12,
            id: 4242,
            sent_at_ms: 1_750_000_000_000,
            sender: 17,
            payload: payload(len),
        });
        datagram_pair(c, "barrage_server_datagram", len, down);
    }
}

fn config() -> Criterion {
    common::short_runs(Duration::from_millis(300), Duration::from_millis(800), 30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec
}
criterion_main!(benches);
