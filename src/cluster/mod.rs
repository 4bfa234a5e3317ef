//! The cluster link: relays that share NATS (with JetStream) share their rooms.
//! docs/CLUSTER.md is the design; in short:
//!
//! - One JetStream stream holds every room's log (`<prefix>.room.<room>`: broadcasts, commands,
//!   opens and closes, with their IDs) and every member record (`<prefix>.member.<room>.<user>`:
//!   present on which node, or absent). A send is one publish per room, never one per
//!   receiver; a node writes a room's next entry only if the room's last entry is the one it
//!   knows, so the stream's order is the room's order and IDs stay gap-free.
//! - Every node reads the whole stream in order with one ordered consumer and applies it to
//!   its rooms with the room core's own operations ([`crate::server`]'s `Room`): members of
//!   other nodes are listed and counted, and each node delivers to its own members.
//! - Barrage crosses on NATS core (`<prefix>.barrage.<room>`): best effort, never stored.
//! - Liveness: each node says it is alive on `<prefix>.alive` every third of
//!   `node_timeout_ms`; the members of a node not heard from for `node_timeout_ms` are
//!   recorded absent by the live node with the smallest incarnation.
//!
//! Without NATS, or before this node has caught up with the stream, anything that needs the
//! cluster is refused with `CLUSTER_UNAVAILABLE`; connections stay, and service resumes by
//! itself when NATS is back.

pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::protocol::{ErrorCode, User, decode_body, encode_body};
use crate::server::Shared;
use crate::server::config::{ClusterConfig, ClusterStorage};
use crate::server::now_ms;
use crate::server::room::{room_unavailable, valid_entry, valid_record};
use crate::server::stats::Counters;
use wire::{AbsentReason, Alive, LinkedBarrage, LogBody, LogEntry, MemberRecord, Subjects};

/// A refusal: code and detail.
type Refusal = (ErrorCode, String);

/// Barrage waiting to be handed to NATS before more is dropped (and counted).
const BARRAGE_QUEUE: usize = 4096;

/// How long to wait before trying NATS again after a failed setup step.
const RETRY: Duration = Duration::from_millis(500);

/// Why the stream's reader starts again after NATS came back (not a fault).
const RECONNECTED: &str = "NATS connected again";

/// Entries each room log keeps beyond `history_size` (opens, closes, commands).
const LOG_SLACK: usize = 64;

/// Why a room-log publish did not go through.
#[derive(Debug)]
pub enum PublishError {
    /// Another entry is the room's last now.
    WrongLastSequence,
    /// NATS is unreachable, or did not confirm in time.
    Unavailable(String),
}

/// This node's side of the cluster.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    subjects: Subjects,
    /// This process's incarnation: a random number the other nodes know it by.
    incarnation: u64,
    link: OnceLock<Link>,
    /// Connected and caught up with the stream.
    ready: AtomicBool,
    members: mpsc::UnboundedSender<MemberOp>,
    barrage: mpsc::Sender<(String, Bytes)>,
    /// What [`run`] takes over.
    queues: Mutex<Option<Queues>>,
    publish_timeout: Duration,
    /// The relay's `history_size`: how many entries each room log keeps (plus some).
    history_size: usize,
    /// This node judges lost nodes now (and so writes quiet rooms' logs again).
    judge: AtomicBool,
    /// Told each time NATS (re)connects: a restarted NATS server has forgotten this node's
    /// consumer, which is then made anew at once instead of after missed heartbeats.
    connects: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
struct Queues {
    members: mpsc::UnboundedReceiver<MemberOp>,
    barrage: mpsc::Receiver<(String, Bytes)>,
}

#[derive(Debug, Clone)]
struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// A member record for this node's member-record publisher.
#[derive(Debug)]
enum MemberOp {
    /// A member of this node joined (or logged in again). `expected`: the record it must
    /// follow (a member said present again after its node was counted lost), else none.
    Present { room: String, epoch: u64, user: User, session: u32, expected: Option<u64> },
    /// A membership ended. `expected`: the sequence of the record it ends (`None`: this
    /// node's own record, which the publisher knows).
    Absent {
        room: String,
        user_id: String,
        node: u64,
        session: u32,
        reason: AbsentReason,
        detail: String,
        expected: Option<u64>,
    },
}

impl Cluster {
    /// The cluster link of a relay that keeps `history_size` broadcasts per room, not yet
    /// connected ([`run`] connects it).
    pub fn new(config: ClusterConfig, history_size: usize) -> Arc<Cluster> {
        let (members, members_rx) = mpsc::unbounded_channel();
        let (barrage, barrage_rx) = mpsc::channel(BARRAGE_QUEUE);
        Arc::new(Cluster {
            subjects: Subjects::new(&config.prefix),
            incarnation: rand::random::<u64>().max(1),
            link: OnceLock::new(),
            ready: AtomicBool::new(false),
            members,
            barrage,
            queues: Mutex::new(Some(Queues { members: members_rx, barrage: barrage_rx })),
            publish_timeout: Duration::from_millis(config.publish_timeout_ms),
            history_size,
            connects: Arc::new(tokio::sync::Notify::new()),
            judge: AtomicBool::new(false),
            config,
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether NATS is connected and this node has caught up with the stream: sends and
    /// logins go through only then.
    pub fn available(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.connected()
    }

    fn connected(&self) -> bool {
        self.link.get().is_some_and(|link| {
            link.client.connection_state() == async_nats::connection::State::Connected
        })
    }

    /// `CLUSTER_UNAVAILABLE` unless [`Cluster::available`].
    pub fn check(&self) -> Result<(), Refusal> {
        if self.available() {
            return Ok(());
        }
        let detail = if !self.connected() {
            "this relay is not connected to NATS"
        } else {
            "this relay is still reading the cluster's state"
        };
        Err((ErrorCode::CLUSTER_UNAVAILABLE, format!("the cluster cannot take it now: {detail}")))
    }

    /// Records a member of this node (its room's epoch, its session).
    pub fn member_present(&self, room: &str, epoch: u64, user: &User, session: u32) {
        let (room, user) = (room.to_owned(), user.clone());
        let _ = self.members.send(MemberOp::Present { room, epoch, user, session, expected: None });
    }

    /// Records again a member of this node that the others counted gone with its node (the
    /// record at `absent`), unless a newer record holds.
    pub fn member_present_again(
        &self,
        room: &str,
        epoch: u64,
        user: &User,
        session: u32,
        absent: u64,
    ) {
        let (room, user) = (room.to_owned(), user.clone());
        let expected = Some(absent);
        let _ = self.members.send(MemberOp::Present { room, epoch, user, session, expected });
    }

    /// Records that a member of this node left.
    pub fn member_absent(&self, room: &str, user_id: &str, session: u32) {
        let _ = self.members.send(MemberOp::Absent {
            room: room.to_owned(),
            user_id: user_id.to_owned(),
            node: self.incarnation,
            session,
            reason: AbsentReason::Left,
            detail: String::new(),
            expected: None,
        });
    }

    /// Records that a member of another node was kicked (its node closes its lane) or that its
    /// node was lost; `seq` is the sequence of the record that made it a member.
    pub fn member_removed(
        &self,
        room: &str,
        user_id: &str,
        (node, session, seq): (u64, u32, u64),
        reason: AbsentReason,
        detail: &str,
    ) {
        let _ = self.members.send(MemberOp::Absent {
            room: room.to_owned(),
            user_id: user_id.to_owned(),
            node,
            session,
            reason,
            detail: detail.to_owned(),
            expected: Some(seq),
        });
    }

    /// Hands a barrage message to the other nodes (best effort: dropped and counted when
    /// NATS is not connected or the queue is full).
    pub fn barrage(
        &self,
        room: &str,
        session: u32,
        user_id: &str,
        sent_at_ms: u64,
        payload: Bytes,
    ) -> bool {
        if !self.connected() {
            return false;
        }
        let message = LinkedBarrage {
            node: self.incarnation,
            session,
            user_id: user_id.to_owned(),
            sent_at_ms,
            payload,
        };
        let Ok(encoded) = encode_body(&message) else { return false };
        self.barrage.try_send((self.subjects.barrage(room), encoded)).is_ok()
    }

    /// Appends `entry` to the log of `room` if the log's last entry is at stream sequence
    /// `expected` (0: the log is empty); returns the entry's sequence.
    pub async fn publish_log(
        &self,
        room: &str,
        entry: &LogEntry,
        expected: u64,
    ) -> Result<u64, PublishError> {
        let link = self.link.get().filter(|_| self.connected()).ok_or_else(|| {
            PublishError::Unavailable("this relay is not connected to NATS".into())
        })?;
        let payload = encode_body(entry).map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let seq = self.publish(link, self.subjects.room(room), payload, Some(expected)).await?;
        Ok(seq)
    }

    /// Publishes `payload` on `subject` of the stream, expecting the subject's last message at
    /// `expected` if given; returns its sequence.
    async fn publish(
        &self,
        link: &Link,
        subject: String,
        payload: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(expected) = expected {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
        }
        let published = async {
            let ack = link.js.publish_with_headers(subject, headers, payload).await?;
            ack.await
        };
        match tokio::time::timeout(self.publish_timeout, published).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(PublishError::WrongLastSequence)
            }
            Ok(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
            Err(_) => Err(PublishError::Unavailable(format!(
                "NATS did not confirm within {} ms",
                self.publish_timeout.as_millis()
            ))),
        }
    }

    /// The sequence of the last message on `subject` of the stream, if it has one.
    async fn last_seq(&self, link: &Link, subject: &str) -> Result<Option<u64>, String> {
        let asked = async {
            let stream =
                link.js.get_stream(self.subjects.stream()).await.map_err(|e| e.to_string())?;
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(message) => Ok(Some(message.sequence)),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(self.publish_timeout, asked)
            .await
            .map_err(|_| "NATS did not answer in time".to_string())?
    }

    /// The last entry of the log of `room` and its sequence, if the log has one.
    pub async fn last_log(&self, room: &str) -> Result<Option<(u64, LogEntry)>, Refusal> {
        let unavailable = |detail: String| {
            (ErrorCode::CLUSTER_UNAVAILABLE, format!("the cluster cannot take it now: {detail}"))
        };
        let link = self.link.get().ok_or_else(|| unavailable("not connected to NATS".into()))?;
        let stream = link.js.get_stream(self.subjects.stream());
        let got = async {
            let stream = stream.await.map_err(|e| e.to_string())?;
            match stream.get_last_raw_message_by_subject(&self.subjects.room(room)).await {
                Ok(message) => Ok(Some(message)),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        let message = match tokio::time::timeout(self.publish_timeout, got).await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable("NATS did not answer in time".into())),
        };
        let Some(message) = message else { return Ok(None) };
        let entry = decode_body::<LogEntry>(&message.payload)
            .map_err(|e| unavailable(format!("the room's last log entry does not decode: {e}")))?;
        Ok(Some((message.sequence, entry)))
    }

    /// The epoch of `room` in the cluster, opening its log if it has none (the first login
    /// anywhere).
    pub async fn open_room(&self, room: &str) -> Result<u64, Refusal> {
        self.check()?;
        for _ in 0..4 {
            if let Some((_, last)) = self.last_log(room).await? {
                return Ok(last.epoch);
            }
            let epoch: u64 = rand::random();
            match self.publish_log(room, &LogEntry::opened(epoch), 0).await {
                Ok(_) => return Ok(epoch),
                Err(PublishError::WrongLastSequence) => continue,
                Err(PublishError::Unavailable(detail)) => {
                    return Err(room_unavailable(&detail));
                }
            }
        }
        Err(room_unavailable("the room's log kept changing"))
    }

    /// Closes `room` in the whole cluster (the server API): every node's members leave with
    /// `ROOM_CLOSED`, and a new incarnation starts.
    pub async fn close_room(&self, room: &str, reason: &str) -> Result<(), Refusal> {
        self.check()?;
        let mut entry = LogEntry::opened(rand::random());
        entry.body = LogBody::Closed { reason: reason.to_owned() };
        let link = self.link.get().ok_or_else(|| room_unavailable("no NATS"))?;
        let payload = encode_body(&entry).map_err(|e| (ErrorCode::INTERNAL, e.to_string()))?;
        self.publish(link, self.subjects.room(room), payload, None)
            .await
            .map(|_| ())
            .map_err(|e| room_unavailable(&format!("{e:?}")))
    }
}

/// Connects to NATS and keeps this node in the cluster until `shutdown`: reads the stream,
/// publishes member records and barrage, says it is alive and notices lost nodes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(queues) = cluster.queues.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let link = tokio::select! {
        link = connect(&cluster) => link,
        _ = shutdown.changed() => return,
    };
    let _ = cluster.link.set(link.clone());
    let nodes = Arc::new(Mutex::new(Nodes::default()));
    let tasks = [
        tokio::spawn(read_stream(shared.clone(), cluster.clone(), link.clone())),
        tokio::spawn(publish_members(
            shared.clone(),
            cluster.clone(),
            link.clone(),
            queues.members,
        )),
        tokio::spawn(send_barrage(cluster.clone(), link.clone(), queues.barrage)),
        tokio::spawn(receive_barrage(shared.clone(), cluster.clone(), link.clone())),
        tokio::spawn(hear_alive(cluster.clone(), link.clone(), nodes.clone())),
        tokio::spawn(find_lost(shared.clone(), cluster.clone(), nodes)),
        tokio::spawn(renew_logs(shared.clone(), cluster.clone())),
    ];
    let alive = tokio::spawn(say_alive(cluster.clone(), link.clone()));
    let _ = shutdown.changed().await;
    // No liveness message may follow the one that says this node leaves.
    alive.abort();
    // Members' `Absent` records were queued by the shutdown's leaves: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    say(&cluster, &link, true).await;
    for task in tasks {
        task.abort();
    }
    let _ = link.client.flush().await;
}

/// Connects to NATS (trying again until it answers) and makes sure the stream exists.
async fn connect(cluster: &Cluster) -> Link {
    let config = &cluster.config;
    loop {
        match try_connect(cluster).await {
            Ok(link) => {
                info!(node = %config.node, nats = %config.nats, "connected to the cluster's NATS");
                return link;
            }
            Err(e) => {
                warn!(nats = %config.nats, error = %e, "cannot set up the cluster link: trying again");
                tokio::time::sleep(RETRY * 4).await;
            }
        }
    }
}

async fn try_connect(cluster: &Cluster) -> Result<Link, String> {
    let config = &cluster.config;
    let addrs = config
        .nats
        .split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cluster.nats: {e}"))?;
    let node = config.node.clone();
    let connects = cluster.connects.clone();
    let urls = config.nats.clone();
    let failing = Arc::new(AtomicBool::new(false));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("qrelay {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .require_tls(config.require_tls)
        .event_callback(move |event| {
            let (node, connects, urls) = (node.clone(), connects.clone(), urls.clone());
            let failing = failing.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!(%node, "NATS connected");
                        failing.store(false, Ordering::Relaxed);
                        connects.notify_one();
                    }
                    async_nats::Event::Disconnected => {
                        warn!(%node, "NATS disconnected: cluster sends are refused until it is back")
                    }
                    // The first failure to reach NATS is said with its address; the retries
                    // that follow (every few hundred ms) only at debug.
                    async_nats::Event::ClientError(e) if !failing.swap(true, Ordering::Relaxed) => {
                        warn!(%node, nats = %urls, error = %e, "cannot reach NATS: trying again (RUST_LOG=async_nats=debug says more)")
                    }
                    other => debug!(%node, event = %other, "NATS event"),
                }
            }
        });
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("cluster.credentials {}: {e}", path.display()))?;
    }
    if let Some(path) = &config.tls_ca {
        options = options.add_root_certificates(path.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = options.connect(addrs).await.map_err(|e| e.to_string())?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(cluster.publish_timeout);
    loop {
        match ensure_stream(cluster, &js).await {
            Ok(()) => break,
            Err(e) if client.connection_state() != async_nats::connection::State::Connected => {
                debug!(error = %e, "NATS not reached yet: the stream is made once it is");
                tokio::time::sleep(RETRY * 4).await;
            }
            Err(e) => {
                warn!(error = %e, "cannot create the cluster's JetStream stream (is JetStream on: nats-server -js?): trying again");
                tokio::time::sleep(RETRY * 4).await;
            }
        }
    }
    Ok(Link { client, js })
}

/// Creates the stream of room logs and member records, or checks the existing one.
async fn ensure_stream(cluster: &Cluster, js: &jetstream::Context) -> Result<(), String> {
    let subjects = &cluster.subjects;
    let config = stream::Config {
        name: subjects.stream(),
        subjects: vec![subjects.all_rooms(), subjects.all_members()],
        // A room's log holds its history (and a few opens, closes and commands); a member
        // record's subject needs only its newest.
        max_messages_per_subject: (cluster.history_size + LOG_SLACK) as i64,
        max_age: Duration::from_secs(cluster.config.log_max_age_secs),
        storage: match cluster.config.storage {
            ClusterStorage::File => stream::StorageType::File,
            ClusterStorage::Memory => stream::StorageType::Memory,
        },
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads the stream from its start with an ordered consumer, applying every entry and record;
/// marks the node ready once it has caught up. Starts again where it was if the consumer
/// fails.
async fn read_stream(shared: Arc<Shared>, cluster: Arc<Cluster>, link: Link) {
    let mut next = 1u64;
    // When the stream was made: another time means NATS made it anew.
    let mut created = None;
    // The first connection's notice: this reader starts after it.
    let _ = tokio::time::timeout(Duration::from_millis(10), cluster.connects.notified()).await;
    loop {
        match read_from(&shared, &cluster, &link, &mut next, &mut created).await {
            Ok(()) => return,
            Err(e) => {
                cluster.ready.store(false, Ordering::Relaxed);
                if cluster.connected() && e.starts_with(RECONNECTED) {
                    info!(
                        next,
                        "NATS is back: reading the cluster's stream on from where this node was"
                    );
                } else {
                    warn!(error = %e, next, "reading the cluster's stream stopped: starting again");
                }
                // Never in a tight loop (JetStream may still be starting after a restart).
                let pause = if cluster.connected() { RETRY / 5 } else { RETRY };
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn read_from(
    shared: &Arc<Shared>,
    cluster: &Arc<Cluster>,
    link: &Link,
    next: &mut u64,
    created: &mut Option<time::OffsetDateTime>,
) -> Result<(), String> {
    let name = cluster.subjects.stream();
    let stream = match link.js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(e) => {
            // NATS lost it (memory storage, a new server): make it again.
            debug!(error = %e, "the cluster's stream is missing: creating it");
            ensure_stream(cluster, &link.js).await?;
            link.js.get_stream(&name).await.map_err(|e| e.to_string())?
        }
    };
    let info = stream.cached_info();
    let last = info.state.last_sequence;
    let made_anew = created.is_some_and(|at| at != info.created) || *next > last + 1;
    *created = Some(info.created);
    if made_anew {
        // The stream holds none of what this node read: forget the sequences learnt from it,
        // read it from its start, and record this node's members in it again (the judge
        // writes the rooms' logs again soon).
        warn!(
            next,
            last, "the cluster's stream was made anew: reading it again, recording members again"
        );
        *next = 1;
        for room in shared.router.rooms() {
            room.stream_lost();
            for (user, session) in room.local_members() {
                cluster.member_present(&room.name, room.epoch, &user, session);
            }
        }
    }
    let deliver_policy = if *next <= 1 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence { start_sequence: *next }
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    let caught_up = consumer.cached_info().num_pending == 0;
    if caught_up {
        set_ready(cluster);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = cluster.connects.notified() => {
                return Err(RECONNECTED.into());
            }
        };
        let Some(message) = message else { break };
        let message = message.map_err(|e| e.to_string())?;
        let Ok(info) = message.info() else {
            Counters::bump(&shared.counters.cluster_malformed);
            continue;
        };
        let (seq, pending) = (info.stream_sequence, info.pending);
        *next = seq + 1;
        apply(shared, cluster, &message.subject, seq, &message.payload);
        if pending == 0 && !cluster.ready.load(Ordering::Relaxed) {
            set_ready(cluster);
        }
    }
    Err("the stream's consumer ended".into())
}

fn set_ready(cluster: &Cluster) {
    if !cluster.ready.swap(true, Ordering::Relaxed) {
        info!(node = %cluster.config.node, "caught up with the cluster: serving cluster rooms");
    }
}

/// Applies one message of the stream to the rooms.
fn apply(shared: &Arc<Shared>, cluster: &Cluster, subject: &str, seq: u64, payload: &[u8]) {
    let subjects = &cluster.subjects;
    Counters::bump(&shared.counters.cluster_applied);
    let malformed = || Counters::bump(&shared.counters.cluster_malformed);
    if let Some((room, user)) = subjects.member_of(subject).filter(|_| subject.contains(".member."))
    {
        let Ok(record) = decode_body::<MemberRecord>(payload) else { return malformed() };
        if !valid_record(&room, &user, &record) {
            return malformed();
        }
        match &record {
            MemberRecord::Present { epoch, .. } => {
                // Twice at most: the room may be swept between the lookup and the apply.
                for _ in 0..2 {
                    let held = match shared.router.room(&room) {
                        Some(held) if held.epoch != *epoch => return,
                        Some(held) => held,
                        None => {
                            match shared.router.room_for_log(shared, &room, *epoch, "", false) {
                                Some(held) => held,
                                // A record of an incarnation the server API closed since.
                                None => return,
                            }
                        }
                    };
                    if held.apply_member(shared, seq, &user, record.clone(), cluster.incarnation) {
                        return;
                    }
                }
            }
            MemberRecord::Absent { .. } => {
                if let Some(room) = shared.router.room(&room) {
                    room.apply_member(shared, seq, &user, record, cluster.incarnation);
                }
            }
        }
        return;
    }
    let Some(room) = subjects.room_of(subject) else { return malformed() };
    let Ok(entry) = decode_body::<LogEntry>(payload) else { return malformed() };
    if !valid_entry(&room, &entry) {
        return malformed();
    }
    if let LogBody::Closed { reason } = &entry.body {
        // Closed everywhere at once, as on a single relay; the next login (or entry) makes the
        // new incarnation here.
        shared.router.restarted_in_cluster(shared, &room, entry.epoch, reason);
        return;
    }
    let reason = "the room was started anew in the cluster";
    let starts = matches!(entry.body, LogBody::Opened);
    for _ in 0..2 {
        let held = match shared.router.room(&room) {
            // Only an entry that opens or closes the log starts a new incarnation: an entry
            // of another (an older one's, written after a close) is dropped.
            Some(held) if held.epoch != entry.epoch && !starts => return malformed(),
            Some(held) if held.epoch == entry.epoch => held,
            _ => match shared.router.room_for_log(shared, &room, entry.epoch, reason, starts) {
                Some(held) => held,
                None => return malformed(),
            },
        };
        // Twice at most: the room may be swept between the lookup and the apply.
        if held.apply_log(shared, seq, entry.clone()) {
            return;
        }
    }
}

/// Publishes this node's member records in the order they were made, each until NATS takes
/// it: a `Present` with no expectation (the newest login wins), an `Absent` expecting the
/// record it ends (so it never erases a newer login elsewhere).
async fn publish_members(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    link: Link,
    mut queue: mpsc::UnboundedReceiver<MemberOp>,
) {
    // This node's stored `Present` records, by (room, user).
    let mut own: HashMap<(String, String), Stored> = HashMap::new();
    // A record older than half the stream's `max_age` is written again, so that a member who
    // stays for days is still in the stream for nodes that start later. Looked at every
    // eighth of `max_age`, so a record is written again well before it expires (JetStream
    // would then refuse the renewal, which expects it).
    let max_age = Duration::from_secs(cluster.config.log_max_age_secs);
    let refresh_after = max_age / 2;
    let mut refresh =
        tokio::time::interval((max_age / 8).clamp(RETRY / 2, Duration::from_secs(3600)));
    refresh.tick().await;
    loop {
        let op = tokio::select! {
            op = queue.recv() => match op {
                Some(op) => op,
                None => return,
            },
            _ = refresh.tick() => {
                let old: Vec<(String, String)> = own
                    .iter()
                    .filter(|(_, stored)| stored.at.elapsed() >= refresh_after)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in old {
                    let Some(stored) = own.get(&key) else { continue };
                    // Expecting the record it renews: a newer login elsewhere stays.
                    let op = MemberOp::Present {
                        room: key.0.clone(),
                        epoch: stored.epoch,
                        user: stored.user.clone(),
                        session: stored.session,
                        expected: Some(stored.seq),
                    };
                    store_member(&shared, &cluster, &link, &mut own, op).await;
                }
                continue;
            }
        };
        store_member(&shared, &cluster, &link, &mut own, op).await;
    }
}

/// A `Present` record this node stored.
#[derive(Debug)]
struct Stored {
    session: u32,
    seq: u64,
    epoch: u64,
    user: User,
    at: Instant,
}

/// Stores one member record, trying again while NATS is away.
async fn store_member(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    link: &Link,
    own: &mut HashMap<(String, String), Stored>,
    op: MemberOp,
) {
    {
        let (subject, record, expected, key) = match op {
            MemberOp::Present { room, epoch, user, session, expected } => {
                let key = (room, user.id.clone());
                let record =
                    MemberRecord::Present { epoch, node: cluster.incarnation, session, user };
                (cluster.subjects.member(&key.0, &key.1), record, expected, key)
            }
            MemberOp::Absent { room, user_id, node, session, reason, detail, expected } => {
                let key = (room, user_id);
                let expected = match expected {
                    Some(seq) => seq,
                    None => match own.get(&key) {
                        Some(stored) if stored.session == session => {
                            let seq = stored.seq;
                            own.remove(&key);
                            seq
                        }
                        // Its `Present` was never stored (or a newer login here replaced
                        // it): there is nothing to end.
                        _ => return,
                    },
                };
                let record = MemberRecord::Absent { node, session, reason, detail };
                (cluster.subjects.member(&key.0, &key.1), record, Some(expected), key)
            }
        };
        let Ok(payload) = encode_body(&record) else { return };
        let mut expected = expected;
        loop {
            match cluster.publish(link, subject.clone(), payload.clone(), expected).await {
                Ok(seq) => {
                    Counters::bump(&shared.counters.cluster_member_records);
                    if let MemberRecord::Present { session, epoch, user, .. } = record {
                        if let Some(room) = shared.router.room(&key.0) {
                            room.record_stored(shared, &key.1, session, seq);
                        }
                        let at = Instant::now();
                        own.insert(key, Stored { session, seq, epoch, user, at });
                    }
                    break;
                }
                Err(PublishError::WrongLastSequence) => {
                    let MemberRecord::Present { session, .. } = record else { break };
                    // A renewal whose record expired meanwhile (NATS was away): the subject
                    // is empty, and the member is written again.
                    if expected != Some(0)
                        && let Ok(None) = cluster.last_seq(link, &subject).await
                    {
                        expected = Some(0);
                        continue;
                    }
                    // A newer record holds: this one has nothing left to say, and the
                    // member here gives way to it (unless a newer login here was stored since).
                    let newer_here = own.get(&key).is_some_and(|stored| {
                        stored.session != session || Some(stored.seq) > expected
                    });
                    if !newer_here {
                        own.remove(&key);
                        if let Some(room) = shared.router.room(&key.0) {
                            room.record_refused(shared, &key.1, session);
                        }
                    }
                    break;
                }
                Err(PublishError::Unavailable(e)) => {
                    debug!(error = %e, "member record not stored yet: trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// Hands this node's barrage to NATS core.
async fn send_barrage(
    cluster: Arc<Cluster>,
    link: Link,
    mut queue: mpsc::Receiver<(String, Bytes)>,
) {
    while let Some((subject, payload)) = queue.recv().await {
        if link.client.publish(subject, payload).await.is_err() {
            debug!(node = %cluster.config.node, "barrage not handed to NATS");
        }
    }
}

/// Delivers other nodes' barrage to the members here.
async fn receive_barrage(shared: Arc<Shared>, cluster: Arc<Cluster>, link: Link) {
    let mut subscription = loop {
        match link.client.subscribe(cluster.subjects.all_barrage()).await {
            Ok(subscription) => break subscription,
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    };
    while let Some(message) = subscription.next().await {
        let Ok(barrage) = decode_body::<LinkedBarrage>(&message.payload) else {
            Counters::bump(&shared.counters.cluster_malformed);
            continue;
        };
        if barrage.node == cluster.incarnation {
            continue;
        }
        if crate::protocol::check_payload(&barrage.payload).is_err() {
            Counters::bump(&shared.counters.cluster_malformed);
            continue;
        }
        let room = cluster.subjects.room_of(&message.subject).and_then(|r| shared.router.room(&r));
        match room {
            Some(room) => room.apply_barrage(
                &shared,
                barrage.node,
                barrage.session,
                barrage.sent_at_ms,
                barrage.payload,
            ),
            None => Counters::bump(&shared.counters.cluster_barrage_dropped),
        }
    }
}

/// Says this node is alive every third of `node_timeout_ms`.
async fn say_alive(cluster: Arc<Cluster>, link: Link) {
    let mut every =
        tokio::time::interval(Duration::from_millis(cluster.config.node_timeout_ms / 3));
    loop {
        every.tick().await;
        say(&cluster, &link, false).await;
    }
}

/// Publishes this node's liveness message (`leaving` when it shuts down).
async fn say(cluster: &Cluster, link: &Link, leaving: bool) {
    let alive = Alive {
        node: cluster.incarnation,
        name: cluster.config.node.clone(),
        ready: cluster.available(),
        leaving,
    };
    if let Ok(payload) = encode_body(&alive) {
        let _ = link.client.publish(cluster.subjects.alive(), payload).await;
    }
}

/// Who was heard from, when, and whether it was ready then.
#[derive(Debug, Default)]
struct Nodes {
    seen: HashMap<u64, Heard>,
}

#[derive(Debug)]
struct Heard {
    name: String,
    at: Instant,
    ready: bool,
}

async fn hear_alive(cluster: Arc<Cluster>, link: Link, nodes: Arc<Mutex<Nodes>>) {
    let mut subscription = loop {
        match link.client.subscribe(cluster.subjects.alive()).await {
            Ok(subscription) => break subscription,
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    };
    while let Some(message) = subscription.next().await {
        let Ok(alive) = decode_body::<Alive>(&message.payload) else { continue };
        let mut nodes = nodes.lock().unwrap_or_else(|p| p.into_inner());
        if alive.leaving {
            if nodes.seen.remove(&alive.node).is_some() {
                info!(node = %alive.name, incarnation = alive.node, "node left the cluster (shut down)");
            }
            continue;
        }
        let heard = Heard { name: alive.name.clone(), at: Instant::now(), ready: alive.ready };
        if nodes.seen.insert(alive.node, heard).is_none() && alive.node != cluster.incarnation {
            if alive.name == cluster.config.node {
                warn!(node = %alive.name, incarnation = alive.node, "another relay uses this node's name: give each node its own (--node)");
            } else {
                info!(node = %alive.name, incarnation = alive.node, "node joined the cluster");
            }
        }
    }
}

/// Every third of `node_timeout_ms`: the nodes not heard from for `node_timeout_ms` are lost;
/// the live node with the smallest incarnation records their members absent. A node judges
/// only after it has been connected for `node_timeout_ms` itself (it must have had the time
/// to hear the others).
async fn find_lost(shared: Arc<Shared>, cluster: Arc<Cluster>, nodes: Arc<Mutex<Nodes>>) {
    let timeout = Duration::from_millis(cluster.config.node_timeout_ms);
    let mut every = tokio::time::interval(timeout / 3);
    let mut connected_since: Option<Instant> = None;
    let mut requested: HashSet<(String, String, u64)> = HashSet::new();
    loop {
        every.tick().await;
        if !cluster.available() {
            connected_since = None;
            cluster.judge.store(false, Ordering::Relaxed);
            continue;
        }
        let since = *connected_since.get_or_insert_with(Instant::now);
        if since.elapsed() < timeout {
            continue;
        }
        let (live, judge) = {
            let mut nodes = nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.seen.retain(|node, heard| {
                let alive = heard.at.elapsed() < timeout;
                if !alive && *node != cluster.incarnation {
                    Counters::bump(&shared.counters.cluster_nodes_lost);
                    warn!(node = %heard.name, incarnation = *node, "node lost: not heard from for node_timeout_ms");
                }
                alive
            });
            let live: HashSet<u64> =
                nodes.seen.keys().copied().chain([cluster.incarnation]).collect();
            // The judge: the ready node with the smallest incarnation (this one is ready).
            let judge = nodes
                .seen
                .iter()
                .filter(|(_, heard)| heard.ready)
                .map(|(node, _)| *node)
                .chain([cluster.incarnation])
                .min();
            (live, judge)
        };
        cluster.judge.store(judge == Some(cluster.incarnation), Ordering::Relaxed);
        if judge != Some(cluster.incarnation) {
            continue;
        }
        for room in shared.router.rooms() {
            for (user, session, seq, node) in room.remote_members() {
                if live.contains(&node) || !requested.insert((room.name.clone(), user.clone(), seq))
                {
                    continue;
                }
                debug!(room = %room.name, %user, node, "member of a lost node: recording it absent");
                cluster.member_removed(
                    &room.name,
                    &user,
                    (node, session, seq),
                    AbsentReason::NodeLost,
                    "its relay was lost",
                );
            }
        }
        if requested.len() > 100_000 {
            requested.clear();
        }
    }
}

/// On the judge, writes again the logs of rooms with members whose last entry is older than
/// half the stream's `max_age` (looked at every eighth of it, at most every minute), so that a
/// quiet room keeps its IDs and epoch. A task of its own: the judging of lost nodes never
/// waits for it.
async fn renew_logs(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    let max_age = Duration::from_secs(cluster.config.log_max_age_secs);
    let mut every = tokio::time::interval((max_age / 8).clamp(RETRY / 2, Duration::from_secs(60)));
    loop {
        every.tick().await;
        if cluster.judge.load(Ordering::Relaxed) && cluster.available() {
            renew_old_logs(&shared, &cluster, max_age).await;
        }
    }
}

async fn renew_old_logs(shared: &Shared, cluster: &Cluster, max_age: Duration) {
    let old_ms = now_ms().saturating_sub(max_age.as_millis() as u64 / 2);
    for room in shared.router.rooms() {
        let (at_ms, members) = room.log_age();
        // Only a log this node has read: its counters are known here.
        if !members || at_ms == 0 || at_ms > old_ms {
            continue;
        }
        let (entry, expected) = room.renewal();
        // Refused when another entry got in: then the log is fresh anyway.
        if cluster.publish_log(&room.name, &entry, expected).await.is_ok() {
            debug!(room = %room.name, "room log written again");
        }
    }
}
