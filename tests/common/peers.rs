//! Clients of a cluster's room and its server API, as the cluster tests use them
//! (tests/cluster.rs, tests/cluster_api.rs, tests/cluster_recovery.rs): what each client received, waits bounded
//! by [`STEP`] or a given limit, and the server API of one node.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use qrelay::client::{Client, ClientError, ConnectionState, Event, Events, ReceivedBarrage};
use qrelay::protocol::{BroadcastMessage, CommandMessage, ErrorCode, MEMBERS_FROM_START};
use serde_json::Value;

use super::cluster::{API_KEY, Cluster, Limits};
use super::{STEP, within};

pub const ROOM: &str = "lobby";
/// The node timeout of the tests that lose a node (`[cluster] node_timeout_ms`).
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// The bound for noticing a lost node (node timeout plus a check period, on a loaded machine).
pub const NODE_LOSS_NOTICED: Duration = Duration::from_secs(15);
/// How long service may take to come back after NATS is reachable again.
pub const NATS_BACK: Duration = Duration::from_secs(20);

/// The configuration of the tests that lose a node: a short node timeout.
pub fn short_node_timeout() -> Limits {
    Limits::UnlimitedWith(format!("[cluster]\nnode_timeout_ms = {NODE_TIMEOUT_MS}\n"))
}

pub fn is_cluster_unavailable(code: ErrorCode) -> bool {
    code == ErrorCode::CLUSTER_UNAVAILABLE && code.0 == 3011
}

/// The fields of a `Recovered` event: complete, missed, replayed.
pub type Recovery = (bool, Option<(u64, u64)>, u64);

/// Everything one client has received in [`ROOM`], in arrival order.
#[derive(Debug, Default)]
pub struct Seen {
    /// The room's other members, as the user updates tell.
    pub members: BTreeSet<String>,
    /// Every user ID a `UsersJoined` named.
    pub joined: Vec<String>,
    /// Every user ID a `UsersLeft` named.
    pub left: Vec<String>,
    pub broadcasts: Vec<BroadcastMessage>,
    pub commands: Vec<CommandMessage>,
    pub barrages: Vec<ReceivedBarrage>,
    /// Room closures (lane closed by the relay): code and detail.
    pub closed: Vec<(ErrorCode, String)>,
    pub states: Vec<ConnectionState>,
    pub recovered: Vec<Recovery>,
}

impl Seen {
    pub fn add(&mut self, event: Event) {
        match event {
            Event::UsersJoined { room, users } => {
                assert_eq!(room, ROOM);
                for user in users {
                    self.joined.push(user.id.clone());
                    self.members.insert(user.id);
                }
            }
            Event::UsersLeft { room, users } => {
                assert_eq!(room, ROOM);
                for user in users {
                    self.members.remove(&user.id);
                    self.left.push(user.id);
                }
            }
            Event::Broadcasts { room, messages } => {
                assert_eq!(room, ROOM);
                self.broadcasts.extend(messages);
            }
            Event::Command { room, message } => {
                assert_eq!(room, ROOM);
                self.commands.push(message);
            }
            Event::RoomClosed { room, code, detail } => {
                assert_eq!(room, ROOM);
                self.closed.push((code, detail));
            }
            Event::ConnectionState(state) => self.states.push(state),
            Event::Recovered { room, complete, missed, replayed } => {
                assert_eq!(room, ROOM);
                self.recovered.push((complete, missed, replayed));
            }
            Event::Barrages { room, messages } => {
                assert_eq!(room, ROOM);
                self.barrages.extend(messages);
            }
            Event::TokenWillExpire { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }

    pub fn broadcast_ids(&self) -> Vec<u64> {
        self.broadcasts.iter().map(|m| m.id).collect()
    }

    /// The broadcasts received as (ID, sender, payload), in arrival order.
    pub fn broadcast_list(&self) -> Vec<(u64, String, String)> {
        self.broadcasts.iter().map(|m| (m.id, m.from.id.clone(), text(&m.payload))).collect()
    }

    pub fn has_broadcast(&self, id: u64) -> bool {
        self.broadcasts.iter().any(|m| m.id == id)
    }
}

pub fn text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

pub fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| u.to_string()).collect()
}

/// A client in [`ROOM`] and what it has received.
pub struct Peer {
    pub name: String,
    pub client: Client,
    pub events: Events,
    pub seen: Seen,
}

impl Peer {
    /// `user` on node `k` alone.
    pub async fn join(cluster: &Cluster, k: usize, user: &str) -> Peer {
        let (client, events) = cluster.client(k, user, &[ROOM]).await;
        Peer { name: user.into(), client, events, seen: Seen::default() }
    }

    /// Each `(node, user)` logged in to the room, one after the other, once every one of them
    /// lists all the others as members.
    pub async fn join_all(cluster: &Cluster, users: &[(usize, &str)]) -> Vec<Peer> {
        let mut peers = Vec::new();
        for &(k, user) in users {
            peers.push(Peer::join(cluster, k, user).await);
        }
        all_see_each_other(&mut peers).await;
        peers
    }

    /// `user` with the client configuration `config`.
    pub async fn join_with(cluster: &Cluster, config: qrelay::client::ClientConfig) -> Peer {
        let name = config.user.id.clone();
        let (client, events) = cluster.connect(config, &[ROOM]).await;
        Peer { name, client, events, seen: Seen::default() }
    }

    /// Takes events until `done` holds for what was received, failing after `limit`.
    pub async fn until_within(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) {
        let Peer { name, events, seen, .. } = self;
        let waited = tokio::time::timeout(limit, async {
            while !done(seen) {
                match events.next().await {
                    Some(event) => seen.add(event),
                    None => panic!("{name}: the client ended while waiting for {what}"),
                }
            }
        })
        .await;
        if waited.is_err() {
            panic!("{name}: no {what} within {limit:?}; received so far: {seen:#?}");
        }
    }

    pub async fn until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
        self.until_within(STEP, what, done).await;
    }

    /// Takes the events already queued, without waiting.
    pub fn drain(&mut self) {
        while let Some(event) = self.events.try_next() {
            self.seen.add(event);
        }
    }

    pub async fn broadcast(&self, payload: &str) -> Result<u64, ClientError> {
        within(self.client.send_broadcast_message(ROOM, payload.to_owned())).await
    }

    pub async fn command(&self, payload: &str, to: &[&str]) -> Result<u64, ClientError> {
        within(self.client.send_custom_command(ROOM, payload.to_owned(), to)).await
    }

    /// Sends a broadcast again every 200 ms while its node refuses it with
    /// `CLUSTER_UNAVAILABLE` (NATS away), for at most [`NATS_BACK`] after `after`. Returns its
    /// ID, and whether a try timed out (that one may have been stored too).
    pub async fn broadcast_when_back(&self, payload: &str, after: &str) -> (u64, bool) {
        let mut timed_out = false;
        let accepted = tokio::time::timeout(NATS_BACK, async {
            loop {
                match self.broadcast(payload).await {
                    Ok(id) => return id,
                    Err(ClientError::Refused { code, .. }) if is_cluster_unavailable(code) => {}
                    Err(ClientError::Timeout) => timed_out = true,
                    Err(other) => panic!("the broadcast failed otherwise: {other}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let id = accepted
            .unwrap_or_else(|_| panic!("no broadcast accepted within {NATS_BACK:?} of {after}"));
        (id, timed_out)
    }

    /// The user IDs of the room's member list as this client's node gives it (all pages).
    pub async fn fetch_member_ids(&self) -> (u32, BTreeSet<String>) {
        let mut ids = BTreeSet::new();
        let mut cursor = MEMBERS_FROM_START;
        loop {
            let page = within(self.client.fetch_members(ROOM, cursor, 0)).await.expect("members");
            ids.extend(page.members.into_iter().map(|m| m.user.id));
            if page.next == MEMBERS_FROM_START {
                return (page.count, ids);
            }
            cursor = page.next;
        }
    }
}

/// Waits until every peer lists every other peer as a member.
pub async fn all_see_each_other(peers: &mut [Peer]) {
    let names: BTreeSet<String> = peers.iter().map(|p| p.name.clone()).collect();
    for peer in peers.iter_mut() {
        let mut others = names.clone();
        others.remove(&peer.name);
        peer.until("the other members", |seen| seen.members == others).await;
    }
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// The server API of one node.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(http: SocketAddr) -> Api {
        // reqwest is built without a default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
        Api { client, base: format!("http://{http}") }
    }

    /// The API of node `k` of `cluster`.
    pub fn of(cluster: &Cluster, k: usize) -> Api {
        Api::new(cluster.http(k))
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let response = within(request.send())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: the request failed: {e}"));
        let status = response.status().as_u16();
        let bytes = within(response.bytes()).await.expect("the answer's body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(text(&bytes)));
        Answer { status, body }
    }

    /// A successful send's `message_id`.
    pub async fn sent(&self, route: &str, body: Value) -> u64 {
        let path = format!("/v1/rooms/{ROOM}/{route}");
        let answer = self.send(reqwest::Method::POST, &path, Some(body)).await;
        assert_eq!(answer.status, 200, "POST {path}: {answer:?}");
        answer.body["message_id"].as_u64().unwrap_or_else(|| panic!("no message_id: {answer:?}"))
    }

    pub async fn broadcast(&self, body: Value) -> u64 {
        self.sent("broadcast", body).await
    }

    pub async fn command(&self, body: Value) -> u64 {
        self.sent("command", body).await
    }

    /// The room's member IDs as this node lists them, in the answer's order.
    pub async fn members(&self) -> Vec<String> {
        let path = format!("/v1/rooms/{ROOM}/members");
        let answer = self.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        let list = answer.body.as_array().unwrap_or_else(|| panic!("not a list: {answer:?}"));
        list.iter().map(|m| m["id"].as_str().expect("a member's id").to_owned()).collect()
    }

    /// Waits (one test step) until this node lists exactly `ids` (sorted) as the members.
    pub async fn until_members(&self, ids: &[&str], what: &str) {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let mut last = Vec::new();
        let reached = tokio::time::timeout(STEP, async {
            loop {
                last = self.members().await;
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "{}: {what}: members {last:?}, expected {want:?}", self.base);
    }
}
