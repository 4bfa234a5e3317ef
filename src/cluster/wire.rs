//! What nodes say to each other through NATS: subjects and message bodies, encoded with the
//! protocol's bincode configuration (docs/CLUSTER.md lists them with their sizes).
//!
//! Nothing here is trusted beyond what CLUSTER.md states: a body that does not decode is
//! counted and dropped, and every field is checked as a client's would be before it reaches a
//! room (room and user IDs, user names, payload sizes).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::User;

/// The subjects and stream names of one cluster (all under its prefix).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects of the cluster with this prefix.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The stream of room logs and member records (one stream, so every node applies them
    /// in one order).
    pub fn stream(&self) -> String {
        format!("{}_ROOMS", self.prefix.to_ascii_uppercase())
    }

    /// Every room log: `<prefix>.room.*`.
    pub fn all_rooms(&self) -> String {
        format!("{}.room.*", self.prefix)
    }

    /// One room's log.
    pub fn room(&self, room: &str) -> String {
        format!("{}.room.{}", self.prefix, hex::encode(room))
    }

    /// Every member record: `<prefix>.member.*.*`.
    pub fn all_members(&self) -> String {
        format!("{}.member.*.*", self.prefix)
    }

    /// The record of `user` in `room`.
    pub fn member(&self, room: &str, user: &str) -> String {
        format!("{}.member.{}.{}", self.prefix, hex::encode(room), hex::encode(user))
    }

    /// Every room's barrage: `<prefix>.barrage.*`.
    pub fn all_barrage(&self) -> String {
        format!("{}.barrage.*", self.prefix)
    }

    /// One room's barrage (NATS core, not stored).
    pub fn barrage(&self, room: &str) -> String {
        format!("{}.barrage.{}", self.prefix, hex::encode(room))
    }

    /// The nodes' liveness messages (NATS core).
    pub fn alive(&self) -> String {
        format!("{}.alive", self.prefix)
    }

    /// The room ID of a room-log or barrage subject.
    pub fn room_of(&self, subject: &str) -> Option<String> {
        let token = subject.rsplit('.').next()?;
        decode_token(token)
    }

    /// The room and user IDs of a member-record subject.
    pub fn member_of(&self, subject: &str) -> Option<(String, String)> {
        let mut tokens = subject.rsplit('.');
        let user = decode_token(tokens.next()?)?;
        let room = decode_token(tokens.next()?)?;
        Some((room, user))
    }
}

/// A subject token back to the ID it encodes (hex, so that any ID is a valid token).
fn decode_token(token: &str) -> Option<String> {
    String::from_utf8(hex::decode(token).ok()?).ok()
}

/// One message of a room's log (JetStream, one subject per room). Every entry carries the
/// room's epoch and its counters after the entry, so the last entry alone tells a node where
/// the room stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The room incarnation this entry belongs to.
    pub epoch: u64,
    /// The last broadcast ID given out, this entry included.
    pub broadcast_seq: u64,
    /// The last command ID given out, this entry included.
    pub command_seq: u64,
    /// When the publishing node made the entry (ms since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    pub body: LogBody,
}

/// What a log entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogBody {
    /// The room's log starts (its first login anywhere, or after its log expired).
    Opened,
    /// Broadcasts with the consecutive IDs ending at the entry's `broadcast_seq`.
    Broadcasts(Vec<LoggedBroadcast>),
    /// A custom command (ID: the entry's `command_seq`).
    Command(LoggedCommand),
    /// The application's backend closed the room: every member leaves and a new incarnation
    /// (this entry's epoch) starts with IDs from 1.
    Closed {
        /// The backend's reason.
        reason: String,
    },
}

/// A broadcast in a room's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedBroadcast {
    /// The author's user ID (receivers' lanes leave out their own broadcasts).
    pub author: String,
    /// The `BroadcastMessage` as receivers get it, encoded once by the accepting node.
    pub encoded: Bytes,
}

/// A custom command in a room's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedCommand {
    /// Who sent it.
    pub from: User,
    /// The targets (empty: everyone but the sender).
    pub to: Vec<String>,
    /// When the node accepted it (ms since the Unix epoch).
    pub sent_at_ms: u64,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

/// The word on one user in one room (JetStream, one subject per room and user, in the same
/// stream as the room logs; the newest is what holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRecord {
    /// The user is a member, connected to `node`.
    Present {
        /// The room's epoch the login joined.
        epoch: u64,
        /// The node's incarnation (a random number per process).
        node: u64,
        /// The member's session number on that node.
        session: u32,
        /// Who.
        user: User,
    },
    /// The user left (or was removed); `node` and `session` name the membership that ended.
    Absent {
        /// The incarnation of the node the membership was on.
        node: u64,
        /// Its session number there.
        session: u32,
        /// Why.
        reason: AbsentReason,
        /// The detail the member's lane closes with (a kick's reason).
        detail: String,
    },
}

/// Why a membership ended, as the cluster records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbsentReason {
    /// Logged out, disconnected, too slow, or its node shut down: the member's own node says so.
    Left,
    /// The application's backend kicked the user (through any node).
    Kicked,
    /// Its node was not heard from for `node_timeout_ms`.
    NodeLost,
}

/// A barrage datagram crossing nodes (NATS core: best effort, never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedBarrage {
    /// The sender's node incarnation.
    pub node: u64,
    /// The sender's session on that node.
    pub session: u32,
    /// The sender's user ID.
    pub user_id: String,
    /// When the sender's node accepted it.
    pub sent_at_ms: u64,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

/// A node's liveness message, every third of `node_timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// The node's incarnation.
    pub node: u64,
    /// The node's name.
    pub name: String,
    /// Whether it is connected and caught up with the stream (only such a node judges which
    /// nodes are lost).
    pub ready: bool,
    /// It is shutting down (its members' records say they left): not lost, gone.
    pub leaving: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_any_room_and_user_id_and_give_them_back() {
        let subjects = Subjects::new("qrelay");
        let room = "live.room-1 ✓";
        let subject = subjects.room(room);
        assert!(!subject[13..].contains('.'), "{subject}");
        assert_eq!(subjects.room_of(&subject).as_deref(), Some(room));
        let member = subjects.member(room, "user.1");
        assert_eq!(subjects.member_of(&member), Some((room.to_owned(), "user.1".to_owned())));
        assert_eq!(subjects.room_of("qrelay.room.zz"), None);
        assert_eq!(subjects.stream(), "QRELAY_ROOMS");
    }
}
