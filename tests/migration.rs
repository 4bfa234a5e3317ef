//! Network changes without a reconnect (QUIC connection migration), with the client library
//! against an in-process relay: a receiver moves to a new UDP socket in the middle of a stream
//! of broadcasts and barrage. Outcomes only, never timing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use qrelay::client::{Client, ClientConfig, Event, Events, RebindError};
use qrelay::protocol::User;

/// A client of `relay` as `user` on its own endpoint, logged in to `room`.
async fn client(relay: &TestRelay, user: &str, room: &str) -> (Client, Events) {
    let user = User { id: user.into(), name: user.to_uppercase() };
    let config = ClientConfig::new(relay.addr, "localhost", vec![relay.ca.clone()], user);
    let (client, events) = within(Client::connect(config)).await.expect("connect");
    within(client.login_room(room, &relay.token(&client.user().id))).await.expect("login");
    (client, events)
}

/// What the receiver saw.
#[derive(Debug, Default)]
struct Seen {
    /// Broadcast IDs, in arrival order.
    ids: Vec<u64>,
    /// Barrage messages received since the receiver moved to its new socket.
    barrage_since_rebind: usize,
}

impl Seen {
    /// Files one event. Anything that a reconnect or a re-login would bring
    /// (`ConnectionState`, `Recovered`, `RoomClosed`, `Disconnected`) fails the test.
    fn add(&mut self, event: Event, rebound: bool) {
        match event {
            Event::Broadcasts { messages, .. } => self.ids.extend(messages.iter().map(|m| m.id)),
            Event::Barrages { messages, .. } if rebound => {
                self.barrage_since_rebind += messages.len();
            }
            Event::Barrages { .. } | Event::UsersJoined { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Waits until nothing holds `addr` any more: the endpoint let go of its old socket, which it
/// does once a packet of the connection arrived on the new one.
async fn released(addr: SocketAddr) {
    within(async {
        while std::net::UdpSocket::bind(addr).is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_receiver_that_rebinds_mid_stream_keeps_its_connection_and_misses_nothing() {
    const N: u64 = 300;
    const REBIND_AFTER: usize = 100;
    let relay = TestRelay::start(test_config()).await;
    let (bob, mut bob_events) = client(&relay, "bob", "lobby").await;
    let (alice, _alice_events) = client(&relay, "alice", "lobby").await;
    let connection = bob.connection().expect("connected").stable_id();
    let old_addr = bob.local_addr().expect("local address");
    let before = relay.handle.stats();

    // alice sends N broadcasts, each followed by a barrage, while bob receives and moves.
    let sender = tokio::spawn({
        let alice = alice.clone();
        async move {
            for i in 1..=N {
                alice.send_broadcast_message("lobby", format!("b{i}")).await.expect("broadcast");
                alice.send_barrage_message("lobby", format!("g{i}")).await.expect("barrage");
            }
        }
    });
    let mut seen = Seen::default();
    let mut new_addr = None;
    while seen.ids.len() < N as usize {
        let event = within(bob_events.next()).await.expect("bob's events ended");
        seen.add(event, new_addr.is_some());
        if new_addr.is_none() && seen.ids.len() >= REBIND_AFTER {
            new_addr = Some(bob.rebind_to("127.0.0.1:0".parse().unwrap()).expect("rebind"));
        }
    }
    within(sender).await.expect("sender");
    let new_addr = new_addr.expect("bob rebound");
    assert_ne!(new_addr.port(), old_addr.port());
    assert_eq!(bob.local_addr().expect("local address"), new_addr);
    // The relay sends to the new address: bob's old socket is closed.
    released(old_addr).await;

    // Broadcasts and barrage go on from the new socket (barrage is best effort: alice sends
    // until one arrives).
    let mut last = N;
    while seen.barrage_since_rebind == 0 {
        last += 1;
        alice.send_broadcast_message("lobby", format!("b{last}")).await.expect("broadcast");
        alice.send_barrage_message("lobby", format!("g{last}")).await.expect("barrage");
        while seen.ids.len() < last as usize {
            seen.add(within(bob_events.next()).await.expect("bob's events ended"), true);
        }
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), bob_events.next()).await
        {
            seen.add(event, true);
        }
        assert!(last < N + 50, "no barrage arrived after the rebind");
    }
    while let Some(event) = bob_events.try_next() {
        seen.add(event, true);
    }

    // Every broadcast once and in order, on the same connection, with no re-login.
    assert_eq!(seen.ids, (1..=last).collect::<Vec<_>>());
    assert_eq!(bob.connection().expect("connected").stable_id(), connection);
    let stats = bob.stats();
    assert_eq!((stats.reconnects, stats.rebinds), (0, 1));
    let after = relay.handle.stats();
    assert_eq!(after.logins, before.logins, "no login since the rebind");
    assert_eq!(after.connections_accepted, before.connections_accepted, "no new connection");
}

#[tokio::test]
async fn a_client_on_a_shared_endpoint_does_not_rebind_it() {
    let relay = TestRelay::start(test_config()).await;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    let user = User { id: "carol".into(), name: "Carol".into() };
    let config = ClientConfig::new(relay.addr, "localhost", vec![relay.ca.clone()], user);
    let (carol, _events) = within(Client::connect_with(&endpoint, config)).await.expect("connect");
    let addr = endpoint.local_addr().expect("local address");
    assert!(matches!(carol.rebind(), Err(RebindError::SharedEndpoint)));
    assert_eq!(endpoint.local_addr().expect("local address"), addr);
    assert_eq!(carol.local_addr().expect("local address"), addr);

    let (dave, _events) = client(&relay, "dave", "lobby").await;
    dave.close().await;
    assert!(matches!(dave.rebind(), Err(RebindError::Closed)));
}
