//! Abusive peers: stream floods, datagram floods, half frames, connection floods from one
//! address and handshake load. Each gets its documented outcome, and honest clients in the
//! same test keep being served. Every count is bounded; the only waits are short timeouts that
//! show something did not happen.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use qrelay::protocol::{
    ClientDatagram, ControlFrame, ErrorCode, LaneEvent, Outcome, Request, RequestFrame,
    encode_body, encode_frame,
};
use qrelay::server::ServerConfig;
use tokio::task::JoinSet;

/// How long an operation that must never complete is given to (wrongly) complete.
const NEVER: Duration = Duration::from_millis(500);

/// Stream opens attempted of each kind.
const STREAM_OPENS: usize = 1000;

/// Barrage datagrams in the flood.
const FLOOD: u32 = 500;

#[tokio::test]
async fn thousands_of_stream_opens_beyond_the_limits_never_complete() {
    // Without WebTransport the stream limits are the protocol's own (with it, see
    // `a_native_client_opening_a_stream_beyond_its_control_stream_is_closed`).
    let config = ServerConfig { webtransport: false, ..test_config() };
    let relay = TestRelay::start(config).await;
    // The control stream is the one bidirectional stream the server allows.
    let (mut mallory, _lane) = relay.raw_member("mallory", "lobby").await;
    let mut opens = JoinSet::new();
    for _ in 0..STREAM_OPENS {
        let conn = mallory.conn.clone();
        opens.spawn(async move { conn.open_uni().await.map(drop) });
        let conn = mallory.conn.clone();
        opens.spawn(async move { conn.open_bi().await.map(drop) });
    }
    // The server grants no unidirectional stream and no second bidirectional one: quinn
    // never gets the credit to open any of them.
    let first = tokio::time::timeout(NEVER, opens.join_next()).await;
    assert!(first.is_err(), "a stream beyond the limits was opened: {first:?}");
    assert_eq!(opens.len(), 2 * STREAM_OPENS);
    opens.abort_all();

    // The abuser's own control stream and an honest room are still served.
    assert!(matches!(mallory.broadcast("lobby", b"still me").await, Outcome::Sent { .. }));
    assert_room_still_served(&relay, "lobby").await;
    assert_eq!(relay.handle.stats().protocol_violations, 0);
}

#[tokio::test]
async fn a_native_client_opening_a_stream_beyond_its_control_stream_is_closed() {
    // WebTransport on (the default): browsers need 3 unidirectional and 2 bidirectional
    // streams, granted before the ALPN is known, so natives get the credit but not the use.
    let relay = TestRelay::start(test_config()).await;
    for (n, bidirectional) in [(1, false), (2, true)] {
        let (mallory, _lane) = relay.raw_member("mallory", "lobby").await;
        let mut send = if bidirectional {
            within(mallory.conn.open_bi()).await.expect("the browsers' limits let it open").0
        } else {
            within(mallory.conn.open_uni()).await.expect("the browsers' limits let it open")
        };
        // A stream is invisible to the peer until something is written on it.
        within(send.write_all(b"x")).await.unwrap();
        match within(mallory.conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(reason) => {
                let code = qrelay::protocol::close::PROTOCOL_VIOLATION;
                assert_eq!(reason.error_code, quinn::VarInt::from_u32(code));
            }
            other => panic!("closed otherwise: {other}"),
        }
        assert_room_still_served(&relay, "lobby").await;
        assert_eq!(relay.handle.stats().protocol_violations, n);
    }
}

#[tokio::test]
async fn a_datagram_flood_for_a_room_not_joined_gets_refusals_and_no_delivery() {
    let relay = TestRelay::start(test_config()).await;
    // Alice's login reply tells the room's number (room numbers are small and easy to guess).
    let mut alice = relay.raw_peer().await;
    let outcome = alice.login(&relay, "alice", "target").await;
    let Outcome::LoggedIn { room_number: target, .. } = outcome else { panic!("{outcome:?}") };
    let _alice_lane = alice.accept_lane("target").await;
    // Mallory is in a room of her own and aims at "target", which she is not a member of.
    let (mut mallory, _lane) = relay.raw_member("mallory", "elsewhere").await;

    for request in 0..FLOOD {
        let datagram = ClientDatagram::Barrage {
            room_number: target,
            request,
            payload: Bytes::from_static(b"x"),
        };
        within(mallory.conn.send_datagram_wait(encode_body(&datagram).unwrap())).await.unwrap();
    }
    // Every datagram the server received is answered NOT_LOGGED_IN; a datagram may be lost on
    // the way, so read replies until they stop coming.
    let mut replies = 0u64;
    while let Ok(frame) = tokio::time::timeout(NEVER, mallory.control.next::<ControlFrame>()).await
    {
        match frame.unwrap() {
            Some(ControlFrame::Reply(reply)) => {
                assert!(reply.request < FLOOD, "{reply:?}");
                assert!(
                    matches!(
                        reply.outcome,
                        Outcome::Refused { code: ErrorCode::NOT_LOGGED_IN, .. }
                    ),
                    "{reply:?}"
                );
                replies += 1;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("control stream ended"),
        }
    }
    let stats = relay.handle.stats();
    assert!(replies > 0);
    assert_eq!(replies, stats.datagrams_received, "a received datagram went unanswered");
    assert_eq!(stats.barrages, 0);
    // Nothing reached the room's members, and the connection is still up.
    let leaked = tokio::time::timeout(NEVER, alice.conn.read_datagram()).await;
    assert!(leaked.is_err(), "a member received {leaked:?}");
    assert!(matches!(mallory.broadcast("elsewhere", b"ok").await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn a_peer_that_sends_half_a_frame_and_vanishes_is_removed_after_the_idle_timeout() {
    let (relay, _watcher, mut lane) = relay_with_watcher(600).await;

    // The ghost runs on its own runtime; shutting it down stops its endpoint without a word.
    let ghost_relay = relay.clone();
    vanish(move || async move {
        let conn = ghost_relay.connect_raw_with_idle(Duration::from_millis(600)).await;
        let (mut ghost, lane) =
            ghost_relay.join(ghost_relay.raw_peer_on(conn).await, "ghost", "lobby").await;
        // A whole request, then the first 10 bytes of a 100-byte frame, in one write: the
        // reply to the first shows the server read up to the half frame.
        let mut bytes = BytesMut::new();
        let logout = RequestFrame { request: 900, body: Request::Logout { room: "x".into() } };
        encode_frame(&logout, &mut bytes).unwrap();
        bytes.put_u32(100);
        bytes.put_slice(&[0; 10]);
        ghost.write_raw(&bytes).await;
        loop {
            match within(ghost.control.next::<ControlFrame>()).await.unwrap() {
                Some(ControlFrame::Reply(reply)) if reply.request == 900 => break,
                Some(_) => continue,
                None => panic!("control stream ended"),
            }
        }
        (ghost, lane)
    })
    .await;

    assert!(
        matches!(next_event(&mut lane).await, LaneEvent::UsersJoined(m) if m[0].user.id == "ghost")
    );
    match next_event(&mut lane).await {
        LaneEvent::UsersLeft(members) => assert_eq!(members[0].user.id, "ghost"),
        other => panic!("expected the ghost to leave, got {other:?}"),
    }
    within(async {
        while relay.handle.stats().connections_open != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A vanished peer is not a protocol violation: its half frame was simply never finished.
    assert_eq!(relay.handle.stats().protocol_violations, 0);
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused() {
    const LIMIT: usize = 3;
    const EXTRA: u64 = 20;
    let mut config = test_config();
    config.max_connections_per_address = LIMIT;
    let relay = TestRelay::start(config).await;
    let mut peers = Vec::new();
    for user in ["alice", "bob", "carol"] {
        peers.push(relay.raw_member(user, "lobby").await);
    }
    for _ in 0..EXTRA {
        let refused = connect(&relay).await;
        assert!(matches!(refused, Err(quinn::ConnectionError::ConnectionClosed(_))), "{refused:?}");
    }
    let stats = relay.handle.stats();
    assert_eq!(stats.connections_refused, EXTRA);
    assert_eq!(stats.connections_refused_per_address, EXTRA);
    assert_eq!(stats.connections_open, LIMIT as u64);
    assert_eq!(stats.retries, 0, "no Retry below the handshake threshold");

    // The admitted connections are still served.
    let (alice, _) = &mut peers[0];
    assert!(matches!(alice.broadcast("lobby", b"served").await, Outcome::Sent { .. }));
    // A connection that closes gives its place back.
    let (carol, _) = peers.pop().unwrap();
    carol.conn.close(0u32.into(), b"bye");
    within(async {
        while relay.handle.stats().connections_open as usize == LIMIT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (mut dave, _lane) = relay.raw_member("dave", "lobby").await;
    assert!(matches!(dave.broadcast("lobby", b"in again").await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn under_handshake_load_new_addresses_are_validated_with_a_retry() {
    const CLIENTS: u64 = 8;
    let mut config = test_config();
    // Every handshake counts as load: every new address must answer a Retry.
    config.retry_above_handshakes = 0;
    let relay = TestRelay::start(config).await;
    let mut connects = JoinSet::new();
    for _ in 0..CLIENTS {
        let (addr, ca) = (relay.addr, relay.ca.clone());
        connects.spawn(async move {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.set_default_client_config(
                qrelay::transport::client_config(&[ca], Duration::from_secs(5)).unwrap(),
            );
            within(endpoint.connect(addr, "localhost").unwrap()).await
        });
    }
    let mut peers = Vec::new();
    while let Some(connected) = within(connects.join_next()).await {
        // quinn clients follow the Retry by themselves.
        peers.push(relay.raw_peer_on(connected.unwrap().expect("connect after a Retry")).await);
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let outcome = peer.login(&relay, &format!("user{i}"), "lobby").await;
        assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
    }
    let stats = relay.handle.stats();
    assert!(stats.retries >= CLIENTS, "{stats:?}");
    assert_eq!(stats.connections_accepted, CLIENTS);
    assert_eq!(stats.handshakes_in_progress, 0);
}

/// One connection attempt from a fresh endpoint (a new source port on 127.0.0.1).
async fn connect(relay: &TestRelay) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        qrelay::transport::client_config(std::slice::from_ref(&relay.ca), Duration::from_secs(5))
            .unwrap(),
    );
    within(endpoint.connect(relay.addr, "localhost").unwrap()).await
}
