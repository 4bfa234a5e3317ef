//! Room lanes: one bounded queue and one writer task per (receiver, room). The room pushes
//! encoded events without waiting; the writer coalesces everything queued into one write, with
//! consecutive broadcast bodies (a recovery replay) merged into batches of up to [`MAX_BATCH`].
//! A lone frame (the usual case: one flush of the room's outbox, shared by every receiver) is
//! handed to quinn as is, without a copy.
//!
//! Direct writes (`lane_direct_writes`, on by default): while a writer has nothing to write it
//! parks its stream in the lane's [`Slot`], and the room writes a frame straight into it (quinn
//! copies nothing and sends it with the connection's next packet) instead of queueing it and
//! waking the writer. A write that cannot complete at once (flow control, congestion window,
//! an error) unparks the stream and queues the rest: from then on every event goes through
//! the queue, its bounds and the writer's stall timer, in order, until the writer has drained
//! the queue and parks again. So the room never waits, and coalescing under load is unchanged:
//! whatever quinn has not sent yet when the next frame comes goes out in the same packet.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, trace};

use super::Shared;
use super::peer::Peer;
use super::room::Room;
use super::stats::Counters;
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

impl LaneItem {
    /// Bytes it holds (shared bytes count in full for every lane that queues them).
    fn len(&self) -> usize {
        match self {
            LaneItem::Broadcast(bytes) | LaneItem::Frame(bytes) => bytes.len(),
        }
    }
}

/// What the lanes of one connection hold: the bytes queued in all of them together (bounded
/// by `connection_queue_bytes`) and how many lanes wait for the client to accept their stream.
#[derive(Debug, Default)]
pub struct ConnLanes {
    /// Bytes queued in this connection's lanes.
    bytes: AtomicUsize,
    /// Lanes whose stream the client has not accepted yet.
    unopened: AtomicUsize,
}

impl ConnLanes {
    /// Lanes of this connection still waiting for their stream.
    pub fn unopened(&self) -> usize {
        self.unopened.load(Ordering::Relaxed)
    }
}

/// The byte count one lane shares between its two ends.
#[derive(Debug)]
struct Queued {
    bytes: AtomicUsize,
    conn: Arc<ConnLanes>,
}

impl Queued {
    fn add(&self, len: usize, counters: &Counters) {
        self.bytes.fetch_add(len, Ordering::Relaxed);
        self.conn.bytes.fetch_add(len, Ordering::Relaxed);
        counters.lane_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn sub(&self, len: usize, counters: &Counters) {
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        self.conn.bytes.fetch_sub(len, Ordering::Relaxed);
        counters.lane_bytes.fetch_sub(len as u64, Ordering::Relaxed);
    }
}

/// Where a lane's writer parks its stream while it has nothing to write.
#[derive(Debug, Default)]
struct Slot {
    /// The lane's stream, while the writer is not using it.
    stream: Option<quinn::SendStream>,
    /// Whether the room may write to `stream` directly: the writer parked it with its queue
    /// empty. Cleared (by the room or the writer) as soon as anything is queued.
    parked: bool,
}

/// Locks a lane's slot (a panic elsewhere cannot leave it inconsistent: every change is one
/// assignment).
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The room's end of a lane.
#[derive(Debug)]
pub struct Lane {
    /// Tells this lane from an earlier or later one of the same member and connection.
    pub id: u64,
    tx: mpsc::Sender<(LaneItem, Instant)>,
    close: Arc<OnceLock<(ErrorCode, String)>>,
    queued: Arc<Queued>,
    /// The parked stream, when `lane_direct_writes` is on.
    slot: Option<Arc<Mutex<Slot>>>,
    max_bytes: usize,
    max_conn_bytes: usize,
}

/// Why an event could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full (in events or bytes, the lane's or its connection's): the receiver
    /// is too slow.
    Full,
    /// The writer has ended (the stream failed or the peer stopped it): nothing reaches the
    /// receiver through this lane any more.
    Gone,
}

/// Numbers lanes across the relay.
static LAST_LANE: AtomicU64 = AtomicU64::new(0);

impl Lane {
    /// A lane of `conn`, bounded by the relay's `lane_queue`, `lane_queue_bytes` and
    /// `connection_queue_bytes`, and the receiving half for its writer. It counts as
    /// unopened until its writer has its stream (or gives up).
    pub fn new(shared: &Arc<Shared>, conn: &Arc<ConnLanes>) -> (Lane, LaneQueue) {
        let config = &shared.config;
        let (tx, rx) = mpsc::channel(config.lane_queue);
        let close = Arc::new(OnceLock::new());
        let queued = Arc::new(Queued { bytes: AtomicUsize::new(0), conn: conn.clone() });
        conn.unopened.fetch_add(1, Ordering::Relaxed);
        let slot = config.lane_direct_writes.then(Arc::default);
        let lane = Lane {
            id: LAST_LANE.fetch_add(1, Ordering::Relaxed) + 1,
            tx,
            close: close.clone(),
            queued: queued.clone(),
            slot: slot.clone(),
            max_bytes: config.lane_queue_bytes,
            max_conn_bytes: config.connection_queue_bytes,
        };
        let queue = LaneQueue { rx, close, queued, slot, shared: shared.clone(), opened: false };
        (lane, queue)
    }

    /// Queues an event without waiting, within the lane's bounds in events and bytes and its
    /// connection's bound in bytes.
    /// `at` is when the event was handed over (one clock read per flush, not per lane), for
    /// the queue-delay histogram.
    pub fn push(&self, item: LaneItem, at: Instant, counters: &Counters) -> Result<(), PushError> {
        let len = item.len();
        let lane = self.queued.bytes.load(Ordering::Relaxed);
        let conn = self.queued.conn.bytes.load(Ordering::Relaxed);
        if lane + len > self.max_bytes || conn + len > self.max_conn_bytes {
            return if self.tx.is_closed() { Err(PushError::Gone) } else { Err(PushError::Full) };
        }
        let Some(slot) = &self.slot else { return self.send(item, at, len, counters) };
        let mut slot = lock(slot);
        let rest = match (slot.parked, &mut slot.stream, item) {
            (true, Some(stream), LaneItem::Frame(frame)) => match write_now(stream, frame) {
                None => {
                    // Waited nowhere: it is in quinn's send buffer now.
                    counters.lane_delay.record(Duration::ZERO);
                    Counters::bump(&counters.lane_direct_writes);
                    return Ok(());
                }
                Some(rest) => LaneItem::Frame(rest),
            },
            (_, _, item) => item,
        };
        // Queued from here on, in order behind `rest`, until the writer parks again.
        slot.parked = false;
        let len = rest.len();
        self.send(rest, at, len, counters)
    }

    /// Queues one of the events a new lane starts with (member list, recovery replay): bounded
    /// in events only, since the room's size and history bound them, but counted in bytes, so
    /// a receiver that takes none of it reaches its byte bound at the next event.
    pub fn push_initial(
        &self,
        item: LaneItem,
        at: Instant,
        counters: &Counters,
    ) -> Result<(), PushError> {
        let len = item.len();
        self.send(item, at, len, counters)
    }

    fn send(
        &self,
        item: LaneItem,
        at: Instant,
        len: usize,
        counters: &Counters,
    ) -> Result<(), PushError> {
        // Counted before it is queued, so the writer never takes off more than was added.
        self.queued.add(len, counters);
        match self.tx.try_send((item, at)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.sub(len, counters);
                match e {
                    mpsc::error::TrySendError::Full(_) => Err(PushError::Full),
                    mpsc::error::TrySendError::Closed(_) => Err(PushError::Gone),
                }
            }
        }
    }

    /// Ends the lane: the writer sends what is queued, then `Closed { code, detail }`.
    pub fn close(self, code: ErrorCode, detail: impl Into<String>) {
        let _ = self.close.set((code, detail.into()));
    }
}

/// Writes `frame` into `stream` if it can be written at once, without waiting: `None` when
/// all of it went in, else what is left of it (all of it when the stream is blocked or failed;
/// the writer then meets the same condition and handles it).
fn write_now(stream: &mut quinn::SendStream, frame: Bytes) -> Option<Bytes> {
    let mut chunks = [frame];
    let written = {
        let mut write = std::pin::pin!(stream.write_chunks(&mut chunks));
        write.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    let [rest] = chunks;
    match written {
        Poll::Ready(Ok(_)) if rest.is_empty() => None,
        // A partial write leaves the unwritten tail in `rest`; a blocked (`Pending`) or failed
        // one leaves all of it.
        _ => Some(rest),
    }
}

/// The writer's end of a lane. Dropping it gives back the bytes still queued.
#[derive(Debug)]
pub struct LaneQueue {
    rx: mpsc::Receiver<(LaneItem, Instant)>,
    close: Arc<OnceLock<(ErrorCode, String)>>,
    queued: Arc<Queued>,
    /// The lane's [`Slot`], when `lane_direct_writes` is on.
    slot: Option<Arc<Mutex<Slot>>>,
    shared: Arc<Shared>,
    /// Whether the lane no longer counts as unopened.
    opened: bool,
}

impl LaneQueue {
    async fn recv(&mut self) -> Option<(LaneItem, Instant)> {
        let (item, at) = self.rx.recv().await?;
        self.queued.sub(item.len(), &self.shared.counters);
        Some((item, at))
    }

    fn try_recv(&mut self) -> Option<LaneItem> {
        self.try_recv_at().map(|(item, _)| item)
    }

    fn try_recv_at(&mut self) -> Option<(LaneItem, Instant)> {
        let (item, at) = self.rx.try_recv().ok()?;
        self.queued.sub(item.len(), &self.shared.counters);
        Some((item, at))
    }

    /// Parks `send` for direct writes if nothing is queued; else returns the next event. Without
    /// direct writes, just the next event if one is queued.
    fn park_or_next(
        &mut self,
        send: &mut Option<quinn::SendStream>,
    ) -> Option<(LaneItem, Instant)> {
        let Some(slot) = self.slot.clone() else { return self.try_recv_at() };
        // Under the slot's lock: the room decides "write or queue" under it too, so nothing
        // is queued between this check and the parking.
        let mut slot = lock(&slot);
        let next = self.try_recv_at();
        if next.is_none() {
            slot.stream = send.take();
            slot.parked = slot.stream.is_some();
        }
        next
    }

    /// Takes the stream back from the slot (the writer has something to write).
    fn unpark(&self, send: &mut Option<quinn::SendStream>) {
        if let Some(slot) = &self.slot {
            let mut slot = lock(slot);
            slot.parked = false;
            if let Some(stream) = slot.stream.take() {
                *send = Some(stream);
            }
        }
    }

    /// The lane has its stream, or will never get one.
    fn opened(&mut self) {
        if !std::mem::replace(&mut self.opened, true) {
            self.queued.conn.unopened.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LaneQueue {
    fn drop(&mut self) {
        self.opened();
        // The writer is gone: the room must not write to the stream any more.
        if let Some(slot) = &self.slot {
            let mut slot = lock(slot);
            slot.parked = false;
            slot.stream = None;
        }
        self.rx.close();
        while self.try_recv().is_some() {}
    }
}

/// Which membership a lane serves: the writer removes it from the room when the lane fails.
#[derive(Debug)]
pub struct LaneOwner {
    /// The room.
    pub room: Arc<Room>,
    /// The member's user ID.
    pub user_id: String,
    /// The lane's [`Lane::id`].
    pub lane: u64,
}

/// Opens the lane's stream and writes its events until the room drops the lane. A lane that
/// fails (its stream cannot be opened within `lane_open_timeout_ms`, the peer stops it, a write
/// fails or stalls) removes its member from the room at once, and the others are told.
pub async fn run_writer(
    shared: Arc<Shared>,
    conn: Peer,
    header: LaneHeader,
    queue: LaneQueue,
    owner: LaneOwner,
) {
    shared.counters.lanes_open.fetch_add(1, Ordering::Relaxed);
    let _open = LaneGuard(&shared);
    if let Err(why) = write_lane(&shared, &conn, &header, queue).await {
        debug!(room = %header.room, why, "lane failed: member removed");
        owner.room.remove_lane(&shared, &owner.user_id, owner.lane);
    }
}

/// Writes the lane to its end; `Err` says why it failed.
async fn write_lane(
    shared: &Shared,
    conn: &Peer,
    header: &LaneHeader,
    mut queue: LaneQueue,
) -> Result<(), &'static str> {
    // A peer that takes nothing from this lane for `lane_stall_ms` is not coming back for it:
    // the writer gives up rather than hold the queue until the connection ends.
    let stall = Duration::from_millis(shared.config.lane_stall_ms);
    let open_timeout = Duration::from_millis(shared.config.lane_open_timeout_ms);
    let opened = tokio::time::timeout(open_timeout, conn.open_uni()).await;
    queue.opened();
    let send = match opened {
        Ok(Ok(send)) => send,
        Ok(Err(_)) => return Err("connection lost before the lane opened"),
        Err(_) => {
            Counters::bump(&shared.counters.lanes_open_timed_out);
            return Err("the client did not accept the lane's stream in time");
        }
    };
    // Completes when the client stops the stream (or the connection ends): the member is
    // removed at once, not at its next event.
    let mut stopped = std::pin::pin!(send.stopped());
    // The stream, while the writer holds it (see [`Slot`]).
    let mut send = Some(send);
    // Buffers grow on first use: an idle lane holds no write buffer.
    let mut buf = BytesMut::new();
    // The header goes out at once: a stream is invisible to the peer until data is written.
    if encode_frame(header, &mut buf).is_err() {
        return Err("lane header encoding");
    }
    let slow = conn.stream_code(ErrorCode::SLOW_RECEIVER.0);
    write_or_give_up(writing(&mut send)?, buf.split().freeze(), stall, slow).await?;
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        let (first, queued_at) = match queue.park_or_next(&mut send) {
            Some(next) => next,
            None => {
                let next = tokio::select! {
                    biased;
                    item = queue.recv() => match item {
                        Some(item) => item,
                        None => break,
                    },
                    _ = &mut stopped => return Err("the client stopped the lane"),
                };
                queue.unpark(&mut send);
                next
            }
        };
        shared.counters.lane_delay.record(queued_at.elapsed());
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
            next = if queued < WRITE_BUDGET { queue.try_recv() } else { None };
        }
        flush_batch(&mut pending, &mut buf);
        // The filled part of `buf` goes to quinn as is (no copy); `buf` keeps spare capacity.
        let bytes = lone.unwrap_or_else(|| buf.split().freeze());
        trace!(room = %header.room, bytes = bytes.len(), "lane write");
        write_or_give_up(writing(&mut send)?, bytes, stall, slow).await?;
    }
    queue.unpark(&mut send);
    let send = writing(&mut send)?;
    if let Some((code, detail)) = queue.close.get() {
        let event = LaneEvent::Closed { code: *code, detail: detail.clone() };
        if encode_frame(&event, &mut buf).is_ok() {
            write_or_give_up(send, buf.split().freeze(), stall, slow).await?;
        }
    }
    drop(queue);
    debug!(room = %header.room, "lane finished");
    if send.finish().is_ok() {
        // Hold the connection until the peer has the final events: dropping the last handle
        // of a connection closes it, which could cut off the `Closed` event in flight.
        let _ = tokio::time::timeout(FINISH_LINGER, stopped).await;
    }
    Ok(())
}

/// The stream the writer holds: it took it back from the slot before writing.
fn writing(send: &mut Option<quinn::SendStream>) -> Result<&mut quinn::SendStream, &'static str> {
    send.as_mut().ok_or("lane stream missing")
}

/// Writes `bytes`; `Err` when the stream failed, or when the peer took none of it for
/// `stall` (its flow control withheld): the stream is then reset with `slow`, the peer's
/// encoding of `SLOW_RECEIVER`.
async fn write_or_give_up(
    send: &mut quinn::SendStream,
    bytes: Bytes,
    stall: Duration,
    slow: quinn::VarInt,
) -> Result<(), &'static str> {
    let stalled = {
        let mut write = std::pin::pin!(send.write_chunk(bytes));
        // Most writes complete at once: arm the stall timer only for one that has to wait.
        let waker = std::task::Waker::noop();
        if let std::task::Poll::Ready(written) =
            write.as_mut().poll(&mut std::task::Context::from_waker(waker))
        {
            return written.map_err(|_| "lane write failed");
        }
        match tokio::time::timeout(stall, write).await {
            Ok(written) => return written.map_err(|_| "lane write failed"),
            Err(_) => true,
        }
    };
    if stalled {
        debug!("lane write stalled: stream reset");
        let _ = send.reset(slow);
    }
    Err("the client took nothing from the lane for lane_stall_ms")
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
