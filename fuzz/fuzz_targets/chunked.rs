//! A stream fed in arbitrary chunks to the `BytesMut` decode loop `FrameReader` runs must
//! decode exactly as the whole stream at once: same frames, same error, nothing lost.
//!
//! Input: byte 0 picks the frame type (even: `RequestFrame`, odd: `LaneEvent`); byte 1 is `n`
//! (0 to 15); the next `n` bytes are chunk sizes, used in turn (0 counts as 1); the rest is
//! the stream.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qrelay::protocol::{
    CodecError, LaneEvent, MAX_REQUEST_FRAME, MAX_SERVER_FRAME, RequestFrame, decode_frame,
};
use qrelay_fuzz::{FRAME_ALLOC_BOUND, bounded, frames};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let [kind, n, rest @ ..] = data else { return };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    if kind % 2 == 0 {
        same_in_chunks::<RequestFrame>(sizes, stream, MAX_REQUEST_FRAME);
    } else {
        same_in_chunks::<LaneEvent>(sizes, stream, MAX_SERVER_FRAME);
    }
});

fn same_in_chunks<T>(sizes: &[u8], stream: &[u8], max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let whole = frames::<T>("whole stream", stream, max);
    let mut chunked: Vec<Result<T, CodecError>> = Vec::new();
    let mut buf = BytesMut::new();
    let mut sizes = sizes.iter().map(|&s| usize::from(s.max(1))).cycle();
    let mut rest = stream;
    'feed: while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        buf.extend_from_slice(chunk);
        rest = tail;
        loop {
            match bounded("chunked", FRAME_ALLOC_BOUND, || decode_frame::<T>(&mut buf, max)) {
                Ok(Some(frame)) => chunked.push(Ok(frame)),
                Ok(None) => break,
                Err(e) => {
                    chunked.push(Err(e));
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(chunked, whole, "chunked decoding differs from whole decoding");
}
