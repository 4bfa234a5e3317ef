//! Webhooks seen by a receiver in the test: every room event arrives signed, in order, with
//! its reason; failed deliveries are retried, then given up; a receiver that hangs costs
//! dropped (and counted) events, never the relay's service.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use qrelay::http::webhooks::{EVENT_HEADER, RETRIES, SIGNATURE_HEADER, signature};
use qrelay::protocol::{LaneEvent, Outcome, Request};
use qrelay::server::ServerConfig;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// 200 to every delivery.
    Ok,
    /// 500 to the first N deliveries, then 200.
    FailFirst(usize),
    /// Never answers.
    Hang,
}

/// One delivery attempt as the receiver saw it, and the status it answered.
#[derive(Debug)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
    status: StatusCode,
}

impl Delivery {
    /// The body as JSON, after checking the headers: JSON, the event's name, and the
    /// signature of the exact body under the API key.
    #[track_caller]
    fn checked(&self) -> Value {
        let header = |name: &str| {
            self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header(SIGNATURE_HEADER), signature(API_KEY, &self.body), "{self:?}");
        let event: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(event["event"], header(EVENT_HEADER), "{event}");
        assert!(event["at_ms"].as_u64().is_some_and(|at| at > 0), "{event}");
        event
    }
}

struct Receiver {
    url: String,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

#[derive(Clone)]
struct ReceiverState {
    behaviour: Behaviour,
    attempts: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Delivery>,
}

/// A webhook receiver on 127.0.0.1:0 that records every attempt.
async fn receiver(behaviour: Behaviour) -> Receiver {
    let (tx, deliveries) = mpsc::unbounded_channel();
    let state = ReceiverState { behaviour, attempts: Arc::new(AtomicUsize::new(0)), tx };
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, deliveries }
}

async fn hook(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let attempt = state.attempts.fetch_add(1, Ordering::SeqCst);
    let status = match state.behaviour {
        Behaviour::Ok => StatusCode::OK,
        Behaviour::FailFirst(n) if attempt < n => StatusCode::INTERNAL_SERVER_ERROR,
        Behaviour::FailFirst(_) => StatusCode::OK,
        Behaviour::Hang => std::future::pending().await,
    };
    let _ = state.tx.send(Delivery { headers, body, status });
    status
}

impl Receiver {
    /// The next delivery attempt.
    async fn next(&mut self) -> Delivery {
        within(self.deliveries.recv()).await.expect("the receiver stopped")
    }

    /// The next `n` events that were answered with 200, checked.
    async fn delivered(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < n {
            let delivery = self.next().await;
            if delivery.status == StatusCode::OK {
                events.push(delivery.checked());
            }
        }
        events
    }
}

/// A config whose room events go to `url`; rooms close as soon as they empty.
fn webhook_config(url: &str) -> ServerConfig {
    ServerConfig { webhooks: vec![url.to_owned()], history_size: 0, ..test_config() }
}

#[tokio::test]
async fn a_login_and_logout_arrive_signed_and_in_order() {
    let mut receiver = receiver(Behaviour::Ok).await;
    let relay = TestRelay::start(webhook_config(&receiver.url)).await;
    let (mut alice, mut lane) = relay.raw_member("alice", "lobby").await;
    let outcome = alice.request(Request::Logout { room: "lobby".into() }).await;
    assert_eq!(outcome, Outcome::Done);
    assert!(matches!(next_event(&mut lane).await, LaneEvent::Closed { .. }));

    let events = receiver.delivered(4).await;
    let alice = json!({"id": "alice", "name": "alice name"});
    let without_time: Vec<Value> = events
        .iter()
        .map(|event| {
            let mut event = event.clone();
            event.as_object_mut().unwrap().remove("at_ms");
            event
        })
        .collect();
    assert_eq!(
        without_time,
        [
            json!({"event": "room_created", "room": "lobby"}),
            json!({"event": "user_joined", "room": "lobby", "user": alice}),
            json!({"event": "user_left", "room": "lobby", "user": alice, "reason": "logout"}),
            json!({"event": "room_closed", "room": "lobby"}),
        ]
    );
    let times: Vec<u64> = events.iter().map(|e| e["at_ms"].as_u64().unwrap()).collect();
    assert!(times.is_sorted(), "{times:?}");
    until(&relay, |stats| stats.webhooks_sent == 4).await;
    let stats = relay.handle.stats();
    assert_eq!((stats.webhooks_failed, stats.webhooks_dropped), (0, 0));
}

#[tokio::test]
async fn user_left_says_why() {
    let mut receiver = receiver(Behaviour::Ok).await;
    let config = ServerConfig {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..webhook_config(&receiver.url)
    };
    let relay = TestRelay::start(config).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}/v1/rooms/lobby", relay.handle.http_addr().unwrap());

    let (bob, _bob_lane) = relay.raw_member("bob", "lobby").await;
    let (_carol, _carol_lane) = relay.raw_member("carol", "lobby").await;
    let (_dave, _dave_lane) = relay.raw_member("dave", "lobby").await;
    let (_erin, _erin_lane) = relay.raw_member("erin", "lobby").await;
    // carol logs in again from another connection: her first session is replaced.
    let (_carol_again, _carol_again_lane) = relay.raw_member("carol", "lobby").await;
    bob.conn.close(0u32.into(), b"bye");
    let kick = api
        .post(format!("{base}/kick"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(r#"{"user": "dave"}"#);
    assert_eq!(within(kick.send()).await.unwrap().status(), 200);
    // bob's departure is noticed by his connection task: wait for it before closing the room.
    let events = receiver.delivered(9).await;
    let close = api.delete(&base).bearer_auth(API_KEY);
    assert_eq!(within(close.send()).await.unwrap().status(), 200);
    let events = [events, receiver.delivered(3).await].concat();

    let left: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "user_left")
        .map(|e| (e["user"]["id"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    let mut first = left[..3].to_vec();
    // The replacement, the disconnect and the kick race only between connections.
    first.sort();
    assert_eq!(first, [("bob", "disconnected"), ("carol", "replaced"), ("dave", "kicked")]);
    let mut last = left[3..].to_vec();
    last.sort();
    assert_eq!(last, [("carol", "room_closed"), ("erin", "room_closed")]);
    assert_eq!(events.last().unwrap()["event"], "room_closed");
    let joined = events.iter().filter(|e| e["event"] == "user_joined").count();
    assert_eq!(joined, 5);
}

#[tokio::test]
async fn failed_deliveries_are_retried_in_order() {
    let mut receiver = receiver(Behaviour::FailFirst(2)).await;
    let relay = TestRelay::start(webhook_config(&receiver.url)).await;
    let (_alice, _lane) = relay.raw_member("alice", "lobby").await;

    // The first event fails twice, then arrives; the second waits for it.
    let attempts: Vec<Delivery> = vec![receiver.next().await, receiver.next().await];
    let delivered = receiver.delivered(2).await;
    for attempt in &attempts {
        assert_eq!(attempt.status, StatusCode::INTERNAL_SERVER_ERROR);
        let retried = attempt.checked();
        assert_eq!(retried, delivered[0], "a retry sends the same body");
    }
    assert_eq!(delivered[0]["event"], "room_created");
    assert_eq!(delivered[1]["event"], "user_joined");
    until(&relay, |stats| stats.webhooks_sent == 2).await;
    assert_eq!(relay.handle.stats().webhooks_failed, 0);
}

#[tokio::test]
async fn a_delivery_is_given_up_after_its_retries() {
    let mut receiver = receiver(Behaviour::FailFirst(usize::MAX)).await;
    let relay = TestRelay::start(webhook_config(&receiver.url)).await;
    let (_alice, _lane) = relay.raw_member("alice", "lobby").await;
    for _ in 0..=RETRIES {
        let attempt = receiver.next().await;
        assert_eq!(attempt.checked()["event"], "room_created");
    }
    until(&relay, |stats| stats.webhooks_failed == 1).await;
    // The next event is tried after the first was given up.
    assert_eq!(receiver.next().await.checked()["event"], "user_joined");
    assert_eq!(relay.handle.stats().webhooks_sent, 0);
}

#[tokio::test]
async fn a_hanging_receiver_costs_dropped_events_not_service() {
    let receiver = receiver(Behaviour::Hang).await;
    let config = ServerConfig { webhook_queue: 1, ..webhook_config(&receiver.url) };
    let relay = TestRelay::start(config).await;
    // Each first login to a room is two events (room_created, user_joined).
    let mut members = Vec::new();
    for room in ["r1", "r2", "r3"] {
        members.push(relay.raw_member("alice", room).await);
    }
    let (mut bob, _bob_lane) = relay.raw_member("bob", "r1").await;
    let events = 7;
    // One event is in delivery (hanging) and one fits the queue: the rest were dropped.
    until(&relay, |stats| stats.webhooks_dropped >= events - 2).await;
    let outcome = bob.broadcast("r1", b"still served").await;
    assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    let alice_lane = &mut members[0].1;
    let got = next_broadcasts(alice_lane).await;
    assert_eq!(&got[0].payload[..], b"still served");
    let stats = relay.handle.stats();
    assert_eq!((stats.webhooks_sent, stats.webhooks_failed), (0, 0));
    // Nobody was refused for it.
    assert_eq!(stats.requests_refused, 0);
}
