//! The router: room ID → room. Rooms are created by their first login and removed when their
//! last member leaves and their history has expired; it keeps the relay within `max_rooms`
//! and `max_history_bytes`. Lock order: router, then room.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::debug;

use super::Shared;
use super::hooks::RoomEvent;
use super::lane::{ConnLanes, LaneQueue};
use super::peer::Peer;
use super::rate::TokenBucket;
use super::room::{JoinError, Room};
use super::stats::Counters;
use crate::protocol::{ErrorCode, Recover, User};

/// Rooms one user may create at once before `room_create_per_user` applies.
const ROOM_CREATE_BURST: f64 = 10.0;

/// Every live room.
#[derive(Debug, Default)]
pub struct Router {
    state: Mutex<RouterState>,
}

#[derive(Debug, Default)]
struct RouterState {
    rooms: HashMap<String, Arc<Room>>,
    last_number: u32,
    /// Rooms that were left empty with history to keep, in the order they emptied: the first
    /// to go when the relay needs room or history bytes. May hold rooms that have members
    /// again or are gone; those are skipped (and pruned by [`Router::sweep`]).
    emptied: VecDeque<Arc<Room>>,
    /// Each user's allowance of room creations (`room_create_per_user`); entries that are full
    /// again are forgotten by [`Router::sweep`].
    creations: HashMap<String, TokenBucket>,
    /// Cluster: the epoch each room closed through the server API started (its log's
    /// `Closed` entry), and when: a room is never made again under an older epoch (a record
    /// or a login that read the log before the close). Forgotten after a day.
    restarted: HashMap<String, (u64, Instant)>,
}

/// How long the router remembers the epoch a cluster close started.
const RESTART_MEMORY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A login that got in: its room, its lane's queue and the lane's ID.
pub type Joined = (Arc<Room>, LaneQueue, u64);

/// What a login needs besides the room's name.
#[derive(Debug)]
pub struct Login<'a> {
    /// The connection's session number.
    pub session: u32,
    /// Who logs in.
    pub user: User,
    /// The connection, for barrage datagrams.
    pub peer: &'a Peer,
    /// The connection's lane accounting.
    pub lanes: &'a Arc<ConnLanes>,
    /// What the client last saw of the room, to recover what it missed.
    pub recover: Option<Recover>,
    /// The room's epoch in the cluster's log, for a room this relay does not hold yet
    /// (`None` on a single relay: a new room gets a random one).
    pub epoch: Option<u64>,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Logs a user in to the room `name`, creating the room if needed.
    pub fn join(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        login: Login<'_>,
    ) -> Result<Joined, (ErrorCode, String)> {
        loop {
            let room = self.room_or_create(shared, name, &login.user.id, login.epoch)?;
            let joined = room.join(
                shared,
                login.session,
                login.user.clone(),
                login.peer.clone(),
                login.lanes,
                login.recover,
            );
            match joined {
                Ok((queue, lane)) => return Ok((room, queue, lane)),
                Err(JoinError::RoomClosed) => continue,
                Err(JoinError::Refused(code, detail)) => {
                    self.remove_if_empty(shared, &room);
                    return Err((code, detail));
                }
            }
        }
    }

    /// Removes `room` if it has no members left; one that keeps history for recovery stays
    /// until the history expires, or until the relay needs its place.
    pub fn remove_if_empty(&self, shared: &Shared, room: &Arc<Room>) {
        let mut state = self.lock();
        let current = state.rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room));
        if !current {
            return;
        }
        if room.close_if_empty(shared) {
            state.rooms.remove(&room.name);
            closed(shared, room);
        } else if room.is_empty() {
            state.emptied.push_back(room.clone());
        }
    }

    /// Removes every room with no members whose history has expired, and forgets allowances
    /// that are full again.
    pub fn sweep(&self, shared: &Shared) {
        let mut state = self.lock();
        state.rooms.retain(|_, room| {
            room.prune();
            let close = room.close_if_empty(shared);
            if close {
                closed(shared, room);
            }
            !close
        });
        let RouterState { rooms, emptied, creations, restarted, .. } = &mut *state;
        emptied.retain(|room| {
            rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) && room.is_empty()
        });
        creations.retain(|_, bucket| !bucket.is_full());
        restarted.retain(|_, (_, at)| at.elapsed() < RESTART_MEMORY);
    }

    /// Drops history until the relay holds at most 7/8 of `max_history_bytes` (so that it
    /// does not trim at every broadcast): first the empty rooms, the one that emptied longest
    /// ago first; then, while that is not enough, the oldest broadcast of each room with
    /// members, rooms with the oldest history first.
    pub fn trim_history(&self, shared: &Shared) {
        let max = shared.config.max_history_bytes as u64;
        let target = max - max / 8;
        let held = || shared.counters.history_bytes.load(Ordering::Relaxed);
        let mut state = self.lock();
        while held() > target && state.evict_emptied(shared) {}
        if held() <= target {
            return;
        }
        let mut rooms: Vec<(Instant, Arc<Room>)> = state
            .rooms
            .values()
            .filter_map(|room| room.oldest_history().map(|at| (at, room.clone())))
            .collect();
        rooms.sort_by_key(|(at, _)| *at);
        debug!(rooms = rooms.len(), held = held(), max, "history over its bound: trimming");
        while held() > target {
            let mut dropped = false;
            for (_, room) in &rooms {
                dropped |= room.drop_oldest_history(shared);
                if held() <= target {
                    return;
                }
            }
            if !dropped {
                return;
            }
        }
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }

    /// The room `name`, if it exists.
    pub fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.lock().rooms.get(name).cloned()
    }

    /// Every room, in no particular order.
    pub fn rooms(&self) -> Vec<Arc<Room>> {
        self.lock().rooms.values().cloned().collect()
    }

    /// Closes the room `name` (the server API): every member's lane ends with `ROOM_CLOSED`,
    /// its history is dropped and the room removed; a later login creates it anew. `false`
    /// when there is no such room.
    pub fn close_room(&self, shared: &Arc<Shared>, name: &str, reason: &str) -> bool {
        // Under the router's lock (then the room's, in lock order): a login that races the
        // close either finds the room closed and creates a new one, or is removed with the rest.
        let mut state = self.lock();
        let Some(room) = state.rooms.remove(name) else { return false };
        room.close_all(shared, reason);
        closed(shared, &room);
        true
    }

    /// The room `name` of incarnation `epoch` for an entry of the cluster's logs: created if
    /// this relay does not hold it (no limit applies: the room exists in the cluster), and
    /// created anew if it holds an earlier incarnation (whose members here leave with
    /// `ROOM_CLOSED`).
    /// `None` for an epoch older than the room's last restart through the server API (see
    /// [`Router::restarted_in_cluster`]) unless `opens` (the log starts again under it).
    pub fn room_for_log(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        epoch: u64,
        reason: &str,
        opens: bool,
    ) -> Option<Arc<Room>> {
        let mut state = self.lock();
        if opens {
            state.restarted.remove(name);
        } else {
            Self::current_epoch(&state, name, epoch)?;
        }
        if let Some(room) = state.rooms.get(name) {
            if room.epoch == epoch {
                return Some(room.clone());
            }
            let old = room.clone();
            state.rooms.remove(name);
            old.close_all(shared, reason);
            closed(shared, &old);
        }
        state.last_number = state.last_number.wrapping_add(1).max(1);
        let room = Arc::new(Room::new(name.to_owned(), state.last_number, epoch, shared));
        state.rooms.insert(name.to_owned(), room.clone());
        Counters::bump(&shared.counters.rooms_open);
        Some(room)
    }

    /// Whether `user_id` may create a room now (its creation allowance, `max_rooms`), checked
    /// before a cluster login reads the log of a room this relay does not hold (the login
    /// takes the allowance when it creates the room).
    pub fn may_create(&self, shared: &Shared, user_id: &str) -> Result<(), (ErrorCode, String)> {
        let mut state = self.lock();
        let limits = &shared.config.limits;
        if let Some(allowance) = state.creations.get_mut(user_id)
            && !allowance.ready()
        {
            return Err(creating_too_fast(limits.room_create_per_user));
        }
        let max = shared.config.max_rooms;
        if state.rooms.len() >= max && state.emptied.is_empty() {
            return Err(room_limit(max));
        }
        Ok(())
    }

    /// Cluster: the room's log says it was closed and restarted with `epoch`. The room held
    /// here under another epoch is closed (its members here leave with `ROOM_CLOSED` and
    /// `reason`), one already made under `epoch` (a login that read the log after the close)
    /// stays; and no record or login may make the room again under an older epoch.
    pub fn restarted_in_cluster(&self, shared: &Arc<Shared>, name: &str, epoch: u64, reason: &str) {
        let mut state = self.lock();
        state.restarted.insert(name.to_owned(), (epoch, Instant::now()));
        if state.rooms.get(name).is_some_and(|room| room.epoch != epoch)
            && let Some(room) = state.rooms.remove(name)
        {
            room.close_all(shared, reason);
            closed(shared, &room);
        }
    }

    /// Cluster: the epoch the room must have if the log said it restarted, else `epoch`;
    /// `None` when `epoch` is older than that restart (a stale record or entry).
    fn current_epoch(state: &RouterState, name: &str, epoch: u64) -> Option<u64> {
        match state.restarted.get(name) {
            Some(&(restarted, _)) if restarted != epoch => None,
            _ => Some(epoch),
        }
    }

    fn room_or_create(
        &self,
        shared: &Shared,
        name: &str,
        user_id: &str,
        epoch: Option<u64>,
    ) -> Result<Arc<Room>, (ErrorCode, String)> {
        let mut state = self.lock();
        if let Some(room) = state.rooms.get(name) {
            return Ok(room.clone());
        }
        let limits = &shared.config.limits;
        let allowance = state.creations.entry(user_id.to_owned()).or_insert_with(|| {
            TokenBucket::with_burst(limits.room_create_per_user, ROOM_CREATE_BURST)
        });
        if !allowance.ready() {
            return Err(creating_too_fast(limits.room_create_per_user));
        }
        let max = shared.config.max_rooms;
        while state.rooms.len() >= max {
            if !state.evict_emptied(shared) {
                return Err(room_limit(max));
            }
        }
        if let Some(allowance) = state.creations.get_mut(user_id) {
            allowance.take();
        }
        state.last_number = state.last_number.wrapping_add(1).max(1);
        // A login that read the room's epoch before a close joins the room the close started.
        let epoch = match (epoch, state.restarted.get(name)) {
            (Some(_), Some(&(restarted, _))) => restarted,
            (Some(epoch), None) => epoch,
            (None, _) => rand::random(),
        };
        let room = Arc::new(Room::new(name.to_owned(), state.last_number, epoch, shared));
        state.rooms.insert(name.to_owned(), room.clone());
        Counters::bump(&shared.counters.rooms_open);
        shared.hooks.emit(&shared.counters, |at_ms| RoomEvent::RoomCreated {
            room: name.to_owned(),
            at_ms,
        });
        Ok(room)
    }
}

impl RouterState {
    /// Removes the empty room that emptied longest ago, with its history. `false` when no
    /// room is empty.
    fn evict_emptied(&mut self, shared: &Shared) -> bool {
        while let Some(room) = self.emptied.pop_front() {
            let current = self.rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, &room));
            if current && room.evict_if_empty(shared) {
                self.rooms.remove(&room.name);
                closed(shared, &room);
                return true;
            }
        }
        false
    }
}

fn creating_too_fast(rate: f64) -> (ErrorCode, String) {
    (ErrorCode::LOGIN_RATE_LIMITED, format!("this user creates more than {rate} rooms per second"))
}

fn room_limit(max: usize) -> (ErrorCode, String) {
    (ErrorCode::SERVER_ROOM_LIMIT, format!("the relay holds its maximum of {max} rooms"))
}

/// Counts a room the router removed and tells the webhooks.
fn closed(shared: &Shared, room: &Room) {
    shared.counters.rooms_open.fetch_sub(1, Ordering::Relaxed);
    shared
        .hooks
        .emit(&shared.counters, |at_ms| RoomEvent::RoomClosed { room: room.name.clone(), at_ms });
}
