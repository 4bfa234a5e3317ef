//! QUIC and TLS setup shared by the server and the client: the one `transport_config()`,
//! rustls configs with the qrelay ALPN, and framed reading from quinn streams. The server half
//! (`EndpointKeys`, `server_config`, `bind_udp`) needs the `server` feature.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
#[cfg(feature = "server")]
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, RecvStream, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
#[cfg(feature = "server")]
use rustls::pki_types::PrivateKeyDer;
use serde::de::DeserializeOwned;

use crate::protocol::{ALPN, CodecError, decode_frame, decode_frame_in};

/// Unacknowledged packets above which a client must acknowledge (see [`ask_for_fewer_acks`]).
const ACK_ELICITING_THRESHOLD: u32 = 8;
/// Longest the relay lets a client delay an acknowledgement by default (see
/// [`ask_for_fewer_acks`]; the relay's `ack_delay_ms`): short, so that a lost packet is resent
/// soon even when nothing follows it.
pub const SERVER_ACK_DELAY: Duration = Duration::from_millis(20);

/// Unacknowledged data the relay lets one connection have in flight (see `transport_config`):
/// 64 KiB. Data beyond it waits at the relay, where later messages join it in fuller packets
/// (coalescing under load), instead of queueing in front of a receiver that is behind: with
/// 256 KiB, a load-tool receiver that kept up with 5,000 messages/s still saw them 0.3-0.7 s
/// late (BENCHMARKS.md). It caps one connection at 64 KiB per round trip (640 KB/s at
/// 100 ms), far above a room's message rates.
pub const SERVER_SEND_WINDOW: u64 = 64 * 1024;

/// Longest interval between a client's keep-alives (see `transport_config`).
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(5);

/// Incoming barrage a connection buffers until the application reads it (see
/// `transport_config`); a client sizes its own to the age of barrage it keeps
/// ([`client_config_with`]).
pub const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// HKDF salt of the [`EndpointKeys`]; the labels below make one key each out of the secret.
#[cfg(feature = "server")]
const ENDPOINT_KEYS_SALT: &[u8] = b"qrelay endpoint keys v1";
#[cfg(feature = "server")]
const RESET_LABEL: &[u8] = b"stateless reset";
#[cfg(feature = "server")]
const ADDRESS_VALIDATION_LABEL: &[u8] = b"address validation";
#[cfg(feature = "server")]
const CONNECTION_ID_LABEL: &[u8] = b"connection id";

/// Which side a transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The relay.
    Server,
    /// A client connection.
    Client,
}

/// The QUIC transport parameters of every qrelay connection. quinn's defaults are sized for
/// bulk transfer; a room relay moves small messages, so windows are capped to bound the
/// memory one peer can make the other hold.
pub fn transport_config(side: Side, idle_timeout: Duration) -> TransportConfig {
    let mut config = TransportConfig::default();
    // A peer that vanishes is dropped after this long without any packet.
    config.max_idle_timeout(IdleTimeout::try_from(idle_timeout).ok());
    match side {
        Side::Server => {
            // Clients open exactly one bidirectional stream: the control stream.
            config.max_concurrent_bidi_streams(VarInt::from_u32(1));
            // Clients never open unidirectional streams; lanes are server-opened.
            config.max_concurrent_uni_streams(VarInt::from_u32(0));
            // Requests are at most 16 KiB frames; 64 KiB lets a few queue (default 1.25 MB).
            config.stream_receive_window(VarInt::from_u32(64 * 1024));
            // Connection-wide receive cap (quinn's default is unbounded).
            config.receive_window(VarInt::from_u32(128 * 1024));
            // Unacknowledged lane data per connection (quinn's default 10 MB): bounds the memory
            // a slow receiver can pin in the server, and the data queued on the way to a
            // receiver that is behind (the relay's `send_window_bytes` overrides it).
            config.send_window(SERVER_SEND_WINDOW);
            ask_for_fewer_acks(&mut config, SERVER_ACK_DELAY);
        }
        Side::Client => {
            // One lane per joined room, plus room for lanes still closing.
            config.max_concurrent_uni_streams(VarInt::from_u32(64));
            config.max_concurrent_bidi_streams(VarInt::from_u32(0));
            // A lane frame can be 128 KiB (a full batch); the window must hold at least one.
            config.stream_receive_window(VarInt::from_u32(256 * 1024));
            config.receive_window(VarInt::from_u32(1024 * 1024));
            config.send_window(128 * 1024);
            // Keep-alives make an idle but healthy client survive the idle timeout, which is
            // the smaller of both sides' (unknown before the handshake): a third of ours, and
            // at most KEEP_ALIVE_MAX, so a relay with a timeout down to 3 x KEEP_ALIVE_MAX
            // keeps default clients.
            config.keep_alive_interval(Some((idle_timeout / 3).min(KEEP_ALIVE_MAX)));
        }
    }
    // Incoming barrage not yet read by the application; older datagrams are dropped past this.
    config.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    // Outgoing barrage queued per connection: small, so a congested receiver gets barrage
    // dropped (quinn drops the oldest) instead of delivered seconds late.
    config.datagram_send_buffer_size(64 * 1024);
    config
}

/// Asks clients (the QUIC ACK-frequency extension, which the reference client supports) to
/// acknowledge once more than 8 packets are unacknowledged, or `max_delay` after the first
/// unacknowledged one, and at once when a packet arrives out of order (a gap: reordering
/// threshold 1, as RFC 9000 does without the extension; quinn's default of 2 waits for the
/// second packet after a loss). Without it clients acknowledge every other packet, or after 25
/// ms. A room sends each receiver a packet every 100 ms or so: with a delay shorter than that,
/// every such packet costs an ACK packet back, which the relay receives, decrypts and processes.
/// 200 ms instead of 20 ms cut relay CPU per delivery by a third in rooms at 10 messages/s, but
/// the relay then learns of a lost packet only when the next one shows the gap, or after
/// `max_delay`: p99 at 1 % loss went from 31-33 to 104-105 ms (BENCHMARKS.md). quinn-proto caps
/// the delay it asks for at the path RTT (25 ms on a LAN); the vendored copy lifts the cap for
/// a configured value (vendor/README.md).
pub fn ask_for_fewer_acks(config: &mut TransportConfig, max_delay: Duration) {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(max_delay))
        .reordering_threshold(VarInt::from_u32(1));
    config.ack_frequency_config(Some(ack));
}

/// Binds the relay's UDP socket: the one place for socket options. `buffer_bytes` (0 keeps
/// the system default, about 208 KiB on Linux) asks for larger receive and send buffers
/// (Linux caps them at `net.core.rmem_max` and `net.core.wmem_max`): they absorb handshake
/// storms, at the cost of queueing delay when the relay is overloaded. Returns the socket and
/// the receive and send buffer sizes granted. With `reuse_port`, further sockets bound the same
/// way share the address (`SO_REUSEPORT`; Unix only): Linux hashes each peer's address and port
/// to one of them.
#[cfg(feature = "server")]
pub fn bind_udp(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
    reuse_port: bool,
) -> std::io::Result<(std::net::UdpSocket, usize, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Listen on exactly the address given, not on IPv4 too.
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        #[cfg(not(unix))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "SO_REUSEPORT (several endpoints on one address) needs a Unix system",
        ));
    }
    if buffer_bytes > 0 {
        // Best effort: a smaller grant is reported, not an error.
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
    }
    socket.bind(&addr.into())?;
    let granted = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    Ok((socket.into(), granted.0, granted.1))
}

/// The keys a relay's QUIC endpoint needs to keep across restarts, derived from a persistent
/// secret (the relay uses its token secret). quinn makes them random per process by default:
/// a restarted relay then drops the packets of its old connections (unknown connection IDs), and
/// their clients learn that the connection is gone only at their idle timeout (30 s). With the
/// same keys the new process recognises the old connection IDs and answers with a stateless
/// reset the client accepts, so it reconnects at its next packet (a keep-alive at the latest,
/// every 5 s with default clients).
#[cfg(feature = "server")]
#[derive(Clone)]
pub struct EndpointKeys {
    /// Signs stateless-reset tokens (HMAC-SHA256 of the connection ID).
    reset: ring::hmac::Key,
    /// Seals the address-validation tokens of QUIC Retry and NEW_TOKEN (HKDF, AES-256-GCM), so
    /// a token issued before a restart is still valid after it.
    address_validation: ring::hkdf::Prk,
    /// Keys the check value in the relay's connection IDs: packets whose ID does not carry it
    /// are dropped unanswered, so the old process's IDs must carry the new process's value.
    connection_ids: u64,
}

#[cfg(feature = "server")]
impl std::fmt::Debug for EndpointKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointKeys(..)")
    }
}

#[cfg(feature = "server")]
impl EndpointKeys {
    /// Derives the keys from `secret` with HKDF-SHA256, one label each: the secret itself is
    /// never used as a key, and none of the keys reveals another or the secret. Relays that
    /// derive from the same secret recognise each other's connections.
    pub fn derive(secret: &[u8]) -> Self {
        use ring::{hkdf, hmac};
        let root = hkdf::Salt::new(hkdf::HKDF_SHA256, ENDPOINT_KEYS_SALT).extract(secret);
        // Expanding fails only for outputs over 255 hashes long; these are 8 and 32 bytes.
        const SHORT: &str = "HKDF-SHA256 expands to 32 bytes";
        let reset = hmac::Key::from(root.expand(&[RESET_LABEL], hmac::HMAC_SHA256).expect(SHORT));
        let address_validation = hkdf::Prk::from(
            root.expand(&[ADDRESS_VALIDATION_LABEL], hkdf::HKDF_SHA256).expect(SHORT),
        );
        let mut connection_ids = [0; 8];
        root.expand(&[CONNECTION_ID_LABEL], OutputLen(connection_ids.len()))
            .and_then(|okm| okm.fill(&mut connection_ids))
            .expect(SHORT);
        Self { reset, address_validation, connection_ids: u64::from_le_bytes(connection_ids) }
    }

    /// The endpoint configuration of every relay socket: reset key and connection IDs.
    pub(crate) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(Arc::new(self.reset.clone()));
        let key = self.connection_ids;
        // quinn's default generator with a persistent key instead of a random one.
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(key))
        });
        config
    }
}

/// Builds the server's QUIC config from a certificate chain and key, with the address-
/// validation key of `keys`.
#[cfg(feature = "server")]
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    keys: &EndpointKeys,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, rustls::Error> {
    let tls = tls13_server()?.with_single_cert(chain, key)?;
    quic_server_config(tls, vec![ALPN.to_vec()], keys, idle_timeout)
}

/// [`server_config`] with the certificate of each handshake chosen by `certs`, and the
/// protocols `alpn` (the relay offers `qrelay/1` and, with WebTransport on, `h3`).
#[cfg(feature = "server")]
pub fn server_config_with_resolver(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
    keys: &EndpointKeys,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, rustls::Error> {
    let tls = tls13_server()?.with_cert_resolver(certs);
    quic_server_config(tls, alpn, keys, idle_timeout)
}

/// A TLS 1.3-only server config (ring, no client certificates), waiting for its certificate.
#[cfg(feature = "server")]
fn tls13_server() -> Result<
    rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    rustls::Error,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth())
}

#[cfg(feature = "server")]
fn quic_server_config(
    mut tls: rustls::ServerConfig,
    alpn: Vec<Vec<u8>>,
    keys: &EndpointKeys,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig, rustls::Error> {
    tls.alpn_protocols = alpn;
    // 0-RTT would let a replayed request be delivered twice: keep it off.
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config =
        quinn::ServerConfig::new(Arc::new(crypto), Arc::new(keys.address_validation.clone()));
    // Connection migration stays on (quinn's default, set here because clients rely on it):
    // a client whose address changes (Wi-Fi to mobile data, a NAT rebinding, the client
    // library's `Client::rebind`) keeps its connection, rooms, lanes and barrage. quinn checks
    // the new path (PATH_CHALLENGE) and, until it answers, sends there no more than three times
    // what it received from it.
    config.migration(true);
    config.transport_config(Arc::new(transport_config(Side::Server, idle_timeout)));
    Ok(config)
}

/// Builds a client QUIC config that trusts `roots`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, rustls::Error> {
    client_config_with(roots, idle_timeout, DATAGRAM_RECEIVE_BUFFER)
}

/// [`client_config`] with a datagram receive buffer of `datagram_receive_buffer` bytes
/// instead of [`DATAGRAM_RECEIVE_BUFFER`] (at least one full datagram and quinn's 32 bytes
/// of bookkeeping for it: quinn closes the connection on a datagram that does not fit the
/// whole buffer).
pub fn client_config_with(
    roots: &[CertificateDer<'static>],
    idle_timeout: Duration,
    datagram_receive_buffer: usize,
) -> Result<quinn::ClientConfig, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(Side::Client, idle_timeout);
    transport.datagram_receive_buffer_size(Some(datagram_receive_buffer));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream or connection failed.
    #[error(transparent)]
    Stream(#[from] quinn::ReadError),
}

/// Reads length-prefixed frames from one quinn receive stream.
#[derive(Debug)]
pub struct FrameReader {
    stream: RecvStream,
    /// The unread rest of the last chunk received, while no frame is split across chunks:
    /// frames are decoded from it in place (the usual case: a packet holds whole frames).
    chunk: Bytes,
    /// A frame split across chunks, assembled (copied) here.
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    /// Wraps `stream`; frames longer than `max` are refused.
    pub fn new(stream: RecvStream, max: usize) -> Self {
        Self { stream, chunk: Bytes::new(), buf: BytesMut::new(), max }
    }

    /// The next frame, or `Ok(None)` when the stream finished cleanly between frames.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ReadError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(Some(frame));
            }
            match self.stream.read_chunk(READ_CHUNK, true).await? {
                // Nothing pending: the chunk is decoded in place.
                Some(chunk) if self.buf.is_empty() => self.chunk = chunk.bytes,
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadError::Truncated),
            }
        }
    }

    /// The next frame if a whole one is already buffered, without reading the stream.
    pub fn next_buffered<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ReadError> {
        if !self.chunk.is_empty() {
            if let Some(frame) = decode_frame_in(&mut self.chunk, self.max)? {
                if self.chunk.is_empty() {
                    // An empty slice still holds the packet's buffer: let it go.
                    self.chunk = Bytes::new();
                }
                return Ok(Some(frame));
            }
            // A frame continues in the next chunk: assemble it in `buf`.
            self.buf.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
        Ok(decode_frame(&mut self.buf, self.max)?)
    }

    /// The underlying stream (to stop or reset it).
    pub fn stream_mut(&mut self) -> &mut RecvStream {
        &mut self.stream
    }
}

/// An HKDF output length, for keys ring has no type for.
#[cfg(feature = "server")]
struct OutputLen(usize);

#[cfg(feature = "server")]
impl ring::hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keys_come_from_the_secret_and_are_not_the_secret() {
        use quinn::crypto::HmacKey;
        let reset_tag = |keys: &EndpointKeys| {
            let mut tag = [0; 32];
            keys.reset.sign(b"a connection ID", &mut tag);
            tag
        };
        let one = EndpointKeys::derive(b"one secret");
        assert_eq!(reset_tag(&one), reset_tag(&EndpointKeys::derive(b"one secret")));
        assert_eq!(one.connection_ids, EndpointKeys::derive(b"one secret").connection_ids);
        let other = EndpointKeys::derive(b"another secret");
        assert_ne!(reset_tag(&one), reset_tag(&other));
        assert_ne!(one.connection_ids, other.connection_ids);
        let raw = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"one secret");
        assert_ne!(&reset_tag(&one)[..], ring::hmac::sign(&raw, b"a connection ID").as_ref());
    }
}
