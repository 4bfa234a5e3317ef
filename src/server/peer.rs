//! The transport under one client connection: a native QUIC connection (ALPN `qrelay/1`) or a
//! browser's WebTransport session (ALPN `h3`). The connection task, the rooms (barrage) and
//! the lanes talk to a [`Peer`], so they serve both kinds alike; this is the only place that
//! tells them apart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};

use crate::webtransport::{self, session::StreamError};

/// Longest interval between two keep-alives to a browser: as native clients' own (5 s), so a
/// relay with an idle timeout down to 15 s keeps idle pages.
const BROWSER_KEEP_ALIVE_MAX: Duration = Duration::from_secs(5);

/// The body of a keep-alive datagram to a browser: `0xFF` never starts a valid
/// `ServerDatagram` (it is no varint prefix, PROTOCOL.md section 4). Not empty: Chromium stops
/// delivering a session's datagrams to the page after one with an empty payload (measured
/// with Chromium 156: none arrived after the first keep-alive when it was empty).
pub const KEEP_ALIVE: &[u8] = &[0xff];

/// One client's connection, cheap to clone (one per lane writer and room membership).
#[derive(Debug, Clone)]
pub enum Peer {
    /// A native client: our frames directly on QUIC streams and datagrams.
    Quic(quinn::Connection),
    /// A browser: the same frames inside a WebTransport session.
    WebTransport(Arc<webtransport::Session>),
}

impl Peer {
    /// The QUIC connection under it.
    pub fn connection(&self) -> &quinn::Connection {
        match self {
            Peer::Quic(conn) => conn,
            Peer::WebTransport(session) => session.connection(),
        }
    }

    /// Accepts the client's control stream.
    pub async fn accept_control(&self) -> Result<(SendStream, RecvStream), StreamError> {
        match self {
            Peer::Quic(conn) => Ok(conn.accept_bi().await?),
            Peer::WebTransport(session) => session.accept_bi().await,
        }
    }

    /// Waits until a native client opens a stream the protocol does not have (a
    /// unidirectional one, or a bidirectional one after its control stream: the stream limits
    /// let it when WebTransport is on, see `webtransport::session::allow_browser_streams`), and
    /// says `true`; `false` once the connection has ended. A browser's HTTP/3 streams are
    /// expected: for a browser it only waits for the end.
    pub async fn unexpected_stream(&self) -> bool {
        match self {
            Peer::Quic(conn) => tokio::select! {
                uni = conn.accept_uni() => uni.is_ok(),
                bi = conn.accept_bi() => bi.is_ok(),
            },
            Peer::WebTransport(session) => {
                session.connection().closed().await;
                false
            }
        }
    }

    /// Opens a room lane's stream.
    pub async fn open_uni(&self) -> Result<SendStream, StreamError> {
        match self {
            Peer::Quic(conn) => Ok(conn.open_uni().await?),
            Peer::WebTransport(session) => session.open_uni().await,
        }
    }

    /// Queues one barrage datagram (a WebTransport one gets its prefix, in a copy).
    pub fn send_datagram(&self, datagram: &Bytes) -> Result<(), quinn::SendDatagramError> {
        match self {
            Peer::Quic(conn) => conn.send_datagram(datagram.clone()),
            Peer::WebTransport(session) => session.send_datagram(datagram),
        }
    }

    /// Room left in the datagram send buffer: a datagram longer than this makes quinn drop the
    /// oldest queued one.
    pub fn datagram_send_buffer_space(&self) -> usize {
        match self {
            Peer::Quic(conn) => conn.datagram_send_buffer_space(),
            Peer::WebTransport(session) => session.datagram_send_buffer_space(),
        }
    }

    /// The next datagram the client sent (for WebTransport, its body; empty when it was not
    /// one of the session's, so that it counts as malformed).
    pub async fn read_datagram(&self) -> Result<Bytes, quinn::ConnectionError> {
        match self {
            Peer::Quic(conn) => conn.read_datagram().await,
            Peer::WebTransport(session) => session.read_datagram().await,
        }
    }

    /// How often the relay must send something to keep this peer's connection from idling
    /// out: browsers send no keep-alives of their own on an idle WebTransport session (native
    /// clients do, see `transport_config`); `None` for native clients.
    pub fn keep_alive_interval(&self, idle_timeout: Duration) -> Option<Duration> {
        match self {
            Peer::Quic(_) => None,
            Peer::WebTransport(_) => Some((idle_timeout / 3).min(BROWSER_KEEP_ALIVE_MAX)),
        }
    }

    /// Sends a keep-alive: a WebTransport datagram whose body is [`KEEP_ALIVE`], which
    /// clients ignore (docs/PROTOCOL.md, section 13). Best effort.
    pub fn keep_alive(&self) {
        if let Peer::WebTransport(session) = self {
            let _ = session.send_datagram(&Bytes::from_static(KEEP_ALIVE));
        }
    }

    /// Closes the connection with a close code of docs/PROTOCOL.md (a browser reads it from
    /// `WebTransport.closed`).
    pub fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Peer::Quic(conn) => conn.close(VarInt::from_u32(code), reason),
            Peer::WebTransport(session) => session.close(code, reason),
        }
    }

    /// The code to reset a stream with so the client reads `code` back.
    pub fn stream_code(&self, code: u32) -> VarInt {
        match self {
            Peer::Quic(_) => VarInt::from_u32(code),
            Peer::WebTransport(_) => webtransport::Session::stream_code(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ServerDatagram, decode_datagram};

    #[test]
    fn the_keep_alive_is_no_server_datagram() {
        assert!(decode_datagram::<ServerDatagram>(KEEP_ALIVE).is_err());
    }
}
