//! One QUIC connection to the relay: opening it, the request/reply exchange on its control
//! stream, and closing it. A client goes through several of these when it reconnects; what
//! outlives them is in [`super::shared`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, RecvStream, SendDatagramError, SendStream, VarInt, WriteError};
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::protocol::{
    ClientDatagram, CodecError, Outcome, Reply, Request, RequestFrame, close, encode_body,
    encode_frame,
};

use super::error::ClientError;
use super::event::Event;

/// One connection: the QUIC connection, its control stream and the requests waiting for a
/// reply on it.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The QUIC connection.
    pub(crate) quic: quinn::Connection,
    /// How long a request waits for its reply.
    request_timeout: Duration,
    /// The sending half of the control stream. A tokio mutex so that one frame is written
    /// whole before the next starts (see [`Connection::write_frame`]).
    control: Arc<tokio::sync::Mutex<SendStream>>,
    /// Requests waiting for their reply.
    pending: Mutex<Pending>,
    /// The code and reason this side closed the connection with, for the `Disconnected`
    /// event; set only by [`Connection::close`], so it also tells a close by this library
    /// (final) from a lost connection (reconnected).
    local_close: Mutex<Option<(u32, String)>>,
}

/// Requests waiting for their reply, by request ID.
#[derive(Debug, Default)]
struct Pending {
    /// The next request ID to try (IDs wrap around; one still in use is skipped).
    next: u32,
    /// Where each reply goes.
    waiting: HashMap<u32, oneshot::Sender<Outcome>>,
    /// Set once the connection is gone: why. New requests then fail at once.
    closed: Option<String>,
}

/// A request written on the control stream whose reply has not been read yet. Dropping it
/// (reply, timeout or cancellation) removes the request from [`Pending`], so an abandoned
/// request never leaks its entry.
pub(crate) struct Sent<'a> {
    connection: &'a Connection,
    request: u32,
    reply: Option<oneshot::Receiver<Outcome>>,
}

impl Sent<'_> {
    /// Waits for the reply (the caller bounds the wait).
    pub(crate) async fn outcome(mut self) -> Result<Outcome, ClientError> {
        match self.reply.take() {
            Some(reply) => self.connection.reply(reply).await,
            None => Err(ClientError::Protocol("reply already taken".into())),
        }
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        lock(&self.connection.pending).waiting.remove(&self.request);
    }
}

/// How a connection ended, as the supervisor needs it.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    /// The `Disconnected` event to emit if the client does not reconnect.
    pub(crate) event: Event,
    /// A one-line reason, for logs and for requests that fail because of it.
    pub(crate) reason: String,
    /// Whether this library closed it ([`super::Client::close`], the last handle dropped,
    /// or a protocol violation by the server): such a close is final.
    pub(crate) by_client: bool,
}

impl Connection {
    /// Connects to `server` through `endpoint` and opens the control stream, all within
    /// `timeout`. Returns the connection and the receiving half of its control stream.
    pub(crate) async fn open(
        endpoint: &quinn::Endpoint,
        quic: quinn::ClientConfig,
        server: SocketAddr,
        server_name: &str,
        timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(Arc<Connection>, RecvStream), ClientError> {
        let connecting = endpoint
            .connect_with(quic, server, server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let no_answer = ClientError::NoAnswer { server, waited: timeout };
        let open = async {
            let conn = connecting.await.map_err(|e| handshake_error(e, &no_answer))?;
            let (send, recv) = conn.open_bi().await.map_err(|e| {
                ClientError::Connect(format!("cannot open the control stream: {e}"))
            })?;
            Ok((conn, send, recv))
        };
        let (conn, send, recv) =
            tokio::time::timeout(timeout, open).await.map_err(|_| no_answer.clone())??;
        let connection = Connection {
            quic: conn,
            request_timeout,
            control: Arc::new(tokio::sync::Mutex::new(send)),
            pending: Mutex::new(Pending::default()),
            local_close: Mutex::new(None),
        };
        Ok((Arc::new(connection), recv))
    }

    /// Sends a request on the control stream and waits for its reply, at most the request
    /// timeout. Cancelling the returned future is safe: a frame is never left half-written.
    pub(crate) async fn request(&self, body: Request) -> Result<Outcome, ClientError> {
        let exchange = async { self.send(body).await?.outcome().await };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Writes a request on the control stream without waiting for its reply: several
    /// requests can be in flight, and the server handles them in the order written.
    pub(crate) async fn send(&self, body: Request) -> Result<Sent<'_>, ClientError> {
        let (request, reply) = self.register()?;
        let sent = Sent { connection: self, request, reply: Some(reply) };
        let mut frame = BytesMut::new();
        encode_frame(&RequestFrame { request, body }, &mut frame).map_err(encode_error)?;
        self.write_frame(frame.freeze()).await?;
        Ok(sent)
    }

    /// Sends a barrage datagram and waits for its reply on the control stream. The datagram
    /// or its reply can be lost: then this ends with [`ClientError::Timeout`].
    pub(crate) async fn barrage(
        &self,
        room_number: u32,
        payload: Bytes,
    ) -> Result<Outcome, ClientError> {
        let (request, reply) = self.register()?;
        let sent = Sent { connection: self, request, reply: Some(reply) };
        let datagram = ClientDatagram::Barrage { room_number, request, payload };
        let datagram = encode_body(&datagram).map_err(encode_error)?;
        self.quic.send_datagram(datagram).map_err(|e| match e {
            SendDatagramError::ConnectionLost(e) => ClientError::Disconnected(e.to_string()),
            other => ClientError::DatagramUnavailable(other.to_string()),
        })?;
        tokio::time::timeout(self.request_timeout, sent.outcome())
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Hands a reply to the request waiting for it (the control reader calls this). Returns
    /// `false` when no request was waiting for it any more (a late reply).
    pub(crate) fn complete(&self, reply: Reply) -> bool {
        let waiter = lock(&self.pending).waiting.remove(&reply.request);
        match waiter {
            // The waiter may be gone just now (timed out); the reply is then late.
            Some(waiter) => waiter.send(reply.outcome).is_ok(),
            None => {
                tracing::debug!(request = reply.request, "reply to no waiting request");
                false
            }
        }
    }

    /// Fails every waiting request and every later one with [`ClientError::Disconnected`].
    /// The first reason given is kept.
    pub(crate) fn fail_all(&self, reason: String) {
        let mut pending = lock(&self.pending);
        pending.closed.get_or_insert(reason);
        // Dropping the senders wakes each waiter, which then reads `closed`.
        pending.waiting.clear();
    }

    /// Closes the connection with an application close code, remembering it for the
    /// `Disconnected` event.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        lock(&self.local_close).get_or_insert_with(|| (code, reason.to_owned()));
        self.quic.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Closes the connection because the server broke the protocol.
    pub(crate) fn protocol_violation(&self, error: &CodecError, what: &str) {
        let code = match error {
            CodecError::TooLarge { .. } => close::FRAME_TOO_LARGE,
            _ => close::PROTOCOL_VIOLATION,
        };
        tracing::warn!(%error, what, "server broke the protocol; closing the connection");
        self.close(code, &format!("{what}: {error}"));
    }

    /// How the connection ended, from the error quinn reports; fails every waiting request.
    pub(crate) fn ended(&self, error: &ConnectionError) -> Ended {
        let local = lock(&self.local_close).clone();
        let by_client = local.is_some();
        let (code, reason) = match error {
            ConnectionError::ApplicationClosed(close) => (
                Some(close.error_code.into_inner()),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            ConnectionError::LocallyClosed => match local {
                Some((code, reason)) => (Some(u64::from(code)), reason),
                None => (Some(u64::from(close::NORMAL)), "closed locally".into()),
            },
            other => (None, other.to_string()),
        };
        let summary = match code {
            Some(code) if reason.is_empty() => format!("closed with {}", close::name(code)),
            Some(code) => format!("closed with {}: {reason}", close::name(code)),
            None => reason.clone(),
        };
        self.fail_all(summary.clone());
        Ended { event: Event::Disconnected { code, reason }, reason: summary, by_client }
    }

    /// Allocates a request ID and the channel its reply will come on.
    fn register(&self) -> Result<(u32, oneshot::Receiver<Outcome>), ClientError> {
        let mut pending = lock(&self.pending);
        if let Some(reason) = &pending.closed {
            return Err(ClientError::Disconnected(reason.clone()));
        }
        let mut request = pending.next;
        while pending.waiting.contains_key(&request) {
            request = request.wrapping_add(1);
        }
        pending.next = request.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        pending.waiting.insert(request, tx);
        Ok((request, rx))
    }

    /// Waits for a registered request's reply.
    async fn reply(&self, reply: oneshot::Receiver<Outcome>) -> Result<Outcome, ClientError> {
        match reply.await {
            Ok(outcome) => Ok(outcome),
            Err(_) => Err(ClientError::Disconnected(
                lock(&self.pending).closed.clone().unwrap_or_else(|| "connection closed".into()),
            )),
        }
    }

    /// Writes one whole frame on the control stream.
    ///
    /// Once the stream's lock is held nothing is awaited in the caller's future: the frame is
    /// written at once, or, when flow control blocks, finished by a task that owns the lock.
    /// So a caller that is cancelled (a timeout around a request) never leaves half a frame
    /// on the stream, and the common case costs no task switch.
    async fn write_frame(&self, frame: Bytes) -> Result<(), ClientError> {
        let stream = Arc::clone(&self.control).lock_owned().await;
        match write_now(stream, frame)? {
            None => Ok(()),
            Some((mut stream, rest)) => {
                let task = tokio::spawn(async move { stream.write_all(&rest).await });
                match task.await {
                    Ok(result) => result.map_err(write_error),
                    Err(e) => Err(ClientError::Disconnected(format!("writer failed: {e}"))),
                }
            }
        }
    }
}

/// The local address a client endpoint binds to reach `server`: any address, any port, of
/// the same IP family.
pub(crate) fn bind_address(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// Writes as much of `frame` as the stream takes without waiting. Returns the stream and
/// the rest when flow control blocks.
#[allow(clippy::type_complexity)]
fn write_now(
    mut stream: OwnedMutexGuard<SendStream>,
    frame: Bytes,
) -> Result<Option<(OwnedMutexGuard<SendStream>, Bytes)>, ClientError> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut written = 0;
    while written < frame.len() {
        match Pin::new(&mut *stream).poll_write(&mut cx, &frame[written..]) {
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(write_error(e)),
            Poll::Pending => return Ok(Some((stream, frame.slice(written..)))),
        }
    }
    Ok(None)
}

/// Locks a std mutex; a panic elsewhere while holding it does not make the state unusable
/// (every critical section leaves it consistent).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A failed handshake as an error. rustls reports a certificate chain that leads to no
/// trusted CA as `UnknownIssuer`, or as `BadSignature` when a trusted CA has the issuer's name
/// but another key (two development CAs, e.g. after `certs/` was made anew); quinn passes on
/// only its text.
fn handshake_error(error: ConnectionError, no_answer: &ClientError) -> ClientError {
    match error {
        ConnectionError::TransportError(e)
            if e.reason.contains("UnknownIssuer") || e.reason.contains("BadSignature") =>
        {
            ClientError::UntrustedCertificate(e.reason)
        }
        ConnectionError::TimedOut => no_answer.clone(),
        other => ClientError::Connect(other.to_string()),
    }
}

fn write_error(error: WriteError) -> ClientError {
    match error {
        WriteError::ConnectionLost(e) => ClientError::Disconnected(e.to_string()),
        WriteError::Stopped(code) => {
            ClientError::Protocol(format!("server stopped the control stream (code {code})"))
        }
        other => ClientError::Disconnected(other.to_string()),
    }
}

fn encode_error(error: CodecError) -> ClientError {
    ClientError::Protocol(format!("cannot encode the request: {error}"))
}
