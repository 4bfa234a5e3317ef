//! The reader of barrage datagrams: decode, name the room and sender (or hold the message
//! until the room's lane names them), deliver in lists.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::protocol::{MAX_BATCH, ServerDatagram, decode_datagram};

use super::connection::{Connection, lock};
use super::event::{Event, ReceivedBarrage};
use super::freshness::RelayClock;
use super::rooms::{Dropped, Rooms};
use super::shared::Shared;
use super::stats::Stats;

/// Reads the datagrams of `connection` until it ends. After one arrives, those already
/// queued are taken too (up to [`MAX_BATCH`]), so a burst becomes one event per room.
/// Barrage whose room or sender is not known yet is held in `shared.rooms` (see
/// [`Rooms::receive_barrage`]); this reader also drops it when it expires.
pub(crate) async fn read_datagrams(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    events: mpsc::Sender<Event>,
) {
    let quic = &connection.quic;
    loop {
        // Only this reader holds barrage, so the next expiry can only move later meanwhile
        // (the lane readers release held messages): waking then is early at worst.
        let expiry = lock(&shared.rooms).next_expiry();
        let first = tokio::select! {
            datagram = quic.read_datagram() => match datagram {
                Ok(datagram) => datagram,
                Err(_) => break,
            },
            () = until(expiry) => {
                expire_held(&shared, Instant::now());
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ready_now(quic.read_datagram()) {
                Some(Ok(datagram)) => batch.push(datagram),
                _ => break,
            }
        }
        let now = Instant::now();
        let batches = {
            let mut clock = lock(&shared.relay_clock);
            let mut rooms = lock(&shared.rooms);
            let read = Read { at: now, local_ms: shared.local_ms(now) };
            barrage_events(&mut rooms, &mut clock, batch, read, &shared.stats)
        };
        for event in batches {
            let _ = events.send(event).await;
        }
    }
}

/// Waits until `deadline`, or forever if there is none.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Drops the held barrage that expired by `now` and counts it.
fn expire_held(shared: &Shared, now: Instant) {
    let mut dropped = Dropped::default();
    lock(&shared.rooms).expire_held(now, &mut dropped);
    count_dropped(&shared.stats, dropped);
}

/// Adds dropped barrage to the counters.
pub(crate) fn count_dropped(stats: &Stats, dropped: Dropped) {
    Stats::add(&stats.barrage_unknown_room, dropped.unknown_room);
    Stats::add(&stats.barrage_unknown_sender, dropped.unknown_sender);
}

/// Polls `future` once: its output if it is ready now. (A zero `tokio::time::timeout` is no
/// substitute: when the future is pending it waits for the timer's next tick, about 1 ms.)
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// When a batch of datagrams was read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    /// For the held barrage's expiry.
    pub(crate) at: Instant,
    /// This client's clock then, for the relay clock's samples.
    pub(crate) local_ms: u64,
}

/// Turns datagrams read at `read` into one `Barrages` event per room (rooms in order of
/// first appearance, messages in arrival order), sampling the relay's clock from each
/// barrage. Barrage whose room or sender is not known yet is held in `rooms`; held barrage
/// that expired by then, overflow and what cannot be delivered are counted.
pub(crate) fn barrage_events(
    rooms: &mut Rooms,
    clock: &mut RelayClock,
    datagrams: Vec<Bytes>,
    read: Read,
    stats: &Stats,
) -> Vec<Event> {
    let now = read.at;
    let mut dropped = Dropped::default();
    rooms.expire_held(now, &mut dropped);
    let mut by_room: Vec<(String, Vec<ReceivedBarrage>)> = Vec::new();
    for datagram in datagrams {
        let message = match decode_datagram::<ServerDatagram>(&datagram) {
            Ok(ServerDatagram::Barrage(message)) => message,
            Err(error) => {
                tracing::debug!(%error, len = datagram.len(), "malformed datagram dropped");
                Stats::add(&stats.datagrams_malformed, 1);
                continue;
            }
        };
        clock.sample(read.local_ms, message.sent_at_ms);
        if let Some((room, message)) = rooms.receive_barrage(message, now, &mut dropped) {
            match by_room.iter_mut().find(|(r, _)| *r == room) {
                Some((_, messages)) => messages.push(message),
                None => by_room.push((room, vec![message])),
            }
        }
    }
    count_dropped(stats, dropped);
    by_room
        .into_iter()
        .map(|(room, messages)| {
            Stats::add(&stats.barrage_received, messages.len() as u64);
            Event::Barrages { room, messages }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::rooms::HELD_BARRAGE_TTL;
    use crate::protocol::{BarrageMessage, LaneEvent, LaneHeader, Member, User, encode_body};

    fn datagram(room_number: u32, sender: u32, id: u64) -> Bytes {
        encode_body(&ServerDatagram::Barrage(BarrageMessage {
            room_number,
            id,
            sent_at_ms: 5,
            sender,
            payload: Bytes::from_static(b"x"),
        }))
        .unwrap()
    }

    fn rooms() -> Rooms {
        let mut rooms = Rooms::new(User { id: "me".into(), name: "Me".into() }, true, true);
        for (lane, room, number) in [(1, "a", 10), (2, "b", 20)] {
            rooms
                .lane_opened(lane, LaneHeader { room: room.into(), room_number: number, epoch: 1 });
            rooms.lane_event(
                lane,
                LaneEvent::UsersJoined(vec![Member {
                    session: 1,
                    user: User { id: "bob".into(), name: "Bob".into() },
                }]),
            );
        }
        rooms
    }

    fn read(at: Instant) -> Read {
        Read { at, local_ms: 1_000 }
    }

    fn ids(event: &Event) -> (String, Vec<u64>) {
        match event {
            Event::Barrages { room, messages } => {
                (room.clone(), messages.iter().map(|m| m.id).collect())
            }
            other => panic!("not a barrage event: {other:?}"),
        }
    }

    #[test]
    fn a_burst_becomes_one_list_per_room_in_arrival_order() {
        let stats = Stats::default();
        let batch =
            vec![datagram(10, 1, 1), datagram(20, 1, 2), datagram(10, 1, 3), datagram(10, 1, 4)];
        let events = barrage_events(
            &mut rooms(),
            &mut RelayClock::default(),
            batch,
            read(Instant::now()),
            &stats,
        );
        let events: Vec<_> = events.iter().map(ids).collect();
        assert_eq!(events, vec![("a".into(), vec![1, 3, 4]), ("b".into(), vec![2])]);
        assert_eq!(stats.snapshot().barrage_received, 4);
    }

    #[test]
    fn every_barrage_read_samples_the_relay_clock() {
        let (stats, mut clock) = (Stats::default(), RelayClock::default());
        // Sent at 5 ms on the relay's clock, read at 1000 ms on the client's; held ones too.
        let batch = vec![datagram(10, 1, 1), datagram(10, 42, 2)];
        barrage_events(&mut rooms(), &mut clock, batch, read(Instant::now()), &stats);
        assert_eq!(clock.offset(), Some(995));
    }

    #[tokio::test(start_paused = true)]
    async fn undeliverable_datagrams_are_dropped_and_counted() {
        let stats = Stats::default();
        let mut rooms = rooms();
        let batch = vec![
            datagram(99, 1, 1),             // unknown room, no login waiting: dropped
            datagram(10, 42, 2),            // unknown sender: held
            Bytes::from_static(&[0xFF; 9]), // garbage
            Bytes::new(),                   // empty
            Bytes::from(vec![0; 2000]),     // oversize
            datagram(10, 1, 3),
        ];
        let events = barrage_events(
            &mut rooms,
            &mut RelayClock::default(),
            batch,
            read(Instant::now()),
            &stats,
        );
        assert_eq!(events.iter().map(ids).collect::<Vec<_>>(), vec![("a".into(), vec![3])]);
        let counted = stats.snapshot();
        assert_eq!(counted.barrage_unknown_room, 1);
        assert_eq!(counted.barrage_unknown_sender, 0, "held, not dropped yet");
        assert_eq!(counted.datagrams_malformed, 3);
        assert_eq!(counted.barrage_received, 1);

        // The held one expires: the next batch (or the reader's timer) drops and counts it.
        assert_eq!(rooms.next_expiry(), Some(Instant::now() + HELD_BARRAGE_TTL));
        tokio::time::advance(HELD_BARRAGE_TTL).await;
        let events = barrage_events(
            &mut rooms,
            &mut RelayClock::default(),
            vec![datagram(20, 1, 4)],
            read(Instant::now()),
            &stats,
        );
        assert_eq!(events.iter().map(ids).collect::<Vec<_>>(), vec![("b".into(), vec![4])]);
        assert_eq!(stats.snapshot().barrage_unknown_sender, 1);
        assert_eq!(rooms.next_expiry(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_timer_waits_for_the_oldest_held_barrage() {
        let stats = Stats::default();
        let mut rooms = rooms();
        let start = Instant::now();
        barrage_events(
            &mut rooms,
            &mut RelayClock::default(),
            vec![datagram(10, 7, 1)],
            read(start),
            &stats,
        );
        tokio::time::advance(HELD_BARRAGE_TTL / 2).await;
        barrage_events(
            &mut rooms,
            &mut RelayClock::default(),
            vec![datagram(20, 7, 2)],
            read(Instant::now()),
            &stats,
        );
        // `until` sleeps to the first expiry; at it only the first message is dropped.
        until(rooms.next_expiry()).await;
        assert_eq!(Instant::now(), start + HELD_BARRAGE_TTL);
        let mut dropped = Dropped::default();
        rooms.expire_held(Instant::now(), &mut dropped);
        assert_eq!(dropped.unknown_sender, 1);
        until(rooms.next_expiry()).await;
        assert_eq!(Instant::now(), start + HELD_BARRAGE_TTL * 3 / 2);
        rooms.expire_held(Instant::now(), &mut dropped);
        assert_eq!((dropped.unknown_sender, rooms.next_expiry()), (2, None));
        // With nothing held, `until` never returns.
        let never = tokio::time::timeout(HELD_BARRAGE_TTL * 10, until(None)).await;
        assert!(never.is_err());
    }
}
