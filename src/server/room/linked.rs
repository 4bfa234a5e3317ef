//! The room's side of the cluster (docs/CLUSTER.md). Every node holds every room of the
//! cluster and applies the cluster's stream (room logs and member records, one order for all
//! nodes) with the same room logic a single relay uses: the outbox, the flush, the history,
//! the limits. What a node adds is who is connected where: a member of another node is a
//! [`Link::Remote`] entry, listed and counted like any member, but given no lane.
//!
//! A send through this node is checked here as on a single relay, then handed to the room's
//! publisher (one task per room while it has work): it gives out the next IDs from what this
//! node knows of the log and publishes them as one entry, expecting the room's last entry to
//! be the one it knows (`Nats-Expected-Last-Subject-Sequence`). When another node got there
//! first, it learns the room's last entry and tries again, so IDs stay 1, 2, 3, … whichever
//! node the senders use. The sender's reply waits for the entry to be stored; the receivers
//! here get it when the stream delivers it, as everywhere else.

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::cluster::PublishError;
use crate::cluster::wire::{
    AbsentReason, LogBody, LogEntry, LoggedBroadcast, LoggedCommand, MemberRecord,
};

/// A refusal: code and detail.
type Refusal = (ErrorCode, String);

/// Entries a publisher retries after another node's entry got in first.
const PUBLISH_ATTEMPTS: usize = 16;

/// How long a publisher waits for its own entry to come back from the stream before giving
/// out the next IDs (it normally takes a round trip to NATS).
const APPLIED_WAIT: Duration = Duration::from_secs(1);

/// How long a publisher with nothing to do stays.
const PUBLISHER_IDLE: Duration = Duration::from_secs(10);

/// Log entries younger than this take from the room's frequency limits when applied (older
/// ones are a node catching up on the stream).
const RECENT_MS: u64 = 2000;

/// The cluster's record of a membership on this relay.
#[derive(Debug, Default)]
pub(crate) struct OwnRecord {
    /// The stream sequence of its `Present` record, once known.
    seq: Option<u64>,
    /// Another node's `Present` for the same user that came while `seq` was unknown: it wins
    /// if it is the newer.
    contested: Option<(u64, u64, u32, User)>,
}

/// A room publisher's queue.
pub(crate) type Publisher = mpsc::UnboundedSender<Submission>;

/// A send waiting for its entry in the room's log.
#[derive(Debug)]
pub(crate) struct Submission {
    what: Submitted,
    reply: oneshot::Sender<Result<u64, Refusal>>,
}

#[derive(Debug)]
enum Submitted {
    Broadcast { from: User, payload: Bytes },
    Command { from: User, to: Vec<String>, payload: Bytes },
}

/// The answer to a send handed to the room's publisher.
pub(crate) type Pending = oneshot::Receiver<Result<u64, Refusal>>;

/// What a node knows of the end of a room's log.
#[derive(Debug, Clone, Copy)]
struct LogEnd {
    seq: u64,
    broadcast_seq: u64,
    command_seq: u64,
}

impl Room {
    /// Checks a broadcast as [`Room::broadcast`] does (member, the user's limit, the room's
    /// limit as this node knows it) and hands it to the room's publisher.
    pub(crate) fn submit_broadcast(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        send: Send<'_>,
    ) -> Result<Pending, Refusal> {
        let limits = &shared.config.limits;
        let mut guard = self.lock();
        let state = &mut *guard;
        let (from, user_limits) = match send.outside {
            None => (state.sender(send.session, send.user_id)?, true),
            Some(outside) => (outside.user.clone(), outside.user_limits),
        };
        if !state.broadcast_bucket.ready() {
            return Err(room_limited("broadcasts", limits.broadcast_per_room));
        }
        let budget = state.budget(&from.id, &shared.config);
        if user_limits && !budget.broadcast.try_take() {
            return Err(user_limited("broadcasts", limits.broadcast_per_user));
        }
        Ok(self.enqueue(shared, state, Submitted::Broadcast { from, payload: send.payload }))
    }

    /// Checks a command as [`Room::command`] does (targets in the room, anywhere in the
    /// cluster; the user's limits) and hands it to the room's publisher.
    pub(crate) fn submit_command(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        send: Send<'_>,
        to: Vec<String>,
    ) -> Result<Pending, Refusal> {
        let to = command_targets(to, send.user_id)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let from = match send.outside {
            None => state.sender(send.session, send.user_id)?,
            Some(outside) => outside.user.clone(),
        };
        state.check_targets(&to)?;
        state.take_command_budget(shared, &send, to.len())?;
        Ok(self.enqueue(shared, state, Submitted::Command { from, to, payload: send.payload }))
    }

    /// Queues a send for the room's publisher, starting it if it is not running.
    fn enqueue(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        state: &mut RoomState,
        what: Submitted,
    ) -> Pending {
        let (reply, answer) = oneshot::channel();
        let mut submission = Submission { what, reply };
        if let Some(queue) = &state.publisher {
            match queue.send(submission) {
                Ok(()) => return answer,
                // Its task is gone (the runtime is shutting down): start another.
                Err(mpsc::error::SendError(back)) => submission = back,
            }
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let _ = queue.send(submission);
        state.publisher = Some(queue);
        tokio::spawn(publish(Arc::downgrade(self), shared.clone(), rx));
        answer
    }

    /// Applies an entry of the room's log (at stream sequence `seq`): broadcasts go to the
    /// members here and into the history, a command to its targets here, each exactly as on a
    /// single relay.
    /// Returns `false`, applying nothing, when the router removed this room meanwhile (the
    /// caller applies it to the room's new incarnation).
    pub(crate) fn apply_log(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        seq: u64,
        entry: LogEntry,
    ) -> bool {
        let recent = now_ms().saturating_sub(entry.at_ms) < RECENT_MS;
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            if state.closed {
                return false;
            }
            state.log_seq = state.log_seq.max(seq);
            state.log_at_ms = entry.at_ms;
            state.known_ids.0 = state.known_ids.0.max(entry.broadcast_seq);
            state.known_ids.1 = state.known_ids.1.max(entry.command_seq);
            match entry.body {
                LogBody::Opened => {
                    // A log that starts (or is written again) with the room's counters: IDs
                    // below them are gone from every history.
                    state.broadcast_seq = state.broadcast_seq.max(entry.broadcast_seq);
                    state.command_seq = state.command_seq.max(entry.command_seq);
                }
                LogBody::Closed { .. } => {}
                LogBody::Broadcasts(items) => {
                    let count = items.len() as u64;
                    let first = entry.broadcast_seq.saturating_sub(count) + 1;
                    let at = instant_of(entry.at_ms);
                    for (id, item) in (first..).zip(items) {
                        // Delivered again after the stream was read anew: already here.
                        if id <= state.broadcast_seq {
                            continue;
                        }
                        state.broadcast_seq = id;
                        if recent {
                            state.broadcast_bucket.take();
                        }
                        let author = match state.members.get(&item.author) {
                            Some(member) => member.author.clone(),
                            None => Arc::from(item.author.as_str()),
                        };
                        state.history.push_at(
                            id,
                            item.encoded.clone(),
                            author.clone(),
                            at,
                            &shared.counters,
                        );
                        state.outbox.push(Outgoing::Broadcast(item.encoded, author));
                    }
                    state.flush(shared, &self.name);
                }
                LogBody::Command(command) if entry.command_seq > state.command_seq => {
                    state.command_seq = entry.command_seq;
                    // Broadcasts accepted before this command reach its targets first.
                    state.flush(shared, &self.name);
                    let LoggedCommand { from, to, sent_at_ms, payload } = command;
                    let sender = from.id.clone();
                    let event = LaneEvent::Command(CommandMessage {
                        id: entry.command_seq,
                        sent_at_ms,
                        from,
                        payload,
                    });
                    if let Some(frame) = frame_of(&event) {
                        state.fan_out(
                            shared,
                            &self.name,
                            &sender,
                            LaneItem::Frame(frame),
                            |user| to.is_empty() || to.iter().any(|t| t == user),
                        );
                    }
                }
                LogBody::Command(_) => {}
            }
        }
        self.logged.notify_waiters();
        if shared.counters.history_bytes.load(Ordering::Relaxed)
            > shared.config.max_history_bytes as u64
        {
            shared.router.trim_history(shared);
        }
        true
    }

    /// Applies a member record of `user_id` (at stream sequence `seq`): a member of another
    /// node joins, moves or leaves; one of this node's members that another node's login
    /// replaced, the application kicked through another node, or the cluster counted as lost
    /// leaves here with the matching code.
    pub(crate) fn apply_member(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        seq: u64,
        user_id: &str,
        record: MemberRecord,
        me: u64,
    ) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed {
            return false;
        }
        match record {
            MemberRecord::Present { epoch, node, session, user } => {
                if epoch != self.epoch || user.id != user_id {
                    return true;
                }
                if node == me {
                    // This node's own record: the sequence a later `Absent` must expect.
                    state.own_record(shared, &self.name, user_id, session, seq);
                    return true;
                }
                if let Some(entry) = state.members.get_mut(user_id) {
                    match &mut entry.link {
                        Link::Local { record, .. } => match record.seq {
                            // The login here is the newer.
                            Some(own) if own > seq => return true,
                            Some(_) => {}
                            None => {
                                record.contested = Some((seq, node, session, user));
                                return true;
                            }
                        },
                        Link::Remote { seq: known, .. } if *known > seq => return true,
                        Link::Remote { node: n, session: s, seq: known }
                            if *n == node && *s == session =>
                        {
                            // The same membership's record, written again: nothing changed.
                            *known = seq;
                            return true;
                        }
                        Link::Remote { .. } => {}
                    }
                }
                state.remote_joined(self, shared, seq, node, session, user);
            }
            MemberRecord::Absent { node, session, reason, detail } => {
                let Some(entry) = state.members.get_mut(user_id) else { return true };
                let same = match entry.link {
                    Link::Local { .. } => node == me && entry.session == session,
                    Link::Remote { node: n, session: s, .. } => n == node && s == session,
                };
                if !same {
                    return true;
                }
                if let Link::Local { record, .. } = &mut entry.link
                    && reason != AbsentReason::Kicked
                {
                    if reason != AbsentReason::NodeLost {
                        // This node's own `Left` of an earlier login on this session (logged
                        // out and in again before reading it back): the login is newer.
                        return true;
                    }
                    // The others counted this node lost while it was cut off from NATS, and
                    // told the room this member left. It never did (its lane got every entry
                    // once the stream was read again): say it is here again.
                    record.seq = None;
                    if let Some(cluster) = &shared.cluster {
                        // Expecting the `Absent` it answers: a newer login elsewhere wins.
                        cluster.member_present_again(
                            &self.name,
                            self.epoch,
                            &entry.user,
                            session,
                            seq,
                        );
                    }
                    return true;
                }
                let Some(entry) = state.members.remove(user_id) else { return true };
                state.by_session.remove(&entry.session);
                let left = entry.member();
                if matches!(entry.link, Link::Local { .. }) {
                    // The application kicked this node's member through another node.
                    debug!(room = %self.name, user = %user_id, "member kicked through another node");
                    self.left(shared, &left.user, LeaveReason::Kicked);
                    entry.close(ErrorCode::KICKED_BY_SERVER, &detail);
                }
                state.member_left(left);
                self.user_update(state, shared);
            }
        }
        true
    }

    /// A barrage datagram from a member of another node: to the members here, under the
    /// room's barrage limit as this node counts it.
    pub(crate) fn apply_barrage(
        &self,
        shared: &Shared,
        node: u64,
        origin_session: u32,
        sent_at_ms: u64,
        payload: Bytes,
    ) {
        let mut state = self.lock();
        let counters = &shared.counters;
        // The server API's barrage names session 0 on every node.
        let sender = if origin_session == SERVER_SESSION {
            Some(SERVER_SESSION)
        } else {
            state.members.values().find_map(|m| match m.link {
                Link::Remote { node: n, session, .. } if n == node && session == origin_session => {
                    Some(m.session)
                }
                _ => None,
            })
        };
        let Some(sender) = sender else {
            Counters::bump(&counters.cluster_barrage_dropped);
            return;
        };
        if !state.barrage_bucket.try_take() {
            Counters::bump(&counters.cluster_barrage_dropped);
            return;
        }
        if sender != SERVER_SESSION
            && let Some(member) = state.members.values_mut().find(|m| m.session == sender)
            && !member.announced
        {
            // As for a member here: receivers learn who it is before its first barrage.
            let member = member.member();
            if state.large {
                state.outbox.push(Outgoing::Joined(member));
            }
            state.flush(shared, &self.name);
        }
        state.barrage_seq += 1;
        let datagram = ServerDatagram::Barrage(BarrageMessage {
            room_number: self.number,
            id: state.barrage_seq,
            sent_at_ms,
            sender,
            payload,
        });
        if let Ok(encoded) = encode_body(&datagram) {
            send_barrage(&state, &self.name, sender, &encoded, counters);
        }
    }

    /// The cluster refused this node's `Present` record of `user_id` on `session` (written
    /// again after the node was counted lost): a newer record of another node holds, and
    /// replaces the member here when it is (or was) read.
    pub(crate) fn record_refused(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        user_id: &str,
        session: u32,
    ) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.members.get_mut(user_id) else { return };
        let Link::Local { record, .. } = &mut entry.link else { return };
        if entry.session != session {
            return;
        }
        // Older than any record: the next one read replaces it.
        record.seq = Some(0);
        if let Some((seq, node, session, user)) = record.contested.take() {
            state.replace_by_remote(shared, &self.name, seq, node, session, user);
            self.user_update(state, shared);
        }
    }

    /// An entry that writes the room's log again with its epoch and counters (the log of a
    /// room with members must not expire), and the sequence it must follow.
    pub(crate) fn renewal(&self) -> (LogEntry, u64) {
        let state = self.lock();
        let end = state.log_end();
        let entry = LogEntry {
            epoch: self.epoch,
            broadcast_seq: end.broadcast_seq,
            command_seq: end.command_seq,
            at_ms: now_ms(),
            body: LogBody::Opened,
        };
        (entry, end.seq)
    }

    /// The cluster's stream was made anew (NATS lost it): the sequences learnt from the old
    /// one mean nothing now. The log counts as old (the judge writes it again soon).
    pub(crate) fn stream_lost(&self) {
        let mut state = self.lock();
        state.log_seq = 0;
        state.log_at_ms = state.log_at_ms.min(1);
        for member in state.members.values_mut() {
            match &mut member.link {
                Link::Remote { seq, .. } => *seq = 0,
                Link::Local { record, .. } => *record = OwnRecord::default(),
            }
        }
    }

    /// The members connected here: user and session.
    pub(crate) fn local_members(&self) -> Vec<(User, u32)> {
        self.lock()
            .members
            .values()
            .filter(|m| matches!(m.link, Link::Local { .. }))
            .map(|m| (m.user.clone(), m.session))
            .collect()
    }

    /// When the room's last log entry was written (ms since the Unix epoch; 0: none read) and
    /// whether the room has members: a room whose log grows old is written again.
    pub(crate) fn log_age(&self) -> (u64, bool) {
        let state = self.lock();
        (state.log_at_ms, !state.members.is_empty())
    }

    /// Waits (at most `limit`) until this node has applied the room's broadcast `id`: a
    /// client that saw it on another node recovers here from there.
    pub(crate) async fn wait_broadcast(&self, id: u64, limit: Duration) {
        let caught_up = async {
            loop {
                let notified = self.logged.notified();
                if self.lock().broadcast_seq >= id {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, caught_up).await;
    }

    /// The room's last broadcast ID applied here.
    pub(crate) fn broadcast_seq(&self) -> u64 {
        self.lock().broadcast_seq
    }

    /// The cluster stored this node's `Present` record of `user_id` on `session` at `seq`.
    pub(crate) fn record_stored(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        user_id: &str,
        session: u32,
        seq: u64,
    ) {
        let mut state = self.lock();
        state.own_record(shared, &self.name, user_id, session, seq);
        self.user_update(&mut state, shared);
    }

    /// The members connected to other nodes: user ID, session there, record sequence, node.
    pub(crate) fn remote_members(&self) -> Vec<(String, u32, u64, u64)> {
        self.lock()
            .members
            .values()
            .filter_map(|m| match m.link {
                Link::Remote { node, session, seq } => {
                    Some((m.user.id.clone(), session, seq, node))
                }
                Link::Local { .. } => None,
            })
            .collect()
    }

    /// Where the member `user_id` is connected, if it is a member: `None` inside for this
    /// relay, else the node, its session there and its record's sequence.
    pub(crate) fn member_link(&self, user_id: &str) -> Option<Option<(u64, u32, u64)>> {
        let state = self.lock();
        let entry = state.members.get(user_id)?;
        Some(match entry.link {
            Link::Local { .. } => None,
            Link::Remote { node, session, seq } => Some((node, session, seq)),
        })
    }
}

impl RoomState {
    /// Refuses a command whose listed targets are not all in the room.
    pub(super) fn check_targets(&self, to: &[String]) -> Result<(), Refusal> {
        let missing: Vec<&str> = to
            .iter()
            .filter(|t| !self.members.contains_key(t.as_str()))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err((ErrorCode::UNKNOWN_TARGET_USER, format!("not in the room: {}", missing.join(", "))))
    }

    /// Notes the stream sequence of this node's record of its member `user_id` on `session`;
    /// a newer record of another node that came meanwhile now replaces the member.
    fn own_record(
        &mut self,
        shared: &Arc<Shared>,
        room: &str,
        user_id: &str,
        session: u32,
        seq: u64,
    ) {
        let Some(entry) = self.members.get_mut(user_id) else { return };
        let Link::Local { record, .. } = &mut entry.link else { return };
        if entry.session != session || record.seq.is_some_and(|known| known >= seq) {
            return;
        }
        record.seq = Some(seq);
        if let Some((other, node, session, user)) = record.contested.take()
            && other > seq
        {
            debug!(room, user = %user_id, "a newer login on another node replaces this one");
            self.replace_by_remote(shared, room, other, node, session, user);
        }
    }

    /// Replaces the member `user` (whatever its link) with the member of node `node`.
    fn replace_by_remote(
        &mut self,
        shared: &Arc<Shared>,
        room: &str,
        seq: u64,
        node: u64,
        session: u32,
        user: User,
    ) {
        if let Some(old) = self.members.remove(&user.id) {
            self.by_session.remove(&old.session);
            let left = old.member();
            if matches!(old.link, Link::Local { .. }) {
                shared.hooks.emit(&shared.counters, |at_ms| RoomEvent::UserLeft {
                    room: room.to_owned(),
                    user: left.user.clone(),
                    reason: LeaveReason::Replaced,
                    at_ms,
                });
            }
            old.close(
                ErrorCode::KICKED_LOGGED_IN_ELSEWHERE,
                "the same user logged in to this room on another node",
            );
            self.member_left(left);
        }
        let alias = shared.next_session();
        let entry = MemberEntry {
            session: alias,
            author: Arc::from(user.id.as_str()),
            user,
            link: Link::Remote { node, session, seq },
            // A member that joined elsewhere gets nothing here: it has no lane.
            joined_at: (self.flushes, self.outbox.len() + 1),
            announced: false,
        };
        let joined = entry.member();
        self.by_session.insert(alias, entry.author.clone());
        self.large |= self.members.len() + 1 > shared.config.large_room_above;
        self.members.insert(joined.user.id.clone(), entry);
        if self.large {
            self.count_changed();
        } else {
            self.outbox.push(Outgoing::Joined(joined));
        }
    }

    /// A member of another node joined (or moved there).
    fn remote_joined(
        &mut self,
        room: &Arc<Room>,
        shared: &Arc<Shared>,
        seq: u64,
        node: u64,
        session: u32,
        user: User,
    ) {
        self.replace_by_remote(shared, &room.name, seq, node, session, user);
        room.user_update(self, shared);
    }

    /// What this node knows of the end of the room's log.
    fn log_end(&self) -> LogEnd {
        LogEnd {
            seq: self.log_seq,
            broadcast_seq: self.broadcast_seq.max(self.known_ids.0),
            command_seq: self.command_seq.max(self.known_ids.1),
        }
    }
}

/// Tells the cluster that a member of this relay left `room` (a single relay has nothing to
/// tell).
pub(super) fn left_cluster(shared: &Shared, room: &str, entry: &MemberEntry) {
    if let (Some(cluster), Link::Local { .. }) = (&shared.cluster, &entry.link) {
        cluster.member_absent(room, &entry.user.id, entry.session);
    }
}

/// The `Instant` of a time in ms since the Unix epoch (now, if it lies ahead).
fn instant_of(at_ms: u64) -> Instant {
    let age = Duration::from_millis(now_ms().saturating_sub(at_ms));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// A room's publisher: puts this node's sends into the room's log, in the order they came,
/// as few entries as it can (consecutive broadcasts share one), and answers each send.
async fn publish(
    room: std::sync::Weak<Room>,
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Submission>,
) {
    let Some(cluster) = shared.cluster.clone() else { return };
    loop {
        let first = match tokio::time::timeout(PUBLISHER_IDLE, queue.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(_) => {
                let Some(room) = room.upgrade() else { return };
                let mut state = room.lock();
                // Under the lock: a send either came before (and is taken now) or starts a
                // new publisher.
                match queue.try_recv() {
                    Ok(first) => {
                        drop(state);
                        first
                    }
                    Err(_) => {
                        state.publisher = None;
                        return;
                    }
                }
            }
        };
        let Some(room) = room.upgrade() else { return };
        // Consecutive broadcasts go in one entry; a command is an entry of its own.
        let mut batch = vec![first];
        if matches!(batch[0].what, Submitted::Broadcast { .. }) {
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) if matches!(next.what, Submitted::Broadcast { .. }) => {
                        batch.push(next)
                    }
                    Ok(command) => {
                        publish_entry(&room, &shared, &cluster, std::mem::take(&mut batch)).await;
                        batch.push(command);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        publish_entry(&room, &shared, &cluster, batch).await;
    }
}

/// Publishes one entry for `batch` (broadcasts, or one command), retrying with the room's
/// newest state while other nodes' entries get in first.
async fn publish_entry(
    room: &Arc<Room>,
    shared: &Arc<Shared>,
    cluster: &Arc<crate::cluster::Cluster>,
    mut batch: Vec<Submission>,
) {
    if batch.is_empty() {
        return;
    }
    for _ in 0..PUBLISH_ATTEMPTS {
        let Some((entry, end, accepted)) = room.prepare(shared, &mut batch) else { return };
        match cluster.publish_log(&room.name, &entry, end.seq).await {
            Ok(seq) => {
                // The next IDs are given out once this entry is applied here: the room's
                // frequency limit then counts it.
                room.wait_applied(seq).await;
                let counters = &shared.counters;
                Counters::bump(&counters.cluster_log_entries);
                for (submission, id) in batch.into_iter().zip(accepted) {
                    let counter = match submission.what {
                        Submitted::Broadcast { .. } => &counters.broadcasts,
                        Submitted::Command { .. } => &counters.commands,
                    };
                    Counters::bump(counter);
                    let _ = submission.reply.send(Ok(id));
                }
                return;
            }
            Err(PublishError::WrongLastSequence) => {
                Counters::bump(&shared.counters.cluster_publish_conflicts);
                let current = match cluster.last_log(&room.name).await {
                    Ok(Some((seq, last))) => room.learn_end(Some((seq, &last))),
                    Ok(None) => room.learn_end(None),
                    Err(refusal) => return refuse_all(batch, refusal),
                };
                if !current {
                    return refuse_all(batch, closed_here());
                }
            }
            Err(PublishError::Unavailable(detail)) => {
                return refuse_all(batch, room_unavailable(&detail));
            }
        }
    }
    refuse_all(batch, room_unavailable("other nodes' entries kept getting in first"));
}

fn refuse_all(batch: Vec<Submission>, refusal: Refusal) {
    for submission in batch {
        let _ = submission.reply.send(Err(refusal.clone()));
    }
}

/// The refusal of a send to an incarnation of a room that the cluster closed meanwhile.
fn closed_here() -> Refusal {
    (ErrorCode::ROOM_CLOSED, "the room was closed or started anew in the cluster meanwhile".into())
}

/// The refusal of a send the cluster could not take.
pub(crate) fn room_unavailable(detail: &str) -> Refusal {
    (ErrorCode::CLUSTER_UNAVAILABLE, format!("the cluster cannot take it now: {detail}"))
}

impl Room {
    /// The entry for `batch` at the end of the log as this node knows it, and the IDs it
    /// gives out; sends the room's limit or members no longer allow are answered here and
    /// taken out of `batch`. `None` when nothing is left.
    fn prepare(
        &self,
        shared: &Shared,
        batch: &mut Vec<Submission>,
    ) -> Option<(LogEntry, LogEnd, Vec<u64>)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed {
            refuse_all(std::mem::take(batch), closed_here());
            return None;
        }
        let end = state.log_end();
        let at_ms = now_ms();
        let body = match &batch.first()?.what {
            Submitted::Broadcast { .. } => {
                let allowed = state.broadcast_bucket.available();
                if batch.len() > allowed {
                    let rate = shared.config.limits.broadcast_per_room;
                    refuse_all(batch.split_off(allowed), room_limited("broadcasts", rate));
                }
                let mut items = Vec::with_capacity(batch.len());
                let mut kept = Vec::with_capacity(batch.len());
                for submission in batch.drain(..) {
                    let Submitted::Broadcast { from, payload } = &submission.what else {
                        continue;
                    };
                    // Counted from what is kept, so the IDs in the bodies match the counters.
                    let id = end.broadcast_seq + 1 + items.len() as u64;
                    let message = BroadcastRef { id, sent_at_ms: at_ms, from, payload };
                    match encode_body(&message) {
                        Ok(encoded) => {
                            items.push(LoggedBroadcast { author: from.id.clone(), encoded });
                            kept.push(submission);
                        }
                        Err(e) => {
                            let _ = submission.reply.send(Err(internal(e)));
                        }
                    }
                }
                *batch = kept;
                if batch.is_empty() {
                    return None;
                }
                LogBody::Broadcasts(items)
            }
            Submitted::Command { from, to, payload } => {
                if let Err(refusal) = state.check_targets(to) {
                    refuse_all(std::mem::take(batch), refusal);
                    return None;
                }
                LogBody::Command(LoggedCommand {
                    from: from.clone(),
                    to: to.clone(),
                    sent_at_ms: at_ms,
                    payload: payload.clone(),
                })
            }
        };
        let (broadcast_seq, command_seq, ids) = match &body {
            LogBody::Broadcasts(items) => {
                let last = end.broadcast_seq + items.len() as u64;
                (last, end.command_seq, (end.broadcast_seq + 1..=last).collect())
            }
            _ => (end.broadcast_seq, end.command_seq + 1, vec![end.command_seq + 1]),
        };
        let entry = LogEntry { epoch: self.epoch, broadcast_seq, command_seq, at_ms, body };
        Some((entry, end, ids))
    }

    /// Learns the end of the room's log from the stream (after a write was refused): its last
    /// entry and that entry's sequence, or `None` when the log is empty (it expired, or NATS
    /// lost it: the next entry starts it again with the counters this node holds). `false`
    /// when the log belongs to another incarnation of the room (it was closed, or started
    /// anew): this object must not write to it.
    fn learn_end(&self, last: Option<(u64, &LogEntry)>) -> bool {
        let mut state = self.lock();
        match last {
            None => {
                state.log_seq = 0;
                true
            }
            Some((_, last)) if last.epoch != self.epoch => false,
            Some((seq, last)) => {
                // The stream's word is the truth, even below what was known (a stream NATS
                // lost and started again).
                state.log_seq = seq;
                state.known_ids.0 = state.known_ids.0.max(last.broadcast_seq);
                state.known_ids.1 = state.known_ids.1.max(last.command_seq);
                true
            }
        }
    }

    /// Waits (at most [`APPLIED_WAIT`]) until the log entry at `seq` has been applied here.
    async fn wait_applied(&self, seq: u64) {
        let applied = async {
            loop {
                let notified = self.logged.notified();
                if self.lock().log_seq >= seq {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(APPLIED_WAIT, applied).await;
    }
}

impl LogEntry {
    /// The entry that opens a room's log with `epoch`.
    pub fn opened(epoch: u64) -> LogEntry {
        LogEntry { epoch, broadcast_seq: 0, command_seq: 0, at_ms: now_ms(), body: LogBody::Opened }
    }
}

/// Whether a member record names valid IDs and a valid user (nothing from NATS reaches a room
/// unchecked).
pub(crate) fn valid_record(room: &str, user_id: &str, record: &MemberRecord) -> bool {
    let ids = crate::protocol::check_room_id(room).is_ok() && check_member_id(user_id).is_ok();
    match record {
        MemberRecord::Present { user, .. } => ids && user.id == user_id && valid_user(user),
        MemberRecord::Absent { detail, .. } => ids && detail.len() <= 1024,
    }
}

/// The highest counter a log entry may carry (far beyond any room's life, and far from
/// overflowing).
const MAX_LOG_COUNTER: u64 = 1 << 53;

/// Whether a user is valid as a client's login would be.
fn valid_user(user: &User) -> bool {
    crate::protocol::check_user_id(&user.id).is_ok()
        && crate::protocol::check_user_name(&user.name).is_ok()
}

/// Whether a logged broadcast is a valid `BroadcastMessage` with ID `id` from its author.
fn valid_broadcast(id: u64, item: &LoggedBroadcast) -> bool {
    let Ok(message) =
        crate::protocol::decode_body::<crate::protocol::BroadcastMessage>(&item.encoded)
    else {
        return false;
    };
    message.id == id
        && message.from.id == item.author
        && valid_user(&message.from)
        && crate::protocol::check_payload(&message.payload).is_ok()
}

/// Whether a room-log entry names a valid room and holds valid messages.
pub(crate) fn valid_entry(room: &str, entry: &LogEntry) -> bool {
    if crate::protocol::check_room_id(room).is_err()
        || entry.broadcast_seq > MAX_LOG_COUNTER
        || entry.command_seq > MAX_LOG_COUNTER
    {
        return false;
    }
    match &entry.body {
        LogBody::Opened => true,
        LogBody::Closed { reason } => reason.len() <= 1024,
        LogBody::Broadcasts(items) => {
            let first = entry.broadcast_seq.wrapping_sub(items.len() as u64) + 1;
            !items.is_empty()
                && items.len() as u64 <= entry.broadcast_seq
                && (first..).zip(items).all(|(id, item)| valid_broadcast(id, item))
        }
        LogBody::Command(command) => {
            valid_user(&command.from)
                && crate::protocol::check_payload(&command.payload).is_ok()
                && command.to.len() <= crate::protocol::MAX_COMMAND_TARGETS
                && command.to.iter().all(|t| crate::protocol::check_user_id(t).is_ok())
        }
    }
}
