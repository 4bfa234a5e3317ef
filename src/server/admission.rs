//! Admission of connection attempts: QUIC address validation (Retry) under handshake load,
//! then the total and per-address connection limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, warn};

use super::Shared;
use super::stats::Counters;

/// Open connections per source IP address (entries are removed when they reach zero, so the
/// map never holds more than `max_connections` entries).
#[derive(Debug, Default)]
pub(crate) struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// Decides what becomes of one connection attempt: `Some` to go on with the handshake, holding
/// its place in the limits, or `None` when it was answered with a Retry or refused.
///
/// Retry comes first: under load, an address must prove it receives our packets (a spoofed
/// source cannot) before it is counted against anything; a Retry costs the server no state.
pub(crate) fn admit(
    shared: &Arc<Shared>,
    mut incoming: quinn::Incoming,
) -> Option<(quinn::Incoming, Admitted)> {
    let (config, counters) = (&shared.config, &shared.counters);
    let remote = incoming.remote_address();
    let handshakes = counters.handshakes_in_progress.load(Ordering::Relaxed);
    if handshakes >= config.retry_above_handshakes as u64 && !incoming.remote_address_validated() {
        match incoming.retry() {
            Ok(()) => {
                Counters::bump(&counters.retries);
                debug!(%remote, handshakes, "handshake load: answered with a Retry");
                return None;
            }
            // Only an already validated attempt cannot be retried; go on with it.
            Err(e) => incoming = e.into_incoming(),
        }
    }
    if counters.connections_open.load(Ordering::Relaxed) as usize >= config.max_connections {
        Counters::bump(&counters.connections_refused);
        if super::WARNINGS.allow() {
            warn!(%remote, "connection limit reached: refusing");
        }
        incoming.refuse();
        return None;
    }
    // An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d; count it as a.b.c.d.
    let ip = remote.ip().to_canonical();
    if !shared.per_address.try_add(ip, config.max_connections_per_address) {
        Counters::bump(&counters.connections_refused);
        Counters::bump(&counters.connections_refused_per_address);
        // Debug, not warn: one address retrying in a loop must not flood the log; the counter
        // shows it.
        debug!(%remote, "per-address connection limit reached: refusing");
        incoming.refuse();
        return None;
    }
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    counters.handshakes_in_progress.fetch_add(1, Ordering::Relaxed);
    Some((incoming, Admitted { shared: shared.clone(), ip, handshaking: true }))
}

impl PerAddress {
    /// Counts one more connection from `ip`, unless it already has `max`.
    fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn remove(&self, ip: IpAddr) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// A connection's place in the limits: counted in `connections_open`, in its address's count
/// and, until [`Admitted::handshake_done`], in `handshakes_in_progress`. Dropping it gives
/// every place back, however the connection ends.
#[derive(Debug)]
pub(crate) struct Admitted {
    shared: Arc<Shared>,
    ip: IpAddr,
    handshaking: bool,
}

impl Admitted {
    /// The handshake finished (either way): the connection no longer counts as a handshake.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.shared.counters.handshakes_in_progress.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.handshake_done();
        self.shared.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        self.shared.per_address.remove(self.ip);
    }
}
