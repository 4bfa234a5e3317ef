//! Relays in a cluster: several `qrelay serve` processes sharing a certificate directory and a
//! real `nats-server` with JetStream (tests/common/cluster.rs), clients on different nodes of
//! one room. Rooms span nodes: broadcasts (one gap-free sequence, one order), barrage, custom
//! commands, member lists, logins elsewhere and the room's frequency limits are room-wide; a
//! client whose node dies recovers on another; the loss of a node and of NATS itself.
//!
//! Invariants only (nothing lost, nothing duplicated, one order, IDs without gaps), never
//! timing; every wait is bounded. Needs `nats-server` (scripts/test installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Limits};
use common::peers::{
    NODE_LOSS_NOTICED, Peer, ROOM, all_see_each_other, is_cluster_unavailable, text,
};
use common::within;
use qrelay::client::{Client, ClientError, ConnectionState, Event};
use qrelay::protocol::ErrorCode;

/// What `peer` must have received of `sent` (ID → sender, payload): everything it did not
/// send itself, in ID order.
fn expected_for(peer: &Peer, sent: &BTreeMap<u64, (String, String)>) -> Vec<(u64, String, String)> {
    sent.iter()
        .filter(|(_, (from, _))| *from != peer.name)
        .map(|(id, (from, payload))| (*id, from.clone(), payload.clone()))
        .collect()
}

#[tokio::test]
async fn a_broadcast_through_any_node_reaches_every_other_member_on_every_node_once_in_one_order() {
    const PER_SENDER: u64 = 4;
    let cluster = Cluster::start(3).await;
    let mut peers = Vec::new();
    for i in 0..6 {
        peers.push(Peer::join(&cluster, i % 3, &format!("user{i}")).await);
    }
    all_see_each_other(&mut peers).await;

    // Every member sends at once from its node, each pipelining its broadcasts.
    let pending: Vec<Vec<_>> = peers
        .iter()
        .map(|peer| {
            (0..PER_SENDER)
                .map(|j| {
                    let payload = format!("{} #{j}", peer.name);
                    (payload.clone(), peer.client.start_broadcast_message(ROOM, payload))
                })
                .collect()
        })
        .collect();
    let mut sent = BTreeMap::new();
    for (peer, pending) in peers.iter().zip(pending) {
        let mut last = 0;
        for (payload, result) in pending {
            let id = within(result).await.unwrap_or_else(|e| panic!("{}: {e}", peer.name));
            assert!(id > last, "{}: one sender's broadcasts are numbered in call order", peer.name);
            last = id;
            let earlier = sent.insert(id, (peer.name.clone(), payload));
            assert!(earlier.is_none(), "ID {id} given twice: {earlier:?}");
        }
    }
    let total = 6 * PER_SENDER;
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "the room's IDs are 1, 2, 3, … whichever node each sender used"
    );
    // Two closing broadcasts from two nodes, the last of what each member waits for: a
    // duplicate of an earlier one would arrive before them in the room's order.
    for (k, payload) in [(0, "end from node0"), (1, "end from node1")] {
        let id = peers[k].broadcast(payload).await.expect("sent");
        assert_eq!(id, sent.len() as u64 + 1, "the IDs go on without a gap");
        sent.insert(id, (peers[k].name.clone(), payload.to_owned()));
    }
    for peer in &mut peers {
        let expected = expected_for(peer, &sent);
        let count = expected.len();
        peer.until("every other member's broadcasts", |seen| seen.broadcasts.len() >= count).await;
        peer.drain();
        // In arrival order: every broadcast of the others once, nothing of its own, in ID
        // order, which is the same order for every member.
        assert_eq!(peer.seen.broadcast_list(), expected, "{} received", peer.name);
    }
    for peer in peers {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn barrage_crosses_nodes() {
    let cluster = Cluster::start(2).await;
    let mut peers = Vec::new();
    for (k, user) in [(0, "alice"), (1, "bob")] {
        let mut config = cluster.config(&[k], user);
        // This test is about crossing nodes, not about freshness.
        config.barrage_max_age = None;
        peers.push(Peer::join_with(&cluster, config).await);
    }
    all_see_each_other(&mut peers).await;

    // Both ways; best effort, so up to 20 tries each until one arrives.
    for (from, to) in [(0, 1), (1, 0)] {
        let sender = peers[from].client.clone();
        let sender_name = peers[from].name.clone();
        let payload = format!("barrage from {sender_name}");
        let receiver = &mut peers[to];
        let mut arrived = false;
        for _ in 0..20 {
            // The reply may be lost too: wait for it only briefly, it does not matter.
            let attempt = sender.send_barrage_message(ROOM, payload.clone());
            let _ = tokio::time::timeout(Duration::from_millis(300), attempt).await;
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while !receiver.seen.barrages.iter().any(|m| text(&m.payload) == payload) {
                    match receiver.events.next().await {
                        Some(event) => receiver.seen.add(event),
                        None => panic!("{}: the client ended", receiver.name),
                    }
                }
            })
            .await;
            if receiver.seen.barrages.iter().any(|m| text(&m.payload) == payload) {
                arrived = true;
                break;
            }
        }
        assert!(arrived, "no barrage from {sender_name} reached {} in 20 tries", receiver.name);
        let first = receiver.seen.barrages.iter().find(|m| text(&m.payload) == payload).unwrap();
        assert_eq!(first.from.as_ref().map(|u| u.id.as_str()), Some(sender_name.as_str()));
        // Nothing but what was sent: no barrage from anyone else, none with another payload.
        assert!(receiver.seen.barrages.iter().all(|m| text(&m.payload) == payload));
    }
    for peer in peers {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn a_command_reaches_its_targets_on_any_node_and_an_unknown_target_is_refused() {
    let cluster = Cluster::start(3).await;
    let mut peers =
        Peer::join_all(&cluster, &[(0, "alice"), (1, "bob"), (2, "carol"), (0, "dave")]).await;
    let [alice, bob, carol, dave] = &mut peers[..] else { unreachable!() };

    // payload → (sender, ID, targets).
    let mut sent: BTreeMap<&str, (&str, u64, Vec<&str>)> = BTreeMap::new();
    let mut send = async |peer: &Peer, payload: &'static str, to: &[&'static str]| {
        let id = peer.command(payload, to).await.unwrap_or_else(|e| panic!("{payload}: {e}"));
        let targets = match to {
            [] => ["alice", "bob", "carol", "dave"]
                .into_iter()
                .filter(|user| *user != peer.name)
                .collect(),
            to => to.to_vec(),
        };
        let sender = ["alice", "bob", "carol", "dave"].into_iter().find(|u| *u == peer.name);
        sent.insert(payload, (sender.unwrap(), id, targets));
    };
    // alice (node0) to node1 and node2 at once; bob (node1) to node0; carol (node2) to node0;
    // dave (node0) to node2; alice to everyone, on every node.
    send(alice, "alice to bob and carol", &["bob", "carol"]).await;
    send(bob, "bob to dave", &["dave"]).await;
    send(carol, "carol to alice", &["alice"]).await;
    send(dave, "dave to carol", &["carol"]).await;
    send(alice, "alice to everyone", &[]).await;

    // An unknown target, alone or beside a known one, is refused and reaches no one.
    for to in [&["nobody"][..], &["bob", "nobody"][..]] {
        match alice.command("to nobody", to).await {
            Err(ClientError::Refused { code, .. }) => {
                assert_eq!(code, ErrorCode::UNKNOWN_TARGET_USER, "to {to:?}");
            }
            other => panic!("a command to {to:?} was not refused: {other:?}"),
        }
    }
    // Closing commands to everyone from two nodes: what a member receives before them is all
    // it receives of the rest.
    send(alice, "end from alice", &[]).await;
    send(carol, "end from carol", &[]).await;

    for peer in [alice, bob, carol, dave] {
        let mut expected: Vec<(String, u64, String)> = sent
            .iter()
            .filter(|(_, (_, _, targets))| targets.contains(&peer.name.as_str()))
            .map(|(payload, (from, id, _))| (from.to_string(), *id, payload.to_string()))
            .collect();
        expected.sort();
        let count = expected.len();
        peer.until("every command addressed to it", |seen| seen.commands.len() >= count).await;
        let ends = ["end from alice", "end from carol"]
            .into_iter()
            .filter(|end| sent[end].0 != peer.name)
            .collect::<Vec<_>>();
        peer.until("the closing commands", |seen| {
            ends.iter().all(|end| seen.commands.iter().any(|m| text(&m.payload) == *end))
        })
        .await;
        peer.drain();
        let mut received: Vec<(String, u64, String)> = peer
            .seen
            .commands
            .iter()
            .map(|m| (m.from.id.clone(), m.id, text(&m.payload)))
            .collect();
        received.sort();
        // Each command addressed to it exactly once, with the ID its sender got; nothing else.
        assert_eq!(received, expected, "{} received", peer.name);
    }
    for peer in peers {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn member_lists_are_room_wide_and_a_login_on_another_node_replaces_the_session() {
    let cluster = Cluster::start(2).await;
    let mut alice = Peer::join(&cluster, 0, "alice").await;
    let mut bob = Peer::join(&cluster, 1, "bob").await;
    let only = |users: &[&str]| users.iter().map(|u| u.to_string()).collect::<BTreeSet<_>>();
    alice.until("bob, on the other node", |seen| seen.members == only(&["bob"])).await;
    bob.until("alice, on the other node", |seen| seen.members == only(&["alice"])).await;

    let mut carol = Peer::join(&cluster, 1, "carol").await;
    carol.until("the members before her", |seen| seen.members == only(&["alice", "bob"])).await;
    alice.until("carol's join", |seen| seen.members == only(&["bob", "carol"])).await;
    bob.until("carol's join", |seen| seen.members == only(&["alice", "carol"])).await;
    // Each node gives the whole room's member list.
    let everyone = only(&["alice", "bob", "carol"]);
    assert_eq!(alice.fetch_member_ids().await, (3, everyone.clone()), "node0's member list");
    assert_eq!(bob.fetch_member_ids().await, (3, everyone), "node1's member list");

    within(carol.client.logout_room(ROOM)).await.expect("logout");
    alice.until("carol's leave", |seen| seen.members == only(&["bob"])).await;
    bob.until("carol's leave", |seen| seen.members == only(&["alice"])).await;
    assert_eq!(alice.seen.left, ["carol"]);

    // bob logs in again on node0: his session on node1 is replaced.
    let mut bob_again = Peer::join(&cluster, 0, "bob").await;
    bob.until("his room closed", |seen| !seen.closed.is_empty()).await;
    let codes: Vec<ErrorCode> = bob.seen.closed.iter().map(|(code, _)| *code).collect();
    assert_eq!(codes, [ErrorCode::KICKED_LOGGED_IN_ELSEWHERE]);
    assert!(bob.client.rooms().is_empty(), "{:?}", bob.client.rooms());
    bob_again.until("alice", |seen| seen.members == only(&["alice"])).await;
    // What bob sends now comes after his new session's join in the room's order: alice then
    // lists him (whatever leave and join the replacement showed her).
    let id = bob_again.broadcast("moved to node0").await.expect("sent");
    alice.until("bob's broadcast", |seen| seen.broadcasts.iter().any(|m| m.id == id)).await;
    assert_eq!(alice.seen.members, only(&["bob"]));
    let two = only(&["alice", "bob"]);
    assert_eq!(alice.fetch_member_ids().await, (2, two.clone()), "node0's member list");
    assert_eq!(bob_again.fetch_member_ids().await, (2, two), "node0's member list");
    // The old session got nothing after it was closed.
    bob.drain();
    assert!(bob.seen.broadcasts.is_empty(), "{:?}", bob.seen.broadcasts);
    for peer in [alice, bob, bob_again, carol] {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn the_rooms_broadcast_limit_holds_for_the_room_across_nodes() {
    const PER_ROOM: f64 = 10.0;
    const PER_SENDER: usize = 30;
    // The room limit at its default (10/s, bursts of 10); no per-user limit, so that only the
    // room's limit refuses.
    let config = format!("[limits]\nbroadcast_per_room = {PER_ROOM:?}\nbroadcast_per_user = 0.0\n");
    let cluster = Cluster::start_with(3, Limits::Config(config)).await;
    let mut peers = Vec::new();
    for k in 0..3 {
        peers.push(Peer::join(&cluster, k, &format!("user{k}")).await);
    }

    // Every node gets 30 at once: each node alone would accept 10 of them at least.
    let started = Instant::now();
    let pending: Vec<_> = peers
        .iter()
        .flat_map(|peer| {
            (0..PER_SENDER).map(|i| peer.client.start_broadcast_message(ROOM, format!("#{i}")))
        })
        .collect();
    let mut accepted = Vec::new();
    for result in pending {
        match within(result).await {
            Ok(id) => accepted.push(id),
            Err(ClientError::Refused { code, .. }) => {
                assert_eq!(code, ErrorCode::ROOM_RATE_LIMITED, "the only refusal is the room's");
            }
            Err(other) => panic!("neither accepted nor refused by the limit: {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("{} of {} accepted in {elapsed:.2} s", accepted.len(), 3 * PER_SENDER);
    accepted.sort_unstable();
    let count = accepted.len() as u64;
    assert!(count > 0, "nothing was accepted");
    assert_eq!(accepted, (1..=count).collect::<Vec<_>>(), "refusals take no ID");
    // A burst of 10, then 10 a second for as long as the sends took, and a little slack for a
    // limit kept across nodes; a limit per node would accept 30 at once.
    let bound = PER_ROOM + PER_ROOM * elapsed + 3.0;
    assert!(
        (count as f64) <= bound,
        "{count} of {} broadcasts accepted in {elapsed:.2} s: more than {bound:.1}, the room's \
         limit of {PER_ROOM}/s does not hold across nodes",
        3 * PER_SENDER
    );
    for peer in peers {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn a_client_whose_node_dies_recovers_what_it_missed_on_another_node() {
    let mut cluster = Cluster::start(2).await;
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

    for id in 1..=3 {
        assert_eq!(alice.broadcast("before").await, Ok(id));
    }
    bob.until("the first broadcasts", |seen| seen.broadcasts.len() >= 3).await;
    cluster.kill(0);
    // Sent while bob has no node.
    for id in 4..=6 {
        assert_eq!(alice.broadcast("while bob is away").await, Ok(id));
    }
    bob.until("his recovery", |seen| !seen.recovered.is_empty()).await;
    assert!(bob.seen.states.contains(&ConnectionState::Reconnected), "{:?}", bob.seen.states);
    let bob_on = bob.client.connection().map(|c| c.remote_address());
    assert_eq!(bob_on, Some(cluster.addr(1)), "bob moved on to node1");
    let [(complete, missed, _)] = bob.seen.recovered[..] else {
        panic!("one recovery expected: {:?}", bob.seen.recovered);
    };
    assert!(complete && missed.is_none(), "nothing lost: {:?}", bob.seen.recovered);
    assert_eq!(alice.broadcast("after").await, Ok(7));
    bob.until("the broadcast after", |seen| seen.broadcasts.iter().any(|m| m.id == 7)).await;
    bob.drain();
    assert_eq!(bob.seen.broadcast_ids(), (1..=7).collect::<Vec<_>>(), "each exactly once");
    for peer in peers {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn a_killed_nodes_members_leave_and_the_others_keep_broadcasting_without_a_gap() {
    let mut cluster = Cluster::start(3).await;
    // The node to die holds the room's first members (it created the room).
    let mut peers =
        Peer::join_all(&cluster, &[(0, "carol"), (0, "dave"), (1, "alice"), (2, "bob")]).await;
    assert_eq!(peers[2].broadcast("alice 1").await, Ok(1));
    assert_eq!(peers[3].broadcast("bob 2").await, Ok(2));
    assert_eq!(peers[0].broadcast("carol 3").await, Ok(3));
    // Delivered before the node dies (what a node accepted just before dying is another
    // question).
    for peer in &mut peers {
        // Everyone but dave sent one of the three.
        let count = if peer.name == "dave" { 3 } else { 2 };
        peer.until("the first broadcasts", |seen| seen.broadcasts.len() >= count).await;
    }

    cluster.kill(0);
    let mut survivors = peers.split_off(2);
    drop(peers);
    let [alice, bob] = &mut survivors[..] else { unreachable!() };
    // Broadcasts go on while the node is not yet declared lost…
    assert_eq!(alice.broadcast("alice 4").await, Ok(4));
    for (peer, other) in [(&mut *alice, "bob"), (&mut *bob, "alice")] {
        let other = other.to_owned();
        peer.until_within(NODE_LOSS_NOTICED, "the lost node's members leaving", |seen| {
            seen.members == BTreeSet::from([other.clone()])
        })
        .await;
        let mut left = peer.seen.left.clone();
        left.sort();
        assert_eq!(left, ["carol", "dave"], "{}: each left once", peer.name);
    }
    // … and after.
    assert_eq!(bob.broadcast("bob 5").await, Ok(5));
    assert_eq!(alice.broadcast("alice 6").await, Ok(6));
    alice.until("bob 5", |seen| seen.broadcasts.iter().any(|m| m.id == 5)).await;
    bob.until("alice 6", |seen| seen.broadcasts.iter().any(|m| m.id == 6)).await;
    alice.drain();
    bob.drain();
    assert_eq!(alice.seen.broadcast_ids(), [2, 3, 5]);
    assert_eq!(bob.seen.broadcast_ids(), [1, 3, 4, 6]);
    for peer in survivors {
        peer.client.close().await;
    }
}

#[tokio::test]
async fn without_nats_the_cluster_refuses_what_needs_it_and_resumes_when_nats_is_back() {
    let mut cluster = Cluster::start(2).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob")]).await;
    assert_eq!(peers[0].broadcast("before").await, Ok(1));
    peers[1].until("the first broadcast", |seen| seen.broadcasts.len() == 1).await;

    cluster.nats.stop();
    let [alice, bob] = &mut peers[..] else { unreachable!() };
    // The node may take a moment to notice; until then a broadcast may still go through or
    // time out, but once refused it is refused as CLUSTER_UNAVAILABLE.
    let mut ambiguous = false;
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match alice.broadcast("while NATS is gone").await {
                Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => return,
                Err(ClientError::Refused { code, detail }) => {
                    panic!("refused as {} ({detail}), not CLUSTER_UNAVAILABLE", code.name())
                }
                Ok(_) | Err(ClientError::Timeout) => ambiguous = true,
                Err(other) => panic!("the broadcast failed otherwise: {other}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "no broadcast refused as CLUSTER_UNAVAILABLE without NATS");
    // From then on, refused until NATS is back: a broadcast again, a command to a member of
    // the other node, and a login.
    match alice.broadcast("again while NATS is gone").await {
        Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => {}
        other => panic!("a second broadcast without NATS: {other:?}"),
    }
    match alice.command("to bob", &["bob"]).await {
        Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => {}
        other => panic!("a command without NATS: {other:?}"),
    }
    let (carol, _carol_events) =
        within(Client::connect(cluster.config(&[1], "carol"))).await.expect("connect");
    match within(carol.login_room(ROOM, &cluster.token("carol"))).await {
        Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => {}
        other => panic!("a login without NATS: {other:?}"),
    }
    carol.close().await;

    cluster.nats.resume().await;
    // Service resumes by itself: the same clients, on the same connections.
    let (id, unsure) = alice.broadcast_when_back("NATS is back", "NATS' return").await;
    ambiguous |= unsure;
    bob.until("the broadcast after NATS' return", |seen| {
        seen.broadcasts.iter().any(|m| m.id == id)
    })
    .await;
    let ids = bob.seen.broadcast_ids();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate: {ids:?}");
    if !ambiguous {
        // Nothing ambiguous was sent: refusals took no ID.
        assert_eq!(id, 2, "the IDs go on without a gap");
        assert_eq!(ids, [1, 2]);
    }
    let command = alice.command("to bob, again", &["bob"]).await.expect("a command after");
    bob.until("the command after NATS' return", |seen| {
        seen.commands.iter().any(|m| m.id == command)
    })
    .await;
    // The members never lost their connections or rooms.
    for peer in [&mut *alice, &mut *bob] {
        peer.drain();
        assert!(peer.seen.states.is_empty(), "{}: {:?}", peer.name, peer.seen.states);
        assert!(peer.seen.closed.is_empty(), "{}: {:?}", peer.name, peer.seen.closed);
        assert_eq!(peer.client.stats().reconnects, 0);
        assert_eq!(peer.client.rooms(), [ROOM]);
    }
    for peer in peers {
        peer.client.close().await;
    }
}

/// The harness itself, which needs no cluster: NATS stops, and starts again on its port with
/// its store (what the test above relies on).
#[tokio::test]
async fn harness_nats_server_stops_and_starts_again_on_its_port() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut nats = common::cluster::Nats::start(dir.path()).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nats.port));
    let connects = || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
    assert!(connects() && nats.is_running());
    nats.stop();
    assert!(!connects() && !nats.is_running(), "nats-server still answers after stop");
    nats.resume().await;
    assert!(connects() && nats.is_running());
    assert!(nats.url().ends_with(&format!(":{}", addr.port())));
}

#[tokio::test]
async fn rooms_stay_apart_and_tokens_hold_on_every_node() {
    let cluster = Cluster::start(2).await;
    // Room "a" on both nodes, room "b" on both nodes.
    let (alice, mut alice_events) = cluster.client(0, "alice", &["a"]).await;
    let (carol, mut carol_events) = cluster.client(1, "carol", &["a"]).await;
    let (bob, mut bob_events) = cluster.client(1, "bob", &["b"]).await;
    let (dave, mut dave_events) = cluster.client(0, "dave", &["b"]).await;

    // A token for room "a" alone opens "a" on the other node, and not "b" there.
    let (erin, _erin_events) =
        within(Client::connect(cluster.config(&[1], "erin"))).await.expect("connect");
    let only_a = cluster.token_for("erin", &["a"]);
    let refused = within(erin.login_room("b", &only_a)).await.expect_err("room b not granted");
    assert_eq!(refused.code(), ErrorCode::ROOM_NOT_GRANTED, "{refused}");
    within(erin.login_room("a", &only_a)).await.expect("room a is granted");
    // A token of another user is refused on every node.
    let (frank, _frank_events) =
        within(Client::connect(cluster.config(&[0], "frank"))).await.expect("connect");
    let stolen = within(frank.login_room("a", &cluster.token("alice"))).await;
    assert_eq!(stolen.expect_err("another user's token").code(), ErrorCode::TOKEN_USER_MISMATCH);

    // Wait until each room's members see each other across the nodes.
    for (events, other) in [
        (&mut alice_events, "carol"),
        (&mut carol_events, "alice"),
        (&mut bob_events, "dave"),
        (&mut dave_events, "bob"),
    ] {
        within(async {
            while let Some(event) = events.next().await {
                if let Event::UsersJoined { users, .. } = event
                    && users.iter().any(|u| u.id == other)
                {
                    return;
                }
            }
        })
        .await;
    }
    within(alice.send_broadcast_message("a", "for room a".to_owned())).await.expect("send a");
    within(bob.send_broadcast_message("b", "for room b".to_owned())).await.expect("send b");
    // Each message reaches its room on the other node, and only its room.
    for (events, room, payload) in
        [(&mut carol_events, "a", "for room a"), (&mut dave_events, "b", "for room b")]
    {
        within(async {
            while let Some(event) = events.next().await {
                match event {
                    Event::Broadcasts { room: got, messages } => {
                        assert_eq!(got, room, "a broadcast of another room");
                        assert!(messages.iter().all(|m| text(&m.payload) == payload));
                        return;
                    }
                    Event::Barrages { room: got, .. } | Event::Command { room: got, .. } => {
                        assert_eq!(got, room, "a message of another room");
                    }
                    _ => {}
                }
            }
        })
        .await;
    }
    // Whatever else is queued by now names no other room.
    for (events, room) in [(&mut alice_events, "a"), (&mut bob_events, "b")] {
        while let Some(event) = events.try_next() {
            if let Event::Broadcasts { room: got, .. } = &event {
                assert_eq!(got, room, "{event:?}");
            }
        }
    }
    for client in [alice, carol, bob, dave, erin, frank] {
        client.close().await;
    }
}

#[tokio::test]
async fn logins_in_flight_with_different_tokens_each_keep_their_own_grant() {
    let cluster = Cluster::start(2).await;
    // Rooms node0 does not hold yet: each login waits for the room's log.
    let (erin, _events) =
        within(Client::connect(cluster.config(&[0], "erin"))).await.expect("connect");
    let (for_x, for_y) = (cluster.token_for("erin", &["x"]), cluster.token_for("erin", &["y"]));
    let (x, y) = tokio::join!(erin.login_room("x", &for_x), erin.login_room("y", &for_y));
    x.expect("room x with the token for x");
    y.expect("room y with the token for y");
    let mut rooms = erin.rooms();
    rooms.sort();
    assert_eq!(rooms, ["x", "y"]);
    erin.close().await;
}
