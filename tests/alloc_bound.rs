//! No input makes a decoder allocate more than its bound: a counting global allocator records
//! the largest single allocation and the peak outstanding bytes of each decode call, fed
//! hostile inputs (huge claimed lengths inside small bodies, nested counts, maximal frames).
//!
//! A separate test binary because it replaces the global allocator; allocations are counted
//! only on the thread that measures, so the test harness's own threads do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use qrelay::protocol::{
    BroadcastMessage, ClientDatagram, ControlFrame, LaneEvent, LaneHeader, MAX_BATCH,
    MAX_DATAGRAM_BUDGET, MAX_PAYLOAD, MAX_REQUEST_FRAME, MAX_SERVER_FRAME, MAX_USER_ID,
    MAX_USER_NAME, MAX_USERS_PER_UPDATE, Member, RequestFrame, ServerDatagram, User,
    decode_datagram, decode_frame, encode_body,
};

/// Allocator bookkeeping (a header, a `Vec`'s few elements) allowed above a frame's bound.
const SLACK: usize = 16 * 1024;

/// The same for a datagram, which holds no list.
const DATAGRAM_SLACK: usize = 1024;

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn on_alloc(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            LARGEST.set(LARGEST.get().max(size));
            let now = CURRENT.get() + size as isize;
            CURRENT.set(now);
            PEAK.set(PEAK.get().max(now));
        }
    });
}

fn on_dealloc(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            CURRENT.set(CURRENT.get() - size as isize);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_dealloc(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a new block next to the old one: the worst case while data is copied.
        on_alloc(new_size);
        on_dealloc(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one decode call allocated.
#[derive(Debug)]
struct Usage {
    /// The largest single allocation, in bytes.
    largest: usize,
    /// The most bytes allocated by the call and not yet freed at any moment.
    peak: usize,
}

/// Runs `f` and reports its allocations (results are dropped inside the measurement).
fn measure<R>(f: impl FnOnce() -> R) -> Usage {
    CURRENT.set(0);
    PEAK.set(0);
    LARGEST.set(0);
    TRACKING.set(true);
    drop(std::hint::black_box(f()));
    TRACKING.set(false);
    Usage { largest: LARGEST.get(), peak: PEAK.get().max(0) as usize }
}

/// Decodes `body` as one frame of `T` with frame bound `max` and checks the bound.
fn check_frame<T: serde::de::DeserializeOwned>(what: &str, body: &[u8], max: usize) {
    let mut buf = BytesMut::with_capacity(4 + body.len());
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(body);
    let usage = measure(|| decode_frame::<T>(&mut buf, max).map(|_| ()));
    assert!(usage.largest <= MAX_SERVER_FRAME + SLACK, "{what}: {usage:?}");
    assert!(usage.peak <= MAX_SERVER_FRAME + SLACK, "{what}: {usage:?}");
}

/// Decodes `datagram` as `T` and checks the (much smaller) datagram bound.
fn check_datagram<T: serde::de::DeserializeOwned>(what: &str, datagram: &[u8]) {
    let usage = measure(|| decode_datagram::<T>(datagram).map(|_| ()));
    assert!(usage.largest <= MAX_DATAGRAM_BUDGET + DATAGRAM_SLACK, "{what}: {usage:?}");
    assert!(usage.peak <= MAX_DATAGRAM_BUDGET + DATAGRAM_SLACK, "{what}: {usage:?}");
}

/// A bincode varint: 251 marks a u64 in the next 8 bytes (little-endian).
fn varint_u64(out: &mut Vec<u8>, n: u64) {
    out.push(251);
    out.extend_from_slice(&n.to_le_bytes());
}

/// Variant index `v` (small, so one byte) followed by a claimed length `len`.
fn variant_with_len(v: u8, len: u64) -> Vec<u8> {
    let mut out = vec![v];
    varint_u64(&mut out, len);
    out
}

fn padded(mut body: Vec<u8>, to: usize) -> Vec<u8> {
    body.resize(to, 0x41);
    body
}

fn max_user() -> User {
    User { id: "u".repeat(MAX_USER_ID), name: "n".repeat(MAX_USER_NAME) }
}

#[test]
fn hostile_lengths_never_allocate_beyond_the_frame_bound() {
    // Claimed lengths from "a little above the bound" to "the whole address space", each in a
    // small body and in a body of the largest size the stream allows.
    let claims = [
        MAX_REQUEST_FRAME as u64 + 1,
        MAX_SERVER_FRAME as u64 - 1,
        MAX_SERVER_FRAME as u64 + 1,
        u32::MAX as u64,
        u64::MAX / 2,
        u64::MAX,
    ];
    for &claim in &claims {
        for size in [16, MAX_REQUEST_FRAME] {
            // RequestFrame { request: 0, body: Login { room: <claim> ... } }
            let mut login = vec![0];
            login.extend(variant_with_len(0, claim));
            check_frame::<RequestFrame>("login room", &padded(login, size), MAX_REQUEST_FRAME);
            // Command { room: "r", to: <claim> strings, .. }
            let mut command = vec![0, 3, 1, b'r'];
            varint_u64(&mut command, claim);
            check_frame::<RequestFrame>(
                "command targets",
                &padded(command, size),
                MAX_REQUEST_FRAME,
            );
            // Broadcast { room: "r", payload: <claim> bytes }
            let mut broadcast = vec![0, 2, 1, b'r'];
            varint_u64(&mut broadcast, claim);
            check_frame::<RequestFrame>("payload", &padded(broadcast, size), MAX_REQUEST_FRAME);
        }
        for size in [16, MAX_SERVER_FRAME] {
            for variant in 0..3 {
                // UsersJoined / UsersLeft / Broadcasts with <claim> elements.
                let event = padded(variant_with_len(variant, claim), size);
                check_frame::<LaneEvent>("lane event count", &event, MAX_SERVER_FRAME);
            }
            let header = padded(variant_with_len(0, claim)[1..].to_vec(), size);
            check_frame::<LaneHeader>("lane header room", &header, MAX_SERVER_FRAME);
            // ControlFrame::Reply(Reply { request: 0, outcome: Refused { code: 0, detail } })
            let mut refused = vec![0, 0, 3, 0];
            varint_u64(&mut refused, claim);
            check_frame::<ControlFrame>("refusal detail", &padded(refused, size), MAX_SERVER_FRAME);
        }
        // Datagrams: Barrage { room_number: 0, request: 0, payload: <claim> }.
        let mut up = vec![0, 0, 0];
        varint_u64(&mut up, claim);
        check_datagram::<ClientDatagram>("client barrage", &padded(up, MAX_DATAGRAM_BUDGET));
        let mut down = vec![0, 0, 0, 0, 0];
        varint_u64(&mut down, claim);
        check_datagram::<ServerDatagram>("server barrage", &padded(down, MAX_DATAGRAM_BUDGET));
    }
}

#[test]
fn nested_counts_never_allocate_beyond_the_frame_bound() {
    // Broadcasts: a full batch count, each message's sender ID claiming a huge string.
    let mut body = vec![2];
    varint_u64(&mut body, MAX_BATCH as u64);
    for _ in 0..MAX_BATCH {
        body.extend_from_slice(&[1, 2]); // id, sent_at_ms
        varint_u64(&mut body, MAX_SERVER_FRAME as u64 - 64);
    }
    check_frame::<LaneEvent>("nested sender", &padded(body, MAX_SERVER_FRAME), MAX_SERVER_FRAME);
    // Many small members, each followed by another huge element count.
    let mut body = vec![0];
    varint_u64(&mut body, u64::MAX);
    while body.len() < MAX_SERVER_FRAME - 16 {
        body.extend_from_slice(&[7, 1, b'u', 1, b'n']);
    }
    check_frame::<LaneEvent>("many members", &padded(body, MAX_SERVER_FRAME), MAX_SERVER_FRAME);
    // Many tiny targets in a command.
    let mut body = vec![0, 3, 1, b'r'];
    varint_u64(&mut body, u64::MAX);
    while body.len() < MAX_REQUEST_FRAME - 8 {
        body.extend_from_slice(&[1, b't']);
    }
    check_frame::<RequestFrame>(
        "many targets",
        &padded(body, MAX_REQUEST_FRAME),
        MAX_REQUEST_FRAME,
    );
}

#[test]
fn inputs_the_fuzzers_found_stay_within_the_bound() {
    // `request_frame` before lists were bounded: a command claiming 65532 targets made serde
    // preallocate 1 MiB for them.
    let targets = [0x03, 0x03, 0x00, 0xFB, 0xFC, 0xFF, 0x6C, 0x2B];
    check_frame::<RequestFrame>("fuzzed targets", &targets, MAX_REQUEST_FRAME);
    // `datagrams` before datagrams had their own limit: a 6-byte barrage claiming a
    // 26010-byte payload allocated it.
    let payload = [0x00, 0x01, 0x02, 0xFB, 0x9A, 0x65];
    check_datagram::<ClientDatagram>("fuzzed payload", &payload);
}

#[test]
fn maximal_valid_frames_stay_within_the_bound() {
    let message = BroadcastMessage {
        id: u64::MAX,
        sent_at_ms: u64::MAX,
        from: max_user(),
        payload: Bytes::from(vec![0xAB; MAX_PAYLOAD]),
    };
    let batch = encode_body(&LaneEvent::Broadcasts(vec![message; MAX_BATCH])).unwrap();
    check_frame::<LaneEvent>("full batch", &batch, MAX_SERVER_FRAME);
    let member = Member { session: u32::MAX, user: max_user() };
    let users = encode_body(&LaneEvent::UsersJoined(vec![member; MAX_USERS_PER_UPDATE])).unwrap();
    check_frame::<LaneEvent>("full user update", &users, MAX_SERVER_FRAME);
    // Only the 4-byte header of a maximal frame: the buffer reserved for the body is the bound.
    let mut header_only = BytesMut::from(&(MAX_SERVER_FRAME as u32).to_be_bytes()[..]);
    let usage = measure(|| decode_frame::<LaneEvent>(&mut header_only, MAX_SERVER_FRAME));
    assert!(usage.largest <= MAX_SERVER_FRAME + SLACK, "header only: {usage:?}");
    // A garbage body of the maximal size.
    check_frame::<LaneEvent>("max garbage", &[0xFF; MAX_SERVER_FRAME], MAX_SERVER_FRAME);
}
