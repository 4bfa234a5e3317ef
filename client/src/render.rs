//! How the CLI shows results and events: one JSON object per line (`listen` and the one-shot
//! commands) or readable lines (`chat`).

use bytes::Bytes;
use qrelay::client::{ClientError, Event, ReceivedBarrage};
use qrelay::protocol::{BroadcastMessage, CommandMessage, ErrorCode, User, close};
use serde_json::{Map, Value, json};

/// A user as `{"id":..,"name":..}`.
pub fn user_json(user: &User) -> Value {
    json!({ "id": user.id, "name": user.name })
}

/// A payload as `"text"` when it is UTF-8, else as `"hex"`, added to `object`.
fn add_payload(object: &mut Map<String, Value>, payload: &Bytes) {
    match std::str::from_utf8(payload) {
        Ok(text) => object.insert("text".into(), text.into()),
        Err(_) => object.insert("hex".into(), hex::encode(payload).into()),
    };
}

/// One received message (broadcast, barrage or command) as JSON.
fn message_json(id: u64, sent_at_ms: u64, from: &User, payload: &Bytes) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), id.into());
    object.insert("sent_at_ms".into(), sent_at_ms.into());
    object.insert("from".into(), user_json(from));
    add_payload(&mut object, payload);
    Value::Object(object)
}

fn broadcast_json(m: &BroadcastMessage) -> Value {
    message_json(m.id, m.sent_at_ms, &m.from, &m.payload)
}

fn barrage_json(m: &ReceivedBarrage) -> Value {
    message_json(m.id, m.sent_at_ms, &m.from, &m.payload)
}

fn command_json(m: &CommandMessage) -> Value {
    message_json(m.id, m.sent_at_ms, &m.from, &m.payload)
}

/// An event as one JSON object.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::UsersJoined { room, users } => json!({
            "event": "users_joined", "room": room,
            "users": users.iter().map(user_json).collect::<Vec<_>>(),
        }),
        Event::UsersLeft { room, users } => json!({
            "event": "users_left", "room": room,
            "users": users.iter().map(user_json).collect::<Vec<_>>(),
        }),
        Event::Broadcasts { room, messages } => json!({
            "event": "broadcast", "room": room,
            "messages": messages.iter().map(broadcast_json).collect::<Vec<_>>(),
        }),
        Event::Barrages { room, messages } => json!({
            "event": "barrage", "room": room,
            "messages": messages.iter().map(barrage_json).collect::<Vec<_>>(),
        }),
        Event::Command { room, message } => json!({
            "event": "command", "room": room, "message": command_json(message),
        }),
        Event::RoomClosed { room, code, detail } => json!({
            "event": "room_closed", "room": room,
            "code": code.0, "name": code.name(), "detail": detail,
        }),
        Event::TokenWillExpire { expires_at_ms } => json!({
            "event": "token_will_expire", "expires_at_ms": expires_at_ms,
        }),
        Event::Disconnected { code, reason } => json!({
            "event": "disconnected",
            "code": code,
            "name": code.map(close::name),
            "reason": reason,
        }),
    }
}

/// The error fields every failure line carries: `ok`, `code`, `error`, `detail`.
pub fn error_fields(error: &ClientError) -> Map<String, Value> {
    let code: ErrorCode = error.code();
    let mut object = Map::new();
    object.insert("ok".into(), false.into());
    object.insert("code".into(), code.0.into());
    object.insert("error".into(), code.name().into());
    object.insert("detail".into(), error.detail().into());
    object
}

/// The result of a send: `{"ok":true,"kind":..,"room":..,"message_id":N}` or the error.
pub fn sent_json(kind: &str, room: &str, result: &Result<u64, ClientError>) -> Value {
    match result {
        Ok(id) => json!({ "ok": true, "kind": kind, "room": room, "message_id": id }),
        Err(error) => {
            let mut object = Map::new();
            object.insert("kind".into(), kind.into());
            object.insert("room".into(), room.into());
            object.extend(error_fields(error));
            Value::Object(object)
        }
    }
}

/// The result of a login: `{"event":"login","room":..,"ok":true}` or with the error fields.
pub fn login_json(room: &str, result: &Result<(), ClientError>) -> Value {
    let mut object = Map::new();
    object.insert("event".into(), "login".into());
    object.insert("room".into(), room.into());
    match result {
        Ok(()) => {
            object.insert("ok".into(), true.into());
        }
        Err(error) => object.extend(error_fields(error)),
    }
    Value::Object(object)
}

/// The result of an automatic token renewal: `{"event":"token_renewed","ok":true}` or with
/// the error fields.
pub fn renewal_json(result: &Result<(), ClientError>) -> Value {
    let mut object = Map::new();
    object.insert("event".into(), "token_renewed".into());
    match result {
        Ok(()) => {
            object.insert("ok".into(), true.into());
        }
        Err(error) => object.extend(error_fields(error)),
    }
    Value::Object(object)
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
        Event::Broadcasts { room, messages } => messages
            .iter()
            .map(|m| format!("[{room}] {}: {}  #{}", who(&m.from), text(&m.payload), m.id))
            .collect(),
        Event::Barrages { room, messages } => messages
            .iter()
            .map(|m| {
                format!("[{room}] {} (barrage): {}  #{}", who(&m.from), text(&m.payload), m.id)
            })
            .collect(),
        Event::Command { room, message: m } => {
            vec![format!("[{room}] {} (command): {}  #{}", who(&m.from), text(&m.payload), m.id)]
        }
        Event::RoomClosed { room, code, detail } => {
            vec![format!("[{room}] room closed: {code}: {detail}")]
        }
        Event::TokenWillExpire { expires_at_ms } => {
            vec![format!("token expires at {expires_at_ms} ms since the epoch")]
        }
        Event::Disconnected { code, reason } => vec![match code {
            Some(code) => format!("disconnected: {} ({code}): {reason}", close::name(*code)),
            None => format!("disconnected: {reason}"),
        }],
    }
}

/// An error as one readable line.
pub fn error_line(error: &ClientError) -> String {
    format!("error: {}: {}", error.code(), error.detail())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            event_json(&event),
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
            event_json(&closed),
            json!({"event":"room_closed","room":"lobby","code":3003,
                   "name":"KICKED_LOGGED_IN_ELSEWHERE","detail":"elsewhere"})
        );
        let gone = Event::Disconnected { code: Some(3), reason: "bye".into() };
        assert_eq!(
            event_json(&gone),
            json!({"event":"disconnected","code":3,"name":"SHUTDOWN","reason":"bye"})
        );
        let lost = Event::Disconnected { code: None, reason: "timed out".into() };
        assert_eq!(
            event_json(&lost),
            json!({"event":"disconnected","code":null,"name":null,"reason":"timed out"})
        );
        assert_eq!(event_lines(&gone), vec!["disconnected: SHUTDOWN (3): bye"]);
    }

    #[test]
    fn results_and_errors() {
        assert_eq!(
            sent_json("broadcast", "lobby", &Ok(7)),
            json!({"ok":true,"kind":"broadcast","room":"lobby","message_id":7})
        );
        let error =
            ClientError::Refused { code: ErrorCode::PAYLOAD_TOO_LARGE, detail: "big".into() };
        assert_eq!(
            sent_json("barrage", "lobby", &Err(error.clone())),
            json!({"ok":false,"kind":"barrage","room":"lobby","code":1002,
                   "error":"PAYLOAD_TOO_LARGE","detail":"big"})
        );
        assert_eq!(login_json("lobby", &Ok(())), json!({"event":"login","room":"lobby","ok":true}));
        assert_eq!(
            login_json("lobby", &Err(ClientError::Timeout)),
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
                from: User { id: "al".into(), name: "al".into() },
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
            event_json(&command),
            json!({"event":"command","room":"r","message":
                {"id":9,"sent_at_ms":2,"from":{"id":"bob","name":"Bob"},"text":"go"}})
        );
    }
}
