//! The server API in a cluster, and nodes that fail alone: several `qrelay serve` processes
//! sharing a real `nats-server` with JetStream (tests/common/cluster.rs). The API of any node
//! sends into, lists, kicks from and closes rooms that span every node; a node cut off from
//! NATS while the others keep it comes back without its clients noticing more than refusals;
//! a node restarted under the same name and port is a new incarnation.
//!
//! Invariants only (nothing lost, nothing duplicated, one order, IDs without gaps), never
//! timing; every wait is bounded. Needs `nats-server` (scripts/test installs it).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{Cluster, NatsProxy};
use common::peers::{
    Api, NATS_BACK, NODE_LOSS_NOTICED, Peer, ROOM, all_see_each_other, is_cluster_unavailable, set,
    short_node_timeout, text,
};
use common::{STEP, within};
use qrelay::client::{ClientError, ConnectionState};
use qrelay::protocol::ErrorCode;
use serde_json::json;

/// The server API of one node sends into a room that spans three: its broadcast takes the
/// room's next ID among the clients' broadcasts on other nodes and reaches every member
/// everywhere; every node lists every node's members; a command to a member of another node
/// reaches that member alone.
#[tokio::test]
async fn the_server_api_of_any_node_sends_to_lists_and_commands_members_of_every_node() {
    let cluster = Cluster::start(3).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob"), (2, "carol")]).await;
    let apis: Vec<Api> = (0..3).map(|k| Api::of(&cluster, k)).collect();
    for (k, api) in apis.iter().enumerate() {
        assert_eq!(api.members().await, ["alice", "bob", "carol"], "node{k}'s member list");
        let rooms = api.send(reqwest::Method::GET, "/v1/rooms", None).await;
        assert_eq!(rooms.body, json!([{"room": ROOM, "members": 3}]), "node{k}'s rooms");
    }

    // ID → (sender, payload), in the order sent: the API of node0, bob on node1, the API of
    // node2 as a named sender, carol on node2, the API of node1.
    let mut sent: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let id = apis[0].broadcast(json!({"payload": "api node0"})).await;
    assert_eq!(id, 1, "the room's first broadcast");
    sent.insert(id, ("system".into(), "api node0".into()));
    let id = peers[1].broadcast("bob").await.expect("bob's broadcast");
    sent.insert(id, ("bob".into(), "bob".into()));
    let from = json!({"id": "moderator", "name": "Moderator"});
    let id = apis[2].broadcast(json!({"payload": "api node2", "from": from})).await;
    sent.insert(id, ("moderator".into(), "api node2".into()));
    let id = peers[2].broadcast("carol").await.expect("carol's broadcast");
    sent.insert(id, ("carol".into(), "carol".into()));
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "the API's and the clients' broadcasts share one gap-free sequence: {sent:?}"
    );

    // A command through node0's API to carol, on node2, then a closing broadcast through
    // node1's API: what a member receives before it is all it receives of the command.
    let command = apis[0].command(json!({"payload": "to carol", "to": ["carol"]})).await;
    let id = apis[1].broadcast(json!({"payload": "api node1"})).await;
    assert_eq!(id, 5, "the IDs go on without a gap after a command");
    sent.insert(id, ("system".into(), "api node1".into()));

    for peer in &mut peers {
        let expected: Vec<(u64, String, String)> = sent
            .iter()
            .filter(|(_, (from, _))| *from != peer.name)
            .map(|(id, (from, payload))| (*id, from.clone(), payload.clone()))
            .collect();
        peer.until("the closing broadcast", |seen| seen.has_broadcast(5)).await;
        peer.drain();
        assert_eq!(peer.seen.broadcast_list(), expected, "{} received", peer.name);
        let commands: Vec<(u64, String, String)> = peer
            .seen
            .commands
            .iter()
            .map(|m| (m.id, m.from.id.clone(), text(&m.payload)))
            .collect();
        if peer.name == "carol" {
            assert_eq!(commands, [(command, "system".into(), "to carol".into())], "carol's");
        } else {
            assert!(commands.is_empty(), "{} got carol's command: {commands:?}", peer.name);
        }
    }
    for peer in peers {
        peer.client.close().await;
    }
}

/// A kick through node0's API of a member of node1: its room closes with KICKED_BY_SERVER and
/// the reason, the members on every node see it leave, every node's list drops it, and its
/// client does not log back in.
#[tokio::test]
async fn a_kick_through_another_node_closes_the_members_lane_and_it_stays_out() {
    let cluster = Cluster::start(3).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob"), (2, "carol")]).await;
    let apis: Vec<Api> = (0..3).map(|k| Api::of(&cluster, k)).collect();
    let id = peers[0].broadcast("before the kick").await.expect("sent");
    peers[1].until("the first broadcast", |seen| seen.has_broadcast(id)).await;

    let path = format!("/v1/rooms/{ROOM}/kick");
    let kick = json!({"user": "bob", "reason": "spam"});
    let answer = apis[0].send(reqwest::Method::POST, &path, Some(kick)).await;
    assert_eq!((answer.status, &answer.body), (200, &json!({"kicked": "bob"})), "{answer:?}");

    let [alice, bob, carol] = &mut peers[..] else { unreachable!() };
    bob.until("his room closed", |seen| !seen.closed.is_empty()).await;
    assert_eq!(bob.seen.closed, [(ErrorCode::KICKED_BY_SERVER, "spam".to_owned())]);
    assert!(bob.client.rooms().is_empty(), "bob is still in {:?}", bob.client.rooms());
    for peer in [&mut *alice, &mut *carol] {
        let other = if peer.name == "alice" { "carol" } else { "alice" };
        peer.until("bob's leave", |seen| seen.members == set(&[other])).await;
        assert_eq!(peer.seen.left, ["bob"], "{}: bob left once", peer.name);
    }
    for api in &apis {
        api.until_members(&["alice", "carol"], "after the kick").await;
    }

    // The room goes on without bob: a broadcast after the kick reaches the others, and bob,
    // still connected, neither gets it nor logs in again.
    let after = carol.broadcast("after the kick").await.expect("sent");
    assert_eq!(after, id + 1);
    alice.until("the broadcast after the kick", |seen| seen.has_broadcast(after)).await;
    // A command to bob is refused: he is nowhere in the room.
    match alice.command("to bob", &["bob"]).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::UNKNOWN_TARGET_USER),
        other => panic!("a command to the kicked bob: {other:?}"),
    }
    // Time for a wrong automatic login to show (none expected).
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.drain();
    assert_eq!(bob.seen.closed.len(), 1, "{:?}", bob.seen.closed);
    assert!(bob.seen.recovered.is_empty(), "bob logged in again: {:?}", bob.seen.recovered);
    assert_eq!(bob.seen.broadcast_ids(), [id], "bob got nothing after his kick");
    assert!(bob.client.rooms().is_empty(), "bob is back in {:?}", bob.client.rooms());
    assert_eq!(bob.client.stats().reconnects, 0, "bob's connection stayed");
    for api in &apis {
        assert_eq!(api.members().await, ["alice", "carol"]);
    }
    // Kicking him again is refused: he is not in the room.
    let again = apis[2].send(reqwest::Method::POST, &path, Some(json!({"user": "bob"}))).await;
    assert_eq!((again.status, &again.body["error"]), (404, &json!("USER_NOT_FOUND")), "{again:?}");
    // A kick is not a ban: bob logs in again himself, on his node, and is a member everywhere.
    within(bob.client.login_room(ROOM, &cluster.token("bob"))).await.expect("bob's new login");
    alice.until("bob's new login", |seen| seen.members == set(&["bob", "carol"])).await;
    for api in &apis {
        api.until_members(&["alice", "bob", "carol"], "after bob's new login").await;
    }
    for peer in peers {
        peer.client.close().await;
    }
}

/// Closing a room through node0's API closes it on every node with ROOM_CLOSED; a later
/// login creates it anew: broadcast IDs from 1 again, a new epoch.
#[tokio::test]
async fn closing_a_room_through_one_node_closes_it_everywhere_and_it_starts_anew() {
    let cluster = Cluster::start(3).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "bob"), (2, "carol")]).await;
    let apis: Vec<Api> = (0..3).map(|k| Api::of(&cluster, k)).collect();
    assert_eq!(peers[1].broadcast("bob 1").await, Ok(1));
    assert_eq!(peers[2].broadcast("carol 2").await, Ok(2));
    peers[0].until("the first broadcasts", |seen| seen.broadcasts.len() == 2).await;

    let path = format!("/v1/rooms/{ROOM}?reason=maintenance");
    let answer = apis[0].send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!((answer.status, &answer.body), (200, &json!({"closed": ROOM})), "{answer:?}");
    for peer in &mut peers {
        peer.until("the room closed", |seen| !seen.closed.is_empty()).await;
        assert_eq!(
            peer.seen.closed,
            [(ErrorCode::ROOM_CLOSED, "maintenance".to_owned())],
            "{}",
            peer.name
        );
        assert!(peer.client.rooms().is_empty(), "{}: {:?}", peer.name, peer.client.rooms());
    }

    // A new login on node1, then on node2: the room anew.
    let [alice, bob, carol] = &mut peers[..] else { unreachable!() };
    for peer in [&mut *bob, &mut *carol] {
        let token = cluster.token(&peer.name);
        within(peer.client.login_room(ROOM, &token)).await.expect("a login after the close");
    }
    bob.until("carol in the new room", |seen| seen.members.contains("carol")).await;
    assert_eq!(bob.broadcast("bob anew").await, Ok(1), "the new room's IDs start at 1");
    assert_eq!(apis[0].broadcast(json!({"payload": "api anew"})).await, 2);
    carol.until("the new room's broadcasts", |seen| seen.has_broadcast(2)).await;
    carol.drain();
    assert_eq!(carol.seen.broadcast_ids(), [1, 1, 2], "before the close, then anew");
    for api in &apis {
        api.until_members(&["bob", "carol"], "the new room").await;
    }
    // alice recovers nothing of the old room: she logs in to the new one as a new member.
    let token = cluster.token("alice");
    within(alice.client.login_room(ROOM, &token)).await.expect("alice's login");
    let id = carol.broadcast("carol anew").await.expect("sent");
    assert_eq!(id, 3);
    alice.until("the new room's broadcast", |seen| seen.has_broadcast(3)).await;
    alice.drain();
    assert_eq!(alice.seen.broadcast_ids(), [1, 2, 3], "the old room's, then the new one's");
    assert!(alice.seen.recovered.is_empty(), "{:?}", alice.seen.recovered);
    for peer in peers {
        peer.client.close().await;
    }
}

/// A node cut off from NATS alone (its proxy to NATS closes every connection and refuses new
/// ones) for longer than the node timeout, while the others keep NATS: the others see its
/// members leave; the cut node refuses sends with CLUSTER_UNAVAILABLE and keeps its clients;
/// once NATS is reachable again its members join again without reconnecting, its sends go
/// through, and what the others broadcast meanwhile reaches them once each, in order.
#[tokio::test]
async fn a_node_cut_off_from_nats_alone_is_lost_then_its_members_come_back_with_every_broadcast() {
    let proxy = NatsProxy::start();
    let cluster = Cluster::start_custom(3, short_node_timeout(), |k, nats| {
        if k == 2 { proxy.url_to(nats) } else { nats.url() }
    })
    .await;
    let mut peers =
        Peer::join_all(&cluster, &[(0, "alice"), (1, "bob"), (2, "carol"), (2, "dave")]).await;
    // ID → (sender, payload) of every broadcast whose sender got its ID.
    let mut sent: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for k in [0, 2] {
        let payload = format!("{} before", peers[k].name);
        let id = peers[k].broadcast(&payload).await.expect("sent");
        sent.insert(id, (peers[k].name.clone(), payload));
    }
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), [1, 2]);

    proxy.cut();
    let [alice, bob, carol, dave] = &mut peers[..] else { unreachable!() };
    // The cut node refuses as soon as it notices; a send it took before may go through or
    // time out (then its fate is unknown: `ambiguous`).
    let mut ambiguous = false;
    let refused = tokio::time::timeout(STEP, async {
        loop {
            match carol.broadcast("carol while cut").await {
                Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => return,
                Err(ClientError::Refused { code, detail }) => {
                    panic!("refused as {} ({detail}), not CLUSTER_UNAVAILABLE", code.name())
                }
                Ok(id) => {
                    sent.insert(id, ("carol".into(), "carol while cut".into()));
                }
                Err(ClientError::Timeout) => ambiguous = true,
                Err(other) => panic!("the broadcast failed otherwise: {other}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the cut node refused no broadcast as CLUSTER_UNAVAILABLE");
    // The others count the cut node lost: its members leave.
    for (peer, other) in [(&mut *alice, "bob"), (&mut *bob, "alice")] {
        peer.until_within(NODE_LOSS_NOTICED, "the cut node's members leaving", |seen| {
            seen.members == set(&[other])
        })
        .await;
        let mut left = peer.seen.left.clone();
        left.sort();
        assert_eq!(left, ["carol", "dave"], "{}: each left once", peer.name);
    }
    // The others go on meanwhile.
    for (peer, payload) in [(&*alice, "alice during"), (&*bob, "bob during"), (&*alice, "alice 2")]
    {
        let id = peer.broadcast(payload).await.expect("a broadcast on a node that has NATS");
        sent.insert(id, (peer.name.clone(), payload.into()));
    }
    // Still cut (the others' node-loss shows it lasted longer than the node timeout): refused,
    // a command too, with the clients connected.
    match carol.broadcast("carol still cut").await {
        Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => {}
        other => panic!("a broadcast on the cut node: {other:?}"),
    }
    match dave.command("to alice", &["alice"]).await {
        Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => {}
        other => panic!("a command on the cut node: {other:?}"),
    }
    // The cut node's server API refuses too, and its /readyz says it is not ready; the other
    // nodes' API sends.
    let apis: Vec<Api> = (0..3).map(|k| Api::of(&cluster, k)).collect();
    let path = format!("/v1/rooms/{ROOM}/broadcast");
    let refused = apis[2].send(reqwest::Method::POST, &path, Some(json!({"payload": "x"}))).await;
    assert_eq!(refused.body["code"], json!(3011), "the cut node's API: {refused:?}");
    assert_eq!(refused.body["error"], json!("CLUSTER_UNAVAILABLE"), "{refused:?}");
    eprintln!("the cut node's API refuses a broadcast with HTTP {}", refused.status);
    assert_eq!(apis[2].send(reqwest::Method::GET, "/readyz", None).await.status, 503);
    let id = apis[1].broadcast(json!({"payload": "api during"})).await;
    sent.insert(id, ("system".into(), "api during".into()));

    proxy.restore();
    // The cut node's members join again, on their old connections.
    for (peer, other) in [(&mut *alice, "bob"), (&mut *bob, "alice")] {
        peer.until_within(NATS_BACK, "the cut node's members again", |seen| {
            seen.members == set(&[other, "carol", "dave"])
        })
        .await;
    }
    // Its sends go through again.
    let (id, unsure) = carol.broadcast_when_back("carol after", "the restore").await;
    ambiguous |= unsure;
    sent.insert(id, ("carol".into(), "carol after".into()));
    eprintln!("broadcasts whose senders got an ID: {sent:?}; any ambiguous: {ambiguous}");
    let last = *sent.keys().last().unwrap();
    assert_eq!(id, last, "the newest broadcast has the highest ID");
    if !ambiguous {
        assert_eq!(
            sent.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "IDs without a gap: refusals take none"
        );
    }
    // dave's lane: everything the others sent, during the cut included, once, in ID order;
    // carol's: the same but her own.
    for peer in [&mut *alice, &mut *bob, &mut *carol, &mut *dave] {
        let name = peer.name.clone();
        let expected: Vec<u64> =
            sent.iter().filter(|(_, (from, _))| *from != name).map(|(id, _)| *id).collect();
        let want = expected.len();
        peer.until("every broadcast of the others", |seen| seen.broadcasts.len() >= want).await;
        peer.drain();
        let ids = peer.seen.broadcast_ids();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: in order, once each: {ids:?}");
        if !ambiguous {
            assert_eq!(ids, expected, "{name} received");
            let list = peer.seen.broadcast_list();
            for (id, from, payload) in list {
                assert_eq!(sent[&id], (from, payload), "{name}: broadcast {id}");
            }
        }
    }
    // The cut node's clients noticed nothing but the refusals.
    for peer in [&mut *carol, &mut *dave] {
        peer.drain();
        assert!(peer.seen.states.is_empty(), "{}: {:?}", peer.name, peer.seen.states);
        assert!(peer.seen.closed.is_empty(), "{}: {:?}", peer.name, peer.seen.closed);
        assert!(peer.seen.recovered.is_empty(), "{}: {:?}", peer.name, peer.seen.recovered);
        assert_eq!(peer.client.stats().reconnects, 0, "{}", peer.name);
        assert_eq!(peer.client.rooms(), [ROOM]);
    }
    for api in &apis {
        api.until_members(&["alice", "bob", "carol", "dave"], "after").await;
        assert_eq!(api.send(reqwest::Method::GET, "/readyz", None).await.status, 200);
    }
    // The others saw the cut node's members leave once and join again once.
    for peer in [&mut *alice, &mut *bob] {
        peer.drain();
        for user in ["carol", "dave"] {
            let joins = peer.seen.joined.iter().filter(|u| *u == user).count();
            let leaves = peer.seen.left.iter().filter(|u| *u == user).count();
            assert_eq!((joins, leaves), (2, 1), "{}: {user}'s joins and leaves", peer.name);
        }
    }
    for peer in peers {
        peer.client.close().await;
    }
}

/// A node killed (`kill -9`) and started again with the same name and QUIC port is a new
/// incarnation: its client reconnects to it and recovers completely, and the killed
/// process's member that did not come back is removed within the node timeout.
#[tokio::test]
async fn a_node_restarted_under_the_same_name_serves_again_and_its_old_members_are_removed() {
    let mut cluster = Cluster::start_with(2, short_node_timeout()).await;
    let mut config = cluster.config(&[0], "alice");
    // Gone quiet for 1 s: the node is lost (a killed node sends no close).
    config.idle_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    let alice = Peer::join_with(&cluster, config).await;
    let carol = Peer::join(&cluster, 0, "carol").await;
    let bob = Peer::join(&cluster, 1, "bob").await;
    let mut peers = [alice, carol, bob];
    all_see_each_other(&mut peers).await;
    let [alice, carol, bob] = &mut peers;
    for id in 1..=3 {
        assert_eq!(bob.broadcast("before").await, Ok(id));
    }
    alice.until("the first broadcasts", |seen| seen.broadcasts.len() == 3).await;

    cluster.kill(0);
    // carol's client goes away with the node: she never comes back.
    carol.client.close().await;
    for id in 4..=5 {
        assert_eq!(bob.broadcast("while node0 is away").await, Ok(id));
    }
    cluster.restart(0).await;

    alice.until_within(NATS_BACK, "her recovery", |seen| !seen.recovered.is_empty()).await;
    assert!(alice.seen.states.contains(&ConnectionState::Reconnected), "{:?}", alice.seen.states);
    let [(complete, missed, _)] = alice.seen.recovered[..] else {
        panic!("one recovery expected: {:?}", alice.seen.recovered);
    };
    assert!(complete && missed.is_none(), "nothing lost: {:?}", alice.seen.recovered);
    // The killed process's member who did not come back leaves; alice, back on the new
    // process, stays.
    bob.until_within(NODE_LOSS_NOTICED, "carol's leave", |seen| {
        seen.members == set(&["alice"]) && seen.left.contains(&"carol".to_owned())
    })
    .await;
    for k in 0..2 {
        Api::of(&cluster, k).until_members(&["alice", "bob"], "after the restart").await;
    }
    assert_eq!(bob.broadcast("after").await, Ok(6));
    alice.until("the broadcast after", |seen| seen.has_broadcast(6)).await;
    alice.drain();
    assert_eq!(alice.seen.broadcast_ids(), (1..=6).collect::<Vec<_>>(), "each exactly once");
    // alice's own sends go through the new process.
    let id = alice.broadcast("alice on the new process").await.expect("sent");
    assert_eq!(id, 7);
    bob.until("alice's broadcast", |seen| seen.has_broadcast(7)).await;
    bob.drain();
    assert_eq!(bob.seen.left.iter().filter(|u| *u == "carol").count(), 1, "{:?}", bob.seen.left);
    assert_eq!(bob.seen.members, set(&["alice"]));
    for peer in peers {
        peer.client.close().await;
    }
}

/// A user whose node is cut off from NATS logs in again on another node during the cut
/// (the others had recorded the cut node's member absent): that login is the newer session,
/// so once the cut node is back, its old session is the one replaced
/// (`KICKED_LOGGED_IN_ELSEWHERE`), and the new one stays and keeps receiving.
#[tokio::test]
async fn a_login_elsewhere_during_a_cut_is_not_replaced_by_the_cut_nodes_old_session() {
    let (proxy, cluster, mut peers) = dave_cut_off_from_alice().await;
    let [alice, dave_old] = &mut peers[..] else { unreachable!() };
    // dave again, on node0, which has NATS: the newer session.
    let mut dave_new = Peer::join(&cluster, 0, "dave").await;
    alice.until("dave's new session", |seen| seen.members == set(&["dave"])).await;
    let api = Api::of(&cluster, 0);
    api.until_members(&["alice", "dave"], "dave's new session").await;

    proxy.restore();
    // Once the cut node reads the newer login, one of the two sessions is closed: it must be
    // the old one.
    let one_closed = tokio::time::timeout(NATS_BACK, async {
        while dave_old.seen.closed.is_empty() && dave_new.seen.closed.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            dave_old.drain();
            dave_new.drain();
        }
    })
    .await;
    assert!(one_closed.is_ok(), "neither session of dave was closed after the restore");
    assert!(
        dave_new.seen.closed.is_empty(),
        "the session that logged in during the cut (node0) was closed: {:?}; the stale session \
         on the cut node: {:?}",
        dave_new.seen.closed,
        dave_old.seen.closed
    );
    assert_eq!(dave_old.seen.closed[0].0, ErrorCode::KICKED_LOGGED_IN_ELSEWHERE);
    // The newer session is the room's dave: a broadcast after the restore reaches him.
    Api::of(&cluster, 1).until_members(&["alice", "dave"], "after the restore").await;
    let id = alice.broadcast("after the restore").await.expect("alice's broadcast");
    dave_new
        .until("the broadcast after the restore", |seen| {
            seen.has_broadcast(id) || !seen.closed.is_empty()
        })
        .await;
    assert!(dave_new.seen.closed.is_empty(), "the newer session was closed: {:?}", dave_new.seen);
    assert_eq!(dave_new.client.rooms(), [ROOM]);
    for peer in peers {
        peer.client.close().await;
    }
    dave_new.client.close().await;
}

/// The room is closed through the API while a node that has a member in it is cut off from
/// NATS (and counted lost). When the node is back, its member's lane closes with
/// `ROOM_CLOSED` like everyone's, and nothing the node says for that member (it records it
/// present again after being counted lost) brings the old incarnation back: the new room's
/// members are never closed, and its IDs go on from 1 on both nodes.
#[tokio::test]
async fn a_room_closed_while_a_node_is_cut_off_does_not_come_back_with_that_node() {
    let (proxy, cluster, mut peers) = dave_cut_off_from_alice().await;
    let [alice, dave] = &mut peers[..] else { unreachable!() };
    let api = Api::of(&cluster, 0);
    let closed = api.send(reqwest::Method::DELETE, &format!("/v1/rooms/{ROOM}"), None).await;
    assert_eq!(closed.status, 200, "{:?}", closed.body);
    alice.until("the close", |seen| !seen.closed.is_empty()).await;
    assert_eq!(alice.seen.closed[0].0, ErrorCode::ROOM_CLOSED);

    proxy.restore();
    // The cut node reads the close: its member's lane closes too.
    dave.until_within(NATS_BACK, "the close on the cut node", |seen| !seen.closed.is_empty()).await;
    assert_eq!(dave.seen.closed[0].0, ErrorCode::ROOM_CLOSED, "{:?}", dave.seen.closed);
    // What the cut node said for dave meanwhile (it records him present again after being
    // counted lost) gets a moment to reach node0.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The new incarnation, on node0: no room was made again there under the old epoch (a
    // send into one would be refused, the log being the new incarnation's).
    let mut erin = Peer::join(&cluster, 0, "erin").await;
    assert_eq!(erin.broadcast("new room 1").await.expect("erin's first"), 1);
    // A member of the new room on the node that was cut off: the same incarnation.
    let mut frank = Peer::join(&cluster, 1, "frank").await;
    erin.until("frank", |seen| seen.members.contains("frank")).await;
    assert_eq!(frank.broadcast("new room 2").await.expect("frank's"), 2);
    assert_eq!(erin.broadcast("new room 3").await.expect("erin's second"), 3);
    frank.until("erin's second", |seen| seen.has_broadcast(3)).await;
    erin.until("frank's", |seen| seen.has_broadcast(2)).await;
    // Whatever the cut node said for dave came and went: both nodes list the new room's
    // members only, and nobody in it was closed.
    for k in 0..2 {
        Api::of(&cluster, k).until_members(&["erin", "frank"], "the new room's members").await;
    }
    erin.drain();
    frank.drain();
    assert!(erin.seen.closed.is_empty(), "the new room was closed: {:?}", erin.seen.closed);
    assert!(frank.seen.closed.is_empty(), "the new room was closed: {:?}", frank.seen.closed);
    assert_eq!(erin.seen.broadcast_ids(), [2], "erin gets frank's broadcast only");
    for peer in peers.into_iter().chain([erin, frank]) {
        peer.client.close().await;
    }
}

/// A client whose relay dies reconnects to the next relay of its list, which is cut off from
/// NATS and refuses its login with `CLUSTER_UNAVAILABLE`: the client keeps its room and moves
/// on until a relay logs it in again (here the same one, once NATS is back), instead of
/// giving the room up.
#[tokio::test]
async fn a_client_moves_on_from_a_relay_that_cannot_reach_the_cluster() {
    let proxy = NatsProxy::start();
    let mut cluster = second_node_behind(&proxy).await;
    let mut config = cluster.config(&[0, 1], "bob");
    // Notices the killed relay within seconds, not the default 30 s.
    config.idle_timeout = Duration::from_secs(2);
    let mut bob = Peer::join_with(&cluster, config).await;
    let mut alice = Peer::join(&cluster, 1, "alice").await;
    bob.until("alice", |seen| seen.members.contains("alice")).await;
    alice.until("bob", |seen| seen.members.contains("bob")).await;

    proxy.cut();
    cluster.kill(0);
    // bob's relay is gone; the other one cannot reach NATS: every login there is refused for
    // a while (its reconnects go back and forth between the two).
    tokio::time::sleep(Duration::from_secs(4)).await;
    bob.drain();
    assert!(bob.seen.closed.is_empty(), "bob gave up the room: {:?}", bob.seen.closed);
    proxy.restore();
    // Logged in again on node1 once it is back with the cluster: alice's broadcast reaches him.
    let id = tokio::time::timeout(NATS_BACK, async {
        loop {
            match alice.broadcast("after the move").await {
                Ok(id) => return id,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("alice's broadcast accepted once node1 is back");
    bob.until_within(NATS_BACK, "alice's broadcast", |seen| seen.has_broadcast(id)).await;
    assert!(bob.seen.closed.is_empty(), "bob gave up the room: {:?}", bob.seen.closed);
    assert_eq!(bob.client.rooms(), [ROOM]);
    bob.client.close().await;
    alice.client.close().await;
}

/// alice on node0 and dave on node1, node1 reaching NATS through a proxy that is then cut: by
/// the return, node0 has counted node1 lost and alice lists nobody.
async fn dave_cut_off_from_alice() -> (NatsProxy, Cluster, Vec<Peer>) {
    let proxy = NatsProxy::start();
    let cluster = second_node_behind(&proxy).await;
    let mut peers = Peer::join_all(&cluster, &[(0, "alice"), (1, "dave")]).await;
    proxy.cut();
    peers[0]
        .until_within(NODE_LOSS_NOTICED, "the cut node's member leaving", |seen| {
            seen.members.is_empty()
        })
        .await;
    (proxy, cluster, peers)
}

/// Two nodes with a short node timeout, the second reaching NATS through `proxy` (to be cut
/// off alone).
async fn second_node_behind(proxy: &NatsProxy) -> Cluster {
    Cluster::start_custom(2, short_node_timeout(), |k, nats| {
        if k == 1 { proxy.url_to(nats) } else { nats.url() }
    })
    .await
}
