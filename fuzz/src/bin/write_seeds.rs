//! Writes a small seed corpus of valid encodings to `corpus/<target>/` (relative to the
//! current directory, normally `fuzz/`), so the fuzzers start from well-formed messages.

use std::fs;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use qrelay::protocol::*;

fn main() -> std::io::Result<()> {
    let user = User { id: "alice".into(), name: "Alice A.".into() };
    let member = Member { session: 7, user: user.clone() };
    let payload = Bytes::from_static(b"hello");
    let requests = [
        Request::Login {
            room: "lobby".into(),
            user: user.clone(),
            token: "a.b.c".into(),
            recover: Some(Recover { epoch: 7, last_id: 5 }),
        },
        Request::Logout { room: "lobby".into() },
        Request::Broadcast { room: "lobby".into(), payload: payload.clone() },
        Request::Command { room: "lobby".into(), to: vec!["bob".into()], payload: payload.clone() },
        Request::RenewToken { token: "x.y.z".into() },
        Request::FetchMembers { room: "lobby".into(), cursor: (1 << 63) | 7, limit: 50 },
    ];
    let requests: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, body)| RequestFrame { request: i as u32, body })
        .collect();
    let controls = [
        ControlFrame::Reply(Reply {
            request: 1,
            outcome: Outcome::LoggedIn { room_number: 1, session: 2 },
        }),
        ControlFrame::Reply(Reply { request: 2, outcome: Outcome::Sent { message_id: 9 } }),
        ControlFrame::Reply(Reply { request: 3, outcome: Outcome::Done }),
        ControlFrame::Reply(Reply {
            request: 4,
            outcome: Outcome::Refused { code: ErrorCode::ROOM_FULL, detail: "full".into() },
        }),
        ControlFrame::TokenWillExpire { expires_at_ms: 1_700_000_000_000 },
        ControlFrame::Reply(Reply {
            request: 5,
            outcome: Outcome::Members(MemberPage {
                count: 1001,
                members: vec![member.clone()],
                next: (1 << 63) | 7,
            }),
        }),
    ];
    let message =
        BroadcastMessage { id: 1, sent_at_ms: 2, from: user.clone(), payload: payload.clone() };
    let events = [
        LaneEvent::UsersJoined(vec![member.clone(), member.clone()]),
        LaneEvent::UsersLeft(vec![member.clone()]),
        LaneEvent::Broadcasts(vec![message.clone(), message]),
        LaneEvent::Command(CommandMessage {
            id: 3,
            sent_at_ms: 4,
            from: user,
            payload: payload.clone(),
        }),
        LaneEvent::Closed { code: ErrorCode::LOGGED_OUT, detail: "bye".into() },
        LaneEvent::MemberCount(1001),
        LaneEvent::MemberPage(MemberPage { count: 1001, members: vec![member], next: 0 }),
    ];
    let header = LaneHeader { room: "lobby".into(), room_number: 1, epoch: 7 };

    let mut all_requests = BytesMut::new();
    for (i, request) in requests.iter().enumerate() {
        let mut one = BytesMut::new();
        encode_frame(request, &mut one).unwrap();
        write("request_frame", i, &one)?;
        write("chunked", i, &[&[0, 2, 3, 17][..], &one].concat())?;
        all_requests.extend_from_slice(&one);
    }
    write("request_frame", 99, &all_requests)?;
    write("chunked", 99, &[&[0, 3, 1, 5, 200][..], &all_requests].concat())?;
    for (i, control) in controls.iter().enumerate() {
        let mut one = BytesMut::new();
        encode_frame(control, &mut one).unwrap();
        write("control_frame", i, &one)?;
    }
    let mut lane = BytesMut::new();
    encode_frame(&header, &mut lane).unwrap();
    for (i, event) in events.iter().enumerate() {
        let mut one = BytesMut::new();
        encode_frame(event, &mut one).unwrap();
        write("lane_frames", i, &one)?;
        write("chunked", 10 + i, &[&[1, 1, 7][..], &one].concat())?;
        lane.extend_from_slice(&one);
    }
    write("lane_frames", 99, &lane)?;
    let up = ClientDatagram::Barrage { room_number: 1, request: 2, payload: payload.clone() };
    let no_reply = ClientDatagram::BarrageNoReply { room_number: 1, payload: payload.clone() };
    let down = ServerDatagram::Barrage(BarrageMessage {
        room_number: 1,
        id: 2,
        sent_at_ms: 3,
        sender: 4,
        payload,
    });
    write("datagrams", 0, &encode_body(&up).unwrap())?;
    write("datagrams", 1, &encode_body(&down).unwrap())?;
    write("datagrams", 2, &encode_body(&no_reply).unwrap())?;
    Ok(())
}

fn write(target: &str, n: usize, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("seed-{n}")), bytes)
}
