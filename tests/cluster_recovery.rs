//! Regression tests of the cluster's recovery paths (fixes from review): a room closed while a
//! member of another node keeps sending, a quiet room whose log expired, a NATS server with
//! memory storage restarted (the stream gone), a client moving to another node while the
//! room goes on, and a connection that pipelines logins to rooms its node does not hold.
//! Several `qrelay serve` processes share a real `nats-server` with JetStream
//! (tests/common/cluster.rs).
//!
//! Invariants only (nothing lost, nothing duplicated, IDs without gaps or reuse), never timing;
//! every wait is bounded. Needs `nats-server` (scripts/test installs it).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Limits};
use common::peers::{
    Api, NATS_BACK, Peer, ROOM, all_see_each_other, is_cluster_unavailable, set, short_node_timeout,
};
use common::{STEP, within};
use qrelay::client::{Client, ClientError, ConnectionState, Event};
use qrelay::protocol::ErrorCode;
use serde_json::json;

/// What a [`Sender`] got back.
#[derive(Debug, Default)]
struct Sent {
    /// The IDs it got, each with when its reply arrived.
    ids: Vec<(u64, Instant)>,
    /// Refusals (by the relay or the client library's own checks).
    refused: Vec<(ErrorCode, String)>,
    /// Sends whose fate is unknown (no reply, the connection lost).
    unknown: Vec<String>,
}

impl Sent {
    fn id_list(&self) -> Vec<u64> {
        self.ids.iter().map(|(id, _)| *id).collect()
    }
}

/// A member that sends a broadcast into [`ROOM`] every `every`, one at a time, until stopped.
struct Sender {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Sent>,
}

impl Sender {
    fn start(client: Client, every: Duration) -> Sender {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut sent = Sent::default();
            for n in 0u64.. {
                if *stopped.borrow() {
                    break;
                }
                let send = client.send_broadcast_message(ROOM, format!("n{n}"));
                match tokio::time::timeout(STEP, send).await {
                    Ok(Ok(id)) => sent.ids.push((id, Instant::now())),
                    Ok(Err(
                        ClientError::Refused { code, detail }
                        | ClientError::Invalid { code, detail },
                    )) => sent.refused.push((code, detail)),
                    Ok(Err(other)) => sent.unknown.push(other.to_string()),
                    Err(_) => sent.unknown.push(format!("no reply within {STEP:?}")),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => {}
                }
            }
            sent
        });
        Sender { stop, task }
    }

    async fn stop(self) -> Sent {
        self.stop.send_replace(true);
        within(self.task).await.expect("the sender's task")
    }
}

fn strictly_ascending(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

/// The server API of node1 closes the room while a member of node0 sends a broadcast every
/// 20 ms. Every broadcast the sender got an ID for before the close reached the room's other
/// members (on both nodes), gap-free. The room's new incarnation (new members on both nodes)
/// numbers its broadcasts from 1 without a gap and is never closed: before the fix, the old
/// incarnation's in-flight broadcast was written after the close, and every node switched
/// back to the old room, closing the new one.
#[tokio::test]
async fn a_room_closed_during_sends_starts_anew_and_the_new_room_is_never_closed() {
    let cluster = Cluster::start(2).await;
    let mut old = Vec::new();
    for (k, user) in [(0, "alice"), (1, "bob"), (0, "carol")] {
        old.push(Peer::join(&cluster, k, user).await);
    }
    all_see_each_other(&mut old).await;
    let sender = Sender::start(old[0].client.clone(), Duration::from_millis(20));
    old[1].until("some of alice's broadcasts", |seen| seen.broadcasts.len() >= 10).await;

    let closing = Instant::now();
    let path = format!("/v1/rooms/{ROOM}?reason=maintenance");
    let answer = Api::of(&cluster, 1).send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!((answer.status, &answer.body), (200, &json!({"closed": ROOM})), "{answer:?}");
    // Every old member's lane closes (so both nodes applied the close); what each received
    // before is the old room's.
    let mut old_ids = Vec::new();
    for peer in &mut old {
        peer.until("the room closed", |seen| !seen.closed.is_empty()).await;
        peer.drain();
        assert_eq!(
            peer.seen.closed,
            [(ErrorCode::ROOM_CLOSED, "maintenance".to_owned())],
            "{}",
            peer.name
        );
        old_ids.push(peer.seen.broadcast_ids());
    }

    // The new incarnation, while alice's sender still runs.
    let mut new = Vec::new();
    for (k, user) in [(0, "dave"), (1, "erin")] {
        new.push(Peer::join(&cluster, k, user).await);
    }
    all_see_each_other(&mut new).await;
    let mut expected = 1;
    for round in 0..3 {
        for peer in &new {
            let id = peer.broadcast(&format!("{} {round}", peer.name)).await;
            assert_eq!(id, Ok(expected), "{}: the new room's IDs start at 1, gap-free", peer.name);
            expected += 1;
        }
    }
    let sent = sender.stop().await;
    // bob, an old member, logs in again on node1: he is in the new room.
    let bob = &mut old[1];
    // The old room's members are gone with it.
    bob.seen.members.clear();
    within(bob.client.login_room(ROOM, &cluster.token("bob"))).await.expect("bob's new login");
    bob.until("the new room's members", |seen| seen.members == set(&["dave", "erin"])).await;
    // Time for a wrong switch back to the old room to show (none expected), then more sends.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 3..5 {
        for peer in &new {
            let id = peer.broadcast(&format!("{} {round}", peer.name)).await;
            assert_eq!(id, Ok(expected), "{}: the new room's IDs go on", peer.name);
            expected += 1;
        }
    }
    let last = expected - 1;
    for peer in new.iter_mut().chain([&mut old[1]]) {
        // erin sent the last one (dave the odd IDs, erin the even ones).
        let others_last = if peer.name == "erin" { last - 1 } else { last };
        peer.until("the new room's last broadcast", |seen| seen.has_broadcast(others_last)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for peer in &mut new {
        peer.drain();
        let want: Vec<u64> = (1..=last)
            .filter(|id| {
                // dave sent the odd IDs, erin the even ones.
                (id % 2 == 1) != (peer.name == "dave")
            })
            .collect();
        assert_eq!(peer.seen.broadcast_ids(), want, "{} received", peer.name);
        assert!(peer.seen.closed.is_empty(), "{} was closed: {:?}", peer.name, peer.seen.closed);
        assert!(peer.seen.states.is_empty(), "{}: {:?}", peer.name, peer.seen.states);
        assert_eq!(peer.client.rooms(), [ROOM], "{}", peer.name);
    }
    let bob = &mut old[1];
    bob.drain();
    assert_eq!(bob.seen.closed.len(), 1, "bob's new room was closed: {:?}", bob.seen.closed);
    assert_eq!(bob.client.rooms(), [ROOM]);
    let bob_new = bob.seen.broadcast_ids()[old_ids[1].len()..].to_vec();
    assert!(strictly_ascending(&bob_new), "bob in the new room: {bob_new:?}");
    assert_eq!(bob_new.last(), Some(&last), "bob in the new room: {bob_new:?}");
    for k in 0..2 {
        Api::of(&cluster, k).until_members(&["bob", "dave", "erin"], "the new room").await;
    }

    // The old room: alice's IDs from 1 without a gap; each one she got before the close
    // reached bob (node1) and carol (node0), once, in order.
    eprintln!(
        "alice got {} IDs, {} refusals (first {:?}), {} of unknown fate",
        sent.ids.len(),
        sent.refused.len(),
        sent.refused.first(),
        sent.unknown.len()
    );
    let acked = sent.id_list();
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>(), "alice's IDs");
    let before_close: Vec<u64> =
        sent.ids.iter().filter(|(_, at)| *at < closing).map(|(id, _)| *id).collect();
    assert!(!before_close.is_empty(), "alice got no ID before the close: {sent:?}");
    for (k, name) in [(1, "bob"), (2, "carol")] {
        let got = &old_ids[k];
        assert!(strictly_ascending(got), "{name} in the old room: {got:?}");
        assert_eq!(*got, (1..=got.len() as u64).collect::<Vec<_>>(), "{name}: gap-free");
        let lost: Vec<u64> = before_close.iter().copied().filter(|id| !got.contains(id)).collect();
        assert!(lost.is_empty(), "{name} never received alice's broadcasts {lost:?}");
        let after: Vec<u64> = acked.iter().copied().filter(|id| !got.contains(id)).collect();
        eprintln!("{name}: IDs alice got but {name} did not receive: {after:?}");
    }
    for peer in old.into_iter().chain(new) {
        peer.client.close().await;
    }
}

/// The configuration of the quiet-room tests: a room's log and member records expire from the
/// stream after 2 s.
fn short_log() -> Limits {
    Limits::UnlimitedWith("[cluster]\nlog_max_age_secs = 2\nnode_timeout_ms = 1000\n".into())
}

/// Longer than the log's maximum age (2 s) with room to spare.
const QUIET: Duration = Duration::from_secs(5);

/// With `log_max_age_secs = 2`, members stay in a room where nobody sends for longer than the
/// log's maximum age: a send is then accepted (not CLUSTER_UNAVAILABLE), its ID continues the
/// room's (no restart at 1, no reuse) and it reaches the member on the other node; the same
/// after a second quiet period through the server API. Nobody is closed or leaves.
#[tokio::test]
async fn a_quiet_room_whose_log_expired_accepts_sends_and_goes_on_with_its_ids() {
    let cluster = Cluster::start_with(2, short_log()).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob")]).await;
    let [alice, bob] = &mut peers[..] else { unreachable!() };
    assert_eq!(alice.broadcast("alice 1").await, Ok(1));
    assert_eq!(bob.broadcast("bob 2").await, Ok(2));
    alice.until("bob's broadcast", |seen| seen.has_broadcast(2)).await;
    bob.until("alice's broadcast", |seen| seen.has_broadcast(1)).await;

    tokio::time::sleep(QUIET).await;
    assert_eq!(alice.broadcast("alice after the quiet").await, Ok(3), "the IDs go on");
    bob.until("the broadcast after the quiet", |seen| seen.has_broadcast(3)).await;
    assert_eq!(bob.broadcast("bob after the quiet").await, Ok(4), "the IDs go on");
    alice.until("bob's broadcast after the quiet", |seen| seen.has_broadcast(4)).await;

    tokio::time::sleep(QUIET).await;
    let api = Api::of(&cluster, 1);
    assert_eq!(api.broadcast(json!({"payload": "after another quiet"})).await, 5, "the IDs go on");
    for peer in [&mut *alice, &mut *bob] {
        peer.until("the API's broadcast", |seen| seen.has_broadcast(5)).await;
        peer.drain();
        assert!(peer.seen.closed.is_empty(), "{}: {:?}", peer.name, peer.seen.closed);
        assert!(peer.seen.states.is_empty(), "{}: {:?}", peer.name, peer.seen.states);
        assert_eq!(peer.seen.left, Vec::<String>::new(), "{}", peer.name);
        assert_eq!(peer.client.rooms(), [ROOM], "{}", peer.name);
    }
    assert_eq!(alice.seen.broadcast_ids(), [2, 4, 5]);
    assert_eq!(bob.seen.broadcast_ids(), [1, 3, 5]);
    for k in 0..2 {
        Api::of(&cluster, k).until_members(&["alice", "bob"], "at the end").await;
    }
    for peer in peers {
        peer.client.close().await;
    }
}

/// With `log_max_age_secs = 2`, a node (node2, without members) is away while the room stays
/// quiet for longer than the log's maximum age, then starts again: it reads the stream as the
/// other nodes kept it, so its server API continues the room's IDs and it lists the members of
/// the other nodes (whose records those nodes write again before they expire).
///
/// It found a relay bug, since fixed: records were looked at only every `log_max_age_secs / 2`,
/// so a renewal could come after the record expired and be refused, and the member was never
/// listed again (`publish_members` now looks every eighth of the maximum age).
#[tokio::test]
async fn a_node_started_after_a_quiet_period_lists_the_members_and_goes_on_with_the_ids() {
    let mut cluster = Cluster::start_with(3, short_log()).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob")]).await;
    let [alice, bob] = &mut peers[..] else { unreachable!() };
    assert_eq!(alice.broadcast("alice 1").await, Ok(1));
    assert_eq!(bob.broadcast("bob 2").await, Ok(2));
    alice.until("bob's broadcast", |seen| seen.has_broadcast(2)).await;
    bob.until("alice's broadcast", |seen| seen.has_broadcast(1)).await;
    cluster.kill(2);

    tokio::time::sleep(QUIET).await;
    cluster.restart(2).await;
    let api = Api::of(&cluster, 2);
    assert_eq!(api.broadcast(json!({"payload": "node2's API"})).await, 3, "the IDs go on");
    for peer in [&mut *alice, &mut *bob] {
        peer.until("node2's broadcast", |seen| seen.has_broadcast(3)).await;
    }
    api.until_members(&["alice", "bob"], "the members of the other nodes, after the quiet").await;
    let rooms = api.send(reqwest::Method::GET, "/v1/rooms", None).await;
    assert_eq!(rooms.body, json!([{"room": ROOM, "members": 2}]), "node2's rooms: {rooms:?}");
    for peer in [&mut *alice, &mut *bob] {
        peer.drain();
        assert!(peer.seen.closed.is_empty(), "{}: {:?}", peer.name, peer.seen.closed);
        assert_eq!(peer.seen.left, Vec::<String>::new(), "{}", peer.name);
    }
    for peer in peers {
        peer.client.close().await;
    }
}

/// With `storage = "memory"`, the NATS server is killed and started again (the stream is
/// gone): service resumes by itself (a broadcast is accepted within [`NATS_BACK`] and
/// delivered across nodes), every node lists the members again, and the IDs go on without
/// going back to one already used.
#[tokio::test]
async fn with_memory_storage_a_restarted_nats_loses_the_stream_and_service_resumes_with_its_ids() {
    let config = "[cluster]\nstorage = \"memory\"\n";
    let mut cluster = Cluster::start_with(2, Limits::UnlimitedWith(config.into())).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob")]).await;
    assert_eq!(peers[0].broadcast("alice 1").await, Ok(1));
    assert_eq!(peers[1].broadcast("bob 2").await, Ok(2));
    peers[1].until("alice's broadcast", |seen| seen.has_broadcast(1)).await;
    peers[0].until("bob's broadcast", |seen| seen.has_broadcast(2)).await;

    cluster.nats.stop();
    let [alice, bob] = &mut peers[..] else { unreachable!() };
    // Every ID a sender got, to check none is given twice.
    let mut used: Vec<u64> = vec![1, 2];
    let mut ambiguous = false;
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match alice.broadcast("while NATS is gone").await {
                Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => return,
                Err(ClientError::Refused { code, detail }) => {
                    panic!("refused as {} ({detail}), not CLUSTER_UNAVAILABLE", code.name())
                }
                Ok(id) => used.push(id),
                Err(ClientError::Timeout) => ambiguous = true,
                Err(other) => panic!("the broadcast failed otherwise: {other}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "no broadcast refused as CLUSTER_UNAVAILABLE without NATS");

    // A new server on the same port, with memory storage: no stream.
    cluster.nats.resume().await;
    let (id, unsure) = alice.broadcast_when_back("NATS is back", "NATS' return").await;
    ambiguous |= unsure;
    let highest = *used.iter().max().unwrap();
    assert!(id > highest, "ID {id} after NATS' return, but {used:?} were already given out");
    if !ambiguous {
        assert_eq!(id, highest + 1, "the IDs go on without a gap");
    }
    used.push(id);
    bob.until_within(NATS_BACK, "the broadcast after NATS' return", |seen| seen.has_broadcast(id))
        .await;
    for k in 0..2 {
        Api::of(&cluster, k).until_members(&["alice", "bob"], "after NATS' return").await;
    }
    let id2 = bob.broadcast("bob after").await.expect("bob's broadcast after NATS' return");
    assert_eq!(id2, id + 1, "the IDs go on");
    alice.until("bob's broadcast after NATS' return", |seen| seen.has_broadcast(id2)).await;
    let id3 = Api::of(&cluster, 1).broadcast(json!({"payload": "api after"})).await;
    assert_eq!(id3, id2 + 1, "the IDs go on");
    for peer in [&mut *alice, &mut *bob] {
        peer.until("the API's broadcast", |seen| seen.has_broadcast(id3)).await;
        peer.drain();
        let ids = peer.seen.broadcast_ids();
        assert!(strictly_ascending(&ids), "{}: once each, in order: {ids:?}", peer.name);
        assert!(peer.seen.closed.is_empty(), "{}: {:?}", peer.name, peer.seen.closed);
        assert_eq!(peer.client.rooms(), [ROOM], "{}", peer.name);
    }
    eprintln!("alice {:?}, bob {:?}", alice.seen.broadcast_ids(), bob.seen.broadcast_ids());
    for peer in peers {
        peer.client.close().await;
    }
}

/// A member of node0 has received broadcasts 1..N; node0 is killed and its client moves to
/// node1 (its server list: node0, node1) while a member of node1 keeps sending every 20 ms.
/// The client ends with every ID exactly once, in order, and its recovery says complete.
#[tokio::test]
async fn a_client_moving_to_another_node_while_sends_go_on_gets_every_id_once() {
    let mut cluster = Cluster::start_with(2, short_node_timeout()).await;
    let mut config = cluster.config(&[0, 1], "bob");
    // Gone quiet for 1 s: the node is lost (a killed node sends no close).
    config.idle_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    let bob = Peer::join_with(&cluster, config).await;
    let alice = Peer::join(&cluster, 1, "alice").await;
    let bob_on = bob.client.connection().map(|c| c.remote_address());
    assert_eq!(bob_on, Some(cluster.addr(0)), "bob starts on node0, the first of his list");
    let mut peers = [bob, alice];
    all_see_each_other(&mut peers).await;
    let [bob, alice] = &mut peers;

    let sender = Sender::start(alice.client.clone(), Duration::from_millis(20));
    bob.until("the first broadcasts", |seen| seen.broadcasts.len() >= 10).await;
    cluster.kill(0);
    bob.until_within(NATS_BACK, "his recovery", |seen| !seen.recovered.is_empty()).await;
    let from = bob.seen.broadcasts.len();
    // Sends go on after the move too.
    bob.until("broadcasts after the move", |seen| seen.broadcasts.len() >= from + 10).await;
    let sent = sender.stop().await;
    assert!(sent.refused.is_empty() && sent.unknown.is_empty(), "alice's sends: {sent:?}");
    let acked = sent.id_list();
    let last = acked.len() as u64;
    assert_eq!(acked, (1..=last).collect::<Vec<_>>(), "alice's IDs");
    bob.until("alice's last broadcast", |seen| seen.has_broadcast(last)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.drain();

    assert!(bob.seen.states.contains(&ConnectionState::Reconnected), "{:?}", bob.seen.states);
    let bob_on = bob.client.connection().map(|c| c.remote_address());
    assert_eq!(bob_on, Some(cluster.addr(1)), "bob moved on to node1");
    let [(complete, missed, replayed)] = bob.seen.recovered[..] else {
        panic!("one recovery expected: {:?}", bob.seen.recovered);
    };
    eprintln!("bob's recovery replayed {replayed} of {last}");
    assert!(complete && missed.is_none(), "nothing lost: {:?}", bob.seen.recovered);
    let ids = bob.seen.broadcast_ids();
    let duplicates: Vec<u64> = {
        let mut once = BTreeSet::new();
        ids.iter().copied().filter(|id| !once.insert(*id)).collect()
    };
    assert!(duplicates.is_empty(), "bob got {duplicates:?} more than once: {ids:?}");
    assert_eq!(ids, (1..=last).collect::<Vec<_>>(), "bob: every ID exactly once, in order");
    assert!(bob.seen.closed.is_empty(), "{:?}", bob.seen.closed);
    assert_eq!(bob.client.rooms(), [ROOM]);
    for peer in peers {
        peer.client.close().await;
    }
}

/// One connection pipelines logins to 10 rooms no node holds yet (the client library's
/// `login_room`, all at once): `max_rooms_per_connection` (default 5) bounds them, counting
/// logins still waiting for the cluster: at most 5 succeed, the rest are refused with
/// TOO_MANY_ROOMS. The node keeps serving: the rooms logged in to work across nodes, a room
/// left frees its place for another, and other clients log in.
#[tokio::test]
async fn pipelined_logins_to_new_rooms_are_bounded_by_max_rooms_per_connection() {
    const MAX: usize = 5;
    let cluster = Cluster::start(2).await;
    let (alice, mut alice_events) =
        within(Client::connect(cluster.config(&[0], "alice"))).await.expect("connect");
    let token = cluster.token("alice");
    let rooms: Vec<String> = (0..10).map(|n| format!("pipelined-{n}")).collect();
    let mut logins = tokio::task::JoinSet::new();
    for room in &rooms {
        let (client, room, token) = (alice.clone(), room.clone(), token.clone());
        logins.spawn(async move {
            let result = tokio::time::timeout(STEP, client.login_room(&room, &token)).await;
            (room, result)
        });
    }
    let mut joined = BTreeSet::new();
    let mut refused = BTreeSet::new();
    while let Some(done) = within(logins.join_next()).await {
        let (room, result) = done.expect("a login task");
        match result {
            Ok(Ok(())) => {
                joined.insert(room);
            }
            Ok(Err(ClientError::Refused { code, .. })) if code == ErrorCode::TOO_MANY_ROOMS => {
                refused.insert(room);
            }
            Ok(Err(other)) => panic!("the login to {room} failed otherwise: {other}"),
            Err(_) => panic!("no answer to the login to {room} within {STEP:?}"),
        }
    }
    eprintln!("joined {joined:?}, refused {refused:?}");
    assert!(!joined.is_empty() && joined.len() <= MAX, "{} logins succeeded", joined.len());
    assert_eq!(joined.len() + refused.len(), rooms.len());
    let mut in_rooms = alice.rooms();
    in_rooms.sort();
    assert_eq!(in_rooms, joined.iter().cloned().collect::<Vec<_>>(), "the client's rooms");

    // The node keeps serving: a member of node1 in one of the rooms gets alice's broadcast.
    let first = joined.iter().next().unwrap().clone();
    let (bob, mut bob_events) = cluster.client(1, "bob", &[first.as_str()]).await;
    let id = within(alice.send_broadcast_message(&first, "hello")).await.expect("a broadcast");
    within(async {
        loop {
            match bob_events.next().await.expect("bob's events") {
                Event::Broadcasts { room, messages }
                    if room == first && messages.iter().any(|m| m.id == id) =>
                {
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    // Every room alice is in takes a broadcast.
    for room in &joined {
        within(alice.send_broadcast_message(room, "in each")).await.expect("a broadcast");
    }
    // A room left frees its place: a refused room can be logged in to now (a login to a
    // room already full would be refused the same way).
    if joined.len() == MAX {
        let more = refused.iter().next().unwrap();
        match within(alice.login_room(more, &token)).await {
            Err(ClientError::Refused { code, .. }) if code == ErrorCode::TOO_MANY_ROOMS => {}
            other => panic!("a sixth room: {other:?}"),
        }
    }
    within(alice.logout_room(&first)).await.expect("logout");
    let more = refused.iter().next().unwrap();
    within(alice.login_room(more, &token)).await.expect("a login after a logout");
    within(alice.send_broadcast_message(more, "in the new room")).await.expect("a broadcast");
    // Node0 lists no member in a room it refused, and serves other clients.
    let listed = Api::of(&cluster, 0).send(reqwest::Method::GET, "/v1/rooms", None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    for entry in listed.body.as_array().expect("a list of rooms") {
        let room = entry["room"].as_str().expect("a room name");
        if refused.contains(room) && room != more {
            assert_eq!(entry["members"], json!(0), "a refused room has members: {listed:?}");
        }
    }
    let mut carol = Peer::join(&cluster, 0, "carol").await;
    let mut dave = Peer::join(&cluster, 1, "dave").await;
    assert_eq!(dave.broadcast("dave").await, Ok(1));
    carol.until("dave's broadcast", |seen| seen.has_broadcast(1)).await;
    dave.drain();
    while alice_events.try_next().is_some() {}
    for client in [alice, bob, carol.client, dave.client] {
        client.close().await;
    }
}
