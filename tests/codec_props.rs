//! Property tests of the codec, bounded so they run in every `cargo test`: arbitrary valid
//! messages of every wire type round-trip; arbitrary bytes never panic a decoder nor decode
//! with bytes left over; frames split at arbitrary points decode the same; an oversize length
//! is refused from the header alone. (The `cargo fuzz` targets under `fuzz/` go further.)

use std::fmt::Debug;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use qrelay::protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Cases per property: enough to cover every variant many times, little enough for CI.
const CASES: u32 = 256;

// ---- strategies: every field within the protocol's limits ----

fn id(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.~!#$%&*+=|-]{{1,{max}}}")).unwrap()
}

/// Any UTF-8 of at most `max_bytes` bytes (up to four bytes per char).
fn text(max_bytes: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_bytes / 4).prop_map(|chars| chars.into_iter().collect())
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..=MAX_PAYLOAD).prop_map(Bytes::from)
}

fn user() -> impl Strategy<Value = User> {
    (id(MAX_USER_ID), text(MAX_USER_NAME)).prop_map(|(id, name)| User { id, name })
}

fn member() -> impl Strategy<Value = Member> {
    (any::<u32>(), user()).prop_map(|(session, user)| Member { session, user })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u32>().prop_map(ErrorCode)
}

fn request_frame() -> impl Strategy<Value = RequestFrame> {
    let room = || id(MAX_ROOM_ID);
    let body = prop_oneof![
        (
            room(),
            user(),
            "[A-Za-z0-9._-]{0,4096}",
            proptest::option::of((any::<u64>(), any::<u64>()))
        )
            .prop_map(|(room, user, token, recover)| Request::Login {
                room,
                user,
                token,
                recover: recover.map(|(epoch, last_id)| Recover { epoch, last_id }),
            }),
        room().prop_map(|room| Request::Logout { room }),
        (room(), payload()).prop_map(|(room, payload)| Request::Broadcast { room, payload }),
        (room(), vec(id(MAX_USER_ID), 0..=MAX_COMMAND_TARGETS), payload())
            .prop_map(|(room, to, payload)| Request::Command { room, to, payload }),
        "[A-Za-z0-9._-]{0,4096}".prop_map(|token| Request::RenewToken { token }),
    ];
    (any::<u32>(), body).prop_map(|(request, body)| RequestFrame { request, body })
}

fn control_frame() -> impl Strategy<Value = ControlFrame> {
    let outcome = prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(room_number, session)| Outcome::LoggedIn { room_number, session }),
        any::<u64>().prop_map(|message_id| Outcome::Sent { message_id }),
        Just(Outcome::Done),
        (error_code(), text(256)).prop_map(|(code, detail)| Outcome::Refused { code, detail }),
    ];
    prop_oneof![
        (any::<u32>(), outcome)
            .prop_map(|(request, outcome)| ControlFrame::Reply(Reply { request, outcome })),
        any::<u64>().prop_map(|expires_at_ms| ControlFrame::TokenWillExpire { expires_at_ms }),
    ]
}

fn lane_header() -> impl Strategy<Value = LaneHeader> {
    (id(MAX_ROOM_ID), any::<u32>(), any::<u64>())
        .prop_map(|(room, room_number, epoch)| LaneHeader { room, room_number, epoch })
}

fn lane_event() -> impl Strategy<Value = LaneEvent> {
    let broadcast = (any::<u64>(), any::<u64>(), user(), payload()).prop_map(
        |(id, sent_at_ms, from, payload)| BroadcastMessage { id, sent_at_ms, from, payload },
    );
    let command = (any::<u64>(), any::<u64>(), user(), payload()).prop_map(
        |(id, sent_at_ms, from, payload)| CommandMessage { id, sent_at_ms, from, payload },
    );
    prop_oneof![
        vec(member(), 0..=MAX_USERS_PER_UPDATE).prop_map(LaneEvent::UsersJoined),
        vec(member(), 0..=MAX_USERS_PER_UPDATE).prop_map(LaneEvent::UsersLeft),
        vec(broadcast, 0..=MAX_BATCH).prop_map(LaneEvent::Broadcasts),
        command.prop_map(LaneEvent::Command),
        (error_code(), text(256)).prop_map(|(code, detail)| LaneEvent::Closed { code, detail }),
        (any::<bool>(), proptest::option::of((any::<u64>(), any::<u64>())), any::<u64>()).prop_map(
            |(complete, missed, replayed)| LaneEvent::Recovered { complete, missed, replayed }
        ),
    ]
}

fn client_datagram() -> impl Strategy<Value = ClientDatagram> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), payload()).prop_map(|(room_number, request, payload)| {
            ClientDatagram::Barrage { room_number, request, payload }
        }),
        (any::<u32>(), payload()).prop_map(|(room_number, payload)| {
            ClientDatagram::BarrageNoReply { room_number, payload }
        }),
    ]
}

fn server_datagram() -> impl Strategy<Value = ServerDatagram> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), payload()).prop_map(
        |(room_number, id, sent_at_ms, sender, payload)| {
            ServerDatagram::Barrage(BarrageMessage { room_number, id, sent_at_ms, sender, payload })
        },
    )
}

// ---- checks ----

/// Encodes `msg` as a frame within `max`, decodes it back whole, and every strict prefix of
/// the frame is incomplete rather than an error.
fn frame_round_trip<T>(msg: &T, max: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf).unwrap();
    prop_assert!(buf.len() - FRAME_HEADER_LEN <= max, "{} bytes", buf.len());
    let cut = buf.len() / 2;
    prop_assert_eq!(decode_frame::<T>(&mut BytesMut::from(&buf[..cut]), max), Ok(None));
    prop_assert_eq!(decode_frame::<T>(&mut buf, max), Ok(Some(msg.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

/// A datagram round-trips and fits the budget.
fn datagram_round_trip<T>(msg: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let body = encode_body(msg).unwrap();
    prop_assert!(body.len() <= MAX_DATAGRAM_BUDGET, "{} bytes", body.len());
    prop_assert_eq!(decode_datagram::<T>(&body), Ok(msg.clone()));
    Ok(())
}

/// Whatever `bytes` are, decoding as `T` does not panic; a success used every byte (one more
/// byte is `TrailingBytes`) and re-encodes to something that decodes to the same value.
fn arbitrary_body<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    if let Ok(value) = decode_body::<T>(bytes) {
        let mut longer = bytes.to_vec();
        longer.push(0);
        prop_assert_eq!(decode_body::<T>(&longer), Err(CodecError::TrailingBytes(1)));
        let again = encode_body(&value).unwrap();
        prop_assert_eq!(decode_body::<T>(&again), Ok(value));
    }
    // The same bytes as a datagram, and as a stream of frames.
    let _ = decode_datagram::<T>(bytes);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = decode_frame::<T>(&mut buf, MAX_SERVER_FRAME) {}
    Ok(())
}

/// Encodes `msgs` back to back, feeds the stream in chunks ending at `cuts`, and decodes
/// incrementally after each chunk.
fn incremental<T>(msgs: &[T], cuts: &[prop::sample::Index], max: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let mut stream = BytesMut::new();
    for msg in msgs {
        encode_frame(msg, &mut stream).unwrap();
    }
    let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    ends.push(stream.len());
    ends.sort_unstable();
    let (mut buf, mut decoded, mut start) = (BytesMut::new(), Vec::new(), 0);
    for end in ends {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        while let Some(msg) = decode_frame::<T>(&mut buf, max).unwrap() {
            decoded.push(msg);
        }
    }
    prop_assert_eq!(&decoded[..], msgs);
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn requests_round_trip(msg in request_frame()) {
        frame_round_trip(&msg, MAX_REQUEST_FRAME)?;
    }

    #[test]
    fn control_frames_round_trip(msg in control_frame()) {
        frame_round_trip(&msg, MAX_SERVER_FRAME)?;
    }

    #[test]
    fn lane_frames_round_trip(header in lane_header(), event in lane_event()) {
        frame_round_trip(&header, MAX_SERVER_FRAME)?;
        frame_round_trip(&event, MAX_SERVER_FRAME)?;
    }

    #[test]
    fn datagrams_round_trip(up in client_datagram(), down in server_datagram()) {
        datagram_round_trip(&up)?;
        datagram_round_trip(&down)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_leave_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        arbitrary_body::<RequestFrame>(&bytes)?;
        arbitrary_body::<ControlFrame>(&bytes)?;
        arbitrary_body::<LaneHeader>(&bytes)?;
        arbitrary_body::<LaneEvent>(&bytes)?;
        arbitrary_body::<ClientDatagram>(&bytes)?;
        arbitrary_body::<ServerDatagram>(&bytes)?;
    }

    #[test]
    fn mutated_valid_frames_never_panic(msg in request_frame(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        // Arbitrary bytes rarely get past the first field; corrupting a valid encoding reaches
        // deep into every structure.
        let mut body = encode_body(&msg).unwrap().to_vec();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        arbitrary_body::<RequestFrame>(&body)?;
    }

    #[test]
    fn mutated_lane_events_never_panic(event in lane_event(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut body = encode_body(&event).unwrap().to_vec();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        arbitrary_body::<LaneEvent>(&body)?;
    }

    #[test]
    fn requests_split_anywhere_decode_the_same(
        msgs in vec(request_frame(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        incremental(&msgs, &cuts, MAX_REQUEST_FRAME)?;
    }

    #[test]
    fn lane_events_split_anywhere_decode_the_same(
        msgs in vec(lane_event(), 1..4),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        incremental(&msgs, &cuts, MAX_SERVER_FRAME)?;
    }

    #[test]
    fn an_oversize_length_is_refused_from_the_header_alone(
        over in 1..=(u32::MAX as usize - MAX_REQUEST_FRAME),
        body in vec(any::<u8>(), 0..64),
    ) {
        for max in [MAX_REQUEST_FRAME, MAX_SERVER_FRAME] {
            let len = (max + over).min(u32::MAX as usize);
            if len <= max {
                continue;
            }
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            buf.extend_from_slice(&body);
            let capacity = buf.capacity();
            prop_assert_eq!(
                decode_frame::<RequestFrame>(&mut buf, max),
                Err(CodecError::TooLarge { len, max })
            );
            // Nothing was reserved for the announced body.
            prop_assert_eq!(buf.capacity(), capacity);
        }
    }
}
