//! The readers of room lanes: one task per lane, in the lane's order.

use std::sync::Arc;
use std::time::Duration;

use quinn::RecvStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::protocol::{ErrorCode, LaneEvent, LaneHeader, MAX_SERVER_FRAME, close};
use crate::transport::{FrameReader, ReadError};

use super::connection::{Connection, lock};
use super::event::Event;
use super::reconnect;
use super::rooms::{LaneId, LaneOutput, reset_code};
use super::shared::Shared;
use super::stats::Stats;

/// How long a lane reader waits for the end of a lane after its `Closed` event.
const LANE_DRAIN: Duration = Duration::from_secs(10);

/// Accepts the lanes the server opens on `connection` and reads each in its own task,
/// until the connection ends and every lane reader has finished.
pub(crate) async fn accept_lanes(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    events: mpsc::Sender<Event>,
) {
    let mut lanes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.quic.accept_uni() => match accepted {
                Ok(recv) => {
                    let lane = Lane {
                        shared: Arc::clone(&shared),
                        connection: Arc::clone(&connection),
                        id: shared.next_lane(),
                        events: events.clone(),
                    };
                    lanes.spawn(lane.read(recv).in_current_span());
                }
                Err(_) => break,
            },
            Some(_) = lanes.join_next(), if !lanes.is_empty() => {}
        }
    }
    while lanes.join_next().await.is_some() {}
}

/// One lane's reader.
struct Lane {
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    id: LaneId,
    events: mpsc::Sender<Event>,
}

impl Lane {
    /// Reads the lane: its header, then events until `Closed`.
    async fn read(self, recv: RecvStream) {
        let mut reader = FrameReader::new(recv, MAX_SERVER_FRAME);
        let header = match reader.next::<LaneHeader>().await {
            Ok(Some(header)) => header,
            Ok(None) => {
                tracing::warn!("a lane ended before its header");
                return;
            }
            Err(e) => {
                self.failed(e).await;
                return;
            }
        };
        let span = tracing::debug_span!(
            "lane",
            room = %header.room,
            room_number = header.room_number,
            epoch = header.epoch
        );
        async {
            tracing::debug!("lane opened");
            lock(&self.shared.rooms).lane_opened(self.id, header);
            loop {
                match reader.next::<LaneEvent>().await {
                    Ok(Some(event)) => {
                        let closed = matches!(event, LaneEvent::Closed { .. });
                        let output = lock(&self.shared.rooms).lane_event(self.id, event);
                        self.hand_over(output).await;
                        if closed {
                            tracing::debug!("lane closed");
                            drain(&mut reader).await;
                            return;
                        }
                    }
                    Ok(None) => {
                        let detail = "the lane ended without a close event";
                        tracing::warn!(detail);
                        self.closed(ErrorCode::PROTOCOL, detail.into()).await;
                        return;
                    }
                    Err(e) => {
                        self.failed(e).await;
                        return;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Hands the events of one lane event to the application, and records the broadcasts
    /// as delivered at that moment (so a later recovery asks for exactly what the application
    /// has not got). A lane closed as too slow is then logged in to again.
    async fn hand_over(&self, output: LaneOutput) {
        let LaneOutput { events, delivered, dropped, relogin, barrage } = output;
        Stats::add(&self.shared.stats.barrage_received, barrage);
        if dropped > 0 {
            Stats::add(&self.shared.stats.broadcast_duplicates, dropped);
            tracing::debug!(dropped, "broadcasts already delivered or own dropped");
        }
        // The permits are taken before recording: once they are held, handing the events
        // over cannot fail or wait. An application that dropped `Events` gets nothing, but
        // the state stays current.
        let permits = if events.is_empty() {
            None
        } else {
            self.events.reserve_many(events.len()).await.ok()
        };
        if let Some(last_id) = delivered {
            lock(&self.shared.rooms).delivered(self.id, last_id);
        }
        if let Some(permits) = permits {
            for (permit, event) in permits.zip(events) {
                permit.send(event);
            }
        }
        if let Some(room) = relogin {
            tracing::info!(room, "dropped as too slow a receiver: logging in again");
            reconnect::relogin(&self.shared, &self.connection, &room, &self.events).await;
        }
    }

    /// Handles a lane that could not be read further.
    async fn failed(&self, error: ReadError) {
        match error {
            ReadError::Stream(quinn::ReadError::Reset(code)) => {
                let code = reset_code(code.into_inner());
                tracing::warn!(%code, "the server reset a lane");
                self.closed(code, format!("the server reset the lane with code {}", code.0)).await;
            }
            // The connection is gone: the supervisor reconnects or ends the client.
            ReadError::Stream(_) => lock(&self.shared.rooms).lane_lost(self.id),
            ReadError::Codec(e) => {
                self.connection.protocol_violation(&e, "room lane");
                lock(&self.shared.rooms).lane_lost(self.id);
            }
            ReadError::Truncated => {
                self.connection.close(close::PROTOCOL_VIOLATION, "a lane ended inside a frame");
                lock(&self.shared.rooms).lane_lost(self.id);
            }
        }
    }

    /// Ends a lane that closed without a `Closed` event.
    async fn closed(&self, code: ErrorCode, detail: String) {
        let output = lock(&self.shared.rooms).lane_closed(self.id, code, detail);
        self.hand_over(output).await;
    }
}

/// Reads a closed lane to its end (the server finishes it right after `Closed`): QUIC
/// returns the stream credit for a new lane only once an old one is fully read, and the
/// protocol asks clients never to stop a lane.
async fn drain(reader: &mut FrameReader) {
    let to_end = async {
        while let Ok(Some(extra)) = reader.next::<LaneEvent>().await {
            tracing::warn!(?extra, "event after the lane's close event ignored");
        }
    };
    if tokio::time::timeout(LANE_DRAIN, to_end).await.is_err() {
        tracing::warn!("the server did not end a closed lane");
    }
}
