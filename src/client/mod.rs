//! The client library: connect to a relay, log in to rooms, send and receive messages.
//!
//! Shape (mirrors the room-messaging SDKs): [`Client::connect`] returns a cheap, cloneable
//! [`Client`] handle for requests and an [`Events`] stream for what arrives. Inside:
//! - `shared`: what lives as long as the client: the current connection (swapped on
//!   reconnect), the rooms, the counters;
//! - `servers`: [`ServerList`], the relay addresses and host names, resolved and tried in
//!   order;
//! - `connection`: one QUIC connection: opening it, request/reply matching, closing;
//! - `pending`: [`Pending`], the result of a send that has gone out, to await later;
//! - `reconnect`: the supervisor task: watches the connection, reconnects with backoff and
//!   logs back in to every room with recovery; [`ReconnectPolicy`];
//! - `control`: the control-stream reader (replies, token warnings);
//! - `lanes`: one reader task per room lane (user updates, broadcasts, commands, close);
//! - `datagrams`: the barrage datagram reader (batches of up to 50 per room);
//! - `socket`: the client's own UDP socket, watched for failures, and moving to a new one
//!   without a reconnect ([`Client::rebind`], [`RebindError`]);
//! - `freshness`: the relay's clock estimated from barrage timestamps, for
//!   [`ClientConfig::barrage_max_age`];
//! - `rooms`: pure state: memberships with their recovery bookkeeping (epoch, last
//!   broadcast ID delivered), lanes, members, barrage sender resolution, and the barrage
//!   held until a lane names its room or sender.
//!
//! When the connection is lost the supervisor fails every waiting request with
//! [`ClientError::Disconnected`], waits for the readers, then reconnects (reporting
//! [`Event::ConnectionState`]) or, when it gives up or the client was closed, emits
//! [`Event::Disconnected`] as the last event.

mod connection;
mod control;
mod datagrams;
mod error;
mod event;
mod freshness;
mod lanes;
mod pending;
mod reconnect;
mod rooms;
mod servers;
mod shared;
mod socket;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tracing::Instrument;

use crate::protocol::{
    ErrorCode, MAX_COMMAND_TARGETS, MAX_TOKEN, MemberPage, Outcome, Request, User, check_payload,
    check_room_id, check_user_id, check_user_name, close,
};
use crate::transport::client_config_with;

use connection::{Connection, Exchange, lock};
use shared::Shared;
use socket::OwnSocket;

pub use error::ClientError;
pub use event::{ConnectionState, EVENT_QUEUE, Event, Events, MIN_EVENT_QUEUE, ReceivedBarrage};
pub use freshness::DEFAULT_BARRAGE_MAX_AGE;
pub use pending::Pending;
pub use reconnect::{
    DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_ELAPSED, ReconnectPolicy,
};
pub use servers::{ServerList, ServerListError};
pub use socket::RebindError;
pub use stats::ClientStats;

/// Default for [`ClientConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Client::close`] waits for the close to reach the server.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where the relay is: an address or a host name with its port, or several, tried in
    /// order ([`ServerList`]; e.g. `"localhost:4433".parse()?`, or a `SocketAddr`). After a
    /// lost connection the client starts with the address after the one it lost.
    pub server: ServerList,
    /// The name the server certificate must be valid for (TLS SNI), e.g. `localhost`.
    pub server_name: String,
    /// CA certificates to trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// Who this connection logs in as (every login on a connection uses this user).
    pub user: User,
    /// The connection is dropped after this long without any packet; keep-alives are sent
    /// every third of it.
    pub idle_timeout: Duration,
    /// How long the QUIC handshake and the opening of the control stream may take (default
    /// 5 s): a relay that does not answer within it fails [`Client::connect`] with
    /// [`ClientError::NoAnswer`], and ends one reconnect attempt.
    pub connect_timeout: Duration,
    /// How long a request may wait for its result (default 5 s), counted from the call,
    /// before it fails with [`ClientError::Timeout`]. Independent of
    /// [`ClientConfig::connect_timeout`], so a generous send timeout does not make a dead
    /// relay slow to report.
    pub request_timeout: Duration,
    /// How many events wait between the client's readers and [`Events::next`] (default
    /// [`EVENT_QUEUE`], 256; at least [`MIN_EVENT_QUEUE`], a smaller value is raised to it).
    ///
    /// When the application falls this far behind:
    /// - the room lanes wait (backpressure, not loss): QUIC flow control then holds the
    ///   relay's writer for this client, and a client that stays behind until the relay's
    ///   lane queue for it overflows is dropped from the room as too slow (`SLOW_RECEIVER`);
    ///   with automatic reconnect on, the client logs in again at once and the missed
    ///   broadcasts are replayed ([`Event::Recovered`]), so none is lost;
    /// - barrage datagrams wait in QUIC's datagram receive buffer, which drops the oldest
    ///   when full, and barrage older than [`ClientConfig::barrage_max_age`] is dropped when
    ///   the application reads it (and counted: [`ClientStats::barrage_stale`]);
    /// - token warnings never wait (they are queued later).
    ///
    /// A larger queue absorbs longer pauses of the application at the cost of memory (an
    /// event holds up to 50 messages of up to 1 KiB each) and of older events when it
    /// catches up.
    pub event_queue: usize,
    /// Deliver only barrage younger than this (default [`DEFAULT_BARRAGE_MAX_AGE`], 500 ms;
    /// `None`: any age). Barrage is live: a comment that reaches the application seconds
    /// late, after waiting in buffers while the application or the network fell behind, is
    /// worse than none.
    ///
    /// - **The rule.** [`Events::next`] drops every barrage message older than this when it
    ///   hands out its `Barrages` event (dropping the event if none is left), and counts it in
    ///   [`ClientStats::barrage_stale`]. So it holds however long the message waited in the
    ///   event queue: an application that did not read events for longer than this gets no
    ///   barrage from before its pause.
    /// - **The age** is on the relay's clock: now, as the relay's clock reads it, minus the
    ///   message's `sent_at_ms`. The client estimates the relay's clock from the
    ///   `sent_at_ms` of the barrage it receives, with no clock synchronisation: its offset
    ///   from this client's clock is the smallest `receive time − sent_at_ms` of the last
    ///   minute (that is the offset plus the smallest delay on the way). An age is therefore
    ///   how much longer than the fastest recent barrage a message has been on its way (the
    ///   time it waited in queues and buffers), short of the true age by that smallest delay
    ///   (well under 1 ms on a LAN). A relay clock that steps back by more than the max age
    ///   makes barrage look old for up to a minute.
    /// - **The buffer.** The QUIC datagram receive buffer is sized to hold what the relay's
    ///   default limits let arrive within this age (115 kB/s: 20 barrage/s in each of 5
    ///   rooms; at least 19 KiB, at most 1 MiB; 64 KiB with `None`): 57.5 kB for the default.
    ///   When it is full QUIC drops the oldest datagram, so little that is already too old
    ///   waits there.
    pub barrage_max_age: Option<Duration>,
    /// Whether and how to reconnect after a lost connection (on by default).
    pub reconnect: ReconnectPolicy,
    /// Whether the client keeps the member list of each room (on by default). That costs
    /// memory for every member of every room the client is in (two map entries with the
    /// user's ID and name, a few hundred bytes), which adds up when one process holds many
    /// clients of one room: N clients in a room of N keep N² entries. It buys two things:
    /// - barrage senders are named ([`ReceivedBarrage::from`]): a barrage datagram carries
    ///   only its sender's session number, which only the member list maps to a user;
    /// - after a re-login (reconnect, or dropped as too slow) only real changes of the member
    ///   list are reported ([`Event::Recovered`]).
    ///
    /// Off, the client keeps nothing per member; [`Event::UsersJoined`] and
    /// [`Event::UsersLeft`] are still delivered as the lane brings them, but:
    /// - barrage arrives with `from: None`, as soon as its room is known (it is never held
    ///   for its sender);
    /// - after a re-login the room's whole member list arrives again as `UsersJoined` (members
    ///   the application already knew included), and members who left while the client was
    ///   away are not reported: the `UsersJoined` events before the room's
    ///   [`Event::Recovered`] are the complete list, to replace any list the application kept.
    ///
    /// For load generators and bots that do not need to know who is in a room.
    ///
    /// In a large room ([`Event::RoomMembers`]) no full list is kept either way: only the
    /// first page and the members the relay names before their first barrage.
    pub track_members: bool,
}

impl ClientConfig {
    /// A configuration with the default timeouts and automatic reconnect. `server` is a
    /// `SocketAddr` or a [`ServerList`]:
    ///
    /// ```no_run
    /// use qrelay::client::{ClientConfig, ServerList};
    /// use qrelay::protocol::User;
    ///
    /// # fn demo() -> anyhow::Result<()> {
    /// let roots = qrelay::certs::load_certs("certs/ca.pem".as_ref())?;
    /// let user = User { id: "alice".into(), name: "Alice".into() };
    /// let relays: ServerList = "relay-a.example.com:4433,relay-b.example.com:4433".parse()?;
    /// let config = ClientConfig::new(relays, "relay.example.com", roots, user);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(
        server: impl Into<ServerList>,
        server_name: impl Into<String>,
        roots: Vec<CertificateDer<'static>>,
        user: User,
    ) -> Self {
        Self {
            server: server.into(),
            server_name: server_name.into(),
            roots,
            user,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            event_queue: EVENT_QUEUE,
            barrage_max_age: Some(DEFAULT_BARRAGE_MAX_AGE),
            reconnect: ReconnectPolicy::default(),
            track_members: true,
        }
    }
}

/// A client of a relay. Cloning is cheap; every clone drives the same client, which is
/// closed by [`Client::close`] or when the last clone is dropped.
///
/// **Reconnect.** When the connection is lost (idle timeout, network error, server restart),
/// the client connects again by itself (see [`ReconnectPolicy`]) and logs back in to every
/// room it is in, with the token last used for that room, asking the server to replay the
/// broadcasts it missed; [`Event::ConnectionState`] and [`Event::Recovered`] report it. While
/// it reconnects, logins and sends fail at once with [`ClientError::Disconnected`] (code
/// `DISCONNECTED`): retry after [`ConnectionState::Reconnected`]. [`Client::logout_room`]
/// and [`Client::renew_token`] still work then (they act on what is logged in again).
///
/// **Network changes.** A client made by [`Client::connect`] owns its UDP socket and moves
/// its connection to a new socket without reconnecting (QUIC connection migration: rooms,
/// lanes, barrage and requests in flight carry on, and no event reports it): when the
/// application calls [`Client::rebind`] (on the platform's news of a network change, e.g.
/// Wi-Fi to mobile data), and by itself when the socket fails (a send or receive error that
/// means its address or network is gone; at most once a second, counted in
/// [`ClientStats::rebinds`]). A client on a shared endpoint ([`Client::connect_with`]) does
/// neither: the endpoint's owner rebinds it.
#[derive(Debug, Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Closes the client when the last [`Client`] goes away (the reader tasks, the supervisor
/// and the socket watcher hold only `Shared`, so they do not keep the client alive).
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(close::NORMAL, "client dropped");
    }
}

impl Client {
    /// Resolves [`ClientConfig::server`], connects to the first address that answers, opens
    /// the control stream and starts the reader tasks and the reconnect supervisor. A failure
    /// to connect here is returned, not retried.
    ///
    /// The server closes a connection that sends nothing on its control stream within 10 s
    /// of the handshake (close code `NO_CONTROL_STREAM`), and one that is in no room for 10 s
    /// (`login_timeout_ms`: after the handshake, or after leaving its last room; close code
    /// `LOGIN_TIMEOUT`); neither is reconnected. Log in soon after connecting, and close the
    /// client when it leaves its last room for good.
    ///
    /// Each call binds its own UDP socket (one endpoint per connection); to open many
    /// connections from one process, share endpoints with [`Client::connect_with`].
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        validate_user(&config.user)?;
        let addrs = resolve(&config).await?;
        let bind = connection::bind_address(&addrs);
        let (endpoint, own_socket) = OwnSocket::endpoint(bind)
            .map_err(|e| ClientError::Connect(format!("cannot bind {bind}: {e}")))?;
        establish(endpoint, Some(own_socket), config, &addrs).await
    }

    /// Like [`Client::connect`], but on an endpoint the caller created, so that many
    /// connections share one UDP socket and one endpoint driver task (a load generator opens
    /// thousands of connections; a socket each would cost a file descriptor, a socket buffer
    /// and a wake-up per packet per connection). Reconnects use the same endpoint.
    ///
    /// `endpoint` is a client endpoint bound to an address of the server's family, e.g.
    /// `quinn::Endpoint::client("0.0.0.0:0".parse()?)?`; it needs no default client config
    /// (each connection gets its own from `config`). The endpoint stays usable for other
    /// connections; [`Client::close`] then closes only this connection and does not wait for
    /// the endpoint to go idle: call `endpoint.wait_idle()` before the process exits if the
    /// server should see every close at once.
    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        config: ClientConfig,
    ) -> Result<(Client, Events), ClientError> {
        validate_user(&config.user)?;
        let addrs = resolve(&config).await?;
        establish(endpoint.clone(), None, config, &addrs).await
    }

    /// Logs in to `room` with a token granting it to this client's user. The room's events
    /// then arrive on [`Events`], starting with the members already there. The token is kept
    /// to log in again after a reconnect.
    pub async fn login_room(&self, room: &str, token: &str) -> Result<(), ClientError> {
        validate_room(room)?;
        check_token(token)?;
        let connection = self.shared().connection()?;
        let request = Request::Login {
            room: room.to_owned(),
            user: self.shared().config.user.clone(),
            token: token.to_owned(),
            recover: None,
        };
        // Registered before the request goes out: the lane may arrive before the reply.
        let created = lock(&self.shared().rooms).login_started(room, token);
        let result = match connection.request(request).await {
            Ok(Outcome::LoggedIn { room_number, session }) => {
                tracing::debug!(room, room_number, session, "logged in");
                lock(&self.shared().rooms).logged_in(room, room_number);
                return Ok(());
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        if created {
            lock(&self.shared().rooms).login_failed(room);
        }
        result
    }

    /// Leaves `room`; its lane ends with [`Event::RoomClosed`] (code `LOGGED_OUT`).
    ///
    /// While reconnecting, the room is only forgotten (it is not logged in to again; the
    /// server already dropped it with the lost connection): this succeeds and no
    /// `RoomClosed` event follows.
    pub async fn logout_room(&self, room: &str) -> Result<(), ClientError> {
        validate_room(room)?;
        let Some(connection) = self.connection_or(|rooms| rooms.logged_out(room))? else {
            return Ok(());
        };
        let request = Request::Logout { room: room.to_owned() };
        let result = match connection.request(request).await? {
            Outcome::Done => Ok(()),
            other => Err(unexpected(other)),
        };
        // Not logged in, as far as the server knows: forget the login here too.
        if result.as_ref().err().is_none_or(|e| e.code() == ErrorCode::NOT_LOGGED_IN) {
            lock(&self.shared().rooms).logged_out(room);
        }
        result
    }

    /// Sends a reliable broadcast to every other member of `room`; returns its message ID
    /// (the room's sequence number). To have several in flight, see
    /// [`Client::start_broadcast_message`].
    pub async fn send_broadcast_message(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        self.start_broadcast_message(room, payload).await
    }

    /// Sends a broadcast like [`Client::send_broadcast_message`], but returns at once: the
    /// request has gone out (after every request started before it), and its result, the
    /// message ID, can be awaited later ([`Pending`]). Broadcasts started one after another
    /// get increasing IDs in call order.
    ///
    /// ```no_run
    /// # async fn demo(client: qrelay::client::Client) -> Result<(), qrelay::client::ClientError> {
    /// let pending: Vec<_> =
    ///     (0..10).map(|i| client.start_broadcast_message("lobby", format!("#{i}"))).collect();
    /// for sent in pending {
    ///     println!("message ID {}", sent.await?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_broadcast_message(&self, room: &str, payload: impl Into<Bytes>) -> Pending<u64> {
        let payload = payload.into();
        let sent = validate_room(room)
            .and_then(|()| validate_payload(&payload))
            .and_then(|()| self.shared().connection())
            .and_then(|connection| {
                connection.start(Request::Broadcast { room: room.to_owned(), payload })
            });
        Pending::new(sent, sent_id)
    }

    /// Sends a barrage message as a QUIC datagram; returns its message ID.
    ///
    /// Best effort: if the datagram or its reply is lost this fails with
    /// [`ClientError::Timeout`] after the request timeout (the message may still have been
    /// delivered). Needs a login to `room` on this connection (for the room number). To have
    /// several in flight, see [`Client::start_barrage_message`].
    pub async fn send_barrage_message(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        self.start_barrage_message(room, payload).await
    }

    /// Sends a barrage message like [`Client::send_barrage_message`], but returns at once
    /// with its result to await later ([`Pending`]): the datagram has been handed to QUIC.
    pub fn start_barrage_message(&self, room: &str, payload: impl Into<Bytes>) -> Pending<u64> {
        let payload = payload.into();
        Pending::new(self.barrage_exchange(room, payload), sent_id)
    }

    /// Sends a barrage message as a QUIC datagram and asks the relay for no reply: returns
    /// once the datagram is handed to QUIC (nothing to await), and costs no request ID, no
    /// timer and no reply on the control stream.
    ///
    /// The message has no ID for the sender, and nothing tells whether it arrived: a
    /// datagram lost on the way, and a refusal by the relay (`ROOM_RATE_LIMITED`,
    /// `TOKEN_EXPIRED`…, which the relay counts), go unnoticed. What fails here is what the
    /// client knows at once: an invalid room or payload, [`ClientError::NotLoggedIn`],
    /// [`ClientError::Disconnected`], [`ClientError::DatagramUnavailable`]. For live comments
    /// and reactions, where a lost message is not worth a retry; for the message ID or a
    /// refusal, use [`Client::send_barrage_message`]. A relay from before this addition to the
    /// protocol drops the datagram (docs/PROTOCOL.md, "Changelog").
    ///
    /// ```no_run
    /// # fn demo(client: qrelay::client::Client) -> Result<(), qrelay::client::ClientError> {
    /// for reaction in ["👍", "🎉", "❤️"] {
    ///     client.send_barrage_message_no_reply("lobby", reaction)?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_barrage_message_no_reply(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        validate_room(room)?;
        validate_payload(&payload)?;
        let connection = self.shared().connection()?;
        connection.barrage_no_reply(self.room_number(room)?, payload)
    }

    /// Sends a reliable custom command to the listed user IDs in `room` (an empty list means
    /// every other member); returns its message ID. To have several in flight, see
    /// [`Client::start_custom_command`].
    pub async fn send_custom_command(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
        to: &[&str],
    ) -> Result<u64, ClientError> {
        self.start_custom_command(room, payload, to).await
    }

    /// Sends a custom command like [`Client::send_custom_command`], but returns at once: the
    /// request has gone out (after every request started before it), and its result can be
    /// awaited later ([`Pending`]).
    pub fn start_custom_command(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
        to: &[&str],
    ) -> Pending<u64> {
        let payload = payload.into();
        let sent = validate_room(room)
            .and_then(|()| validate_payload(&payload))
            .and_then(|()| validate_targets(to))
            .and_then(|()| self.shared().connection())
            .and_then(|connection| {
                let to = to.iter().map(|id| (*id).to_owned()).collect();
                connection.start(Request::Command { room: room.to_owned(), to, payload })
            });
        Pending::new(sent, sent_id)
    }

    /// Replaces the connection's token (before or after it expires) without reconnecting.
    /// Every room then logs in again with it after a reconnect.
    ///
    /// While reconnecting, the token is only kept for those logins (the server checks it
    /// then; a refusal closes the room with [`Event::RoomClosed`]): this succeeds.
    pub async fn renew_token(&self, token: &str) -> Result<(), ClientError> {
        check_token(token)?;
        let Some(connection) = self.connection_or(|rooms| rooms.renewed(token))? else {
            return Ok(());
        };
        let request = Request::RenewToken { token: token.to_owned() };
        match connection.request(request).await? {
            Outcome::Done => {
                lock(&self.shared().rooms).renewed(token);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// One page of `room`'s member list, in session order: up to `limit` members (0, or
    /// above [`crate::protocol::MAX_MEMBER_PAGE`] (200): 200), from `cursor`
    /// ([`crate::protocol::MEMBERS_FROM_START`], or the `next` of an earlier page or of
    /// [`Event::RoomMembers`]), with the room's member count. The page's `next` is 0 after the
    /// last page. A walk sees every member that stays in the room exactly once. Refused with
    /// `NOT_LOGGED_IN` outside the room, `INVALID_CURSOR` for a cursor this room did not give.
    ///
    /// For large rooms, whose login brings only the first page; it works in any room.
    pub async fn fetch_members(
        &self,
        room: &str,
        cursor: u64,
        limit: u32,
    ) -> Result<MemberPage, ClientError> {
        validate_room(room)?;
        let connection = self.shared().connection()?;
        let request = Request::FetchMembers { room: room.to_owned(), cursor, limit };
        match connection.request(request).await? {
            Outcome::Members(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    /// How many members `room` has, this client included, as far as its events have told
    /// (counted from user updates, or a large room's [`Event::MemberCount`]); `None` when
    /// this client is not in it or its lane has not opened yet.
    pub fn room_member_count(&self, room: &str) -> Option<u32> {
        lock(&self.shared().rooms).member_count(room)
    }

    /// The user this client logs in as.
    pub fn user(&self) -> &User {
        &self.shared().config.user
    }

    /// The rooms this client is in (by login replies, minus logouts and closed rooms;
    /// rooms being logged in to again after a reconnect included), sorted.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.shared().rooms).joined_rooms()
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> ClientStats {
        self.shared().stats.snapshot()
    }

    /// The current QUIC connection (for its statistics; do not open streams on it), or
    /// `None` while reconnecting and after the end. Closing it counts as a lost connection:
    /// the client reconnects.
    pub fn connection(&self) -> Option<quinn::Connection> {
        self.shared().current().map(|connection| connection.quic.clone())
    }

    /// Moves the client to a new UDP socket without reconnecting (QUIC connection migration),
    /// bound to the unspecified address of the current socket's family and a new port: the
    /// system sends through whichever network is up now. Returns the new local address.
    ///
    /// The relay validates the new path and answers there; rooms, lanes, barrage and requests
    /// in flight carry on with no event, no re-login and no gap (packets lost in the move are
    /// sent again; barrage is best effort as always). Call it when the platform reports a
    /// network change; a socket that fails is replaced without a call. While reconnecting, the
    /// next attempt goes out from the new socket. On failure the client keeps its socket.
    ///
    /// Only for a client with its own endpoint ([`Client::connect`]): on an endpoint shared
    /// through [`Client::connect_with`] this fails with [`RebindError::SharedEndpoint`], as
    /// it would move every connection on that endpoint (its owner can, with
    /// `quinn::Endpoint::rebind`).
    ///
    /// ```no_run
    /// # fn on_network_change(client: &qrelay::client::Client) -> Result<(), qrelay::client::RebindError> {
    /// let local = client.rebind()?;
    /// println!("now on {local}, same connection");
    /// # Ok(())
    /// # }
    /// ```
    pub fn rebind(&self) -> Result<SocketAddr, RebindError> {
        self.rebind_to(socket::unspecified_like(self.local_addr().ok()))
    }

    /// [`Client::rebind`] to a socket bound to `local` (e.g. the address of the interface to
    /// use; port 0 picks a free port). A socket that fails later is replaced by one on the
    /// unspecified address, which the system routes.
    pub fn rebind_to(&self, local: SocketAddr) -> Result<SocketAddr, RebindError> {
        let Some(own_socket) = &self.shared().own_socket else {
            return Err(RebindError::SharedEndpoint);
        };
        if self.shared().closed().is_some() {
            return Err(RebindError::Closed);
        }
        let new = own_socket.rebind(&self.shared().endpoint, local)?;
        stats::Stats::add(&self.shared().stats.rebinds, 1);
        tracing::info!(user = %self.user().id, %new, "moved to a new UDP socket");
        Ok(new)
    }

    /// The local address of the client's UDP socket (of the shared endpoint with
    /// [`Client::connect_with`]).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared().endpoint.local_addr()
    }

    /// Closes the connection (code `NORMAL`), or stops reconnecting, and waits briefly for
    /// the close to be sent. Waiting requests fail with [`ClientError::Disconnected`];
    /// [`Events`] ends with [`Event::Disconnected`].
    ///
    /// On an endpoint shared through [`Client::connect_with`] this does not wait: the
    /// endpoint's owner waits for it to go idle.
    pub async fn close(&self) {
        self.shared().close(close::NORMAL, "client closed");
        if self.shared().own_socket.is_some() {
            let endpoint = &self.shared().endpoint;
            let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
        }
    }

    /// Checks a barrage and sends its datagram on the current connection.
    fn barrage_exchange(&self, room: &str, payload: Bytes) -> Result<Exchange, ClientError> {
        validate_room(room)?;
        validate_payload(&payload)?;
        let connection = self.shared().connection()?;
        connection.barrage(self.room_number(room)?, payload)
    }

    /// The number of `room` on the current connection, for barrage.
    fn room_number(&self, room: &str) -> Result<u32, ClientError> {
        lock(&self.shared().rooms)
            .room_number(room)
            .ok_or_else(|| ClientError::NotLoggedIn(room.to_owned()))
    }

    /// The current connection; while reconnecting, applies `offline` to the rooms instead
    /// (it takes effect with the re-logins) and returns `None`. Fails once the client ended.
    fn connection_or(
        &self,
        offline: impl FnOnce(&mut rooms::Rooms),
    ) -> Result<Option<Arc<Connection>>, ClientError> {
        match self.shared().connection() {
            Ok(connection) => Ok(Some(connection)),
            Err(error) if self.shared().closed().is_some() => Err(error),
            Err(_) => {
                offline(&mut lock(&self.shared().rooms));
                Ok(None)
            }
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }
}

/// The addresses of [`ClientConfig::server`], resolved within the connect timeout.
async fn resolve(config: &ClientConfig) -> Result<Vec<SocketAddr>, ClientError> {
    tokio::time::timeout(config.connect_timeout, config.server.resolve()).await.unwrap_or_else(
        |_| {
            Err(ClientError::Connect(format!(
                "cannot resolve {} within {}",
                config.server,
                error::readable(config.connect_timeout)
            )))
        },
    )
}

/// Connects through `endpoint` to the first of `addrs` that answers and starts the readers,
/// the reconnect supervisor and, on the client's own endpoint (`own_socket`), the socket
/// watcher.
async fn establish(
    endpoint: quinn::Endpoint,
    own_socket: Option<Arc<OwnSocket>>,
    config: ClientConfig,
    addrs: &[SocketAddr],
) -> Result<(Client, Events), ClientError> {
    let datagram_buffer = freshness::datagram_buffer(config.barrage_max_age);
    let quic = client_config_with(&config.roots, config.idle_timeout, datagram_buffer)
        .map_err(|e| ClientError::Connect(format!("TLS configuration: {e}")))?;
    let (connection, recv) = Connection::open_any(
        &endpoint,
        &quic,
        addrs,
        &config.server_name,
        config.connect_timeout,
        None,
        config.request_timeout,
    )
    .await?;
    let span =
        tracing::info_span!("conn", conn = connection.quic.stable_id(), user = %config.user.id);
    let server = connection.quic.remote_address();
    span.in_scope(|| tracing::debug!(%server, "connected"));
    let shared = Arc::new(Shared::new(config, endpoint, own_socket, quic, Arc::clone(&connection)));
    if let Some(own_socket) = &shared.own_socket {
        let watcher = socket::watch(Arc::clone(&shared), Arc::clone(own_socket));
        tokio::spawn(watcher.instrument(span.clone()));
    }
    let (events_tx, events) = Events::channel(Arc::clone(&shared));
    reconnect::start(Arc::clone(&shared), connection, recv, events_tx);
    Ok((Client { handle: Arc::new(Handle { shared }) }, events))
}

/// The check [`Client::connect`] makes on its user before connecting (`INVALID_USER_ID`,
/// `INVALID_USER_NAME`). Like the other `validate_` functions (the checks each call makes
/// before sending anything), for a caller that wants to fail before it connects.
pub fn validate_user(user: &User) -> Result<(), ClientError> {
    check_user_id(&user.id).map_err(|code| {
        ClientError::invalid(
            code,
            "user ID: 1 to 64 bytes of [A-Za-z0-9] and ~!@#$%^&*()_+=-;',.<>|",
        )
    })?;
    check_user_name(&user.name).map_err(|code| {
        ClientError::invalid(
            code,
            "user name: 1 to 256 bytes, no control, format (bidi, zero-width) or line-separator \
             characters",
        )
    })
}

/// The check every room call makes on the room ID (`INVALID_ROOM_ID`).
pub fn validate_room(room: &str) -> Result<(), ClientError> {
    check_room_id(room).map_err(|code| {
        ClientError::invalid(
            code,
            format!("room ID {room:?}: 1 to 128 bytes of [A-Za-z0-9] and ~!@#$%^&*()_+=-;',.<>|"),
        )
    })
}

fn check_token(token: &str) -> Result<(), ClientError> {
    if token.len() > MAX_TOKEN {
        return Err(ClientError::invalid(
            ErrorCode::TOKEN_INVALID,
            format!("a token of {} bytes; at most {MAX_TOKEN} allowed", token.len()),
        ));
    }
    Ok(())
}

/// The check every send makes on the payload (`PAYLOAD_EMPTY`, `PAYLOAD_TOO_LARGE`).
pub fn validate_payload(payload: &[u8]) -> Result<(), ClientError> {
    check_payload(payload).map_err(|code| {
        ClientError::invalid(code, format!("payload of {} bytes; 1 to 1024 allowed", payload.len()))
    })
}

/// The check [`Client::send_custom_command`] makes on its target list (`INVALID_TARGETS`).
pub fn validate_targets(to: &[&str]) -> Result<(), ClientError> {
    if to.len() > MAX_COMMAND_TARGETS {
        return Err(ClientError::invalid(
            ErrorCode::INVALID_TARGETS,
            format!("at most {MAX_COMMAND_TARGETS} target users"),
        ));
    }
    if let Some(bad) = to.iter().find(|id| check_user_id(id).is_err()) {
        return Err(ClientError::invalid(
            ErrorCode::INVALID_TARGETS,
            format!("{bad:?} is not a valid user ID"),
        ));
    }
    Ok(())
}

/// The message ID of a `Sent` outcome.
fn sent_id(outcome: Outcome) -> Result<u64, ClientError> {
    match outcome {
        Outcome::Sent { message_id } => Ok(message_id),
        other => Err(unexpected(other)),
    }
}

/// A refusal as an error; any other outcome is one the request cannot have.
fn unexpected(outcome: Outcome) -> ClientError {
    match outcome {
        Outcome::Refused { code, detail } => ClientError::Refused { code, detail },
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

// The stand-in server of these tests uses the relay's certificates and QUIC config.
#[cfg(all(test, feature = "server"))]
mod tests;
