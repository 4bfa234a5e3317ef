//! The wire protocol: message types, limits, result codes and the codec. Pure data: this module
//! imports neither tokio nor quinn, so another transport or a fuzzer can drive it directly.

mod codec;
mod codes;
mod limits;
mod messages;

pub use codec::{
    CodecError, FRAME_HEADER_LEN, decode_body, decode_datagram, decode_frame, decode_frame_in,
    encode_body, encode_broadcast_batch, encode_frame,
};
pub use codes::{ErrorCode, close};
pub use limits::*;
pub use messages::*;

/// The ALPN protocol ID of this protocol version.
pub const ALPN: &[u8] = b"qrelay/1";
