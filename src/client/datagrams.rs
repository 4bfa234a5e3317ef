//! The reader of barrage datagrams: decode, name the room and sender, deliver in lists.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::{MAX_BATCH, ServerDatagram, decode_datagram};

use super::connection::{Connection, lock};
use super::event::{Event, ReceivedBarrage};
use super::rooms::{Rooms, Unresolved};
use super::shared::Shared;
use super::stats::Stats;

/// Reads the datagrams of `connection` until it ends. After one arrives, those already
/// queued are taken too (up to [`MAX_BATCH`]), so a burst becomes one event per room.
pub(crate) async fn read_datagrams(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    events: mpsc::Sender<Event>,
) {
    let quic = &connection.quic;
    while let Ok(first) = quic.read_datagram().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ready_now(quic.read_datagram()) {
                Some(Ok(datagram)) => batch.push(datagram),
                _ => break,
            }
        }
        let batches = {
            let rooms = lock(&shared.rooms);
            barrage_events(&rooms, batch, &shared.stats)
        };
        for event in batches {
            let _ = events.send(event).await;
        }
    }
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

/// Turns received datagrams into one `Barrages` event per room (rooms in order of first
/// appearance, messages in arrival order), counting what cannot be delivered.
pub(crate) fn barrage_events(rooms: &Rooms, datagrams: Vec<Bytes>, stats: &Stats) -> Vec<Event> {
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
        match rooms.resolve_barrage(message) {
            Ok((room, message)) => match by_room.iter_mut().find(|(r, _)| r == room) {
                Some((_, messages)) => messages.push(message),
                None => by_room.push((room.to_owned(), vec![message])),
            },
            Err(Unresolved::UnknownRoom) => Stats::add(&stats.barrage_unknown_room, 1),
            Err(Unresolved::UnknownSender) => Stats::add(&stats.barrage_unknown_sender, 1),
        }
    }
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
        let mut rooms = Rooms::new(User { id: "me".into(), name: "Me".into() }, true);
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
        let events = barrage_events(&rooms(), batch, &stats);
        let events: Vec<_> = events.iter().map(ids).collect();
        assert_eq!(events, vec![("a".into(), vec![1, 3, 4]), ("b".into(), vec![2])]);
        assert_eq!(stats.snapshot().barrage_received, 4);
    }

    #[test]
    fn undeliverable_datagrams_are_dropped_and_counted() {
        let stats = Stats::default();
        let batch = vec![
            datagram(99, 1, 1),             // unknown room
            datagram(10, 42, 2),            // unknown sender
            Bytes::from_static(&[0xFF; 9]), // garbage
            Bytes::new(),                   // empty
            Bytes::from(vec![0; 2000]),     // oversize
            datagram(10, 1, 3),
        ];
        let events = barrage_events(&rooms(), batch, &stats);
        assert_eq!(events.iter().map(ids).collect::<Vec<_>>(), vec![("a".into(), vec![3])]);
        let stats = stats.snapshot();
        assert_eq!(stats.barrage_unknown_room, 1);
        assert_eq!(stats.barrage_unknown_sender, 1);
        assert_eq!(stats.datagrams_malformed, 3);
        assert_eq!(stats.barrage_received, 1);
    }
}
