//! Shared checks of the qrelay fuzz targets: decode with a counting allocator, assert the
//! allocation bound, and check what every successful decode must satisfy.
//!
//! Every target panics (a libFuzzer crash) when a decoder panics, allocates more than its
//! bound in one call, accepts bytes it did not use, or decodes something that does not
//! re-encode to the same value.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::BytesMut;
use qrelay::protocol::{
    CodecError, FRAME_HEADER_LEN, MAX_DATAGRAM_BUDGET, MAX_SERVER_FRAME, decode_body,
    decode_datagram, decode_frame, encode_body, encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Allowed above a decoder's bound in one call (a `Vec` of a few elements, bookkeeping).
pub const SLACK: usize = 16 * 1024;

/// The most one frame decode may allocate, in one block or outstanding at once.
pub const FRAME_ALLOC_BOUND: usize = MAX_SERVER_FRAME + SLACK;

/// The most one datagram decode may allocate.
pub const DATAGRAM_ALLOC_BOUND: usize = MAX_DATAGRAM_BUDGET + SLACK;

// ---- the counting allocator (libFuzzer runs one input at a time, on one thread) ----

struct Counting;

static TRACKING: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn on_alloc(size: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn on_dealloc(size: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        // Memory allocated before the measurement may be freed during it.
        let _ = CURRENT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(size)));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only touches atomics.
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
        on_alloc(new_size);
        on_dealloc(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and panics if it allocated more than `bound` bytes in one block or at once.
pub fn bounded<R>(what: &str, bound: usize, f: impl FnOnce() -> R) -> R {
    CURRENT.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    TRACKING.store(true, Ordering::Relaxed);
    let result = f();
    TRACKING.store(false, Ordering::Relaxed);
    let (largest, peak) = (LARGEST.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed));
    assert!(largest <= bound, "{what}: one allocation of {largest} bytes (bound {bound})");
    assert!(peak <= bound, "{what}: {peak} bytes allocated at once (bound {bound})");
    result
}

// ---- checks ----

/// Every frame in `data` (a stream of frames of `T`, bound `max`), decoded one at a time until
/// the stream is incomplete or malformed; checks each decoded frame.
pub fn frames<T>(what: &str, data: &[u8], max: usize) -> Vec<Result<T, CodecError>>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match bounded(what, FRAME_ALLOC_BOUND, || decode_frame::<T>(&mut buf, max)) {
            Ok(Some(value)) => {
                let used = before - buf.len();
                check_reencodes(&value, used - FRAME_HEADER_LEN, max);
                out.push(Ok(value));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "{what}: an incomplete frame consumed bytes");
                return out;
            }
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// Decodes `data` as one bare body of `T`; a success must have used every byte.
pub fn body<T>(what: &str, data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = bounded(what, FRAME_ALLOC_BOUND, || decode_body::<T>(data)) {
        check_reencodes(&value, data.len(), MAX_SERVER_FRAME);
    }
}

/// Decodes `data` as a datagram of `T` within the datagram allocation bound.
pub fn datagram<T>(what: &str, data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = bounded(what, DATAGRAM_ALLOC_BOUND, || decode_datagram::<T>(data)) {
        assert!(data.len() <= MAX_DATAGRAM_BUDGET, "{what}: an oversize datagram decoded");
        let again = encode_body(&value).expect("a decoded datagram re-encodes");
        assert_eq!(decode_datagram::<T>(&again).as_ref(), Ok(&value), "{what}: re-encoding");
    }
}

/// A decoded value re-encodes (at most as long as the `len` bytes it came from: bincode's
/// encoding is the shortest) and decodes back to itself.
fn check_reencodes<T>(value: &T, len: usize, max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut again = BytesMut::new();
    encode_frame(value, &mut again).expect("a decoded value re-encodes");
    assert!(again.len() - FRAME_HEADER_LEN <= len, "re-encoding {value:?} grew");
    let decoded = decode_frame::<T>(&mut again, max)
        .expect("a re-encoded value decodes")
        .expect("a re-encoded frame is whole");
    assert_eq!(&decoded, value, "re-decoding");
}
