// The JavaScript codec against the byte-for-byte examples of docs/PROTOCOL.md (section 5,
// "Worked examples", and section 6), plus the refusals section 4 requires.
// Run: node --test web/test/

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CodecError,
  UnknownVariant,
  FrameReader,
  MAX_DATAGRAM_BUDGET,
  MAX_PAYLOAD,
  Reader,
  Writer,
  decodeControlFrame,
  decodeLaneEvent,
  decodeLaneHeader,
  decodeRequestFrame,
  decodeServerDatagram,
  encodeClientDatagram,
  encodeControlFrame,
  encodeRequestFrame,
  frame,
  isValidRoomId,
} from "../codec.js";

const hex = (s) => Uint8Array.from(s.trim().split(/\s+/).map((b) => parseInt(b, 16)));
const utf8 = (s) => new TextEncoder().encode(s);
/** The body of a framed example, after checking its length prefix. */
function body(framed) {
  const frames = new FrameReader();
  frames.push(framed);
  const out = frames.next();
  assert.notEqual(out, null, "a whole frame");
  assert.equal(frames.pending, false, "nothing after the frame");
  return out;
}

test("Logout of lobby, request 1", () => {
  const bytes = hex("00 00 00 08 01 01 05 6c 6f 62 62 79");
  const encoded = frame(encodeRequestFrame({ request: 1, body: { kind: "Logout", room: "lobby" } }));
  assert.deepEqual(encoded, bytes);
  assert.deepEqual(decodeRequestFrame(body(bytes)), { request: 1, body: { kind: "Logout", room: "lobby" } });
});

test("Login to lobby as alice / Alice with token t, with and without recovery", () => {
  const login = { kind: "Login", room: "lobby", user: { id: "alice", name: "Alice" }, token: "t", recover: null };
  const bytes = hex("00 00 00 17 01 00 05 6c 6f 62 62 79 05 61 6c 69 63 65 05 41 6c 69 63 65 01 74 00");
  assert.deepEqual(frame(encodeRequestFrame({ request: 1, body: login })), bytes);
  assert.deepEqual(decodeRequestFrame(body(bytes)).body, login);
  // "ends in 01 07 05 instead of 00 (length 25)"
  const recovering = { ...login, recover: { epoch: 7n, lastId: 5n } };
  const again = frame(encodeRequestFrame({ request: 1, body: recovering }));
  assert.equal(again.length, 4 + 25);
  assert.deepEqual(again.slice(0, 4), hex("00 00 00 19"));
  assert.deepEqual(again.slice(-3), hex("01 07 05"));
  assert.deepEqual(decodeRequestFrame(body(again)).body, recovering);
});

test("replies: LoggedIn, Sent 300, Refused USER_RATE_LIMITED", () => {
  const cases = [
    ["00 00 00 05 00 01 00 01 03", { kind: "Reply", request: 1, outcome: { kind: "LoggedIn", roomNumber: 1, session: 3 } }],
    ["00 00 00 06 00 07 01 fb 2c 01", { kind: "Reply", request: 7, outcome: { kind: "Sent", messageId: 300n } }],
    ["00 00 00 07 00 02 03 fb a2 0f 00", { kind: "Reply", request: 2, outcome: { kind: "Refused", code: 4002, detail: "" } }],
  ];
  for (const [bytes, decoded] of cases) {
    assert.deepEqual(decodeControlFrame(body(hex(bytes))), decoded);
    assert.deepEqual(frame(encodeControlFrame(decoded)), hex(bytes));
  }
});

test("lane header, Recovered, and a broadcast batch", () => {
  assert.deepEqual(decodeLaneHeader(body(hex("00 00 00 08 05 6c 6f 62 62 79 01 07"))), {
    room: "lobby",
    roomNumber: 1,
    epoch: 7n,
  });
  assert.deepEqual(decodeLaneEvent(body(hex("00 00 00 06 05 00 01 06 07 03"))), {
    kind: "Recovered",
    complete: false,
    missed: [6n, 7n],
    replayed: 3n,
  });
  const batch = hex(`00 00 00 17 02 01 01 fd 00 68 e5 cf 8b 01 00 00
    03 62 6f 62 03 42 6f 62 02 68 69`);
  assert.deepEqual(decodeLaneEvent(body(batch)), {
    kind: "Broadcasts",
    messages: [{ id: 1n, sentAtMs: 1700000000000n, from: { id: "bob", name: "Bob" }, payload: utf8("hi") }],
  });
});

test("member pages of section 5: FetchMembers, its reply, the next page, MemberPage, MemberCount", () => {
  const fetch = hex("00 00 00 0a 04 05 05 6c 6f 62 62 79 00 32");
  const first = { request: 4, body: { kind: "FetchMembers", room: "lobby", cursor: 0n, limit: 50 } };
  assert.deepEqual(frame(encodeRequestFrame(first)), fetch);
  assert.deepEqual(decodeRequestFrame(body(fetch)), first);
  const page = {
    count: 1001,
    members: [{ session: 3, user: { id: "bob", name: "Bob" } }],
    next: 0x8000000700000003n,
  };
  const reply = hex(`00 00 00 19 00 04 04 fb e9 03 01 03 03 62 6f 62 03 42 6f 62
    fd 03 00 00 00 07 00 00 80`);
  const decoded = { kind: "Reply", request: 4, outcome: { kind: "Members", page } };
  assert.deepEqual(decodeControlFrame(body(reply)), decoded);
  assert.deepEqual(frame(encodeControlFrame(decoded)), reply);
  const next = { request: 5, body: { kind: "FetchMembers", room: "lobby", cursor: page.next, limit: 50 } };
  assert.deepEqual(
    frame(encodeRequestFrame(next)),
    hex("00 00 00 12 05 05 05 6c 6f 62 62 79 fd 03 00 00 00 07 00 00 80 32"),
  );
  assert.deepEqual(
    decodeLaneEvent(body(hex("00 00 00 17 07 fb e9 03 01 03 03 62 6f 62 03 42 6f 62 fd 03 00 00 00 07 00 00 80"))),
    { kind: "MemberPage", page },
  );
  assert.deepEqual(decodeLaneEvent(body(hex("00 00 00 04 06 fb e9 03"))), { kind: "MemberCount", count: 1001 });
});

test("barrage datagrams of section 5", () => {
  assert.deepEqual(
    encodeClientDatagram({ kind: "Barrage", roomNumber: 1, request: 9, payload: utf8("hi") }),
    hex("00 01 09 02 68 69"),
  );
  assert.deepEqual(
    encodeClientDatagram({ kind: "BarrageNoReply", roomNumber: 1, payload: utf8("hi") }),
    hex("01 01 02 68 69"),
  );
  assert.deepEqual(decodeServerDatagram(hex("00 01 05 fd 00 68 e5 cf 8b 01 00 00 03 02 68 69")), {
    kind: "Barrage",
    roomNumber: 1,
    id: 5n,
    sentAtMs: 1700000000000n,
    sender: 3,
    payload: utf8("hi"),
  });
});

test("the worst-case datagrams of section 6 have the documented sizes and fit", () => {
  const payload = new Uint8Array(MAX_PAYLOAD).fill(0xff);
  const client = encodeClientDatagram({ kind: "Barrage", roomNumber: 0xffffffff, request: 0xffffffff, payload });
  assert.equal(client.length, 1038);
  const noReply = encodeClientDatagram({ kind: "BarrageNoReply", roomNumber: 0xffffffff, payload });
  assert.equal(noReply.length, 1033);
  const w = new Writer();
  w.varint(0);
  w.varint(0xffffffff);
  w.varint(0xffffffffffffffffn);
  w.varint(0xffffffffffffffffn);
  w.varint(0xffffffff);
  w.bytes(payload);
  const server = w.finish();
  assert.equal(server.length, 1056);
  assert.ok(server.length <= MAX_DATAGRAM_BUDGET);
  assert.equal(decodeServerDatagram(server).id, 0xffffffffffffffffn);
  // Behind the 1-byte quarter stream ID of a WebTransport datagram: within Chromium's 1211.
  assert.ok(1 + server.length <= 1211);
});

test("varints: the boundaries of section 4", () => {
  const cases = [
    [250, "fa"],
    [251, "fb fb 00"],
    [65535, "fb ff ff"],
    [65536, "fc 00 00 01 00"],
    [2n ** 32n, "fd 00 00 00 00 01 00 00 00"],
  ];
  for (const [value, bytes] of cases) {
    const w = new Writer();
    w.varint(value);
    assert.deepEqual(w.finish(), hex(bytes), String(value));
    assert.equal(new Reader(hex(bytes)).bigVarint(), BigInt(value));
  }
});

test("malformed input is refused: trailing bytes, truncation, bad tags, u32 with 0xFD, UTF-8, oversize lists and frames", () => {
  const refused = (f) => assert.throws(f, CodecError);
  refused(() => decodeLaneHeader(hex("05 6c 6f 62 62 79 01 07 00"))); // trailing byte
  refused(() => decodeLaneHeader(hex("05 6c 6f 62"))); // truncated string
  refused(() => decodeLaneEvent(hex("05 02 00 00"))); // bool 2
  refused(() => decodeLaneEvent(hex("05 00 02 00"))); // Option tag 2
  assert.throws(() => decodeLaneEvent(hex("09")), UnknownVariant); // a newer relay's event
  refused(() => decodeControlFrame(hex("00 fd 01 00 00 00 00 00 00 00 02"))); // u32 request as u64
  refused(() => decodeLaneHeader(hex("02 c3 28 01 07"))); // invalid UTF-8
  refused(() => decodeLaneEvent(hex("02 33"))); // 51 messages claimed
  refused(() => decodeLaneEvent(hex("00 fb c9 00"))); // 201 members claimed
  refused(() => decodeLaneEvent(hex("07 05 fb c9 00"))); // a page of 201 members claimed
  refused(() => decodeLaneHeader(hex("fc ff ff ff 00 00"))); // a length beyond the bytes left
  refused(() => decodeServerDatagram(new Uint8Array(MAX_DATAGRAM_BUDGET + 1)));
  const frames = new FrameReader(16);
  frames.push(hex("00 00 00 11"));
  refused(() => frames.next()); // 17 > 16, before the body arrives
});

test("an incomplete frame is not an error: it waits for more bytes", () => {
  const frames = new FrameReader();
  const bytes = hex("00 00 00 08 01 01 05 6c 6f 62 62 79");
  frames.push(bytes.slice(0, 3));
  assert.equal(frames.next(), null);
  frames.push(bytes.slice(3, 9));
  assert.equal(frames.next(), null);
  frames.push(bytes.slice(9));
  assert.deepEqual(frames.next(), bytes.slice(4));
  assert.equal(frames.next(), null);
});

test("room IDs follow section 9", () => {
  assert.ok(isValidRoomId("lobby"));
  assert.ok(isValidRoomId("a-b_c.d~!#$%&*+=|"));
  assert.ok(isValidRoomId("x".repeat(128)));
  assert.ok(!isValidRoomId("x".repeat(129)));
  assert.ok(!isValidRoomId(""));
  assert.ok(!isValidRoomId("has space"));
  assert.ok(!isValidRoomId("é"));
});
