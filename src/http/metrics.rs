//! `/metrics` in the Prometheus text format (encoded by `prometheus-client`). Nothing is
//! recorded for it on the hot path: each scrape reads the relay's relaxed atomic counters and
//! histograms ([`crate::server::stats`]), the member count of every room, and the process's
//! resident memory.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::HttpState;
use crate::server::Shared;
use crate::server::stats::{Histogram, Stats};

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub(crate) async fn scrape(State(state): State<HttpState>) -> Response {
    let mut registry = Registry::with_prefix("qrelay");
    registry.register_collector(Box::new(Relay(state.shared.clone())));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The relay's numbers, read at each scrape.
#[derive(Debug)]
struct Relay(Arc<Shared>);

/// Counters: (name without prefix, help, value).
fn counters(s: &Stats) -> [(&'static str, &'static str, u64); 37] {
    [
        (
            "connections_accepted",
            "Connections that completed the handshake.",
            s.connections_accepted,
        ),
        (
            "connections_refused",
            "Connections refused at the handshake (limits).",
            s.connections_refused,
        ),
        (
            "connections_refused_per_address",
            "Of connections_refused, those refused for max_connections_per_address.",
            s.connections_refused_per_address,
        ),
        ("retries", "Connection attempts answered with a QUIC Retry.", s.retries),
        ("logins", "Successful logins.", s.logins),
        ("requests_refused", "Requests refused with an error code.", s.requests_refused),
        ("broadcasts", "Broadcasts accepted.", s.broadcasts),
        (
            "broadcast_deliveries",
            "Broadcast deliveries queued to receivers' lanes.",
            s.broadcast_deliveries,
        ),
        ("commands", "Custom commands accepted.", s.commands),
        ("barrages", "Barrage messages accepted.", s.barrages),
        ("datagrams_received", "Barrage datagrams received from clients.", s.datagrams_received),
        ("datagrams_sent", "Barrage datagrams handed to QUIC for receivers.", s.datagrams_sent),
        (
            "datagrams_unsendable",
            "Barrage datagrams that could not be sent to a receiver.",
            s.datagrams_unsendable,
        ),
        (
            "datagrams_dropped_congested",
            "Barrage datagrams that pushed an older one out of a congested receiver's queue.",
            s.datagrams_dropped_congested,
        ),
        ("datagrams_malformed", "Received datagrams that did not decode.", s.datagrams_malformed),
        (
            "protocol_violations",
            "Connections closed for breaking the protocol.",
            s.protocol_violations,
        ),
        ("slow_receivers", "Receivers removed as too slow.", s.slow_receivers),
        (
            "history_evicted",
            "Broadcasts dropped from history to stay within max_history_bytes.",
            s.history_evicted,
        ),
        ("rooms_evicted", "Empty rooms evicted with their history.", s.rooms_evicted),
        (
            "lanes_open_timed_out",
            "Lanes whose stream the client did not accept in time.",
            s.lanes_open_timed_out,
        ),
        (
            "lane_direct_writes",
            "Lane events written straight into the receiver's stream, without the lane's queue.",
            s.lane_direct_writes,
        ),
        (
            "login_timeouts",
            "Connections closed for being in no room for login_timeout_ms.",
            s.login_timeouts,
        ),
        (
            "control_stalls",
            "Connections closed for not reading their control stream.",
            s.control_stalls,
        ),
        (
            "webtransport_sessions",
            "Browser connections that became a WebTransport session.",
            s.webtransport_sessions,
        ),
        (
            "webtransport_refused",
            "Browser connections closed before they became a WebTransport session.",
            s.webtransport_refused,
        ),
        ("webhooks_sent", "Webhook deliveries answered with 2xx.", s.webhooks_sent),
        ("webhooks_failed", "Webhook deliveries given up after their retries.", s.webhooks_failed),
        (
            "webhooks_dropped",
            "Webhook events dropped because the queue was full.",
            s.webhooks_dropped,
        ),
        ("api_requests", "HTTP requests answered (any route, any status).", s.api_requests),
        (
            "cluster_log_entries",
            "Entries this node put into room logs (cluster).",
            s.cluster_log_entries,
        ),
        (
            "cluster_publish_conflicts",
            "Room-log publishes another node's entry got in before, retried (cluster).",
            s.cluster_publish_conflicts,
        ),
        (
            "cluster_member_records",
            "Member records this node published (cluster).",
            s.cluster_member_records,
        ),
        (
            "cluster_applied",
            "Room-log entries and member records applied from NATS (cluster).",
            s.cluster_applied,
        ),
        (
            "cluster_malformed",
            "Messages from NATS that did not decode or named nothing valid (cluster).",
            s.cluster_malformed,
        ),
        (
            "cluster_barrage_dropped",
            "Barrage from other nodes not delivered here (cluster).",
            s.cluster_barrage_dropped,
        ),
        (
            "cluster_barrage_unsent",
            "Barrage this node could not hand to NATS (cluster).",
            s.cluster_barrage_unsent,
        ),
        ("cluster_nodes_lost", "Nodes counted as lost (cluster).", s.cluster_nodes_lost),
    ]
}

/// Gauges: (name without prefix, help, value).
fn gauges(s: &Stats) -> [(&'static str, &'static str, u64); 6] {
    [
        ("connections", "Connections open now (handshakes included).", s.connections_open),
        ("handshakes", "Handshakes in progress now.", s.handshakes_in_progress),
        ("lanes", "Room lanes open now.", s.lanes_open),
        ("lane_bytes", "Bytes queued in all room lanes now.", s.lane_bytes),
        ("rooms", "Rooms now (rooms kept for their history included).", s.rooms_open),
        ("history_bytes", "Bytes of broadcast history held now.", s.history_bytes),
    ]
}

impl Collector for Relay {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let stats = shared.counters.snapshot();
        for (name, help, value) in counters(&stats) {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        for (name, help, value) in gauges(&stats) {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric)?;
        }
        // Read now, not counted: NATS may have gone since the last event.
        let ready = shared.cluster.as_ref().is_some_and(|cluster| cluster.available());
        let metric = encoder.encode_descriptor(
            "cluster_ready",
            "1 when this node is connected to NATS and caught up with the cluster (cluster).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(ready)).encode(metric)?;
        let members: usize = shared.router.rooms().iter().map(|room| room.member_count()).sum();
        let metric = encoder.encode_descriptor(
            "members",
            "Room members now (a connection in 3 rooms counts 3 times).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(members as i64).encode(metric)?;
        if let Some(rss) = resident_bytes() {
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the relay process.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss as i64).encode(metric)?;
        }
        let mut metric = encoder.encode_descriptor(
            "refusals",
            "Requests refused, by kind (login, broadcast, barrage, command, ...; api for other server API routes) and code.",
            None,
            MetricType::Counter,
        )?;
        for (kind, code, count) in shared.counters.refusals.nonzero() {
            let labels = [("kind", kind.name()), ("code", code.name())];
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
        histogram(
            &mut encoder,
            "lane_delay_seconds",
            "Time from handing an event to a lane until its writer takes it for a write.",
            &shared.counters.lane_delay,
        )?;
        histogram(
            &mut encoder,
            "handshake_seconds",
            "Time from admitting a connection attempt to the end of its handshake.",
            &shared.counters.handshake_time,
        )
    }
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let (buckets, sum, count) = histogram.cumulative();
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // The text format wants each bucket's own count; the encoder sums them.
    let mut previous = 0;
    let own: Vec<(f64, u64)> = buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let own = cumulative - previous;
            previous = cumulative;
            (bound, own)
        })
        .collect();
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &own, None)
}

/// The process's resident memory (Linux `/proc/self/statm`), if it can be read.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every Linux this relay targets.
    Some(pages * 4096)
}
