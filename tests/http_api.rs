//! The HTTP listener over loopback: the server API's routes (auth, validation, refusals with
//! their documented codes) and what raw QUIC members receive from them, `/metrics`, and the
//! health routes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use qrelay::http::api::MAX_REASON;
use qrelay::protocol::{
    CommandMessage, ErrorCode, LaneEvent, LaneHeader, MAX_PAYLOAD, MAX_ROOM_ID, MAX_SERVER_FRAME,
    Outcome, Recover, Request, SYSTEM_SESSION, SYSTEM_USER_ID, ServerDatagram, User,
    decode_datagram,
};
use qrelay::server::{RateLimits, ServerConfig};
use qrelay::transport::FrameReader;
use reqwest::Method;
use serde_json::{Value, json};

/// The test config with the HTTP listener on an ephemeral loopback port.
fn http_config() -> ServerConfig {
    ServerConfig { http: Some("127.0.0.1:0".parse().unwrap()), ..test_config() }
}

/// A relay with its HTTP listener, and a client for it.
async fn start(config: ServerConfig) -> (TestRelay, Api) {
    let relay = TestRelay::start(config).await;
    let api = Api::new(&relay);
    (relay, api)
}

/// How a request authenticates.
#[derive(Debug, Clone, Copy)]
enum Auth {
    /// `Authorization: Bearer API_KEY`.
    Key,
    /// No `Authorization` header.
    Missing,
    /// This `Authorization` header.
    Header(&'static str),
}

/// An HTTP client for one relay's listener.
struct Api {
    client: reqwest::Client,
    base: String,
}

/// An HTTP answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Api {
    fn new(relay: &TestRelay) -> Api {
        // reqwest is built without a default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = relay.handle.http_addr().expect("the relay has an HTTP listener");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Api { client, base: format!("http://{addr}") }
    }

    /// Sends one request; `body` is sent as `application/json`.
    async fn send(&self, method: Method, path: &str, auth: Auth, body: Option<&str>) -> Answer {
        self.try_send(method, path, auth, body).await.expect("HTTP request failed")
    }

    async fn try_send(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        body: Option<&str>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        match auth {
            Auth::Key => request = request.header("authorization", format!("Bearer {API_KEY}")),
            Auth::Missing => {}
            Auth::Header(value) => request = request.header("authorization", value),
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = within(request.send()).await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = within(response.text()).await?;
        Ok(Answer { status, content_type, body })
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Auth::Key, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.post_raw(path, &body.to_string()).await
    }

    async fn post_raw(&self, path: &str, body: &str) -> Answer {
        self.send(Method::POST, path, Auth::Key, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, Auth::Key, None).await
    }

    /// `/metrics`, parsed: each sample line's series (name and labels) and value.
    async fn metrics(&self) -> Metrics {
        let answer = self.send(Method::GET, "/metrics", Auth::Missing, None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.content_type.contains("text"), "{answer:?}");
        assert!(answer.body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
        let samples = answer
            .body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                (series.to_owned(), value.parse::<f64>().expect("a sample value"))
            })
            .collect();
        Metrics { text: answer.body, samples }
    }
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        assert!(self.content_type.starts_with("application/json"), "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The body of a 200 answer.
    #[track_caller]
    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        self.json()
    }

    /// The `message_id` of a successful send.
    #[track_caller]
    fn message_id(&self) -> u64 {
        self.ok()["message_id"].as_u64().unwrap_or_else(|| panic!("no message_id: {self:?}"))
    }

    /// Asserts a refusal in the documented shape: this HTTP status, and
    /// `{"code": N, "error": "NAME", "detail": "..."}` with `code`.
    #[track_caller]
    fn assert_refused(&self, status: u16, code: ErrorCode) {
        assert_eq!(
            (self.status, self.json()["code"].as_u64()),
            (status, Some(code.0.into())),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], code.name(), "{self:?}");
        assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{self:?}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(3), "exactly code, error, detail");
    }
}

/// A `/metrics` scrape.
struct Metrics {
    text: String,
    samples: Vec<(String, f64)>,
}

impl Metrics {
    /// The value of the series `series` (a name, with its labels if it has any).
    #[track_caller]
    fn value(&self, series: &str) -> f64 {
        self.samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }
}

/// A raw member with what its login and lane header said.
struct Member {
    peer: RawPeer,
    lane: FrameReader,
    header: LaneHeader,
    session: u32,
}

/// Logs `user` in to `room` on a new connection, keeping the lane header and session.
async fn member(relay: &TestRelay, user: &str, room: &str) -> Member {
    let mut peer = relay.raw_peer().await;
    let session = match peer.login(relay, user, room).await {
        Outcome::LoggedIn { session, .. } => session,
        other => panic!("{other:?}"),
    };
    let recv = within(peer.conn.accept_uni()).await.unwrap();
    let mut lane = FrameReader::new(recv, MAX_SERVER_FRAME);
    let header: LaneHeader = within(lane.next()).await.unwrap().unwrap();
    assert_eq!(header.room, room);
    Member { peer, lane, header, session }
}

/// The next custom command on a lane, skipping user updates.
async fn next_command(lane: &mut FrameReader) -> CommandMessage {
    loop {
        match next_event(lane).await {
            LaneEvent::Command(command) => return command,
            LaneEvent::UsersJoined(_) | LaneEvent::UsersLeft(_) => continue,
            other => panic!("expected a command, got {other:?}"),
        }
    }
}

/// The `Closed` event that ends a lane, skipping what comes before it.
async fn closed(lane: &mut FrameReader) -> (ErrorCode, String) {
    loop {
        if let LaneEvent::Closed { code, detail } = next_event(lane).await {
            return (code, detail);
        }
    }
}

/// The next `UsersLeft` update on a lane, as user IDs.
async fn next_left(lane: &mut FrameReader) -> Vec<String> {
    loop {
        match next_event(lane).await {
            LaneEvent::UsersLeft(members) => {
                return members.into_iter().map(|m| m.user.id).collect();
            }
            LaneEvent::UsersJoined(_) => continue,
            other => panic!("expected a user update, got {other:?}"),
        }
    }
}

fn system() -> User {
    User { id: SYSTEM_USER_ID.into(), name: "System".into() }
}

/// Every `/v1` route, with a body it would accept.
fn v1_routes() -> Vec<(Method, &'static str, Option<&'static str>)> {
    vec![
        (Method::GET, "/v1/rooms", None),
        (Method::GET, "/v1/rooms/lobby/members", None),
        (Method::POST, "/v1/rooms/lobby/broadcast", Some(r#"{"payload":"hi"}"#)),
        (Method::POST, "/v1/rooms/lobby/barrage", Some(r#"{"payload":"hi"}"#)),
        (Method::POST, "/v1/rooms/lobby/command", Some(r#"{"payload":"hi"}"#)),
        (Method::POST, "/v1/rooms/lobby/kick", Some(r#"{"user":"alice"}"#)),
        (Method::DELETE, "/v1/rooms/lobby", None),
        (Method::POST, "/v1/tokens", Some(r#"{"user":"alice"}"#)),
    ]
}

#[tokio::test]
async fn health_and_metrics_need_no_key_and_readyz_fails_once_shutting_down() {
    let (relay, api) = start(http_config()).await;
    let healthz = api.send(Method::GET, "/healthz", Auth::Missing, None).await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let readyz = api.send(Method::GET, "/readyz", Auth::Missing, None).await;
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready\n"));
    api.metrics().await;
    // An unknown route is a 404 in the API's error shape, with or without a key.
    api.send(Method::GET, "/v2/rooms", Auth::Missing, None)
        .await
        .assert_refused(404, ErrorCode::NOT_FOUND);
    api.get("/v1/nothing").await.assert_refused(404, ErrorCode::NOT_FOUND);
    api.send(Method::DELETE, "/metrics", Auth::Missing, None)
        .await
        .assert_refused(405, ErrorCode::METHOD_NOT_ALLOWED);

    relay.handle.shutdown().await;
    // While the relay drains (and a little after) the listener is up and says it is not ready,
    // so a load balancer stops sending before the process ends.
    let answer = api.send(Method::GET, "/readyz", Auth::Missing, None).await;
    assert_eq!((answer.status, answer.body.as_str()), (503, "shutting down\n"));
}

#[tokio::test]
async fn every_v1_route_refuses_a_missing_or_wrong_key() {
    let (relay, api) = start(http_config()).await;
    let (_alice, _lane) = relay.raw_member("alice", "lobby").await;
    let wrong = [
        Auth::Missing,
        Auth::Header("Bearer wrong-key"),
        Auth::Header("Bearer "),
        Auth::Header("bearer test-api-key-not-for-production-and-more"),
        Auth::Header("Basic dGVzdDp0ZXN0"),
        Auth::Header(API_KEY),
    ];
    for (method, path, body) in v1_routes() {
        for auth in wrong {
            api.send(method.clone(), path, auth, body)
                .await
                .assert_refused(401, ErrorCode::UNAUTHORIZED);
        }
    }
    // Nothing was done: alice is still in the room, which had no broadcast.
    let rooms = api.get("/v1/rooms").await.ok();
    assert_eq!(rooms, json!([{"room": "lobby", "members": 1}]));
    assert_eq!(relay.handle.stats().broadcasts, 0);
    // The scheme's name is case-insensitive.
    let lower = format!("bearer {API_KEY}").leak();
    let answer = api.send(Method::GET, "/v1/rooms", Auth::Header(lower), None).await;
    assert_eq!(answer.ok(), rooms);
}

#[tokio::test]
async fn broadcast_reaches_members_from_the_system_with_the_rooms_next_id() {
    let (relay, api) = start(http_config()).await;
    let mut alice = member(&relay, "alice", "lobby").await;
    let mut bob = member(&relay, "bob", "lobby").await;
    for payload in [&b"one"[..], b"two"] {
        let payload = Bytes::from_static(payload);
        let outcome =
            alice.peer.request(Request::Broadcast { room: "lobby".into(), payload }).await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }

    let id = api.post("/v1/rooms/lobby/broadcast", json!({"payload": "hello"})).await;
    assert_eq!(id.ok(), json!({"message_id": 3}), "after the QUIC senders' 1 and 2");
    let binary = [0u8, 0xff, b'\n', 0x80];
    let base64 = json!({"payload_base64": "AP8KgA=="});
    assert_eq!(api.post("/v1/rooms/lobby/broadcast", base64).await.message_id(), 4);
    let backend = User { id: "backend".into(), name: "Backend ✓".into() };
    let named =
        json!({"payload": "from a named sender", "from": {"id": "backend", "name": "Backend ✓"}});
    assert_eq!(api.post("/v1/rooms/lobby/broadcast", named).await.message_id(), 5);
    // A full-size payload is accepted.
    let full = "x".repeat(MAX_PAYLOAD);
    assert_eq!(
        api.post("/v1/rooms/lobby/broadcast", json!({"payload": full})).await.message_id(),
        6
    );

    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend(next_broadcasts(&mut bob.lane).await);
    }
    let seen: Vec<(u64, User, Bytes)> =
        got.into_iter().map(|m| (m.id, m.from, m.payload)).collect();
    let alice_user = User { id: "alice".into(), name: "alice name".into() };
    assert_eq!(
        seen,
        vec![
            (1, alice_user.clone(), Bytes::from_static(b"one")),
            (2, alice_user, Bytes::from_static(b"two")),
            (3, system(), Bytes::from_static(b"hello")),
            (4, system(), Bytes::copy_from_slice(&binary)),
            (5, backend, Bytes::from_static(b"from a named sender")),
            (6, system(), Bytes::from(full)),
        ]
    );
    // alice gets every API broadcast too (she only skips her own).
    let first = next_broadcasts(&mut alice.lane).await;
    assert_eq!((first[0].id, &first[0].from), (3, &system()));

    // The API's broadcasts are in the history: a recovering login gets them replayed.
    let mut carol = relay.raw_peer().await;
    let token = relay.token("carol");
    let user = User { id: "carol".into(), name: "carol".into() };
    let recover = Some(Recover { epoch: bob.header.epoch, last_id: 2 });
    let outcome =
        carol.request(Request::Login { room: "lobby".into(), user, token, recover }).await;
    assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
    let mut carol_lane = carol.accept_lane("lobby").await;
    loop {
        match next_event(&mut carol_lane).await {
            LaneEvent::UsersJoined(_) => continue,
            LaneEvent::Recovered { complete, replayed, .. } => {
                assert_eq!((complete, replayed), (true, 4));
                break;
            }
            other => panic!("expected Recovered, got {other:?}"),
        }
    }
    let replayed = next_broadcasts(&mut carol_lane).await;
    assert_eq!(replayed.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 4, 5, 6]);

    // Room IDs with punctuation are percent-encoded in the path.
    let _dave = member(&relay, "dave", "r&d#1%").await;
    let sent = api.post("/v1/rooms/r%26d%231%25/broadcast", json!({"payload": "hi"})).await;
    assert_eq!(sent.message_id(), 1);
}

#[tokio::test]
async fn rooms_and_members_are_listed() {
    let (relay, api) = start(http_config()).await;
    assert_eq!(api.get("/v1/rooms").await.ok(), json!([]));
    let _bob = relay.raw_member("bob", "lobby").await;
    let _alice = relay.raw_member("alice", "lobby").await;
    let _carol = relay.raw_member("carol", "attic").await;
    assert_eq!(
        api.get("/v1/rooms").await.ok(),
        json!([{"room": "attic", "members": 1}, {"room": "lobby", "members": 2}])
    );
    assert_eq!(
        api.get("/v1/rooms/lobby/members").await.ok(),
        json!([{"id": "alice", "name": "alice name"}, {"id": "bob", "name": "bob name"}])
    );
    api.get("/v1/rooms/cellar/members").await.assert_refused(404, ErrorCode::ROOM_NOT_FOUND);
    let too_long = "r".repeat(MAX_ROOM_ID + 1);
    api.get(&format!("/v1/rooms/{too_long}/members"))
        .await
        .assert_refused(400, ErrorCode::INVALID_ROOM_ID);
    api.get("/v1/rooms/bad%20room/members").await.assert_refused(400, ErrorCode::INVALID_ROOM_ID);
    // A path that does not decode is refused in the same shape.
    api.get("/v1/rooms/%FF/members").await.assert_refused(400, ErrorCode::BAD_REQUEST);
}

#[tokio::test]
async fn message_bodies_are_checked_like_quic_messages_and_refusals_send_nothing() {
    let (relay, api) = start(http_config()).await;
    let mut alice = member(&relay, "alice", "lobby").await;
    let too_large = "x".repeat(MAX_PAYLOAD + 1);
    let refusals: Vec<(String, u16, ErrorCode)> = vec![
        ("{".into(), 400, ErrorCode::BAD_REQUEST),
        ("[1, 2]".into(), 400, ErrorCode::BAD_REQUEST),
        (r#"{"payload": 5}"#.into(), 400, ErrorCode::BAD_REQUEST),
        (r#"{"payload": "hi", "colour": "red"}"#.into(), 400, ErrorCode::BAD_REQUEST),
        ("{}".into(), 400, ErrorCode::BAD_REQUEST),
        (r#"{"payload": "hi", "payload_base64": "aGk="}"#.into(), 400, ErrorCode::BAD_REQUEST),
        (r#"{"payload_base64": "not base64!"}"#.into(), 400, ErrorCode::BAD_REQUEST),
        (r#"{"payload": ""}"#.into(), 400, ErrorCode::PAYLOAD_EMPTY),
        (r#"{"payload_base64": ""}"#.into(), 400, ErrorCode::PAYLOAD_EMPTY),
        (json!({"payload": too_large}).to_string(), 400, ErrorCode::PAYLOAD_TOO_LARGE),
        (
            json!({"payload": "hi", "from": {"id": "bad id", "name": "x"}}).to_string(),
            400,
            ErrorCode::INVALID_USER_ID,
        ),
        (
            json!({"payload": "hi", "from": {"id": "backend", "name": ""}}).to_string(),
            400,
            ErrorCode::INVALID_USER_NAME,
        ),
        (
            json!({"payload": "hi", "from": {"id": "system", "name": "Fake"}}).to_string(),
            400,
            ErrorCode::INVALID_USER_ID,
        ),
        (
            json!({"payload": "hi", "from": {"id": "backend"}}).to_string(),
            400,
            ErrorCode::BAD_REQUEST,
        ),
    ];
    for kind in ["broadcast", "barrage", "command"] {
        for (body, status, code) in &refusals {
            let answer = api.post_raw(&format!("/v1/rooms/lobby/{kind}"), body).await;
            // A barrage cannot name its sender at all.
            let code = match kind == "barrage" && body.contains("\"from\"") {
                true => ErrorCode::BAD_REQUEST,
                false => *code,
            };
            assert_eq!(answer.status, *status, "{kind} {body}: {answer:?}");
            answer.assert_refused(*status, code);
        }
        let hi = json!({"payload": "hi"});
        api.post(&format!("/v1/rooms/nowhere/{kind}"), hi.clone())
            .await
            .assert_refused(404, ErrorCode::ROOM_NOT_FOUND);
        api.post(&format!("/v1/rooms/bad%20room/{kind}"), hi.clone())
            .await
            .assert_refused(400, ErrorCode::INVALID_ROOM_ID);
        // A body that is not declared JSON (curl -d without -H) is refused, not guessed.
        let url = format!("{}/v1/rooms/lobby/{kind}", api.base);
        let untyped = api
            .client
            .post(url)
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(hi.to_string());
        let response = within(untyped.send()).await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
    }
    // `to` belongs to commands only: a broadcast or barrage that names targets would reach
    // everyone, so it is refused.
    for kind in ["broadcast", "barrage"] {
        api.post(&format!("/v1/rooms/lobby/{kind}"), json!({"payload": "hi", "to": ["alice"]}))
            .await
            .assert_refused(400, ErrorCode::BAD_REQUEST);
    }
    let named = json!({"payload": "hi", "from": {"id": "backend", "name": "Backend"}});
    api.post("/v1/rooms/lobby/barrage", named).await.assert_refused(400, ErrorCode::BAD_REQUEST);
    // None of that reached the room: the next broadcast is the room's first, alice's first event.
    assert_eq!(
        api.post("/v1/rooms/lobby/broadcast", json!({"payload": "ok"})).await.message_id(),
        1
    );
    let first = next_broadcasts(&mut alice.lane).await;
    assert_eq!((first[0].id, &first[0].payload[..]), (1, &b"ok"[..]));
    let stats = relay.handle.stats();
    assert_eq!((stats.broadcasts, stats.barrages, stats.commands), (1, 0, 0));
    let datagram =
        tokio::time::timeout(Duration::from_millis(100), alice.peer.conn.read_datagram());
    assert!(datagram.await.is_err(), "a refused barrage was sent");
}

#[tokio::test]
async fn commands_reach_the_listed_users_or_everyone() {
    let (relay, api) = start(http_config()).await;
    let (_alice, mut alice) = relay.raw_member("alice", "lobby").await;
    let (_bob, mut bob) = relay.raw_member("bob", "lobby").await;
    let (_carol, mut carol) = relay.raw_member("carol", "lobby").await;

    let to_bob = json!({"payload": "just bob", "to": ["bob"]});
    let first = api.post("/v1/rooms/lobby/command", to_bob).await.message_id();
    let everyone =
        api.post("/v1/rooms/lobby/command", json!({"payload": "all"})).await.message_id();
    let to_none = json!({"payload": "all again", "to": []});
    let again = api.post("/v1/rooms/lobby/command", to_none).await.message_id();
    assert!(first < everyone && everyone < again, "{first} {everyone} {again}");

    let command = next_command(&mut bob).await;
    assert_eq!(
        (command.id, command.from, &command.payload[..]),
        (first, system(), &b"just bob"[..])
    );
    for lane in [&mut alice, &mut bob, &mut carol] {
        let command = next_command(lane).await;
        assert_eq!((command.id, &command.payload[..]), (everyone, &b"all"[..]), "{command:?}");
        assert_eq!(next_command(lane).await.id, again);
    }

    let named = json!({"payload": "hi", "to": ["carol"], "from": {"id": "backend", "name": "B"}});
    api.post("/v1/rooms/lobby/command", named).await.message_id();
    let command = next_command(&mut carol).await;
    assert_eq!(command.from, User { id: "backend".into(), name: "B".into() });

    let unknown = json!({"payload": "hi", "to": ["bob", "zed"]});
    api.post("/v1/rooms/lobby/command", unknown)
        .await
        .assert_refused(404, ErrorCode::UNKNOWN_TARGET_USER);
    let invalid = json!({"payload": "hi", "to": ["not a user id"]});
    api.post("/v1/rooms/lobby/command", invalid)
        .await
        .assert_refused(400, ErrorCode::INVALID_TARGETS);
    let too_many: Vec<String> =
        (0..=qrelay::protocol::MAX_COMMAND_TARGETS).map(|i| format!("u{i}")).collect();
    api.post("/v1/rooms/lobby/command", json!({"payload": "hi", "to": too_many}))
        .await
        .assert_refused(400, ErrorCode::INVALID_TARGETS);
    assert_eq!(relay.handle.stats().commands, 4);
}

#[tokio::test]
async fn barrage_arrives_as_a_datagram() {
    let (relay, api) = start(http_config()).await;
    let alice = member(&relay, "alice", "lobby").await;
    let bob = member(&relay, "bob", "lobby").await;
    let id = api.post("/v1/rooms/lobby/barrage", json!({"payload": "boom"})).await.message_id();
    let again = api.post("/v1/rooms/lobby/barrage", json!({"payload_base64": "AAE="})).await;
    let again = again.message_id();
    assert_ne!(id, again);
    for receiver in [&alice, &bob] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let datagram = within(receiver.peer.conn.read_datagram()).await.unwrap();
            let ServerDatagram::Barrage(message) = decode_datagram(&datagram).unwrap();
            assert_eq!(message.room_number, receiver.header.room_number);
            // A session that is no connection's: the server API's.
            assert_eq!(message.sender, SYSTEM_SESSION);
            assert_ne!(receiver.session, SYSTEM_SESSION);
            got.push((message.id, message.payload));
        }
        got.sort();
        let mut expected =
            vec![(id, Bytes::from_static(b"boom")), (again, Bytes::from_static(&[0, 1]))];
        expected.sort();
        assert_eq!(got, expected);
    }
    assert_eq!(relay.handle.stats().barrages, 2);
}

#[tokio::test]
async fn the_client_library_names_the_system_as_the_sender_of_every_kind() {
    let (relay, api) = start(http_config()).await;
    let user = User { id: "bob".into(), name: "Bob".into() };
    let config =
        qrelay::client::ClientConfig::new(relay.addr, "localhost", vec![relay.ca.clone()], user);
    let (bob, mut events) = within(qrelay::client::Client::connect(config)).await.unwrap();
    within(bob.login_room("lobby", &relay.token("bob"))).await.unwrap();
    for kind in ["broadcast", "barrage", "command"] {
        api.post(&format!("/v1/rooms/lobby/{kind}"), json!({"payload": kind})).await.message_id();
    }
    use qrelay::client::Event;
    let mut got = Vec::new();
    while got.len() < 3 {
        match within(events.next()).await.expect("bob's events ended") {
            Event::Broadcasts { messages, .. } => {
                got.extend(messages.into_iter().map(|m| (m.payload, Some(m.from))));
            }
            Event::Barrages { messages, .. } => {
                got.extend(messages.into_iter().map(|m| (m.payload, m.from)));
            }
            Event::Command { message, .. } => got.push((message.payload, Some(message.from))),
            _ => {}
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let from = Some(system());
    let kinds = ["barrage", "broadcast", "command"];
    let expected: Vec<(Bytes, Option<User>)> =
        kinds.iter().map(|kind| (Bytes::from(kind.to_string()), from.clone())).collect();
    assert_eq!(got, expected);
    assert_eq!(bob.stats().barrage_unknown_sender, 0);
    bob.close().await;
}

#[tokio::test]
async fn kick_closes_the_members_lane_and_tells_the_others() {
    let (relay, api) = start(http_config()).await;
    let (_alice, mut alice) = relay.raw_member("alice", "lobby").await;
    let (bob_peer, mut bob) = relay.raw_member("bob", "lobby").await;
    // A reason travels in the lane's Closed event: it is bounded.
    let long = "r".repeat(MAX_REASON + 1);
    api.post("/v1/rooms/lobby/kick", json!({"user": "bob", "reason": long}))
        .await
        .assert_refused(400, ErrorCode::BAD_REQUEST);
    let kicked = api.post("/v1/rooms/lobby/kick", json!({"user": "bob", "reason": "spam"})).await;
    assert_eq!(kicked.ok(), json!({"kicked": "bob"}));
    assert_eq!(closed(&mut bob).await, (ErrorCode::KICKED_BY_SERVER, "spam".to_string()));
    assert_eq!(next_left(&mut alice).await, ["bob"]);
    assert_eq!(
        api.get("/v1/rooms/lobby/members").await.ok(),
        json!([{"id": "alice", "name": "alice name"}])
    );

    api.post("/v1/rooms/lobby/kick", json!({"user": "bob"}))
        .await
        .assert_refused(404, ErrorCode::USER_NOT_FOUND);
    api.post("/v1/rooms/lobby/kick", json!({"user": "zed"}))
        .await
        .assert_refused(404, ErrorCode::USER_NOT_FOUND);
    api.post("/v1/rooms/nowhere/kick", json!({"user": "alice"}))
        .await
        .assert_refused(404, ErrorCode::ROOM_NOT_FOUND);
    api.post_raw("/v1/rooms/lobby/kick", "{").await.assert_refused(400, ErrorCode::BAD_REQUEST);
    api.post("/v1/rooms/lobby/kick", json!({"reason": "no user"}))
        .await
        .assert_refused(400, ErrorCode::BAD_REQUEST);

    // A kick is not a ban: bob's connection may log in again.
    let mut bob_peer = bob_peer;
    let outcome = bob_peer.login(&relay, "bob", "lobby").await;
    assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
    let mut bob_lane = bob_peer.accept_lane("lobby").await;
    // Without a reason the lane still says why; a reason may use the whole limit.
    api.post("/v1/rooms/lobby/kick", json!({"user": "alice"})).await.ok();
    let (code, detail) = closed(&mut alice).await;
    assert_eq!(code, ErrorCode::KICKED_BY_SERVER);
    assert!(!detail.is_empty());
    let longest = "é".repeat(MAX_REASON / 2);
    api.post("/v1/rooms/lobby/kick", json!({"user": "bob", "reason": longest})).await.ok();
    assert_eq!(closed(&mut bob_lane).await, (ErrorCode::KICKED_BY_SERVER, longest));
}

#[tokio::test]
async fn closing_a_room_ends_every_lane_and_a_new_login_starts_a_new_epoch() {
    let (relay, api) = start(http_config()).await;
    let mut alice = member(&relay, "alice", "stage").await;
    let mut bob = member(&relay, "bob", "stage").await;
    let mut carol = member(&relay, "carol", "lobby").await;
    let outcome = alice.peer.broadcast("stage", b"before").await;
    assert!(matches!(outcome, Outcome::Sent { message_id: 1 }), "{outcome:?}");

    let long = "r".repeat(MAX_REASON + 1);
    api.delete(&format!("/v1/rooms/stage?reason={long}"))
        .await
        .assert_refused(400, ErrorCode::BAD_REQUEST);
    // Not UTF-8, a right-to-left override, a misspelt parameter: refused, nothing closed.
    for query in ["reason=%FF", "reason=a%E2%80%AEb", "reasn=x"] {
        api.delete(&format!("/v1/rooms/stage?{query}"))
            .await
            .assert_refused(400, ErrorCode::BAD_REQUEST);
    }
    let answer = api.delete("/v1/rooms/stage?reason=show%20over").await;
    assert_eq!(answer.ok(), json!({"closed": "stage"}));
    for lane in [&mut alice.lane, &mut bob.lane] {
        assert_eq!(closed(lane).await, (ErrorCode::ROOM_CLOSED, "show over".to_string()));
    }
    assert_eq!(api.get("/v1/rooms").await.ok(), json!([{"room": "lobby", "members": 1}]));
    api.get("/v1/rooms/stage/members").await.assert_refused(404, ErrorCode::ROOM_NOT_FOUND);
    api.delete("/v1/rooms/stage").await.assert_refused(404, ErrorCode::ROOM_NOT_FOUND);
    api.delete("/v1/rooms/bad%20room").await.assert_refused(400, ErrorCode::INVALID_ROOM_ID);
    api.delete("/v1/rooms/lobby?reason=a&reason=b")
        .await
        .assert_refused(400, ErrorCode::BAD_REQUEST);

    // A new login creates the room anew: a new epoch, IDs from 1, no history to recover.
    let dave = member(&relay, "dave", "stage").await;
    assert_ne!(dave.header.epoch, alice.header.epoch);
    let outcome = alice.peer.login(&relay, "alice", "stage").await;
    assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
    let _lane = alice.peer.accept_lane("stage").await;
    let outcome = alice.peer.broadcast("stage", b"after").await;
    assert!(matches!(outcome, Outcome::Sent { message_id: 1 }), "{outcome:?}");
    // Without a reason the lanes still say why.
    api.delete("/v1/rooms/lobby").await.ok();
    let (code, detail) = closed(&mut carol.lane).await;
    assert_eq!(code, ErrorCode::ROOM_CLOSED);
    assert!(!detail.is_empty());
}

#[tokio::test]
async fn minted_tokens_log_in_over_quic_and_system_is_reserved() {
    let (relay, api) = start(http_config()).await;
    let before = qrelay::server::now_ms();
    let minted =
        api.post("/v1/tokens", json!({"user": "dora", "rooms": ["lobby"], "ttl_secs": 60})).await;
    let minted = minted.ok();
    let token = minted["token"].as_str().expect("a token").to_owned();
    let expires = minted["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!(
        (before + 55_000..=before + 65_000).contains(&expires),
        "{expires} is not about 60 s after {before}"
    );
    let user = User { id: "dora".into(), name: "Dora".into() };
    let mut dora = relay.raw_peer().await;
    let login = |room: &str| Request::Login {
        room: room.into(),
        user: user.clone(),
        token: token.clone(),
        recover: None,
    };
    let outcome = dora.request(login("lobby")).await;
    assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
    let outcome = dora.request(login("attic")).await;
    assert!(
        matches!(outcome, Outcome::Refused { code: ErrorCode::ROOM_NOT_GRANTED, .. }),
        "{outcome:?}"
    );

    // Defaults: every room, may publish. A listen-only token cannot send.
    let any = api.post("/v1/tokens", json!({"user": "erin"})).await.ok();
    let quiet = api.post("/v1/tokens", json!({"user": "fay", "publish": false})).await.ok();
    for (id, minted, sends) in [("erin", any, true), ("fay", quiet, false)] {
        let mut peer = relay.raw_peer().await;
        let token = minted["token"].as_str().unwrap().to_owned();
        let user = User { id: id.into(), name: id.into() };
        let outcome =
            peer.request(Request::Login { room: "attic".into(), user, token, recover: None }).await;
        assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
        let _lane = peer.accept_lane("attic").await;
        let outcome = peer.broadcast("attic", b"hi").await;
        match sends {
            true => assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}"),
            false => assert!(
                matches!(outcome, Outcome::Refused { code: ErrorCode::PUBLISH_NOT_GRANTED, .. }),
                "{outcome:?}"
            ),
        }
    }

    let refusals = [
        (json!({"user": SYSTEM_USER_ID}), ErrorCode::INVALID_USER_ID),
        (json!({"user": "bad id"}), ErrorCode::INVALID_USER_ID),
        (json!({"user": "dora", "rooms": ["bad room"]}), ErrorCode::INVALID_ROOM_ID),
        (json!({"user": "dora", "ttl_secs": 0}), ErrorCode::BAD_REQUEST),
        (json!({"user": "dora", "ttl_secs": 30 * 24 * 3600 + 1}), ErrorCode::BAD_REQUEST),
        (json!({"user": "dora", "ttl_secs": -1}), ErrorCode::BAD_REQUEST),
        (json!({"rooms": ["lobby"]}), ErrorCode::BAD_REQUEST),
        (json!({"user": "dora", "admin": true}), ErrorCode::BAD_REQUEST),
    ];
    for (body, code) in refusals {
        api.post("/v1/tokens", body).await.assert_refused(400, code);
    }
    api.post_raw("/v1/tokens", "user=dora").await.assert_refused(400, ErrorCode::BAD_REQUEST);

    // Nobody logs in as the system sender over QUIC either, whatever the token.
    let mut peer = relay.raw_peer().await;
    let outcome = peer.login(&relay, SYSTEM_USER_ID, "lobby").await;
    assert!(
        matches!(outcome, Outcome::Refused { code: ErrorCode::INVALID_USER_ID, .. }),
        "{outcome:?}"
    );
}

/// Sends `body` to `path` until it is refused; returns how many were accepted, the refusal,
/// and how long the sends took.
async fn send_until_refused(api: &Api, path: &str, body: Value) -> (u64, Answer, Duration) {
    let started = Instant::now();
    // Limits of 10/s or less are hit long before this many sends over loopback.
    for accepted in 0..1000 {
        let answer = api.post(path, body.clone()).await;
        if answer.status != 200 {
            return (accepted, answer, started.elapsed());
        }
    }
    panic!("{path} was never refused");
}

/// Most sends a token bucket of `rate` per second, full at first, lets through in `elapsed`.
fn bucket_allows(rate: f64, elapsed: Duration) -> u64 {
    (rate.max(1.0) + rate * elapsed.as_secs_f64()).floor() as u64
}

#[tokio::test]
async fn api_sends_use_the_rooms_budget_and_a_named_senders_own() {
    let config = ServerConfig { limits: RateLimits::default(), ..http_config() };
    let limits = config.limits.clone();
    let (relay, api) = start(config).await;
    let (mut alice, _lane) = relay.raw_member("alice", "lobby").await;
    let started = Instant::now();
    // alice spends part of the room's broadcast budget over QUIC (2 is her own limit).
    for _ in 0..2 {
        let outcome = alice.broadcast("lobby", b"quic").await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
    // The system sender has no user limit, only the room's: with the room's burst of 10, the
    // 9th API broadcast at the earliest (the 11th of the room) is refused.
    let hi = json!({"payload": "hi"});
    let (accepted, refusal, _) = send_until_refused(&api, "/v1/rooms/lobby/broadcast", hi).await;
    refusal.assert_refused(429, ErrorCode::ROOM_RATE_LIMITED);
    let room = 2 + accepted;
    assert!(
        (10..=bucket_allows(limits.broadcast_per_room, started.elapsed())).contains(&room),
        "{room} broadcasts in the room before the refusal"
    );

    // A named sender also has its user budget (2 broadcasts per second) in that room.
    let (_bob, _bob_lane) = relay.raw_member("bob", "attic").await;
    let named = json!({"payload": "hi", "from": {"id": "backend", "name": "Backend"}});
    let (accepted, refusal, elapsed) =
        send_until_refused(&api, "/v1/rooms/attic/broadcast", named).await;
    refusal.assert_refused(429, ErrorCode::USER_RATE_LIMITED);
    assert!(
        (2..=bucket_allows(limits.broadcast_per_user, elapsed)).contains(&accepted),
        "{accepted} named broadcasts before the refusal"
    );
    // Barrage has a room budget (20 per second) and no user budget.
    let (accepted, refusal, elapsed) =
        send_until_refused(&api, "/v1/rooms/attic/barrage", json!({"payload": "b"})).await;
    refusal.assert_refused(429, ErrorCode::ROOM_RATE_LIMITED);
    assert!((20..=bucket_allows(limits.barrage_per_room, elapsed)).contains(&accepted));
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let (relay, api) = start(http_config()).await;
    let before = api.metrics().await;
    for gauge in ["qrelay_connections", "qrelay_rooms", "qrelay_members"] {
        assert_eq!(before.value(gauge), 0.0, "{gauge}");
    }

    let (mut alice, _alice_lane) = relay.raw_member("alice", "lobby").await;
    let (_bob, mut bob_lane) = relay.raw_member("bob", "lobby").await;
    for _ in 0..3 {
        let outcome = alice.broadcast("lobby", b"hi").await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
    api.post("/v1/rooms/lobby/broadcast", json!({"payload": "api"})).await.message_id();
    api.post("/v1/rooms/lobby/command", json!({"payload": "c"})).await.message_id();
    api.post("/v1/rooms/lobby/barrage", json!({"payload": "b"})).await.message_id();
    let refused = alice.broadcast("nowhere", b"x").await;
    assert!(matches!(refused, Outcome::Refused { .. }), "{refused:?}");
    let mut received = 0;
    while received < 4 {
        received += next_broadcasts(&mut bob_lane).await.len();
    }

    let after = api.metrics().await;
    let moved = |series: &str| after.value(series) - before.value(series);
    assert_eq!(moved("qrelay_logins_total"), 2.0);
    assert_eq!(moved("qrelay_connections_accepted_total"), 2.0);
    assert_eq!(moved("qrelay_broadcasts_total"), 4.0);
    // alice's 3 reach bob; the API's reaches both.
    assert_eq!(moved("qrelay_broadcast_deliveries_total"), 5.0);
    assert_eq!(moved("qrelay_commands_total"), 1.0);
    assert_eq!(moved("qrelay_barrages_total"), 1.0);
    assert_eq!(moved("qrelay_datagrams_sent_total"), 2.0);
    assert!(moved("qrelay_requests_refused_total") >= 1.0);
    // Refusals by kind and code: alice's broadcast to a room she is not in, and a refused
    // API request.
    let refused = r#"qrelay_refusals_total{kind="broadcast",code="NOT_LOGGED_IN"}"#;
    assert_eq!(after.value(refused), 1.0);
    api.post("/v1/rooms/nowhere/broadcast", json!({"payload": "x"}))
        .await
        .assert_refused(404, ErrorCode::ROOM_NOT_FOUND);
    let scraped = api.metrics().await;
    let refused = r#"qrelay_refusals_total{kind="broadcast",code="ROOM_NOT_FOUND"}"#;
    assert_eq!(scraped.value(refused), 1.0);
    assert!(moved("qrelay_api_requests_total") >= 3.0);
    assert_eq!(after.value("qrelay_connections"), 2.0);
    assert_eq!(after.value("qrelay_rooms"), 1.0);
    assert_eq!(after.value("qrelay_members"), 2.0);
    assert_eq!(after.value("qrelay_lanes"), 2.0);
    assert!(after.value("qrelay_history_bytes") > 0.0);
    assert!(after.value("qrelay_process_resident_memory_bytes") > 0.0);
    for counter in ["webhooks_sent", "webhooks_failed", "webhooks_dropped", "slow_receivers"] {
        assert_eq!(after.value(&format!("qrelay_{counter}_total")), 0.0, "{counter}");
    }
    // Histograms: buckets up to +Inf, count and sum; every handshake was timed.
    for histogram in ["qrelay_handshake_seconds", "qrelay_lane_delay_seconds"] {
        let count = after.value(&format!("{histogram}_count"));
        assert_eq!(after.value(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), count);
        after.value(&format!("{histogram}_sum"));
        assert!(after.text.contains(&format!("# TYPE {histogram} histogram")));
    }
    assert_eq!(after.value("qrelay_handshake_seconds_count"), 2.0);
    assert!(after.value("qrelay_lane_delay_seconds_count") > 0.0);
    // Every series has the qrelay_ prefix.
    for (series, _) in &after.samples {
        assert!(series.starts_with("qrelay_"), "{series}");
    }
}

#[tokio::test]
async fn without_an_api_key_the_v1_routes_are_off() {
    // A library user who gives the identity no key: /v1 is refused, metrics stay open.
    let pki = qrelay::certs::DevPki::generate().unwrap();
    let (chain, key) = pki.server_identity().unwrap();
    let identity = qrelay::server::Identity::new(chain, key, b"another secret, for this test");
    let server = qrelay::server::Server::bind(http_config(), identity).unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        base: format!("http://{}", handle.http_addr().unwrap()),
    };
    api.get("/v1/rooms").await.assert_refused(401, ErrorCode::UNAUTHORIZED);
    api.send(Method::GET, "/v1/rooms", Auth::Header("Bearer "), None)
        .await
        .assert_refused(401, ErrorCode::UNAUTHORIZED);
    api.metrics().await;
    handle.shutdown().await;
    within(running).await.unwrap();
}

#[tokio::test]
async fn docs_name_every_route_metric_and_code() {
    let api_md = include_str!("../docs/API.md");
    let protocol_md = include_str!("../docs/PROTOCOL.md");
    for (method, path, _) in v1_routes() {
        let template = path.replace("/lobby", "/{room}");
        assert!(api_md.contains(&format!("### `{method} {template}`")), "{method} {template}");
    }
    for route in ["GET /healthz", "GET /readyz", "GET /metrics"] {
        assert!(api_md.contains(&format!("`{route}`")), "{route}");
    }
    let (_relay, api) = start(http_config()).await;
    let metrics = api.metrics().await;
    for line in metrics.text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        let exported = match kind {
            "counter" => format!("`{name}_total`"),
            _ => format!("`{name}`"),
        };
        assert!(api_md.contains(&exported), "docs/API.md does not list {exported}");
    }
    let codes = [
        ErrorCode::KICKED_BY_SERVER,
        ErrorCode::ROOM_CLOSED,
        ErrorCode::UNAUTHORIZED,
        ErrorCode::BAD_REQUEST,
        ErrorCode::ROOM_NOT_FOUND,
        ErrorCode::USER_NOT_FOUND,
        ErrorCode::NOT_FOUND,
        ErrorCode::METHOD_NOT_ALLOWED,
    ];
    for code in codes {
        let row = format!("| {} | `{}` |", code.0, code.name());
        assert!(api_md.contains(&row) && protocol_md.contains(&row), "{row}");
    }
}
