//! The `/v1` routes: the application's backend sends into rooms, lists them, kicks users,
//! closes rooms and mints tokens. Each route validates with the same functions as the QUIC
//! connection task and calls the same room operations; the room's frequency limits apply.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::HttpState;
use super::error::ApiError;
use crate::cluster::wire::AbsentReason;
use crate::protocol::{
    ErrorCode, SYSTEM_USER_ID, SYSTEM_USER_NAME, User, check_room_id, check_user_id,
    check_user_name,
};
use crate::server::room::{
    Outside, Pending, Room, SERVER_SESSION, Send, check_member_id, check_message, room_unavailable,
};

/// Longest validity of a token minted by `POST /v1/tokens`.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest `reason` of a kick or a close, in bytes: it travels to every member in its lane's
/// `Closed` event, which must stay far below the largest frame a client reads.
pub const MAX_REASON: usize = 256;

/// Validity of a minted token when the request names none.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The `/v1` routes (mounted under `/v1`, behind the API key).
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room}", axum::routing::delete(close_room))
        .route("/rooms/{room}/members", get(members))
        .route("/rooms/{room}/broadcast", post(broadcast))
        .route("/rooms/{room}/barrage", post(barrage))
        .route("/rooms/{room}/command", post(command))
        .route("/rooms/{room}/kick", post(kick))
        .route("/tokens", post(mint_token))
}

/// A message to send: text or base64 bytes, and optionally who sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// The payload as UTF-8 text.
    #[serde(default)]
    pub payload: Option<String>,
    /// The payload as base64 (standard alphabet, padded), for bytes that are not text.
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// Who receivers see as the sender; the system sender (`system`, "System") by default.
    #[serde(default)]
    pub from: Option<User>,
    /// For `command`: the target user IDs; empty or absent means every member.
    #[serde(default)]
    pub to: Vec<String>,
}

/// The answer to a send.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sent {
    /// The message ID: per room 1, 2, 3, … for broadcasts; unique per room for barrage and
    /// commands.
    pub message_id: u64,
}

/// A room in `GET /v1/rooms`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room ID.
    pub room: String,
    /// Members now.
    pub members: usize,
}

/// The body of `POST /v1/rooms/{room}/kick`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    /// The user ID to remove.
    pub user: String,
    /// Shown to the user in its lane's `Closed` event.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The query of `DELETE /v1/rooms/{room}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseQuery {
    /// Shown to the members in their lanes' `Closed` event.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user ID the token is for.
    pub user: String,
    /// Rooms it grants; absent means every room.
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    /// Seconds it is valid (1 to 2592000, 30 days); 3600 by default.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Whether it may send (default `true`); `false` makes a listen-only token.
    #[serde(default)]
    pub publish: Option<bool>,
}

/// A minted token.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Token {
    /// The JWT to pass to a login.
    pub token: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn list_rooms(State(state): State<HttpState>) -> Json<Vec<RoomInfo>> {
    let mut rooms: Vec<RoomInfo> = state
        .shared
        .router
        .rooms()
        .iter()
        .map(|room| RoomInfo { room: room.name.clone(), members: room.member_count() })
        .collect();
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    Json(rooms)
}

async fn members(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Vec<User>> {
    let Path(room) = path?;
    let mut members = existing_room(&state, &room)?.members();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(members))
}

async fn broadcast(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> ApiResult<Sent> {
    let Path(room) = path?;
    let message = Message::parse(no_targets(body?, "broadcast")?)?;
    let joined = existing_room(&state, &room)?;
    let shared = &state.shared;
    if let Some(cluster) = &shared.cluster {
        cluster.check()?;
        let answer = joined.submit_broadcast(shared, message.send())?;
        return Ok(Json(Sent { message_id: stored(answer).await? }));
    }
    let message_id = joined.broadcast(shared, message.send())?;
    joined.flush(shared);
    Ok(Json(Sent { message_id }))
}

async fn barrage(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> ApiResult<Sent> {
    let Path(room) = path?;
    let body = no_targets(body?, "barrage")?;
    if body.from.is_some() {
        // A barrage datagram names its sender by session only; the API's is no member's.
        return Err(ApiError::new(
            ErrorCode::BAD_REQUEST,
            "a barrage cannot name a sender (from): receivers see the server API's session, 0",
        ));
    }
    let message = Message::parse(body)?;
    let joined = existing_room(&state, &room)?;
    let message_id = joined.barrage(&state.shared, message.send())?;
    Ok(Json(Sent { message_id }))
}

async fn command(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> ApiResult<Sent> {
    let Path(room) = path?;
    let Json(mut body) = body?;
    let to = std::mem::take(&mut body.to);
    let message = Message::parse(Json(body))?;
    let joined = existing_room(&state, &room)?;
    if let Some(cluster) = &state.shared.cluster {
        cluster.check()?;
        let answer = joined.submit_command(&state.shared, message.send(), to)?;
        return Ok(Json(Sent { message_id: stored(answer).await? }));
    }
    let message_id = joined.command(&state.shared, message.send(), to)?;
    Ok(Json(Sent { message_id }))
}

async fn kick(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<KickBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(room) = path?;
    let Json(body) = body?;
    let joined = existing_room(&state, &room)?;
    let reason = checked_reason(body.reason, "removed by the application")?;
    let shared = &state.shared;
    if let Some(cluster) = &shared.cluster
        && let Some(Some(link)) = joined.member_link(&body.user)
    {
        // A member of another node: its node closes its lane when the record arrives.
        cluster.check()?;
        cluster.member_removed(&room, &body.user, link, AbsentReason::Kicked, &reason);
        return Ok(Json(serde_json::json!({ "kicked": body.user })));
    }
    match joined.kick(shared, &body.user, &reason) {
        None => Err(ApiError::new(
            ErrorCode::USER_NOT_FOUND,
            format!("{:?} is not in room {room:?}", body.user),
        )),
        Some(empty) => {
            if empty {
                shared.router.remove_if_empty(shared, &joined);
            }
            Ok(Json(serde_json::json!({ "kicked": body.user })))
        }
    }
}

async fn close_room(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<CloseQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (Path(room), Query(query)) = (path?, query?);
    check_room(&room)?;
    let reason = checked_reason(query.reason, "closed by the application")?;
    if let Some(cluster) = &state.shared.cluster {
        // Every node, this one included, closes it when the log's entry arrives.
        existing_room(&state, &room)?;
        cluster.close_room(&room, &reason).await?;
        return Ok(Json(serde_json::json!({ "closed": room })));
    }
    if !state.shared.router.close_room(&state.shared, &room, &reason) {
        return Err(no_room(&room));
    }
    Ok(Json(serde_json::json!({ "closed": room })))
}

async fn mint_token(
    State(state): State<HttpState>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> ApiResult<Token> {
    let Json(request) = body?;
    check_member_id(&request.user)?;
    for room in request.rooms.iter().flatten() {
        check_room(room)?;
    }
    let ttl = Duration::from_secs(request.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL.as_secs()));
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::new(
            ErrorCode::BAD_REQUEST,
            format!("ttl_secs must be from 1 to {}", MAX_TOKEN_TTL.as_secs()),
        ));
    }
    let publish = request.publish.unwrap_or(true);
    let token =
        state.shared.tokens.mint(&request.user, request.rooms, publish, ttl).map_err(|e| {
            ApiError::new(ErrorCode::INTERNAL, format!("cannot sign the token: {e}"))
        })?;
    let claims = state
        .shared
        .tokens
        .verify(&token)
        .map_err(|code| ApiError::new(code, "the minted token does not verify"))?;
    Ok(Json(Token { token, expires_at_ms: claims.exp * 1000 }))
}

/// A checked message and its sender.
struct Message {
    payload: Bytes,
    from: User,
    /// Whether the sender was named (its own user limits apply) or is the system.
    named: bool,
}

impl Message {
    fn parse(Json(body): Json<MessageBody>) -> Result<Message, ApiError> {
        let payload = match (body.payload, body.payload_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map(Bytes::from)
                .map_err(|e| {
                    ApiError::new(ErrorCode::BAD_REQUEST, format!("payload_base64: {e}"))
                })?,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BAD_REQUEST,
                    "give exactly one of payload (text) and payload_base64",
                ));
            }
        };
        check_message(&payload)?;
        let named = body.from.is_some();
        let from = body
            .from
            .unwrap_or_else(|| User { id: SYSTEM_USER_ID.into(), name: SYSTEM_USER_NAME.into() });
        check_user_id(&from.id)
            .map_err(|code| ApiError::new(code, format!("from.id {:?} is not valid", from.id)))?;
        if named && from.id == SYSTEM_USER_ID {
            return Err(ApiError::new(
                ErrorCode::INVALID_USER_ID,
                format!("from.id {SYSTEM_USER_ID:?} is the default sender's: leave from out"),
            ));
        }
        check_user_name(&from.name).map_err(|code| {
            ApiError::new(code, "from.name is empty, too long or has forbidden characters")
        })?;
        Ok(Message { payload, from, named })
    }

    fn send(&self) -> Send<'_> {
        Send {
            session: SERVER_SESSION,
            user_id: &self.from.id,
            payload: self.payload.clone(),
            outside: Some(Outside { user: &self.from, user_limits: self.named }),
        }
    }
}

/// `body` if it names no targets: only a command has them, and a broadcast or barrage that
/// named some would reach everyone.
fn no_targets(body: Json<MessageBody>, kind: &str) -> Result<Json<MessageBody>, ApiError> {
    if !body.to.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BAD_REQUEST,
            format!("a {kind} reaches every member: to (targets) is only for command"),
        ));
    }
    Ok(body)
}

/// The reason given for a kick or close, at most [`MAX_REASON`] bytes, or `default`.
fn checked_reason(reason: Option<String>, default: &str) -> Result<String, ApiError> {
    match reason {
        Some(reason) if reason.len() > MAX_REASON => Err(ApiError::new(
            ErrorCode::BAD_REQUEST,
            format!("reason is {} bytes; the limit is {MAX_REASON}", reason.len()),
        )),
        // A query decodes invalid UTF-8 to U+FFFD; members would see it as text.
        Some(reason) if check_user_name(&reason).is_err() || reason.contains('\u{FFFD}') => {
            Err(ApiError::new(
                ErrorCode::BAD_REQUEST,
                "reason must be UTF-8 text without control, format (bidi, zero-width) or \
                 line-separator characters",
            ))
        }
        Some(reason) => Ok(reason),
        None => Ok(default.to_owned()),
    }
}

/// The ID the cluster gave a send handed to a room's publisher.
async fn stored(answer: Pending) -> Result<u64, ApiError> {
    let stored = answer.await.unwrap_or_else(|_| {
        Err(room_unavailable("the relay stopped before the cluster stored it"))
    });
    Ok(stored?)
}

fn check_room(room: &str) -> Result<(), ApiError> {
    check_room_id(room)
        .map_err(|code| ApiError::new(code, format!("room ID {room:?} is not valid")))
}

fn no_room(room: &str) -> ApiError {
    ApiError::new(ErrorCode::ROOM_NOT_FOUND, format!("no room {room:?} on this relay"))
}

/// The room `room`, which must exist (rooms are created by logins, not by the API).
fn existing_room(state: &HttpState, room: &str) -> Result<std::sync::Arc<Room>, ApiError> {
    check_room(room)?;
    state.shared.router.room(room).ok_or_else(|| no_room(room))
}
