//! The reader of the control stream: replies to requests and token warnings.

use std::sync::Arc;

use quinn::RecvStream;
use tokio::sync::mpsc;

use crate::protocol::{ControlFrame, MAX_SERVER_FRAME, close};
use crate::transport::{FrameReader, ReadError};

use super::connection::Connection;
use super::event::Event;
use super::shared::Shared;
use super::stats::Stats;

/// Reads the control stream of `connection` until it ends, then fails every waiting request.
pub(crate) async fn read_control(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    recv: RecvStream,
    events: mpsc::Sender<Event>,
) {
    let mut reader = FrameReader::new(recv, MAX_SERVER_FRAME);
    let reason = loop {
        match reader.next::<ControlFrame>().await {
            Ok(Some(ControlFrame::Reply(reply))) => {
                if !connection.complete(reply) {
                    Stats::add(&shared.stats.late_replies, 1);
                }
            }
            Ok(Some(ControlFrame::TokenWillExpire { expires_at_ms })) => {
                tracing::info!(expires_at_ms, "token will expire");
                deliver_now(&events, Event::TokenWillExpire { expires_at_ms });
            }
            // A server that is shutting down may end the control stream just before it
            // closes the connection: no reply can come any more, but lanes may still deliver
            // their last events, so the connection is left for the server to close.
            Ok(None) => break "the server ended the control stream".to_owned(),
            Err(ReadError::Codec(e)) => {
                connection.protocol_violation(&e, "control stream");
                break format!("bad frame on the control stream: {e}");
            }
            Err(ReadError::Truncated) => {
                let reason = "the control stream ended inside a frame";
                connection.close(close::PROTOCOL_VIOLATION, reason);
                break reason.to_owned();
            }
            Err(ReadError::Stream(e)) => break e.to_string(),
        }
    };
    tracing::debug!(reason, "control stream closed");
    connection.fail_all(reason);
}

/// Queues an event without making the control reader wait for a slow consumer (replies
/// must keep flowing): if the queue is full, a small task delivers it later.
fn deliver_now(events: &mpsc::Sender<Event>, event: Event) {
    match events.try_send(event) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(event)) => {
            let events = events.clone();
            tokio::spawn(async move {
                let _ = events.send(event).await;
            });
        }
    }
}
