//! One WebTransport session on a quinn connection that negotiated ALPN `h3`.
//!
//! `web-transport-quinn` does the HTTP/3 part: it exchanges SETTINGS (it sends both the
//! draft-02 `ENABLE_WEBTRANSPORT` = 0x2b603742 that Chromium negotiates and the later drafts'
//! `WEBTRANSPORT_MAX_SESSIONS`), reads the CONNECT request, answers it with
//! `sec-webtransport-http3-draft: draft02`, keeps the HTTP/3 control and CONNECT streams open
//! and writes the `CLOSE_WEBTRANSPORT_SESSION` capsule on close. The streams and datagrams of
//! the session are handled here, on the quinn connection itself, so that the connection task
//! and the lanes work on plain `quinn` streams whichever kind of peer they serve:
//! - a stream the relay opens (a lane) starts with the WebTransport unidirectional stream
//!   header (type 0x54, session ID);
//! - the stream the browser opens (the control stream) starts with the bidirectional stream
//!   header (frame type 0x41, session ID), read and checked here;
//! - a datagram starts with the session's quarter stream ID (RFC 9297), 1 byte for the first
//!   session, as its CONNECT is on stream 0 (see `SESSION_ID`).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use tracing::debug;
use web_transport_quinn::http::StatusCode;

/// The URL path of the relay's WebTransport endpoint (`https://HOST:PORT/qrelay`).
pub const PATH: &str = "/qrelay";

/// HTTP/3 stream type of a WebTransport unidirectional stream (draft-02, section 4.2).
const UNI_STREAM_TYPE: u64 = 0x54;
/// HTTP/3 frame type that opens a WebTransport bidirectional stream (draft-02, section 4.3).
const BIDI_FRAME_TYPE: u64 = 0x41;
/// Unidirectional streams a browser opens on an HTTP/3 connection: its control stream and the
/// QPACK encoder and decoder streams. HTTP/3 requires at least 3 in the transport parameters
/// (RFC 9114, section 6.2); Chromium closes the connection when the server offers fewer.
const BROWSER_UNI_STREAMS: u32 = 3;
/// Bidirectional streams of a session: the CONNECT stream, open as long as the session is,
/// and the control stream.
const BROWSER_BIDI_STREAMS: u32 = 2;
/// The session ID, which is the CONNECT stream's ID: always 0, the first client bidirectional
/// stream, as quinn hands out incoming streams in ID order and the CONNECT is read from the
/// first one accepted (a browser whose CONNECT is elsewhere fails the exchange).
const SESSION_ID: u64 = 0;
/// Length of the quarter stream ID prefix of the session's datagrams (quarter ID 0: one
/// byte), so the largest barrage datagram is `MAX_DATAGRAM_BUDGET + 1` bytes.
const DATAGRAM_PREFIX: usize = 1;

/// Why a connection that negotiated `h3` did not become a session.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// No SETTINGS and CONNECT in time.
    #[error("no WebTransport CONNECT within {0:?}")]
    Timeout(Duration),
    /// The HTTP/3 exchange failed (a malformed SETTINGS or CONNECT, or not WebTransport).
    #[error("HTTP/3 handshake failed: {0}")]
    Handshake(#[from] web_transport_quinn::ServerError),
    /// A CONNECT to another path than [`PATH`] (answered 404).
    #[error("CONNECT to {0:?}, not {PATH}")]
    WrongPath(String),
}

/// Why a stream of the session could not be opened or accepted.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection ended.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// Writing the stream header failed.
    #[error("stream header not written: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended inside its header.
    #[error("stream header not read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The browser's stream does not start with a WebTransport header for this session.
    #[error("stream header {kind:#x} {session}: not a WebTransport stream of session {expected}")]
    Header {
        /// The frame type read.
        kind: u64,
        /// The session ID read.
        session: u64,
        /// This session's ID.
        expected: u64,
    },
}

/// An accepted session: the quinn connection and the HTTP/3 state that must live as long.
#[derive(Debug)]
pub struct Session {
    /// The QUIC connection, which this session owns whole (one session per connection).
    conn: quinn::Connection,
    /// Holds the HTTP/3 control and CONNECT streams open; writes the close capsule.
    http3: web_transport_quinn::Session,
    /// The session ID: the CONNECT stream's ID.
    id: u64,
    /// Written at the start of every unidirectional stream the relay opens.
    uni_header: Bytes,
    /// Written before every datagram: the quarter stream ID.
    datagram_prefix: Bytes,
}

/// Accepts the WebTransport session of `conn` (which negotiated `h3`) within `timeout`: the
/// HTTP/3 SETTINGS exchange, then a CONNECT to [`PATH`], answered 200; a CONNECT to another
/// path is answered 404.
pub async fn accept(conn: quinn::Connection, timeout: Duration) -> Result<Session, AcceptError> {
    let handshake = async {
        let request = web_transport_quinn::Request::accept(conn.clone()).await?;
        let path = request.url.path().to_owned();
        if path != PATH {
            let _ = request.reject(StatusCode::NOT_FOUND).await;
            return Err(AcceptError::WrongPath(path));
        }
        Ok(request.ok().await?)
    };
    let http3 = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| AcceptError::Timeout(timeout))??;
    let id = SESSION_ID;
    let mut datagram_prefix = BytesMut::new();
    put_varint(&mut datagram_prefix, id / 4);
    debug_assert_eq!(datagram_prefix.len(), DATAGRAM_PREFIX);
    let mut uni_header = BytesMut::new();
    put_varint(&mut uni_header, UNI_STREAM_TYPE);
    put_varint(&mut uni_header, id);
    debug!(session = id, "WebTransport session accepted");
    Ok(Session {
        conn,
        http3,
        id,
        uni_header: uni_header.freeze(),
        datagram_prefix: datagram_prefix.freeze(),
    })
}

/// Raises the server's stream limits to what a browser needs ([`BROWSER_UNI_STREAMS`],
/// [`BROWSER_BIDI_STREAMS`]). They are transport parameters, sent before the ALPN of a
/// connection is known, so native connections get them too: the connection task closes a
/// native connection that opens a stream beyond its control stream (`PROTOCOL_VIOLATION`).
pub fn allow_browser_streams(transport: &mut quinn::TransportConfig) {
    transport.max_concurrent_uni_streams(VarInt::from_u32(BROWSER_UNI_STREAMS));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(BROWSER_BIDI_STREAMS));
}

impl Session {
    /// The QUIC connection under the session.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Accepts the next bidirectional stream of the session, after its header.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), StreamError> {
        let (send, mut recv) = self.conn.accept_bi().await?;
        let kind = read_varint(&mut recv).await?;
        let session = read_varint(&mut recv).await?;
        if kind != BIDI_FRAME_TYPE || session != self.id {
            return Err(StreamError::Header { kind, session, expected: self.id });
        }
        Ok((send, recv))
    }

    /// Opens a unidirectional stream of the session; its header is queued before anything
    /// the caller writes.
    pub async fn open_uni(&self) -> Result<SendStream, StreamError> {
        let mut send = self.conn.open_uni().await?;
        send.write_chunk(self.uni_header.clone()).await?;
        Ok(send)
    }

    /// Sends one datagram of the session: `body` behind the quarter stream ID (a copy: quinn
    /// takes one contiguous buffer).
    pub fn send_datagram(&self, body: &Bytes) -> Result<(), quinn::SendDatagramError> {
        let mut datagram = BytesMut::with_capacity(self.datagram_prefix.len() + body.len());
        datagram.extend_from_slice(&self.datagram_prefix);
        datagram.extend_from_slice(body);
        self.conn.send_datagram(datagram.freeze())
    }

    /// Room in the datagram send buffer for bodies, the prefix taken off.
    pub fn datagram_send_buffer_space(&self) -> usize {
        self.conn.datagram_send_buffer_space().saturating_sub(self.datagram_prefix.len())
    }

    /// The next datagram's body; an empty one when the datagram is not for this session
    /// (the caller counts it as malformed, as any body that does not decode).
    pub async fn read_datagram(&self) -> Result<Bytes, quinn::ConnectionError> {
        let mut datagram = self.conn.read_datagram().await?;
        if !datagram.starts_with(&self.datagram_prefix) {
            return Ok(Bytes::new());
        }
        Ok(datagram.split_off(self.datagram_prefix.len()))
    }

    /// Closes the session: the browser gets `code` and `reason` (its `WebTransport.closed`
    /// resolves with them), then the QUIC connection closes.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.http3.close(code, reason);
    }

    /// A stream error code in the HTTP/3 space WebTransport maps application codes to, so
    /// the browser reads `code` back (`WebTransportError.streamErrorCode`).
    pub fn stream_code(code: u32) -> VarInt {
        VarInt::from_u64(web_transport_quinn::proto::error_to_http3(code))
            .unwrap_or(VarInt::from_u32(0))
    }
}

/// Appends a QUIC variable-length integer (RFC 9000, section 16).
fn put_varint(buf: &mut BytesMut, value: u64) {
    match value {
        0..=0x3f => buf.put_u8(value as u8),
        0x40..=0x3fff => buf.put_u16(0x4000 | value as u16),
        0x4000..=0x3fff_ffff => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | value),
    }
}

/// Reads a QUIC variable-length integer from the start of a stream.
async fn read_varint(recv: &mut RecvStream) -> Result<u64, quinn::ReadExactError> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await?;
    let len = 1usize << (first[0] >> 6);
    let mut bytes = [0u8; 8];
    bytes[0] = first[0] & 0x3f;
    recv.read_exact(&mut bytes[1..len]).await?;
    Ok(bytes[..len].iter().fold(0u64, |value, byte| (value << 8) | u64::from(*byte)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_as_rfc_9000_shows() {
        // RFC 9000, appendix A.1's examples.
        for (value, encoded) in [
            (37u64, &[0x25u8][..]),
            (15293, &[0x7b, 0xbd]),
            (494_878_333, &[0x9d, 0x7f, 0x3e, 0x7d]),
            (151_288_809_941_952_652, &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(&buf[..], encoded, "{value}");
        }
    }

    #[test]
    fn the_datagram_prefix_is_one_byte() {
        let mut prefix = BytesMut::new();
        put_varint(&mut prefix, SESSION_ID / 4);
        assert_eq!(prefix.len(), DATAGRAM_PREFIX);
    }

    #[test]
    fn the_stream_headers_are_the_draft_02_ones() {
        let mut uni = BytesMut::new();
        put_varint(&mut uni, UNI_STREAM_TYPE);
        put_varint(&mut uni, 0);
        assert_eq!(&uni[..], &[0x40, 0x54, 0x00]);
        let mut bidi = BytesMut::new();
        put_varint(&mut bidi, BIDI_FRAME_TYPE);
        assert_eq!(&bidi[..], &[0x40, 0x41]);
    }

    #[test]
    fn the_worst_case_barrage_fits_a_browser_datagram_behind_its_prefix() {
        use crate::protocol::{BarrageMessage, MAX_DATAGRAM_BUDGET, MAX_PAYLOAD, ServerDatagram};
        let worst = ServerDatagram::Barrage(BarrageMessage {
            room_number: u32::MAX,
            id: u64::MAX,
            sent_at_ms: u64::MAX,
            sender: u32::MAX,
            payload: Bytes::from(vec![0xff; MAX_PAYLOAD]),
        });
        let body = crate::protocol::encode_body(&worst).unwrap();
        let on_the_wire = DATAGRAM_PREFIX + body.len();
        assert!(body.len() <= MAX_DATAGRAM_BUDGET);
        // Chromium's `WebTransport.datagrams.maxDatagramSize` at the initial path MTU.
        assert!(on_the_wire <= 1211, "{on_the_wire}");
    }
}
