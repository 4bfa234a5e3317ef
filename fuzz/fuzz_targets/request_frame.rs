//! Client requests as the server reads them: a stream of `RequestFrame`s on the control stream
//! (bound `MAX_REQUEST_FRAME`), and the same bytes as one bare body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrelay::protocol::{MAX_REQUEST_FRAME, RequestFrame};
use qrelay_fuzz::{body, frames};

fuzz_target!(|data: &[u8]| {
    frames::<RequestFrame>("request frames", data, MAX_REQUEST_FRAME);
    body::<RequestFrame>("request body", data);
});
