//! The relay's UDP sockets and their QUIC endpoints. With `endpoints` above 1 the sockets share
//! one address (`SO_REUSEPORT`: Linux hashes each client's address and port to one of them, so a
//! connection stays on one endpoint), and every endpoint after the first runs on an OS thread of
//! its own with a `current_thread` runtime; all of them share one [`Shared`].

use std::net::UdpSocket;
use std::sync::{Arc, mpsc};

use tokio::sync::{oneshot, watch};
use tracing::info;

use super::{Shared, admission, connection};
use crate::transport::EndpointKeys;

/// An endpoint after the first, on its own thread, which accepts once started.
#[derive(Debug)]
pub(crate) struct EndpointThread {
    /// Starts accepting; dropped unsent, it ends the thread.
    start: oneshot::Sender<()>,
    /// Fires when the thread ends: after shutdown, once its endpoint has no connection left.
    done: oneshot::Receiver<()>,
}

/// Binds `shared.config.endpoints` sockets on `shared.config.listen` (with port 0, the first
/// picks the port and the others take it) and makes an endpoint of each: the first on the
/// caller's runtime, the others on threads of their own.
pub(crate) fn bind(
    shared: &Arc<Shared>,
    quic: quinn::ServerConfig,
    keys: &EndpointKeys,
    shutdown: &watch::Sender<bool>,
) -> std::io::Result<(Vec<quinn::Endpoint>, Vec<EndpointThread>)> {
    let config = &shared.config;
    let reuse_port = config.endpoints > 1;
    let (socket, recv_buffer, send_buffer) =
        crate::transport::bind_udp(config.listen, config.udp_buffer_bytes, reuse_port)?;
    info!(
        recv_buffer,
        send_buffer,
        endpoints = config.endpoints,
        "UDP socket buffers (as the kernel reports them: Linux doubles the size it grants)"
    );
    let addr = socket.local_addr()?;
    // One reset key and one connection-ID key for all, and for the processes after this one: a
    // client that lands on another endpoint (its address changed), or reaches a restarted
    // relay, gets a stateless reset it accepts, and reconnects at once instead of timing out.
    let endpoint_config = keys.endpoint_config();
    let mut endpoints = vec![open(socket, &endpoint_config, &quic)?];
    let mut threads = Vec::new();
    for index in 1..config.endpoints {
        let (socket, _, _) = crate::transport::bind_udp(addr, config.udp_buffer_bytes, true)?;
        let (endpoint, thread) = EndpointThread::spawn(
            index,
            socket,
            endpoint_config.clone(),
            quic.clone(),
            shared.clone(),
            shutdown.subscribe(),
        )?;
        endpoints.push(endpoint);
        threads.push(thread);
    }
    Ok((endpoints, threads))
}

/// Admits and serves the connections that reach `endpoint` until shutdown.
pub(crate) async fn accept(
    endpoint: &quinn::Endpoint,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = stop.changed() => None,
        };
        let Some(incoming) = incoming else { break };
        let Some((incoming, admitted)) = admission::admit(shared, incoming) else {
            continue;
        };
        tokio::spawn(connection::serve(shared.clone(), incoming, admitted, stop.clone()));
    }
}

impl EndpointThread {
    /// Starts a thread with its runtime, makes the endpoint of `socket` there and returns it
    /// once ready; the thread accepts from [`EndpointThread::start`] until shutdown.
    fn spawn(
        index: usize,
        socket: UdpSocket,
        endpoint_config: quinn::EndpointConfig,
        quic: quinn::ServerConfig,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(quinn::Endpoint, EndpointThread)> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (start_tx, start_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new().name(format!("qrelay-endpoint-{index}")).spawn(move || {
            let opened = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    // The socket and the endpoint's driver belong to the runtime they are
                    // made in.
                    let endpoint =
                        runtime.block_on(async { open(socket, &endpoint_config, &quic) })?;
                    Ok((runtime, endpoint))
                });
            let (runtime, endpoint) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(endpoint.clone()));
            runtime.block_on(async {
                if start_rx.await.is_ok() {
                    accept(&endpoint, &shared, stop).await;
                    // Connections go on until they end: `ServerHandle::shutdown` closes them.
                    endpoint.wait_idle().await;
                }
            });
            drop(runtime);
            let _ = done_tx.send(());
        })?;
        let endpoint = ready_rx.recv().map_err(|_| {
            std::io::Error::other("an endpoint thread ended before its endpoint was ready")
        })??;
        Ok((endpoint, EndpointThread { start: start_tx, done: done_rx }))
    }

    /// Lets the thread accept; the returned receiver fires when the thread has ended.
    pub(crate) fn start(self) -> oneshot::Receiver<()> {
        let _ = self.start.send(());
        self.done
    }
}

/// A server endpoint on `socket`, driven by the current runtime.
fn open(
    socket: UdpSocket,
    endpoint_config: &quinn::EndpointConfig,
    quic: &quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(endpoint_config.clone(), Some(quic.clone()), socket, runtime)
}
