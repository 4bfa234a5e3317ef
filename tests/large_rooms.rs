//! Member lists in small and large rooms over loopback QUIC: a small room lists every member
//! at login and names each join and leave; a room above `large_room_above` gives a login the
//! member count and one page, pages on request, and tells its members counts, not names.

mod common;

use bytes::Bytes;
use common::*;
use qrelay::client::{Client, ClientConfig, Event, Events};
use qrelay::protocol::{
    ClientDatagram, ErrorCode, LaneEvent, MAX_MEMBER_PAGE, MEMBERS_FROM_START, Member, MemberPage,
    Outcome, Request, User, encode_body,
};
use qrelay::server::ServerConfig;
use qrelay::transport::FrameReader;

/// A relay whose rooms are large above `large` members, with first pages of `page` members
/// and user updates that only a message flushes (the interval is beyond the test's limits).
async fn relay(large: usize, page: usize) -> TestRelay {
    let config = ServerConfig {
        large_room_above: large,
        login_member_page: page,
        user_update_interval_ms: 60_000,
        ..test_config()
    };
    TestRelay::start(config).await
}

/// `prefix00`, `prefix01`, … joined to `room` in order, each on its own connection.
async fn members(
    relay: &TestRelay,
    prefix: &str,
    room: &str,
    n: usize,
) -> Vec<(RawPeer, FrameReader)> {
    let mut joined = Vec::with_capacity(n);
    for i in 0..n {
        joined.push(relay.raw_member(&format!("{prefix}{i:02}"), room).await);
    }
    joined
}

async fn fetch(peer: &mut RawPeer, room: &str, cursor: u64, limit: u32) -> Outcome {
    peer.request(Request::FetchMembers { room: room.into(), cursor, limit }).await
}

fn page(outcome: Outcome) -> MemberPage {
    match outcome {
        Outcome::Members(page) => page,
        other => panic!("expected a page of members, got {other:?}"),
    }
}

fn refused(outcome: Outcome) -> ErrorCode {
    match outcome {
        Outcome::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn ids(members: &[Member]) -> Vec<String> {
    members.iter().map(|m| m.user.id.clone()).collect()
}

/// Walks every page of `room` from the start, `limit` at a time: the members in page order,
/// and every page's count.
async fn walk(peer: &mut RawPeer, room: &str, limit: u32) -> (Vec<String>, Vec<u32>) {
    let (mut listed, mut counts) = (Vec::new(), Vec::new());
    let mut cursor = MEMBERS_FROM_START;
    loop {
        let page = page(fetch(peer, room, cursor, limit).await);
        let most = if limit == 0 { MAX_MEMBER_PAGE } else { limit as usize };
        assert!(page.members.len() <= most, "a page holds at most its limit");
        listed.extend(ids(&page.members));
        counts.push(page.count);
        if page.next == MEMBERS_FROM_START {
            return (listed, counts);
        }
        cursor = page.next;
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

#[tokio::test]
async fn a_small_room_keeps_full_lists_and_per_user_updates() {
    let relay = relay(3, 2).await;
    let mut joined = members(&relay, "u", "den", 3).await;
    // The third login is still a small room: the whole list, no count.
    match next_event(&mut joined[2].1).await {
        LaneEvent::UsersJoined(listed) => {
            let mut listed = ids(&listed);
            listed.sort();
            assert_eq!(listed, ["u00", "u01"]);
        }
        other => panic!("expected the member list, got {other:?}"),
    }
    // Each join is named to the others at once.
    let first = &mut joined[0].1;
    for expected in ["u01", "u02"] {
        match next_event(first).await {
            LaneEvent::UsersJoined(listed) => assert_eq!(ids(&listed), [expected]),
            other => panic!("expected {expected}'s join, got {other:?}"),
        }
    }
    // Paging works in a small room too, and a leave is named.
    let (listed, counts) = walk(&mut joined[1].0, "den", 2).await;
    assert_eq!(listed, names("u", 3));
    assert_eq!(counts, [3, 3]);
    assert_eq!(joined[2].0.request(Request::Logout { room: "den".into() }).await, Outcome::Done);
    match next_event(&mut joined[0].1).await {
        LaneEvent::UsersLeft(listed) => assert_eq!(ids(&listed), ["u02"]),
        other => panic!("expected u02's leave, got {other:?}"),
    }
}

#[tokio::test]
async fn a_large_room_gives_the_count_and_a_page_at_login_and_every_member_by_pages() {
    const N: usize = 23;
    let relay = relay(5, 3).await;
    let mut joined = members(&relay, "m", "hall", N).await;
    // The fifth login still got the list; the sixth made the room large: count and page.
    match next_event(&mut joined[4].1).await {
        LaneEvent::UsersJoined(listed) => assert_eq!(listed.len(), 4),
        other => panic!("expected the member list, got {other:?}"),
    }
    for (i, (_, lane)) in joined.iter_mut().enumerate().skip(5) {
        match next_event(lane).await {
            LaneEvent::MemberPage(page) => {
                assert_eq!(page.count as usize, i + 1, "the count includes the newcomer");
                assert_eq!(ids(&page.members), names("m", 3), "the first page, session order");
                assert_ne!(page.next, MEMBERS_FROM_START, "more pages follow");
            }
            other => panic!("login {i}: expected a member page, got {other:?}"),
        }
    }
    // Walking the pages lists every member exactly once, in session (here: login) order.
    for limit in [1, 4, 7, 0] {
        let (listed, counts) = walk(&mut joined[9].0, "hall", limit).await;
        assert_eq!(listed, names("m", N), "limit {limit}");
        assert!(counts.iter().all(|c| *c as usize == N));
    }
    let whole = page(fetch(&mut joined[0].0, "hall", MEMBERS_FROM_START, 1000).await);
    assert_eq!(whole.members.len(), N.min(MAX_MEMBER_PAGE));
    assert_eq!(whole.next, MEMBERS_FROM_START);
    // The first page's cursor at login leads on from there.
    let (_late, mut late_lane) = relay.raw_member("late", "hall").await;
    let LaneEvent::MemberPage(first) = next_event(&mut late_lane).await else {
        panic!("expected a member page");
    };
    let rest = page(fetch(&mut joined[1].0, "hall", first.next, 0).await);
    let mut expected = names("m", N)[3..].to_vec();
    expected.push("late".into());
    assert_eq!(ids(&rest.members), expected);
}

#[tokio::test]
async fn a_crowd_joining_a_large_room_costs_each_member_one_count_per_flush() {
    let relay = relay(3, 2).await;
    let mut early = members(&relay, "e", "hall", 3).await;
    // 20 more: the room turns large at the fourth member.
    let mut crowd = members(&relay, "c", "hall", 20).await;
    let (mut alice, _alice_lane) = relay.raw_member("alice", "hall").await;
    assert!(matches!(alice.broadcast("hall", b"go").await, Outcome::Sent { .. }));
    // An early member: the list, the joins while the room was small, then one count for the
    // whole crowd, in order before the broadcast that flushed it.
    let lane = &mut early[0].1;
    for expected in ["e01", "e02"] {
        match next_event(lane).await {
            LaneEvent::UsersJoined(listed) => assert_eq!(ids(&listed), [expected]),
            other => panic!("expected {expected}'s join, got {other:?}"),
        }
    }
    assert_eq!(next_event(lane).await, LaneEvent::MemberCount(24));
    assert!(matches!(next_event(lane).await, LaneEvent::Broadcasts(m) if m[0].payload == "go"));
    // A newcomer of the crowd: its page, the latest count, the broadcast.
    let lane = &mut crowd[10].1;
    assert!(matches!(next_event(lane).await, LaneEvent::MemberPage(p) if p.count == 14));
    assert_eq!(next_event(lane).await, LaneEvent::MemberCount(24));
    assert!(matches!(next_event(lane).await, LaneEvent::Broadcasts(_)));
    // Leaves are counted, not named.
    for (peer, _) in &mut crowd[..5] {
        assert_eq!(peer.request(Request::Logout { room: "hall".into() }).await, Outcome::Done);
    }
    assert!(matches!(alice.broadcast("hall", b"again").await, Outcome::Sent { .. }));
    assert_eq!(next_event(&mut early[0].1).await, LaneEvent::MemberCount(19));
    assert!(matches!(next_event(&mut early[0].1).await, LaneEvent::Broadcasts(_)));
}

#[tokio::test]
async fn a_barrage_sender_in_a_large_room_is_named_before_its_barrage() {
    let relay = relay(2, 2).await;
    let mut joined = members(&relay, "m", "hall", 4).await;
    let mut sender = relay.raw_peer().await;
    let Outcome::LoggedIn { room_number, session } = sender.login(&relay, "speaker", "hall").await
    else {
        panic!("login failed");
    };
    let _sender_lane = sender.accept_lane("hall").await;
    let datagram = encode_body(&ClientDatagram::BarrageNoReply {
        room_number,
        payload: Bytes::from_static(b"hello"),
    })
    .unwrap();
    sender.conn.send_datagram(datagram).unwrap();
    // m00 (in the room from the start) skips to what follows its list and m01's join.
    let lane = &mut joined[0].1;
    assert!(matches!(next_event(lane).await, LaneEvent::UsersJoined(m) if ids(&m) == ["m01"]));
    assert_eq!(next_event(lane).await, LaneEvent::MemberCount(5));
    match next_event(lane).await {
        LaneEvent::UsersJoined(named) => {
            assert_eq!(named.len(), 1);
            assert_eq!((named[0].session, named[0].user.id.as_str()), (session, "speaker"));
        }
        other => panic!("expected the sender named, got {other:?}"),
    }
    let lane = &mut joined[3].1;
    assert!(matches!(next_event(lane).await, LaneEvent::MemberPage(p) if p.count == 4));
    assert_eq!(next_event(lane).await, LaneEvent::MemberCount(5));
    assert!(matches!(next_event(lane).await, LaneEvent::UsersJoined(m) if ids(&m) == ["speaker"]));
}

#[tokio::test]
async fn a_bad_cursor_or_a_room_not_joined_gets_a_clear_code() {
    let relay = relay(2, 1).await;
    let mut hall = members(&relay, "h", "hall", 4).await;
    let mut den = members(&relay, "d", "den", 4).await;
    let den_cursor = page(fetch(&mut den[0].0, "den", MEMBERS_FROM_START, 1).await).next;
    let peer = &mut hall[0].0;
    // Another room's cursor and a made-up one are refused; so are rooms not joined.
    assert_eq!(refused(fetch(peer, "hall", den_cursor, 1).await), ErrorCode::INVALID_CURSOR);
    assert_eq!(refused(fetch(peer, "hall", 12345, 1).await), ErrorCode::INVALID_CURSOR);
    assert_eq!(refused(fetch(peer, "den", MEMBERS_FROM_START, 1).await), ErrorCode::NOT_LOGGED_IN);
    assert_eq!(refused(fetch(peer, "nowhere", 0, 1).await), ErrorCode::NOT_LOGGED_IN);
    // The connection and the room carry on.
    let (listed, _) = walk(peer, "hall", 3).await;
    assert_eq!(listed, names("h", 4));
}

/// A client library user of `relay` logged in to `room`.
async fn client(relay: &TestRelay, user: &str, room: &str) -> (Client, Events) {
    let user = User { id: user.into(), name: user.to_uppercase() };
    let config = ClientConfig::new(relay.addr, "localhost", vec![relay.ca.clone()], user);
    let (client, events) = within(Client::connect(config)).await.expect("connect");
    within(client.login_room(room, &relay.token(&client.user().id))).await.expect("login");
    (client, events)
}

#[tokio::test]
async fn the_client_library_reports_counts_and_fetches_pages() {
    let relay = relay(3, 2).await;
    let (alice, mut alice_events) = client(&relay, "alice", "hall").await;
    let _others = members(&relay, "m", "hall", 5).await;
    let (carol, mut carol_events) = client(&relay, "carol", "hall").await;
    // carol's login to a large room: the count and the first page.
    match within(carol_events.next()).await {
        Some(Event::RoomMembers { room, count, users, next }) => {
            assert_eq!((room.as_str(), count), ("hall", 7));
            let listed: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
            assert_eq!(listed, ["alice", "m00"]);
            assert_ne!(next, MEMBERS_FROM_START);
        }
        other => panic!("expected the room's members, got {other:?}"),
    }
    assert_eq!(carol.room_member_count("hall"), Some(7));
    // alice saw joins while the room was small, then counts.
    within(alice.send_broadcast_message("hall", "flush")).await.expect("broadcast");
    let mut joins = 0;
    loop {
        match within(alice_events.next()).await {
            Some(Event::UsersJoined { users, .. }) => joins += users.len(),
            Some(Event::MemberCount { count: 7, .. }) => break,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("events ended"),
        }
    }
    assert_eq!(joins, 2, "m00 and m01 joined while the room was small");
    assert_eq!(alice.room_member_count("hall"), Some(7));
    // Every member, page by page.
    let mut listed = Vec::new();
    let mut cursor = MEMBERS_FROM_START;
    loop {
        let page = within(carol.fetch_members("hall", cursor, 3)).await.expect("page");
        listed.extend(page.members.into_iter().map(|m| m.user.id));
        if page.next == MEMBERS_FROM_START {
            break;
        }
        cursor = page.next;
    }
    let mut expected = vec!["alice".to_string()];
    expected.extend(names("m", 5));
    expected.push("carol".into());
    assert_eq!(listed, expected);
    let error = within(carol.fetch_members("hall", 99, 3)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::INVALID_CURSOR);
    assert_eq!(carol.room_member_count("elsewhere"), None);
}

#[tokio::test]
async fn the_relay_refuses_a_first_page_above_the_maximum() {
    let config = ServerConfig { login_member_page: MAX_MEMBER_PAGE + 1, ..test_config() };
    assert!(config.validate().is_err());
    for login_member_page in [0, MAX_MEMBER_PAGE] {
        assert!(ServerConfig { login_member_page, ..test_config() }.validate().is_ok());
    }
}
