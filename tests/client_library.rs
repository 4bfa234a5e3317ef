//! The client library against a real relay, as an application uses it: pipelined sends,
//! barrage without a reply, fresh barrage only, host names and lists of relay addresses.

mod common;

use std::time::Duration;

use qrelay::client::{Client, ClientConfig, ConnectionState, Event, Events, ServerList};
use qrelay::protocol::User;

use common::{TestRelay, test_config, within};

/// A client of `relay` as `user`, logged in to `rooms`, with its config changed by `adjust`.
async fn client(
    relay: &TestRelay,
    user: &str,
    rooms: &[&str],
    adjust: impl FnOnce(&mut ClientConfig),
) -> (Client, Events) {
    let user = User { id: user.into(), name: user.to_uppercase() };
    let mut config = ClientConfig::new(relay.addr, "localhost", vec![relay.ca.clone()], user);
    adjust(&mut config);
    let (client, events) = within(Client::connect(config)).await.expect("connect");
    for room in rooms {
        within(client.login_room(room, &relay.token(&client.user().id))).await.expect("login");
    }
    (client, events)
}

/// Waits until `events` has named `user` as a member (so that what it sends next reaches us).
async fn wait_for_member(events: &mut Events, user: &str) {
    loop {
        match within(events.next()).await {
            Some(Event::UsersJoined { users, .. }) if users.iter().any(|u| u.id == user) => return,
            Some(_) => continue,
            None => panic!("events ended before {user} joined"),
        }
    }
}

/// The next broadcasts (IDs and payloads), skipping other events.
async fn next_broadcasts(events: &mut Events) -> Vec<(u64, String)> {
    loop {
        match within(events.next()).await {
            Some(Event::Broadcasts { messages, .. }) => {
                return messages
                    .into_iter()
                    .map(|m| (m.id, String::from_utf8_lossy(&m.payload).into_owned()))
                    .collect();
            }
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
}

#[tokio::test]
async fn pipelined_broadcasts_get_ids_in_call_order() {
    let relay = TestRelay::start(test_config()).await;
    let (bob, mut bob_events) = client(&relay, "bob", &["lobby"], |_| {}).await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], |_| {}).await;
    wait_for_member(&mut bob_events, "alice").await;

    const N: u64 = 200;
    // Every send is on its way before the first result is awaited.
    let pending: Vec<_> =
        (1..=N).map(|i| alice.start_broadcast_message("lobby", format!("#{i}"))).collect();
    let mut ids = Vec::new();
    for sent in pending {
        ids.push(within(sent).await.expect("sent"));
    }
    assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "the relay numbered them in call order");
    let mut received = Vec::new();
    while received.len() < N as usize {
        received.extend(next_broadcasts(&mut bob_events).await);
    }
    let expected: Vec<_> = (1..=N).map(|i| (i, format!("#{i}"))).collect();
    assert_eq!(received, expected);
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn barrage_without_reply_is_delivered() {
    let relay = TestRelay::start(test_config()).await;
    let (bob, mut bob_events) = client(&relay, "bob", &["lobby"], |_| {}).await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], |_| {}).await;
    wait_for_member(&mut bob_events, "alice").await;

    alice.send_barrage_message_no_reply("lobby", "👍").expect("sent");
    let acknowledged = within(alice.send_barrage_message("lobby", "🎉")).await.expect("sent");
    let mut received = Vec::new();
    while received.len() < 2 {
        match within(bob_events.next()).await {
            Some(Event::Barrages { messages, .. }) => received.extend(messages),
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
    // Datagrams may be reordered on the way: match by payload.
    let id_of = |text: &str| received.iter().find(|m| m.payload == text.as_bytes()).map(|m| m.id);
    assert_eq!(id_of("🎉"), Some(acknowledged));
    let unacknowledged = id_of("👍").expect("the barrage without reply arrived");
    assert_ne!(unacknowledged, acknowledged, "one per-room sequence for both forms");
    assert!(received.iter().all(|m| m.from.as_ref().is_some_and(|u| u.id == "alice")));
    // No reply came for it: the only reply was the acknowledged one's.
    assert_eq!(alice.stats().late_replies, 0);
    alice.close().await;
    bob.close().await;
}

/// The payloads of the next barrage event, skipping other events.
async fn next_barrage(events: &mut Events) -> Vec<String> {
    loop {
        match within(events.next()).await {
            Some(Event::Barrages { messages, .. }) => {
                let text = |m: &qrelay::client::ReceivedBarrage| {
                    String::from_utf8_lossy(&m.payload).into_owned()
                };
                return messages.iter().map(text).collect();
            }
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
}

/// Waits until `client` has received `n` barrage messages in all.
async fn received_barrage(client: &Client, n: u64) {
    within(async {
        while client.stats().barrage_received < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_receiver_that_stalls_gets_no_stale_barrage_and_counts_the_drops() {
    let relay = TestRelay::start(test_config()).await;
    let max_age = Duration::from_millis(400);
    let (bob, mut bob_events) =
        client(&relay, "bob", &["lobby"], |config| config.barrage_max_age = Some(max_age)).await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], |_| {}).await;
    wait_for_member(&mut bob_events, "alice").await;

    within(alice.send_barrage_message("lobby", "before")).await.expect("sent");
    assert_eq!(next_barrage(&mut bob_events).await, ["before"]);

    // bob stops reading events; what arrives meanwhile waits in his event queue.
    const STALE: u64 = 10;
    for i in 0..STALE {
        within(alice.send_barrage_message("lobby", format!("stale {i}"))).await.expect("sent");
    }
    received_barrage(&bob, 1 + STALE).await;
    tokio::time::sleep(max_age * 3).await;
    within(alice.send_barrage_message("lobby", "after")).await.expect("sent");
    received_barrage(&bob, 2 + STALE).await;

    // Reading again, bob gets only what is younger than the max age.
    assert_eq!(next_barrage(&mut bob_events).await, ["after"]);
    assert_eq!(bob_events.try_next(), None);
    let stats = bob.stats();
    assert_eq!((stats.barrage_received, stats.barrage_stale), (2 + STALE, STALE));
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn a_host_name_and_a_list_of_addresses_connect() {
    let relay = TestRelay::start(test_config()).await;
    let by_name: ServerList = format!("localhost:{}", relay.addr.port()).parse().expect("list");
    let (alice, _events) = client(&relay, "alice", &["lobby"], |config| {
        config.server = by_name;
    })
    .await;
    assert_eq!(within(alice.send_broadcast_message("lobby", "hi")).await, Ok(1));
    alice.close().await;

    // A dead address first: it gets the connect timeout, then the next one is tried.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let list = format!("{},localhost:{}", silent.local_addr().expect("addr"), relay.addr.port());
    let (bob, _events) = client(&relay, "bob", &["lobby"], |config| {
        config.server = list.parse().expect("list");
        config.connect_timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(within(bob.send_broadcast_message("lobby", "hi")).await, Ok(2));
    bob.close().await;
}

/// Waits for the `Reconnected` event, skipping others.
async fn reconnected(events: &mut Events) {
    loop {
        match within(events.next()).await {
            Some(Event::ConnectionState(ConnectionState::Reconnected)) => return,
            Some(Event::ConnectionState(ConnectionState::Failed { reason })) => panic!("{reason}"),
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
}

#[tokio::test]
async fn a_lost_connection_moves_on_to_the_next_relay() {
    let a = TestRelay::start(test_config()).await;
    let b = TestRelay::start(test_config()).await;
    let list = format!("{},{}", a.addr, b.addr);
    let (alice, mut events) = client(&a, "alice", &["lobby"], |config| {
        config.server = list.parse().expect("list");
        config.roots.push(b.ca.clone());
        config.reconnect.initial_backoff = Duration::from_millis(20);
    })
    .await;
    let connected_to = |client: &Client| client.connection().map(|c| c.remote_address());
    assert_eq!(connected_to(&alice), Some(a.addr));
    // Both relays keep running: only the order of the list decides where the client goes.
    for next in [b.addr, a.addr] {
        alice.connection().expect("connected").close(0u32.into(), b"network lost");
        reconnected(&mut events).await;
        assert_eq!(connected_to(&alice), Some(next));
        let id = within(alice.send_broadcast_message("lobby", "still here")).await;
        assert!(id.is_ok(), "logged in again on {next}: {id:?}");
    }
    alice.close().await;
}
