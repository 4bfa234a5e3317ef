//! One QUIC connection to the relay: opening it, the request/reply exchange on its control
//! stream, and closing it. A client goes through several of these when it reconnects; what
//! outlives them is in [`super::shared`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ConnectionError, RecvStream, SendDatagramError, SendStream, VarInt, WriteError};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

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
    /// How long a request waits for its reply, from the call.
    request_timeout: Duration,
    /// The sending half of the control stream and the frames waiting for it (see
    /// [`Connection::write_frame`]).
    control: Mutex<ControlWriter>,
    /// Requests waiting for their reply.
    waiting: Mutex<Waiting>,
    /// The code and reason this side closed the connection with, for the `Disconnected`
    /// event; set only by [`Connection::close`], so it also tells a close by this library
    /// (final) from a lost connection (reconnected).
    local_close: Mutex<Option<(u32, String)>>,
}

/// The sending half of the control stream, with the frames flow control holds back.
#[derive(Debug)]
struct ControlWriter {
    /// The control stream.
    stream: SendStream,
    /// Frames not yet taken by the stream, in the order they were written (the first may be
    /// partly taken). While it is not empty, a task of [`Connection::write_frame`] writes it.
    queue: VecDeque<Bytes>,
    /// Why writing failed, once it did: later frames fail at once.
    failed: Option<ClientError>,
}

/// Requests waiting for their reply, by request ID.
#[derive(Debug, Default)]
struct Waiting {
    /// The next request ID to try (IDs wrap around; one still in use is skipped).
    next: u32,
    /// Where each reply goes.
    replies: HashMap<u32, oneshot::Sender<Outcome>>,
    /// Set once the connection is gone: why. New requests then fail at once.
    closed: Option<String>,
}

/// A request that was sent (its frame queued on the control stream in call order, or its
/// datagram handed to QUIC) and waits for its reply: a future of the outcome, failing with
/// [`ClientError::Timeout`] at its deadline. Dropping it (reply, timeout or cancellation)
/// removes the request from [`Waiting`], so an abandoned request never leaks its entry; a
/// reply that comes after is counted as late.
#[derive(Debug)]
pub(crate) struct Exchange {
    connection: Arc<Connection>,
    request: u32,
    reply: oneshot::Receiver<Outcome>,
    /// The request timeout, running from the send; `None`: the caller bounds the wait.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Future for Exchange {
    type Output = Result<Outcome, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(reply) = Pin::new(&mut self.reply).poll(cx) {
            return Poll::Ready(reply.map_err(|_| self.connection.disconnected()));
        }
        match self.deadline.as_mut().map(|deadline| deadline.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(ClientError::Timeout)),
            _ => Poll::Pending,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        lock(&self.connection.waiting).replies.remove(&self.request);
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
    /// The relay address it was connected to (a reconnect tries the next one first).
    pub(crate) server: SocketAddr,
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
            control: Mutex::new(ControlWriter {
                stream: send,
                queue: VecDeque::new(),
                failed: None,
            }),
            waiting: Mutex::new(Waiting::default()),
            local_close: Mutex::new(None),
        };
        Ok((Arc::new(connection), recv))
    }

    /// Connects to the first of `addrs` that answers, in order, each within
    /// `connect_timeout` (and all by `deadline`, if given). When every one fails, the error
    /// is the first that is not [`ClientError::NoAnswer`] (a refused handshake or an untrusted
    /// certificate says more), else the last address's `NoAnswer`.
    pub(crate) async fn open_any(
        endpoint: &quinn::Endpoint,
        quic: &quinn::ClientConfig,
        addrs: &[SocketAddr],
        server_name: &str,
        connect_timeout: Duration,
        deadline: Option<Instant>,
        request_timeout: Duration,
    ) -> Result<(Arc<Connection>, RecvStream), ClientError> {
        let mut failure: Option<ClientError> = None;
        for &server in addrs {
            let left =
                deadline.map_or(connect_timeout, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                break;
            }
            let timeout = connect_timeout.min(left);
            match Connection::open(
                endpoint,
                quic.clone(),
                server,
                server_name,
                timeout,
                request_timeout,
            )
            .await
            {
                Ok(opened) => return Ok(opened),
                Err(error) => {
                    tracing::debug!(%server, %error, "relay address failed");
                    if failure.as_ref().is_none_or(|f| matches!(f, ClientError::NoAnswer { .. })) {
                        failure = Some(error);
                    }
                }
            }
        }
        Err(failure.unwrap_or_else(|| ClientError::Connect("no relay address to try".into())))
    }

    /// Sends a request and waits for its reply, at most the request timeout. Cancelling the
    /// returned future is safe: the frame is written whole all the same.
    pub(crate) async fn request(self: &Arc<Self>, body: Request) -> Result<Outcome, ClientError> {
        self.start(body)?.await
    }

    /// Sends a request without waiting: its frame is queued on the control stream before
    /// this returns, so requests go out (and the server handles them) in the order of the
    /// calls. The returned exchange ends with the reply, or with [`ClientError::Timeout`]
    /// once the request timeout has passed since this call.
    pub(crate) fn start(self: &Arc<Self>, body: Request) -> Result<Exchange, ClientError> {
        let mut exchange = self.start_untimed(body)?;
        exchange.deadline = Some(Box::pin(tokio::time::sleep(self.request_timeout)));
        Ok(exchange)
    }

    /// [`Connection::start`] without the request timeout: the caller bounds the wait.
    pub(crate) fn start_untimed(self: &Arc<Self>, body: Request) -> Result<Exchange, ClientError> {
        let exchange = self.register()?;
        let mut frame = BytesMut::new();
        let request = RequestFrame { request: exchange.request, body };
        encode_frame(&request, &mut frame).map_err(encode_error)?;
        self.write_frame(frame.freeze())?;
        Ok(exchange)
    }

    /// Sends a barrage datagram whose reply comes on the control stream. The datagram or its
    /// reply can be lost: the exchange then ends with [`ClientError::Timeout`].
    pub(crate) fn barrage(
        self: &Arc<Self>,
        room_number: u32,
        payload: Bytes,
    ) -> Result<Exchange, ClientError> {
        let mut exchange = self.register()?;
        let datagram = ClientDatagram::Barrage { room_number, request: exchange.request, payload };
        self.send_datagram(&datagram)?;
        exchange.deadline = Some(Box::pin(tokio::time::sleep(self.request_timeout)));
        Ok(exchange)
    }

    /// Sends a barrage datagram that asks for no reply.
    pub(crate) fn barrage_no_reply(
        &self,
        room_number: u32,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.send_datagram(&ClientDatagram::BarrageNoReply { room_number, payload })
    }

    /// Hands one encoded datagram to QUIC.
    fn send_datagram(&self, datagram: &ClientDatagram) -> Result<(), ClientError> {
        let datagram = encode_body(datagram).map_err(encode_error)?;
        self.quic.send_datagram(datagram).map_err(|e| match e {
            SendDatagramError::ConnectionLost(e) => ClientError::Disconnected(e.to_string()),
            other => ClientError::DatagramUnavailable(other.to_string()),
        })
    }

    /// Hands a reply to the request waiting for it (the control reader calls this). Returns
    /// `false` when no request was waiting for it any more (a late reply).
    pub(crate) fn complete(&self, reply: Reply) -> bool {
        let waiter = lock(&self.waiting).replies.remove(&reply.request);
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
        let mut waiting = lock(&self.waiting);
        waiting.closed.get_or_insert(reason);
        // Dropping the senders wakes each waiter, which then reads `closed`.
        waiting.replies.clear();
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
        let server = self.quic.remote_address();
        Ended { event: Event::Disconnected { code, reason }, reason: summary, by_client, server }
    }

    /// Allocates a request ID and the channel its reply will come on (an exchange without
    /// a deadline yet).
    fn register(self: &Arc<Self>) -> Result<Exchange, ClientError> {
        let mut waiting = lock(&self.waiting);
        if let Some(reason) = &waiting.closed {
            return Err(ClientError::Disconnected(reason.clone()));
        }
        let mut request = waiting.next;
        while waiting.replies.contains_key(&request) {
            request = request.wrapping_add(1);
        }
        waiting.next = request.wrapping_add(1);
        let (tx, reply) = oneshot::channel();
        waiting.replies.insert(request, tx);
        Ok(Exchange { connection: Arc::clone(self), request, reply, deadline: None })
    }

    /// Why a request can get no reply: the connection is gone.
    fn disconnected(&self) -> ClientError {
        let reason = lock(&self.waiting).closed.clone();
        ClientError::Disconnected(reason.unwrap_or_else(|| "connection closed".into()))
    }

    /// Writes one whole frame on the control stream, after every frame written before it,
    /// without waiting.
    ///
    /// The frame is written at once as far as flow control allows (the common case, which
    /// costs no task switch); what it holds back is queued, and a task writes the queue in
    /// order. So frames go out in the order of the calls, a caller never waits for the
    /// network to send, and one that is cancelled never leaves half a frame on the stream.
    /// Each queued frame belongs to a request that waits for its reply (bounded by the
    /// request timeout), so the queue holds at most what the application has in flight.
    fn write_frame(self: &Arc<Self>, frame: Bytes) -> Result<(), ClientError> {
        let mut writer = lock(&self.control);
        if let Some(error) = &writer.failed {
            return Err(error.clone());
        }
        writer.queue.push_back(frame);
        if writer.queue.len() > 1 {
            return Ok(()); // the writing task takes it in turn
        }
        match writer.poll_write_queue(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let connection = Arc::clone(self);
                tokio::spawn(async move {
                    let written =
                        std::future::poll_fn(|cx| lock(&connection.control).poll_write_queue(cx))
                            .await;
                    if let Err(error) = written {
                        // Requests whose frames were queued can get no reply any more.
                        connection.fail_all(error.detail());
                    }
                });
                Ok(())
            }
        }
    }
}

impl ControlWriter {
    /// Writes the queue to the stream until it is empty, flow control holds it back, or the
    /// stream fails (then every queued frame is dropped and later writes fail).
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        while let Some(front) = self.queue.front_mut() {
            match Pin::new(&mut self.stream).poll_write(cx, front) {
                Poll::Ready(Ok(n)) => {
                    front.advance(n);
                    if front.is_empty() {
                        self.queue.pop_front();
                    }
                }
                Poll::Ready(Err(e)) => {
                    let error = write_error(e);
                    self.failed = Some(error.clone());
                    self.queue.clear();
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The local address a client endpoint binds to reach `servers`: any address, any port, of
/// IPv4 when every server is IPv4, else of IPv6 (quinn makes it dual-stack where the system
/// allows, so it reaches IPv4 servers too).
pub(crate) fn bind_address(servers: &[SocketAddr]) -> SocketAddr {
    if servers.iter().any(SocketAddr::is_ipv6) {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    }
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
