//! Server replies as the client reads them: a stream of `ControlFrame`s (bound
//! `MAX_SERVER_FRAME`), and the same bytes as one bare body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrelay::protocol::{ControlFrame, MAX_SERVER_FRAME};
use qrelay_fuzz::{body, frames};

fuzz_target!(|data: &[u8]| {
    frames::<ControlFrame>("control frames", data, MAX_SERVER_FRAME);
    body::<ControlFrame>("control body", data);
});
