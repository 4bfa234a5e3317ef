//! How the CLI shows results and events: one JSON object per line (`listen` and the one-shot
//! commands) or readable lines (`chat`).

use std::time::Duration;

use bytes::Bytes;
use qrelay::client::{ClientError, ConnectionState, Event, ReceivedBarrage};
use qrelay::protocol::{BroadcastMessage, CommandMessage, MemberPage, User, close};
use serde::Serialize;

use crate::Failure;

/// The `error` of a failure on this machine before anything reached the relay (a file that
/// cannot be read): it has no result code (`code` is `null`).
pub const LOCAL_SETUP: &str = "LOCAL_SETUP";

/// The `error` of `listen`'s last line when reconnecting gave up (`code` is `null`: the relay
/// sent no close code for it).
pub const RECONNECT_GAVE_UP: &str = "RECONNECT_GAVE_UP";

/// One line of JSON output. Fields keep the order written here (`event` or `ok` first).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventJson<'a> {
    /// A failure before the first connection was up (a bad option, an unreadable file, no
    /// relay answering, an untrusted certificate); printed only on failure.
    Connect {
        ok: bool,
        #[serde(flatten)]
        error: Option<ErrorJson>,
    },
    /// The result of a login.
    Login {
        room: &'a str,
        ok: bool,
        #[serde(flatten)]
        error: Option<ErrorJson>,
    },
    /// The result of an automatic token renewal.
    TokenRenewed {
        ok: bool,
        #[serde(flatten)]
        error: Option<ErrorJson>,
    },
    UsersJoined {
        room: &'a str,
        users: Vec<UserJson<'a>>,
    },
    UsersLeft {
        room: &'a str,
        users: Vec<UserJson<'a>>,
    },
    /// A large room's login: the member count and the first page (`next` 0: no more).
    RoomMembers {
        room: &'a str,
        count: u32,
        users: Vec<UserJson<'a>>,
        next: u64,
    },
    /// A large room's member count changed.
    MemberCount {
        room: &'a str,
        count: u32,
    },
    Broadcast {
        room: &'a str,
        messages: Vec<MessageJson<'a>>,
    },
    Barrage {
        room: &'a str,
        messages: Vec<MessageJson<'a>>,
    },
    Command {
        room: &'a str,
        message: MessageJson<'a>,
    },
    /// `code` and `error` (its name) as in every failure line.
    RoomClosed {
        room: &'a str,
        code: u32,
        error: &'static str,
        detail: &'a str,
    },
    Recovered {
        room: &'a str,
        complete: bool,
        missed: Option<(u64, u64)>,
        replayed: u64,
    },
    TokenWillExpire {
        expires_at_ms: u64,
    },
    /// `reconnecting` (with `attempt`), `reconnected`, or `failed` (with `reason`).
    ConnectionState {
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The last line. `code` is the QUIC close code and `error` its name (`null` when the
    /// connection ended without one). When reconnecting gave up, `code` is `null`, `error`
    /// is [`RECONNECT_GAVE_UP`], `reason` says why, and `lost` is the loss it tried to
    /// recover from.
    Disconnected {
        code: Option<u64>,
        error: Option<&'static str>,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        lost: Option<LostJson>,
    },
}

/// The connection loss reconnecting tried to recover from: close code, its name, reason.
#[derive(Debug, Serialize)]
pub struct LostJson {
    code: Option<u64>,
    error: Option<&'static str>,
    reason: String,
}

/// A user as `{"id":..,"name":..}`.
#[derive(Debug, Serialize)]
pub struct UserJson<'a> {
    id: &'a str,
    name: &'a str,
}

/// A received message; the payload is `text` when it is UTF-8, else `hex`.
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    id: u64,
    sent_at_ms: u64,
    /// `null` for a barrage whose sender the client does not know (members not tracked).
    from: Option<UserJson<'a>>,
    #[serde(flatten)]
    payload: PayloadJson<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum PayloadJson<'a> {
    Text(&'a str),
    Hex(String),
}

/// The fields of a failure: `code`, `error` (the code's name), `detail`. A local setup
/// failure has no code (`null`) and the `error` [`LOCAL_SETUP`].
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    code: Option<u32>,
    error: &'static str,
    detail: String,
}

impl From<&ClientError> for ErrorJson {
    fn from(error: &ClientError) -> Self {
        let code = error.code();
        ErrorJson { code: Some(code.0), error: code.name(), detail: error.detail() }
    }
}

impl From<&Failure> for ErrorJson {
    fn from(failure: &Failure) -> Self {
        match failure {
            Failure::Client(error) => error.into(),
            Failure::Setup(detail) => {
                ErrorJson { code: None, error: LOCAL_SETUP, detail: detail.clone() }
            }
        }
    }
}

/// The result of a send: `{"ok":true,"kind":..,"room":..,"message_id":N}` or, on failure,
/// `ok` false and the error fields instead of `message_id`.
#[derive(Debug, Serialize)]
pub struct SentJson<'a> {
    ok: bool,
    kind: &'a str,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<u64>,
    #[serde(flatten)]
    error: Option<ErrorJson>,
}

fn user_json(user: &User) -> UserJson<'_> {
    UserJson { id: &user.id, name: &user.name }
}

fn message_json<'a>(
    id: u64,
    sent_at_ms: u64,
    from: Option<&'a User>,
    payload: &'a Bytes,
) -> MessageJson<'a> {
    let payload = match std::str::from_utf8(payload) {
        Ok(text) => PayloadJson::Text(text),
        Err(_) => PayloadJson::Hex(hex::encode(payload)),
    };
    MessageJson { id, sent_at_ms, from: from.map(user_json), payload }
}

fn broadcast_json(m: &BroadcastMessage) -> MessageJson<'_> {
    message_json(m.id, m.sent_at_ms, Some(&m.from), &m.payload)
}

fn barrage_json(m: &ReceivedBarrage) -> MessageJson<'_> {
    message_json(m.id, m.sent_at_ms, m.from.as_ref(), &m.payload)
}

fn command_json(m: &CommandMessage) -> MessageJson<'_> {
    message_json(m.id, m.sent_at_ms, Some(&m.from), &m.payload)
}

/// An event as one JSON line.
pub fn event_json(event: &Event) -> EventJson<'_> {
    match event {
        Event::UsersJoined { room, users } => {
            EventJson::UsersJoined { room, users: users.iter().map(user_json).collect() }
        }
        Event::UsersLeft { room, users } => {
            EventJson::UsersLeft { room, users: users.iter().map(user_json).collect() }
        }
        Event::RoomMembers { room, count, users, next } => EventJson::RoomMembers {
            room,
            count: *count,
            users: users.iter().map(user_json).collect(),
            next: *next,
        },
        Event::MemberCount { room, count } => EventJson::MemberCount { room, count: *count },
        Event::Broadcasts { room, messages } => {
            EventJson::Broadcast { room, messages: messages.iter().map(broadcast_json).collect() }
        }
        Event::Barrages { room, messages } => {
            EventJson::Barrage { room, messages: messages.iter().map(barrage_json).collect() }
        }
        Event::Command { room, message } => {
            EventJson::Command { room, message: command_json(message) }
        }
        Event::RoomClosed { room, code, detail } => {
            EventJson::RoomClosed { room, code: code.0, error: code.name(), detail }
        }
        Event::Recovered { room, complete, missed, replayed } => {
            EventJson::Recovered { room, complete: *complete, missed: *missed, replayed: *replayed }
        }
        Event::TokenWillExpire { expires_at_ms } => {
            EventJson::TokenWillExpire { expires_at_ms: *expires_at_ms }
        }
        Event::ConnectionState(state) => {
            let (state, attempt, reason) = match state {
                ConnectionState::Reconnecting { attempt } => ("reconnecting", Some(*attempt), None),
                ConnectionState::Reconnected => ("reconnected", None, None),
                ConnectionState::Failed { reason } => {
                    ("failed", None, Some(round_durations(reason)))
                }
            };
            EventJson::ConnectionState { state, attempt, reason }
        }
        Event::Disconnected { code, reason } => EventJson::Disconnected {
            code: *code,
            error: code.map(close::name),
            reason: round_durations(reason),
            lost: None,
        },
    }
}

/// `listen`'s last line when reconnecting gave up for `reason`, after `lost` (the
/// [`Event::Disconnected`] that repeats the loss it tried to recover from).
pub fn gave_up_json<'a>(reason: &str, lost: &Event) -> EventJson<'a> {
    let lost = match lost {
        Event::Disconnected { code, reason } => Some(LostJson {
            code: *code,
            error: code.map(close::name),
            reason: round_durations(reason),
        }),
        _ => None,
    };
    EventJson::Disconnected {
        code: None,
        error: Some(RECONNECT_GAVE_UP),
        reason: format!("gave up reconnecting: {}", round_durations(reason)),
        lost,
    }
}

/// A failure before the first connection was up.
pub fn connect_json(failure: &Failure) -> EventJson<'static> {
    EventJson::Connect { ok: false, error: Some(failure.into()) }
}

/// The result of a send.
pub fn sent_json<'a>(kind: &'a str, room: &'a str, result: &Result<u64, Failure>) -> SentJson<'a> {
    SentJson {
        ok: result.is_ok(),
        kind,
        room,
        message_id: result.as_ref().ok().copied(),
        error: result.as_ref().err().map(ErrorJson::from),
    }
}

/// One page of `qrelay-cli members`: `{"ok":true,"room":..,"count":..,"users":[..],"next":..}`.
#[derive(Debug, Serialize)]
pub struct MembersJson<'a> {
    ok: bool,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<Vec<MemberJson<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
    #[serde(flatten)]
    error: Option<ErrorJson>,
}

/// A member as `{"id":..,"name":..,"session":..}`.
#[derive(Debug, Serialize)]
pub struct MemberJson<'a> {
    id: &'a str,
    name: &'a str,
    session: u32,
}

/// A page of members.
pub fn members_json<'a>(room: &'a str, page: &'a MemberPage) -> MembersJson<'a> {
    let users = page
        .members
        .iter()
        .map(|m| MemberJson { id: &m.user.id, name: &m.user.name, session: m.session })
        .collect();
    MembersJson {
        ok: true,
        room,
        count: Some(page.count),
        users: Some(users),
        next: Some(page.next),
        error: None,
    }
}

/// A member listing that failed.
pub fn members_failed_json<'a>(room: &'a str, failure: &Failure) -> MembersJson<'a> {
    MembersJson {
        ok: false,
        room,
        count: None,
        users: None,
        next: None,
        error: Some(ErrorJson::from(failure)),
    }
}

/// The result of a login.
pub fn login_json<'a>(room: &'a str, result: &Result<(), ClientError>) -> EventJson<'a> {
    EventJson::Login { room, ok: result.is_ok(), error: result.as_ref().err().map(ErrorJson::from) }
}

/// The result of an automatic token renewal.
pub fn renewal_json(result: &Result<(), ClientError>) -> EventJson<'static> {
    EventJson::TokenRenewed {
        ok: result.is_ok(),
        error: result.as_ref().err().map(ErrorJson::from),
    }
}

/// One value as a JSON line (serialization of these types cannot fail; if it did, the
/// error is printed in the line's place).
pub fn line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `bob` or `bob (Bob)` when the name differs from the ID.
pub fn who(user: &User) -> String {
    if user.name == user.id { user.id.clone() } else { format!("{} ({})", user.id, user.name) }
}

/// A payload as text, or `0x…` hex when it is not UTF-8.
pub fn text(payload: &Bytes) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("0x{}", hex::encode(payload)),
    }
}

/// An event as readable lines for `chat`.
pub fn event_lines(event: &Event) -> Vec<String> {
    match event {
        Event::UsersJoined { room, users } => {
            users.iter().map(|u| format!("[{room}] + {} joined", who(u))).collect()
        }
        Event::UsersLeft { room, users } => {
            users.iter().map(|u| format!("[{room}] - {} left", who(u))).collect()
        }
        Event::RoomMembers { room, count, users, next } => {
            let more = if *next == 0 { "" } else { " (the first of them)" };
            let names: Vec<String> = users.iter().map(who).collect();
            vec![format!("[{room}] {count} members: {}{more}", names.join(", "))]
        }
        Event::MemberCount { room, count } => vec![format!("[{room}] {count} members")],
        Event::Broadcasts { room, messages } => messages
            .iter()
            .map(|m| format!("[{room}] {}: {}  #{}", who(&m.from), text(&m.payload), m.id))
            .collect(),
        Event::Barrages { room, messages } => messages
            .iter()
            .map(|m| {
                let from = m.from.as_ref().map_or_else(|| "?".to_string(), who);
                format!("[{room}] {from} (barrage): {}  #{}", text(&m.payload), m.id)
            })
            .collect(),
        Event::Command { room, message: m } => {
            vec![format!("[{room}] {} (command): {}  #{}", who(&m.from), text(&m.payload), m.id)]
        }
        Event::RoomClosed { room, code, detail } => {
            vec![format!("[{room}] room closed: {code}: {detail}")]
        }
        Event::Recovered { room, complete: true, replayed, .. } => {
            vec![format!("[{room}] recovered: {replayed} missed broadcasts follow")]
        }
        Event::Recovered { room, missed, replayed, .. } => vec![match missed {
            Some((first, last)) => format!(
                "[{room}] recovered partly: broadcasts #{first}-#{last} are lost, {replayed} follow"
            ),
            None => {
                format!("[{room}] room restarted: earlier broadcasts are lost, {replayed} follow")
            }
        }],
        Event::TokenWillExpire { expires_at_ms } => {
            vec![format!("token expires at {expires_at_ms} ms since the epoch")]
        }
        Event::ConnectionState(ConnectionState::Reconnecting { attempt }) => {
            vec![format!("connection lost; reconnecting (attempt {attempt})")]
        }
        Event::ConnectionState(ConnectionState::Reconnected) => {
            vec!["reconnected; logging in to the room again".to_owned()]
        }
        Event::ConnectionState(ConnectionState::Failed { reason }) => {
            vec![format!("cannot reconnect: {}", round_durations(reason))]
        }
        Event::Disconnected { code, reason } => {
            let reason = round_durations(reason);
            vec![match code {
                Some(code) => format!("disconnected: {} ({code}): {reason}", close::name(*code)),
                None => format!("disconnected: {reason}"),
            }]
        }
    }
}

/// An error as one readable line.
pub fn error_line(error: &ClientError) -> String {
    format!("error: {}: {}", error.code(), error.detail())
}

/// A failure as one readable line.
pub fn failure_line(failure: &Failure) -> String {
    match failure {
        Failure::Client(error) => error_line(error),
        Failure::Setup(detail) => format!("error: {LOCAL_SETUP}: {detail}"),
    }
}

/// A duration as people say it: whole milliseconds below a second, whole seconds above
/// (`300ms`, `5s`, `2m 5s`), never `4s 935ms 299us 761ns`.
pub fn duration(d: Duration) -> String {
    let rounded = if d < Duration::from_secs(1) {
        // Anything above zero shows as at least 1ms.
        let ms = (d.as_secs_f64() * 1e3).round().max(if d.is_zero() { 0.0 } else { 1.0 });
        Duration::from_millis(ms as u64)
    } else {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
    };
    humantime::format_duration(rounded).to_string()
}

/// `text` with every duration written as `humantime` writes them (`4s 935ms 299us 761ns`)
/// rounded by [`duration`]. The client library's reasons carry such durations.
pub fn round_durations(text: &str) -> String {
    let mut words = Vec::new();
    // The parts of the duration being read.
    let mut parts: Vec<&str> = Vec::new();
    for word in text.split(' ') {
        let core = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        if duration_part(core) {
            parts.push(core);
            // Punctuation after a part ends the duration.
            let tail = &word[core.len()..];
            if !tail.is_empty() {
                words.push(rounded(&parts) + tail);
                parts.clear();
            }
            continue;
        }
        if !parts.is_empty() {
            words.push(rounded(&parts));
            parts.clear();
        }
        words.push(word.to_owned());
    }
    if !parts.is_empty() {
        words.push(rounded(&parts));
    }
    words.join(" ")
}

/// The parts of one duration, read and written again by [`duration`].
fn rounded(parts: &[&str]) -> String {
    let text = parts.join(" ");
    humantime::parse_duration(&text).map_or(text, duration)
}

/// Whether `word` is one part of a `humantime` duration: digits, then one of its units.
fn duration_part(word: &str) -> bool {
    let unit = word.trim_start_matches(|c: char| c.is_ascii_digit());
    unit.len() < word.len() && ["y", "M", "w", "d", "h", "m", "s", "ms", "us", "ns"].contains(&unit)
}

#[cfg(test)]
mod tests {
    use qrelay::protocol::ErrorCode;
    use serde_json::{Value, json};

    use super::*;

    fn value<T: Serialize>(x: T) -> Value {
        serde_json::to_value(x).unwrap()
    }

    fn bob() -> User {
        User { id: "bob".into(), name: "Bob".into() }
    }

    #[test]
    fn broadcast_event_lists_messages_as_text_or_hex() {
        let event = Event::Broadcasts {
            room: "lobby".into(),
            messages: vec![
                BroadcastMessage {
                    id: 12,
                    sent_at_ms: 1000,
                    from: bob(),
                    payload: Bytes::from_static(b"hello"),
                },
                BroadcastMessage {
                    id: 13,
                    sent_at_ms: 1001,
                    from: bob(),
                    payload: Bytes::from_static(&[0xFF, 0x00]),
                },
            ],
        };
        assert_eq!(
            value(event_json(&event)),
            json!({"event":"broadcast","room":"lobby","messages":[
                {"id":12,"sent_at_ms":1000,"from":{"id":"bob","name":"Bob"},"text":"hello"},
                {"id":13,"sent_at_ms":1001,"from":{"id":"bob","name":"Bob"},"hex":"ff00"},
            ]})
        );
        assert_eq!(
            event_lines(&event),
            vec!["[lobby] bob (Bob): hello  #12", "[lobby] bob (Bob): 0xff00  #13"]
        );
    }

    #[test]
    fn closes_and_disconnects_are_named() {
        let closed = Event::RoomClosed {
            room: "lobby".into(),
            code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
            detail: "elsewhere".into(),
        };
        assert_eq!(
            value(event_json(&closed)),
            json!({"event":"room_closed","room":"lobby","code":3003,
                   "error":"KICKED_LOGGED_IN_ELSEWHERE","detail":"elsewhere"})
        );
        let gone = Event::Disconnected { code: Some(3), reason: "bye".into() };
        assert_eq!(
            value(event_json(&gone)),
            json!({"event":"disconnected","code":3,"error":"SHUTDOWN","reason":"bye"})
        );
        let lost = Event::Disconnected { code: None, reason: "timed out".into() };
        assert_eq!(
            value(event_json(&lost)),
            json!({"event":"disconnected","code":null,"error":null,"reason":"timed out"})
        );
        assert_eq!(event_lines(&gone), vec!["disconnected: SHUTDOWN (3): bye"]);
    }

    #[test]
    fn connection_states_and_recovery() {
        let state = |s| Event::ConnectionState(s);
        assert_eq!(
            value(event_json(&state(ConnectionState::Reconnecting { attempt: 2 }))),
            json!({"event":"connection_state","state":"reconnecting","attempt":2})
        );
        assert_eq!(
            value(event_json(&state(ConnectionState::Reconnected))),
            json!({"event":"connection_state","state":"reconnected"})
        );
        let failed = state(ConnectionState::Failed { reason: "gone".into() });
        assert_eq!(
            value(event_json(&failed)),
            json!({"event":"connection_state","state":"failed","reason":"gone"})
        );
        assert_eq!(event_lines(&failed), vec!["cannot reconnect: gone"]);
        let recovered = Event::Recovered {
            room: "r".into(),
            complete: false,
            missed: Some((3, 9)),
            replayed: 4,
        };
        assert_eq!(
            value(event_json(&recovered)),
            json!({"event":"recovered","room":"r","complete":false,"missed":[3,9],"replayed":4})
        );
        assert_eq!(
            event_lines(&recovered),
            vec!["[r] recovered partly: broadcasts #3-#9 are lost, 4 follow"]
        );
    }

    #[test]
    fn giving_up_is_the_last_line_with_the_loss_it_followed() {
        let lost = Event::Disconnected { code: Some(3), reason: "server shutting down".into() };
        let reason = "no connection within 2s after 3 attempts; last error: no relay answered \
                      at 127.0.0.1:9 within 312ms 45us 7ns";
        assert_eq!(
            value(gave_up_json(reason, &lost)),
            json!({"event":"disconnected","code":null,"error":"RECONNECT_GAVE_UP",
                   "reason":"gave up reconnecting: no connection within 2s after 3 attempts; \
                             last error: no relay answered at 127.0.0.1:9 within 312ms",
                   "lost":{"code":3,"error":"SHUTDOWN","reason":"server shutting down"}})
        );
    }

    #[test]
    fn durations_are_whole_seconds_or_milliseconds() {
        assert_eq!(duration(Duration::from_millis(300)), "300ms");
        assert_eq!(duration(Duration::from_nanos(4_935_299_761)), "5s");
        assert_eq!(duration(Duration::from_nanos(4_435_299_761)), "4s");
        assert_eq!(duration(Duration::from_nanos(999_600_000)), "1s");
        assert_eq!(duration(Duration::from_micros(20)), "1ms");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(
            round_durations("within 4s 935ms 299us 761ns; after 3 attempts (gone 2s 1ms)"),
            "within 5s; after 3 attempts (gone 2s)"
        );
        assert_eq!(
            round_durations("at 127.0.0.1:4433 within 300ms"),
            "at 127.0.0.1:4433 within 300ms"
        );
        assert_eq!(round_durations("room ms and 5 users,  twice"), "room ms and 5 users,  twice");
    }

    #[test]
    fn local_setup_failures_have_a_name_and_no_code() {
        let failure = Failure::Setup("no CA certificate to trust".into());
        assert_eq!(
            value(connect_json(&failure)),
            json!({"event":"connect","ok":false,"code":null,"error":"LOCAL_SETUP",
                   "detail":"no CA certificate to trust"})
        );
        assert_eq!(
            value(sent_json("broadcast", "r", &Err(failure))),
            json!({"ok":false,"kind":"broadcast","room":"r","code":null,"error":"LOCAL_SETUP",
                   "detail":"no CA certificate to trust"})
        );
        let refused = Failure::Client(ClientError::Timeout);
        assert_eq!(value(connect_json(&refused))["code"], 5001);
        assert_eq!(
            failure_line(&refused),
            "error: TIMEOUT (5001): no reply within the request timeout"
        );
    }

    /// README.md documents every `listen` line; a new `EventJson` variant goes there too.
    #[test]
    fn the_readme_documents_every_listen_event() {
        let readme = include_str!("../../README.md");
        let table = readme.split("| `event` | other fields | when |").nth(1).expect("the table");
        let table = table.split("\n\n").next().unwrap_or_default();
        let events = [
            "connect",
            "login",
            "token_renewed",
            "users_joined",
            "users_left",
            "room_members",
            "member_count",
            "broadcast",
            "barrage",
            "command",
            "room_closed",
            "recovered",
            "token_will_expire",
            "connection_state",
            "disconnected",
        ];
        for event in events {
            assert!(table.contains(&format!("`{event}`")), "README.md lacks {event}");
        }
        for name in [LOCAL_SETUP, RECONNECT_GAVE_UP] {
            assert!(readme.contains(name), "README.md lacks {name}");
        }
    }

    #[test]
    fn results_and_errors() {
        assert_eq!(
            value(sent_json("broadcast", "lobby", &Ok(7))),
            json!({"ok":true,"kind":"broadcast","room":"lobby","message_id":7})
        );
        let error =
            ClientError::Refused { code: ErrorCode::PAYLOAD_TOO_LARGE, detail: "big".into() };
        assert_eq!(
            value(sent_json("barrage", "lobby", &Err(Failure::Client(error.clone())))),
            json!({"ok":false,"kind":"barrage","room":"lobby","code":1002,
                   "error":"PAYLOAD_TOO_LARGE","detail":"big"})
        );
        assert_eq!(
            value(login_json("lobby", &Ok(()))),
            json!({"event":"login","room":"lobby","ok":true})
        );
        assert_eq!(
            value(login_json("lobby", &Err(ClientError::Timeout))),
            json!({"event":"login","room":"lobby","ok":false,"code":5001,"error":"TIMEOUT",
                   "detail":"no reply within the request timeout"})
        );
        assert_eq!(error_line(&error), "error: PAYLOAD_TOO_LARGE (1002): big");
    }

    #[test]
    fn barrage_and_command_lines() {
        let barrage = Event::Barrages {
            room: "r".into(),
            messages: vec![ReceivedBarrage {
                id: 5,
                sent_at_ms: 1,
                from: Some(User { id: "al".into(), name: "al".into() }),
                payload: Bytes::from_static(b"pew"),
            }],
        };
        assert_eq!(event_lines(&barrage), vec!["[r] al (barrage): pew  #5"]);
        let command = Event::Command {
            room: "r".into(),
            message: CommandMessage {
                id: 9,
                sent_at_ms: 2,
                from: bob(),
                payload: Bytes::from_static(b"go"),
            },
        };
        assert_eq!(
            value(event_json(&command)),
            json!({"event":"command","room":"r","message":
                {"id":9,"sent_at_ms":2,"from":{"id":"bob","name":"Bob"},"text":"go"}})
        );
    }
}
