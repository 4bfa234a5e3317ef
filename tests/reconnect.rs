//! Automatic reconnect and recovery with the client library against an in-process relay: a
//! receiver whose network goes away mid-stream, a server restart, a server gone for good,
//! and a receiver so slow that the server drops it. Outcomes only, never timing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use qrelay::client::{Client, ClientConfig, ConnectionState, Event, Events, ReconnectPolicy};
use qrelay::protocol::{ErrorCode, User, close};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A client of `relay` as `user`, configured by `adjust`, logged in to `rooms`.
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

/// Short timeouts and backoff, so that the tests' outages end soon.
fn quick(config: &mut ClientConfig) {
    config.request_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config.reconnect.initial_backoff = Duration::from_millis(50);
    config.reconnect.max_backoff = Duration::from_millis(300);
}

/// A UDP forwarder between one client and the relay that the test can cut: every packet in
/// either direction is dropped, as when the network goes away.
struct Cuttable {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Cuttable {
    async fn start(server: SocketAddr) -> Cuttable {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind front");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind back");
        back.connect(server).await.expect("connect back");
        let addr = front.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let cut = Arc::clone(&cut);
            async move {
                let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
                let mut client = None;
                loop {
                    tokio::select! {
                        received = front.recv_from(&mut up) => {
                            let Ok((n, from)) = received else { return };
                            client = Some(from);
                            if !cut.load(Ordering::Relaxed) {
                                let _ = back.send(&up[..n]).await;
                            }
                        }
                        received = back.recv(&mut down) => {
                            // An error here is an ICMP report for an earlier packet: ignore it.
                            let Ok(n) = received else { continue };
                            if let Some(client) = client
                                && !cut.load(Ordering::Relaxed)
                            {
                                let _ = front.send_to(&down[..n], client).await;
                            }
                        }
                    }
                }
            }
        });
        Cuttable { addr, cut, task }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fields of a `Recovered` event: complete, missed, replayed.
type Recovery = (bool, Option<(u64, u64)>, u64);

/// What a receiver saw while it collected broadcasts.
#[derive(Debug, Default)]
struct Seen {
    ids: Vec<u64>,
    states: Vec<ConnectionState>,
    recovered: Vec<Recovery>,
}

impl Seen {
    /// Files one event; a room closing or the client ending fails the test.
    fn add(&mut self, event: Event) {
        match event {
            Event::Broadcasts { messages, .. } => self.ids.extend(messages.iter().map(|m| m.id)),
            Event::ConnectionState(state) => self.states.push(state),
            Event::Recovered { complete, missed, replayed, .. } => {
                self.recovered.push((complete, missed, replayed));
            }
            Event::UsersJoined { .. } | Event::UsersLeft { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn saw(&self, state: &ConnectionState) -> bool {
        self.states.contains(state)
    }
}

#[tokio::test]
async fn a_receiver_cut_off_mid_stream_gets_every_broadcast_exactly_once() {
    const N: u64 = 200;
    const CUT_AFTER: usize = 50;
    let relay = TestRelay::start(test_config()).await;
    let path = Cuttable::start(relay.addr).await;
    let (bob, mut bob_events) = client(&relay, "bob", &["lobby"], |config| {
        quick(config);
        config.server = path.addr.into();
        config.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], |_| {}).await;
    let sender = tokio::spawn(async move {
        for id in 1..=N {
            let sent = within(alice.send_broadcast_message("lobby", id.to_string())).await;
            assert_eq!(sent, Ok(id));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        alice
    });

    let mut seen = Seen::default();
    while seen.ids.last() != Some(&N) {
        let event = within(bob_events.next()).await.expect("an event");
        let reconnecting =
            matches!(event, Event::ConnectionState(ConnectionState::Reconnecting { .. }));
        seen.add(event);
        if seen.ids.len() >= CUT_AFTER && seen.states.is_empty() {
            path.set_cut(true); // bob's idle timeout ends his connection
        }
        if reconnecting {
            path.set_cut(false);
        }
    }
    assert_eq!(seen.ids, (1..=N).collect::<Vec<_>>(), "every broadcast once, in order");
    assert!(seen.saw(&ConnectionState::Reconnecting { attempt: 1 }), "{:?}", seen.states);
    assert!(seen.saw(&ConnectionState::Reconnected), "{:?}", seen.states);
    assert!(!seen.recovered.is_empty() && seen.recovered.iter().all(|r| r.0 && r.1.is_none()));
    assert!(bob.stats().reconnects >= 1);
    within(sender).await.expect("sender").close().await;
    bob.close().await;
}

#[tokio::test]
async fn clients_come_back_by_themselves_after_a_server_restart() {
    let relay = TestRelay::start(test_config()).await;
    let (bob, mut bob_events) = client(&relay, "bob", &["lobby"], quick).await;
    let (alice, mut alice_events) = client(&relay, "alice", &["lobby"], quick).await;
    for id in 1..=3 {
        assert_eq!(within(alice.send_broadcast_message("lobby", "before")).await, Ok(id));
    }
    let mut seen = Seen::default();
    while seen.ids.len() < 3 {
        seen.add(within(bob_events.next()).await.expect("an event"));
    }

    let relay = relay.restart(test_config()).await;
    for events in [&mut bob_events, &mut alice_events] {
        let mut seen = Seen::default();
        while seen.recovered.is_empty() {
            seen.add(within(events.next()).await.expect("an event"));
        }
        assert!(seen.saw(&ConnectionState::Reconnecting { attempt: 1 }), "{:?}", seen.states);
        assert_eq!(seen.states.last(), Some(&ConnectionState::Reconnected));
        // The restarted relay knows nothing of the old room: a new epoch.
        assert_eq!(seen.recovered, vec![(false, None, 0)]);
        assert!(seen.ids.is_empty());
    }
    assert_eq!(bob.rooms(), vec!["lobby".to_string()]);
    // The new room's IDs start again at 1, and messages flow both ways.
    assert_eq!(within(alice.send_broadcast_message("lobby", "after")).await, Ok(1));
    let mut seen = Seen::default();
    while seen.ids.is_empty() {
        seen.add(within(bob_events.next()).await.expect("an event"));
    }
    assert_eq!(seen.ids, vec![1]);
    assert_eq!(within(bob.send_broadcast_message("lobby", "back")).await, Ok(2));
    assert_eq!(relay.handle.room_count(), 1);
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn reconnecting_gives_up_after_its_bound() {
    let relay = TestRelay::start(test_config()).await;
    let (bob, mut events) = client(&relay, "bob", &["lobby"], |config| {
        config.request_timeout = Duration::from_millis(300);
        config.connect_timeout = Duration::from_millis(300);
        config.reconnect = ReconnectPolicy {
            enabled: true,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(1),
        };
    })
    .await;
    relay.handle.shutdown().await;
    drop(relay);

    let mut all = Vec::new();
    while let Some(event) = within(events.next()).await {
        all.push(event);
    }
    let (last, rest) = all.split_last().expect("events");
    assert_eq!(
        last,
        &Event::Disconnected {
            code: Some(u64::from(close::SHUTDOWN)),
            reason: "server shutting down".into()
        }
    );
    let (failed, attempts) = rest.split_last().expect("more events");
    assert!(
        matches!(failed, Event::ConnectionState(ConnectionState::Failed { reason }) if reason.contains("no connection within")),
        "{failed:?}"
    );
    // Reconnecting 1, 2, …: nothing else (the room is kept, not closed, while trying).
    assert!(!attempts.is_empty());
    for (i, event) in attempts.iter().enumerate() {
        let attempt = u32::try_from(i + 1).unwrap();
        assert_eq!(event, &Event::ConnectionState(ConnectionState::Reconnecting { attempt }));
    }
    let after = within(bob.send_broadcast_message("lobby", "x")).await;
    assert_eq!(after.map_err(|e| e.code()), Err(ErrorCode::DISCONNECTED));
}

#[tokio::test]
async fn a_slow_receiver_is_logged_in_again_and_misses_nothing() {
    const AFTER_THE_DROP: u64 = 20;
    let mut config = test_config();
    config.lane_queue = 300;
    config.history_size = 200;
    let relay = TestRelay::start(config).await;
    let (bob, mut bob_events) = client(&relay, "bob", &["lobby"], |_| {}).await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], |_| {}).await;

    // bob's application stops reading: his event queue fills, then his QUIC windows, then
    // his lane queue on the relay, which drops him as too slow. alice keeps sending.
    let payload = bytes::Bytes::from(vec![b'x'; 1000]);
    let mut sent = 0u64;
    while relay.handle.stats().slow_receivers == 0 {
        assert!(sent < 20_000, "bob was never dropped as too slow");
        sent += 1;
        assert_eq!(within(alice.send_broadcast_message("lobby", payload.clone())).await, Ok(sent));
    }
    for _ in 0..AFTER_THE_DROP {
        sent += 1;
        assert_eq!(within(alice.send_broadcast_message("lobby", payload.clone())).await, Ok(sent));
    }

    // bob reads again: what was queued, then (logged in again by the client) the replay.
    let mut seen = Seen::default();
    while seen.ids.last() != Some(&sent) {
        seen.add(within(bob_events.next()).await.expect("an event"));
    }
    assert!(seen.ids.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate");
    let [(complete, missed, _)] = seen.recovered[..] else {
        panic!("expected one Recovered event: {:?}", seen.recovered);
    };
    let missing: Vec<u64> = (1..=sent).filter(|id| seen.ids.binary_search(id).is_err()).collect();
    match missed {
        None => assert!(complete && missing.is_empty(), "{missing:?}"),
        Some((first, last)) => {
            assert!(!complete);
            assert_eq!(missing, (first..=last).collect::<Vec<_>>(), "exactly what is missing");
        }
    }
    assert!(seen.states.is_empty(), "the connection itself was never lost");
    assert_eq!(bob.rooms(), vec!["lobby".to_string()]);
    assert_eq!(relay.handle.stats().slow_receivers, 1);
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn a_replay_never_echoes_the_receivers_own_broadcast() {
    let relay = TestRelay::start(test_config()).await;
    let (bob, mut bob_events) = client(&relay, "bob", &["lobby"], quick).await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], quick).await;
    // bob's own broadcast is in the room's history, after the last one he received (none).
    assert_eq!(within(bob.send_broadcast_message("lobby", "mine")).await, Ok(1));
    bob.connection().expect("connected").close(0u32.into(), b"network gone");
    let mut seen = Seen::default();
    while seen.recovered.is_empty() {
        seen.add(within(bob_events.next()).await.expect("an event"));
    }
    // The relay does not replay it (replayed: 0): the sender never gets its own. (The client
    // would also drop it, as an ID it has accounted for.)
    assert_eq!(seen.recovered, vec![(true, None, 0)]);
    assert_eq!(within(alice.send_broadcast_message("lobby", "theirs")).await, Ok(2));
    while seen.ids.is_empty() {
        seen.add(within(bob_events.next()).await.expect("an event"));
    }
    assert_eq!(seen.ids, vec![2]);
    assert_eq!(bob.stats().broadcast_duplicates, 0, "nothing to drop: the relay sent no echo");
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn barrage_to_a_receiver_whose_path_is_gone_is_dropped_and_counted_not_queued() {
    let relay = TestRelay::start(test_config()).await;
    let path = Cuttable::start(relay.addr).await;
    // bob sits behind a path that will go away; his long idle timeout keeps the connection.
    let (_bob, _bob_events) = client(&relay, "bob", &["lobby"], |config| {
        config.server = path.addr.into();
        config.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let (carol, mut carol_events) = client(&relay, "carol", &["lobby"], |_| {}).await;
    let (alice, _alice_events) = client(&relay, "alice", &["lobby"], |_| {}).await;
    path.set_cut(true);
    // 300 barrage of 1000 bytes: far more than bob's 64 KiB datagram queue can hold while
    // nothing reaches him.
    let payload = bytes::Bytes::from(vec![b'b'; 1000]);
    for _ in 0..300 {
        assert!(within(alice.send_barrage_message("lobby", payload.clone())).await.is_ok());
    }
    let dropped = relay.handle.stats().datagrams_dropped_congested;
    assert!(dropped > 0, "no barrage counted as dropped for the cut-off receiver");
    assert!(dropped < 300, "{dropped}: some barrage fitted the queue");
    // carol, whose path is fine, got barrage all along.
    let mut received = 0;
    while received == 0 {
        if let Event::Barrages { messages, .. } = within(carol_events.next()).await.expect("event")
        {
            received += messages.len();
        }
    }
    let _ = carol;
}
