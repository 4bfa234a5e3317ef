//! A relay with several endpoints on one address (`endpoints`, SO_REUSEPORT): members whose
//! connections the kernel spread over the endpoints share rooms as on one, and shutdown closes
//! them all.

mod common;

use bytes::Bytes;
use common::*;
use qrelay::protocol::{Outcome, Request, close};
use qrelay::server::ServerConfig;

/// Members, each from a client endpoint (a port) of its own: Linux hashes each to one of the
/// relay's two sockets, so both get some but with probability 2⁻¹⁵.
const MEMBERS: usize = 16;

#[tokio::test]
async fn members_spread_over_two_endpoints_hear_each_other_and_shutdown_closes_both() {
    let relay = TestRelay::start(ServerConfig { endpoints: 2, ..test_config() }).await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(relay.raw_member(&format!("user{i}"), "hall").await);
    }
    for (i, (peer, _)) in members.iter_mut().enumerate() {
        let payload = Bytes::from(format!("user{i}"));
        let outcome = peer.request(Request::Broadcast { room: "hall".into(), payload }).await;
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
    for (i, (_, lane)) in members.iter_mut().enumerate() {
        let mut senders = Vec::new();
        while senders.len() < MEMBERS - 1 {
            for message in next_broadcasts(lane).await {
                assert_eq!(message.payload, Bytes::from(message.from.id.clone()));
                senders.push(message.from.id);
            }
        }
        senders.sort();
        let mut others: Vec<String> =
            (0..MEMBERS).filter(|&j| j != i).map(|j| format!("user{j}")).collect();
        others.sort();
        assert_eq!(senders, others, "user{i} hears every other member once");
    }

    within(relay.handle.shutdown()).await;
    for (peer, _) in &members {
        assert_eq!(close_code(&peer.conn).await, u64::from(close::SHUTDOWN));
    }
    // `run` returns once the second endpoint's thread has ended too.
    within(relay.running).await.unwrap();
}
