//! The WebTransport adapter: browsers reach the relay on its own UDP port, over HTTP/3
//! (ALPN `h3`, next to `qrelay/1`), and speak the same protocol inside a WebTransport session
//! (docs/PROTOCOL.md, section "WebTransport"). The connection task (`server::connection`)
//! serves both kinds of connection through `server::peer::Peer`; this folder holds only what
//! WebTransport adds.
//!
//! - [`session`]: accepting a session on a connection that negotiated `h3` (HTTP/3 SETTINGS
//!   and the CONNECT exchange, through the `web-transport-quinn` crate, WebTransport draft-02
//!   as Chromium speaks it), then the stream headers and the datagram prefix that carry our
//!   frames inside it.
//! - [`cert`]: the certificate a browser sees: the short-lived development certificate (ECDSA
//!   P-256, at most 14 days, renewed before it ends; its SHA-256 goes to the page) or the
//!   operator's own, chosen per TLS handshake by ALPN.
//!
//! Why `web-transport-quinn` and not `wtransport`: both build on quinn 0.11 and speak draft-02,
//! but only the former accepts a session on a `quinn::Connection` that the relay's own endpoint
//! accepted, so browsers and native clients share the UDP port, the endpoint, the connection
//! limits and the connection task (`wtransport` binds its own endpoint and socket).

pub mod cert;
pub mod session;

pub use cert::{CertResolver, DevCert, WebTransportCert};
pub use session::{AcceptError, PATH, Session};

/// The ALPN protocol ID of HTTP/3, which a browser's WebTransport offers.
pub const ALPN_H3: &[u8] = b"h3";
