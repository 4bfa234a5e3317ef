//! The router: room ID → room. Rooms are created by their first login and removed when their
//! last member leaves. Lock order: router, then room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Shared;
use super::lane::LaneQueue;
use super::room::{JoinError, Room};
use crate::protocol::{ErrorCode, Recover, User};

/// Every live room.
#[derive(Debug, Default)]
pub struct Router {
    state: Mutex<RouterState>,
}

#[derive(Debug, Default)]
struct RouterState {
    rooms: HashMap<String, Arc<Room>>,
    last_number: u32,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Logs `user` in to the room `name`, creating the room if needed.
    pub fn join(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        session: u32,
        user: User,
        conn: &quinn::Connection,
        recover: Option<Recover>,
    ) -> Result<(Arc<Room>, LaneQueue), (ErrorCode, String)> {
        loop {
            let room = self.room_or_create(shared, name);
            match room.join(shared, session, user.clone(), conn.clone(), recover) {
                Ok(queue) => return Ok((room, queue)),
                Err(JoinError::RoomClosed) => continue,
                Err(JoinError::Refused(code, detail)) => {
                    self.remove_if_empty(&room);
                    return Err((code, detail));
                }
            }
        }
    }

    /// Removes `room` if it has no members left.
    pub fn remove_if_empty(&self, room: &Arc<Room>) {
        let mut state = self.lock();
        let current = state.rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room));
        if current && room.close_if_empty() {
            state.rooms.remove(&room.name);
        }
    }

    /// Removes every room with no members whose history has expired.
    pub fn sweep(&self) {
        self.lock().rooms.retain(|_, room| !room.close_if_empty());
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }

    fn room_or_create(&self, shared: &Shared, name: &str) -> Arc<Room> {
        let mut state = self.lock();
        if let Some(room) = state.rooms.get(name) {
            return room.clone();
        }
        state.last_number = state.last_number.wrapping_add(1).max(1);
        let room = Arc::new(Room::new(name.to_owned(), state.last_number, shared));
        state.rooms.insert(name.to_owned(), room.clone());
        room
    }
}
