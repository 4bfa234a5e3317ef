//! Server settings: every field has a documented default, so a relay runs with no file at all;
//! an optional TOML file (`qrelay serve --config FILE`) overrides any of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most UDP endpoints a relay may run: one per core is the point of more than one, so a
/// larger number is a mistake, not a machine.
pub const MAX_ENDPOINTS: usize = 256;

/// Smallest `send_window_bytes`: a dozen full packets, so a connection is never starved.
pub const MIN_SEND_WINDOW: u64 = 16 * 1024;

/// Everything a relay can be told. `Default` is the documented default of each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address to listen on. Default `127.0.0.1:4433`.
    pub listen: SocketAddr,
    /// TCP address of the HTTP listener: the server API (`/v1/...`, needs the API key),
    /// `/metrics`, `/healthz` and `/readyz`. `None` turns it off (`http = "off"` in TOML,
    /// `--no-http`). Default `127.0.0.1:4480`; bind it to a private interface in production
    /// (docs/API.md).
    #[serde(with = "optional_address")]
    pub http: Option<SocketAddr>,
    /// TCP address of the demo page's listener: the live-comment page and the JavaScript
    /// client (`web/`), the page's WebTransport settings (`/config.json`) and, with the
    /// development token secret on a loopback address only, development tokens
    /// (`/dev/token`). `None` turns it off (`web = "off"`, `--no-web`). Default
    /// `127.0.0.1:8080`: on loopback by default so that `qrelay serve` alone shows the page.
    #[serde(with = "optional_address")]
    pub web: Option<SocketAddr>,
    /// Accept browsers' WebTransport sessions (ALPN `h3`) on `listen`, next to native
    /// clients (`qrelay/1`). Default `true`.
    pub webtransport: bool,
    /// Webhook URLs (`http://` or `https://`) that get the room events (`room_created`,
    /// `room_closed`, `user_joined`, `user_left`) as signed JSON, in order. Default none.
    pub webhooks: Vec<String>,
    /// Room events queued for the webhooks before new ones are dropped (and counted).
    /// Default 10000.
    pub webhook_queue: usize,
    /// Accept any token (or none) and take the user ID from the login. For local tries only:
    /// `qrelay serve` says so in its banner, and it is refused on a `listen` address that is
    /// not loopback unless `insecure_dev_auth_on_public_address` is set too. Default `false`.
    pub insecure_dev_auth: bool,
    /// Allow `insecure_dev_auth` on a `listen` address that is not loopback (where anyone who
    /// can reach the relay can log in as anyone). Default `false`.
    pub insecure_dev_auth_on_public_address: bool,
    /// Milliseconds without a packet after which a peer is dropped and its rooms told.
    /// Default 30000.
    pub idle_timeout_ms: u64,
    /// Milliseconds a new connection may take to send its first control-stream frame.
    /// Default 10000.
    pub control_stream_timeout_ms: u64,
    /// Milliseconds a connection may stay without any room: after the handshake until its
    /// first successful login, and after it leaves its last room (logout, kick, too slow).
    /// Past it the connection is closed with close code `LOGIN_TIMEOUT`, so connections that
    /// never log in cannot hold connection slots. Default 10000.
    pub login_timeout_ms: u64,
    /// Milliseconds the relay waits for a client to take its control-stream replies (QUIC flow
    /// control) before it closes the connection with `CONTROL_STALLED`. While it waits it reads
    /// no further requests from that client. Default 10000.
    pub control_stall_ms: u64,
    /// Seconds before a token's expiry at which the client is warned. Default 30.
    pub token_warning_secs: u64,
    /// Most connections at once, handshakes in progress included; more are refused at the
    /// handshake (QUIC transport error `CONNECTION_REFUSED`). Default 10000.
    pub max_connections: usize,
    /// Most connections from one source IP address at once, handshakes in progress included;
    /// more are refused at the handshake (`CONNECTION_REFUSED`), so one host cannot take every
    /// slot. An IPv4 client of a dual-stack socket counts as its IPv4 address. Default 100.
    pub max_connections_per_address: usize,
    /// Handshakes in progress from which new connection attempts must first prove their
    /// address with a QUIC Retry (one more round trip; the server keeps no state for them, and
    /// a spoofed source cannot answer). At most this many handshakes from unvalidated
    /// addresses run at once; 0 validates every address. Default 32.
    pub retry_above_handshakes: usize,
    /// Most rooms one connection may be logged in to. Default 5.
    pub max_rooms_per_connection: usize,
    /// Most members in one room. Default 10000.
    pub max_members_per_room: usize,
    /// Events queued for one receiver's room lane before the receiver counts as too slow
    /// (its lane is closed with `SLOW_RECEIVER`). Default 4096.
    pub lane_queue: usize,
    /// Bytes queued for one receiver's room lane (encoded events not yet handed to QUIC)
    /// before the receiver counts as too slow (`SLOW_RECEIVER`). The member list and replay
    /// a login starts with are queued whatever their size and count against this. Default
    /// 524288 (512 KiB).
    pub lane_queue_bytes: usize,
    /// Bytes queued for all the room lanes of one connection together; an event that would
    /// exceed it closes that lane with `SLOW_RECEIVER`. Default 1048576 (1 MiB).
    pub connection_queue_bytes: usize,
    /// Milliseconds a new lane may wait for the client to accept its QUIC stream (the client
    /// grants the relay unidirectional streams); past it the member is removed and its other
    /// rooms' members told. Default 5000.
    pub lane_open_timeout_ms: u64,
    /// Most rooms at once, rooms kept only for their history included. A login that would
    /// create one more first removes the empty room whose history is oldest; when no room is
    /// empty it is refused with `SERVER_ROOM_LIMIT`. Default 100000.
    pub max_rooms: usize,
    /// Bytes of broadcast history all rooms hold together (encoded messages). Above it the
    /// history of empty rooms goes first, the room that emptied longest ago first; then the
    /// oldest broadcasts of rooms with members. Default 268435456 (256 MiB).
    pub max_history_bytes: usize,
    /// Let the kernel split one large send into packets (UDP GSO) where it can. Default `true`;
    /// switch off to compare, or on a path where GSO misbehaves.
    pub segmentation_offload: bool,
    /// Unacknowledged bytes the relay lets one connection have in flight (QUIC send window).
    /// Beyond it, data waits at the relay, where later messages join it in fuller packets,
    /// rather than queueing in front of a receiver that is behind; it also caps a connection's
    /// throughput at this much per round trip. Default 65536 (BENCHMARKS.md compares 16 KiB to
    /// 256 KiB); at least 16384.
    pub send_window_bytes: u64,
    /// Longest a client may wait before acknowledging what the relay sent it (asked with
    /// QUIC's ACK-frequency extension, of clients that support it; they also acknowledge at
    /// once when more than 8 packets are unacknowledged or a packet arrives out of order).
    /// Longer means fewer ACK packets for the relay to process and the client to send: at a
    /// room's 10 messages/s, 200 instead of 20 cut relay CPU per delivery by a third. But the
    /// relay then learns of a lost packet only when the next one shows the gap, or after this
    /// long: at 1 % loss, p99 latency went from 31-33 to 104-105 ms (BENCHMARKS.md). Default
    /// 20, for latency; 200 for big rooms where the relay's CPU is the limit. 1 to 1000.
    pub ack_delay_ms: u64,
    /// Let the room write an event straight into the receiver's QUIC stream when its lane has
    /// nothing queued (the usual case), instead of waking the lane's writer task: one task
    /// wake-up and one queue hop fewer per receiver. Anything that cannot be written at once
    /// goes to the lane's queue and bounds, as before. Default `true`; switch off to compare.
    pub lane_direct_writes: bool,
    /// Bytes asked for the UDP socket's receive and send buffers (the kernel may grant less:
    /// Linux caps them at `net.core.rmem_max` / `wmem_max`). 0 keeps the system default.
    /// Default 0: larger buffers absorb handshake storms, but under overload they queue
    /// packets instead of dropping them, and latency grows with the buffer (BENCHMARKS.md).
    pub udp_buffer_bytes: usize,
    /// UDP sockets bound to `listen` together (`SO_REUSEPORT`, Unix only above 1), each with
    /// its own QUIC endpoint; every endpoint after the first runs on an OS thread of its own
    /// with a single-threaded runtime, and all share the rooms and counters. Linux hashes each
    /// client's address and port to one socket, so a connection stays on one endpoint; a client
    /// whose address changes mid-connection (NAT rebinding) lands on another endpoint, which
    /// resets the connection, and has to reconnect. Default 1: one socket, on the runtime that
    /// runs the relay.
    pub endpoints: usize,
    /// Broadcasts each room keeps for recovery after a re-login (0 turns recovery off).
    /// Default 500.
    pub history_size: usize,
    /// Seconds a broadcast stays in the history; an empty room lives until its history
    /// expires. Default 300.
    pub history_ttl_secs: u64,
    /// Milliseconds a room lane may make no progress at all (the client withholds QUIC flow
    /// control) before the relay resets it with `SLOW_RECEIVER` and removes the member: the
    /// client's unread data on that lane is lost, so the client re-logs in with recovery.
    /// Default 60000.
    pub lane_stall_ms: u64,
    /// Rooms with more members than this batch their user updates (joins and leaves): the
    /// members get them with the room's next messages, or after `user_update_interval_ms`,
    /// whichever comes first, one event for many changes. Smaller rooms get each at once.
    /// Default 500.
    pub user_updates_batched_above: usize,
    /// Longest wait of a batched user update, milliseconds (1 to 60000). Default 1000.
    pub user_update_interval_ms: u64,
    /// Rooms with more members than this are large, and stay large while they exist: a login
    /// gets the member count and the first `login_member_page` members instead of the whole
    /// list (more through `FetchMembers`, page by page), and the members hear the new count
    /// (batched like user updates, at most once per `user_update_interval_ms` or with the next
    /// messages) instead of who joined or left. So a login costs the same in a room of any
    /// size. Default 1000.
    pub large_room_above: usize,
    /// Members in the first page a login to a large room gets (0 to 200). Default 100.
    pub login_member_page: usize,
    /// Frequency limits.
    pub limits: RateLimits,
    /// Certificate, key and token secret files.
    pub tls: TlsFiles,
    /// Cluster through NATS (`[cluster]` in TOML, `--nats URL`): `None`, the default, runs a
    /// single relay with no external service. docs/CLUSTER.md has the design.
    pub cluster: Option<ClusterConfig>,
}

/// How a relay joins a cluster: the NATS servers (with JetStream) that every node of the
/// cluster uses, and this node's name. Relays that share the NATS servers, the stream prefix
/// and the certificate directory (CA and token secret) form one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated (`nats://127.0.0.1:4222`, `tls://nats.internal:4222`).
    /// Default `nats://127.0.0.1:4222`.
    pub nats: String,
    /// This node's name in logs, metrics and the cluster's liveness messages (1 to 64 of
    /// `A-Za-z0-9_-`). Default: the host name, else `qrelay`.
    pub node: String,
    /// A NATS credentials file (`.creds`: JWT and NKey seed). Default none.
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for NATS over TLS (besides the system's).
    /// Default none.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS servers that require mutual TLS. Default none.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Require TLS to NATS. Default `false` (a `tls://` URL requires it anyway).
    pub require_tls: bool,
    /// Prefix of the JetStream streams and NATS subjects (`QRELAY_ROOMS`, `qrelay.room.…`):
    /// two clusters on one NATS need different prefixes. Default `qrelay`.
    pub prefix: String,
    /// A node not heard from for this long is lost: the others tell its rooms that its
    /// members left (milliseconds, 500 to 60000). Default 3000.
    pub node_timeout_ms: u64,
    /// How long NATS may take to confirm a publish before the request is refused with
    /// `CLUSTER_UNAVAILABLE` (milliseconds, 100 to 60000). Default 2000.
    pub publish_timeout_ms: u64,
    /// JetStream storage of the room logs and member records: `file` (survives a restart of
    /// NATS) or `memory`. Default `file`.
    pub storage: ClusterStorage,
    /// How long a room's log is kept after its last event (seconds): IDs and history of a
    /// room silent for longer start anew (with a new epoch). Default 86400 (one day).
    pub log_max_age_secs: u64,
}

/// Where JetStream keeps the cluster's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterStorage {
    /// On disk (the NATS server's `-sd` store directory).
    File,
    /// In the NATS server's memory.
    Memory,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: "nats://127.0.0.1:4222".into(),
            node: default_node_name(),
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            prefix: "qrelay".into(),
            node_timeout_ms: 3000,
            publish_timeout_ms: 2000,
            storage: ClusterStorage::File,
            log_max_age_secs: 86_400,
        }
    }
}

/// The host name if it is a valid node name, else `qrelay`.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| valid_name(name))
        .unwrap_or_else(|| "qrelay".into())
}

/// 1 to 64 of `A-Za-z0-9_-`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ClusterConfig {
    /// Checks values that would make the cluster unusable.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.node) {
            return Err(format!("cluster.node {:?} must be 1 to 64 of A-Za-z0-9_-", self.node));
        }
        if !valid_name(&self.prefix) {
            return Err(format!("cluster.prefix {:?} must be 1 to 64 of A-Za-z0-9_-", self.prefix));
        }
        if self.nats.split(',').any(|url| url.trim().is_empty()) {
            return Err("cluster.nats must list one or more NATS URLs, comma-separated".into());
        }
        for url in self.nats.split(',').map(str::trim) {
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                format!("cluster.nats: {url:?} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT): {e}")
            })?;
        }
        if !(500..=60_000).contains(&self.node_timeout_ms) {
            return Err("cluster.node_timeout_ms must be 500 to 60000".into());
        }
        if !(100..=60_000).contains(&self.publish_timeout_ms) {
            return Err("cluster.publish_timeout_ms must be 100 to 60000".into());
        }
        if self.log_max_age_secs == 0 {
            return Err("cluster.log_max_age_secs must be above 0".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("cluster.tls_cert and cluster.tls_key go together".into());
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 4480))),
            web: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            webtransport: true,
            webhooks: Vec::new(),
            webhook_queue: 10_000,
            insecure_dev_auth: false,
            insecure_dev_auth_on_public_address: false,
            idle_timeout_ms: 30_000,
            control_stream_timeout_ms: 10_000,
            login_timeout_ms: 10_000,
            control_stall_ms: 10_000,
            token_warning_secs: 30,
            max_connections: 10_000,
            max_connections_per_address: 100,
            retry_above_handshakes: 32,
            max_rooms_per_connection: 5,
            max_members_per_room: 10_000,
            lane_queue: 4096,
            lane_queue_bytes: 512 * 1024,
            connection_queue_bytes: 1024 * 1024,
            lane_open_timeout_ms: 5_000,
            max_rooms: 100_000,
            max_history_bytes: 256 * 1024 * 1024,
            segmentation_offload: true,
            send_window_bytes: crate::transport::SERVER_SEND_WINDOW,
            ack_delay_ms: crate::transport::SERVER_ACK_DELAY.as_millis() as u64,
            lane_direct_writes: true,
            udp_buffer_bytes: 0,
            endpoints: 1,
            history_size: 500,
            history_ttl_secs: 300,
            lane_stall_ms: 60_000,
            user_updates_batched_above: 500,
            user_update_interval_ms: 1000,
            large_room_above: 1000,
            login_member_page: 100,
            limits: RateLimits::default(),
            tls: TlsFiles::default(),
            cluster: None,
        }
    }
}

impl ServerConfig {
    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// `ack_delay_ms` as a duration.
    pub fn ack_delay(&self) -> Duration {
        Duration::from_millis(self.ack_delay_ms)
    }

    /// Checks values that would make the relay unusable.
    pub fn validate(&self) -> Result<(), String> {
        if self.insecure_dev_auth
            && !self.insecure_dev_auth_on_public_address
            && !self.listen.ip().to_canonical().is_loopback()
        {
            return Err(format!(
                "insecure_dev_auth (anyone can log in as anyone) is refused on {}, which is not a \
                 loopback address; to allow it there, set insecure_dev_auth_on_public_address too \
                 (--insecure-dev-auth-on-public-address)",
                self.listen
            ));
        }
        let timeouts = [
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("lane_stall_ms", self.lane_stall_ms),
            ("login_timeout_ms", self.login_timeout_ms),
            ("control_stall_ms", self.control_stall_ms),
            ("lane_open_timeout_ms", self.lane_open_timeout_ms),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, ms)| *ms == 0) {
            return Err(format!("{name} must be above 0"));
        }
        if self.max_rooms == 0 {
            return Err("max_rooms must be above 0".into());
        }
        if self.lane_queue_bytes < crate::protocol::MAX_SERVER_FRAME
            || self.connection_queue_bytes < self.lane_queue_bytes
        {
            return Err(format!(
                "lane_queue_bytes must be at least {} (one frame) and connection_queue_bytes at least lane_queue_bytes",
                crate::protocol::MAX_SERVER_FRAME
            ));
        }
        if self.max_rooms_per_connection == 0 || self.max_members_per_room == 0 {
            return Err("max_rooms_per_connection and max_members_per_room must be above 0".into());
        }
        if !(1..=60_000).contains(&self.user_update_interval_ms) {
            return Err("user_update_interval_ms must be 1 to 60000".into());
        }
        if self.send_window_bytes < MIN_SEND_WINDOW {
            return Err(format!("send_window_bytes must be at least {MIN_SEND_WINDOW}"));
        }
        if !(1..=1000).contains(&self.ack_delay_ms) {
            return Err("ack_delay_ms must be 1 to 1000".into());
        }
        if self.login_member_page > crate::protocol::MAX_MEMBER_PAGE {
            return Err(format!(
                "login_member_page must be at most {}",
                crate::protocol::MAX_MEMBER_PAGE
            ));
        }
        if self.max_connections_per_address == 0 {
            return Err("max_connections_per_address must be above 0".into());
        }
        if !(1..=MAX_ENDPOINTS).contains(&self.endpoints) {
            return Err(format!("endpoints must be from 1 to {MAX_ENDPOINTS}"));
        }
        if self.lane_queue < crate::protocol::MAX_BATCH {
            return Err(format!("lane_queue must be at least {}", crate::protocol::MAX_BATCH));
        }
        // A new lane must hold the member list, the recovery event and a full replay.
        let member_frames = self
            .max_members_per_room
            .min(self.large_room_above)
            .div_ceil(crate::protocol::MAX_USERS_PER_UPDATE)
            .max(1);
        if self.history_size + member_frames + 1 > self.lane_queue {
            return Err(format!(
                "lane_queue ({}) must exceed history_size ({}) plus the member-list frames ({member_frames})",
                self.lane_queue, self.history_size
            ));
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        Ok(())
    }
}

/// An optional socket address in TOML: an address, or `"off"` for none.
mod optional_address {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| D::Error::custom(format!("{text:?}: {e} (or \"off\")")))
    }
}

/// Where the relay's TLS identity and token secret live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// Directory of the development PKI, created on first start when `cert` and `key` are not
    /// set. Default `certs`.
    pub certs_dir: PathBuf,
    /// A real certificate chain (PEM). Default: `certs_dir/server.pem`.
    pub cert: Option<PathBuf>,
    /// The key of `cert` (PEM). Default: `certs_dir/server.key`.
    pub key: Option<PathBuf>,
    /// The token-signing secret (hex). Default: `certs_dir/token.secret`, created if missing.
    pub token_secret: Option<PathBuf>,
    /// The server API key (and webhook signing key). Default: `certs_dir/api.key`, created if
    /// missing.
    pub api_key: Option<PathBuf>,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            certs_dir: PathBuf::from("certs"),
            cert: None,
            key: None,
            token_secret: None,
            api_key: None,
        }
    }
}

/// Frequency limits, in messages per second; 0 means unlimited. The defaults are the documented
/// limits of the commercial SDKs' room messaging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Broadcasts per second in one room, all senders together. Default 10.
    pub broadcast_per_room: f64,
    /// Broadcasts per second from one user in one room. Default 2.
    pub broadcast_per_user: f64,
    /// Barrage messages per second in one room, all senders together. Default 20.
    pub barrage_per_room: f64,
    /// Custom commands per second from one user to a single target. Default 200.
    pub command_to_one_per_user: f64,
    /// Custom commands per second from one user to several targets or everyone. Default 10.
    pub command_to_many_per_user: f64,
    /// Logins per second to one room. Default 200.
    pub login_per_room: f64,
    /// Logins per second of one user to one room (bursts of up to 5), counted whichever
    /// connection they come from: bounds the join/leave churn one user makes every member
    /// hear. Default 1.
    pub login_per_user: f64,
    /// Rooms one user may create per second (bursts of up to 10): a login to a room that
    /// does not exist yet creates it. Default 1.
    pub room_create_per_user: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            broadcast_per_room: 10.0,
            broadcast_per_user: 2.0,
            barrage_per_room: 20.0,
            command_to_one_per_user: 200.0,
            command_to_many_per_user: 10.0,
            login_per_room: 200.0,
            login_per_user: 1.0,
            room_create_per_user: 1.0,
        }
    }
}

impl RateLimits {
    /// No limits at all: the profile for benchmarks and load tests.
    pub fn unlimited() -> Self {
        Self {
            broadcast_per_room: 0.0,
            broadcast_per_user: 0.0,
            barrage_per_room: 0.0,
            command_to_one_per_user: 0.0,
            command_to_many_per_user: 0.0,
            login_per_room: 0.0,
            login_per_user: 0.0,
            room_create_per_user: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_and_unknown_keys_are_errors() {
        let text = toml::to_string_pretty(&ServerConfig::default()).unwrap();
        assert_eq!(toml::from_str::<ServerConfig>(&text).unwrap(), ServerConfig::default());
        let partial: ServerConfig =
            toml::from_str("max_rooms_per_connection = 7\n[limits]\nbarrage_per_room = 50.0\n")
                .unwrap();
        assert_eq!(partial.max_rooms_per_connection, 7);
        assert_eq!(partial.limits.barrage_per_room, 50.0);
        assert_eq!(partial.limits.broadcast_per_user, 2.0, "unset values keep their defaults");
        assert!(toml::from_str::<ServerConfig>("max_room = 3").is_err());
    }

    #[test]
    fn the_load_test_config_is_valid() {
        let config: ServerConfig =
            toml::from_str(include_str!("../../benches/relay-bench.toml")).unwrap();
        assert!(config.validate().is_ok());
        assert_eq!(config.limits, RateLimits::unlimited());
    }

    #[test]
    fn insecure_dev_auth_off_loopback_needs_its_second_setting() {
        let dev = |listen: &str, public: bool| ServerConfig {
            listen: listen.parse().unwrap(),
            insecure_dev_auth: true,
            insecure_dev_auth_on_public_address: public,
            ..ServerConfig::default()
        };
        for loopback in ["127.0.0.1:4433", "127.0.0.2:0", "[::1]:4433", "[::ffff:127.0.0.1]:0"] {
            assert!(dev(loopback, false).validate().is_ok(), "{loopback}");
        }
        for public in ["0.0.0.0:4433", "[::]:4433", "192.0.2.1:4433", "[2001:db8::1]:4433"] {
            let refused = dev(public, false).validate().unwrap_err();
            assert!(refused.contains("insecure_dev_auth_on_public_address"), "{refused}");
            assert!(dev(public, true).validate().is_ok(), "{public}");
        }
        let secure = ServerConfig { insecure_dev_auth: false, ..dev("0.0.0.0:4433", false) };
        assert!(secure.validate().is_ok(), "tokens checked: any address");
    }

    #[test]
    fn unusable_values_are_refused() {
        let config = ServerConfig { lane_queue: 1, ..ServerConfig::default() };
        assert!(config.validate().is_err());
        let config = ServerConfig { idle_timeout_ms: 0, ..ServerConfig::default() };
        assert!(config.validate().is_err());
        let config = ServerConfig { max_connections_per_address: 0, ..ServerConfig::default() };
        assert!(config.validate().is_err());
        let config = ServerConfig { endpoints: 0, ..ServerConfig::default() };
        assert!(config.validate().is_err());
        let config =
            ServerConfig { send_window_bytes: MIN_SEND_WINDOW - 1, ..ServerConfig::default() };
        assert!(config.validate().is_err());
        for ack_delay_ms in [0, 1001] {
            let config = ServerConfig { ack_delay_ms, ..ServerConfig::default() };
            assert!(config.validate().is_err(), "ack_delay_ms {ack_delay_ms}");
        }
        assert!(ServerConfig::default().validate().is_ok());
    }
}
