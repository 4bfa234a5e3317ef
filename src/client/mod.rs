//! The client library: connect to a relay, log in to rooms, send and receive messages.
//!
//! Shape (mirrors the room-messaging SDKs): [`Client::connect`] returns a cheap, cloneable
//! [`Client`] handle for requests and an [`Events`] stream for what arrives. Inside:
//! - `connection`: state shared by the handle and the reader tasks; request/reply matching;
//! - `control`: the control-stream reader (replies, token warnings);
//! - `lanes`: one reader task per room lane (user updates, broadcasts, commands, close);
//! - `datagrams`: the barrage datagram reader (batches of up to 50 per room);
//! - `rooms`: pure state: logins, lanes, members, barrage sender resolution.
//!
//! A supervisor task waits for the connection to end, fails every waiting request with
//! [`ClientError::Disconnected`], waits for the readers, then emits [`Event::Disconnected`]
//! as the last event.

mod connection;
mod control;
mod datagrams;
mod error;
mod event;
mod lanes;
mod rooms;
mod stats;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::protocol::{
    ErrorCode, MAX_COMMAND_TARGETS, MAX_TOKEN, Outcome, Request, User, check_payload,
    check_room_id, check_user_id, check_user_name, close,
};
use crate::transport::client_config;

use connection::{Shared, lock};

pub use error::ClientError;
pub use event::{EVENT_QUEUE, Event, Events, ReceivedBarrage};
pub use stats::ClientStats;

/// Default for [`ClientConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Client::close`] waits for the close to reach the server.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relay's UDP address.
    pub server: SocketAddr,
    /// The name the server certificate must be valid for (TLS SNI), e.g. `localhost`.
    pub server_name: String,
    /// CA certificates to trust.
    pub roots: Vec<CertificateDer<'static>>,
    /// Who this connection logs in as (every login on a connection uses this user).
    pub user: User,
    /// The connection is dropped after this long without any packet; keep-alives are sent
    /// every third of it.
    pub idle_timeout: Duration,
    /// How long a request (and the QUIC handshake) may take before it fails with
    /// [`ClientError::Timeout`] (or [`ClientError::Connect`]).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A configuration with the default timeouts.
    pub fn new(
        server: SocketAddr,
        server_name: impl Into<String>,
        roots: Vec<CertificateDer<'static>>,
        user: User,
    ) -> Self {
        Self {
            server,
            server_name: server_name.into(),
            roots,
            user,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A connection to a relay. Cloning is cheap; every clone drives the same connection, which
/// is closed by [`Client::close`] or when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Owns the endpoint and closes the connection when the last [`Client`] goes away (the
/// reader tasks hold only `Shared`, so they do not keep the connection alive).
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    /// The endpoint the connection runs on (kept alive as long as the handle).
    endpoint: quinn::Endpoint,
    /// Whether the endpoint was bound for this connection alone ([`Client::connect`]).
    owns_endpoint: bool,
    user: User,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(close::NORMAL, "client dropped");
    }
}

impl Client {
    /// Connects, opens the control stream and starts the reader tasks.
    ///
    /// The server closes a connection that sends nothing on its control stream within 10 s
    /// of the handshake (close code `NO_CONTROL_STREAM`): log in (or send some request)
    /// soon after connecting.
    ///
    /// Each call binds its own UDP socket (one endpoint per connection); to open many
    /// connections from one process, share endpoints with [`Client::connect_with`].
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        check_user(&config.user)?;
        let bind: SocketAddr = if config.server.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Connect(format!("cannot bind {bind}: {e}")))?;
        establish(endpoint, true, config).await
    }

    /// Like [`Client::connect`], but on an endpoint the caller created, so that many
    /// connections share one UDP socket and one endpoint driver task (a load generator opens
    /// thousands of connections; a socket each would cost a file descriptor, a socket buffer
    /// and a wake-up per packet per connection).
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
        check_user(&config.user)?;
        establish(endpoint.clone(), false, config).await
    }

    /// Logs in to `room` with a token granting it to this client's user. The room's events
    /// then arrive on [`Events`], starting with the members already there.
    pub async fn login_room(&self, room: &str, token: &str) -> Result<(), ClientError> {
        check_room(room)?;
        check_token(token)?;
        let request = Request::Login {
            room: room.to_owned(),
            user: self.handle.user.clone(),
            token: token.to_owned(),
            recover: None,
        };
        match self.shared().request(request).await? {
            Outcome::LoggedIn { room_number, session } => {
                tracing::debug!(room, room_number, session, "logged in");
                lock(&self.shared().rooms).logged_in(room, room_number);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Leaves `room`; its lane ends with [`Event::RoomClosed`] (code `LOGGED_OUT`).
    pub async fn logout_room(&self, room: &str) -> Result<(), ClientError> {
        check_room(room)?;
        let request = Request::Logout { room: room.to_owned() };
        let result = match self.shared().request(request).await? {
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
    /// (the room's sequence number).
    pub async fn send_broadcast_message(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let payload = payload.into();
        check_room(room)?;
        check_message(&payload)?;
        let request = Request::Broadcast { room: room.to_owned(), payload };
        sent(self.shared().request(request).await?)
    }

    /// Sends a barrage message as a QUIC datagram; returns its message ID.
    ///
    /// Best effort: if the datagram or its reply is lost this fails with
    /// [`ClientError::Timeout`] after the request timeout (the message may still have been
    /// delivered). Needs a login to `room` on this connection (for the room number).
    pub async fn send_barrage_message(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let payload = payload.into();
        check_room(room)?;
        check_message(&payload)?;
        let room_number = lock(&self.shared().rooms)
            .room_number(room)
            .ok_or_else(|| ClientError::NotLoggedIn(room.to_owned()))?;
        sent(self.shared().barrage(room_number, payload).await?)
    }

    /// Sends a reliable custom command to the listed user IDs in `room` (an empty list means
    /// every other member); returns its message ID.
    pub async fn send_custom_command(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
        to: &[&str],
    ) -> Result<u64, ClientError> {
        let payload = payload.into();
        check_room(room)?;
        check_message(&payload)?;
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
        let request = Request::Command {
            room: room.to_owned(),
            to: to.iter().map(|id| (*id).to_owned()).collect(),
            payload,
        };
        sent(self.shared().request(request).await?)
    }

    /// Replaces the connection's token (before or after it expires) without reconnecting.
    pub async fn renew_token(&self, token: &str) -> Result<(), ClientError> {
        check_token(token)?;
        let request = Request::RenewToken { token: token.to_owned() };
        match self.shared().request(request).await? {
            Outcome::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The user this client logs in as.
    pub fn user(&self) -> &User {
        &self.handle.user
    }

    /// The rooms this client is logged in to (by login replies, minus logouts and closed
    /// lanes), sorted.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.shared().rooms).joined_rooms()
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> ClientStats {
        self.shared().stats.snapshot()
    }

    /// The underlying QUIC connection (for its statistics; do not open streams on it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.shared().conn
    }

    /// Closes the connection (code `NORMAL`) and waits briefly for the close to be sent.
    /// Waiting requests fail with [`ClientError::Disconnected`]; [`Events`] ends with
    /// [`Event::Disconnected`].
    ///
    /// On an endpoint shared through [`Client::connect_with`] this does not wait: the
    /// endpoint's owner waits for it to go idle.
    pub async fn close(&self) {
        self.shared().close(close::NORMAL, "client closed");
        if self.handle.owns_endpoint {
            let _ = tokio::time::timeout(CLOSE_LINGER, self.handle.endpoint.wait_idle()).await;
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }
}

/// Connects on `endpoint`, opens the control stream and starts the reader tasks.
async fn establish(
    endpoint: quinn::Endpoint,
    owns_endpoint: bool,
    config: ClientConfig,
) -> Result<(Client, Events), ClientError> {
    let quic = client_config(&config.roots, config.idle_timeout)
        .map_err(|e| ClientError::Connect(format!("TLS configuration: {e}")))?;
    let connecting = endpoint
        .connect_with(quic, config.server, &config.server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let conn = tokio::time::timeout(config.request_timeout, connecting)
        .await
        .map_err(|_| ClientError::Connect(format!("no answer from {} in time", config.server)))?
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let span = tracing::info_span!("conn", conn = conn.stable_id(), user = %config.user.id);
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connect(format!("cannot open the control stream: {e}")))?;
    span.in_scope(|| tracing::debug!(server = %config.server, "connected"));

    let shared = Arc::new(Shared::new(conn, send, config.request_timeout));
    let (events_tx, events) = Events::channel();
    let readers = vec![
        tokio::spawn(
            control::read_control(Arc::clone(&shared), recv, events_tx.clone())
                .instrument(span.clone()),
        ),
        tokio::spawn(
            lanes::accept_lanes(Arc::clone(&shared), events_tx.clone()).instrument(span.clone()),
        ),
        tokio::spawn(
            datagrams::read_datagrams(Arc::clone(&shared), events_tx.clone())
                .instrument(span.clone()),
        ),
    ];
    tokio::spawn(supervise(Arc::clone(&shared), readers, events_tx).instrument(span));
    let handle = Handle { shared, endpoint, owns_endpoint, user: config.user };
    Ok((Client { handle: Arc::new(handle) }, events))
}

/// Waits for the connection to end, fails waiting requests, lets the readers finish, then
/// emits the last event.
async fn supervise(
    shared: Arc<Shared>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    events: mpsc::Sender<Event>,
) {
    let error = shared.conn.closed().await;
    let event = shared.disconnected_event(&error);
    tracing::debug!(?event, "connection ended");
    if let Event::Disconnected { reason, .. } = &event {
        shared.fail_all(reason.clone());
    }
    for reader in readers {
        let _ = reader.await;
    }
    let _ = events.send(event).await;
}

fn check_user(user: &User) -> Result<(), ClientError> {
    check_user_id(&user.id).map_err(|code| {
        ClientError::invalid(
            code,
            "user ID: 1 to 64 bytes of [A-Za-z0-9] and ~!@#$%^&*()_+=-;',.<>|",
        )
    })?;
    check_user_name(&user.name).map_err(|code| {
        ClientError::invalid(code, "user name: 1 to 256 bytes, no control characters")
    })
}

fn check_room(room: &str) -> Result<(), ClientError> {
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

fn check_message(payload: &[u8]) -> Result<(), ClientError> {
    check_payload(payload).map_err(|code| {
        ClientError::invalid(code, format!("payload of {} bytes; 1 to 1024 allowed", payload.len()))
    })
}

/// The message ID of a `Sent` outcome.
fn sent(outcome: Outcome) -> Result<u64, ClientError> {
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

#[cfg(test)]
mod tests;
