//! Barrage datagrams: the same bytes as a `ClientDatagram` (what the server reads) and as a
//! `ServerDatagram` (what the client reads), within the datagram allocation bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrelay::protocol::{ClientDatagram, ServerDatagram};
use qrelay_fuzz::datagram;

fuzz_target!(|data: &[u8]| {
    datagram::<ClientDatagram>("client datagram", data);
    datagram::<ServerDatagram>("server datagram", data);
});
