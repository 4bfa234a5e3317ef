//! The UDP socket of a client that owns its endpoint, and moving the client to a new one
//! (QUIC connection migration): on request ([`super::Client::rebind`]) and when the socket
//! fails. The connection, its rooms, lanes and barrage carry on; nothing is reconnected.
//!
//! The socket is quinn's tokio socket with one difference: send and receive errors that mean
//! the socket or its network is gone are reported to a watcher task, which binds a new socket
//! and hands it to the endpoint (`quinn::Endpoint::rebind_abstract`). quinn's own socket logs
//! send errors and drops the packet; a receive error ends its endpoint and every connection on
//! it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::lock;
use super::shared::Shared;
use super::stats::Stats;

/// Least time between two rebinds after failures. A network that is down altogether makes
/// every send fail, and a new socket does not help until another network comes up: one
/// attempt a second finds it soon without spinning.
const FAILED_REBIND_INTERVAL: Duration = Duration::from_secs(1);

/// Why [`super::Client::rebind`] failed. The client and its connection are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum RebindError {
    /// The client runs on an endpoint shared with other connections
    /// ([`super::Client::connect_with`]); its owner rebinds it (`quinn::Endpoint::rebind`),
    /// which moves every connection on it.
    #[error("the client's endpoint is shared (Client::connect_with): rebind the endpoint")]
    SharedEndpoint,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// No UDP socket could be bound to the address.
    #[error("cannot bind a UDP socket to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// The socket side of a client with its own endpoint: which socket is current, its failure if
/// it failed, and the watcher's wake-up.
#[derive(Debug)]
pub(crate) struct OwnSocket {
    /// Counts the sockets made: a failure of an older one than the current is stale.
    generation: AtomicU64,
    /// A failure of the current socket that the watcher has not handled yet: the socket's
    /// generation and the error.
    failure: Mutex<Option<(u64, io::Error)>>,
    /// Wakes the watcher: a socket failed, or the client closed.
    wake: Notify,
    /// Set when the client closed: the watcher ends.
    stopped: AtomicBool,
    /// Held while a new socket is bound and installed: one rebind at a time.
    rebinding: Mutex<()>,
    /// The current socket, for tests that break it.
    #[cfg(test)]
    current: Mutex<Weak<WatchedSocket>>,
}

impl OwnSocket {
    /// Binds a UDP socket to `addr` and makes a client endpoint on it whose socket is watched.
    pub(crate) fn endpoint(
        addr: SocketAddr,
    ) -> Result<(quinn::Endpoint, Arc<OwnSocket>), RebindError> {
        let own = Arc::new(OwnSocket {
            generation: AtomicU64::new(0),
            failure: Mutex::new(None),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            rebinding: Mutex::new(()),
            #[cfg(test)]
            current: Mutex::new(Weak::new()),
        });
        let (socket, _) = own.bind(addr, 0)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| RebindError::Bind { addr, source })?;
        Ok((endpoint, own))
    }

    /// Binds a new socket to `addr` and moves `endpoint` (every connection on it) there.
    /// Returns the new local address. On failure the endpoint keeps its socket.
    pub(crate) fn rebind(
        self: &Arc<Self>,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<SocketAddr, RebindError> {
        let _one_at_a_time = lock(&self.rebinding);
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let (socket, local) = self.bind(addr, generation)?;
        endpoint.rebind_abstract(socket).map_err(|source| RebindError::Bind { addr, source })?;
        self.generation.store(generation, Ordering::Relaxed);
        let mut failure = lock(&self.failure);
        if failure.as_ref().is_some_and(|(failed, _)| *failed < generation) {
            *failure = None;
        }
        Ok(local)
    }

    /// Ends the watcher (the client closed).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Kept as a permit if the watcher is not waiting right now.
        self.wake.notify_one();
    }

    /// Breaks the current socket for sending, as a vanished address does: every send on it
    /// fails with `EPIPE` from now on.
    #[cfg(all(test, feature = "server"))]
    pub(crate) fn break_for_sending(&self) {
        if let Some(socket) = lock(&self.current).upgrade() {
            // Linux answers ENOTCONN for an unconnected UDP socket but shuts it down anyway.
            let _ = socket2::SockRef::from(&socket.io).shutdown(std::net::Shutdown::Write);
        }
    }

    /// Binds `addr` and wraps the socket for quinn, as socket `generation`.
    fn bind(
        self: &Arc<Self>,
        addr: SocketAddr,
        generation: u64,
    ) -> Result<(Arc<WatchedSocket>, SocketAddr), RebindError> {
        let bind_error = |source| RebindError::Bind { addr, source };
        let std_socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let local = std_socket.local_addr().map_err(bind_error)?;
        // Makes the socket nonblocking, as tokio needs.
        let state = UdpSocketState::new((&std_socket).into()).map_err(bind_error)?;
        let socket = Arc::new(WatchedSocket {
            io: tokio::net::UdpSocket::from_std(std_socket).map_err(bind_error)?,
            state,
            generation,
            // Weak: the endpoint keeps its sockets until its connections have drained.
            own: Arc::downgrade(self),
            failed: AtomicBool::new(false),
        });
        #[cfg(test)]
        {
            *lock(&self.current) = Arc::downgrade(&socket);
        }
        Ok((socket, local))
    }

    /// Files a failure of socket `generation` (ignored when that socket was replaced already)
    /// and wakes the watcher.
    fn failed(&self, generation: u64, error: io::Error) {
        if generation < self.generation.load(Ordering::Relaxed) {
            return;
        }
        lock(&self.failure).get_or_insert((generation, error));
        self.wake.notify_one();
    }

    /// Takes the failure to handle, if there is one.
    fn take_failure(&self) -> Option<(u64, io::Error)> {
        lock(&self.failure).take()
    }
}

/// Replaces the client's socket each time it fails, at most once per
/// [`FAILED_REBIND_INTERVAL`], until the client closes. A new socket binds the unspecified
/// address of the same family, port 0: the system picks the interface that routes to the
/// relay now (an address the application chose with [`super::Client::rebind_to`] may be the
/// one that went away).
pub(crate) async fn watch(shared: Arc<Shared>, own: Arc<OwnSocket>) {
    let mut last: Option<Instant> = None;
    loop {
        own.wake.notified().await;
        while !own.stopped.load(Ordering::Relaxed) {
            let Some((generation, error)) = own.take_failure() else { break };
            if let Some(last) = last {
                tokio::time::sleep_until(last + FAILED_REBIND_INTERVAL).await;
            }
            if own.stopped.load(Ordering::Relaxed) {
                break;
            }
            last = Some(Instant::now());
            let any = unspecified_like(shared.endpoint.local_addr().ok());
            match own.rebind(&shared.endpoint, any) {
                Ok(local) => {
                    Stats::add(&shared.stats.rebinds, 1);
                    tracing::info!(%error, %local, "the UDP socket failed: moved to a new one");
                }
                Err(e) => {
                    tracing::warn!(%error, rebind = %e, "the UDP socket failed and no new one could be bound; trying again");
                    own.failed(generation, error);
                }
            }
        }
        if own.stopped.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// The unspecified address and port 0 of the family of `local` (IPv4 when unknown).
pub(crate) fn unspecified_like(local: Option<SocketAddr>) -> SocketAddr {
    match local {
        Some(local) if local.is_ipv6() => (Ipv6Addr::UNSPECIFIED, 0).into(),
        _ => (Ipv4Addr::UNSPECIFIED, 0).into(),
    }
}

/// quinn's tokio UDP socket, reporting its failures to the client's [`OwnSocket`].
#[derive(Debug)]
struct WatchedSocket {
    /// The socket, registered with tokio.
    io: tokio::net::UdpSocket,
    /// quinn's per-socket state (GSO, GRO, ECN support).
    state: UdpSocketState,
    /// Which socket of the client this is (0 for the first).
    generation: u64,
    /// Where failures are reported.
    own: Weak<OwnSocket>,
    /// Set at the first failure, which alone is reported.
    failed: AtomicBool,
}

impl WatchedSocket {
    /// Reports this socket's first failure.
    fn report(&self, error: io::Error) {
        if self.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(own) = self.own.upgrade() {
            own.failed(self.generation, error);
        }
    }
}

impl AsyncUdpSocket for WatchedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent =
            self.io.try_io(Interest::WRITABLE, || self.state.try_send((&self.io).into(), transmit));
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // The packet is lost; quinn sends its contents again, from the new socket.
            Err(e) if send_failure(&e) => {
                self.report(e);
                Ok(())
            }
            // Any other error loses just this packet, as with quinn's socket (e.g. an MTU
            // probe too large for the path).
            Ok(()) | Err(_) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Err(e) = ready!(self.io.poll_recv_ready(cx)) {
                self.report(e);
                // Not an error for quinn, which would end the endpoint and its connections:
                // this socket is being replaced (the rebind wakes the endpoint).
                return Poll::Pending;
            }
            let received = self
                .io
                .try_io(Interest::READABLE, || self.state.recv((&self.io).into(), bufs, meta));
            match received {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if recv_transient(&e) => continue,
                Err(e) => {
                    self.report(e);
                    return Poll::Pending;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Tells quinn when the socket can take more packets.
#[derive(Debug)]
struct Writable(Arc<WatchedSocket>);

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

/// Whether a send error means the socket or its network is gone (its address was removed, the
/// interface went down, the socket was shut down), so that a new socket may help.
fn send_failure(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        BrokenPipe
            | NotConnected
            | AddrNotAvailable
            | NetworkDown
            | NetworkUnreachable
            | HostUnreachable
    )
}

/// Whether a receive error is no reason to replace the socket: no data after all, a signal, or
/// an ICMP error about an earlier packet (quinn's own socket ignores those too).
fn recv_transient(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(error.kind(), WouldBlock | Interrupted | ConnectionReset | ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_of_a_gone_socket_or_network_replace_it() {
        let error = |kind| io::Error::from(kind);
        assert!(send_failure(&error(io::ErrorKind::BrokenPipe)));
        assert!(send_failure(&error(io::ErrorKind::AddrNotAvailable)));
        assert!(send_failure(&error(io::ErrorKind::NetworkUnreachable)));
        assert!(!send_failure(&error(io::ErrorKind::WouldBlock)));
        assert!(!send_failure(&io::Error::other("message too long")));
        assert!(recv_transient(&error(io::ErrorKind::ConnectionReset)));
        assert!(!recv_transient(&error(io::ErrorKind::NotConnected)));
    }

    #[test]
    fn automatic_rebinds_keep_the_address_family() {
        let v6: SocketAddr = "[::1]:4433".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(unspecified_like(Some(v6)), "[::]:0".parse().unwrap());
        assert_eq!(unspecified_like(Some(v4)), "0.0.0.0:0".parse().unwrap());
        assert_eq!(unspecified_like(None), "0.0.0.0:0".parse().unwrap());
    }
}
