//! One client connection: its control stream, its barrage datagrams and its rooms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use quinn::SendStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::Shared;
use super::admission::Admitted;
use super::hooks::LeaveReason;
use super::lane::{self, ConnLanes, LaneOwner};
use super::peer::Peer;
use super::room::{Pending, Room, Send, check_member_id, check_message, room_unavailable};
use super::router::Login;
use super::stats::{Counters, RequestKind};
use crate::auth::{Claims, unix_seconds};
use crate::protocol::{
    ClientDatagram, CodecError, ControlFrame, ErrorCode, LaneHeader, MAX_REQUEST_FRAME, MAX_TOKEN,
    Outcome, Recover, Reply, Request, RequestFrame, User, check_room_id, check_user_name, close,
    decode_datagram, encode_frame,
};
use crate::transport::{FrameReader, ReadError};
use crate::webtransport::{self, session::StreamError};

type Refusal = (ErrorCode, String);

/// Serves one incoming connection until it closes: a native client, or a browser's
/// WebTransport session (ALPN `h3`), with the same logic. `admitted` holds its place in the
/// connection limits (handshakes in progress count too) and gives it back when this returns.
pub async fn serve(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    mut admitted: Admitted,
    shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let began = Instant::now();
    let handshake = incoming.await;
    shared.counters.handshake_time.record(began.elapsed());
    admitted.handshake_done();
    let conn = match handshake {
        Ok(conn) => conn,
        Err(e) => {
            debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let session = shared.next_session();
    let browser = alpn(&conn).as_deref() == Some(webtransport::ALPN_H3);
    let span = info_span!("conn", conn = session, %remote, browser);
    let peer = if browser {
        let timeout = Duration::from_millis(shared.config.control_stream_timeout_ms);
        match webtransport::session::accept(conn.clone(), timeout).instrument(span.clone()).await {
            Ok(session) => {
                Counters::bump(&shared.counters.webtransport_sessions);
                Peer::WebTransport(Arc::new(session))
            }
            Err(e) => {
                Counters::bump(&shared.counters.webtransport_refused);
                span.in_scope(|| debug!(error = %e, "not a WebTransport session: closing"));
                conn.close(close::PROTOCOL_VIOLATION.into(), b"not a qrelay WebTransport session");
                return;
            }
        }
    } else {
        Peer::Quic(conn)
    };
    Counters::bump(&shared.counters.connections_accepted);
    let mut state = ConnState {
        shared: shared.clone(),
        peer,
        session,
        user: None,
        claims: None,
        rooms: HashMap::new(),
        lanes: Arc::new(ConnLanes::default()),
        roomless_since: Some(Instant::now()),
        unflushed: Vec::new(),
        token_warning: None,
        request: 0,
        pending: tokio::task::JoinSet::new(),
        pending_logins: 0,
        claims_changes: 0,
    };
    state.run(shutdown).instrument(span.clone()).await;
    span.in_scope(|| state.leave_all(LeaveReason::Disconnected, "the connection ended"));
}

/// Closes the connection with `PROTOCOL_VIOLATION` when the client opens a stream beyond its
/// control stream; ends with the connection.
async fn close_on_unexpected_stream(shared: Arc<Shared>, peer: Peer) {
    if peer.unexpected_stream().await {
        Counters::bump(&shared.counters.protocol_violations);
        debug!("a stream beyond the control stream: closing");
        peer.close(close::PROTOCOL_VIOLATION, b"only the control stream may be opened");
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The protocol the connection's TLS handshake settled on.
fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

struct ConnState {
    shared: Arc<Shared>,
    /// The client's connection (native QUIC or WebTransport).
    peer: Peer,
    session: u32,
    /// The user this connection logged in as (fixed by the first login).
    user: Option<User>,
    /// Claims of the newest verified token; `None` in insecure dev-auth mode.
    claims: Option<Claims>,
    rooms: HashMap<String, Arc<Room>>,
    /// Bytes queued in this connection's lanes, and its lanes not yet opened.
    lanes: Arc<ConnLanes>,
    /// Since when the connection is known to be in no room (from the handshake until its
    /// first login; from leaving its last room); `None` while it is in one.
    roomless_since: Option<Instant>,
    /// Rooms with broadcasts of this connection's not yet flushed to their lanes.
    unflushed: Vec<Arc<Room>>,
    /// When to send `TokenWillExpire`, and the expiry it announces.
    token_warning: Option<(Instant, u64)>,
    /// The ID of the request being handled.
    request: u32,
    /// Requests answered later: sends the cluster is storing, logins reading a room's epoch.
    pending: tokio::task::JoinSet<Completion>,
    /// Of `pending`, the logins (they count against `max_rooms_per_connection`).
    pending_logins: usize,
    /// How many tokens were renewed (a login that waited must not undo a renewal).
    claims_changes: u64,
}

/// How long a cluster login waits for this node to catch up with what the client saw of the
/// room on another node.
const CATCH_UP: Duration = Duration::from_secs(2);

/// A request's answer that came later.
enum Completion {
    /// The reply is ready.
    Reply { request: u32, kind: RequestKind, outcome: Result<Outcome, Refusal> },
    /// A login's room epoch was read from the cluster (or this node caught up with what the
    /// client saw): the login goes on.
    Login {
        request: u32,
        room: String,
        user: User,
        claims: Option<Claims>,
        recover: Option<Recover>,
        epoch: Result<u64, Refusal>,
        /// [`ConnState::claims_changes`] when the login was asked for.
        generation: u64,
    },
}

impl ConnState {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        let timeout = Duration::from_millis(self.shared.config.control_stream_timeout_ms);
        let (mut control, recv) = tokio::select! {
            accepted = tokio::time::timeout(timeout, self.peer.accept_control()) => match accepted {
                Ok(Ok(streams)) => streams,
                Ok(Err(e @ StreamError::Header { .. })) => {
                    Counters::bump(&self.shared.counters.protocol_violations);
                    debug!(error = %e, "control stream of another kind: closing");
                    self.peer.close(close::PROTOCOL_VIOLATION, b"not a WebTransport stream of this session");
                    return;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "closed before opening a control stream");
                    return;
                }
                Err(_) => {
                    debug!("no control stream in time: closing");
                    self.peer.close(close::NO_CONTROL_STREAM, b"no control stream");
                    return;
                }
            },
            _ = shutdown.changed() => return self.shut_down().await,
        };
        let mut reader = FrameReader::new(recv, MAX_REQUEST_FRAME);
        let _watcher = self.watch_streams();
        let login_timeout = Duration::from_millis(self.shared.config.login_timeout_ms);
        let control_stall = Duration::from_millis(self.shared.config.control_stall_ms);
        let mut room_check = Instant::now() + login_timeout;
        let keep_alive = self.peer.keep_alive_interval(self.shared.config.idle_timeout());
        let mut keep_alive_at = keep_alive.map(|every| Instant::now() + every);
        loop {
            let warn_at = self.token_warning.map(|(at, _)| at);
            let replies = tokio::select! {
                frame = reader.next::<RequestFrame>() => match frame {
                    Ok(Some(frame)) => {
                        // The requests that came with this one are handled too, then the
                        // broadcasts among them go out together (one flush per receiver,
                        // not one per message), then the replies, in one write.
                        let mut replies: Vec<ControlFrame> = self.handle_request(frame).into_iter().collect();
                        let more = loop {
                            match reader.next_buffered::<RequestFrame>() {
                                Ok(Some(frame)) => replies.extend(self.handle_request(frame)),
                                Ok(None) => break Ok(()),
                                Err(e) => break Err(e),
                            }
                        };
                        let flushed = self.flush_rooms();
                        if let Err(e) = more {
                            // The requests before the bad frame were carried out: say so,
                            // and let the replies arrive before the close discards them.
                            let answered = async {
                                if write_frames(&mut control, &replies).await.is_ok()
                                    && control.finish().is_ok()
                                {
                                    let _ = control.stopped().await;
                                }
                            };
                            let _ = tokio::time::timeout(Duration::from_secs(1), answered).await;
                            self.violation(&e);
                            return;
                        }
                        if flushed {
                            // The lane writers run first, so the messages leave before the
                            // sender's replies: a reply sent first delays every delivery.
                            tokio::task::yield_now().await;
                        }
                        replies
                    }
                    Ok(None) => {
                        debug!("control stream finished: closing");
                        self.peer.close(close::NORMAL, b"control stream finished");
                        return;
                    }
                    Err(e) => {
                        self.violation(&e);
                        return;
                    }
                },
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => match done {
                    Ok(completion) => vec![self.complete(completion)],
                    Err(_) => continue,
                },
                datagram = self.peer.read_datagram() => match datagram {
                    Ok(datagram) => self.handle_datagram(datagram).into_iter().collect(),
                    Err(e) => {
                        debug!(error = %e, "connection ended");
                        return;
                    }
                },
                _ = sleep_until_opt(warn_at) => {
                    let expires_at_ms = self.token_warning.take().map_or(0, |(_, exp)| exp * 1000);
                    vec![ControlFrame::TokenWillExpire { expires_at_ms }]
                },
                _ = tokio::time::sleep_until(room_check) => {
                    match self.roomless_deadline(login_timeout) {
                        Some(deadline) if deadline <= Instant::now() => {
                            Counters::bump(&self.shared.counters.login_timeouts);
                            debug!("in no room for login_timeout_ms: closing");
                            self.peer.close(close::LOGIN_TIMEOUT, b"not logged in to any room");
                            return;
                        }
                        Some(deadline) => room_check = deadline,
                        // Rooms it was removed from (kicked, too slow) are noticed here.
                        None => room_check = Instant::now() + login_timeout,
                    }
                    continue;
                }
                _ = sleep_until_opt(keep_alive_at) => {
                    self.peer.keep_alive();
                    keep_alive_at = keep_alive.map(|every| Instant::now() + every);
                    continue;
                }
                _ = shutdown.changed() => return self.shut_down().await,
            };
            if self.rooms.is_empty() && self.roomless_since.is_none() {
                self.roomless_since = Some(Instant::now());
                room_check = room_check.min(Instant::now() + login_timeout);
            }
            if replies.is_empty() {
                continue;
            }
            // A client that does not take its replies is not read from meanwhile (its
            // requests wait in QUIC flow control), and is closed past `control_stall_ms`.
            tokio::select! {
                written = tokio::time::timeout(control_stall, write_frames(&mut control, &replies)) => match written {
                    Ok(Ok(())) => {}
                    Ok(Err(())) => return,
                    Err(_) => {
                        Counters::bump(&self.shared.counters.control_stalls);
                        debug!("control stream replies not taken for control_stall_ms: closing");
                        self.peer.close(close::CONTROL_STALLED, b"control stream replies not read");
                        return;
                    }
                },
                _ = shutdown.changed() => return self.shut_down().await,
            }
        }
    }

    /// With WebTransport on, native clients get the browsers' stream credit: once the control
    /// stream is in, a task of its own (no cost per request here) closes a native connection
    /// that opens another stream. It stops when the returned guard is dropped.
    fn watch_streams(&self) -> Option<AbortOnDrop> {
        if !self.shared.config.webtransport || !matches!(self.peer, Peer::Quic(_)) {
            return None;
        }
        let watch = close_on_unexpected_stream(self.shared.clone(), self.peer.clone());
        Some(AbortOnDrop(tokio::spawn(watch.instrument(tracing::Span::current()))))
    }

    /// When the connection must have a room by, if it has none now (rooms it was removed
    /// from are forgotten first).
    fn roomless_deadline(&mut self, timeout: Duration) -> Option<Instant> {
        self.prune_rooms();
        if !self.rooms.is_empty() {
            self.roomless_since = None;
            return None;
        }
        Some(*self.roomless_since.get_or_insert_with(Instant::now) + timeout)
    }

    /// Ends every lane with `SERVER_SHUTTING_DOWN` and keeps the connection, and the control
    /// stream of the caller's frame, open until the server closes every connection with
    /// `SHUTDOWN` (dropping them would send FIN, or close with code 0, first).
    async fn shut_down(&mut self) {
        self.leave_all(LeaveReason::Shutdown, "the server is shutting down");
        let closed = self.peer.connection().closed();
        let _ = tokio::time::timeout(super::SHUTDOWN_GRACE * 2, closed).await;
    }

    fn violation(&self, error: &ReadError) {
        let code = match error {
            ReadError::Codec(CodecError::TooLarge { .. }) => close::FRAME_TOO_LARGE,
            ReadError::Codec(_) | ReadError::Truncated => close::PROTOCOL_VIOLATION,
            ReadError::Stream(e) => {
                debug!(error = %e, "control stream ended");
                return;
            }
        };
        Counters::bump(&self.shared.counters.protocol_violations);
        if super::WARNINGS.allow() {
            warn!(error = %error, code = close::name(code.into()), "protocol violation: closing connection");
        }
        let reason = error.to_string();
        self.peer.close(code, &reason.as_bytes()[..reason.len().min(256)]);
    }

    /// Handles a request; its reply, unless it comes later (see [`ConnState::complete`]).
    fn handle_request(&mut self, frame: RequestFrame) -> Option<ControlFrame> {
        let kind = match &frame.body {
            Request::Login { .. } => RequestKind::Login,
            Request::Logout { .. } => RequestKind::Logout,
            Request::Broadcast { .. } => RequestKind::Broadcast,
            Request::Command { .. } => RequestKind::Command,
            Request::RenewToken { .. } => RequestKind::RenewToken,
            Request::FetchMembers { .. } => RequestKind::FetchMembers,
        };
        self.request = frame.request;
        let outcome = match frame.body {
            Request::Login { room, user, token, recover } => {
                self.login(room, user, &token, recover)
            }
            Request::Logout { room } => self.logout(&room).map(Some),
            Request::Broadcast { room, payload } => self.broadcast(&room, &payload),
            Request::Command { room, to, payload } => self.command(&room, to, payload),
            Request::RenewToken { token } => self.renew_token(&token).map(Some),
            Request::FetchMembers { room, cursor, limit } => {
                self.fetch_members(&room, cursor, limit).map(Some)
            }
        };
        match outcome {
            Ok(None) => None,
            Ok(Some(outcome)) => Some(self.reply(frame.request, kind, Ok(outcome))),
            Err(refusal) => Some(self.reply(frame.request, kind, Err(refusal))),
        }
    }

    fn broadcast(&mut self, room: &str, payload: &Bytes) -> Result<Option<Outcome>, Refusal> {
        let (joined, send) = self.sender_room(room, payload)?;
        if let Some(cluster) = &self.shared.cluster {
            cluster.check()?;
            let answer = joined.submit_broadcast(&self.shared, send)?;
            self.answer_later(RequestKind::Broadcast, answer);
            return Ok(None);
        }
        let message_id = joined.broadcast(&self.shared, send)?;
        if !self.unflushed.iter().any(|r| Arc::ptr_eq(r, &joined)) {
            self.unflushed.push(joined);
        }
        Ok(Some(Outcome::Sent { message_id }))
    }

    /// Replies to the current request when the cluster has stored its send.
    fn answer_later(&mut self, kind: RequestKind, answer: Pending) {
        let request = self.request;
        self.pending.spawn(async move {
            let stored = answer.await.unwrap_or_else(|_| {
                Err(room_unavailable("the relay stopped before the cluster stored it"))
            });
            Completion::Reply {
                request,
                kind,
                outcome: stored.map(|message_id| Outcome::Sent { message_id }),
            }
        });
    }

    /// Handles a request whose answer came later (the cluster stored a send, or read a
    /// room's epoch for a login); returns its reply.
    fn complete(&mut self, completion: Completion) -> ControlFrame {
        match completion {
            Completion::Reply { request, kind, outcome } => self.reply(request, kind, outcome),
            Completion::Login { request, room, user, claims, recover, epoch, generation } => {
                self.pending_logins -= 1;
                let outcome = epoch.and_then(|epoch| {
                    let claims = self.claims_at_completion(&room, claims, generation)?;
                    self.join_room(room, user, claims, recover, Some(epoch))
                });
                self.reply(request, RequestKind::Login, outcome)
            }
        }
    }

    /// The claims a login that waited sets, checked again: its token may have expired
    /// meanwhile, and a token renewed meanwhile stays (it must grant the room too).
    fn claims_at_completion(
        &self,
        room: &str,
        claims: Option<Claims>,
        generation: u64,
    ) -> Result<Option<Claims>, Refusal> {
        let Some(claims) = claims else { return Ok(None) };
        if generation == self.claims_changes {
            if claims.expired_at(SystemTime::now()) {
                return Err((
                    ErrorCode::TOKEN_EXPIRED,
                    "the token expired during the login".into(),
                ));
            }
            return Ok(Some(claims));
        }
        match &self.claims {
            Some(current) if !current.grants_room(room) => Err((
                ErrorCode::ROOM_NOT_GRANTED,
                format!("the token renewed during the login does not grant room {room:?}"),
            )),
            _ => Ok(None),
        }
    }

    /// Hands this connection's accepted broadcasts to the receivers' lanes.
    /// Returns whether there was anything to flush.
    fn flush_rooms(&mut self) -> bool {
        let any = !self.unflushed.is_empty();
        for room in self.unflushed.drain(..) {
            room.flush(&self.shared);
        }
        any
    }

    fn reply(
        &mut self,
        request: u32,
        kind: RequestKind,
        outcome: Result<Outcome, Refusal>,
    ) -> ControlFrame {
        let outcome = outcome.unwrap_or_else(|(code, detail)| {
            self.refused(Some(request), kind, code, &detail);
            Outcome::Refused { code, detail }
        });
        ControlFrame::Reply(Reply { request, outcome })
    }

    /// Counts a refusal (of a request, or of a barrage that asked for no reply).
    fn refused(&self, request: Option<u32>, kind: RequestKind, code: ErrorCode, detail: &str) {
        Counters::bump(&self.shared.counters.requests_refused);
        self.shared.counters.refusals.record(kind, code);
        debug!(request, %code, %detail, "refused");
    }

    fn login(
        &mut self,
        room: String,
        user: User,
        token: &str,
        recover: Option<Recover>,
    ) -> Result<Option<Outcome>, Refusal> {
        check_room_id(&room).map_err(|c| (c, format!("room ID {room:?} is not valid")))?;
        check_member_id(&user.id)?;
        check_user_name(&user.name).map_err(|c| {
            let detail = "user name is empty, too long, or has control, format (bidi, \
                              zero-width) or line-separator characters";
            (c, detail.into())
        })?;
        let claims = self.verify_token(token, &user.id)?;
        if let Some(claims) = &claims
            && !claims.grants_room(&room)
        {
            return Err((
                ErrorCode::ROOM_NOT_GRANTED,
                format!("the token does not grant room {room:?}"),
            ));
        }
        self.check_join(&room, &user)?;
        if let Some(cluster) = self.shared.cluster.clone() {
            return self.cluster_login(&cluster, room, user, claims, recover);
        }
        self.join_room(room, user, claims, recover, None).map(Some)
    }

    /// A login on a node of a cluster: the room's epoch is the one of its log, so that every
    /// node's lanes carry the same (a room this node does not hold has its log read, or
    /// opened, first); a client that saw more of the room on another node than this node has
    /// applied waits for it to catch up (at most [`CATCH_UP`]).
    fn cluster_login(
        &mut self,
        cluster: &Arc<crate::cluster::Cluster>,
        room: String,
        user: User,
        claims: Option<Claims>,
        recover: Option<Recover>,
    ) -> Result<Option<Outcome>, Refusal> {
        cluster.check()?;
        let max = self.shared.config.max_rooms_per_connection;
        if self.rooms.len() + self.pending_logins >= max {
            return Err((
                ErrorCode::TOO_MANY_ROOMS,
                format!("this connection is in or logging in to {max} rooms, the maximum"),
            ));
        }
        let (request, generation) = (self.request, self.claims_changes);
        let held = self.shared.router.room(&room);
        let behind = held.as_ref().is_some_and(|held| {
            recover.is_some_and(|r| r.epoch == held.epoch && r.last_id > held.broadcast_seq())
        });
        match held {
            Some(held) if !behind => {
                self.join_room(room, user, claims, recover, Some(held.epoch)).map(Some)
            }
            Some(held) => {
                let last_id = recover.map_or(0, |r| r.last_id);
                self.pending_logins += 1;
                self.pending.spawn(async move {
                    held.wait_broadcast(last_id, CATCH_UP).await;
                    let epoch = Ok(held.epoch);
                    Completion::Login { request, room, user, claims, recover, epoch, generation }
                });
                Ok(None)
            }
            None => {
                self.shared.router.may_create(&self.shared, &user.id)?;
                let cluster = cluster.clone();
                self.pending_logins += 1;
                self.pending.spawn(async move {
                    let epoch = cluster.open_room(&room).await;
                    Completion::Login { request, room, user, claims, recover, epoch, generation }
                });
                Ok(None)
            }
        }
    }

    /// The connection's own conditions for a login to `room` as `user`.
    fn check_join(&mut self, room: &str, user: &User) -> Result<(), Refusal> {
        if let Some(current) = &self.user
            && current.id != user.id
        {
            return Err((
                ErrorCode::USER_MISMATCH,
                format!("this connection is logged in as {:?}", current.id),
            ));
        }
        self.prune_rooms();
        if self.rooms.contains_key(room) {
            return Err((ErrorCode::ALREADY_LOGGED_IN, format!("already logged in to {room:?}")));
        }
        let max = self.shared.config.max_rooms_per_connection;
        if self.rooms.len() >= max {
            return Err((
                ErrorCode::TOO_MANY_ROOMS,
                format!("this connection is already in {max} rooms, the maximum per connection"),
            ));
        }
        // Lanes whose stream the client has not accepted (rooms it is in or has left) hold
        // memory until `lane_open_timeout_ms`: no more of them than rooms allowed.
        if self.lanes.unopened() >= max {
            return Err((
                ErrorCode::TOO_MANY_ROOMS,
                format!(
                    "{max} lanes of this connection wait for the client to accept their stream"
                ),
            ));
        }
        Ok(())
    }

    /// Joins `room` once every check passed (in a cluster, `epoch` is the room's epoch in its
    /// log when this relay did not hold the room).
    fn join_room(
        &mut self,
        room: String,
        user: User,
        claims: Option<Claims>,
        recover: Option<Recover>,
        epoch: Option<u64>,
    ) -> Result<Outcome, Refusal> {
        if epoch.is_some() {
            // Checked again: the connection did other things while the log was read.
            self.check_join(&room, &user)?;
        }
        let login = Login {
            session: self.session,
            user: user.clone(),
            peer: &self.peer,
            lanes: &self.lanes,
            recover,
            epoch,
        };
        let (joined, queue, lane) = self.shared.router.join(&self.shared, &room, login)?;
        let header =
            LaneHeader { room: room.clone(), room_number: joined.number, epoch: joined.epoch };
        let span = info_span!("lane", room = %room, user = %user.id);
        let owner = LaneOwner { room: joined.clone(), user_id: user.id.clone(), lane };
        tokio::spawn(
            lane::run_writer(self.shared.clone(), self.peer.clone(), header, queue, owner)
                .instrument(span),
        );
        let room_number = joined.number;
        self.rooms.insert(room.clone(), joined);
        self.roomless_since = None;
        if let Some(claims) = claims {
            self.set_claims(claims);
        }
        debug!(room = %room, user = %user.id, "logged in");
        self.user = Some(user);
        Counters::bump(&self.shared.counters.logins);
        Ok(Outcome::LoggedIn { room_number, session: self.session })
    }

    fn logout(&mut self, room: &str) -> Result<Outcome, Refusal> {
        self.prune_rooms();
        let (Some(joined), Some(user)) = (self.rooms.remove(room), &self.user) else {
            return Err(not_logged_in(room));
        };
        if joined.leave(&self.shared, self.session, &user.id, LeaveReason::Logout, "logged out") {
            self.shared.router.remove_if_empty(&self.shared, &joined);
        }
        debug!(room, "logged out");
        Ok(Outcome::Done)
    }

    fn command(
        &mut self,
        room: &str,
        to: Vec<String>,
        payload: Bytes,
    ) -> Result<Option<Outcome>, Refusal> {
        let (joined, send) = self.sender_room(room, &payload)?;
        if let Some(cluster) = &self.shared.cluster {
            cluster.check()?;
            let answer = joined.submit_command(&self.shared, send, to)?;
            self.answer_later(RequestKind::Command, answer);
            return Ok(None);
        }
        joined.command(&self.shared, send, to).map(|message_id| Some(Outcome::Sent { message_id }))
    }

    fn fetch_members(&mut self, room: &str, cursor: u64, limit: u32) -> Result<Outcome, Refusal> {
        self.prune_rooms();
        let (Some(joined), Some(user)) = (self.rooms.get(room), &self.user) else {
            return Err(not_logged_in(room));
        };
        joined.members_page(self.session, &user.id, cursor, limit).map(Outcome::Members)
    }

    fn renew_token(&mut self, token: &str) -> Result<Outcome, Refusal> {
        let Some(user) = self.user.clone() else {
            return Err((
                ErrorCode::NOT_LOGGED_IN,
                "log in to a room before renewing its token".into(),
            ));
        };
        let Some(claims) = self.verify_token(token, &user.id)? else {
            return Ok(Outcome::Done);
        };
        self.prune_rooms();
        if let Some(room) = self.rooms.keys().find(|room| !claims.grants_room(room)) {
            return Err((
                ErrorCode::ROOM_NOT_GRANTED,
                format!("the new token does not grant room {room:?}"),
            ));
        }
        self.set_claims(claims);
        self.claims_changes += 1;
        Ok(Outcome::Done)
    }

    /// Handles one barrage datagram; returns its reply, if it asked for one
    /// (`BarrageNoReply` gets none, not even a refusal, which is counted all the same).
    fn handle_datagram(&mut self, datagram: Bytes) -> Option<ControlFrame> {
        let counters = &self.shared.counters;
        Counters::bump(&counters.datagrams_received);
        let (room_number, request, payload) = match decode_datagram::<ClientDatagram>(&datagram) {
            Ok(ClientDatagram::Barrage { room_number, request, payload }) => {
                (room_number, Some(request), payload)
            }
            Ok(ClientDatagram::BarrageNoReply { room_number, payload }) => {
                (room_number, None, payload)
            }
            Err(e) => {
                Counters::bump(&counters.datagrams_malformed);
                debug!(error = %e, len = datagram.len(), "malformed datagram dropped");
                return None;
            }
        };
        let outcome = self
            .rooms
            .values()
            .find(|r| r.number == room_number)
            .map(|r| r.name.clone())
            .ok_or_else(|| not_logged_in(&format!("number {room_number}")))
            .and_then(|room| self.sender_room(&room, &payload))
            .and_then(|(room, send)| room.barrage(&self.shared, send))
            .map(|message_id| Outcome::Sent { message_id });
        match request {
            Some(request) => Some(self.reply(request, RequestKind::Barrage, outcome)),
            None => {
                if let Err((code, detail)) = outcome {
                    self.refused(None, RequestKind::Barrage, code, &detail);
                }
                None
            }
        }
    }

    /// The room to send in and the message, after every check a sender must pass.
    fn sender_room<'a>(
        &'a self,
        room: &str,
        payload: &Bytes,
    ) -> Result<(Arc<Room>, Send<'a>), Refusal> {
        check_message(payload)?;
        let Some(joined) = self.rooms.get(room).cloned() else {
            return Err(not_logged_in(room));
        };
        let Some(user) = &self.user else {
            return Err(not_logged_in(room));
        };
        if let Some(claims) = &self.claims {
            if claims.expired_at(SystemTime::now()) {
                return Err((ErrorCode::TOKEN_EXPIRED, "the token has expired: renew it".into()));
            }
            if !claims.publish {
                return Err((
                    ErrorCode::PUBLISH_NOT_GRANTED,
                    "the token only allows listening".into(),
                ));
            }
            // A later login may have brought a token for other rooms only.
            if !claims.grants_room(room) {
                return Err((
                    ErrorCode::ROOM_NOT_GRANTED,
                    format!("the current token does not grant room {room:?}"),
                ));
            }
        }
        let send = Send {
            session: self.session,
            user_id: &user.id,
            payload: payload.clone(),
            outside: None,
        };
        Ok((joined, send))
    }

    /// Verifies a token for `user_id`; `None` in insecure dev-auth mode.
    fn verify_token(&self, token: &str, user_id: &str) -> Result<Option<Claims>, Refusal> {
        if self.shared.config.insecure_dev_auth {
            return Ok(None);
        }
        if token.len() > MAX_TOKEN {
            return Err((
                ErrorCode::TOKEN_INVALID,
                format!("the token is longer than {MAX_TOKEN} bytes"),
            ));
        }
        let claims = self.shared.tokens.check(token).map_err(|e| (e.code(), e.to_string()))?;
        if claims.sub != user_id {
            return Err((
                ErrorCode::TOKEN_USER_MISMATCH,
                format!("the token was issued to {:?}, not {user_id:?}", claims.sub),
            ));
        }
        Ok(Some(claims))
    }

    fn set_claims(&mut self, claims: Claims) {
        let now = SystemTime::now();
        let warn_secs = self.shared.config.token_warning_secs;
        let until_warning = claims.exp.saturating_sub(warn_secs).saturating_sub(unix_seconds(now));
        // A token that never expires in practice (exp near u64::MAX) gets no warning.
        self.token_warning = Instant::now()
            .checked_add(Duration::from_secs(until_warning))
            .map(|at| (at, claims.exp));
        self.claims = Some(claims);
    }

    /// Forgets rooms this connection was replaced in (kicked) or dropped from (too slow).
    fn prune_rooms(&mut self) {
        let (session, user) =
            (self.session, self.user.as_ref().map(|u| u.id.as_str()).unwrap_or(""));
        self.rooms.retain(|_, room| room.is_member(session, user));
    }

    fn leave_all(&mut self, reason: LeaveReason, detail: &str) {
        // Broadcasts accepted from this connection go out even when it ends mid-burst.
        self.flush_rooms();
        let Some(user) = &self.user else { return };
        for (_, room) in self.rooms.drain() {
            if room.leave(&self.shared, self.session, &user.id, reason, detail) {
                self.shared.router.remove_if_empty(&self.shared, &room);
            }
        }
        debug!("connection cleaned up");
    }
}

fn not_logged_in(room: &str) -> Refusal {
    (ErrorCode::NOT_LOGGED_IN, format!("not logged in to room {room}"))
}

async fn write_frames(stream: &mut SendStream, frames: &[ControlFrame]) -> Result<(), ()> {
    let mut buf = BytesMut::new();
    for frame in frames {
        encode_frame(frame, &mut buf)
            .map_err(|e| warn!(error = %e, "cannot encode a control frame"))?;
    }
    stream.write_all(&buf).await.map_err(|e| debug!(error = %e, "control stream write failed"))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
