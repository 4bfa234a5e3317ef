//! Every message on the wire: control-stream requests and replies, room-lane events, datagrams.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{ErrorCode, MAX_BATCH, MAX_COMMAND_TARGETS, MAX_MEMBER_PAGE, MAX_USERS_PER_UPDATE};

/// A user as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user ID (1 to 64 bytes, see [`super::check_user_id`]).
    pub id: String,
    /// The display name (1 to 256 bytes of UTF-8).
    pub name: String,
}

/// A member of a room, as announced in user updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The server-wide session number of the member's connection; barrage datagrams name their
    /// sender by this number.
    pub session: u32,
    /// Who the member is.
    pub user: User,
}

/// A frame a client sends on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client; the reply echoes it.
    pub request: u32,
    /// What the client asks for.
    pub body: Request,
}

/// What a client can ask for on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Log in to a room. The first login fixes the connection's user; later logins on the same
    /// connection must name the same user ID.
    Login {
        /// The room to join.
        room: String,
        /// Who logs in.
        user: User,
        /// A JWT that grants this user this room (see docs/PROTOCOL.md, "Tokens").
        token: String,
        /// Set when logging in again after a lost connection or a closed lane: the server
        /// replays the broadcasts after `last_id` that are still in the room's history.
        recover: Option<Recover>,
    },
    /// Leave a room; its lane ends with a `Closed { LOGGED_OUT }` event.
    Logout {
        /// The room to leave.
        room: String,
    },
    /// Send a reliable, ordered message to every other member of the room.
    Broadcast {
        /// The room to send in.
        room: String,
        /// 1 to 1024 bytes.
        payload: Bytes,
    },
    /// Send a reliable command to the listed members, or to every other member if `to` is empty.
    Command {
        /// The room to send in.
        room: String,
        /// Target user IDs; empty means everyone else in the room. At most
        /// [`MAX_COMMAND_TARGETS`]: a longer list does not decode.
        #[serde(deserialize_with = "targets")]
        to: Vec<String>,
        /// 1 to 1024 bytes.
        payload: Bytes,
    },
    /// Replace the connection's token (before or after it expires) without reconnecting.
    RenewToken {
        /// The new JWT; it must name the same user.
        token: String,
    },
    /// One page of the member list of a room this connection is in, in session order. An
    /// addition to `qrelay/1` (docs/PROTOCOL.md, "Changelog"): a server from before it closes
    /// the connection as a protocol violation.
    FetchMembers {
        /// The room.
        room: String,
        /// Where the page starts: [`MEMBERS_FROM_START`], or the `next` of an earlier page of
        /// this room.
        cursor: u64,
        /// Most members wanted, 1 to [`MAX_MEMBER_PAGE`]; 0 (or more) means the maximum.
        limit: u32,
    },
}

/// The cursor of a member list's first page.
pub const MEMBERS_FROM_START: u64 = 0;

/// One page of a room's member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPage {
    /// How many members the room has (this connection included), when the page was made.
    pub count: u32,
    /// Members in session order, at most [`MAX_MEMBER_PAGE`].
    #[serde(deserialize_with = "page")]
    pub members: Vec<Member>,
    /// The cursor of the next page; [`MEMBERS_FROM_START`] (0) when this page is the last.
    pub next: u64,
}

/// Where a receiver's view of a room stopped, for recovery after a re-login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recover {
    /// The room epoch from the lane header the receiver saw.
    pub epoch: u64,
    /// The last broadcast ID it received (0 if none).
    pub last_id: u64,
}

/// A frame the server sends on a client's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlFrame {
    /// The answer to one request.
    Reply(Reply),
    /// The connection's token expires soon: renew it, or sends and logins will be refused.
    TokenWillExpire {
        /// When it expires, in milliseconds since the Unix epoch.
        expires_at_ms: u64,
    },
}

/// The answer to one request, or to one barrage datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request ID the client chose.
    pub request: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The login succeeded; the room's lane is (or will be) open.
    LoggedIn {
        /// The server-wide number of the room, for barrage datagrams.
        room_number: u32,
        /// This connection's session number (as others see it in user updates).
        session: u32,
    },
    /// The message was accepted and handed to every receiver's queue.
    Sent {
        /// Broadcast: the per-room sequence number (1, 2, 3, …). Barrage and command: a
        /// per-room unique ID.
        message_id: u64,
    },
    /// A logout or token renewal succeeded.
    Done,
    /// The request was refused.
    Refused {
        /// Why, as a documented code.
        code: ErrorCode,
        /// A human-readable explanation.
        detail: String,
    },
    /// The page of members a `FetchMembers` asked for.
    Members(MemberPage),
}

/// The first frame on every room lane (server-opened unidirectional stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneHeader {
    /// The room this lane carries.
    pub room: String,
    /// The room's server-wide number, as used in barrage datagrams.
    pub room_number: u32,
    /// Identifies this incarnation of the room's broadcast sequence. It changes when the room
    /// is created anew (after it emptied and its history expired, or after a server restart),
    /// when broadcast IDs start again at 1.
    pub epoch: u64,
}

/// An event on a room lane, in the room's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaneEvent {
    /// Members joined (the first events on a lane list who was already there), at most
    /// [`MAX_USERS_PER_UPDATE`].
    UsersJoined(#[serde(deserialize_with = "members")] Vec<Member>),
    /// Members left, at most [`MAX_USERS_PER_UPDATE`].
    UsersLeft(#[serde(deserialize_with = "members")] Vec<Member>),
    /// Broadcast messages, in ID order, at most [`MAX_BATCH`].
    Broadcasts(#[serde(deserialize_with = "broadcasts")] Vec<BroadcastMessage>),
    /// A custom command addressed to this receiver.
    Command(CommandMessage),
    /// The last event on a lane: the receiver is no longer in the room.
    Closed {
        /// Why ([`ErrorCode::LOGGED_OUT`], [`ErrorCode::KICKED_LOGGED_IN_ELSEWHERE`], …).
        code: ErrorCode,
        /// A human-readable explanation.
        detail: String,
    },
    /// Sent after the member list on a lane whose login asked to recover; the replayed
    /// broadcasts follow it, before any new event.
    Recovered {
        /// Every broadcast after the receiver's `last_id` is replayed: nothing was missed.
        complete: bool,
        /// Broadcasts missed for good (first and last ID), when the history no longer reaches
        /// back far enough. `None` with `complete: false` means the room's epoch changed: the
        /// receiver cannot know what it missed of the old sequence.
        missed: Option<(u64, u64)>,
        /// How many broadcasts are replayed right after this event.
        replayed: u64,
    },
    /// A large room's member count (this receiver included) after the joins and leaves since
    /// the last one. A large room sends this instead of naming who joined or left, at most
    /// once per flush of the room (`user_update_interval_ms`, or with the next messages).
    MemberCount(u32),
    /// The second frame of a lane of a large room, instead of the member list: the member
    /// count and the first page of the others (the receiver is not listed); the rest comes
    /// page by page through `FetchMembers`, from `next`.
    MemberPage(MemberPage),
}

/// A broadcast message as receivers get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastMessage {
    /// The per-room sequence number (1, 2, 3, …).
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Who sent it.
    pub from: User,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

/// [`BroadcastMessage`] with borrowed parts, for encoding without cloning the sender or the
/// payload: its encoding is byte for byte that of the owned message.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BroadcastRef<'a> {
    /// The per-room sequence number.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Who sent it.
    pub from: &'a User,
    /// 1 to 1024 bytes.
    pub payload: &'a Bytes,
}

/// A custom command as its receivers get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMessage {
    /// A per-room unique ID.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Who sent it.
    pub from: User,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

/// A datagram a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientDatagram {
    /// Send a barrage message; the reply comes on the control stream with this request ID.
    Barrage {
        /// The room's number from the login reply.
        room_number: u32,
        /// Chosen by the client; the reply echoes it.
        request: u32,
        /// 1 to 1024 bytes.
        payload: Bytes,
    },
    /// Send a barrage message without a reply: the server answers nothing, not even a
    /// refusal (which it counts). An addition to `qrelay/1` (docs/PROTOCOL.md, "Changelog"):
    /// a server from before it drops it as malformed.
    BarrageNoReply {
        /// The room's number from the login reply.
        room_number: u32,
        /// 1 to 1024 bytes.
        payload: Bytes,
    },
}

/// A datagram the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerDatagram {
    /// One barrage message.
    Barrage(BarrageMessage),
}

/// A barrage message as receivers get it; names are resolved from the lane's user updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrageMessage {
    /// The room's server-wide number.
    pub room_number: u32,
    /// A per-room unique ID.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The sender's session number (see [`Member::session`]).
    pub sender: u32,
    /// 1 to 1024 bytes.
    pub payload: Bytes,
}

// Every list on the wire has a maximum length, and a longer list does not decode. Beyond the
// rule itself this bounds memory: serde's `Vec` preallocates up to 1 MiB for whatever count
// the input claims, and bincode's limit does not cover that through serde, so a 20-byte body
// could make the decoder allocate 1 MiB. These decoders allocate at most the maximum.

fn targets<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    deserializer.deserialize_seq(BoundedList::new(MAX_COMMAND_TARGETS))
}

fn members<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Member>, D::Error> {
    deserializer.deserialize_seq(BoundedList::new(MAX_USERS_PER_UPDATE))
}

fn page<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Member>, D::Error> {
    deserializer.deserialize_seq(BoundedList::new(MAX_MEMBER_PAGE))
}

fn broadcasts<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<BroadcastMessage>, D::Error> {
    deserializer.deserialize_seq(BoundedList::new(MAX_BATCH))
}

/// Decodes a list of at most `max` elements, refusing a longer one before allocating for it.
struct BoundedList<T> {
    max: usize,
    element: PhantomData<T>,
}

impl<T> BoundedList<T> {
    fn new(max: usize) -> Self {
        Self { max, element: PhantomData }
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedList<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {} elements", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > self.max {
            return Err(A::Error::invalid_length(claimed, &self));
        }
        let mut list = Vec::with_capacity(claimed);
        while let Some(element) = seq.next_element()? {
            if list.len() == self.max {
                return Err(A::Error::invalid_length(self.max + 1, &self));
            }
            list.push(element);
        }
        Ok(list)
    }
}
