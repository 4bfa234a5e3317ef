//! A room lane as the client reads it: one `LaneHeader` frame, then `LaneEvent` frames (bound
//! `MAX_SERVER_FRAME`); the same bytes also as a stream of events alone and as bare bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrelay::protocol::{FRAME_HEADER_LEN, LaneEvent, LaneHeader, MAX_SERVER_FRAME};
use qrelay_fuzz::{body, frames};

fuzz_target!(|data: &[u8]| {
    let header = frames::<LaneHeader>("lane header", data, MAX_SERVER_FRAME);
    if let Some(Ok(_)) = header.first() {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        frames::<LaneEvent>("lane events", &data[FRAME_HEADER_LEN + len..], MAX_SERVER_FRAME);
    }
    frames::<LaneEvent>("lane events only", data, MAX_SERVER_FRAME);
    body::<LaneHeader>("lane header body", data);
    body::<LaneEvent>("lane event body", data);
});
