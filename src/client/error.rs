//! The one error type of the client library, with its mapping to wire result codes.

use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::ErrorCode;

/// Why a client operation failed.
///
/// [`ClientError::code`] gives the result code the docs list: the server's own code for a
/// refusal, the same code for a mistake the client caught before sending, and a 5xxx code for
/// failures the client library produces itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request.
    #[error("refused: {code}: {detail}")]
    Refused {
        /// The server's result code.
        code: ErrorCode,
        /// The server's explanation.
        detail: String,
    },
    /// The client's own check refused the request before anything was sent (the code is the
    /// one the server would have answered).
    #[error("invalid: {code}: {detail}")]
    Invalid {
        /// The result code the server would have given.
        code: ErrorCode,
        /// What is wrong.
        detail: String,
    },
    /// No reply arrived within the request timeout (for a barrage, the datagram or its reply
    /// may have been lost; the message may or may not have been delivered).
    #[error("no reply within the request timeout")]
    Timeout,
    /// The connection is closed or was lost.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// A barrage datagram cannot be sent on this connection (peer or path does not allow it).
    #[error("datagram unavailable: {0}")]
    DatagramUnavailable(String),
    /// The connection could not be established (for a reason other than the two below).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No relay answered the handshake in time: none runs at that address, or UDP to it is
    /// blocked.
    #[error("no relay answered at {server} within {}", readable(*waited))]
    NoAnswer {
        /// The address tried (of several, the last one; see [`super::ServerList`]).
        server: SocketAddr,
        /// How long the client waited.
        waited: Duration,
    },
    /// The relay's certificate is not signed by a CA the client trusts
    /// ([`super::ClientConfig::roots`]): the wrong CA file, or the relay's certificates were
    /// made anew.
    #[error("the relay's certificate is not signed by a trusted CA ({0})")]
    UntrustedCertificate(String),
    /// The server answered with something this client cannot use.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client is not logged in to this room (a barrage needs the room number from the
    /// login reply).
    #[error("not logged in to room {0:?}")]
    NotLoggedIn(String),
}

impl ClientError {
    /// The result code of this error, as the docs and the CLI name it.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Refused { code, .. } | ClientError::Invalid { code, .. } => *code,
            ClientError::Timeout => ErrorCode::TIMEOUT,
            ClientError::Disconnected(_)
            | ClientError::Connect(_)
            | ClientError::NoAnswer { .. }
            | ClientError::UntrustedCertificate(_) => ErrorCode::DISCONNECTED,
            ClientError::DatagramUnavailable(_) => ErrorCode::DATAGRAM_UNAVAILABLE,
            ClientError::Protocol(_) => ErrorCode::PROTOCOL,
            ClientError::NotLoggedIn(_) => ErrorCode::NOT_LOGGED_IN,
        }
    }

    /// The human-readable part of the error, without the code.
    pub fn detail(&self) -> String {
        match self {
            ClientError::Refused { detail, .. } | ClientError::Invalid { detail, .. } => {
                detail.clone()
            }
            ClientError::Timeout => "no reply within the request timeout".into(),
            ClientError::Disconnected(reason)
            | ClientError::DatagramUnavailable(reason)
            | ClientError::Connect(reason)
            | ClientError::Protocol(reason) => reason.clone(),
            ClientError::NotLoggedIn(room) => format!("not logged in to room {room:?}"),
            ClientError::NoAnswer { .. } | ClientError::UntrustedCertificate(_) => self.to_string(),
        }
    }

    /// An [`ClientError::Invalid`] from a failed local check.
    pub(crate) fn invalid(code: ErrorCode, detail: impl Into<String>) -> Self {
        ClientError::Invalid { code, detail: detail.into() }
    }
}

/// A duration as people read it: whole milliseconds below 10 s, whole seconds above
/// (`2s 813ms`, not `2s 813ms 21us 949ns`).
pub(crate) fn readable(duration: Duration) -> humantime::FormattedDuration {
    let rounded = if duration >= Duration::from_secs(10) {
        Duration::from_secs(duration.as_secs_f64().round() as u64)
    } else {
        Duration::from_millis(duration.as_secs_f64().mul_add(1000.0, 0.5) as u64)
    };
    humantime::format_duration(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_read_them() {
        assert_eq!(readable(Duration::from_nanos(2_813_021_949)).to_string(), "2s 813ms");
        assert_eq!(readable(Duration::from_millis(12_600)).to_string(), "13s");
        assert_eq!(readable(Duration::from_secs(120)).to_string(), "2m");
    }

    #[test]
    fn client_side_failures_have_5xxx_codes() {
        assert_eq!(ClientError::Timeout.code(), ErrorCode::TIMEOUT);
        assert_eq!(ClientError::Timeout.code().0, 5001);
        assert_eq!(ClientError::Disconnected("x".into()).code(), ErrorCode::DISCONNECTED);
        assert_eq!(ClientError::DatagramUnavailable("x".into()).code().0, 5003);
        assert_eq!(ClientError::Protocol("x".into()).code().0, 5004);
        assert_eq!(ClientError::NotLoggedIn("r".into()).code(), ErrorCode::NOT_LOGGED_IN);
        let no_answer = ClientError::NoAnswer {
            server: "127.0.0.1:4433".parse().unwrap(),
            waited: Duration::from_millis(1500),
        };
        assert_eq!(no_answer.code(), ErrorCode::DISCONNECTED);
        assert_eq!(no_answer.detail(), "no relay answered at 127.0.0.1:4433 within 1s 500ms");
        let untrusted = ClientError::UntrustedCertificate("UnknownIssuer".into());
        assert_eq!(untrusted.code(), ErrorCode::DISCONNECTED);
        let refused = ClientError::Refused { code: ErrorCode::ROOM_FULL, detail: "full".into() };
        assert_eq!(refused.code(), ErrorCode::ROOM_FULL);
        assert_eq!(refused.detail(), "full");
    }
}
