//! The readers of room lanes: one task per lane, in the lane's order.

use std::sync::Arc;
use std::time::Duration;

use quinn::RecvStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::protocol::{ErrorCode, LaneEvent, LaneHeader, MAX_SERVER_FRAME, close};
use crate::transport::{FrameReader, ReadError};

use super::connection::{Shared, lock};
use super::event::Event;
use super::rooms::{LaneId, reset_code};

/// How long a lane reader waits for the end of a lane after its `Closed` event.
const LANE_DRAIN: Duration = Duration::from_secs(10);

/// Accepts the lanes the server opens and reads each in its own task, until the connection
/// ends and every lane reader has finished.
pub(crate) async fn accept_lanes(shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    let mut lanes = JoinSet::new();
    let mut next_id: LaneId = 0;
    loop {
        tokio::select! {
            accepted = shared.conn.accept_uni() => match accepted {
                Ok(recv) => {
                    next_id += 1;
                    let task = read_lane(Arc::clone(&shared), next_id, recv, events.clone());
                    lanes.spawn(task.in_current_span());
                }
                Err(_) => break,
            },
            Some(_) = lanes.join_next(), if !lanes.is_empty() => {}
        }
    }
    while lanes.join_next().await.is_some() {}
}

/// Reads one lane: its header, then events until `Closed`.
async fn read_lane(shared: Arc<Shared>, id: LaneId, recv: RecvStream, events: mpsc::Sender<Event>) {
    let mut reader = FrameReader::new(recv, MAX_SERVER_FRAME);
    let header = match reader.next::<LaneHeader>().await {
        Ok(Some(header)) => header,
        Ok(None) => {
            tracing::warn!("a lane ended before its header");
            return;
        }
        Err(e) => {
            lane_failed(&shared, id, e, &events).await;
            return;
        }
    };
    let span = tracing::debug_span!("lane", room = %header.room, room_number = header.room_number);
    async {
        tracing::debug!("lane opened");
        lock(&shared.rooms).lane_opened(id, header);
        loop {
            match reader.next::<LaneEvent>().await {
                Ok(Some(event)) => {
                    let closed = matches!(event, LaneEvent::Closed { .. });
                    let event = lock(&shared.rooms).lane_event(id, event);
                    if let Some(event) = event {
                        // A consumer that dropped `Events` is fine: keep the state current.
                        let _ = events.send(event).await;
                    }
                    if closed {
                        tracing::debug!("lane closed");
                        drain(&mut reader).await;
                        return;
                    }
                }
                Ok(None) => {
                    let detail = "the lane ended without a close event";
                    tracing::warn!(detail);
                    room_closed(&shared, id, ErrorCode::PROTOCOL, detail, &events).await;
                    return;
                }
                Err(e) => {
                    lane_failed(&shared, id, e, &events).await;
                    return;
                }
            }
        }
    }
    .instrument(span)
    .await
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

/// Handles a lane that could not be read further.
async fn lane_failed(shared: &Shared, id: LaneId, error: ReadError, events: &mpsc::Sender<Event>) {
    match error {
        ReadError::Stream(quinn::ReadError::Reset(code)) => {
            let code = reset_code(code.into_inner());
            tracing::warn!(%code, "the server reset a lane");
            let detail = format!("the server reset the lane with code {}", code.0);
            room_closed(shared, id, code, &detail, events).await;
        }
        // The connection is gone: the `Disconnected` event tells the application.
        ReadError::Stream(_) => {
            lock(&shared.rooms).lane_ended(id);
        }
        ReadError::Codec(e) => {
            shared.protocol_violation(&e, "room lane");
            lock(&shared.rooms).lane_ended(id);
        }
        ReadError::Truncated => {
            shared.close(close::PROTOCOL_VIOLATION, "a lane ended inside a frame");
            lock(&shared.rooms).lane_ended(id);
        }
    }
}

/// Ends a lane that closed without a `Closed` event, telling the application.
async fn room_closed(
    shared: &Shared,
    id: LaneId,
    code: ErrorCode,
    detail: &str,
    events: &mpsc::Sender<Event>,
) {
    let room = lock(&shared.rooms).lane_ended(id);
    if let Some(room) = room {
        let event = Event::RoomClosed { room, code, detail: detail.to_owned() };
        let _ = events.send(event).await;
    }
}
