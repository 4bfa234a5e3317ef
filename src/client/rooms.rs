//! What the client knows about its rooms: the login replies (room numbers for sending
//! barrage) and the room lanes (room numbers and members for naming received barrage).
//! Pure state, no I/O, so every rule here is unit-tested.

use std::collections::HashMap;

use crate::protocol::{BarrageMessage, ErrorCode, LaneEvent, LaneHeader, Member, User};

use super::event::{Event, ReceivedBarrage};

/// A room lane, numbered by the client in the order lanes were accepted.
pub(crate) type LaneId = u64;

/// The rooms of one connection.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    /// Rooms this client logged in to, by name, from the login replies.
    joined: HashMap<String, Joined>,
    /// Open room lanes.
    lanes: HashMap<LaneId, Lane>,
    /// Room number → the newest open lane of that room, to resolve barrage.
    by_number: HashMap<u32, LaneId>,
}

/// A successful login.
#[derive(Debug)]
struct Joined {
    /// The room's number, for barrage datagrams.
    room_number: u32,
    /// The lane opened for this login, once known: its `Closed` event ends the login.
    lane: Option<LaneId>,
}

/// An open room lane.
#[derive(Debug)]
struct Lane {
    /// The room name from the lane header.
    room: String,
    /// The room number from the lane header.
    room_number: u32,
    /// Members by session number, from the lane's user updates.
    members: HashMap<u32, User>,
    /// Whether a login has adopted this lane.
    claimed: bool,
}

/// Why a received barrage could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// No open lane has this room number.
    UnknownRoom,
    /// The sender's session is not among the room's members.
    UnknownSender,
}

impl Rooms {
    /// Records a successful login, adopting the newest not-yet-adopted lane of that room if
    /// it arrived before the reply.
    pub(crate) fn logged_in(&mut self, room: &str, room_number: u32) {
        let lane = self
            .lanes
            .iter_mut()
            .filter(|(_, lane)| !lane.claimed && lane.room == room)
            .max_by_key(|(id, _)| **id)
            .map(|(id, lane)| {
                lane.claimed = true;
                *id
            });
        self.joined.insert(room.to_owned(), Joined { room_number, lane });
    }

    /// Forgets a login (after a logout).
    pub(crate) fn logged_out(&mut self, room: &str) {
        self.joined.remove(room);
    }

    /// The room number of a room this client is logged in to.
    pub(crate) fn room_number(&self, room: &str) -> Option<u32> {
        self.joined.get(room).map(|joined| joined.room_number)
    }

    /// Registers a lane from its header, adopting it into a login that is waiting for one.
    pub(crate) fn lane_opened(&mut self, id: LaneId, header: LaneHeader) {
        let claimed = match self.joined.get_mut(&header.room) {
            Some(joined) if joined.lane.is_none() => {
                joined.lane = Some(id);
                true
            }
            _ => false,
        };
        self.by_number.insert(header.room_number, id);
        self.lanes.insert(
            id,
            Lane {
                room: header.room,
                room_number: header.room_number,
                members: HashMap::new(),
                claimed,
            },
        );
    }

    /// Applies a lane event to the member lists and turns it into the application's event.
    /// A `Closed` event also ends the lane (see [`Rooms::lane_ended`]).
    pub(crate) fn lane_event(&mut self, id: LaneId, event: LaneEvent) -> Option<Event> {
        let lane = self.lanes.get_mut(&id)?;
        let room = lane.room.clone();
        let event = match event {
            LaneEvent::UsersJoined(members) => {
                let users = members
                    .into_iter()
                    .map(|Member { session, user }| {
                        lane.members.insert(session, user.clone());
                        user
                    })
                    .collect();
                Event::UsersJoined { room, users }
            }
            LaneEvent::UsersLeft(members) => {
                let users = members
                    .into_iter()
                    .map(|Member { session, user }| {
                        lane.members.remove(&session);
                        user
                    })
                    .collect();
                Event::UsersLeft { room, users }
            }
            LaneEvent::Broadcasts(messages) => Event::Broadcasts { room, messages },
            LaneEvent::Command(message) => Event::Command { room, message },
            LaneEvent::Closed { code, detail } => {
                self.lane_ended(id);
                Event::RoomClosed { room, code, detail }
            }
            LaneEvent::Recovered { complete, missed, replayed } => {
                Event::Recovered { room, complete, missed, replayed }
            }
        };
        Some(event)
    }

    /// Forgets a lane that closed or failed, and the login that owned it. Returns the lane's
    /// room if the lane was still open.
    pub(crate) fn lane_ended(&mut self, id: LaneId) -> Option<String> {
        let lane = self.lanes.remove(&id)?;
        if self.by_number.get(&lane.room_number) == Some(&id) {
            self.by_number.remove(&lane.room_number);
        }
        if self.joined.get(&lane.room).is_some_and(|joined| joined.lane == Some(id)) {
            self.joined.remove(&lane.room);
        }
        Some(lane.room)
    }

    /// Names the room and the sender of a received barrage.
    pub(crate) fn resolve_barrage(
        &self,
        message: BarrageMessage,
    ) -> Result<(&str, ReceivedBarrage), Unresolved> {
        let lane = self
            .by_number
            .get(&message.room_number)
            .and_then(|id| self.lanes.get(id))
            .ok_or(Unresolved::UnknownRoom)?;
        let from = lane.members.get(&message.sender).ok_or(Unresolved::UnknownSender)?;
        Ok((
            &lane.room,
            ReceivedBarrage {
                id: message.id,
                sent_at_ms: message.sent_at_ms,
                from: from.clone(),
                payload: message.payload,
            },
        ))
    }

    /// The rooms this client is logged in to.
    pub(crate) fn joined_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.joined.keys().cloned().collect();
        rooms.sort();
        rooms
    }
}

/// The code a lane gets when it ends without a `Closed` event (server reset the stream).
pub(crate) fn reset_code(code: u64) -> ErrorCode {
    u32::try_from(code).map(ErrorCode).unwrap_or(ErrorCode::PROTOCOL)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn user(id: &str) -> User {
        User { id: id.into(), name: id.to_uppercase() }
    }

    fn member(session: u32, id: &str) -> Member {
        Member { session, user: user(id) }
    }

    fn header(room: &str, room_number: u32) -> LaneHeader {
        LaneHeader { room: room.into(), room_number, epoch: 1 }
    }

    fn barrage(room_number: u32, sender: u32) -> BarrageMessage {
        BarrageMessage {
            room_number,
            id: 77,
            sent_at_ms: 1_000,
            sender,
            payload: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn barrage_sender_is_resolved_from_the_lane_members() {
        let mut rooms = Rooms::default();
        rooms.lane_opened(1, header("lobby", 7));
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob"), member(4, "carol")]));
        let (room, message) = rooms.resolve_barrage(barrage(7, 4)).unwrap();
        assert_eq!(room, "lobby");
        assert_eq!(message.from, user("carol"));
        assert_eq!(message.id, 77);
        assert_eq!(message.payload, Bytes::from_static(b"hi"));
    }

    #[test]
    fn unknown_room_and_sender_are_reported() {
        let mut rooms = Rooms::default();
        assert_eq!(rooms.resolve_barrage(barrage(7, 3)).err(), Some(Unresolved::UnknownRoom));
        rooms.lane_opened(1, header("lobby", 7));
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob")]));
        assert_eq!(rooms.resolve_barrage(barrage(7, 9)).err(), Some(Unresolved::UnknownSender));
        rooms.lane_event(1, LaneEvent::UsersLeft(vec![member(3, "bob")]));
        assert_eq!(rooms.resolve_barrage(barrage(7, 3)).err(), Some(Unresolved::UnknownSender));
    }

    #[test]
    fn lane_events_become_application_events() {
        let mut rooms = Rooms::default();
        rooms.lane_opened(1, header("lobby", 7));
        assert_eq!(
            rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob")])),
            Some(Event::UsersJoined { room: "lobby".into(), users: vec![user("bob")] })
        );
        assert_eq!(
            rooms.lane_event(1, LaneEvent::UsersLeft(vec![member(3, "bob")])),
            Some(Event::UsersLeft { room: "lobby".into(), users: vec![user("bob")] })
        );
        // An event for a lane that is not open is ignored.
        assert_eq!(rooms.lane_event(2, LaneEvent::UsersLeft(vec![])), None);
    }

    #[test]
    fn login_reply_before_or_after_the_lane_gives_the_same_state() {
        for reply_first in [true, false] {
            let mut rooms = Rooms::default();
            if reply_first {
                rooms.logged_in("lobby", 7);
                rooms.lane_opened(1, header("lobby", 7));
            } else {
                rooms.lane_opened(1, header("lobby", 7));
                rooms.logged_in("lobby", 7);
            }
            assert_eq!(rooms.room_number("lobby"), Some(7));
            assert_eq!(rooms.joined_rooms(), vec!["lobby".to_string()]);
            // Being kicked closes the lane and ends the login.
            let closed = rooms.lane_event(
                1,
                LaneEvent::Closed {
                    code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                    detail: "elsewhere".into(),
                },
            );
            assert_eq!(
                closed,
                Some(Event::RoomClosed {
                    room: "lobby".into(),
                    code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                    detail: "elsewhere".into()
                })
            );
            assert_eq!(rooms.room_number("lobby"), None, "reply first: {reply_first}");
            assert_eq!(rooms.resolve_barrage(barrage(7, 1)).err(), Some(Unresolved::UnknownRoom));
        }
    }

    #[test]
    fn old_lane_closing_late_does_not_end_a_new_login() {
        let mut rooms = Rooms::default();
        rooms.logged_in("lobby", 7);
        rooms.lane_opened(1, header("lobby", 7));
        // Log out and in again; the old lane's Closed event is read after the new login.
        rooms.logged_out("lobby");
        rooms.logged_in("lobby", 7);
        rooms.lane_event(
            1,
            LaneEvent::Closed { code: ErrorCode::LOGGED_OUT, detail: String::new() },
        );
        assert_eq!(rooms.room_number("lobby"), Some(7));
        rooms.lane_opened(2, header("lobby", 7));
        rooms.lane_event(2, LaneEvent::UsersJoined(vec![member(5, "dave")]));
        assert!(rooms.resolve_barrage(barrage(7, 5)).is_ok());
        // The new lane, in turn, ends the new login.
        rooms.lane_ended(2);
        assert_eq!(rooms.room_number("lobby"), None);
    }

    #[test]
    fn rooms_are_resolved_by_number_independently() {
        let mut rooms = Rooms::default();
        rooms.lane_opened(1, header("a", 1));
        rooms.lane_opened(2, header("b", 2));
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(9, "x")]));
        rooms.lane_event(2, LaneEvent::UsersJoined(vec![member(9, "x")]));
        assert_eq!(rooms.resolve_barrage(barrage(1, 9)).unwrap().0, "a");
        assert_eq!(rooms.resolve_barrage(barrage(2, 9)).unwrap().0, "b");
        assert_eq!(rooms.lane_ended(1), Some("a".to_string()));
        assert_eq!(rooms.lane_ended(1), None);
        assert!(rooms.resolve_barrage(barrage(1, 9)).is_err());
        assert!(rooms.resolve_barrage(barrage(2, 9)).is_ok());
    }

    #[test]
    fn reset_codes_map_to_result_codes() {
        assert_eq!(reset_code(3005), ErrorCode::SLOW_RECEIVER);
        assert_eq!(reset_code(u64::MAX), ErrorCode::PROTOCOL);
    }
}
