//! What the client knows about its rooms, as pure state (no I/O, so every rule here is
//! unit-tested). Two layers:
//! - memberships: the rooms the application logged in to, with what it takes to log in again
//!   after a lost connection (the token) and where broadcast delivery stopped (the lane's
//!   epoch and the last broadcast ID handed to the application). They outlive connections.
//! - the lanes of the current connection: room numbers and members, to name the room and the
//!   sender of received barrage, and the barrage held until its lane names them. They end
//!   with their connection.
//!
//! Member lists (per lane by session, per membership by user ID) are kept only when the
//! client tracks members ([`super::ClientConfig::track_members`]). The member count of each
//! lane is always kept. In a large room (the lane brought a `MemberPage` or a `MemberCount`)
//! the server no longer names who joins or leaves: the client keeps only the count and the
//! members it was told of (the first page, barrage senders), to name barrage senders.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{
    BarrageMessage, ErrorCode, LaneEvent, LaneHeader, MAX_BATCH, Member, Recover, Request,
    SYSTEM_SESSION, SYSTEM_USER_ID, SYSTEM_USER_NAME, User,
};

use super::event::{Event, ReceivedBarrage};

/// A room lane, numbered by the client in the order lanes were accepted (never reused, also
/// across connections).
pub(crate) type LaneId = u64;

/// The epoch a recovering login names when no lane header of the room was ever seen: the
/// server then treats the login as coming from another epoch and says recovery is incomplete.
/// (A room whose random epoch is 0 would replay its history instead: harmless.)
const UNKNOWN_EPOCH: u64 = 0;

/// How many received barrage messages are held per room number while the lane has not named
/// their sender (or the room itself) yet; when more arrive, the oldest is dropped. Live
/// comments at the relay's default 20/s per room fill it only if the lane stalls for over
/// 10 s; it costs at most 256 × 1056 bytes (about 270 KiB) per room.
pub(crate) const HELD_BARRAGE_PER_ROOM: usize = 256;

/// How long a held barrage waits for the lane to name its sender (or room) before it is
/// dropped: the lane lags a datagram by about one round trip plus the readers' scheduling, far
/// less than this; much longer and a comment would no longer be live.
pub(crate) const HELD_BARRAGE_TTL: Duration = Duration::from_millis(500);

/// How long a member that left still names the sender of a barrage: the server sends a
/// barrage before it handles its sender's leave, but on the receiving side the lane can tell
/// of the leave before the datagram reader has the barrage (a one-shot sender leaves right
/// after its reply).
pub(crate) const DEPARTED_TTL: Duration = Duration::from_secs(2);

/// How many departed members a lane remembers for that ([`DEPARTED_TTL`]); the oldest goes.
pub(crate) const DEPARTED_PER_ROOM: usize = 256;

/// The rooms of one client.
#[derive(Debug)]
pub(crate) struct Rooms {
    /// Who this client is: its logins name this user, and a broadcast from it can only be a
    /// replay of its own message (the server never echoes one live), which is dropped.
    me: User,
    /// Keep memberships when the server ends a lane as too slow or for its shutdown, or when
    /// the connection is lost, to log in again (automatic reconnect is on).
    keep: bool,
    /// Keep member lists: name barrage senders, report only real member changes after a
    /// re-login. Without them nothing here grows with the size of a room.
    track_members: bool,
    /// Memberships by room name.
    joined: HashMap<String, Joined>,
    /// Open room lanes of the current connection.
    lanes: HashMap<LaneId, Lane>,
    /// Room number → the newest open lane of that room, to resolve barrage.
    by_number: HashMap<u32, LaneId>,
    /// Barrage whose room or sender the lanes have not named yet, by room number, oldest
    /// first (see [`Rooms::receive_barrage`]).
    held: HashMap<u32, VecDeque<Held>>,
}

/// A received barrage waiting for its lane to name its room or sender.
#[derive(Debug)]
struct Held {
    /// When it arrived: it is dropped [`HELD_BARRAGE_TTL`] later.
    arrived: Instant,
    /// The message as received.
    message: BarrageMessage,
}

/// A room the application logged in to.
#[derive(Debug)]
struct Joined {
    /// The token of the latest login or renewal, to log in again with.
    token: String,
    /// Whether the server accepted the login; `false` while the first login is in flight
    /// (the lane may arrive before the reply).
    confirmed: bool,
    /// The room's number on the current connection, for barrage; `None` while not logged in
    /// on it (reconnecting, logging in again).
    room_number: Option<u32>,
    /// The lane of the current login, once its header arrived.
    lane: Option<LaneId>,
    /// The epoch of the latest lane of this room (`None` before the first lane header).
    epoch: Option<u64>,
    /// The last broadcast ID of `epoch` handed to the application: a replay drops what is at
    /// or below it, and a recovering login asks for what is above it.
    last_id: u64,
    /// Members the application has been told about, by user ID (empty when members are not
    /// tracked).
    known: HashMap<String, User>,
    /// While the member list of a new login arrives: members known from before that it has
    /// not named yet. Those it never names left while the client was away.
    stale: Option<HashMap<String, User>>,
}

impl Joined {
    fn new(token: String) -> Self {
        Joined {
            token,
            confirmed: false,
            room_number: None,
            lane: None,
            epoch: None,
            last_id: 0,
            known: HashMap::new(),
            stale: None,
        }
    }

    /// Ends the membership's tie to its lane (lane closed or connection lost); it is kept to
    /// log in again.
    fn detach(&mut self) {
        self.lane = None;
        self.room_number = None;
        if let Some(stale) = self.stale.take() {
            self.known.extend(stale);
        }
    }
}

/// An open room lane.
#[derive(Debug)]
struct Lane {
    /// The room name from the lane header.
    room: String,
    /// The room number from the lane header.
    room_number: u32,
    /// Members by session number, from the lane's user updates (empty when members are not
    /// tracked).
    members: HashMap<u32, User>,
    /// Members that left recently (when, session, who), to name late barrage senders.
    departed: VecDeque<(Instant, u32, User)>,
    /// How many members the room has, this client included: counted from the user updates,
    /// or as a large room's lane says.
    count: u32,
    /// The room is large: user updates only name barrage senders, and are not reported.
    large: bool,
}

/// What a lane reader does with one lane event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LaneOutput {
    /// Events for the application, in order.
    pub(crate) events: Vec<Event>,
    /// For a broadcast batch of the membership's current lane: its last ID, to record with
    /// [`Rooms::delivered`] once the events are handed over.
    pub(crate) delivered: Option<u64>,
    /// Broadcasts dropped: already delivered (a replay) or this client's own.
    pub(crate) dropped: u64,
    /// The lane was closed because the receiver fell behind: log in to this room again.
    pub(crate) relogin: Option<String>,
    /// Held barrage released by this event (a `UsersJoined` that named their sender), in
    /// the `Barrages` events of `events`.
    pub(crate) barrage: u64,
}

/// Why a received barrage could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// No open lane has this room number.
    UnknownRoom,
    /// The sender's session is not among the room's members.
    UnknownSender,
}

/// Received barrage dropped undelivered, by reason (for the client's counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Its room number was never named by a lane.
    pub(crate) unknown_room: u64,
    /// Its room's lane never named its sender.
    pub(crate) unknown_sender: u64,
}

impl Dropped {
    fn add(&mut self, why: Unresolved, n: u64) {
        match why {
            Unresolved::UnknownRoom => self.unknown_room += n,
            Unresolved::UnknownSender => self.unknown_sender += n,
        }
    }
}

impl Rooms {
    /// No rooms yet. `keep`: whether rooms are logged in to again after a lost connection or
    /// a lane closed as too slow or for a shutdown; `track_members`: whether to keep member
    /// lists.
    pub(crate) fn new(me: User, keep: bool, track_members: bool) -> Self {
        Rooms {
            me,
            keep,
            track_members,
            joined: HashMap::new(),
            lanes: HashMap::new(),
            by_number: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Registers a login about to be sent, so that its lane is recognised even before the
    /// reply. Returns `false` if the room already has a membership (the server will answer
    /// `ALREADY_LOGGED_IN`, or a login is in flight).
    pub(crate) fn login_started(&mut self, room: &str, token: &str) -> bool {
        if self.joined.contains_key(room) {
            return false;
        }
        self.joined.insert(room.to_owned(), Joined::new(token.to_owned()));
        true
    }

    /// Records a successful login reply.
    pub(crate) fn logged_in(&mut self, room: &str, room_number: u32) {
        if let Some(joined) = self.joined.get_mut(room) {
            joined.confirmed = true;
            joined.room_number = Some(room_number);
        }
    }

    /// Forgets a login that failed before the server accepted it.
    pub(crate) fn login_failed(&mut self, room: &str) {
        if self.joined.get(room).is_some_and(|joined| !joined.confirmed) {
            self.joined.remove(room);
        }
    }

    /// Forgets a membership (after a logout).
    pub(crate) fn logged_out(&mut self, room: &str) {
        self.joined.remove(room);
    }

    /// A renewed token replaces the one every room logs in again with.
    pub(crate) fn renewed(&mut self, token: &str) {
        for joined in self.joined.values_mut() {
            joined.token = token.to_owned();
        }
    }

    /// The room number of a room this client is logged in to on the current connection.
    pub(crate) fn room_number(&self, room: &str) -> Option<u32> {
        self.joined.get(room).and_then(|joined| joined.room_number)
    }

    /// How many members `room` has, this client included, as its current lane tells (`None`
    /// while no lane of it is open).
    pub(crate) fn member_count(&self, room: &str) -> Option<u32> {
        let lane = self.joined.get(room)?.lane?;
        self.lanes.get(&lane).map(|lane| lane.count)
    }

    /// The rooms this client is in (logins the server accepted, including rooms being
    /// logged in to again), sorted.
    pub(crate) fn joined_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> =
            self.joined.iter().filter(|(_, j)| j.confirmed).map(|(room, _)| room.clone()).collect();
        rooms.sort();
        rooms
    }

    /// Registers a lane from its header. A membership waiting for a lane adopts it: a new
    /// epoch restarts its broadcast count, and a membership that had a lane before starts
    /// comparing the new member list with the members it knew.
    pub(crate) fn lane_opened(&mut self, id: LaneId, header: LaneHeader) {
        if let Some(joined) = self.joined.get_mut(&header.room)
            && joined.lane.is_none()
        {
            joined.lane = Some(id);
            joined.room_number = Some(header.room_number);
            if joined.epoch.is_some() {
                joined.stale = Some(std::mem::take(&mut joined.known));
            }
            if joined.epoch != Some(header.epoch) {
                joined.epoch = Some(header.epoch);
                joined.last_id = 0;
            }
        }
        self.by_number.insert(header.room_number, id);
        let lane = Lane {
            room: header.room,
            room_number: header.room_number,
            members: HashMap::new(),
            departed: VecDeque::new(),
            count: 1,
            large: false,
        };
        self.lanes.insert(id, lane);
    }

    /// Applies a lane event and says what to deliver. On the membership's current lane,
    /// broadcasts at or below the last one delivered are dropped (a replay overlapping what
    /// arrived before), and after a new login only real membership changes are reported
    /// (when members are tracked; otherwise user updates pass through as they are).
    pub(crate) fn lane_event(&mut self, id: LaneId, event: LaneEvent) -> LaneOutput {
        let mut out = LaneOutput::default();
        if let LaneEvent::Closed { code, detail } = event {
            return self.lane_closed(id, code, detail);
        }
        let Some(lane) = self.lanes.get_mut(&id) else {
            return out;
        };
        let room = lane.room.clone();
        let room_number = lane.room_number;
        // Held barrage waits for a join to name its sender; untracked, only for its room,
        // which any event of this lane shows is known.
        let release = matches!(event, LaneEvent::UsersJoined(_) | LaneEvent::MemberPage(_))
            || !self.track_members;
        let mut joined = self.joined.get_mut(&room).filter(|joined| joined.lane == Some(id));
        // A large room keeps no member list: nothing to compare with after a re-login.
        if matches!(event, LaneEvent::MemberPage(_) | LaneEvent::MemberCount(_))
            && let Some(joined) = joined.as_mut()
        {
            joined.stale = None;
            joined.known.clear();
        }
        // A new login's member list ends at its first other event (the `Recovered` event of
        // a recovering login): members known before that it did not name have left.
        if !matches!(event, LaneEvent::UsersJoined(_))
            && let Some(stale) = joined.as_mut().and_then(|joined| joined.stale.take())
            && !stale.is_empty()
        {
            let mut users: Vec<User> = stale.into_values().collect();
            users.sort_by(|a, b| a.id.cmp(&b.id));
            out.events.push(Event::UsersLeft { room: room.clone(), users });
        }
        match event {
            LaneEvent::MemberPage(page) => {
                lane.large = true;
                lane.count = page.count;
                if self.track_members {
                    for member in &page.members {
                        lane.members.insert(member.session, member.user.clone());
                    }
                }
                out.events.push(Event::RoomMembers {
                    room,
                    count: page.count,
                    users: users_of(page.members),
                    next: page.next,
                });
            }
            LaneEvent::MemberCount(count) => {
                let changed = !lane.large || lane.count != count;
                lane.large = true;
                lane.count = count;
                if changed {
                    out.events.push(Event::MemberCount { room, count });
                }
            }
            // A large room names members only for their barrage: not reported as joins.
            LaneEvent::UsersJoined(members) if lane.large => {
                if self.track_members {
                    for Member { session, user } in members {
                        lane.members.insert(session, user);
                    }
                }
            }
            LaneEvent::UsersLeft(members) if lane.large => {
                for member in members {
                    lane.members.remove(&member.session);
                }
            }
            LaneEvent::UsersJoined(members) if !self.track_members => {
                lane.count = lane.count.saturating_add(members.len() as u32);
                out.events.push(Event::UsersJoined { room, users: users_of(members) });
            }
            LaneEvent::UsersLeft(members) if !self.track_members => {
                lane.count = lane.count.saturating_sub(members.len() as u32).max(1);
                out.events.push(Event::UsersLeft { room, users: users_of(members) });
            }
            LaneEvent::UsersJoined(members) => {
                lane.count = lane.count.saturating_add(members.len() as u32);
                let mut users = Vec::with_capacity(members.len());
                for Member { session, user } in members {
                    lane.members.insert(session, user.clone());
                    if let Some(joined) = joined.as_mut() {
                        let stale = joined.stale.as_mut().and_then(|s| s.remove(&user.id));
                        joined.known.insert(user.id.clone(), user.clone());
                        if stale.as_ref() == Some(&user) {
                            continue; // the application knows this member already
                        }
                    }
                    users.push(user);
                }
                if !users.is_empty() {
                    out.events.push(Event::UsersJoined { room, users });
                }
            }
            LaneEvent::UsersLeft(members) => {
                lane.count = lane.count.saturating_sub(members.len() as u32).max(1);
                let users = members
                    .into_iter()
                    .map(|Member { session, user }| {
                        if let Some(gone) = lane.members.remove(&session) {
                            if lane.departed.len() == DEPARTED_PER_ROOM {
                                lane.departed.pop_front();
                            }
                            lane.departed.push_back((Instant::now(), session, gone));
                        }
                        if let Some(joined) = joined.as_mut() {
                            joined.known.remove(&user.id);
                        }
                        user
                    })
                    .collect();
                out.events.push(Event::UsersLeft { room, users });
            }
            LaneEvent::Broadcasts(mut messages) => {
                let last = messages.last().map(|m| m.id);
                let after = joined.as_ref().map_or(0, |joined| joined.last_id);
                let before = messages.len();
                messages.retain(|m| m.id > after && m.from.id != self.me.id);
                out.dropped = (before - messages.len()) as u64;
                out.delivered = joined.and(last);
                if !messages.is_empty() {
                    out.events.push(Event::Broadcasts { room, messages });
                }
            }
            LaneEvent::Command(message) => out.events.push(Event::Command { room, message }),
            LaneEvent::Recovered { complete, missed, replayed } => {
                out.events.push(Event::Recovered { room, complete, missed, replayed });
            }
            LaneEvent::Closed { .. } => {} // handled above
        }
        if release {
            self.release_held(room_number, &mut out);
        }
        out
    }

    /// Names the room and sender of a received barrage, or holds it until a lane names them.
    ///
    /// Datagrams and lanes are not ordered with respect to each other: a barrage from a member
    /// who just logged in often arrives before the `UsersJoined` naming its sender (quinn
    /// puts datagrams before stream data in a packet, and the datagram and lane readers race),
    /// and one sent right after this client's own login can arrive before the lane header
    /// naming its room number. Such a barrage is held, per room number, at most
    /// [`HELD_BARRAGE_PER_ROOM`] (the oldest is dropped first) for at most
    /// [`HELD_BARRAGE_TTL`] ([`Rooms::expire_held`]); [`Rooms::lane_event`] releases it as
    /// soon as the lane names the sender. A room number no lane has is held only while a
    /// login still waits for its lane (one room number per such login); otherwise (a
    /// barrage that crossed a logout) it is dropped at once. Drops are counted in `dropped`.
    pub(crate) fn receive_barrage(
        &mut self,
        message: BarrageMessage,
        now: Instant,
        dropped: &mut Dropped,
    ) -> Option<(String, ReceivedBarrage)> {
        let why = match self.resolve_barrage(&message) {
            Ok((room, received)) => return Some((room.to_owned(), received)),
            Err(why) => why,
        };
        if why == Unresolved::UnknownRoom
            && !self.held.contains_key(&message.room_number)
            && !self.awaits_lane()
        {
            dropped.add(why, 1);
            return None;
        }
        let held = self.held.entry(message.room_number).or_default();
        if held.len() >= HELD_BARRAGE_PER_ROOM {
            // Every message held for a room number waits for the same thing (its room, or
            // a sender not named yet: a named one would have been released).
            held.pop_front();
            dropped.add(why, 1);
        }
        held.push_back(Held { arrived: now, message });
        None
    }

    /// Drops the held barrage that has waited [`HELD_BARRAGE_TTL`] by `now`.
    pub(crate) fn expire_held(&mut self, now: Instant, dropped: &mut Dropped) {
        let by_number = &self.by_number;
        self.held.retain(|number, held| {
            let before = held.len();
            while held.front().is_some_and(|h| h.arrived + HELD_BARRAGE_TTL <= now) {
                held.pop_front();
            }
            let why = match by_number.contains_key(number) {
                true => Unresolved::UnknownSender,
                false => Unresolved::UnknownRoom,
            };
            dropped.add(why, (before - held.len()) as u64);
            !held.is_empty()
        });
    }

    /// When the oldest held barrage expires, if any is held.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|held| held.front())
            .map(|h| h.arrived + HELD_BARRAGE_TTL)
            .min()
    }

    /// Moves the held barrage of `room_number` whose sender is now known into `out`, in
    /// arrival order, in lists of at most [`MAX_BATCH`].
    fn release_held(&mut self, room_number: u32, out: &mut LaneOutput) {
        let Some(held) = self.held.remove(&room_number) else { return };
        let mut room = None;
        let mut ready = Vec::new();
        let mut waiting = VecDeque::new();
        for h in held {
            match self.resolve_barrage(&h.message) {
                Ok((name, received)) => {
                    room.get_or_insert_with(|| name.to_owned());
                    ready.push(received);
                }
                Err(_) => waiting.push_back(h),
            }
        }
        if !waiting.is_empty() {
            self.held.insert(room_number, waiting);
        }
        let Some(room) = room else { return };
        out.barrage += ready.len() as u64;
        for messages in ready.chunks(MAX_BATCH) {
            out.events.push(Event::Barrages { room: room.clone(), messages: messages.to_vec() });
        }
    }

    /// Whether a barrage for a room number no lane has may be held: a login waits for its
    /// lane, and fewer unknown room numbers are held than such logins.
    fn awaits_lane(&self) -> bool {
        let waiting = self.joined.values().filter(|joined| joined.lane.is_none()).count();
        let unknown = self.held.keys().filter(|n| !self.by_number.contains_key(n)).count();
        unknown < waiting
    }

    /// Records that broadcasts up to `last_id` of lane `id` were handed to the application.
    pub(crate) fn delivered(&mut self, id: LaneId, last_id: u64) {
        let Some(lane) = self.lanes.get(&id) else { return };
        if let Some(joined) = self.joined.get_mut(&lane.room)
            && joined.lane == Some(id)
        {
            joined.last_id = joined.last_id.max(last_id);
        }
    }

    /// Ends a lane that the server closed (`Closed` event, or a reset with a code). The
    /// membership ends with a `RoomClosed` event, except when it is kept to log in again: a
    /// lane closed as too slow (logged in to again at once, with recovery) or for a shutdown
    /// (the connection close follows; the reconnect logs in again).
    pub(crate) fn lane_closed(
        &mut self,
        id: LaneId,
        code: ErrorCode,
        detail: String,
    ) -> LaneOutput {
        let mut out = LaneOutput::default();
        let Some(lane) = self.remove_lane(id) else {
            return out;
        };
        let current = self.joined.get_mut(&lane.room).filter(|joined| joined.lane == Some(id));
        match current {
            Some(joined)
                if self.keep
                    && (code == ErrorCode::SLOW_RECEIVER
                        || code == ErrorCode::CLUSTER_UNAVAILABLE
                        || code == ErrorCode::SERVER_SHUTTING_DOWN) =>
            {
                joined.detach();
                if code != ErrorCode::SERVER_SHUTTING_DOWN {
                    out.relogin = Some(lane.room);
                }
            }
            current => {
                if current.is_some() {
                    self.joined.remove(&lane.room);
                }
                out.events.push(Event::RoomClosed { room: lane.room, code, detail });
            }
        }
        out
    }

    /// Forgets a lane whose connection is gone; its membership stays, to log in again.
    pub(crate) fn lane_lost(&mut self, id: LaneId) {
        if let Some(lane) = self.remove_lane(id)
            && let Some(joined) = self.joined.get_mut(&lane.room)
            && joined.lane == Some(id)
        {
            joined.detach();
        }
    }

    /// The connection is gone: forget its lanes, room numbers and held barrage (the next
    /// connection numbers rooms anew); memberships stay. Returns the barrage dropped.
    pub(crate) fn connection_lost(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        for (number, held) in self.held.drain() {
            let why = match self.by_number.contains_key(&number) {
                true => Unresolved::UnknownSender,
                false => Unresolved::UnknownRoom,
            };
            dropped.add(why, held.len() as u64);
        }
        self.lanes.clear();
        self.by_number.clear();
        for joined in self.joined.values_mut() {
            joined.detach();
        }
        dropped
    }

    /// The logins that restore every room after a reconnect, each asking to recover what
    /// was missed.
    pub(crate) fn relogins(&self) -> Vec<(String, Request)> {
        let mut rooms: Vec<&String> =
            self.joined.iter().filter(|(_, j)| j.confirmed).map(|(room, _)| room).collect();
        rooms.sort();
        rooms.into_iter().filter_map(|room| Some((room.clone(), self.relogin(room)?))).collect()
    }

    /// The login that logs in to `room` again, asking to recover what was missed.
    pub(crate) fn relogin(&self, room: &str) -> Option<Request> {
        let joined = self.joined.get(room)?;
        Some(Request::Login {
            room: room.to_owned(),
            user: self.me.clone(),
            token: joined.token.clone(),
            recover: Some(Recover {
                epoch: joined.epoch.unwrap_or(UNKNOWN_EPOCH),
                last_id: joined.last_id,
            }),
        })
    }

    /// Records that a login again succeeded.
    pub(crate) fn relogged_in(&mut self, room: &str, room_number: u32) {
        if let Some(joined) = self.joined.get_mut(room) {
            joined.room_number = Some(room_number);
        }
    }

    /// Forgets a room whose login again was refused; `true` if it was still a membership
    /// (the application is then told the room closed).
    pub(crate) fn relogin_failed(&mut self, room: &str) -> bool {
        self.joined.remove(room).is_some()
    }

    /// Names the room and the sender of a received barrage, if the lanes have (untracked:
    /// the room only, `from` is `None`).
    fn resolve_barrage(
        &self,
        message: &BarrageMessage,
    ) -> Result<(&str, ReceivedBarrage), Unresolved> {
        let lane = self
            .by_number
            .get(&message.room_number)
            .and_then(|id| self.lanes.get(id))
            .ok_or(Unresolved::UnknownRoom)?;
        let departed = || {
            let now = Instant::now();
            lane.departed
                .iter()
                .rev()
                .find(|(left, session, _)| {
                    *session == message.sender && now.duration_since(*left) <= DEPARTED_TTL
                })
                .map(|(_, _, user)| user)
        };
        let from = match self.track_members {
            // The server API's barrage: its sender is no member.
            true if message.sender == SYSTEM_SESSION => {
                Some(User { id: SYSTEM_USER_ID.into(), name: SYSTEM_USER_NAME.into() })
            }
            true => Some(
                lane.members
                    .get(&message.sender)
                    .or_else(departed)
                    .ok_or(Unresolved::UnknownSender)?
                    .clone(),
            ),
            false => None,
        };
        Ok((
            &lane.room,
            ReceivedBarrage {
                id: message.id,
                sent_at_ms: message.sent_at_ms,
                from,
                payload: message.payload.clone(),
            },
        ))
    }

    fn remove_lane(&mut self, id: LaneId) -> Option<Lane> {
        let lane = self.lanes.remove(&id)?;
        if self.by_number.get(&lane.room_number) == Some(&id) {
            self.by_number.remove(&lane.room_number);
        }
        Some(lane)
    }
}

/// The users of a user update.
fn users_of(members: Vec<Member>) -> Vec<User> {
    members.into_iter().map(|member| member.user).collect()
}

/// The code a lane gets when it ends without a `Closed` event (server reset the stream).
pub(crate) fn reset_code(code: u64) -> ErrorCode {
    u32::try_from(code).map(ErrorCode).unwrap_or(ErrorCode::PROTOCOL)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::BroadcastMessage;

    fn user(id: &str) -> User {
        User { id: id.into(), name: id.to_uppercase() }
    }

    fn member(session: u32, id: &str) -> Member {
        Member { session, user: user(id) }
    }

    fn header(room: &str, room_number: u32) -> LaneHeader {
        LaneHeader { room: room.into(), room_number, epoch: 1 }
    }

    fn rooms(keep: bool) -> Rooms {
        Rooms::new(user("me"), keep, true)
    }

    /// A login to `room` whose reply and lane (`lane`, epoch `epoch`) both arrived.
    fn joined(rooms: &mut Rooms, room: &str, lane: LaneId, epoch: u64) {
        assert!(rooms.login_started(room, "t1"));
        rooms.logged_in(room, 7);
        rooms.lane_opened(lane, LaneHeader { room: room.into(), room_number: 7, epoch });
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

    fn broadcasts(ids: &[u64], from: &str) -> LaneEvent {
        LaneEvent::Broadcasts(ids.iter().map(|&id| broadcast(id, from)).collect())
    }

    fn broadcast(id: u64, from: &str) -> BroadcastMessage {
        BroadcastMessage { id, sent_at_ms: 1, from: user(from), payload: Bytes::from_static(b"x") }
    }

    /// Applies an event and records its broadcasts as handed over; returns the events.
    fn deliver(rooms: &mut Rooms, lane: LaneId, event: LaneEvent) -> Vec<Event> {
        let out = rooms.lane_event(lane, event);
        if let Some(last) = out.delivered {
            rooms.delivered(lane, last);
        }
        out.events
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .flat_map(|event| match event {
                Event::Broadcasts { messages, .. } => messages.iter().map(|m| m.id).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn recover(rooms: &Rooms, room: &str) -> Option<Recover> {
        match rooms.relogin(room) {
            Some(Request::Login { recover, .. }) => recover,
            _ => None,
        }
    }

    #[test]
    fn barrage_sender_is_resolved_from_the_lane_members() {
        let mut rooms = rooms(true);
        rooms.lane_opened(1, header("lobby", 7));
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob"), member(4, "carol")]));
        let (room, message) = rooms.resolve_barrage(&barrage(7, 4)).unwrap();
        assert_eq!(room, "lobby");
        assert_eq!(message.from, Some(user("carol")));
        assert_eq!(message.id, 77);
        assert_eq!(message.payload, Bytes::from_static(b"hi"));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_room_and_sender_are_reported() {
        let mut rooms = rooms(true);
        assert_eq!(rooms.resolve_barrage(&barrage(7, 3)).err(), Some(Unresolved::UnknownRoom));
        rooms.lane_opened(1, header("lobby", 7));
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob")]));
        assert_eq!(rooms.resolve_barrage(&barrage(7, 9)).err(), Some(Unresolved::UnknownSender));
        rooms.lane_event(1, LaneEvent::UsersLeft(vec![member(3, "bob")]));
        // A barrage bob sent just before leaving still names him for a while…
        assert_eq!(rooms.resolve_barrage(&barrage(7, 3)).unwrap().1.from, Some(user("bob")));
        tokio::time::advance(DEPARTED_TTL + Duration::from_millis(1)).await;
        // …then no longer.
        assert_eq!(rooms.resolve_barrage(&barrage(7, 3)).err(), Some(Unresolved::UnknownSender));
    }

    fn barrage_from(room_number: u32, sender: u32, id: u64) -> BarrageMessage {
        BarrageMessage { id, ..barrage(room_number, sender) }
    }

    /// The IDs of the `Barrages` events among `events`, one list per event.
    fn barrage_ids(events: &[Event]) -> Vec<Vec<u64>> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Barrages { messages, .. } => Some(messages.iter().map(|m| m.id).collect()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_barrage_that_overtakes_its_senders_join_is_held_then_delivered_in_order() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob")]));
        let (t0, mut dropped) = (Instant::now(), Dropped::default());
        // carol (session 5) and dave (6) logged in and sent before their joins were read.
        assert!(rooms.receive_barrage(barrage_from(7, 5, 1), t0, &mut dropped).is_none());
        let bob = rooms.receive_barrage(barrage_from(7, 3, 2), t0, &mut dropped);
        assert_eq!(
            bob.map(|(room, m)| (room, m.id, m.from)),
            Some(("lobby".into(), 2, Some(user("bob"))))
        );
        assert!(rooms.receive_barrage(barrage_from(7, 6, 3), t0, &mut dropped).is_none());
        assert!(rooms.receive_barrage(barrage_from(7, 5, 4), t0, &mut dropped).is_none());
        assert_eq!(rooms.next_expiry(), Some(t0 + HELD_BARRAGE_TTL));

        // carol's join releases her two, in arrival order, right after the join.
        let out = rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(5, "carol")]));
        assert!(
            matches!(&out.events[0], Event::UsersJoined { users, .. } if users == &[user("carol")])
        );
        assert_eq!(barrage_ids(&out.events), vec![vec![1, 4]]);
        let Event::Barrages { room, messages } = &out.events[1] else { panic!("{out:?}") };
        assert_eq!((room.as_str(), &messages[0].from), ("lobby", &Some(user("carol"))));
        assert_eq!((out.events.len(), out.barrage), (2, 2));

        // dave's never comes (he left at once): dropped when the hold expires, not before.
        rooms.expire_held(t0 + HELD_BARRAGE_TTL - Duration::from_millis(1), &mut dropped);
        assert_eq!(dropped, Dropped::default());
        rooms.expire_held(t0 + HELD_BARRAGE_TTL, &mut dropped);
        assert_eq!(dropped, Dropped { unknown_room: 0, unknown_sender: 1 });
        assert_eq!(rooms.next_expiry(), None);
        let out = rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(6, "dave")]));
        assert_eq!((barrage_ids(&out.events), out.barrage), (vec![], 0));
    }

    #[test]
    fn a_barrage_from_the_server_api_names_the_system_sender_at_once() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        let (t0, mut dropped) = (Instant::now(), Dropped::default());
        let got = rooms.receive_barrage(barrage(7, SYSTEM_SESSION), t0, &mut dropped);
        let system = User { id: SYSTEM_USER_ID.into(), name: SYSTEM_USER_NAME.into() };
        assert_eq!(got.map(|(room, m)| (room, m.from)), Some(("lobby".into(), Some(system))));
        assert_eq!((dropped, rooms.next_expiry()), (Dropped::default(), None));
    }

    #[test]
    fn a_barrage_that_overtakes_the_lane_header_is_held_while_a_login_waits_for_it() {
        let mut rooms = rooms(true);
        let (t0, mut dropped) = (Instant::now(), Dropped::default());
        // Not logged in anywhere: a barrage for an unknown room number is dropped at once.
        assert!(rooms.receive_barrage(barrage_from(7, 3, 1), t0, &mut dropped).is_none());
        assert_eq!(dropped, Dropped { unknown_room: 1, unknown_sender: 0 });
        assert_eq!(rooms.next_expiry(), None);

        // One login waits for its lane: one unknown room number may be held.
        assert!(rooms.login_started("lobby", "t"));
        assert!(rooms.receive_barrage(barrage_from(7, 3, 2), t0, &mut dropped).is_none());
        assert!(rooms.receive_barrage(barrage_from(7, 3, 3), t0, &mut dropped).is_none());
        assert!(rooms.receive_barrage(barrage_from(8, 3, 4), t0, &mut dropped).is_none());
        assert_eq!(dropped, Dropped { unknown_room: 2, unknown_sender: 0 });

        rooms.logged_in("lobby", 7);
        rooms.lane_opened(1, header("lobby", 7));
        let out = rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob")]));
        assert_eq!((barrage_ids(&out.events), out.barrage), (vec![vec![2, 3]], 2));

        // Held for a login whose lane never comes: counted as an unknown room on expiry.
        assert!(rooms.login_started("other", "t"));
        assert!(rooms.receive_barrage(barrage_from(9, 3, 5), t0, &mut dropped).is_none());
        rooms.expire_held(t0 + HELD_BARRAGE_TTL, &mut dropped);
        assert_eq!(dropped, Dropped { unknown_room: 3, unknown_sender: 0 });
    }

    #[test]
    fn the_hold_is_bounded_per_room_and_released_in_lists_of_at_most_a_batch() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        let (t0, mut dropped) = (Instant::now(), Dropped::default());
        let extra = 10;
        for id in 1..=(HELD_BARRAGE_PER_ROOM + extra) as u64 {
            let arrived = t0 + Duration::from_millis(id);
            assert!(rooms.receive_barrage(barrage_from(7, 5, id), arrived, &mut dropped).is_none());
        }
        // The oldest went first; the expiry is now that of the oldest kept.
        assert_eq!(dropped, Dropped { unknown_room: 0, unknown_sender: extra as u64 });
        let oldest_kept = t0 + Duration::from_millis(extra as u64 + 1);
        assert_eq!(rooms.next_expiry(), Some(oldest_kept + HELD_BARRAGE_TTL));
        let out = rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(5, "carol")]));
        let lists = barrage_ids(&out.events);
        assert_eq!(lists.iter().map(Vec::len).collect::<Vec<_>>(), vec![50, 50, 50, 50, 50, 6]);
        let ids: Vec<u64> = lists.into_iter().flatten().collect();
        let expected: Vec<u64> =
            (extra as u64 + 1..=(HELD_BARRAGE_PER_ROOM + extra) as u64).collect();
        assert_eq!(ids, expected);
        assert_eq!(out.barrage, HELD_BARRAGE_PER_ROOM as u64);
    }

    #[test]
    fn a_lost_connection_drops_the_held_barrage() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        assert!(rooms.login_started("other", "t"));
        let (t0, mut dropped) = (Instant::now(), Dropped::default());
        rooms.receive_barrage(barrage_from(7, 5, 1), t0, &mut dropped);
        rooms.receive_barrage(barrage_from(7, 5, 2), t0, &mut dropped);
        rooms.receive_barrage(barrage_from(9, 5, 3), t0, &mut dropped);
        assert_eq!(dropped, Dropped::default());
        assert_eq!(rooms.connection_lost(), Dropped { unknown_room: 1, unknown_sender: 2 });
        // The next connection may number rooms alike: nothing old is released on it.
        rooms.lane_opened(2, header("lobby", 7));
        let out = rooms.lane_event(2, LaneEvent::UsersJoined(vec![member(5, "carol")]));
        assert_eq!(out.barrage, 0);
    }

    #[test]
    fn a_large_room_reports_its_count_and_first_page_and_names_barrage_senders_quietly() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "hall", 1, 1);
        let page = crate::protocol::MemberPage {
            count: 5000,
            members: vec![member(3, "bob"), member(4, "carol")],
            next: 99,
        };
        let out = rooms.lane_event(1, LaneEvent::MemberPage(page));
        let first = Event::RoomMembers {
            room: "hall".into(),
            count: 5000,
            users: vec![user("bob"), user("carol")],
            next: 99,
        };
        assert_eq!(out.events, vec![first]);
        assert_eq!(rooms.member_count("hall"), Some(5000));
        // The first page names barrage senders.
        assert!(rooms.resolve_barrage(&barrage(7, 4)).is_ok());
        // A count is reported when it changes; a named speaker is not reported as a join.
        let count = |n| Event::MemberCount { room: "hall".into(), count: n };
        assert_eq!(rooms.lane_event(1, LaneEvent::MemberCount(5001)).events, vec![count(5001)]);
        assert_eq!(rooms.lane_event(1, LaneEvent::MemberCount(5001)).events, vec![]);
        let named = rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(9, "dave")]));
        assert_eq!(named.events, vec![]);
        assert!(rooms.resolve_barrage(&barrage(7, 9)).is_ok());
        assert_eq!(rooms.member_count("hall"), Some(5001));
    }

    #[test]
    fn a_room_that_grows_large_switches_to_counts_and_a_relogin_reports_no_stale_leaves() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "hall", 1, 1);
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob"), member(4, "carol")]));
        assert_eq!(rooms.member_count("hall"), Some(3));
        let out = rooms.lane_event(1, LaneEvent::MemberCount(1200));
        assert_eq!(out.events, vec![Event::MemberCount { room: "hall".into(), count: 1200 }]);
        assert!(
            rooms.lane_event(1, LaneEvent::UsersLeft(vec![member(3, "bob")])).events.is_empty()
        );
        // A re-login to the (still large) room: its page is no reason to report bob and carol
        // as gone.
        rooms.lane_lost(1);
        rooms.lane_opened(2, LaneHeader { room: "hall".into(), room_number: 8, epoch: 1 });
        let page = crate::protocol::MemberPage { count: 1199, members: vec![], next: 5 };
        let out = rooms.lane_event(2, LaneEvent::MemberPage(page));
        assert!(matches!(&out.events[..], [Event::RoomMembers { count: 1199, .. }]), "{out:?}");
    }

    #[test]
    fn lane_events_become_application_events() {
        let mut rooms = rooms(true);
        rooms.lane_opened(1, header("lobby", 7));
        assert_eq!(
            rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(3, "bob")])).events,
            vec![Event::UsersJoined { room: "lobby".into(), users: vec![user("bob")] }]
        );
        assert_eq!(
            rooms.lane_event(1, LaneEvent::UsersLeft(vec![member(3, "bob")])).events,
            vec![Event::UsersLeft { room: "lobby".into(), users: vec![user("bob")] }]
        );
        // An event for a lane that is not open is ignored.
        assert_eq!(rooms.lane_event(2, LaneEvent::UsersLeft(vec![])), LaneOutput::default());
    }

    #[test]
    fn login_reply_before_or_after_the_lane_gives_the_same_state() {
        for reply_first in [true, false] {
            let mut rooms = rooms(true);
            assert!(rooms.login_started("lobby", "t"));
            assert!(rooms.joined_rooms().is_empty(), "not in the room before the reply");
            if reply_first {
                rooms.logged_in("lobby", 7);
                rooms.lane_opened(1, header("lobby", 7));
            } else {
                rooms.lane_opened(1, header("lobby", 7));
                rooms.logged_in("lobby", 7);
            }
            assert_eq!(rooms.room_number("lobby"), Some(7));
            assert_eq!(rooms.joined_rooms(), vec!["lobby".to_string()]);
            // Being kicked closes the lane and ends the membership.
            let closed = rooms.lane_event(
                1,
                LaneEvent::Closed {
                    code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                    detail: "elsewhere".into(),
                },
            );
            assert_eq!(
                closed.events,
                vec![Event::RoomClosed {
                    room: "lobby".into(),
                    code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                    detail: "elsewhere".into()
                }]
            );
            assert_eq!(closed.relogin, None);
            assert_eq!(rooms.room_number("lobby"), None, "reply first: {reply_first}");
            assert!(rooms.relogins().is_empty());
            assert_eq!(rooms.resolve_barrage(&barrage(7, 1)).err(), Some(Unresolved::UnknownRoom));
        }
    }

    #[test]
    fn a_refused_first_login_is_forgotten_but_not_an_existing_one() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        // A second login to the same room is refused (ALREADY_LOGGED_IN): the room stays.
        assert!(!rooms.login_started("lobby", "t2"));
        rooms.login_failed("lobby");
        assert_eq!(rooms.joined_rooms(), vec!["lobby".to_string()]);
        assert!(rooms.login_started("other", "t"));
        rooms.login_failed("other");
        assert!(!rooms.joined.contains_key("other"));
    }

    #[test]
    fn old_lane_closing_late_does_not_end_a_new_login() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        // Log out and in again; the old lane's Closed event is read after the new login.
        rooms.logged_out("lobby");
        assert!(rooms.login_started("lobby", "t"));
        rooms.logged_in("lobby", 7);
        let closed = rooms.lane_event(
            1,
            LaneEvent::Closed { code: ErrorCode::LOGGED_OUT, detail: String::new() },
        );
        assert_eq!(closed.events.len(), 1, "the logout is still reported");
        assert_eq!(rooms.room_number("lobby"), Some(7));
        rooms.lane_opened(2, header("lobby", 7));
        rooms.lane_event(2, LaneEvent::UsersJoined(vec![member(5, "dave")]));
        assert!(rooms.resolve_barrage(&barrage(7, 5)).is_ok());
        // The new lane, in turn, ends the new login.
        rooms.lane_closed(2, ErrorCode::LOGGED_OUT, String::new());
        assert_eq!(rooms.room_number("lobby"), None);
    }

    #[test]
    fn rooms_are_resolved_by_number_independently() {
        let mut rooms = rooms(true);
        rooms.lane_opened(1, header("a", 1));
        rooms.lane_opened(2, header("b", 2));
        rooms.lane_event(1, LaneEvent::UsersJoined(vec![member(9, "x")]));
        rooms.lane_event(2, LaneEvent::UsersJoined(vec![member(9, "x")]));
        assert_eq!(rooms.resolve_barrage(&barrage(1, 9)).unwrap().0, "a");
        assert_eq!(rooms.resolve_barrage(&barrage(2, 9)).unwrap().0, "b");
        rooms.lane_lost(1);
        assert!(rooms.resolve_barrage(&barrage(1, 9)).is_err());
        assert!(rooms.resolve_barrage(&barrage(2, 9)).is_ok());
    }

    #[test]
    fn a_replay_never_duplicates_and_recovery_asks_from_the_last_delivered() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 42);
        assert_eq!(recover(&rooms, "lobby"), Some(Recover { epoch: 42, last_id: 0 }));
        assert_eq!(ids(&deliver(&mut rooms, 1, broadcasts(&[1, 2, 3], "bob"))), vec![1, 2, 3]);
        // A batch read but not yet handed over does not count.
        let pending = rooms.lane_event(1, broadcasts(&[4, 5], "bob"));
        assert_eq!(pending.delivered, Some(5));
        assert_eq!(recover(&rooms, "lobby"), Some(Recover { epoch: 42, last_id: 3 }));

        // The connection is lost; the room is kept and logged in to again from ID 3.
        rooms.connection_lost();
        assert_eq!(rooms.room_number("lobby"), None);
        assert_eq!(rooms.joined_rooms(), vec!["lobby".to_string()]);
        let relogins = rooms.relogins();
        assert_eq!(relogins.len(), 1);
        let Request::Login { room, user: me, token, recover: asked } = &relogins[0].1 else {
            panic!("not a login: {:?}", relogins[0]);
        };
        assert_eq!((room.as_str(), me, token.as_str()), ("lobby", &user("me"), "t1"));
        assert_eq!(*asked, Some(Recover { epoch: 42, last_id: 3 }));

        // The replay overlaps what was delivered, and carries this client's own message.
        rooms.lane_opened(2, LaneHeader { room: "lobby".into(), room_number: 9, epoch: 42 });
        rooms.relogged_in("lobby", 9);
        let out =
            rooms.lane_event(2, LaneEvent::Recovered { complete: true, missed: None, replayed: 4 });
        assert_eq!(out.events.len(), 1);
        let mut replay = broadcasts(&[2, 3, 4], "bob");
        if let LaneEvent::Broadcasts(messages) = &mut replay {
            messages.push(broadcast(5, "me"));
        }
        let out = rooms.lane_event(2, replay);
        assert_eq!((ids(&out.events), out.dropped, out.delivered), (vec![4], 3, Some(5)));
        rooms.delivered(2, 5);
        assert_eq!(ids(&deliver(&mut rooms, 2, broadcasts(&[5, 6], "bob"))), vec![6]);
        assert_eq!(recover(&rooms, "lobby"), Some(Recover { epoch: 42, last_id: 6 }));
        assert_eq!(rooms.room_number("lobby"), Some(9));
    }

    #[test]
    fn a_new_epoch_restarts_the_count() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        deliver(&mut rooms, 1, broadcasts(&[1, 2, 3], "bob"));
        rooms.connection_lost();
        // The server restarted: the room is new, its IDs start again at 1.
        rooms.lane_opened(2, LaneHeader { room: "lobby".into(), room_number: 1, epoch: 2 });
        assert_eq!(ids(&deliver(&mut rooms, 2, broadcasts(&[1, 2], "bob"))), vec![1, 2]);
        assert_eq!(recover(&rooms, "lobby"), Some(Recover { epoch: 2, last_id: 2 }));
    }

    #[test]
    fn a_login_without_a_lane_header_recovers_from_an_unknown_epoch() {
        let mut rooms = rooms(true);
        assert!(rooms.login_started("lobby", "t"));
        rooms.logged_in("lobby", 7);
        rooms.connection_lost();
        assert_eq!(recover(&rooms, "lobby"), Some(Recover { epoch: UNKNOWN_EPOCH, last_id: 0 }));
        // A login still in flight when the connection is lost is not logged in to again.
        assert!(rooms.login_started("pending", "t"));
        assert_eq!(rooms.relogins().len(), 1);
    }

    #[test]
    fn lane_closes_that_keep_or_end_the_room() {
        let close = |code| LaneEvent::Closed { code, detail: "d".into() };
        let mut kept = rooms(true);
        joined(&mut kept, "slow", 1, 1);
        joined(&mut kept, "down", 2, 1);
        let out = kept.lane_event(1, close(ErrorCode::SLOW_RECEIVER));
        assert_eq!((out.events, out.relogin), (vec![], Some("slow".to_string())));
        let out = kept.lane_event(2, close(ErrorCode::SERVER_SHUTTING_DOWN));
        assert_eq!((out.events, out.relogin), (vec![], None));
        assert_eq!(kept.joined_rooms(), vec!["down".to_string(), "slow".to_string()]);
        assert_eq!(kept.room_number("slow"), None, "no barrage until logged in again");
        // Without automatic reconnect, every close ends the room.
        let mut ended = rooms(false);
        joined(&mut ended, "slow", 1, 1);
        let out = ended.lane_event(1, close(ErrorCode::SLOW_RECEIVER));
        assert_eq!((out.events.len(), out.relogin), (1, None));
        assert!(ended.joined_rooms().is_empty());
    }

    #[test]
    fn a_renewed_token_is_used_to_log_in_again() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "a", 1, 1);
        joined(&mut rooms, "b", 2, 1);
        rooms.renewed("t2");
        for (_, login) in rooms.relogins() {
            assert!(matches!(login, Request::Login { token, .. } if token == "t2"));
        }
        assert!(rooms.relogin_failed("a"));
        assert!(!rooms.relogin_failed("a"));
        assert_eq!(rooms.joined_rooms(), vec!["b".to_string()]);
    }

    #[test]
    fn after_a_relogin_only_membership_changes_are_reported() {
        let mut rooms = rooms(true);
        joined(&mut rooms, "lobby", 1, 1);
        deliver(&mut rooms, 1, LaneEvent::UsersJoined(vec![member(2, "bob"), member(3, "carol")]));
        rooms.connection_lost();
        rooms.lane_opened(2, header("lobby", 7));
        // bob is still there, dave is new, carol left while the client was away.
        let events = deliver(&mut rooms, 2, LaneEvent::UsersJoined(vec![member(5, "bob")]));
        assert!(events.is_empty(), "bob is known: {events:?}");
        let events = deliver(&mut rooms, 2, LaneEvent::UsersJoined(vec![member(6, "dave")]));
        assert_eq!(
            events,
            vec![Event::UsersJoined { room: "lobby".into(), users: vec![user("dave")] }]
        );
        let recovered = LaneEvent::Recovered { complete: true, missed: None, replayed: 0 };
        let events = deliver(&mut rooms, 2, recovered);
        assert_eq!(
            events,
            vec![
                Event::UsersLeft { room: "lobby".into(), users: vec![user("carol")] },
                Event::Recovered {
                    room: "lobby".into(),
                    complete: true,
                    missed: None,
                    replayed: 0
                }
            ]
        );
        // bob's new session names his barrage.
        assert_eq!(rooms.resolve_barrage(&barrage(7, 5)).unwrap().1.from, Some(user("bob")));
        // A second loss compares with the updated list.
        rooms.connection_lost();
        rooms.lane_opened(3, header("lobby", 7));
        let recovered = LaneEvent::Recovered { complete: true, missed: None, replayed: 0 };
        let events = deliver(&mut rooms, 3, recovered);
        let Event::UsersLeft { users, .. } = &events[0] else { panic!("{events:?}") };
        assert_eq!(users, &vec![user("bob"), user("dave")]);
    }

    fn untracked() -> Rooms {
        Rooms::new(user("me"), true, false)
    }

    #[test]
    fn untracked_user_updates_pass_through_and_no_member_list_is_kept() {
        let mut rooms = untracked();
        joined(&mut rooms, "lobby", 1, 1);
        let joins = LaneEvent::UsersJoined(vec![member(3, "bob"), member(4, "carol")]);
        assert_eq!(
            rooms.lane_event(1, joins).events,
            vec![Event::UsersJoined {
                room: "lobby".into(),
                users: vec![user("bob"), user("carol")]
            }]
        );
        assert_eq!(
            rooms.lane_event(1, LaneEvent::UsersLeft(vec![member(3, "bob")])).events,
            vec![Event::UsersLeft { room: "lobby".into(), users: vec![user("bob")] }]
        );
        assert!(rooms.lanes[&1].members.is_empty() && rooms.lanes[&1].departed.is_empty());
        assert!(rooms.joined["lobby"].known.is_empty());
        // Any sender, present, departed or never announced, is delivered at once, unnamed.
        for sender in [4, 3, 9] {
            let (room, message) = rooms.resolve_barrage(&barrage(7, sender)).unwrap();
            assert_eq!((room, message.from), ("lobby", None));
        }
    }

    #[test]
    fn untracked_barrage_waits_only_for_its_room() {
        let mut rooms = untracked();
        assert!(rooms.login_started("lobby", "t"));
        let (t0, mut dropped) = (Instant::now(), Dropped::default());
        assert!(rooms.receive_barrage(barrage_from(7, 3, 1), t0, &mut dropped).is_none());
        rooms.lane_opened(1, header("lobby", 7));
        // The lane's first event, whatever it is, releases it.
        let out = rooms.lane_event(1, broadcasts(&[1], "bob"));
        assert_eq!((barrage_ids(&out.events), out.barrage), (vec![vec![1]], 1));
        assert_eq!((dropped, rooms.next_expiry()), (Dropped::default(), None));
    }

    #[test]
    fn untracked_relogin_repeats_the_whole_member_list_and_misses_departures() {
        let mut rooms = untracked();
        joined(&mut rooms, "lobby", 1, 1);
        deliver(&mut rooms, 1, LaneEvent::UsersJoined(vec![member(2, "bob"), member(3, "carol")]));
        rooms.connection_lost();
        rooms.lane_opened(2, header("lobby", 7));
        // bob is still there, dave is new, carol left while the client was away.
        let members = vec![member(5, "bob"), member(6, "dave")];
        assert_eq!(
            deliver(&mut rooms, 2, LaneEvent::UsersJoined(members)),
            vec![Event::UsersJoined {
                room: "lobby".into(),
                users: vec![user("bob"), user("dave")]
            }]
        );
        let recovered = LaneEvent::Recovered { complete: true, missed: None, replayed: 0 };
        let events = deliver(&mut rooms, 2, recovered);
        assert!(matches!(&events[..], [Event::Recovered { .. }]), "{events:?}");
    }

    #[test]
    fn reset_codes_map_to_result_codes() {
        assert_eq!(reset_code(3005), ErrorCode::SLOW_RECEIVER);
        assert_eq!(reset_code(u64::MAX), ErrorCode::PROTOCOL);
    }
}
