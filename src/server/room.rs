//! One room: its members, its sequences and its frequency limits. Every operation takes the
//! room's lock briefly, never across an await, and never waits on a receiver.
//!
//! Broadcasts are not handed to the receivers one by one: an accepted broadcast goes to the
//! room's outbox, and [`Room::flush`] hands everything in the outbox to every lane as one
//! buffer of frames (batches of up to [`MAX_BATCH`]) shared by all receivers. The sender's connection task flushes once it
//! has handled every request it had already received, so a burst costs each receiver one queue
//! push, one write and about one packet, not one per message, and no task or timer is added on
//! the way. User updates (joins and leaves) go through the outbox too: in a room of up to
//! `user_updates_batched_above` members they are flushed at once; in a larger room they wait
//! for the next flush of messages or `user_update_interval_ms`, whichever comes first, so a
//! crowd joining costs each member one event per flush instead of one per newcomer. A command
//! flushes the outbox first, so every receiver sees the room's events in order. A member that
//! joined after some events entered the outbox gets only the later ones (its member list at
//! login already reflected the earlier).
//!
//! A room of more than `large_room_above` members is large (for as long as it exists), and
//! then neither a login nor a user update grows with the room: a login gets the member count
//! and one page of members ([`Room::members_page`] serves the rest, in session order), and
//! joins and leaves enter the outbox as one member count, overwritten in place until the next
//! message, so each flush costs each member one small event however many joined. A member of
//! a large room is named to the others only when it first sends barrage (whose datagram names
//! its sender by session number alone).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tracing::debug;

use super::Shared;
use super::hooks::{LeaveReason, RoomEvent};
use super::lane::{ConnLanes, Lane, LaneItem, LaneQueue, PushError};
use super::peer::Peer;
use super::rate::TokenBucket;
use super::stats::Counters;
mod linked;

pub(crate) use linked::{Pending, room_unavailable, valid_entry, valid_record};

use crate::protocol::{
    BarrageMessage, BroadcastRef, CommandMessage, ErrorCode, LaneEvent, MAX_BATCH, MAX_MEMBER_PAGE,
    MAX_USERS_PER_UPDATE, MEMBERS_FROM_START, Member, MemberPage, Recover, ServerDatagram, User,
    encode_body, encode_broadcast_batch, encode_frame,
};

/// A room and everything the relay knows about it.
#[derive(Debug)]
pub struct Room {
    /// The room ID.
    pub name: String,
    /// The server-wide room number used in barrage datagrams.
    pub number: u32,
    /// This incarnation's broadcast sequence (see [`crate::protocol::LaneHeader::epoch`]).
    pub epoch: u64,
    /// Woken when an entry of the room's log has been applied here (cluster).
    logged: tokio::sync::Notify,
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    members: HashMap<String, MemberEntry>,
    /// The members' user IDs by session number: the order of member pages (the ID is shared
    /// with the member's entry, so this costs a tree node per member).
    by_session: BTreeMap<u32, Arc<str>>,
    /// More than `large_room_above` members joined at some point: logins get a page of the
    /// member list and user updates are counts (see the module docs).
    large: bool,
    /// Set when the router removed the (empty) room; a login that raced it retries.
    closed: bool,
    broadcast_seq: u64,
    history: History,
    /// Events accepted for the members but not yet handed to their lanes, in room order.
    outbox: Vec<Outgoing>,
    /// Flushes of the outbox so far (tells which outbox a member's join position refers to).
    flushes: u64,
    /// Joins and leaves in the outbox.
    pending_updates: usize,
    /// Whether a timer will flush pending user updates.
    update_timer: bool,
    barrage_seq: u64,
    command_seq: u64,
    broadcast_bucket: TokenBucket,
    barrage_bucket: TokenBucket,
    login_bucket: TokenBucket,
    /// Each user's frequency limits in this room, kept across logouts, re-logins and
    /// reconnects (a fresh allowance per login would multiply them); an entry whose buckets
    /// are full again is forgotten by [`Room::prune`].
    budgets: HashMap<Arc<str>, UserBudget>,
    /// Cluster: the stream sequence of the newest entry of the room's log this relay knows.
    log_seq: u64,
    /// Cluster: when the newest log entry this relay applied was written (ms since the Unix
    /// epoch).
    log_at_ms: u64,
    /// Cluster: the last broadcast and command IDs of the room's log as this relay knows them
    /// (may run ahead of what it applied: learnt from the log's last entry).
    known_ids: (u64, u64),
    /// Cluster: the queue of this relay's room-log publisher for the room, while it runs.
    publisher: Option<linked::Publisher>,
}

/// One user's frequency limits in one room.
#[derive(Debug)]
struct UserBudget {
    login: TokenBucket,
    broadcast: TokenBucket,
    command_one: TokenBucket,
    command_many: TokenBucket,
}

/// Logins of one user to one room allowed at once before `login_per_user` applies.
const LOGIN_PER_USER_BURST: f64 = 5.0;

/// What the relay counts for one history entry besides the encoded message (the entry, the
/// shared author ID's reference count).
const HISTORY_ENTRY_OVERHEAD: usize = 64;

impl UserBudget {
    fn new(limits: &super::RateLimits) -> Self {
        Self {
            login: TokenBucket::with_burst(limits.login_per_user, LOGIN_PER_USER_BURST),
            broadcast: TokenBucket::new(limits.broadcast_per_user),
            command_one: TokenBucket::new(limits.command_to_one_per_user),
            command_many: TokenBucket::new(limits.command_to_many_per_user),
        }
    }

    fn is_full(&mut self) -> bool {
        self.login.is_full()
            && self.broadcast.is_full()
            && self.command_one.is_full()
            && self.command_many.is_full()
    }
}

#[derive(Debug)]
struct MemberEntry {
    /// Its session number on this relay (a remote member's is an alias this relay gave it,
    /// so that user updates and barrage name it like any member).
    session: u32,
    user: User,
    /// The user ID again, shared with the history entries of this member's broadcasts.
    author: Arc<str>,
    /// Where the member is connected.
    link: Link,
    /// (flush number, outbox position after its own `Joined`) when the member joined: of that
    /// outbox it gets only the events from there on.
    joined_at: (u64, usize),
    /// Whether its `Joined` has left the outbox (the others have been told it is here).
    announced: bool,
}

impl MemberEntry {
    fn member(&self) -> Member {
        Member { session: self.session, user: self.user.clone() }
    }

    /// Its lane, if it is connected here.
    fn lane(&self) -> Option<&Lane> {
        match &self.link {
            Link::Local { lane, .. } => Some(lane),
            Link::Remote { .. } => None,
        }
    }

    /// Ends its lane with `code` and `detail`, if it is connected here.
    fn close(self, code: ErrorCode, detail: &str) {
        if let Link::Local { lane, .. } = self.link {
            lane.close(code, detail);
        }
    }
}

/// Where a member is connected: to this relay, or to another node of the cluster.
#[derive(Debug)]
enum Link {
    /// Here: its lane and its connection (for barrage datagrams).
    Local {
        lane: Lane,
        conn: Peer,
        /// The cluster's record of this membership (unused on a single relay).
        record: linked::OwnRecord,
    },
    /// On another node: the node's incarnation, the member's session there, and the stream
    /// sequence of the record that said so.
    Remote { node: u64, session: u32, seq: u64 },
}

/// Joins and leaves a large room batches before it flushes them anyway: newcomers within one
/// flush each get their own frame (the events after their join), so this bounds that work.
const USER_UPDATES_PER_FLUSH: usize = 64;

/// Which frame of a flush a member gets: events from this index of the outbox, without the
/// broadcasts of this author.
type FrameKey<'a> = (usize, Option<&'a str>);

/// An event in a room's outbox.
#[derive(Debug)]
enum Outgoing {
    /// An encoded `BroadcastMessage` and its author's user ID.
    Broadcast(Bytes, Arc<str>),
    /// A member joined.
    Joined(Member),
    /// A member left.
    Left(Member),
    /// A large room's member count after the joins and leaves before it.
    Count(u32),
}

/// Why a login to a room did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The room was removed while the login raced it: look it up again.
    RoomClosed,
    /// Refused with a code.
    Refused(ErrorCode, String),
}

/// A message being sent into a room.
#[derive(Debug)]
pub struct Send<'a> {
    /// The sender's connection session ([`SERVER_SESSION`] for a sender from outside).
    pub session: u32,
    /// The sender's user ID.
    pub user_id: &'a str,
    /// The payload (already checked for size).
    pub payload: Bytes,
    /// A sender that is not a member (the server API); `None` for a member.
    pub outside: Option<Outside<'a>>,
}

/// A sender from outside the room (the application's backend through the server API).
#[derive(Debug, Clone, Copy)]
pub struct Outside<'a> {
    /// Who receivers see as the sender.
    pub user: &'a User,
    /// Whether the user's own frequency limits apply (a named user: yes; the default system
    /// sender: no). The room's limits always apply.
    pub user_limits: bool,
}

/// The session number of senders from outside (no connection has it: sessions start at 1).
pub const SERVER_SESSION: u32 = 0;

impl Room {
    /// An empty room of incarnation `epoch` (a random one on a single relay; the room log's
    /// in a cluster).
    pub fn new(name: String, number: u32, epoch: u64, shared: &Shared) -> Self {
        let limits = &shared.config.limits;
        Self {
            name,
            number,
            epoch,
            logged: tokio::sync::Notify::new(),
            state: Mutex::new(RoomState {
                members: HashMap::new(),
                by_session: BTreeMap::new(),
                large: false,
                closed: false,
                broadcast_seq: 0,
                history: History::new(
                    shared.config.history_size,
                    Duration::from_secs(shared.config.history_ttl_secs),
                ),
                outbox: Vec::new(),
                flushes: 0,
                pending_updates: 0,
                update_timer: false,
                barrage_seq: 0,
                command_seq: 0,
                broadcast_bucket: TokenBucket::new(limits.broadcast_per_room),
                barrage_bucket: TokenBucket::new(limits.barrage_per_room),
                login_bucket: TokenBucket::new(limits.login_per_room),
                budgets: HashMap::new(),
                log_seq: 0,
                log_at_ms: 0,
                known_ids: (0, 0),
                publisher: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves consistent-enough state for a relay: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a member and returns the queue its lane writer drains. The same user ID already in
    /// the room is replaced: its lane is closed with `KICKED_LOGGED_IN_ELSEWHERE`.
    pub fn join(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        session: u32,
        user: User,
        conn: Peer,
        conn_lanes: &Arc<ConnLanes>,
        recover: Option<Recover>,
    ) -> Result<(LaneQueue, u64), JoinError> {
        let config = &shared.config;
        let counters = &shared.counters;
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed {
            return Err(JoinError::RoomClosed);
        }
        // Check both limits before taking from either, so a refusal costs no allowance.
        let budget = state.budget(&user.id, config);
        if !budget.login.ready() {
            return Err(JoinError::Refused(
                ErrorCode::LOGIN_RATE_LIMITED,
                format!(
                    "more than {} logins per second of this user to this room",
                    config.limits.login_per_user
                ),
            ));
        }
        if !state.login_bucket.ready() {
            return Err(JoinError::Refused(
                ErrorCode::LOGIN_RATE_LIMITED,
                format!(
                    "more than {} logins per second to this room",
                    config.limits.login_per_room
                ),
            ));
        }
        state.login_bucket.take();
        state.budget(&user.id, config).login.take();
        let replacing = state.members.contains_key(&user.id);
        if !replacing && state.members.len() >= config.max_members_per_room {
            return Err(JoinError::Refused(
                ErrorCode::ROOM_FULL,
                format!("the room has the maximum of {} members", config.max_members_per_room),
            ));
        }
        let (lane, queue) = Lane::new(shared, conn_lanes);
        let lane_id = lane.id;
        if state.members.contains_key(&user.id)
            && state.outbox.iter().any(|event| matches!(event, Outgoing::Broadcast(..)))
        {
            // The session being replaced gets what was accepted while it was in the room.
            state.flush(shared, &self.name);
        }
        if let Some(old) = state.members.remove(&user.id) {
            debug!(room = %self.name, user = %user.id, old_session = old.session, "login replaces the user's earlier session");
            let left = old.member();
            state.by_session.remove(&old.session);
            // A session on another node is told by its own node (when this login's record
            // reaches it), webhook included.
            if matches!(old.link, Link::Local { .. }) {
                self.left(shared, &left.user, LeaveReason::Replaced);
            }
            old.close(
                ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                "the same user logged in to this room from another connection",
            );
            state.member_left(left);
            // On its way now, whatever becomes of this login.
            self.user_update(state, shared);
        }
        state.large |= state.members.len() + 1 > config.large_room_above;
        // The newcomer's first events list who is already there, in chunks; in a large room,
        // the member count and the first page only.
        let initial: Vec<LaneEvent> = if state.large {
            let count = count_of(state.members.len() + 1);
            let (members, next) =
                state.page(self.cursor_tag(), 0, config.login_member_page.min(MAX_MEMBER_PAGE));
            vec![LaneEvent::MemberPage(MemberPage { count, members, next })]
        } else {
            let existing: Vec<Member> = state.members.values().map(MemberEntry::member).collect();
            existing
                .chunks(MAX_USERS_PER_UPDATE)
                .map(|c| LaneEvent::UsersJoined(c.to_vec()))
                .collect()
        };
        for event in &initial {
            if let Some(frame) = frame_of(event) {
                // The queue is new and at least MAX_BATCH deep; a huge room may still fill it,
                // which then counts as a slow start and closes the lane explicitly.
                if lane.push_initial(LaneItem::Frame(frame), Instant::now(), counters).is_err() {
                    Counters::bump(&shared.counters.slow_receivers);
                    lane.close(
                        ErrorCode::SLOW_RECEIVER,
                        "the member list did not fit the lane queue",
                    );
                    return Err(JoinError::Refused(
                        ErrorCode::ROOM_FULL,
                        "the room is too large for this server's lane_queue setting".into(),
                    ));
                }
            }
        }
        if let Some(recover) = recover {
            let (event, replay) = state.recovery(self.epoch, recover, &user.id, counters);
            let frame = frame_of(&event).into_iter().map(LaneItem::Frame);
            let items = frame.chain(replay.into_iter().map(LaneItem::Broadcast));
            // `validate()` keeps history_size well below lane_queue, so this fits a new lane.
            let now = Instant::now();
            if items
                .map(|item| lane.push_initial(item, now, counters))
                .any(|pushed| pushed.is_err())
            {
                lane.close(ErrorCode::SLOW_RECEIVER, "the replay did not fit the lane queue");
                return Err(JoinError::Refused(
                    ErrorCode::INTERNAL,
                    "the replay does not fit this server's lane_queue setting".into(),
                ));
            }
            debug!(room = %self.name, user = %user.id, ?event, "recovery");
        }
        let entry = MemberEntry {
            session,
            author: Arc::from(user.id.as_str()),
            user: user.clone(),
            link: Link::Local { lane, conn, record: linked::OwnRecord::default() },
            // Its own join is the last event of the outbox it does not get.
            joined_at: (state.flushes, state.outbox.len() + 1),
            announced: false,
        };
        let joined = entry.member();
        shared.hooks.emit(counters, |at_ms| RoomEvent::UserJoined {
            room: self.name.clone(),
            user: joined.user.clone(),
            at_ms,
        });
        // Insert first: should announcing the join remove a slow member, the newcomer (who
        // was just listed that member) hears that it left, too.
        state.by_session.insert(session, entry.author.clone());
        if let Some(cluster) = &shared.cluster {
            cluster.member_present(&self.name, self.epoch, &user, session);
        }
        if state.large {
            state.members.insert(user.id.clone(), entry);
            // It gets the count it is in (an absolute count, so a later join overwriting it
            // in place before the flush only makes it newer).
            let at = state.count_changed();
            if let Some(entry) = state.members.get_mut(&user.id) {
                entry.joined_at = (state.flushes, at);
            }
        } else {
            state.members.insert(user.id.clone(), entry);
            state.outbox.push(Outgoing::Joined(joined));
        }
        self.user_update(state, shared);
        debug!(room = %self.name, user = %user.id, session, members = state.members.len(), "joined");
        Ok((queue, lane_id))
    }

    /// Removes the member `user_id` if lane `lane` still serves it (its lane failed: the
    /// stream could not be opened, was stopped by the client, or stalled), tells the others,
    /// and removes the room if that emptied it.
    pub fn remove_lane(self: &Arc<Self>, shared: &Arc<Shared>, user_id: &str, lane: u64) {
        let session = {
            let state = self.lock();
            match state.members.get(user_id) {
                Some(member) if member.lane().is_some_and(|l| l.id == lane) => member.session,
                _ => return,
            }
        };
        if self.leave(shared, session, user_id, LeaveReason::SlowReceiver, "the lane failed") {
            shared.router.remove_if_empty(shared, self);
        }
    }

    /// Removes the member if `session` still holds it; its lane ends with the code of `reason`
    /// and `detail` (none when the connection is gone). Returns whether the room is now empty.
    pub fn leave(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        session: u32,
        user_id: &str,
        reason: LeaveReason,
        detail: &str,
    ) -> bool {
        let mut state = self.lock();
        if state.members.get(user_id).is_some_and(|m| m.session == session) {
            // The leaving member gets the broadcasts accepted while it was in the room (a
            // flush that finds its lane full removes it already).
            if state.outbox.iter().any(|event| matches!(event, Outgoing::Broadcast(..))) {
                state.flush(shared, &self.name);
            }
            if let Some(entry) = state.members.remove(user_id) {
                state.by_session.remove(&entry.session);
                let left = entry.member();
                if reason != LeaveReason::Replaced {
                    linked::left_cluster(shared, &self.name, &entry);
                }
                let local = matches!(entry.link, Link::Local { .. });
                if let Some(code) = lane_close_code(reason) {
                    entry.close(code, detail);
                }
                // A member of another node is told about by its own node.
                if local {
                    self.left(shared, &left.user, reason);
                }
                state.member_left(left);
                self.user_update(&mut state, shared);
                debug!(room = %self.name, user = %user_id, session, ?reason, "left");
            }
        }
        state.members.is_empty()
    }

    /// Removes the member `user_id`, whichever connection holds it (the server API's kick):
    /// its lane ends with `KICKED_BY_SERVER` and `reason`. Returns `None` when it is not a
    /// member, else whether the room is now empty.
    pub fn kick(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        user_id: &str,
        reason: &str,
    ) -> Option<bool> {
        let session = self.lock().members.get(user_id)?.session;
        Some(self.leave(shared, session, user_id, LeaveReason::Kicked, reason))
    }

    /// Ends every member's lane with `ROOM_CLOSED` and `reason`, drops the history and marks the
    /// room closed (the server API's close; the router removes it).
    pub fn close_all(self: &Arc<Self>, shared: &Arc<Shared>, reason: &str) {
        let members: Vec<(u32, String)> = {
            let mut state = self.lock();
            // First: a login that holds this room already retries and creates a new one.
            state.closed = true;
            state.members.values().map(|m| (m.session, m.user.id.clone())).collect()
        };
        for (session, user_id) in members {
            self.leave(shared, session, &user_id, LeaveReason::RoomClosed, reason);
        }
        self.lock().history.clear(&shared.counters);
    }

    /// The members, in no particular order.
    pub fn members(&self) -> Vec<User> {
        self.lock().members.values().map(|m| m.user.clone()).collect()
    }

    /// How many members the room has.
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// One page of the member list for the member `user_id` on `session`: up to `limit`
    /// members (0 or above [`MAX_MEMBER_PAGE`]: that many) in session order, from `cursor`
    /// ([`MEMBERS_FROM_START`], or the `next` of an earlier page). Costs the page, not the
    /// room: a walk sees every member that stays in the room exactly once; one that joins
    /// meanwhile is listed if its session number lies ahead of the cursor.
    pub fn members_page(
        &self,
        session: u32,
        user_id: &str,
        cursor: u64,
        limit: u32,
    ) -> Result<MemberPage, (ErrorCode, String)> {
        let state = self.lock();
        state.sender(session, user_id)?;
        let tag = self.cursor_tag();
        let after = match cursor {
            MEMBERS_FROM_START => 0,
            cursor if (cursor >> 32) as u32 == tag => cursor as u32,
            _ => {
                return Err((
                    ErrorCode::INVALID_CURSOR,
                    format!("cursor {cursor} was not given out by this room"),
                ));
            }
        };
        let limit = match limit as usize {
            0 => MAX_MEMBER_PAGE,
            n => n.min(MAX_MEMBER_PAGE),
        };
        let (members, next) = state.page(tag, after, limit);
        Ok(MemberPage { count: count_of(state.members.len()), members, next })
    }

    /// The upper half of this room's member-page cursors: from its epoch, so a cursor of
    /// another room (or of an earlier incarnation) is refused, with the top bit set so that
    /// no cursor is [`MEMBERS_FROM_START`].
    fn cursor_tag(&self) -> u32 {
        (self.epoch as u32) | (1 << 31)
    }

    /// Tells the webhooks that `user` left.
    fn left(&self, shared: &Shared, user: &User, reason: LeaveReason) {
        shared.hooks.emit(&shared.counters, |at_ms| RoomEvent::UserLeft {
            room: self.name.clone(),
            user: user.clone(),
            reason,
            at_ms,
        });
    }

    /// A user update entered the outbox: a small room flushes it now; a large one within
    /// `user_update_interval_ms`, sooner when a message or command flushes the outbox or
    /// [`USER_UPDATES_PER_FLUSH`] are waiting.
    /// A large room's count waits for the timer or the next message however many changes
    /// it sums up.
    fn user_update(self: &Arc<Self>, state: &mut RoomState, shared: &Arc<Shared>) {
        let config = &shared.config;
        if !state.large {
            state.pending_updates += 1;
        }
        if !state.large
            && (state.members.len() <= config.user_updates_batched_above
                || state.pending_updates >= USER_UPDATES_PER_FLUSH)
        {
            state.flush(shared, &self.name);
        } else if !state.update_timer {
            state.update_timer = true;
            let (room, shared) = (self.clone(), shared.clone());
            let interval = Duration::from_millis(config.user_update_interval_ms);
            tokio::spawn(async move {
                tokio::time::sleep(interval).await;
                let mut state = room.lock();
                state.update_timer = false;
                state.flush(&shared, &room.name);
            });
        }
    }

    /// Whether `session` is the room's current member for `user_id`.
    pub fn is_member(&self, session: u32, user_id: &str) -> bool {
        self.lock().members.get(user_id).is_some_and(|m| m.session == session)
    }

    /// Marks the room closed if it has no members and no unexpired history (called by the
    /// router under its own lock). Returns whether it is closed.
    pub fn close_if_empty(&self, shared: &Shared) -> bool {
        let mut state = self.lock();
        state.history.expire(Instant::now(), &shared.counters);
        if state.members.is_empty() && state.history.is_empty() {
            state.closed = true;
        }
        state.closed
    }

    /// Marks the room closed if it has no members, dropping its history (called by the router
    /// under its own lock, to keep within `max_history_bytes` or `max_rooms`). Returns whether
    /// it is closed.
    pub fn evict_if_empty(&self, shared: &Shared) -> bool {
        let mut state = self.lock();
        if state.members.is_empty() && !state.closed {
            state.history.clear(&shared.counters);
            state.closed = true;
            Counters::bump(&shared.counters.rooms_evicted);
            debug!(room = %self.name, "empty room evicted with its history");
        }
        state.closed
    }

    /// Whether the room has no members.
    pub fn is_empty(&self) -> bool {
        self.lock().members.is_empty()
    }

    /// When its oldest kept broadcast was stored, if it keeps any.
    pub fn oldest_history(&self) -> Option<Instant> {
        self.lock().history.entries.front().map(|entry| entry.1)
    }

    /// Drops its oldest kept broadcast (for `max_history_bytes`); `false` if it kept none.
    pub fn drop_oldest_history(&self, shared: &Shared) -> bool {
        let dropped = self.lock().history.pop_front(&shared.counters);
        if dropped {
            Counters::bump(&shared.counters.history_evicted);
        }
        dropped
    }

    /// Forgets the frequency limits of users who are not members and whose allowance is full
    /// again (a new entry would be the same).
    pub fn prune(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let members = &state.members;
        state.budgets.retain(|user, budget| members.contains_key(&**user) || !budget.is_full());
    }

    /// Accepts a broadcast for every other member and returns its sequence number. It reaches
    /// the lanes at the next [`flush`](Room::flush), which the caller must make.
    pub fn broadcast(&self, shared: &Shared, send: Send<'_>) -> Result<u64, (ErrorCode, String)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let limits = &shared.config.limits;
        let (user, author, user_limits) = match send.outside {
            None => match state.members.get(send.user_id) {
                Some(member) if member.session == send.session => {
                    (member.user.clone(), member.author.clone(), true)
                }
                _ => return Err(not_member()),
            },
            Some(outside) => {
                (outside.user.clone(), Arc::from(outside.user.id.as_str()), outside.user_limits)
            }
        };
        // Check both limits before taking from either, so a refusal costs no allowance.
        let budget = state.budgets.entry(author.clone()).or_insert_with(|| UserBudget::new(limits));
        if user_limits && !budget.broadcast.ready() {
            return Err(user_limited("broadcasts", limits.broadcast_per_user));
        }
        if !state.broadcast_bucket.ready() {
            return Err(room_limited("broadcasts", limits.broadcast_per_room));
        }
        if user_limits {
            budget.broadcast.take();
        }
        state.broadcast_bucket.take();
        state.broadcast_seq += 1;
        let id = state.broadcast_seq;
        // Encoded once, from borrowed parts; every receiver and the history share the bytes.
        let message =
            BroadcastRef { id, sent_at_ms: now_ms(), from: &user, payload: &send.payload };
        let encoded = encode_body(&message).map_err(internal)?;
        state.history.push(id, encoded.clone(), author.clone(), &shared.counters);
        state.outbox.push(Outgoing::Broadcast(encoded, author));
        Counters::bump(&shared.counters.broadcasts);
        Ok(id)
    }

    /// Hands the broadcasts accepted since the last flush to the lanes, then keeps the
    /// relay's history within `max_history_bytes`.
    pub fn flush(&self, shared: &Shared) {
        self.lock().flush(shared, &self.name);
        if shared.counters.history_bytes.load(Ordering::Relaxed)
            > shared.config.max_history_bytes as u64
        {
            shared.router.trim_history(shared);
        }
    }

    /// Sends a custom command to `to` (empty means everyone else; duplicates and the sender
    /// itself are left out). Every listed user must be in the room, or nothing is sent.
    pub fn command(
        &self,
        shared: &Shared,
        send: Send<'_>,
        to: Vec<String>,
    ) -> Result<u64, (ErrorCode, String)> {
        let to = command_targets(to, send.user_id)?;
        let to = &to[..];
        let mut state = self.lock();
        let from = match send.outside {
            None => state.sender(send.session, send.user_id)?,
            Some(outside) => outside.user.clone(),
        };
        state.check_targets(to)?;
        state.take_command_budget(shared, &send, to.len())?;
        // Broadcasts accepted before this command reach its targets first.
        state.flush(shared, &self.name);
        state.command_seq += 1;
        let id = state.command_seq;
        let event = LaneEvent::Command(CommandMessage {
            id,
            sent_at_ms: now_ms(),
            from,
            payload: send.payload,
        });
        let targets = state
            .members
            .keys()
            .filter(|id| id.as_str() != send.user_id && (to.is_empty() || to.contains(id)))
            .count();
        let frame = frame_of(&event).ok_or_else(|| internal("command encoding"))?;
        let delivered =
            state.fan_out(shared, &self.name, send.user_id, LaneItem::Frame(frame), |user| {
                to.is_empty() || to.iter().any(|t| t == user)
            });
        // Targets whose lane overflowed were removed as too slow (they get SLOW_RECEIVER);
        // when none was reached, the sender must not be told the command was sent.
        if delivered == 0 && targets > 0 {
            return Err((
                ErrorCode::SLOW_RECEIVER,
                "no target could take the command: their lanes were full and they were removed"
                    .into(),
            ));
        }
        Counters::bump(&shared.counters.commands);
        Ok(id)
    }

    /// Sends a barrage datagram to every other member; returns its ID.
    pub fn barrage(&self, shared: &Shared, send: Send<'_>) -> Result<u64, (ErrorCode, String)> {
        let mut state = self.lock();
        let announced = match (send.outside, state.members.get(send.user_id)) {
            (Some(_), _) => true,
            (None, Some(m)) if m.session == send.session => m.announced,
            _ => return Err(not_member()),
        };
        if !announced {
            // Receivers name a barrage sender from the user updates: tell them of this one
            // first (a batched join could otherwise trail its barrage by the whole interval).
            // A large room names its members to the others only now.
            if state.large
                && let Some(member) = state.members.get(send.user_id)
            {
                let member = member.member();
                state.outbox.push(Outgoing::Joined(member));
            }
            state.flush(shared, &self.name);
        }
        if !state.barrage_bucket.try_take() {
            return Err(room_limited("barrage messages", shared.config.limits.barrage_per_room));
        }
        state.barrage_seq += 1;
        let id = state.barrage_seq;
        let sent_at_ms = now_ms();
        if let Some(cluster) = &shared.cluster {
            let payload = send.payload.clone();
            if !cluster.barrage(&self.name, send.session, send.user_id, sent_at_ms, payload) {
                Counters::bump(&shared.counters.cluster_barrage_unsent);
            }
        }
        let datagram = ServerDatagram::Barrage(BarrageMessage {
            room_number: self.number,
            id,
            sent_at_ms,
            sender: send.session,
            payload: send.payload,
        });
        let encoded = encode_body(&datagram).map_err(internal)?;
        let counters = &shared.counters;
        send_barrage(&state, &self.name, send.session, &encoded, counters);
        Counters::bump(&counters.barrages);
        Ok(id)
    }
}

/// Sends an encoded barrage datagram to every member connected here but the sender.
fn send_barrage(state: &RoomState, room: &str, sender: u32, encoded: &Bytes, counters: &Counters) {
    {
        for member in state.members.values().filter(|m| m.session != sender) {
            let Link::Local { conn, .. } = &member.link else { continue };
            // quinn makes room by dropping the oldest queued datagram: count that drop.
            if conn.datagram_send_buffer_space() < encoded.len() {
                Counters::bump(&counters.datagrams_dropped_congested);
            }
            match conn.send_datagram(encoded) {
                Ok(()) => Counters::bump(&counters.datagrams_sent),
                Err(quinn::SendDatagramError::ConnectionLost(_)) => {}
                Err(e) => {
                    Counters::bump(&counters.datagrams_unsendable);
                    debug!(room, user = %member.user.id, error = %e, "barrage not sendable");
                }
            }
        }
    }
}

impl RoomState {
    /// Hands the outbox to the lanes: every member gets the events after its join, without
    /// its own broadcasts, as frames (broadcast batches of up to [`MAX_BATCH`], user updates
    /// of up to [`MAX_USERS_PER_UPDATE`]) encoded once for all members that get the same.
    fn flush(&mut self, shared: &Shared, room: &str) {
        if self.outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.outbox);
        let flush = self.flushes;
        self.flushes += 1;
        let mut authors: Vec<&str> = Vec::new();
        for event in &outbox {
            if let Outgoing::Broadcast(_, author) = event
                && !authors.contains(&&**author)
            {
                authors.push(author);
            }
        }
        let named: Vec<u32> = outbox
            .iter()
            .filter_map(|event| match event {
                Outgoing::Joined(member) => Some(member.session),
                _ => None,
            })
            .collect();
        self.pending_updates = 0;
        // Almost every member gets the whole outbox; authors and newcomers get their own frame.
        let mut everyone: Option<(Bytes, usize)> = None;
        let mut others: Vec<(FrameKey, (Bytes, usize))> = Vec::new();
        let mut failed = Vec::new();
        let now = Instant::now();
        let mut delivered = 0;
        for (id, member) in &mut self.members {
            member.announced |= named.contains(&member.session);
            let start = if member.joined_at.0 == flush { member.joined_at.1 } else { 0 };
            let key = (start, authors.iter().copied().find(|a| *a == id));
            let built = match key {
                (0, None) => everyone.get_or_insert_with(|| encode_outgoing(&outbox, None)),
                _ => match others.iter().position(|(k, _)| *k == key) {
                    Some(i) => &others[i].1,
                    None => {
                        let events = &outbox[start.min(outbox.len())..];
                        others.push((key, encode_outgoing(events, key.1)));
                        &others[others.len() - 1].1
                    }
                },
            };
            let Some(lane) = member.lane() else { continue };
            let (frame, broadcasts) = built.clone();
            if frame.is_empty() {
                continue;
            }
            match lane.push(LaneItem::Frame(frame), now, &shared.counters) {
                Ok(()) => delivered += broadcasts,
                Err(why) => failed.push((id.clone(), why)),
            }
        }
        shared
            .counters
            .broadcast_deliveries
            .fetch_add(delivered as u64, std::sync::atomic::Ordering::Relaxed);
        self.remove_unreachable(shared, room, failed);
    }

    /// Puts a member's leave into the outbox: by name, or as the new count in a large room.
    fn member_left(&mut self, left: Member) {
        if self.large {
            self.count_changed();
        } else {
            self.outbox.push(Outgoing::Left(left));
        }
    }

    /// Records a large room's new member count in the outbox: the count already at its end
    /// is overwritten (counts are absolute, a newer one says all), else one is added. Returns
    /// its index.
    fn count_changed(&mut self) -> usize {
        let count = count_of(self.members.len());
        if let Some(Outgoing::Count(last)) = self.outbox.last_mut() {
            *last = count;
        } else {
            self.outbox.push(Outgoing::Count(count));
        }
        self.outbox.len() - 1
    }

    /// Up to `limit` members with a session number above `after`, in session order, and the
    /// cursor of the next page (with `tag` in its upper half; [`MEMBERS_FROM_START`] after
    /// the last page).
    fn page(&self, tag: u32, after: u32, limit: usize) -> (Vec<Member>, u64) {
        let mut members = Vec::with_capacity(limit.min(self.by_session.len()));
        let mut last = after;
        for (&session, user_id) in self.by_session.range((Bound::Excluded(after), Bound::Unbounded))
        {
            if members.len() == limit {
                return (members, (u64::from(tag) << 32) | u64::from(last));
            }
            if let Some(entry) = self.members.get(&**user_id) {
                members.push(entry.member());
                last = session;
            }
        }
        (members, MEMBERS_FROM_START)
    }

    /// What a re-login that saw up to `recover` gets: the `Recovered` event and the encoded
    /// broadcasts to replay.
    /// The rejoining user's own broadcasts are not replayed: the sender never receives its own.
    fn recovery(
        &mut self,
        epoch: u64,
        recover: Recover,
        user_id: &str,
        counters: &Counters,
    ) -> (LaneEvent, Vec<Bytes>) {
        self.history.expire(Instant::now(), counters);
        let same_epoch = recover.epoch == epoch && recover.last_id <= self.broadcast_seq;
        // After an epoch change the receiver has seen nothing of this sequence: it gets what
        // the history holds of it, and `missed` names the IDs of this sequence it no longer
        // can (what it missed of the old sequence is unknown, so it is never `complete`).
        let after = if same_epoch { recover.last_id } else { 0 };
        let oldest = self.history.oldest_id().unwrap_or(self.broadcast_seq + 1);
        let missed = (oldest > after + 1).then(|| (after + 1, oldest - 1));
        let replay = self.history.after(after, user_id);
        let event = LaneEvent::Recovered {
            complete: same_epoch && missed.is_none(),
            missed,
            replayed: replay.len() as u64,
        };
        (event, replay)
    }

    /// Takes a command to `targets` users (0: everyone) from the sender's allowance (a sender
    /// from outside without user limits takes none).
    fn take_command_budget(
        &mut self,
        shared: &Shared,
        send: &Send<'_>,
        targets: usize,
    ) -> Result<(), (ErrorCode, String)> {
        let limits = &shared.config.limits;
        let budget = self.budget(send.user_id, &shared.config);
        let single = targets == 1;
        let (bucket, rate) = if single {
            (&mut budget.command_one, limits.command_to_one_per_user)
        } else {
            (&mut budget.command_many, limits.command_to_many_per_user)
        };
        let user_limits = send.outside.is_none_or(|outside| outside.user_limits);
        if user_limits && !bucket.try_take() {
            let what = if single { "commands to one user" } else { "commands to several users" };
            return Err(user_limited(what, rate));
        }
        Ok(())
    }

    /// The frequency limits of `user_id` in this room.
    fn budget(&mut self, user_id: &str, config: &super::ServerConfig) -> &mut UserBudget {
        if !self.budgets.contains_key(user_id) {
            self.budgets.insert(Arc::from(user_id), UserBudget::new(&config.limits));
        }
        // Just made sure it is there.
        self.budgets.get_mut(user_id).unwrap_or_else(|| unreachable!())
    }

    /// The sender as receivers see it, if `session` is the current member for `user_id`.
    fn sender(&self, session: u32, user_id: &str) -> Result<User, (ErrorCode, String)> {
        match self.members.get(user_id) {
            Some(m) if m.session == session => Ok(m.user.clone()),
            _ => Err(not_member()),
        }
    }

    /// Queues `item` to every member except `except` that `wanted` selects; receivers whose
    /// queue is full are removed as too slow (their lane ends with `SLOW_RECEIVER`) and the
    /// others are told they left. Returns how many receivers got the item.
    fn fan_out(
        &mut self,
        shared: &Shared,
        room: &str,
        except: &str,
        item: LaneItem,
        wanted: impl Fn(&str) -> bool,
    ) -> usize {
        let mut failed = Vec::new();
        let mut delivered = 0;
        let now = Instant::now();
        for (id, member) in &self.members {
            if id == except || !wanted(id) {
                continue;
            }
            let Some(lane) = member.lane() else { continue };
            match lane.push(item.clone(), now, &shared.counters) {
                Ok(()) => delivered += 1,
                Err(why) => failed.push((id.clone(), why)),
            }
        }
        self.remove_unreachable(shared, room, failed);
        delivered
    }

    /// Removes members whose lane could not take an event, and tells the others they left.
    /// Telling them can overflow more lanes: this repeats (a loop, not recursion, so a chain
    /// of slow receivers cannot exhaust the stack) until nobody else fails.
    fn remove_unreachable(
        &mut self,
        shared: &Shared,
        room: &str,
        mut failed: Vec<(String, PushError)>,
    ) {
        let now = Instant::now();
        while !failed.is_empty() {
            let mut left = Vec::new();
            for (id, why) in failed.drain(..) {
                let Some(entry) = self.members.remove(&id) else { continue };
                self.by_session.remove(&entry.session);
                if why == PushError::Full {
                    Counters::bump(&shared.counters.slow_receivers);
                    debug!(room, user = %id, "receiver too slow: lane closed");
                } else {
                    debug!(room, user = %id, "lane writer ended: member removed");
                }
                shared.hooks.emit(&shared.counters, |at_ms| RoomEvent::UserLeft {
                    room: room.to_owned(),
                    user: entry.user.clone(),
                    reason: LeaveReason::SlowReceiver,
                    at_ms,
                });
                left.push(entry.member());
                linked::left_cluster(shared, room, &entry);
                entry.close(ErrorCode::SLOW_RECEIVER, "the receiver fell too far behind");
            }
            let events: Vec<LaneEvent> = match self.large {
                // A large room tells the new count, once.
                true => vec![LaneEvent::MemberCount(count_of(self.members.len()))],
                false => left
                    .chunks(MAX_USERS_PER_UPDATE)
                    .map(|c| LaneEvent::UsersLeft(c.to_vec()))
                    .collect(),
            };
            for event in &events {
                let Some(frame) = frame_of(event) else { continue };
                for (id, member) in &self.members {
                    let Some(lane) = member.lane() else { continue };
                    if let Err(why) =
                        lane.push(LaneItem::Frame(frame.clone()), now, &shared.counters)
                    {
                        failed.push((id.clone(), why));
                    }
                }
            }
            failed.dedup_by(|a, b| a.0 == b.0);
        }
    }
}

/// The last broadcasts of a room, bounded in count and age, for recovery after a re-login.
/// Its bytes are counted in the relay's `history_bytes` (bounded by `max_history_bytes`).
#[derive(Debug)]
struct History {
    /// ID, time stored, encoded `BroadcastMessage`, sender's user ID.
    entries: VecDeque<(u64, Instant, Bytes, Arc<str>)>,
    size: usize,
    ttl: Duration,
}

/// The bytes one history entry counts for.
fn entry_bytes(encoded: &Bytes) -> u64 {
    (encoded.len() + HISTORY_ENTRY_OVERHEAD) as u64
}

impl History {
    fn new(size: usize, ttl: Duration) -> Self {
        Self { entries: VecDeque::with_capacity(size.min(64)), size, ttl }
    }

    /// Records an encoded `BroadcastMessage`; the oldest entry goes when the history is full.
    fn push(&mut self, id: u64, encoded: Bytes, author: Arc<str>, counters: &Counters) {
        self.push_at(id, encoded, author, Instant::now(), counters);
    }

    /// Records an encoded `BroadcastMessage` accepted at `now` (earlier, for an entry of the
    /// cluster's log read late); one that has expired already is not kept.
    fn push_at(
        &mut self,
        id: u64,
        encoded: Bytes,
        author: Arc<str>,
        now: Instant,
        counters: &Counters,
    ) {
        if self.size == 0 {
            return;
        }
        self.expire(Instant::now(), counters);
        if Instant::now().duration_since(now) > self.ttl {
            return;
        }
        if self.entries.len() == self.size {
            self.pop_front(counters);
        }
        counters.history_bytes.fetch_add(entry_bytes(&encoded), Ordering::Relaxed);
        self.entries.push_back((id, now, encoded, author));
    }

    /// Drops the oldest entry; `false` if there was none.
    fn pop_front(&mut self, counters: &Counters) -> bool {
        let Some((_, _, encoded, _)) = self.entries.pop_front() else { return false };
        counters.history_bytes.fetch_sub(entry_bytes(&encoded), Ordering::Relaxed);
        true
    }

    /// Drops every entry.
    fn clear(&mut self, counters: &Counters) {
        while self.pop_front(counters) {}
        self.entries.shrink_to_fit();
    }

    /// Drops entries older than the time to live.
    fn expire(&mut self, now: Instant, counters: &Counters) {
        while self.entries.front().is_some_and(|(_, at, _, _)| now.duration_since(*at) > self.ttl) {
            self.pop_front(counters);
        }
    }

    fn oldest_id(&self) -> Option<u64> {
        self.entries.front().map(|(id, _, _, _)| *id)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The encoded broadcasts with an ID above `id` not sent by `except_author`, oldest first.
    fn after(&self, id: u64, except_author: &str) -> Vec<Bytes> {
        let start = self.entries.partition_point(|(entry, _, _, _)| *entry <= id);
        self.entries
            .range(start..)
            .filter(|(_, _, _, author)| &**author != except_author)
            .map(|(_, _, encoded, _)| encoded.clone())
            .collect()
    }
}

/// Encodes `events` as lane frames, leaving out the broadcasts of `except`: consecutive
/// broadcasts as `Broadcasts` batches, consecutive joins or leaves as one user update each
/// (chunked). Returns the frames, back to back, and how many broadcasts they hold.
fn encode_outgoing(events: &[Outgoing], except: Option<&str>) -> (Bytes, usize) {
    let mut buf = BytesMut::new();
    let mut broadcasts: Vec<Bytes> = Vec::new();
    let mut users: Vec<Member> = Vec::new();
    let mut users_joined = true;
    let mut count = 0;
    let flush_users = |users: &mut Vec<Member>, joined: bool, buf: &mut BytesMut| {
        if !users.is_empty() {
            let list = std::mem::take(users);
            let event =
                if joined { LaneEvent::UsersJoined(list) } else { LaneEvent::UsersLeft(list) };
            // Encoding a member list cannot fail: it holds checked IDs and names.
            let _ = encode_frame(&event, buf);
        }
    };
    let flush_broadcasts = |broadcasts: &mut Vec<Bytes>, buf: &mut BytesMut| {
        if !broadcasts.is_empty() {
            // Splicing cannot fail: each body was a valid `BroadcastMessage` encoding.
            let _ = encode_broadcast_batch(broadcasts, buf);
            broadcasts.clear();
        }
    };
    for event in events {
        match event {
            Outgoing::Broadcast(encoded, author) => {
                if except == Some(&**author) {
                    continue;
                }
                flush_users(&mut users, users_joined, &mut buf);
                broadcasts.push(encoded.clone());
                count += 1;
                if broadcasts.len() == MAX_BATCH {
                    flush_broadcasts(&mut broadcasts, &mut buf);
                }
            }
            Outgoing::Count(count) => {
                flush_broadcasts(&mut broadcasts, &mut buf);
                flush_users(&mut users, users_joined, &mut buf);
                // Encoding a number cannot fail.
                let _ = encode_frame(&LaneEvent::MemberCount(*count), &mut buf);
            }
            Outgoing::Joined(member) | Outgoing::Left(member) => {
                let joined = matches!(event, Outgoing::Joined(_));
                flush_broadcasts(&mut broadcasts, &mut buf);
                if joined != users_joined || users.len() == MAX_USERS_PER_UPDATE {
                    flush_users(&mut users, users_joined, &mut buf);
                }
                users_joined = joined;
                users.push(member.clone());
            }
        }
    }
    flush_broadcasts(&mut broadcasts, &mut buf);
    flush_users(&mut users, users_joined, &mut buf);
    (buf.freeze(), count)
}

/// A member count as the wire carries it (a room never holds 2³² members).
fn count_of(members: usize) -> u32 {
    u32::try_from(members).unwrap_or(u32::MAX)
}

/// Encodes one complete frame.
fn frame_of(event: &LaneEvent) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    encode_frame(event, &mut buf).ok()?;
    Some(buf.freeze())
}

/// Checks a message payload (every adapter, every kind): 1 to [`crate::protocol::MAX_PAYLOAD`]
/// bytes.
pub fn check_message(payload: &[u8]) -> Result<(), (ErrorCode, String)> {
    crate::protocol::check_payload(payload).map_err(|code| {
        let detail = match code {
            ErrorCode::PAYLOAD_EMPTY => "the payload is empty".to_string(),
            _ => format!(
                "the payload is {} bytes; the limit is {}",
                payload.len(),
                crate::protocol::MAX_PAYLOAD
            ),
        };
        (code, detail)
    })
}

/// Checks the user ID of a client (a login, or a token the server API mints): a valid user
/// ID, and not [`crate::protocol::SYSTEM_USER_ID`], which only the server API sends as.
pub fn check_member_id(id: &str) -> Result<(), (ErrorCode, String)> {
    crate::protocol::check_user_id(id)
        .map_err(|code| (code, format!("user ID {id:?} is not valid")))?;
    if id == crate::protocol::SYSTEM_USER_ID {
        return Err((
            ErrorCode::INVALID_USER_ID,
            format!("user ID {id:?} is reserved for the server API's messages"),
        ));
    }
    Ok(())
}

/// A command's targets: valid user IDs, at most [`crate::protocol::MAX_COMMAND_TARGETS`],
/// deduplicated, without the sender (as a broadcast skips its sender); a list that named only
/// the sender is refused rather than turned into "everyone".
fn command_targets(mut to: Vec<String>, sender: &str) -> Result<Vec<String>, (ErrorCode, String)> {
    if to.len() > crate::protocol::MAX_COMMAND_TARGETS {
        return Err((
            ErrorCode::INVALID_TARGETS,
            format!("more than {} targets", crate::protocol::MAX_COMMAND_TARGETS),
        ));
    }
    if let Some(bad) = to.iter().find(|t| crate::protocol::check_user_id(t).is_err()) {
        return Err((ErrorCode::INVALID_TARGETS, format!("target {bad:?} is not a valid user ID")));
    }
    to.sort_unstable();
    to.dedup();
    let listed = !to.is_empty();
    to.retain(|t| t != sender);
    if listed && to.is_empty() {
        return Err((
            ErrorCode::INVALID_TARGETS,
            "a command cannot be addressed only to its sender".into(),
        ));
    }
    Ok(to)
}

/// The code a member's lane ends with when it leaves for `reason` (none when its connection
/// is gone).
fn lane_close_code(reason: LeaveReason) -> Option<ErrorCode> {
    match reason {
        LeaveReason::Logout => Some(ErrorCode::LOGGED_OUT),
        LeaveReason::Disconnected => None,
        LeaveReason::Replaced => Some(ErrorCode::KICKED_LOGGED_IN_ELSEWHERE),
        LeaveReason::SlowReceiver => Some(ErrorCode::SLOW_RECEIVER),
        LeaveReason::Kicked => Some(ErrorCode::KICKED_BY_SERVER),
        LeaveReason::RoomClosed => Some(ErrorCode::ROOM_CLOSED),
        LeaveReason::Shutdown => Some(ErrorCode::SERVER_SHUTTING_DOWN),
    }
}

/// Milliseconds since the Unix epoch, from the server clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn not_member() -> (ErrorCode, String) {
    (ErrorCode::NOT_LOGGED_IN, "this connection is not logged in to the room".into())
}

fn user_limited(what: &str, rate: f64) -> (ErrorCode, String) {
    (ErrorCode::USER_RATE_LIMITED, format!("more than {rate} {what} per second from this user"))
}

fn room_limited(what: &str, rate: f64) -> (ErrorCode, String) {
    (ErrorCode::ROOM_RATE_LIMITED, format!("more than {rate} {what} per second in this room"))
}

fn internal(e: impl std::fmt::Display) -> (ErrorCode, String) {
    (ErrorCode::INTERNAL, format!("internal encoding error: {e}"))
}
