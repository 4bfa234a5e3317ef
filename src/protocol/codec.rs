//! Framing and encoding: a 4-byte big-endian length, then a bincode 2 body (standard config:
//! little-endian, variable-length integers). Datagrams are a bare bincode body.

use bincode::config::{Config, standard};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::limits::{MAX_DATAGRAM_BUDGET, MAX_SERVER_FRAME};

/// Bytes in the length prefix of a stream frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// The bincode configuration of every frame body. The limit stops a hostile length field
/// inside a body from allocating more than the largest legal frame.
fn config() -> impl Config {
    standard().with_limit::<MAX_SERVER_FRAME>()
}

/// Bytes a datagram's decoding may claim. bincode counts in-memory sizes, so each integer of a
/// barrage (at most six: variant, four fields, payload length) may claim up to 7 bytes more
/// than it takes on the wire; any datagram within [`MAX_DATAGRAM_BUDGET`] still decodes.
const DATAGRAM_CLAIM_LIMIT: usize = MAX_DATAGRAM_BUDGET + 64;

/// The bincode configuration of datagrams: as [`config`], with a limit to match their size,
/// so a hostile payload length in a 1 KiB datagram cannot allocate a 128 KiB buffer.
fn datagram_config() -> impl Config {
    standard().with_limit::<DATAGRAM_CLAIM_LIMIT>()
}

/// Why bytes could not be decoded (or, rarely, a value encoded).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// A frame announced a body longer than the stream's bound.
    #[error("frame of {len} bytes exceeds the {max}-byte bound")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The bound for this stream.
        max: usize,
    },
    /// The body is not a valid encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A value could not be encoded (a bug: every wire type is encodable within the bounds).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Appends one frame (length prefix and body) holding `msg` to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut BytesMut) -> Result<(), CodecError> {
    let start = out.len();
    out.put_u32(0);
    let mut writer = out.writer();
    let written = bincode::serde::encode_into_std_write(msg, &mut writer, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let out = writer.into_inner();
    let len = u32::try_from(written).map_err(|_| CodecError::Encode("frame too long".into()))?;
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Encodes `msg` as a bare body (no length prefix), e.g. a datagram or a message that will be
/// spliced into several frames.
pub fn encode_body<T: Serialize>(msg: &T) -> Result<Bytes, CodecError> {
    bincode::serde::encode_to_vec(msg, config())
        .map(Bytes::from)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Takes one complete frame off the front of `buf` and decodes it.
///
/// Returns `Ok(None)` while the frame is incomplete (read more and call again). A length above
/// `max` is refused before anything is allocated for the body.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<T>, CodecError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    if buf.len() < FRAME_HEADER_LEN + len {
        buf.reserve(FRAME_HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(FRAME_HEADER_LEN);
    let body = buf.split_to(len);
    decode_body(&body).map(Some)
}

/// Decodes a whole body; leftover bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    whole(body, bincode::serde::decode_from_slice(body, config()))
}

/// Decodes a datagram, refusing one longer than [`MAX_DATAGRAM_BUDGET`] unread.
pub fn decode_datagram<T: DeserializeOwned>(datagram: &[u8]) -> Result<T, CodecError> {
    if datagram.len() > MAX_DATAGRAM_BUDGET {
        return Err(CodecError::TooLarge { len: datagram.len(), max: MAX_DATAGRAM_BUDGET });
    }
    whole(datagram, bincode::serde::decode_from_slice(datagram, datagram_config()))
}

/// The decoded value, if it used all of `body`.
fn whole<T>(
    body: &[u8],
    decoded: Result<(T, usize), bincode::error::DecodeError>,
) -> Result<T, CodecError> {
    let (value, used) = decoded.map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

/// The variant index of [`super::LaneEvent::Broadcasts`] in its bincode encoding.
const BROADCASTS_VARIANT: u32 = 2;

/// Appends a `LaneEvent::Broadcasts` frame built from messages that were each encoded once with
/// [`encode_body`] (a `BroadcastMessage` body). The result is byte-for-byte what
/// [`encode_frame`] gives for the same list, without encoding any message again: one encoding
/// per broadcast is shared by every receiver's batch.
pub fn encode_broadcast_batch(encoded: &[Bytes], out: &mut BytesMut) -> Result<(), CodecError> {
    let start = out.len();
    out.put_u32(0);
    let mut writer = out.writer();
    let cfg = standard();
    bincode::encode_into_std_write(BROADCASTS_VARIANT, &mut writer, cfg)
        .and_then(|_| bincode::encode_into_std_write(encoded.len() as u64, &mut writer, cfg))
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let out = writer.into_inner();
    for message in encoded {
        out.extend_from_slice(message);
    }
    let len = u32::try_from(out.len() - start - FRAME_HEADER_LEN)
        .map_err(|_| CodecError::Encode("batch too long".into()))?;
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    fn user(id_len: usize, name_len: usize) -> User {
        User { id: "u".repeat(id_len), name: "n".repeat(name_len) }
    }

    fn max_payload() -> Bytes {
        Bytes::from(vec![0xAB; MAX_PAYLOAD])
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        let mut buf = BytesMut::new();
        encode_frame(&msg, &mut buf).expect("encode");
        let whole = buf.clone();
        // Every strict prefix is incomplete, never an error.
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_frame::<T>(&mut part, MAX_SERVER_FRAME), Ok(None), "cut at {cut}");
        }
        let decoded: T = decode_frame(&mut buf, MAX_SERVER_FRAME).expect("decode").expect("whole");
        assert_eq!(decoded, msg);
        assert!(buf.is_empty());
    }

    fn sample_requests() -> Vec<RequestFrame> {
        let bodies = vec![
            Request::Login {
                room: "lobby".into(),
                user: user(5, 5),
                token: "t.o.k".into(),
                recover: Some(Recover { epoch: u64::MAX, last_id: 7 }),
            },
            Request::Logout { room: "lobby".into() },
            Request::Broadcast { room: "lobby".into(), payload: Bytes::from_static(b"hi") },
            Request::Command {
                room: "lobby".into(),
                to: vec!["bob".into(), "carol".into()],
                payload: Bytes::from_static(b"go"),
            },
            Request::RenewToken { token: "new".into() },
            Request::FetchMembers { room: "lobby".into(), cursor: u64::MAX, limit: 0 },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| RequestFrame { request: i as u32, body })
            .collect()
    }

    #[test]
    fn requests_round_trip() {
        for frame in sample_requests() {
            round_trip(frame);
        }
    }

    #[test]
    fn control_frames_round_trip() {
        let outcomes = vec![
            Outcome::LoggedIn { room_number: 7, session: u32::MAX },
            Outcome::Sent { message_id: u64::MAX },
            Outcome::Done,
            Outcome::Refused { code: ErrorCode::ROOM_FULL, detail: "full".into() },
            Outcome::Members(MemberPage {
                count: 10_001,
                members: vec![Member { session: 9, user: user(3, 4) }],
                next: (7 << 32) | 9,
            }),
        ];
        for outcome in outcomes {
            round_trip(ControlFrame::Reply(Reply { request: 3, outcome }));
        }
        round_trip(ControlFrame::TokenWillExpire { expires_at_ms: 1_700_000_000_000 });
    }

    #[test]
    fn lane_frames_round_trip() {
        round_trip(LaneHeader { room: "r".repeat(MAX_ROOM_ID), room_number: 1, epoch: u64::MAX });
        round_trip(LaneEvent::Recovered { complete: false, missed: Some((3, 9)), replayed: 4 });
        let member = Member { session: 9, user: user(3, 4) };
        round_trip(LaneEvent::UsersJoined(vec![member.clone(), member.clone()]));
        round_trip(LaneEvent::UsersLeft(vec![member]));
        let message =
            BroadcastMessage { id: 1, sent_at_ms: 2, from: user(1, 1), payload: max_payload() };
        round_trip(LaneEvent::Broadcasts(vec![message]));
        round_trip(LaneEvent::Command(CommandMessage {
            id: 4,
            sent_at_ms: 5,
            from: user(2, 2),
            payload: Bytes::from_static(b"x"),
        }));
        round_trip(LaneEvent::Closed { code: ErrorCode::LOGGED_OUT, detail: String::new() });
        round_trip(LaneEvent::MemberCount(u32::MAX));
        let page = MemberPage { count: 2, members: vec![], next: MEMBERS_FROM_START };
        round_trip(LaneEvent::MemberPage(page));
    }

    #[test]
    fn datagrams_round_trip() {
        let up = ClientDatagram::Barrage { room_number: 1, request: 2, payload: max_payload() };
        assert_eq!(decode_datagram::<ClientDatagram>(&encode_body(&up).unwrap()), Ok(up));
        for (room_number, payload) in [(1, max_payload()), (u32::MAX, Bytes::from_static(b"x"))] {
            let up = ClientDatagram::BarrageNoReply { room_number, payload };
            let body = encode_body(&up).unwrap();
            assert_eq!(decode_datagram::<ClientDatagram>(&body), Ok(up));
            // Truncated, it is refused (a datagram arrives whole or not at all).
            for cut in 0..body.len() {
                assert!(decode_datagram::<ClientDatagram>(&body[..cut]).is_err(), "cut at {cut}");
            }
        }
        let down = ServerDatagram::Barrage(BarrageMessage {
            room_number: 1,
            id: 2,
            sent_at_ms: 3,
            sender: 4,
            payload: max_payload(),
        });
        assert_eq!(decode_datagram::<ServerDatagram>(&encode_body(&down).unwrap()), Ok(down));
    }

    #[test]
    fn worst_case_barrage_datagram_fits_budget() {
        let down = ServerDatagram::Barrage(BarrageMessage {
            room_number: u32::MAX,
            id: u64::MAX,
            sent_at_ms: u64::MAX,
            sender: u32::MAX,
            payload: max_payload(),
        });
        let len = encode_body(&down).unwrap().len();
        assert!(len <= MAX_DATAGRAM_BUDGET, "server barrage datagram is {len} bytes");
        let up = ClientDatagram::Barrage {
            room_number: u32::MAX,
            request: u32::MAX,
            payload: max_payload(),
        };
        let len = encode_body(&up).unwrap().len();
        assert!(len <= MAX_DATAGRAM_BUDGET, "client barrage datagram is {len} bytes");
        let up = ClientDatagram::BarrageNoReply { room_number: u32::MAX, payload: max_payload() };
        let len = encode_body(&up).unwrap().len();
        assert_eq!(len, 1033, "the size docs/PROTOCOL.md gives");
    }

    #[test]
    fn worst_case_frames_fit_their_bounds() {
        let login = RequestFrame {
            request: u32::MAX,
            body: Request::Login {
                room: "r".repeat(MAX_ROOM_ID),
                user: user(MAX_USER_ID, MAX_USER_NAME),
                token: "t".repeat(MAX_TOKEN),
                recover: Some(Recover { epoch: u64::MAX, last_id: u64::MAX }),
            },
        };
        let command = RequestFrame {
            request: u32::MAX,
            body: Request::Command {
                room: "r".repeat(MAX_ROOM_ID),
                to: vec!["u".repeat(MAX_USER_ID); MAX_COMMAND_TARGETS],
                payload: max_payload(),
            },
        };
        for frame in [login, command] {
            assert!(encode_body(&frame).unwrap().len() <= MAX_REQUEST_FRAME);
        }
        let message = BroadcastMessage {
            id: u64::MAX,
            sent_at_ms: u64::MAX,
            from: user(MAX_USER_ID, MAX_USER_NAME),
            payload: max_payload(),
        };
        let batch = LaneEvent::Broadcasts(vec![message; MAX_BATCH]);
        assert!(encode_body(&batch).unwrap().len() <= MAX_SERVER_FRAME);
        let member = Member { session: u32::MAX, user: user(MAX_USER_ID, MAX_USER_NAME) };
        let users = LaneEvent::UsersJoined(vec![member.clone(); MAX_USERS_PER_UPDATE]);
        assert!(encode_body(&users).unwrap().len() <= MAX_SERVER_FRAME);
        let page =
            MemberPage { count: u32::MAX, members: vec![member; MAX_MEMBER_PAGE], next: u64::MAX };
        let reply = ControlFrame::Reply(Reply {
            request: u32::MAX,
            outcome: Outcome::Members(page.clone()),
        });
        assert!(encode_body(&reply).unwrap().len() <= MAX_SERVER_FRAME);
        assert!(encode_body(&LaneEvent::MemberPage(page)).unwrap().len() <= MAX_SERVER_FRAME);
    }

    #[test]
    fn borrowed_broadcast_encodes_like_the_owned_one() {
        let owned = BroadcastMessage {
            id: 77,
            sent_at_ms: 1_700_000_000_123,
            from: user(MAX_USER_ID, MAX_USER_NAME),
            payload: max_payload(),
        };
        let borrowed = BroadcastRef {
            id: owned.id,
            sent_at_ms: owned.sent_at_ms,
            from: &owned.from,
            payload: &owned.payload,
        };
        assert_eq!(encode_body(&borrowed).unwrap(), encode_body(&owned).unwrap());
    }

    #[test]
    fn spliced_batch_equals_encoded_batch() {
        let messages: Vec<BroadcastMessage> = (1..=MAX_BATCH as u64)
            .map(|id| BroadcastMessage {
                id: id * 1000,
                sent_at_ms: 1_700_000_000_000 + id,
                from: user(id as usize % 7 + 1, 300 - id as usize),
                payload: Bytes::from(vec![id as u8; id as usize * 20]),
            })
            .collect();
        for n in [0, 1, 2, MAX_BATCH] {
            let encoded: Vec<Bytes> =
                messages[..n].iter().map(|m| encode_body(m).unwrap()).collect();
            let mut spliced = BytesMut::new();
            encode_broadcast_batch(&encoded, &mut spliced).unwrap();
            let mut direct = BytesMut::new();
            encode_frame(&LaneEvent::Broadcasts(messages[..n].to_vec()), &mut direct).unwrap();
            assert_eq!(spliced, direct, "batch of {n}");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }

    fn frame_hex<T: Serialize>(msg: &T) -> String {
        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf).unwrap();
        hex(&buf)
    }

    /// The worked examples in docs/PROTOCOL.md, byte for byte.
    #[test]
    fn documented_examples_are_exact() {
        let logout = RequestFrame { request: 1, body: Request::Logout { room: "lobby".into() } };
        assert_eq!(frame_hex(&logout), "00 00 00 08 01 01 05 6c 6f 62 62 79");
        let alice = User { id: "alice".into(), name: "Alice".into() };
        let login = |recover| RequestFrame {
            request: 1,
            body: Request::Login {
                room: "lobby".into(),
                user: alice.clone(),
                token: "t".into(),
                recover,
            },
        };
        assert_eq!(
            frame_hex(&login(None)),
            "00 00 00 17 01 00 05 6c 6f 62 62 79 05 61 6c 69 63 65 05 41 6c 69 63 65 01 74 00"
        );
        assert!(
            frame_hex(&login(Some(Recover { epoch: 7, last_id: 5 }))).ends_with("01 74 01 07 05")
        );
        let reply = |request, outcome| ControlFrame::Reply(Reply { request, outcome });
        assert_eq!(
            frame_hex(&reply(1, Outcome::LoggedIn { room_number: 1, session: 3 })),
            "00 00 00 05 00 01 00 01 03"
        );
        assert_eq!(
            frame_hex(&reply(7, Outcome::Sent { message_id: 300 })),
            "00 00 00 06 00 07 01 fb 2c 01"
        );
        let refused =
            Outcome::Refused { code: ErrorCode::USER_RATE_LIMITED, detail: String::new() };
        assert_eq!(frame_hex(&reply(2, refused)), "00 00 00 07 00 02 03 fb a2 0f 00");
        let header = LaneHeader { room: "lobby".into(), room_number: 1, epoch: 7 };
        assert_eq!(frame_hex(&header), "00 00 00 08 05 6c 6f 62 62 79 01 07");
        let recovered = LaneEvent::Recovered { complete: false, missed: Some((6, 7)), replayed: 3 };
        assert_eq!(frame_hex(&recovered), "00 00 00 06 05 00 01 06 07 03");
        let bob = User { id: "bob".into(), name: "Bob".into() };
        let message = BroadcastMessage {
            id: 1,
            sent_at_ms: 1_700_000_000_000,
            from: bob,
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(
            frame_hex(&LaneEvent::Broadcasts(vec![message])),
            "00 00 00 17 02 01 01 fd 00 68 e5 cf 8b 01 00 00 03 62 6f 62 03 42 6f 62 02 68 69"
        );
        let fetch = |request, cursor| RequestFrame {
            request,
            body: Request::FetchMembers { room: "lobby".into(), cursor, limit: 50 },
        };
        assert_eq!(frame_hex(&fetch(4, 0)), "00 00 00 0a 04 05 05 6c 6f 62 62 79 00 32");
        let cursor = 0x8000_0007_0000_0003;
        assert_eq!(
            frame_hex(&fetch(5, cursor)),
            "00 00 00 12 05 05 05 6c 6f 62 62 79 fd 03 00 00 00 07 00 00 80 32"
        );
        let bob_member = Member { session: 3, user: User { id: "bob".into(), name: "Bob".into() } };
        let page = MemberPage { count: 1001, members: vec![bob_member], next: cursor };
        assert_eq!(
            frame_hex(&reply(4, Outcome::Members(page.clone()))),
            "00 00 00 19 00 04 04 fb e9 03 01 03 03 62 6f 62 03 42 6f 62 fd 03 00 00 00 07 00 00 80"
        );
        assert_eq!(
            frame_hex(&LaneEvent::MemberPage(page)),
            "00 00 00 17 07 fb e9 03 01 03 03 62 6f 62 03 42 6f 62 fd 03 00 00 00 07 00 00 80"
        );
        assert_eq!(frame_hex(&LaneEvent::MemberCount(1001)), "00 00 00 04 06 fb e9 03");
        let up = ClientDatagram::Barrage {
            room_number: 1,
            request: 9,
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(hex(&encode_body(&up).unwrap()), "00 01 09 02 68 69");
        // The acknowledged form as revision 1 clients write it still decodes.
        assert_eq!(
            decode_datagram::<ClientDatagram>(&[0x00, 0x01, 0x09, 0x02, 0x68, 0x69]),
            Ok(up)
        );
        let no_reply =
            ClientDatagram::BarrageNoReply { room_number: 1, payload: Bytes::from_static(b"hi") };
        assert_eq!(hex(&encode_body(&no_reply).unwrap()), "01 01 02 68 69");
        let down = ServerDatagram::Barrage(BarrageMessage {
            room_number: 1,
            id: 5,
            sent_at_ms: 1_700_000_000_000,
            sender: 3,
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(
            hex(&encode_body(&down).unwrap()),
            "00 01 05 fd 00 68 e5 cf 8b 01 00 00 03 02 68 69"
        );
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert_eq!(
            decode_frame::<RequestFrame>(&mut buf, MAX_REQUEST_FRAME),
            Err(CodecError::TooLarge { len: u32::MAX as usize, max: MAX_REQUEST_FRAME })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = encode_body(&sample_requests()[1]).unwrap().to_vec();
        body.push(0);
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        assert_eq!(
            decode_frame::<RequestFrame>(&mut buf, MAX_REQUEST_FRAME),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_list_longer_than_its_maximum_does_not_decode() {
        let member = Member { session: 1, user: user(1, 1) };
        let message =
            BroadcastMessage { id: 1, sent_at_ms: 2, from: user(1, 1), payload: max_payload() };
        let command = |targets: usize| RequestFrame {
            request: 1,
            body: Request::Command {
                room: "r".into(),
                to: vec!["t".into(); targets],
                payload: Bytes::from_static(b"x"),
            },
        };
        assert!(
            decode_body::<RequestFrame>(&encode_body(&command(MAX_COMMAND_TARGETS)).unwrap())
                .is_ok()
        );
        let too_long = encode_body(&command(MAX_COMMAND_TARGETS + 1)).unwrap();
        assert!(matches!(decode_body::<RequestFrame>(&too_long), Err(CodecError::Malformed(_))));
        for (event, max) in [
            (
                LaneEvent::UsersJoined(vec![member.clone(); MAX_USERS_PER_UPDATE + 1]),
                MAX_USERS_PER_UPDATE,
            ),
            (LaneEvent::UsersLeft(vec![member; MAX_USERS_PER_UPDATE + 1]), MAX_USERS_PER_UPDATE),
            (LaneEvent::Broadcasts(vec![message; MAX_BATCH + 1]), MAX_BATCH),
            (
                LaneEvent::MemberPage(MemberPage {
                    count: 1,
                    members: vec![Member { session: 1, user: user(1, 1) }; MAX_MEMBER_PAGE + 1],
                    next: 0,
                }),
                MAX_MEMBER_PAGE,
            ),
        ] {
            let body = encode_body(&event).unwrap();
            let error = decode_body::<LaneEvent>(&body).unwrap_err();
            assert!(error.to_string().contains(&format!("at most {max}")), "{error}");
        }
    }

    #[test]
    fn fuzzer_findings_are_refused() {
        // A command claiming 65532 targets (serde used to preallocate 1 MiB for them).
        let targets = [0x03, 0x03, 0x00, 0xFB, 0xFC, 0xFF, 0x6C, 0x2B];
        let error = decode_body::<RequestFrame>(&targets).unwrap_err();
        assert!(error.to_string().contains("at most 100"), "{error}");
        // A 6-byte barrage claiming a 26010-byte payload (it used to be allocated).
        let payload = [0x00, 0x01, 0x02, 0xFB, 0x9A, 0x65];
        let error = decode_datagram::<ClientDatagram>(&payload).unwrap_err();
        assert!(error.to_string().contains("LimitExceeded"), "{error}");
    }

    #[test]
    fn datagram_claim_limit_admits_every_datagram_within_the_budget() {
        // An oversize payload that still fits the budget decodes (the server answers it with
        // PAYLOAD_TOO_LARGE), even with every integer at its widest.
        let overhead = encode_body(&ClientDatagram::Barrage {
            room_number: u32::MAX,
            request: u32::MAX,
            payload: Bytes::new(),
        })
        .unwrap()
        .len();
        let payload = Bytes::from(vec![1; MAX_DATAGRAM_BUDGET - overhead - 2]);
        let up = ClientDatagram::Barrage { room_number: u32::MAX, request: u32::MAX, payload };
        let body = encode_body(&up).unwrap();
        assert!(body.len() <= MAX_DATAGRAM_BUDGET);
        assert_eq!(decode_datagram::<ClientDatagram>(&body), Ok(up));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for garbage in [&[0xFFu8; 8][..], &[0x00], &[0x05, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF], &[]] {
            assert!(matches!(decode_body::<RequestFrame>(garbage), Err(CodecError::Malformed(_))));
            assert!(decode_datagram::<ClientDatagram>(garbage).is_err());
        }
        // A string claiming 2^32 bytes inside a small body is refused, not allocated.
        let mut huge = vec![0u8, 0u8, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF];
        huge.extend_from_slice(b"abc");
        assert!(decode_body::<RequestFrame>(&huge).is_err());
        let oversize = vec![0u8; MAX_DATAGRAM_BUDGET + 1];
        assert!(matches!(
            decode_datagram::<ClientDatagram>(&oversize),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
