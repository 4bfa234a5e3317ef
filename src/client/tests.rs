//! Loopback tests of the client against a scripted stand-in server (real QUIC sockets,
//! in-memory certificates), for what the pure unit tests cannot reach: request matching,
//! both orders of login reply and lane, barrage round trips, timeouts, disconnects.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{SendStream, VarInt};
use serde::Serialize;

use super::*;
use crate::certs::DevPki;
use crate::protocol::{
    BarrageMessage, BroadcastMessage, ClientDatagram, ControlFrame, LaneEvent, LaneHeader,
    MAX_REQUEST_FRAME, Member, Recover, Reply, RequestFrame, ServerDatagram, decode_datagram,
    encode_body, encode_frame,
};
use crate::transport::{EndpointKeys, FrameReader, server_config};

/// Every await in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future).await.expect("test step timed out")
}

fn user(id: &str) -> User {
    User { id: id.into(), name: id.to_uppercase() }
}

/// The server side of one client connection.
struct Peer {
    conn: quinn::Connection,
    control: SendStream,
    requests: FrameReader,
}

impl Peer {
    async fn request(&mut self) -> RequestFrame {
        within(self.requests.next::<RequestFrame>())
            .await
            .expect("read request")
            .expect("control stream open")
    }

    async fn reply(&mut self, request: u32, outcome: Outcome) {
        send_frame(&mut self.control, &ControlFrame::Reply(Reply { request, outcome })).await;
    }

    async fn open_lane(&self, room: &str, room_number: u32) -> SendStream {
        self.open_lane_in_epoch(room, room_number, 1).await
    }

    async fn open_lane_in_epoch(&self, room: &str, room_number: u32, epoch: u64) -> SendStream {
        let mut lane = within(self.conn.open_uni()).await.expect("open lane");
        let header = LaneHeader { room: room.into(), room_number, epoch };
        send_frame(&mut lane, &header).await;
        lane
    }

    async fn datagram(&self) -> ClientDatagram {
        let bytes = within(self.conn.read_datagram()).await.expect("datagram");
        decode_datagram(&bytes).expect("decode datagram")
    }
}

async fn send_frame<T: Serialize>(stream: &mut SendStream, frame: &T) {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf).expect("encode");
    within(stream.write_all(&buf)).await.expect("write frame");
}

/// Starts a stand-in server and connects a client as `alice` that does not reconnect;
/// returns the server side of the connection too.
async fn pair(request_timeout: Duration) -> (Client, Events, quinn::Connection) {
    let (client, events, conn, _server) = pair_with(|config| {
        config.request_timeout = request_timeout;
        config.reconnect = ReconnectPolicy::disabled();
    })
    .await;
    (client, events, conn)
}

/// Starts a stand-in server and connects a client as `alice` with the default
/// configuration changed by `adjust`; returns the server side of the connection and the
/// server's endpoint (to accept the client's next connection).
async fn pair_with(
    adjust: impl FnOnce(&mut ClientConfig),
) -> (Client, Events, quinn::Connection, quinn::Endpoint) {
    let pki = DevPki::generate().expect("pki");
    let (chain, key) = pki.server_identity().expect("identity");
    let config = server_config(chain, key, &EndpointKeys::derive(b"test"), DEFAULT_IDLE_TIMEOUT)
        .expect("server config");
    let server =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind server");
    let mut config = ClientConfig::new(
        server.local_addr().expect("addr"),
        "localhost",
        vec![pki.ca().expect("ca")],
        user("alice"),
    );
    adjust(&mut config);
    let accepted = {
        let server = server.clone();
        tokio::spawn(async move {
            let incoming = within(server.accept()).await.expect("incoming");
            within(async { incoming.await }).await.expect("handshake")
        })
    };
    let (client, events) = within(Client::connect(config)).await.expect("connect");
    let conn = within(accepted).await.expect("join");
    (client, events, conn, server)
}

/// Accepts the client's next connection (skipping attempts it already gave up) and its
/// control stream.
async fn accept_next(server: &quinn::Endpoint) -> Peer {
    loop {
        let incoming = within(server.accept()).await.expect("incoming");
        if let Ok(conn) = within(async { incoming.await }).await {
            return accept(conn).await;
        }
    }
}

/// Accepts the client's control stream (visible once the client has written its first
/// request).
async fn accept(conn: quinn::Connection) -> Peer {
    let (control, recv) = within(conn.accept_bi()).await.expect("control stream");
    Peer { conn, control, requests: FrameReader::new(recv, MAX_REQUEST_FRAME) }
}

/// Logs the client in to `room` (number `room_number`), the lane opening before the reply
/// when `lane_first`. Returns the lane.
async fn login(
    client: &Client,
    conn: &quinn::Connection,
    room: &str,
    room_number: u32,
    lane_first: bool,
) -> (Peer, SendStream) {
    let login = {
        let client = client.clone();
        let room = room.to_owned();
        tokio::spawn(async move { client.login_room(&room, "token").await })
    };
    let mut peer = accept(conn.clone()).await;
    let frame = peer.request().await;
    match &frame.body {
        Request::Login { room: r, user: u, token, .. } => {
            assert_eq!((r.as_str(), u, token.as_str()), (room, &user("alice"), "token"));
        }
        other => panic!("expected a login, got {other:?}"),
    }
    let outcome = Outcome::LoggedIn { room_number, session: 1 };
    let lane = if lane_first {
        let lane = peer.open_lane(room, room_number).await;
        peer.reply(frame.request, outcome).await;
        lane
    } else {
        peer.reply(frame.request, outcome).await;
        peer.open_lane(room, room_number).await
    };
    within(login).await.expect("join").expect("login");
    (peer, lane)
}

#[tokio::test]
async fn login_lane_events_broadcast_and_barrage() {
    for lane_first in [true, false] {
        let (client, mut events, conn) = pair(DEFAULT_REQUEST_TIMEOUT).await;
        let (mut peer, mut lane) = login(&client, &conn, "lobby", 7, lane_first).await;
        assert_eq!(client.rooms(), vec!["lobby".to_string()]);

        let bob = Member { session: 2, user: user("bob") };
        send_frame(&mut lane, &LaneEvent::UsersJoined(vec![bob.clone()])).await;
        assert_eq!(
            within(events.next()).await,
            Some(Event::UsersJoined { room: "lobby".into(), users: vec![user("bob")] })
        );

        // Broadcast: request and reply.
        let send = {
            let client = client.clone();
            tokio::spawn(async move { client.send_broadcast_message("lobby", "hello").await })
        };
        let frame = peer.request().await;
        assert_eq!(
            frame.body,
            Request::Broadcast { room: "lobby".into(), payload: Bytes::from_static(b"hello") }
        );
        peer.reply(frame.request, Outcome::Sent { message_id: 1 }).await;
        assert_eq!(within(send).await.expect("join"), Ok(1));

        // Broadcast received on the lane.
        let message = BroadcastMessage {
            id: 4,
            sent_at_ms: 10,
            from: user("bob"),
            payload: Bytes::from_static(b"hi"),
        };
        send_frame(&mut lane, &LaneEvent::Broadcasts(vec![message.clone()])).await;
        assert_eq!(
            within(events.next()).await,
            Some(Event::Broadcasts { room: "lobby".into(), messages: vec![message] })
        );

        // Barrage out: a datagram with the room number, answered on the control stream.
        let send = {
            let client = client.clone();
            tokio::spawn(async move { client.send_barrage_message("lobby", "zap").await })
        };
        let ClientDatagram::Barrage { room_number, request, payload } = peer.datagram().await
        else {
            panic!("expected an acknowledged barrage");
        };
        assert_eq!((room_number, payload.as_ref()), (7, &b"zap"[..]));
        peer.reply(request, Outcome::Sent { message_id: 99 }).await;
        assert_eq!(within(send).await.expect("join"), Ok(99));

        // Barrage out without a reply: nothing to await, no request ID.
        assert_eq!(client.send_barrage_message_no_reply("lobby", "pow"), Ok(()));
        assert_eq!(
            peer.datagram().await,
            ClientDatagram::BarrageNoReply { room_number: 7, payload: Bytes::from_static(b"pow") }
        );
        assert_eq!(
            client.send_barrage_message_no_reply("elsewhere", "pow"),
            Err(ClientError::NotLoggedIn("elsewhere".into()))
        );

        // Barrage in: the sender's session is resolved to bob.
        for id in [5, 6] {
            let datagram = ServerDatagram::Barrage(BarrageMessage {
                room_number: 7,
                id,
                sent_at_ms: 11,
                sender: 2,
                payload: Bytes::from_static(b"pew"),
            });
            peer.conn
                .send_datagram(encode_body(&datagram).expect("encode"))
                .expect("send datagram");
        }
        let mut received = Vec::new();
        while received.len() < 2 {
            match within(events.next()).await {
                Some(Event::Barrages { room, messages }) => {
                    assert_eq!(room, "lobby");
                    received.extend(messages);
                }
                other => panic!("expected barrage, got {other:?}"),
            }
        }
        assert!(received.iter().all(|m| m.from == Some(user("bob"))));
        assert_eq!(client.stats().barrage_received, 2);

        // Kicked: the room closes and the login is forgotten.
        send_frame(
            &mut lane,
            &LaneEvent::Closed {
                code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                detail: "elsewhere".into(),
            },
        )
        .await;
        lane.finish().expect("finish");
        assert_eq!(
            within(events.next()).await,
            Some(Event::RoomClosed {
                room: "lobby".into(),
                code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                detail: "elsewhere".into()
            })
        );
        assert!(client.rooms().is_empty());
        assert_eq!(
            client.send_barrage_message("lobby", "x").await,
            Err(ClientError::NotLoggedIn("lobby".into()))
        );
        client.close().await;
    }
}

#[tokio::test]
async fn refusals_and_local_checks() {
    let (client, _events, conn) = pair(DEFAULT_REQUEST_TIMEOUT).await;
    let (mut peer, _lane) = login(&client, &conn, "lobby", 7, false).await;

    // Caught locally: nothing reaches the server.
    let invalid = client.send_broadcast_message("lobby", vec![0u8; 1025]).await;
    assert_eq!(invalid.map_err(|e| e.code()), Err(ErrorCode::PAYLOAD_TOO_LARGE));
    let empty = client.send_custom_command("lobby", "", &[]).await;
    assert_eq!(empty.map_err(|e| e.code()), Err(ErrorCode::PAYLOAD_EMPTY));
    let room = client.send_broadcast_message("bad room", "x").await;
    assert_eq!(room.map_err(|e| e.code()), Err(ErrorCode::INVALID_ROOM_ID));
    let targets = client.send_custom_command("lobby", "x", &["a b"]).await;
    assert_eq!(targets.map_err(|e| e.code()), Err(ErrorCode::INVALID_TARGETS));

    // Refused by the server.
    let send = {
        let client = client.clone();
        tokio::spawn(async move { client.send_custom_command("lobby", "go", &["bob"]).await })
    };
    let frame = peer.request().await;
    assert_eq!(
        frame.body,
        Request::Command {
            room: "lobby".into(),
            to: vec!["bob".into()],
            payload: Bytes::from_static(b"go")
        }
    );
    let refusal =
        Outcome::Refused { code: ErrorCode::UNKNOWN_TARGET_USER, detail: "no bob".into() };
    peer.reply(frame.request, refusal).await;
    assert_eq!(
        within(send).await.expect("join"),
        Err(ClientError::Refused { code: ErrorCode::UNKNOWN_TARGET_USER, detail: "no bob".into() })
    );

    // Logout and token renewal.
    let logout = {
        let client = client.clone();
        tokio::spawn(async move { client.logout_room("lobby").await })
    };
    let frame = peer.request().await;
    assert_eq!(frame.body, Request::Logout { room: "lobby".into() });
    peer.reply(frame.request, Outcome::Done).await;
    assert_eq!(within(logout).await.expect("join"), Ok(()));
    assert!(client.rooms().is_empty());
    let renew = {
        let client = client.clone();
        tokio::spawn(async move { client.renew_token("new").await })
    };
    let frame = peer.request().await;
    assert_eq!(frame.body, Request::RenewToken { token: "new".into() });
    peer.reply(frame.request, Outcome::Done).await;
    assert_eq!(within(renew).await.expect("join"), Ok(()));
}

#[tokio::test]
async fn lost_barrage_times_out_and_late_reply_is_counted() {
    let (client, _events, conn) = pair(Duration::from_millis(300)).await;
    let (mut peer, _lane) = login(&client, &conn, "lobby", 7, true).await;
    let send = {
        let client = client.clone();
        tokio::spawn(async move { client.send_barrage_message("lobby", "zap").await })
    };
    let ClientDatagram::Barrage { request, .. } = peer.datagram().await else {
        panic!("expected an acknowledged barrage");
    };
    let result = within(send).await.expect("join");
    assert_eq!(result, Err(ClientError::Timeout));
    assert_eq!(ClientError::Timeout.code(), ErrorCode::TIMEOUT);
    // The reply arrives after the caller gave up.
    peer.reply(request, Outcome::Sent { message_id: 1 }).await;
    within(async {
        while client.stats().late_replies == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn server_close_fails_waiting_requests_and_ends_events() {
    let (client, mut events, conn) = pair(DEFAULT_REQUEST_TIMEOUT).await;
    let (mut peer, _lane) = login(&client, &conn, "lobby", 7, true).await;
    let send = {
        let client = client.clone();
        tokio::spawn(async move { client.send_broadcast_message("lobby", "x").await })
    };
    let _ = peer.request().await;
    peer.conn.close(VarInt::from_u32(close::SHUTDOWN), b"going away");
    let result = within(send).await.expect("join");
    assert_eq!(result.map_err(|e| e.code()), Err(ErrorCode::DISCONNECTED));
    let last = loop {
        match within(events.next()).await {
            Some(Event::Disconnected { code, reason }) => break (code, reason),
            Some(_) => continue,
            None => panic!("events ended without Disconnected"),
        }
    };
    assert_eq!(last, (Some(u64::from(close::SHUTDOWN)), "going away".into()));
    assert_eq!(within(events.next()).await, None);
    // Later requests fail at once.
    let later = client.send_broadcast_message("lobby", "x").await;
    assert_eq!(later.map_err(|e| e.code()), Err(ErrorCode::DISCONNECTED));
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    let (client, mut events, conn) = pair(DEFAULT_REQUEST_TIMEOUT).await;
    let (peer, _lane) = login(&client, &conn, "lobby", 7, true).await;
    drop(client);
    let error = within(peer.conn.closed()).await;
    assert!(
        matches!(&error, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close::NORMAL)),
        "{error:?}"
    );
    let last = loop {
        match within(events.next()).await {
            Some(Event::Disconnected { code, .. }) => break code,
            Some(_) => continue,
            None => panic!("events ended without Disconnected"),
        }
    };
    assert_eq!(last, Some(u64::from(close::NORMAL)));
}

#[tokio::test]
async fn started_sends_go_out_in_call_order_and_match_replies_in_any_order() {
    let (client, _events, conn) = pair(Duration::from_millis(500)).await;
    let (mut peer, _lane) = login(&client, &conn, "lobby", 7, true).await;
    let first = client.start_broadcast_message("lobby", "one");
    let second = client.start_custom_command("lobby", "two", &["bob"]);
    let third = client.start_broadcast_message("lobby", "three");
    let invalid = client.start_broadcast_message("lobby", "");
    // Nothing was awaited: the three requests are on the wire, in call order.
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(peer.request().await);
    }
    let payloads: Vec<_> = frames
        .iter()
        .map(|frame| match &frame.body {
            Request::Broadcast { payload, .. } | Request::Command { payload, .. } => {
                payload.clone()
            }
            other => panic!("unexpected request {other:?}"),
        })
        .collect();
    assert_eq!(payloads, ["one", "two", "three"].map(|p| Bytes::from_static(p.as_bytes())));
    // Replies in reverse order reach the right sends.
    for (frame, id) in frames.iter().rev().zip([30, 20, 10]) {
        peer.reply(frame.request, Outcome::Sent { message_id: id }).await;
    }
    assert_eq!(within(third).await, Ok(30));
    assert_eq!(within(first).await, Ok(10));
    assert_eq!(within(second).await, Ok(20));
    // A local check fails at once, with nothing sent.
    assert_eq!(within(invalid).await.map_err(|e| e.code()), Err(ErrorCode::PAYLOAD_EMPTY));

    // The timeout runs from the call, not from the await; a dropped send still goes out.
    let late = client.start_broadcast_message("lobby", "late");
    drop(client.start_broadcast_message("lobby", "dropped"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Its deadline has passed: the result is there long before a new 500 ms would be.
    let result = tokio::time::timeout(Duration::from_millis(250), late).await;
    assert_eq!(result, Ok(Err(ClientError::Timeout)));
    let late = peer.request().await;
    let dropped = peer.request().await;
    assert!(matches!(dropped.body, Request::Broadcast { ref payload, .. } if payload == "dropped"));
    peer.reply(late.request, Outcome::Sent { message_id: 40 }).await;
    peer.reply(dropped.request, Outcome::Sent { message_id: 41 }).await;
    // Neither reply has a taker any more: both are counted as late.
    let counted = within(async {
        while client.stats().late_replies < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    counted.await;
    client.close().await;
}

#[tokio::test]
async fn connect_to_nothing_fails_in_time() {
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let server = silent.local_addr().expect("addr");
    let mut config = ClientConfig::new(
        server,
        "localhost",
        vec![DevPki::generate().expect("pki").ca().expect("ca")],
        user("alice"),
    );
    // The handshake is bounded by the connect timeout alone, however long requests may wait.
    config.connect_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_secs(3600);
    let result = within(Client::connect(config)).await.map(drop);
    let waited = Duration::from_millis(300);
    assert_eq!(result, Err(ClientError::NoAnswer { server, waited }));
}

#[tokio::test]
async fn a_full_event_queue_makes_the_lane_wait_and_loses_nothing() {
    let (client, mut events, conn, _server) = pair_with(|config| {
        config.event_queue = MIN_EVENT_QUEUE;
        config.reconnect = ReconnectPolicy::disabled();
    })
    .await;
    let (_peer, mut lane) = login(&client, &conn, "lobby", 7, true).await;
    let sent = 3 * MIN_EVENT_QUEUE as u64;
    for id in 1..=sent {
        send_frame(&mut lane, &LaneEvent::Broadcasts(vec![message(id, "bob")])).await;
    }
    // Give the lane reader time to fill the queue; it then waits for the application.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids = Vec::new();
    // Nothing else runs on this (current-thread) runtime meanwhile: this is what was queued.
    while let Some(event) = events.try_next() {
        ids.extend(broadcast_list(event));
    }
    assert_eq!(ids.len(), MIN_EVENT_QUEUE, "the queue holds event_queue events");
    while ids.len() < sent as usize {
        ids.extend(broadcast_list(within(events.next()).await.expect("event")));
    }
    assert_eq!(ids, (1..=sent).collect::<Vec<_>>(), "every broadcast, in order");
    client.close().await;
}

fn broadcast_list(event: Event) -> Vec<u64> {
    match event {
        Event::Broadcasts { messages, .. } => messages.iter().map(|m| m.id).collect(),
        other => panic!("expected broadcasts, got {other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_reported_as_untrusted() {
    // Two development CAs: the same name, different keys (as after certs/ is made anew).
    let relay = DevPki::generate().expect("pki");
    let (chain, key) = relay.server_identity().expect("identity");
    let config = server_config(chain, key, &EndpointKeys::derive(b"test"), DEFAULT_IDLE_TIMEOUT)
        .expect("server config");
    let server =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind server");
    let handshake = {
        let server = server.clone();
        tokio::spawn(async move {
            let incoming = within(server.accept()).await.expect("incoming");
            let _ = within(async { incoming.await }).await;
        })
    };
    let other = DevPki::generate().expect("pki").ca().expect("ca");
    let config = ClientConfig::new(
        server.local_addr().expect("addr"),
        "localhost",
        vec![other],
        user("alice"),
    );
    let result = within(Client::connect(config)).await.map(drop);
    assert!(matches!(&result, Err(ClientError::UntrustedCertificate(_))), "{result:?}");
    assert_eq!(result.map_err(|e| e.code()), Err(ErrorCode::DISCONNECTED));
    within(handshake).await.expect("join");
}

fn message(id: u64, from: &str) -> BroadcastMessage {
    BroadcastMessage { id, sent_at_ms: 1, from: user(from), payload: Bytes::from_static(b"m") }
}

fn member(session: u32, id: &str) -> Member {
    Member { session, user: user(id) }
}

/// The broadcast IDs of the next event, which must be a broadcast list.
async fn broadcast_ids(events: &mut Events) -> Vec<u64> {
    match within(events.next()).await {
        Some(Event::Broadcasts { messages, .. }) => messages.iter().map(|m| m.id).collect(),
        other => panic!("expected broadcasts, got {other:?}"),
    }
}

/// The server's side of one re-login: checks the request names `recover` and `token`,
/// replies, and opens the new lane in `epoch` with `members`.
async fn expect_relogin(
    peer: &mut Peer,
    token: &str,
    recover: Recover,
    epoch: u64,
    members: Vec<Member>,
) -> SendStream {
    let frame = peer.request().await;
    assert_eq!(
        frame.body,
        Request::Login {
            room: "lobby".into(),
            user: user("alice"),
            token: token.into(),
            recover: Some(recover)
        }
    );
    peer.reply(frame.request, Outcome::LoggedIn { room_number: 8, session: 5 }).await;
    let mut lane = peer.open_lane_in_epoch("lobby", 8, epoch).await;
    send_frame(&mut lane, &LaneEvent::UsersJoined(members)).await;
    lane
}

#[tokio::test]
async fn reconnect_logs_in_again_with_recovery_and_never_duplicates() {
    let (client, mut events, conn, server) = pair_with(|config| {
        config.reconnect.initial_backoff = Duration::from_millis(20);
        config.reconnect.max_backoff = Duration::from_millis(40);
    })
    .await;
    let (mut peer, mut lane) = login(&client, &conn, "lobby", 7, true).await;
    send_frame(&mut lane, &LaneEvent::UsersJoined(vec![member(2, "bob"), member(3, "carol")]))
        .await;
    // The server never echoes; a broadcast from alice herself is dropped all the same.
    let live = vec![message(1, "bob"), message(2, "alice"), message(3, "bob")];
    send_frame(&mut lane, &LaneEvent::Broadcasts(live)).await;
    assert!(matches!(within(events.next()).await, Some(Event::UsersJoined { .. })));
    assert_eq!(broadcast_ids(&mut events).await, vec![1, 3]);
    let renew = {
        let client = client.clone();
        tokio::spawn(async move { client.renew_token("token2").await })
    };
    let frame = peer.request().await;
    peer.reply(frame.request, Outcome::Done).await;
    assert_eq!(within(renew).await.expect("join"), Ok(()));

    // The server goes away. Until the test accepts the next connection, the client is
    // reconnecting: requests fail at once, the room is kept.
    peer.conn.close(VarInt::from_u32(close::SHUTDOWN), b"restart");
    let state = within(events.next()).await;
    assert_eq!(state, Some(Event::ConnectionState(ConnectionState::Reconnecting { attempt: 1 })));
    let during = within(client.send_broadcast_message("lobby", "x")).await;
    assert_eq!(during.map_err(|e| e.code()), Err(ErrorCode::DISCONNECTED));
    assert!(client.connection().is_none());
    assert_eq!(client.rooms(), vec!["lobby".to_string()]);

    // Logged in again with the renewed token, from the last broadcast delivered (3).
    let mut peer = accept_next(&server).await;
    let recover = Recover { epoch: 1, last_id: 3 };
    let members = vec![member(2, "bob"), member(4, "dave")];
    let mut lane = expect_relogin(&mut peer, "token2", recover, 1, members).await;
    let recovered = LaneEvent::Recovered { complete: true, missed: None, replayed: 4 };
    send_frame(&mut lane, &recovered).await;
    let replay = vec![message(2, "bob"), message(3, "bob"), message(4, "bob"), message(5, "bob")];
    send_frame(&mut lane, &LaneEvent::Broadcasts(replay)).await;
    let room = || "lobby".to_string();
    assert_eq!(
        within(events.next()).await,
        Some(Event::ConnectionState(ConnectionState::Reconnected))
    );
    // Only real changes of the member list: dave joined, carol left; bob is known.
    assert_eq!(
        within(events.next()).await,
        Some(Event::UsersJoined { room: room(), users: vec![user("dave")] })
    );
    assert_eq!(
        within(events.next()).await,
        Some(Event::UsersLeft { room: room(), users: vec![user("carol")] })
    );
    assert_eq!(
        within(events.next()).await,
        Some(Event::Recovered { room: room(), complete: true, missed: None, replayed: 4 })
    );
    assert_eq!(broadcast_ids(&mut events).await, vec![4, 5]);

    // Dropped as too slow: logged in again at once on the same connection, no RoomClosed.
    let closed = LaneEvent::Closed { code: ErrorCode::SLOW_RECEIVER, detail: "slow".into() };
    send_frame(&mut lane, &closed).await;
    lane.finish().expect("finish");
    let recover = Recover { epoch: 1, last_id: 5 };
    let members = vec![member(2, "bob"), member(4, "dave")];
    let mut lane = expect_relogin(&mut peer, "token2", recover, 1, members).await;
    let recovered = LaneEvent::Recovered { complete: false, missed: Some((6, 7)), replayed: 1 };
    send_frame(&mut lane, &recovered).await;
    send_frame(&mut lane, &LaneEvent::Broadcasts(vec![message(8, "bob")])).await;
    assert_eq!(
        within(events.next()).await,
        Some(Event::Recovered { room: room(), complete: false, missed: Some((6, 7)), replayed: 1 })
    );
    assert_eq!(broadcast_ids(&mut events).await, vec![8]);

    // The application closes the QUIC connection under the client: that is a loss too. The
    // room comes back in a new epoch, whose IDs start again at 1.
    client.connection().expect("connected").close(VarInt::from_u32(0), b"cut");
    let state = within(events.next()).await;
    assert_eq!(state, Some(Event::ConnectionState(ConnectionState::Reconnecting { attempt: 1 })));
    let mut peer = accept_next(&server).await;
    let recover = Recover { epoch: 1, last_id: 8 };
    let members = vec![member(2, "bob"), member(4, "dave")];
    let mut lane = expect_relogin(&mut peer, "token2", recover, 2, members).await;
    let recovered = LaneEvent::Recovered { complete: false, missed: None, replayed: 1 };
    send_frame(&mut lane, &recovered).await;
    send_frame(&mut lane, &LaneEvent::Broadcasts(vec![message(1, "bob")])).await;
    assert_eq!(
        within(events.next()).await,
        Some(Event::ConnectionState(ConnectionState::Reconnected))
    );
    assert!(matches!(within(events.next()).await, Some(Event::Recovered { complete: false, .. })));
    assert_eq!(broadcast_ids(&mut events).await, vec![1]);

    // Kicked is final for the room.
    let kicked =
        LaneEvent::Closed { code: ErrorCode::KICKED_LOGGED_IN_ELSEWHERE, detail: "".into() };
    send_frame(&mut lane, &kicked).await;
    assert!(matches!(within(events.next()).await, Some(Event::RoomClosed { .. })));
    assert!(client.rooms().is_empty());
    let stats = client.stats();
    assert_eq!((stats.broadcast_duplicates, stats.reconnects), (3, 2));

    client.close().await;
    let last = within(events.next()).await;
    assert_eq!(last, Some(Event::Disconnected { code: Some(0), reason: "client closed".into() }));
    assert_eq!(within(events.next()).await, None);
}

#[tokio::test]
async fn member_tracking_names_barrage_senders_and_diffs_the_members_after_a_relogin() {
    for track_members in [true, false] {
        let (client, mut events, conn, server) = pair_with(|config| {
            config.track_members = track_members;
            config.reconnect.initial_backoff = Duration::from_millis(20);
        })
        .await;
        let (peer, mut lane) = login(&client, &conn, "lobby", 7, true).await;
        let members = vec![member(2, "bob"), member(3, "carol")];
        send_frame(&mut lane, &LaneEvent::UsersJoined(members)).await;
        let room = || "lobby".to_string();
        assert_eq!(
            within(events.next()).await,
            Some(Event::UsersJoined { room: room(), users: vec![user("bob"), user("carol")] })
        );

        // Barrage from a session never announced (1), then from bob's (2).
        for (id, sender) in [(1, 9), (2, 2)] {
            let datagram = ServerDatagram::Barrage(BarrageMessage {
                room_number: 7,
                id,
                sent_at_ms: 11,
                sender,
                payload: Bytes::from_static(b"pew"),
            });
            peer.conn.send_datagram(encode_body(&datagram).expect("encode")).expect("send");
        }
        let expected = match track_members {
            // Named; the unknown session's is held for its join, which never comes.
            true => vec![(2, Some(user("bob")))],
            false => vec![(1, None), (2, None)],
        };
        let mut received = Vec::new();
        while received.len() < expected.len() {
            match within(events.next()).await {
                Some(Event::Barrages { messages, .. }) => {
                    received.extend(messages.into_iter().map(|m| (m.id, m.from)));
                }
                other => panic!("expected barrage, got {other:?}"),
            }
        }
        received.sort_by_key(|(id, _)| *id);
        assert_eq!(received, expected, "track_members: {track_members}");

        // Logged in again: bob is still there, carol left, dave joined.
        peer.conn.close(VarInt::from_u32(close::SHUTDOWN), b"restart");
        assert!(matches!(within(events.next()).await, Some(Event::ConnectionState(_))));
        let mut peer = accept_next(&server).await;
        let recover = Recover { epoch: 1, last_id: 0 };
        let members = vec![member(5, "bob"), member(6, "dave")];
        let mut lane = expect_relogin(&mut peer, "token", recover, 1, members).await;
        let recovered = LaneEvent::Recovered { complete: true, missed: None, replayed: 0 };
        send_frame(&mut lane, &recovered).await;
        let membership = match track_members {
            // Only the changes.
            true => vec![
                Event::UsersJoined { room: room(), users: vec![user("dave")] },
                Event::UsersLeft { room: room(), users: vec![user("carol")] },
            ],
            // The whole list again; carol's departure is not reported.
            false => {
                vec![Event::UsersJoined { room: room(), users: vec![user("bob"), user("dave")] }]
            }
        };
        let reconnected = Event::ConnectionState(ConnectionState::Reconnected);
        let recovered =
            Event::Recovered { room: room(), complete: true, missed: None, replayed: 0 };
        let expected: Vec<Event> =
            [reconnected].into_iter().chain(membership).chain([recovered]).collect();
        for event in expected {
            assert_eq!(within(events.next()).await, Some(event), "track_members: {track_members}");
        }
        // The held one was dropped with the lost connection (as of an unknown sender, or of
        // an unknown room when its lane ended first).
        let stats = client.stats();
        let dropped = stats.barrage_unknown_sender + stats.barrage_unknown_room;
        assert_eq!(dropped, u64::from(track_members));
        client.close().await;
    }
}

#[tokio::test]
async fn a_refused_relogin_closes_the_room() {
    let (client, mut events, conn, server) = pair_with(|config| {
        config.reconnect.initial_backoff = Duration::from_millis(20);
    })
    .await;
    let (peer, _lane) = login(&client, &conn, "lobby", 7, false).await;
    peer.conn.close(VarInt::from_u32(close::SHUTDOWN), b"restart");
    assert!(matches!(within(events.next()).await, Some(Event::ConnectionState(_))));
    let mut peer = accept_next(&server).await;
    let frame = peer.request().await;
    let refusal = Outcome::Refused { code: ErrorCode::TOKEN_EXPIRED, detail: "old".into() };
    peer.reply(frame.request, refusal).await;
    assert_eq!(
        within(events.next()).await,
        Some(Event::ConnectionState(ConnectionState::Reconnected))
    );
    assert_eq!(
        within(events.next()).await,
        Some(Event::RoomClosed {
            room: "lobby".into(),
            code: ErrorCode::TOKEN_EXPIRED,
            detail: "old".into()
        })
    );
    assert!(client.rooms().is_empty());
    client.close().await;
}

#[test]
fn handles_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Client>();
    send_sync::<Pending<u64>>();
    send::<Events>();
    send::<Event>();
    send_sync::<ClientError>();
}

#[tokio::test]
async fn a_socket_that_fails_is_replaced_without_a_reconnect() {
    // Reconnect is off: a lost connection would end the client.
    let (client, mut events, conn) = pair(DEFAULT_REQUEST_TIMEOUT).await;
    let (mut peer, _lane) = login(&client, &conn, "lobby", 7, true).await;
    let old = client.local_addr().expect("local address");
    let connection = client.connection().expect("connected").stable_id();

    // Every send on the socket fails from now on (EPIPE), as when its address goes away.
    client.shared().own_socket.as_ref().expect("own socket").break_for_sending();
    let send = {
        let client = client.clone();
        tokio::spawn(async move { client.send_broadcast_message("lobby", "moved").await })
    };
    // The request's first packet is lost with the old socket; it arrives from the new one.
    let frame = peer.request().await;
    assert_eq!(
        frame.body,
        Request::Broadcast { room: "lobby".into(), payload: Bytes::from_static(b"moved") }
    );
    peer.reply(frame.request, Outcome::Sent { message_id: 1 }).await;
    assert_eq!(within(send).await.expect("join"), Ok(1));

    let new = client.local_addr().expect("local address");
    assert_ne!(new.port(), old.port());
    assert_eq!(conn.remote_address().port(), new.port(), "the server follows the client");
    assert_eq!(client.connection().expect("connected").stable_id(), connection);
    assert_eq!((client.stats().rebinds, client.stats().reconnects), (1, 0));
    assert!(events.try_next().is_none(), "no event");
}
