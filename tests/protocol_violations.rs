//! A raw peer that breaks the protocol gets the documented outcome, and an honest member in the
//! same room keeps being served.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use qrelay::protocol::{
    ClientDatagram, ControlFrame, ErrorCode, MAX_REQUEST_FRAME, Outcome, Request, RequestFrame,
    close, encode_body, encode_frame,
};

#[tokio::test]
async fn garbage_on_the_control_stream_closes_only_that_connection() {
    let relay = TestRelay::start(test_config()).await;
    let (mut bad, _lane) = relay.raw_member("mallory", "lobby").await;
    bad.write_raw(&[0, 0, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF]).await;
    assert_eq!(close_code(&bad.conn).await, u64::from(close::PROTOCOL_VIOLATION));
    assert_room_still_served(&relay, "lobby").await;
    assert_eq!(relay.handle.stats().protocol_violations, 1);
}

#[tokio::test]
async fn requests_before_a_bad_frame_are_carried_out_and_answered() {
    let relay = TestRelay::start(test_config()).await;
    let (mut bad, _bad_lane) = relay.raw_member("mallory", "lobby").await;
    let (_bob, mut bob_lane) = relay.raw_member("bob", "lobby").await;
    // A broadcast and garbage in one write: the broadcast is sent and answered, then the
    // connection is closed for the garbage.
    let mut burst = BytesMut::new();
    let body = Request::Broadcast { room: "lobby".into(), payload: Bytes::from_static(b"last") };
    encode_frame(&RequestFrame { request: 77, body }, &mut burst).unwrap();
    burst.extend_from_slice(&[0, 0, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
    bad.write_raw(&burst).await;
    match within(bad.control.next::<ControlFrame>()).await {
        Ok(Some(ControlFrame::Reply(reply))) => {
            assert_eq!(reply.request, 77);
            assert!(matches!(reply.outcome, Outcome::Sent { .. }), "{:?}", reply.outcome);
        }
        other => panic!("expected the broadcast's reply, got {other:?}"),
    }
    assert_eq!(close_code(&bad.conn).await, u64::from(close::PROTOCOL_VIOLATION));
    let got = next_broadcasts(&mut bob_lane).await;
    assert_eq!(got[0].payload, "last");
}

#[tokio::test]
async fn a_4_gib_frame_length_is_refused_before_reading_the_body() {
    let relay = TestRelay::start(test_config()).await;
    let mut bad = relay.raw_peer().await;
    bad.write_raw(&u32::MAX.to_be_bytes()).await;
    assert_eq!(close_code(&bad.conn).await, u64::from(close::FRAME_TOO_LARGE));
    // One byte over the request bound is refused the same way.
    let mut bad = relay.raw_peer().await;
    bad.write_raw(&(MAX_REQUEST_FRAME as u32 + 1).to_be_bytes()).await;
    assert_eq!(close_code(&bad.conn).await, u64::from(close::FRAME_TOO_LARGE));
    assert_room_still_served(&relay, "lobby").await;
}

#[tokio::test]
async fn trailing_bytes_after_a_request_are_a_violation() {
    let relay = TestRelay::start(test_config()).await;
    let mut bad = relay.raw_peer().await;
    let body = encode_body(&qrelay::protocol::RequestFrame {
        request: 1,
        body: Request::Logout { room: "lobby".into() },
    })
    .unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(body.len() as u32 + 1);
    frame.extend_from_slice(&body);
    frame.put_u8(0);
    bad.write_raw(&frame).await;
    assert_eq!(close_code(&bad.conn).await, u64::from(close::PROTOCOL_VIOLATION));
}

#[tokio::test]
async fn garbage_datagrams_are_dropped_and_counted() {
    let relay = TestRelay::start(test_config()).await;
    let (mut peer, _lane) = relay.raw_member("mallory", "lobby").await;
    for garbage in [&b"\xff\xff\xff"[..], b"", b"\x00\x01"] {
        peer.conn.send_datagram(Bytes::copy_from_slice(garbage)).unwrap();
    }
    // A barrage for a room number the peer is not in gets a NOT_LOGGED_IN reply.
    let stray = ClientDatagram::Barrage {
        room_number: 999,
        request: 77,
        payload: Bytes::from_static(b"x"),
    };
    peer.conn.send_datagram(encode_body(&stray).unwrap()).unwrap();
    let outcome = loop {
        match within(peer.control.next::<qrelay::protocol::ControlFrame>()).await.unwrap() {
            Some(qrelay::protocol::ControlFrame::Reply(r)) if r.request == 77 => break r.outcome,
            Some(_) => continue,
            None => panic!("control stream ended"),
        }
    };
    assert!(
        matches!(outcome, Outcome::Refused { code: ErrorCode::NOT_LOGGED_IN, .. }),
        "{outcome:?}"
    );
    // The connection is still served.
    assert!(matches!(peer.broadcast("lobby", b"ok").await, Outcome::Sent { .. }));
    let stats = relay.handle.stats();
    assert_eq!(stats.datagrams_received, 4);
    assert_eq!(stats.datagrams_malformed, 3);
}

#[tokio::test]
async fn requests_before_login_are_refused_not_fatal() {
    let relay = TestRelay::start(test_config()).await;
    let mut peer = relay.raw_peer().await;
    let refused = |outcome: &Outcome| {
        matches!(outcome, Outcome::Refused { code: ErrorCode::NOT_LOGGED_IN, .. })
    };
    let outcome = peer.broadcast("lobby", b"hi").await;
    assert!(refused(&outcome), "{outcome:?}");
    let outcome = peer
        .request(Request::Command {
            room: "lobby".into(),
            to: vec![],
            payload: Bytes::from_static(b"c"),
        })
        .await;
    assert!(refused(&outcome), "{outcome:?}");
    let outcome = peer.request(Request::Logout { room: "lobby".into() }).await;
    assert!(refused(&outcome), "{outcome:?}");
    assert!(matches!(peer.login(&relay, "alice", "lobby").await, Outcome::LoggedIn { .. }));
}

#[tokio::test]
async fn wrong_alpn_fails_the_handshake() {
    let relay = TestRelay::start(test_config()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(relay.ca.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let result = within(endpoint.connect(relay.addr, "localhost").unwrap()).await;
    assert!(result.is_err(), "a connection with ALPN h3 was accepted");
    assert_room_still_served(&relay, "lobby").await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_with_no_control_stream() {
    let mut config = test_config();
    config.control_stream_timeout_ms = 200;
    let relay = TestRelay::start(config).await;
    let conn = relay.connect_raw().await;
    assert_eq!(close_code(&conn).await, u64::from(close::NO_CONTROL_STREAM));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(relay.handle.stats().connections_open, 0);
}
