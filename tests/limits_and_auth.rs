//! Bad input, tokens and frequency limits: each gets its documented code, and the connection
//! stays usable afterwards.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use qrelay::auth::{Claims, unix_seconds};
use qrelay::protocol::{ErrorCode, MAX_PAYLOAD, MAX_ROOM_ID, Outcome, Request, User};
use qrelay::server::RateLimits;

fn code(outcome: Outcome) -> ErrorCode {
    match outcome {
        Outcome::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn login(room: &str, id: &str, name: &str, token: String) -> Request {
    Request::Login {
        room: room.into(),
        user: User { id: id.into(), name: name.into() },
        token,
        recover: None,
    }
}

#[tokio::test]
async fn payload_size_rules() {
    let relay = TestRelay::start(test_config()).await;
    let (mut alice, _lane) = relay.raw_member("alice", "lobby").await;
    let send = |len: usize| Request::Broadcast {
        room: "lobby".into(),
        payload: Bytes::from(vec![b'a'; len]),
    };
    assert_eq!(code(alice.request(send(0)).await), ErrorCode::PAYLOAD_EMPTY);
    assert_eq!(code(alice.request(send(MAX_PAYLOAD + 1)).await), ErrorCode::PAYLOAD_TOO_LARGE);
    assert!(matches!(alice.request(send(MAX_PAYLOAD)).await, Outcome::Sent { message_id: 1 }));
    let command = Request::Command {
        room: "lobby".into(),
        to: vec![],
        payload: Bytes::from(vec![1; MAX_PAYLOAD + 1]),
    };
    assert_eq!(code(alice.request(command).await), ErrorCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn invalid_ids_and_names_are_refused() {
    let relay = TestRelay::start(test_config()).await;
    let mut peer = relay.raw_peer().await;
    let token = relay.token("alice");
    let long_room = "r".repeat(MAX_ROOM_ID + 1);
    for (room, id, name, want) in [
        ("", "alice", "A", ErrorCode::INVALID_ROOM_ID),
        ("has space", "alice", "A", ErrorCode::INVALID_ROOM_ID),
        (long_room.as_str(), "alice", "A", ErrorCode::INVALID_ROOM_ID),
        ("lobby", "", "A", ErrorCode::INVALID_USER_ID),
        ("lobby", "al/ice", "A", ErrorCode::INVALID_USER_ID),
        ("lobby", "alice", "", ErrorCode::INVALID_USER_NAME),
        ("lobby", "alice", "Alice (\u{202E}nimda", ErrorCode::INVALID_USER_NAME),
        ("lobby", "alice", "Al\u{200B}ice", ErrorCode::INVALID_USER_NAME),
        ("lobby", "alice", "Alice\u{2066}", ErrorCode::INVALID_USER_NAME),
    ] {
        assert_eq!(
            code(peer.request(login(room, id, name, token.clone())).await),
            want,
            "{room:?} {id:?} {name:?}"
        );
    }
    assert!(matches!(
        peer.request(login("lobby", "alice", "A", token)).await,
        Outcome::LoggedIn { .. }
    ));
}

#[tokio::test]
async fn tokens_are_checked_for_signature_expiry_user_room_and_publish() {
    let relay = TestRelay::start(test_config()).await;
    let mut peer = relay.raw_peer().await;
    let now = unix_seconds(SystemTime::now());
    let claims = |sub: &str, exp: u64, rooms: Option<Vec<String>>, publish: bool| Claims {
        sub: sub.into(),
        exp,
        iat: now,
        nbf: None,
        rooms,
        publish,
    };
    let sign = |c: Claims| relay.tokens.sign(&c).unwrap();
    let foreign = qrelay::auth::TokenKey::new(b"some other secret")
        .mint("alice", None, true, Duration::from_secs(60))
        .unwrap();
    for (token, want) in [
        (String::new(), ErrorCode::TOKEN_INVALID),
        ("garbage".to_string(), ErrorCode::TOKEN_INVALID),
        (foreign, ErrorCode::TOKEN_INVALID),
        (sign(claims("alice", now - 1, None, true)), ErrorCode::TOKEN_EXPIRED),
        (
            // Not valid yet: nbf (not before) a minute from now.
            sign(Claims { nbf: Some(now + 60), ..claims("alice", now + 600, None, true) }),
            ErrorCode::TOKEN_INVALID,
        ),
        (sign(claims("bob", now + 60, None, true)), ErrorCode::TOKEN_USER_MISMATCH),
        (
            sign(claims("alice", now + 60, Some(vec!["a".into()]), true)),
            ErrorCode::ROOM_NOT_GRANTED,
        ),
    ] {
        assert_eq!(code(peer.request(login("b", "alice", "A", token)).await), want);
    }
    // A token for room a works in a, and nothing of a reaches b.
    let room_a = sign(claims("alice", now + 60, Some(vec!["a".into()]), false));
    assert!(matches!(
        peer.request(login("a", "alice", "A", room_a)).await,
        Outcome::LoggedIn { .. }
    ));
    // A listen-only token may not send.
    let outcome = peer.broadcast("a", b"hi").await;
    assert_eq!(code(outcome), ErrorCode::PUBLISH_NOT_GRANTED);
    // Renewing with a publishing token lifts that, without reconnecting.
    let renewed = sign(claims("alice", now + 60, None, true));
    assert_eq!(peer.request(Request::RenewToken { token: renewed }).await, Outcome::Done);
    assert!(matches!(peer.broadcast("a", b"hi").await, Outcome::Sent { .. }));
    // A renewal must name the same user and keep granting the rooms joined.
    let other_user = sign(claims("bob", now + 60, None, true));
    assert_eq!(
        code(peer.request(Request::RenewToken { token: other_user }).await),
        ErrorCode::TOKEN_USER_MISMATCH
    );
    let narrower = sign(claims("alice", now + 60, Some(vec!["z".into()]), true));
    assert_eq!(
        code(peer.request(Request::RenewToken { token: narrower }).await),
        ErrorCode::ROOM_NOT_GRANTED
    );
}

/// PROTOCOL.md sections 8 and 9: the order of the `RenewToken` checks.
#[tokio::test]
async fn renewal_checks_come_in_the_documented_order() {
    let relay = TestRelay::start(test_config()).await;
    let now = unix_seconds(SystemTime::now());
    let sign = |sub: &str, exp: u64, rooms: Option<Vec<String>>| {
        let claims = Claims { sub: sub.into(), exp, iat: now, nbf: None, rooms, publish: true };
        relay.tokens.sign(&claims).unwrap()
    };
    let renew = |token: String| Request::RenewToken { token };
    let expired = || sign("alice", now - 10, None);
    let mut peer = relay.raw_peer().await;
    // Before any login, whatever the token.
    for token in [String::new(), "garbage".into(), expired(), relay.token("alice")] {
        assert_eq!(code(peer.request(renew(token)).await), ErrorCode::NOT_LOGGED_IN);
    }
    let token = relay.token("alice");
    assert!(matches!(
        peer.request(login("lobby", "alice", "A", token)).await,
        Outcome::LoggedIn { .. }
    ));
    assert_eq!(code(peer.request(renew("garbage".into())).await), ErrorCode::TOKEN_INVALID);
    assert_eq!(code(peer.request(renew("a".repeat(5000))).await), ErrorCode::TOKEN_INVALID);
    // Expiry comes before the user and the rooms.
    assert_eq!(code(peer.request(renew(expired())).await), ErrorCode::TOKEN_EXPIRED);
    let someone_elses = sign("bob", now - 10, Some(vec!["z".into()]));
    assert_eq!(code(peer.request(renew(someone_elses)).await), ErrorCode::TOKEN_EXPIRED);
    let someone_elses = sign("bob", now + 60, Some(vec!["z".into()]));
    assert_eq!(code(peer.request(renew(someone_elses)).await), ErrorCode::TOKEN_USER_MISMATCH);
    // A refused renewal keeps the old token: sending still works.
    assert!(matches!(peer.broadcast("lobby", b"still").await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn an_expiring_token_is_warned_about_and_then_refused_for_sends() {
    let mut config = test_config();
    config.token_warning_secs = 60;
    let relay = TestRelay::start(config).await;
    let mut peer = relay.raw_peer().await;
    let now = unix_seconds(SystemTime::now());
    let token = relay
        .tokens
        .sign(&Claims {
            sub: "alice".into(),
            exp: now + 2,
            iat: now,
            nbf: None,
            rooms: None,
            publish: true,
        })
        .unwrap();
    assert!(matches!(
        peer.request(login("lobby", "alice", "A", token)).await,
        Outcome::LoggedIn { .. }
    ));
    match within(peer.control.next::<qrelay::protocol::ControlFrame>()).await.unwrap() {
        Some(qrelay::protocol::ControlFrame::TokenWillExpire { expires_at_ms }) => {
            assert_eq!(expires_at_ms, (now + 2) * 1000)
        }
        other => panic!("expected TokenWillExpire, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(code(peer.broadcast("lobby", b"late").await), ErrorCode::TOKEN_EXPIRED);
    let fresh = relay.token("alice");
    assert_eq!(peer.request(Request::RenewToken { token: fresh }).await, Outcome::Done);
    assert!(matches!(peer.broadcast("lobby", b"renewed").await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn insecure_dev_auth_accepts_any_token() {
    let mut config = test_config();
    config.insecure_dev_auth = true;
    let relay = TestRelay::start(config).await;
    let mut peer = relay.raw_peer().await;
    assert!(matches!(
        peer.request(login("lobby", "alice", "A", String::new())).await,
        Outcome::LoggedIn { .. }
    ));
    assert!(matches!(peer.broadcast("lobby", b"hi").await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn a_full_room_refuses_the_next_member() {
    let mut config = test_config();
    config.max_members_per_room = 2;
    let relay = TestRelay::start(config).await;
    let (_a, _lane) = relay.raw_member("a", "lobby").await;
    let (_b, _lane) = relay.raw_member("b", "lobby").await;
    let mut c = relay.raw_peer().await;
    assert_eq!(code(c.login(&relay, "c", "lobby").await), ErrorCode::ROOM_FULL);
    // The same user replacing its session does not count as a new member.
    let (_a2, _lane) = relay.raw_member("a", "lobby").await;
}

#[tokio::test]
async fn default_limits_are_the_documented_sdk_limits() {
    let limits = RateLimits::default();
    assert_eq!(limits.broadcast_per_room, 10.0);
    assert_eq!(limits.broadcast_per_user, 2.0);
    assert_eq!(limits.barrage_per_room, 20.0);
    assert_eq!(limits.command_to_one_per_user, 200.0);
    assert_eq!(limits.command_to_many_per_user, 10.0);
    assert_eq!(limits.login_per_room, 200.0);
    assert_eq!(qrelay::server::ServerConfig::default().max_rooms_per_connection, 5);
}

#[tokio::test]
async fn sends_over_a_limit_get_a_rate_limit_result_and_the_connection_stays() {
    let mut config = test_config();
    config.limits = RateLimits::default();
    config.limits.command_to_one_per_user = 3.0;
    config.limits.login_per_room = 0.0;
    let relay = TestRelay::start(config).await;
    let (mut members, mut lanes) = (Vec::new(), Vec::new());
    for i in 0..6 {
        // A dropped lane reader stops the stream, and the relay then removes the member: keep
        // the lanes.
        let (member, lane) = relay.raw_member(&format!("u{i}"), "lobby").await;
        members.push(member);
        lanes.push(lane);
    }
    // Per user: 2 broadcasts pass, the third is refused.
    assert!(matches!(members[0].broadcast("lobby", b"1").await, Outcome::Sent { .. }));
    assert!(matches!(members[0].broadcast("lobby", b"2").await, Outcome::Sent { .. }));
    assert_eq!(code(members[0].broadcast("lobby", b"3").await), ErrorCode::USER_RATE_LIMITED);
    // Per room: 10 in total pass (u0 sent 2 already), the eleventh is refused.
    for m in &mut members[1..5] {
        for _ in 0..2 {
            assert!(matches!(m.broadcast("lobby", b"x").await, Outcome::Sent { .. }));
        }
    }
    assert_eq!(code(members[5].broadcast("lobby", b"x").await), ErrorCode::ROOM_RATE_LIMITED);
    // Commands to several users: 10 pass; to one user: the configured 3 pass.
    let many = || Request::Command { room: "lobby".into(), to: vec![], payload: "c".into() };
    for _ in 0..10 {
        assert!(matches!(members[5].request(many()).await, Outcome::Sent { .. }));
    }
    assert_eq!(code(members[5].request(many()).await), ErrorCode::USER_RATE_LIMITED);
    let one =
        || Request::Command { room: "lobby".into(), to: vec!["u0".into()], payload: "c".into() };
    for _ in 0..3 {
        assert!(matches!(members[4].request(one()).await, Outcome::Sent { .. }));
    }
    assert_eq!(code(members[4].request(one()).await), ErrorCode::USER_RATE_LIMITED);
    // Every connection is still served after its refusals.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(members[0].broadcast("lobby", b"later").await, Outcome::Sent { .. }));
}

#[tokio::test]
async fn logins_over_the_room_limit_are_refused() {
    let mut config = test_config();
    config.limits.login_per_room = 2.0;
    let relay = TestRelay::start(config).await;
    // Connect first, so that the three logins follow each other within milliseconds.
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(relay.raw_peer().await);
    }
    assert!(matches!(peers[0].login(&relay, "a", "lobby").await, Outcome::LoggedIn { .. }));
    assert!(matches!(peers[1].login(&relay, "b", "lobby").await, Outcome::LoggedIn { .. }));
    assert_eq!(code(peers[2].login(&relay, "c", "lobby").await), ErrorCode::LOGIN_RATE_LIMITED);
    // Another room has its own budget, and the refused peer may try again later.
    assert!(matches!(peers[2].login(&relay, "c", "other").await, Outcome::LoggedIn { .. }));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(peers[2].login(&relay, "c", "lobby").await, Outcome::LoggedIn { .. }));
}

#[tokio::test]
async fn a_token_that_never_expires_is_accepted_without_a_warning() {
    let relay = TestRelay::start(test_config()).await;
    let mut peer = relay.raw_peer().await;
    let forever = relay
        .tokens
        .sign(&Claims {
            sub: "alice".into(),
            exp: u64::MAX,
            iat: 0,
            nbf: None,
            rooms: None,
            publish: true,
        })
        .unwrap();
    assert!(matches!(
        peer.request(login("lobby", "alice", "A", forever)).await,
        Outcome::LoggedIn { .. }
    ));
    assert!(matches!(peer.broadcast("lobby", b"still served").await, Outcome::Sent { .. }));
}
