//! Hostile clients cannot grow the relay's memory or hold its slots without bound: history and
//! room bounds, lane byte bounds, unopened lanes, the login deadline, control streams whose
//! replies are not read, and frequency limits that survive logging in again.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use qrelay::protocol::{
    ErrorCode, LaneEvent, Outcome, Request, RequestFrame, User, close, encode_frame,
};
use qrelay::server::RateLimits;
use qrelay::transport::{Side, client_config, transport_config};

fn code(outcome: Outcome) -> ErrorCode {
    match outcome {
        Outcome::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn is_sent(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Sent { .. })
}

const KIB: &[u8] = &[b'k'; 1024];

#[tokio::test]
async fn history_held_by_rooms_left_behind_stays_within_its_bound() {
    let mut config = test_config();
    config.max_history_bytes = 64 * 1024;
    let max = config.max_history_bytes as u64;
    let relay = TestRelay::start(config).await;
    // A room with a member keeps its (small) history while empty rooms are evicted.
    let (mut keeper, _keeper_lane) = relay.raw_member("keeper", "kept").await;
    for _ in 0..3 {
        assert!(is_sent(&keeper.broadcast("kept", b"keep me").await));
    }
    // One connection creates room after room, leaves 10 KiB of history in each, and logs out.
    let mut churner = relay.raw_peer().await;
    let mut peak = 0;
    for i in 0..60 {
        let room = format!("churn-{i}");
        assert!(matches!(churner.login(&relay, "churner", &room).await, Outcome::LoggedIn { .. }));
        let _lane = churner.accept_lane(&room).await;
        for _ in 0..10 {
            let outcome = churner
                .request(Request::Broadcast { room: room.clone(), payload: Bytes::from(KIB) })
                .await;
            assert!(is_sent(&outcome), "{outcome:?}");
        }
        assert_eq!(churner.request(Request::Logout { room }).await, Outcome::Done);
        peak = peak.max(relay.handle.stats().history_bytes);
    }
    let stats = relay.handle.stats();
    assert!(peak <= max, "history held {peak} bytes, bound {max}");
    assert!(stats.rooms_evicted > 0, "{stats:?}");
    // 60 rooms × 10 KiB were stored; the relay holds at most the bound.
    assert!(relay.handle.room_count() < 60, "rooms: {}", relay.handle.room_count());
    // The room with a member kept its history: a re-login recovers it completely.
    let mut late = relay.raw_peer().await;
    let outcome = late.login(&relay, "late", "kept").await;
    assert!(matches!(outcome, Outcome::LoggedIn { .. }));
    assert_room_still_served(&relay, "kept").await;
}

#[tokio::test]
async fn history_of_rooms_with_members_is_trimmed_oldest_first_when_alone_over_the_bound() {
    let mut config = test_config();
    config.max_history_bytes = 32 * 1024;
    let max = config.max_history_bytes as u64;
    let relay = TestRelay::start(config).await;
    let (mut alice, _lane) = relay.raw_member("alice", "busy").await;
    let epoch = lane_epoch(&relay, "bob", "busy").await;
    for _ in 0..100 {
        let outcome =
            alice.request(Request::Broadcast { room: "busy".into(), payload: KIB.into() }).await;
        assert!(is_sent(&outcome));
        assert!(relay.handle.stats().history_bytes <= max);
    }
    let stats = relay.handle.stats();
    assert!(stats.history_evicted > 0, "{stats:?}");
    // What remains is the newest: a recovery from 0 misses the oldest, gets the rest in order.
    let mut bob = relay.raw_peer().await;
    let recover = qrelay::protocol::Recover { epoch, last_id: 0 };
    let user = User { id: "bob".into(), name: "bob".into() };
    let token = relay.token("bob");
    let login = Request::Login { room: "busy".into(), user, token, recover: Some(recover) };
    assert!(matches!(bob.request(login).await, Outcome::LoggedIn { .. }));
    let mut lane = bob.accept_lane("busy").await;
    loop {
        match next_event(&mut lane).await {
            LaneEvent::Recovered { complete, missed, replayed } => {
                assert!(!complete);
                let (first, last) = missed.expect("the oldest were trimmed");
                assert_eq!(first, 1);
                assert_eq!(last + replayed, 100, "the newest are kept, without a gap");
                break;
            }
            LaneEvent::UsersJoined(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// Logs `user` in to `room` on a connection of its own, reads the lane's epoch and leaves.
async fn lane_epoch(relay: &TestRelay, user: &str, room: &str) -> u64 {
    let mut peer = relay.raw_peer().await;
    assert!(matches!(peer.login(relay, user, room).await, Outcome::LoggedIn { .. }));
    let recv = within(peer.conn.accept_uni()).await.unwrap();
    let mut lane = qrelay::transport::FrameReader::new(recv, qrelay::protocol::MAX_SERVER_FRAME);
    let header: qrelay::protocol::LaneHeader = within(lane.next()).await.unwrap().unwrap();
    assert_eq!(peer.request(Request::Logout { room: room.into() }).await, Outcome::Done);
    header.epoch
}

#[tokio::test]
async fn the_room_count_is_bounded_and_empty_rooms_make_way() {
    let mut config = test_config();
    config.max_rooms = 3;
    let relay = TestRelay::start(config).await;
    let mut peer = relay.raw_peer().await;
    let mut lanes = Vec::new();
    for room in ["a", "b", "c"] {
        assert!(matches!(peer.login(&relay, "alice", room).await, Outcome::LoggedIn { .. }));
        lanes.push(peer.accept_lane(room).await);
    }
    // Every room has a member: a fourth cannot be created.
    assert_eq!(code(peer.login(&relay, "alice", "d").await), ErrorCode::SERVER_ROOM_LIMIT);
    assert_eq!(relay.handle.stats().rooms_open, 3);
    // "a" keeps history but is empty after the logout: it makes way for "d".
    assert!(is_sent(&peer.broadcast("a", b"history").await));
    assert_eq!(peer.request(Request::Logout { room: "a".into() }).await, Outcome::Done);
    assert!(matches!(peer.login(&relay, "alice", "d").await, Outcome::LoggedIn { .. }));
    let stats = relay.handle.stats();
    assert_eq!((stats.rooms_open, stats.rooms_evicted, stats.history_bytes), (3, 1, 0));
    assert_eq!(relay.handle.room_count(), 3);
}

#[tokio::test]
async fn one_user_creates_rooms_at_a_bounded_rate() {
    let mut config = test_config();
    config.limits.room_create_per_user = 1.0;
    let relay = TestRelay::start(config).await;
    let mut peer = relay.raw_peer().await;
    let start = Instant::now();
    let (mut created, mut refused) = (0, 0);
    for i in 0..30 {
        let room = format!("new-{i}");
        match peer.login(&relay, "creator", &room).await {
            Outcome::LoggedIn { .. } => {
                created += 1;
                let _lane = peer.accept_lane(&room).await;
                assert_eq!(peer.request(Request::Logout { room }).await, Outcome::Done);
            }
            Outcome::Refused { code, .. } => {
                assert_eq!(code, ErrorCode::LOGIN_RATE_LIMITED);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // A burst of 10, then 1 per second.
    let allowed = 10 + start.elapsed().as_secs_f64().ceil() as usize;
    assert!(created <= allowed, "{created} rooms created, at most {allowed} allowed");
    assert!(refused > 0);
    // Another user is not held back by this one.
    let mut other = relay.raw_peer().await;
    assert!(matches!(other.login(&relay, "other", "new-other").await, Outcome::LoggedIn { .. }));
}

#[tokio::test]
async fn a_lane_that_is_never_read_holds_at_most_its_byte_bound() {
    let mut config = test_config();
    config.lane_queue_bytes = 128 * 1024;
    config.connection_queue_bytes = 192 * 1024;
    config.lane_stall_ms = 1000;
    let bound = config.connection_queue_bytes as u64;
    let relay = TestRelay::start(config).await;
    let (mut alice, _alice_lanes) = {
        let mut alice = relay.raw_peer().await;
        let mut lanes = Vec::new();
        for room in ["r1", "r2"] {
            assert!(matches!(alice.login(&relay, "alice", room).await, Outcome::LoggedIn { .. }));
            lanes.push(alice.accept_lane(room).await);
        }
        (alice, lanes)
    };
    // bob accepts his two lanes and never reads them.
    let mut bob = relay.raw_peer().await;
    let mut bob_lanes = Vec::new();
    for room in ["r1", "r2"] {
        assert!(matches!(bob.login(&relay, "bob", room).await, Outcome::LoggedIn { .. }));
        bob_lanes.push(bob.accept_lane(room).await);
    }
    let mut sent = 0;
    let mut peak = 0;
    let mut removed = [false; 2];
    // Without a byte bound, 4096 queue slots of unshared 1 KiB commands fit per lane.
    while sent < 3000 && !(removed[0] && removed[1]) {
        for (i, room) in ["r1", "r2"].iter().enumerate() {
            if removed[i] {
                continue;
            }
            let outcome = alice
                .request(Request::Command {
                    room: room.to_string(),
                    to: vec!["bob".into()],
                    payload: KIB.into(),
                })
                .await;
            sent += 1;
            match outcome {
                Outcome::Sent { .. } => {}
                Outcome::Refused { code, .. } => {
                    assert!(
                        [ErrorCode::SLOW_RECEIVER, ErrorCode::UNKNOWN_TARGET_USER].contains(&code),
                        "{code}"
                    );
                    removed[i] = true;
                }
                other => panic!("{other:?}"),
            }
            peak = peak.max(relay.handle.stats().lane_bytes);
        }
    }
    assert!(removed[0] && removed[1], "bob was never removed after {sent} commands");
    assert!(peak <= bound, "bob's lanes held {peak} bytes, bound {bound}");
    // Once his lanes' writers give up (lane_stall_ms), nothing stays queued.
    until(&relay, |stats| stats.lane_bytes == 0 && stats.lanes_open <= 2).await;
    drop(bob_lanes);
}

/// Direct lane writes (the room writes into an idle lane's stream): a receiver that stops
/// reading blocks its stream; what follows waits in the lane's queue behind what was written,
/// within its bounds, and once the receiver reads again it gets every broadcast exactly once,
/// in order, after which the lane goes back to direct writes.
#[tokio::test]
async fn a_lane_that_falls_behind_and_catches_up_gets_every_broadcast_in_order() {
    let relay = TestRelay::start(test_config()).await;
    let (mut alice, _alice_lane) = relay.raw_member("alice", "room").await;
    let (_bob, mut bob_lane) = relay.raw_member("bob", "room").await;
    // 600 KiB: more than bob's stream window (256 KiB) lets the relay write, less than that
    // plus the lane's queue bound (512 KiB).
    let sent = 600;
    let mut queued_peak = 0;
    for _ in 0..sent {
        assert!(matches!(alice.broadcast("room", KIB).await, Outcome::Sent { .. }));
        queued_peak = queued_peak.max(relay.handle.stats().lane_bytes);
    }
    let stats = relay.handle.stats();
    assert!(stats.lane_direct_writes > 0, "no direct write");
    assert!(queued_peak > 0, "nothing was ever queued behind the blocked stream");
    assert_eq!(stats.slow_receivers, 0);
    let mut ids = Vec::new();
    while ids.len() < sent {
        ids.extend(next_broadcasts(&mut bob_lane).await.iter().map(|m| m.id));
    }
    assert_eq!(ids, (1..=sent as u64).collect::<Vec<_>>());
    // Drained: the writer parks the stream again and the next broadcast is written directly.
    until(&relay, |stats| stats.lane_bytes == 0).await;
    let direct = relay.handle.stats().lane_direct_writes;
    let mut written = false;
    for id in sent as u64 + 1..sent as u64 + 50 {
        assert!(matches!(alice.broadcast("room", KIB).await, Outcome::Sent { .. }));
        assert_eq!(
            next_broadcasts(&mut bob_lane).await.iter().map(|m| m.id).collect::<Vec<_>>(),
            [id]
        );
        if relay.handle.stats().lane_direct_writes > direct {
            written = true;
            break;
        }
    }
    assert!(written, "the lane never went back to direct writes");
}

/// A connection whose client grants the relay no unidirectional streams: its lanes can never
/// open.
async fn peer_without_lanes(relay: &TestRelay) -> RawPeer {
    let conn = connect_with(relay, |transport| {
        transport.max_concurrent_uni_streams(0u32.into());
    })
    .await;
    relay.raw_peer_on(conn).await
}

/// A QUIC connection to the relay with the client transport settings changed by `change`.
async fn connect_with(
    relay: &TestRelay,
    change: impl FnOnce(&mut quinn::TransportConfig),
) -> quinn::Connection {
    let mut transport = transport_config(Side::Client, Duration::from_secs(10));
    change(&mut transport);
    let mut client = client_config(std::slice::from_ref(&relay.ca), STEP).unwrap();
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    within(endpoint.connect(relay.addr, "localhost").unwrap()).await.unwrap()
}

#[tokio::test]
async fn lanes_that_never_get_a_stream_are_bounded_and_end_at_their_deadline() {
    let mut config = test_config();
    config.lane_open_timeout_ms = 500;
    let max = config.max_rooms_per_connection;
    let relay = TestRelay::start(config).await;
    let (_watcher, mut watcher_lane) = relay.raw_member("watcher", "lobby").await;
    let mut peer = peer_without_lanes(&relay).await;
    let mut logins = 0;
    let mut refused = 0;
    for _ in 0..50 {
        match peer.login(&relay, "ghost", "lobby").await {
            Outcome::LoggedIn { .. } => {
                logins += 1;
                peer.request(Request::Logout { room: "lobby".into() }).await;
            }
            Outcome::Refused { code, .. } => {
                assert_eq!(code, ErrorCode::TOO_MANY_ROOMS);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(logins, max, "at most {max} lanes may wait for their stream");
    assert_eq!(refused, 50 - max);
    // At the deadline the waiting lanes end; the member is removed and the others told.
    assert!(matches!(peer.login(&relay, "ghost", "other").await, Outcome::Refused { .. }));
    until(&relay, |stats| stats.lanes_open_timed_out >= max as u64).await;
    assert!(matches!(peer.login(&relay, "ghost", "other").await, Outcome::LoggedIn { .. }));
    let left = loop {
        if let LaneEvent::UsersLeft(members) = next_event(&mut watcher_lane).await {
            break members;
        }
    };
    assert_eq!(left[0].user.id, "ghost");
    until(&relay, |stats| stats.lanes_open_timed_out > max as u64).await;
    // Every lane has ended: only the watcher's is open.
    until(&relay, |stats| stats.lanes_open <= 1).await;
}

#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed_at_the_login_deadline() {
    let mut config = test_config();
    config.login_timeout_ms = 500;
    let relay = TestRelay::start(config).await;
    // Keep-alives every ~330 ms: the idle timeout is not what closes it.
    let conn = relay.connect_raw_with_idle(Duration::from_millis(1000)).await;
    let mut idler = relay.raw_peer_on(conn).await;
    let refused = idler.request(Request::RenewToken { token: String::new() }).await;
    assert_eq!(code(refused), ErrorCode::NOT_LOGGED_IN);
    // An honest client logs in and stays past the deadline.
    let conn = relay.connect_raw_with_idle(Duration::from_millis(1000)).await;
    let (mut honest, _lane) = relay.join(relay.raw_peer_on(conn).await, "alice", "lobby").await;
    assert_eq!(close_code(&idler.conn).await, u64::from(close::LOGIN_TIMEOUT));
    assert!(is_sent(&honest.broadcast("lobby", b"still here").await));
    // Leaving its last room starts the deadline again.
    assert_eq!(honest.request(Request::Logout { room: "lobby".into() }).await, Outcome::Done);
    assert_eq!(close_code(&honest.conn).await, u64::from(close::LOGIN_TIMEOUT));
    assert_eq!(relay.handle.stats().login_timeouts, 2);
    until(&relay, |stats| stats.connections_open == 0).await;
}

#[tokio::test]
async fn a_client_that_does_not_read_its_replies_is_closed_and_others_are_served() {
    let mut config = test_config();
    config.control_stall_ms = 500;
    let relay = TestRelay::start(config).await;
    // The client's control stream window takes a few replies only.
    let conn = connect_with(&relay, |transport| {
        transport.stream_receive_window(2048u32.into());
    })
    .await;
    let (mut send, _recv_never_read) = conn.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        for request in 1..=2000 {
            let body = Request::Broadcast { room: "nowhere".into(), payload: "x".into() };
            encode_frame(&RequestFrame { request, body }, &mut buf).unwrap();
        }
        // Blocks once the relay stops reading; ends when the connection is closed.
        let _ = send.write_all(&buf).await;
    });
    assert_eq!(close_code(&conn).await, u64::from(close::CONTROL_STALLED));
    within(writer).await.unwrap();
    assert_eq!(relay.handle.stats().control_stalls, 1);
    assert_room_still_served(&relay, "lobby").await;
}

#[tokio::test]
async fn per_user_limits_survive_logging_in_again_and_reconnecting() {
    let mut config = test_config();
    config.limits = RateLimits::default();
    let relay = TestRelay::start(config).await;
    let (_listener, _listener_lane) = relay.raw_member("listener", "lobby").await;
    let start = Instant::now();
    let mut accepted = 0;
    let mut logins = 0;
    for cycle in 0..6 {
        // Every other cycle on a new connection: a reconnect is no fresh allowance either.
        let mut peer = relay.raw_peer().await;
        match peer.login(&relay, "burst", "lobby").await {
            Outcome::LoggedIn { .. } => logins += 1,
            Outcome::Refused { code, .. } => {
                assert_eq!(code, ErrorCode::LOGIN_RATE_LIMITED, "cycle {cycle}");
                continue;
            }
            other => panic!("{other:?}"),
        }
        let _lane = peer.accept_lane("lobby").await;
        for _ in 0..3 {
            if is_sent(&peer.broadcast("lobby", b"b").await) {
                accepted += 1;
            }
        }
        if cycle % 2 == 0 {
            assert_eq!(peer.request(Request::Logout { room: "lobby".into() }).await, Outcome::Done);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // broadcast_per_user 2/s: a burst of 2 and 2 per second, however often it logs in.
    let allowed = 2 + (2.0 * secs).ceil() as usize;
    assert!(
        accepted <= allowed,
        "{accepted} broadcasts accepted in {secs:.2} s; {allowed} allowed"
    );
    // login_per_user 1/s: a burst of 5 and 1 per second.
    let allowed = 5 + secs.ceil() as usize;
    assert!(logins <= allowed, "{logins} logins in {secs:.2} s; {allowed} allowed");
    assert!(logins < 6, "the sixth quick login must be refused");
}

#[tokio::test]
async fn a_member_that_stops_its_lane_is_removed_at_once() {
    let relay = TestRelay::start(test_config()).await;
    let (_carol, mut carol_lane) = relay.raw_member("carol", "lobby").await;
    let (_bob, mut bob_lane) = relay.raw_member("bob", "lobby").await;
    loop {
        if let LaneEvent::UsersJoined(members) = next_event(&mut carol_lane).await
            && members.iter().any(|m| m.user.id == "bob")
        {
            break;
        }
    }
    bob_lane.stream_mut().stop(0u32.into()).unwrap();
    // Nothing else happens in the room: the stop alone removes bob.
    match next_event(&mut carol_lane).await {
        LaneEvent::UsersLeft(members) => assert_eq!(members[0].user.id, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
}
