//! Result codes carried in replies and lane-close events, and QUIC application close codes.

use serde::{Deserialize, Serialize};

/// A result code: why a request was refused or a room lane was closed.
///
/// A plain number on the wire so that codes added later still decode; [`ErrorCode::name`]
/// gives the stable name the docs and the CLI use. Codes are grouped by their thousands:
/// 1xxx bad request, 2xxx authentication, 3xxx room state, 4xxx frequency limits,
/// 5xxx produced by the client library itself (never sent by a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this version knows, for docs and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The stable upper-case name of a known code, or `"UNKNOWN"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                    _ => "UNKNOWN",
                }
            }
        }
    };
}

codes! {
    /// The payload is empty.
    PAYLOAD_EMPTY = 1001;
    /// The payload is longer than 1024 bytes.
    PAYLOAD_TOO_LARGE = 1002;
    /// The room ID is empty, too long or has a character outside the allowed set.
    INVALID_ROOM_ID = 1003;
    /// The user ID is empty, too long or has a character outside the allowed set.
    INVALID_USER_ID = 1004;
    /// The user name is empty, too long, or has a control, format (bidi, zero-width) or
    /// line-separator character.
    INVALID_USER_NAME = 1005;
    /// The connection is not logged in to that room.
    NOT_LOGGED_IN = 1006;
    /// A listed target user of a custom command is not in the room.
    UNKNOWN_TARGET_USER = 1007;
    /// A custom command lists too many targets, or a target ID that is not a valid user ID.
    INVALID_TARGETS = 1008;
    /// The connection is already logged in to that room.
    ALREADY_LOGGED_IN = 1009;
    /// The login names a different user from the one this connection logged in as.
    USER_MISMATCH = 1010;
    /// A `FetchMembers` cursor that this room never gave out (another room's, one from before
    /// the room was created anew, or made up).
    INVALID_CURSOR = 1011;
    /// The token is missing, malformed, or its signature does not verify.
    TOKEN_INVALID = 2001;
    /// The token has expired (renew it with a new token).
    TOKEN_EXPIRED = 2002;
    /// The token does not grant this room.
    ROOM_NOT_GRANTED = 2003;
    /// The token does not grant sending (it may only listen).
    PUBLISH_NOT_GRANTED = 2004;
    /// The token was issued to a different user ID.
    TOKEN_USER_MISMATCH = 2005;
    /// The connection is already in the maximum number of rooms.
    TOO_MANY_ROOMS = 3001;
    /// The room has the maximum number of members.
    ROOM_FULL = 3002;
    /// Lane closed: the same user logged in to this room from another connection.
    KICKED_LOGGED_IN_ELSEWHERE = 3003;
    /// Lane closed: the client logged out of the room.
    LOGGED_OUT = 3004;
    /// Lane closed: the receiver fell too far behind on reliable messages.
    SLOW_RECEIVER = 3005;
    /// Lane closed: the server is shutting down.
    SERVER_SHUTTING_DOWN = 3006;
    /// The server failed to handle the request (a bug; the server logs it).
    INTERNAL = 3007;
    /// The login would create a room, and the server already holds its maximum of rooms
    /// (`max_rooms`), none of them empty.
    SERVER_ROOM_LIMIT = 3008;
    /// Lane closed: the application's backend kicked this user (server API); not re-joined
    /// automatically.
    KICKED_BY_SERVER = 3009;
    /// Lane closed: the application's backend closed the room (server API); its history is
    /// gone.
    ROOM_CLOSED = 3010;
    /// The relay is one node of a cluster and cannot reach the cluster (NATS) now, or is
    /// still catching up with it: the request was not carried out; try again. (Should a lane
    /// ever close with it, the client library logs in again, as after `SLOW_RECEIVER`.)
    CLUSTER_UNAVAILABLE = 3011;
    /// Too many logins to this room per second.
    LOGIN_RATE_LIMITED = 4001;
    /// This user sends this kind of message too often.
    USER_RATE_LIMITED = 4002;
    /// The room as a whole carries too many messages of this kind per second.
    ROOM_RATE_LIMITED = 4003;
    /// (client) No reply arrived in time; a barrage datagram may have been lost.
    TIMEOUT = 5001;
    /// (client) The connection is closed or was lost.
    DISCONNECTED = 5002;
    /// (client) The path cannot carry the datagram, or the peer does not accept datagrams.
    DATAGRAM_UNAVAILABLE = 5003;
    /// (client) The server answered with something the client could not use.
    PROTOCOL = 5004;
    /// (server API) The `Authorization: Bearer` API key is missing or wrong (HTTP 401).
    UNAUTHORIZED = 6001;
    /// (server API) The request body or path is malformed: bad JSON, a missing field, bad
    /// base64 (HTTP 400).
    BAD_REQUEST = 6002;
    /// (server API) No such room on this relay (HTTP 404).
    ROOM_NOT_FOUND = 6003;
    /// (server API) The user is not in the room (HTTP 404).
    USER_NOT_FOUND = 6004;
    /// (server API) No such route (HTTP 404).
    NOT_FOUND = 6005;
    /// (server API) The route exists but not with this method (HTTP 405).
    METHOD_NOT_ALLOWED = 6006;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// QUIC application close codes (`CONNECTION_CLOSE` frame, type 0x1d).
pub mod close {
    /// The client or server closed normally.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol: an undecodable frame, trailing bytes, a wrong stream.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// A frame announced a length above the bound for its stream.
    pub const FRAME_TOO_LARGE: u32 = 2;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// The client did not open its control stream in time after the handshake.
    pub const NO_CONTROL_STREAM: u32 = 4;
    /// The connection was in no room for `login_timeout_ms`: it never logged in after the
    /// handshake, or did not log in again after leaving its last room.
    pub const LOGIN_TIMEOUT: u32 = 5;
    /// The client did not take its control-stream replies for `control_stall_ms`.
    pub const CONTROL_STALLED: u32 = 6;

    /// A readable name for a close code.
    pub fn name(code: u64) -> &'static str {
        match code {
            0 => "NORMAL",
            1 => "PROTOCOL_VIOLATION",
            2 => "FRAME_TOO_LARGE",
            3 => "SHUTDOWN",
            4 => "NO_CONTROL_STREAM",
            5 => "LOGIN_TIMEOUT",
            6 => "CONTROL_STALLED",
            _ => "UNKNOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert_ne!(code.name(), "UNKNOWN");
        }
        assert_eq!(ErrorCode(9999).name(), "UNKNOWN");
        assert_eq!(ErrorCode::PAYLOAD_TOO_LARGE.to_string(), "PAYLOAD_TOO_LARGE (1002)");
    }
}
