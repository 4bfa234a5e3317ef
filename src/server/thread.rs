//! A relay on a dedicated OS thread with its own single-threaded runtime: how benchmarks and
//! the load tool run a relay in-process, apart from the clients' threads, so that the relay's
//! CPU time can be read for its thread alone (`/proc/self/task/<tid>/stat` on Linux).

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Identity, Server, ServerConfig, ServerError, ServerHandle};

/// A relay running on its own thread (a `current_thread` tokio runtime, as `qrelay serve
/// --threads 1`). Stop it with [`RelayThread::stop`]; dropping it asks the relay to stop
/// without waiting.
#[derive(Debug)]
pub struct RelayThread {
    /// The running relay's handle (address, counters).
    handle: ServerHandle,
    /// The address the relay listens on.
    addr: SocketAddr,
    /// The Linux thread ID of the relay's thread, when `/proc` tells it.
    tid: Option<u32>,
    /// Asks the thread to shut the relay down.
    stop: Option<oneshot::Sender<()>>,
    /// Fires when the relay has shut down and the thread is about to end.
    done: Option<oneshot::Receiver<()>>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl RelayThread {
    /// Starts a thread, binds the relay on it and runs it. Returns once the relay listens.
    pub fn start(config: ServerConfig, identity: Identity) -> Result<RelayThread, ServerError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("qrelay-relay".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(ServerError::Io(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let bound = Server::bind(config, identity)
                    .and_then(|server| Ok((server.local_addr()?, server)));
                let (addr, server) = match bound {
                    Ok(bound) => bound,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let handle = server.handle();
                let _ = ready_tx.send(Ok((handle.clone(), addr, current_tid())));
                let running = tokio::spawn(server.run());
                // A dropped `RelayThread` (sender gone) stops the relay too.
                let _ = stop_rx.await;
                handle.shutdown().await;
                let _ = running.await;
            });
            let _ = done_tx.send(());
        })?;
        match ready_rx.recv() {
            Ok(Ok((handle, addr, tid))) => Ok(RelayThread {
                handle,
                addr,
                tid,
                stop: Some(stop_tx),
                done: Some(done_rx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ServerError::Config("the relay thread ended before listening".into()))
            }
        }
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's handle (counters, room count).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// The Linux thread ID (TID) of the relay's thread, for `/proc/self/task/<tid>/stat`;
    /// `None` where `/proc/thread-self` does not exist.
    pub fn os_thread_id(&self) -> Option<u32> {
        self.tid
    }

    /// Shuts the relay down (as [`ServerHandle::shutdown`]: lanes closed, connections closed
    /// with `SHUTDOWN`, a bounded wait for clients) and waits for its thread to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        if let Some(thread) = self.thread.take() {
            // The thread has sent `done`: it ends at once.
            let _ = thread.join();
        }
    }
}

/// The calling thread's Linux TID, from the `/proc/thread-self` link (`<pid>/task/<tid>`).
fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}
