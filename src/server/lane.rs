//! Room lanes: one bounded queue and one writer task per (receiver, room). The room pushes
//! encoded events without waiting; the writer coalesces everything queued into one write, with
//! consecutive broadcast bodies (a recovery replay) merged into batches of up to [`MAX_BATCH`].
//! A lone frame (the usual case: one flush of the room's outbox, shared by every receiver) is
//! handed to quinn as is, without a copy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::{debug, trace};

use super::Shared;
use crate::protocol::{
    ErrorCode, LaneEvent, LaneHeader, MAX_BATCH, encode_broadcast_batch, encode_frame,
};

/// Bytes gathered for one write before the writer sends them (more stays queued for the next).
const WRITE_BUDGET: usize = 64 * 1024;

/// How long a finished lane waits for the peer to acknowledge its last bytes.
const FINISH_LINGER: Duration = Duration::from_secs(2);

/// One queued lane event.
#[derive(Debug, Clone)]
pub enum LaneItem {
    /// An encoded `BroadcastMessage` body; consecutive ones are batched into one frame.
    Broadcast(Bytes),
    /// One or more complete, already framed events (a flush of the room's outbox, a command,
    /// the member list of a new lane).
    Frame(Bytes),
}

/// The room's end of a lane.
#[derive(Debug)]
pub struct Lane {
    tx: mpsc::Sender<LaneItem>,
    close: Arc<OnceLock<(ErrorCode, String)>>,
}

/// Why an event could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full: the receiver is too slow.
    Full,
    /// The writer has ended (the stream failed or the peer stopped it): nothing reaches the
    /// receiver through this lane any more.
    Gone,
}

impl Lane {
    /// A lane with room for `depth` queued events, and the receiving half for its writer.
    pub fn new(depth: usize) -> (Lane, LaneQueue) {
        let (tx, rx) = mpsc::channel(depth);
        let close = Arc::new(OnceLock::new());
        (Lane { tx, close: close.clone() }, LaneQueue { rx, close })
    }

    /// Queues an event without waiting.
    pub fn push(&self, item: LaneItem) -> Result<(), PushError> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(PushError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Gone),
        }
    }

    /// Ends the lane: the writer sends what is queued, then `Closed { code, detail }`.
    pub fn close(self, code: ErrorCode, detail: impl Into<String>) {
        let _ = self.close.set((code, detail.into()));
    }
}

/// The writer's end of a lane.
#[derive(Debug)]
pub struct LaneQueue {
    rx: mpsc::Receiver<LaneItem>,
    close: Arc<OnceLock<(ErrorCode, String)>>,
}

/// Opens the lane's stream and writes its events until the room drops the lane.
pub async fn run_writer(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    header: LaneHeader,
    mut queue: LaneQueue,
) {
    shared.counters.lanes_open.fetch_add(1, Ordering::Relaxed);
    let _open = LaneGuard(&shared);
    // A peer that takes nothing from this lane for `lane_stall_ms` is not coming back for it:
    // the writer gives up (its queue is dropped, and the room removes the member at its next
    // event) rather than hold the queue until the connection ends.
    let stall = Duration::from_millis(shared.config.lane_stall_ms);
    let Ok(Ok(mut send)) = tokio::time::timeout(stall, conn.open_uni()).await else {
        return;
    };
    // Buffers grow on first use: an idle lane holds no write buffer.
    let mut buf = BytesMut::new();
    // The header goes out at once: a stream is invisible to the peer until data is written.
    if encode_frame(&header, &mut buf).is_err()
        || !write_or_give_up(&mut send, buf.split().freeze(), stall).await
    {
        return;
    }
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        let Some(first) = queue.rx.recv().await else {
            break;
        };
        // A frame that is all there is to write goes to quinn without a copy; anything queued
        // behind it is copied into `buf` after it.
        let mut lone: Option<Bytes> = None;
        let mut next = Some(first);
        while let Some(item) = next {
            if let Some(frame) = lone.take() {
                buf.extend_from_slice(&frame);
            }
            match item {
                LaneItem::Broadcast(message) => {
                    pending.push(message);
                    if pending.len() == MAX_BATCH {
                        flush_batch(&mut pending, &mut buf);
                    }
                }
                LaneItem::Frame(frame) => {
                    flush_batch(&mut pending, &mut buf);
                    if buf.is_empty() {
                        lone = Some(frame);
                    } else {
                        buf.extend_from_slice(&frame);
                    }
                }
            }
            let queued = buf.len() + lone.as_ref().map_or(0, Bytes::len);
            next = if queued < WRITE_BUDGET { queue.rx.try_recv().ok() } else { None };
        }
        flush_batch(&mut pending, &mut buf);
        // The filled part of `buf` goes to quinn as is (no copy); `buf` keeps spare capacity.
        let bytes = lone.unwrap_or_else(|| buf.split().freeze());
        trace!(room = %header.room, bytes = bytes.len(), "lane write");
        if !write_or_give_up(&mut send, bytes, stall).await {
            return;
        }
    }
    if let Some((code, detail)) = queue.close.get() {
        let event = LaneEvent::Closed { code: *code, detail: detail.clone() };
        if encode_frame(&event, &mut buf).is_ok()
            && !write_or_give_up(&mut send, buf.split().freeze(), stall).await
        {
            return;
        }
    }
    debug!(room = %header.room, "lane finished");
    if send.finish().is_ok() {
        // Hold the connection until the peer has the final events: dropping the last handle
        // of a connection closes it, which could cut off the `Closed` event in flight.
        let _ = tokio::time::timeout(FINISH_LINGER, send.stopped()).await;
    }
}

/// Writes `bytes`; `false` when the stream failed, or when the peer took none of it for
/// `stall` (its flow control withheld): the stream is then reset with `SLOW_RECEIVER`.
async fn write_or_give_up(send: &mut quinn::SendStream, bytes: Bytes, stall: Duration) -> bool {
    let stalled = {
        let mut write = std::pin::pin!(send.write_chunk(bytes));
        // Most writes complete at once: arm the stall timer only for one that has to wait.
        let waker = std::task::Waker::noop();
        if let std::task::Poll::Ready(written) =
            write.as_mut().poll(&mut std::task::Context::from_waker(waker))
        {
            return written.is_ok();
        }
        match tokio::time::timeout(stall, write).await {
            Ok(written) => return written.is_ok(),
            Err(_) => true,
        }
    };
    if stalled {
        debug!("lane write stalled: stream reset");
        let _ = send.reset(quinn::VarInt::from_u32(ErrorCode::SLOW_RECEIVER.0));
    }
    false
}

/// Takes a lane off `lanes_open` when its writer ends.
struct LaneGuard<'a>(&'a Shared);

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        self.0.counters.lanes_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn flush_batch(pending: &mut Vec<Bytes>, buf: &mut BytesMut) {
    if !pending.is_empty() {
        // Encoding spliced bodies cannot fail: each was a valid `BroadcastMessage` encoding.
        let _ = encode_broadcast_batch(pending, buf);
        pending.clear();
    }
}
