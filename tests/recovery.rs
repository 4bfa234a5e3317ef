//! Broadcast history and recovery: a receiver that logs in again with the last ID it saw gets
//! what it missed, in order, without duplicates, or an explicit statement of what is lost; a
//! receiver that stops reading has its lane closed with SLOW_RECEIVER and recovers the same way.

mod common;

use bytes::Bytes;
use common::*;
use qrelay::protocol::{
    ErrorCode, LaneEvent, LaneHeader, MAX_SERVER_FRAME, Outcome, Recover, Request, User,
};
use qrelay::transport::FrameReader;

/// Logs `peer` in to `room` as `user` with `recover`, returning the lane's header and reader.
async fn relogin(
    relay: &TestRelay,
    peer: &mut RawPeer,
    user: &str,
    room: &str,
    recover: Option<Recover>,
) -> (LaneHeader, FrameReader) {
    let login = Request::Login {
        room: room.into(),
        user: User { id: user.into(), name: user.into() },
        token: relay.token(user),
        recover,
    };
    let outcome = peer.request(login).await;
    assert!(matches!(outcome, Outcome::LoggedIn { .. }), "{outcome:?}");
    let recv = within(peer.conn.accept_uni()).await.unwrap();
    let mut lane = FrameReader::new(recv, MAX_SERVER_FRAME);
    let header: LaneHeader = within(lane.next()).await.unwrap().unwrap();
    (header, lane)
}

/// The next `Recovered` event, skipping the member list.
async fn recovered(lane: &mut FrameReader) -> (bool, Option<(u64, u64)>, u64) {
    loop {
        match next_event(lane).await {
            LaneEvent::Recovered { complete, missed, replayed } => {
                return (complete, missed, replayed);
            }
            LaneEvent::UsersJoined(_) => continue,
            other => panic!("expected Recovered, got {other:?}"),
        }
    }
}

async fn broadcast_ids(lane: &mut FrameReader, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(next_broadcasts(lane).await.iter().map(|m| m.id));
    }
    ids
}

async fn send_n(sender: &mut RawPeer, room: &str, n: usize) {
    for _ in 0..n {
        let outcome = sender.broadcast(room, b"payload").await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
}

#[tokio::test]
async fn a_receiver_that_logs_in_again_gets_exactly_what_it_missed() {
    let relay = TestRelay::start(test_config()).await;
    let (mut sender, _lane) = relay.raw_member("alice", "lobby").await;
    let mut bob = relay.raw_peer().await;
    let (header, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
    send_n(&mut sender, "lobby", 5).await;
    assert_eq!(broadcast_ids(&mut lane, 5).await, vec![1, 2, 3, 4, 5]);

    // bob's connection dies; five more broadcasts go out while he is away.
    bob.conn.close(0u32.into(), b"network gone");
    send_n(&mut sender, "lobby", 5).await;

    let mut bob = relay.raw_peer().await;
    let recover = Recover { epoch: header.epoch, last_id: 5 };
    let (again, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(recover)).await;
    assert_eq!(again.epoch, header.epoch);
    assert_eq!(recovered(&mut lane).await, (true, None, 5));
    assert_eq!(broadcast_ids(&mut lane, 5).await, vec![6, 7, 8, 9, 10]);
    // Live traffic continues after the replay, with no duplicate.
    send_n(&mut sender, "lobby", 1).await;
    assert_eq!(broadcast_ids(&mut lane, 1).await, vec![11]);
}

#[tokio::test]
async fn a_history_too_short_reports_the_missing_range() {
    let mut config = test_config();
    config.history_size = 3;
    let relay = TestRelay::start(config).await;
    let (mut sender, _lane) = relay.raw_member("alice", "lobby").await;
    let epoch = {
        let mut bob = relay.raw_peer().await;
        let (header, _lane) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
        header.epoch
    };
    send_n(&mut sender, "lobby", 10).await;
    let mut bob = relay.raw_peer().await;
    let recover = Recover { epoch, last_id: 5 };
    let (_, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(recover)).await;
    assert_eq!(recovered(&mut lane).await, (false, Some((6, 7)), 3));
    assert_eq!(broadcast_ids(&mut lane, 3).await, vec![8, 9, 10]);
}

#[tokio::test]
async fn another_epoch_replays_the_current_history_and_says_it_is_incomplete() {
    let relay = TestRelay::start(test_config()).await;
    let (mut sender, _lane) = relay.raw_member("alice", "lobby").await;
    send_n(&mut sender, "lobby", 2).await;
    let mut bob = relay.raw_peer().await;
    let stale = Recover { epoch: 12345, last_id: 40 };
    let (header, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(stale)).await;
    assert_ne!(header.epoch, 12345);
    assert_eq!(recovered(&mut lane).await, (false, None, 2));
    assert_eq!(broadcast_ids(&mut lane, 2).await, vec![1, 2]);
}

/// PROTOCOL.md section 7: the right epoch with a `last_id` beyond the room's latest ID is
/// answered as another sequence (the lane header's epoch is what tells the two apart).
#[tokio::test]
async fn the_right_epoch_with_a_last_id_beyond_the_latest_is_another_sequence() {
    let mut config = test_config();
    config.history_size = 2;
    let relay = TestRelay::start(config).await;
    let (mut sender, _lane) = relay.raw_member("alice", "lobby").await;
    let epoch = {
        let mut bob = relay.raw_peer().await;
        let (header, _lane) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
        header.epoch
    };
    send_n(&mut sender, "lobby", 2).await;
    let mut bob = relay.raw_peer().await;
    let beyond = Recover { epoch, last_id: 9 };
    let (header, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(beyond)).await;
    assert_eq!(header.epoch, epoch);
    assert_eq!(recovered(&mut lane).await, (false, None, 2));
    assert_eq!(broadcast_ids(&mut lane, 2).await, vec![1, 2]);
    // With the history no longer reaching back to ID 1, `missed` names what it lost.
    send_n(&mut sender, "lobby", 2).await;
    let mut carol = relay.raw_peer().await;
    let beyond = Recover { epoch, last_id: 90 };
    let (_, mut lane) = relogin(&relay, &mut carol, "carol", "lobby", Some(beyond)).await;
    assert_eq!(recovered(&mut lane).await, (false, Some((1, 2)), 2));
    assert_eq!(broadcast_ids(&mut lane, 2).await, vec![3, 4]);
}

#[tokio::test]
async fn an_empty_room_keeps_its_history_until_it_expires() {
    let mut config = test_config();
    config.history_ttl_secs = 1;
    let relay = TestRelay::start(config).await;
    let (mut alice, _lane) = relay.raw_member("alice", "lobby").await;
    let mut bob = relay.raw_peer().await;
    let (header, _lane) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
    send_n(&mut alice, "lobby", 3).await;
    assert_eq!(alice.request(Request::Logout { room: "lobby".into() }).await, Outcome::Done);
    assert_eq!(bob.request(Request::Logout { room: "lobby".into() }).await, Outcome::Done);
    // Nobody is in the room, but its history keeps it (and its epoch) alive.
    assert_eq!(relay.handle.room_count(), 1);
    let recover = Recover { epoch: header.epoch, last_id: 1 };
    let (again, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(recover)).await;
    assert_eq!(again.epoch, header.epoch);
    assert_eq!(recovered(&mut lane).await, (true, None, 2));
    assert_eq!(bob.request(Request::Logout { room: "lobby".into() }).await, Outcome::Done);
    // Once the history expires the sweeper removes the room; it then starts a new epoch.
    let deadline = tokio::time::Instant::now() + STEP;
    while relay.handle.room_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the empty room was never removed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (fresh, _) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
    assert_ne!(fresh.epoch, header.epoch);
}

#[tokio::test]
async fn a_receiver_that_stops_reading_is_cut_loose_explicitly_and_recovers() {
    let mut config = test_config();
    config.max_members_per_room = 10;
    config.history_size = 2000;
    config.lane_queue = 2100;
    let relay = TestRelay::start(config).await;
    let (mut sender, _lane) = relay.raw_member("alice", "lobby").await;
    let (_watcher, mut watcher_lane) = relay.raw_member("carol", "lobby").await;
    let mut bob = relay.raw_peer().await;
    let (header, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
    // carol reads all along, and finishes when she is told bob left.
    let carol = tokio::spawn(async move {
        loop {
            match next_event(&mut watcher_lane).await {
                LaneEvent::UsersLeft(members) if members[0].user.id == "bob" => return,
                LaneEvent::Closed { code, .. } => panic!("carol's lane closed: {code}"),
                _ => continue,
            }
        }
    });

    // bob reads nothing while alice sends large broadcasts: his stream window fills, then his
    // lane queue; the room never waits for him.
    let payload = Bytes::from(vec![b'x'; 1024]);
    let mut sent = 0u64;
    while relay.handle.stats().slow_receivers == 0 {
        assert!(sent < 20_000, "bob was never declared slow");
        let outcome = sender
            .request(Request::Broadcast { room: "lobby".into(), payload: payload.clone() })
            .await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        sent += 1;
    }
    // carol, who reads, was never cut off and is told bob left.
    within(carol).await.unwrap();
    assert_eq!(relay.handle.stats().slow_receivers, 1);
    // bob now reads: every queued broadcast in order, then Closed { SLOW_RECEIVER }.
    let mut last = 0;
    loop {
        match next_event(&mut lane).await {
            LaneEvent::Broadcasts(messages) => {
                for m in messages {
                    assert_eq!(m.id, last + 1, "no gap and no duplicate before the close");
                    last = m.id;
                }
            }
            LaneEvent::UsersJoined(_) => {}
            LaneEvent::Closed { code, .. } => {
                assert_eq!(code, ErrorCode::SLOW_RECEIVER);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(last < sent, "the close came before the end of the stream");
    // Logging in again with the last ID seen recovers the rest, in order.
    let recover = Recover { epoch: header.epoch, last_id: last };
    let (_, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(recover)).await;
    assert_eq!(recovered(&mut lane).await, (true, None, sent - last));
    let ids = broadcast_ids(&mut lane, (sent - last) as usize).await;
    assert_eq!(ids, (last + 1..=sent).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_recovering_sender_does_not_get_its_own_broadcasts_back() {
    let relay = TestRelay::start(test_config()).await;
    let (mut alice, _lane) = relay.raw_member("alice", "lobby").await;
    let mut bob = relay.raw_peer().await;
    let (header, _lane) = relogin(&relay, &mut bob, "bob", "lobby", None).await;
    send_n(&mut alice, "lobby", 1).await; // 1
    send_n(&mut bob, "lobby", 2).await; // 2, 3: bob's own
    send_n(&mut alice, "lobby", 1).await; // 4
    bob.conn.close(0u32.into(), b"gone");
    let mut bob = relay.raw_peer().await;
    let recover = Recover { epoch: header.epoch, last_id: 0 };
    let (_, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(recover)).await;
    assert_eq!(recovered(&mut lane).await, (true, None, 2));
    assert_eq!(broadcast_ids(&mut lane, 2).await, vec![1, 4]);
}

#[tokio::test]
async fn after_an_epoch_change_missed_names_the_ids_of_the_new_sequence_no_longer_held() {
    let mut config = test_config();
    config.history_size = 2;
    let relay = TestRelay::start(config).await;
    let (mut alice, _lane) = relay.raw_member("alice", "lobby").await;
    send_n(&mut alice, "lobby", 5).await;
    let mut bob = relay.raw_peer().await;
    let stale = Recover { epoch: 1, last_id: 3 };
    let (_, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(stale)).await;
    // The old sequence is unknown (never complete); of the current one, 1-3 are gone.
    assert_eq!(recovered(&mut lane).await, (false, Some((1, 3)), 2));
    assert_eq!(broadcast_ids(&mut lane, 2).await, vec![4, 5]);
}

#[tokio::test]
async fn after_an_epoch_change_with_the_whole_sequence_held_nothing_of_it_is_missed() {
    let relay = TestRelay::start(test_config()).await;
    let (mut alice, _lane) = relay.raw_member("alice", "lobby").await;
    send_n(&mut alice, "lobby", 3).await;
    let mut bob = relay.raw_peer().await;
    let stale = Recover { epoch: 1, last_id: 9 };
    let (_, mut lane) = relogin(&relay, &mut bob, "bob", "lobby", Some(stale)).await;
    assert_eq!(recovered(&mut lane).await, (false, None, 3));
    assert_eq!(broadcast_ids(&mut lane, 3).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_receiver_that_takes_nothing_for_the_stall_limit_is_cut_loose() {
    let mut config = test_config();
    config.lane_stall_ms = 1000;
    let relay = TestRelay::start(config).await;
    let (mut alice, _alice_lane) = relay.raw_member("alice", "lobby").await;
    let (_carol, mut carol_lane) = relay.raw_member("carol", "lobby").await;
    // bob's connection stays alive (keep-alives) but he never reads his lane.
    let conn = relay.connect_raw_with_idle(std::time::Duration::from_millis(1000)).await;
    let (_bob, _bob_lane) = relay.join(relay.raw_peer_on(conn).await, "bob", "lobby").await;
    let carol = tokio::spawn(async move {
        loop {
            if let LaneEvent::UsersLeft(members) = next_event(&mut carol_lane).await
                && members[0].user.id == "bob"
            {
                return;
            }
        }
    });
    // Fill bob's stream window (256 KiB), then keep the room busy until the relay gives up on
    // his stalled lane and removes him.
    let payload = Bytes::from(vec![b'x'; 1024]);
    for _ in 0..400 {
        let outcome = alice
            .request(Request::Broadcast { room: "lobby".into(), payload: payload.clone() })
            .await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while !carol.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "bob's stalled lane was never given up");
        send_n(&mut alice, "lobby", 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(relay.handle.stats().slow_receivers, 0, "removed for the stall, not a full queue");
}
