//! The state a connection's handle and its reader tasks share, and the request/reply
//! exchange on the control stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, SendDatagramError, SendStream, VarInt, WriteError};
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::protocol::{
    ClientDatagram, CodecError, Outcome, Reply, Request, RequestFrame, close, encode_body,
    encode_frame,
};

use super::error::ClientError;
use super::event::Event;
use super::rooms::Rooms;
use super::stats::Stats;

/// What the [`super::Client`] handles and the reader tasks of one connection share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The QUIC connection.
    pub(crate) conn: quinn::Connection,
    /// How long a request waits for its reply.
    pub(crate) request_timeout: Duration,
    /// The sending half of the control stream. A tokio mutex so that one frame is written
    /// whole before the next starts (see [`Shared::write_frame`]).
    control: Arc<tokio::sync::Mutex<SendStream>>,
    /// Requests waiting for their reply.
    pending: Mutex<Pending>,
    /// Logins, lanes and members.
    pub(crate) rooms: Mutex<Rooms>,
    /// Counters.
    pub(crate) stats: Stats,
    /// The code and reason this side closed the connection with, for the `Disconnected` event.
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

/// Removes a request from [`Pending`] when its caller stops waiting (reply, timeout or
/// cancellation), so an abandoned request never leaks its entry.
struct Waiting<'a> {
    shared: &'a Shared,
    request: u32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).waiting.remove(&self.request);
    }
}

impl Shared {
    /// Wraps a connection and its control stream's sending half.
    pub(crate) fn new(
        conn: quinn::Connection,
        control: SendStream,
        request_timeout: Duration,
    ) -> Self {
        Self {
            conn,
            request_timeout,
            control: Arc::new(tokio::sync::Mutex::new(control)),
            pending: Mutex::new(Pending::default()),
            rooms: Mutex::new(Rooms::default()),
            stats: Stats::default(),
            local_close: Mutex::new(None),
        }
    }

    /// Sends a request on the control stream and waits for its reply, at most the request
    /// timeout. Cancelling the returned future is safe: a frame is never left half-written.
    pub(crate) async fn request(&self, body: Request) -> Result<Outcome, ClientError> {
        let (request, reply) = self.register()?;
        let _waiting = Waiting { shared: self, request };
        let mut frame = BytesMut::new();
        encode_frame(&RequestFrame { request, body }, &mut frame).map_err(encode_error)?;
        let exchange = async {
            self.write_frame(frame.freeze()).await?;
            self.reply(reply).await
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Sends a barrage datagram and waits for its reply on the control stream. The datagram
    /// or its reply can be lost: then this ends with [`ClientError::Timeout`].
    pub(crate) async fn barrage(
        &self,
        room_number: u32,
        payload: Bytes,
    ) -> Result<Outcome, ClientError> {
        let (request, reply) = self.register()?;
        let _waiting = Waiting { shared: self, request };
        let datagram = ClientDatagram::Barrage { room_number, request, payload };
        let datagram = encode_body(&datagram).map_err(encode_error)?;
        self.conn.send_datagram(datagram).map_err(|e| match e {
            SendDatagramError::ConnectionLost(e) => ClientError::Disconnected(e.to_string()),
            other => ClientError::DatagramUnavailable(other.to_string()),
        })?;
        tokio::time::timeout(self.request_timeout, self.reply(reply))
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// Hands a reply to the request waiting for it (the control reader calls this).
    pub(crate) fn complete(&self, reply: Reply) {
        let waiter = lock(&self.pending).waiting.remove(&reply.request);
        match waiter {
            // The waiter may be gone just now (timed out); the reply is then late.
            Some(waiter) => {
                if waiter.send(reply.outcome).is_err() {
                    Stats::add(&self.stats.late_replies, 1);
                }
            }
            None => {
                Stats::add(&self.stats.late_replies, 1);
                tracing::debug!(request = reply.request, "reply to no waiting request");
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
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
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

    /// The `Disconnected` event for the error that ended the connection.
    pub(crate) fn disconnected_event(&self, error: &ConnectionError) -> Event {
        let (code, reason) = match error {
            ConnectionError::ApplicationClosed(close) => (
                Some(close.error_code.into_inner()),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            ConnectionError::LocallyClosed => match lock(&self.local_close).clone() {
                Some((code, reason)) => (Some(u64::from(code)), reason),
                None => (Some(u64::from(close::NORMAL)), "closed locally".into()),
            },
            other => (None, other.to_string()),
        };
        Event::Disconnected { code, reason }
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
