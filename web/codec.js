// The qrelay/1 wire codec in JavaScript: the counterpart of src/protocol/ (no I/O). Each
// section below cites the section of docs/PROTOCOL.md it implements.
//
// Integers: u8/u16/u32 are numbers; u64 fields are BigInt (a room epoch is a random u64).
// Payloads are Uint8Array. Decoders throw a CodecError on malformed input and on trailing bytes.

// ---------------------------------------------------------------------------------------------
// Limits (PROTOCOL.md sections 3, 4, 6 and 9; src/protocol/limits.rs)

/** Largest payload of any message, in bytes. */
export const MAX_PAYLOAD = 1024;
/** Largest client→server frame body (control stream). */
export const MAX_REQUEST_FRAME = 16 * 1024;
/** Largest server→client frame body (control stream and lanes). */
export const MAX_SERVER_FRAME = 128 * 1024;
/** Largest barrage datagram body. */
export const MAX_DATAGRAM_BUDGET = 1150;
/** Most messages in one broadcast batch. */
export const MAX_BATCH = 50;
/** Most members in one user update. */
export const MAX_USERS_PER_UPDATE = 200;
/** Most members in one page of a member list. */
export const MAX_MEMBER_PAGE = 200;
/** The cursor of a member list's first page (and the `next` after its last). */
export const MEMBERS_FROM_START = 0n;
/** Most targets of a custom command. */
export const MAX_COMMAND_TARGETS = 100;
/** Longest room ID, user ID and user name, in bytes. */
export const MAX_ROOM_ID = 128;
export const MAX_USER_ID = 64;
export const MAX_USER_NAME = 256;

/** A malformed, truncated or oversize body or frame. */
export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = "CodecError";
  }
}

/**
 * A body whose enum variant this version does not know (a newer relay's message). The frame
 * around it is whole, so a reader may skip it; everything else malformed is a CodecError.
 */
export class UnknownVariant extends CodecError {
  constructor(what, index) {
    super(`unknown ${what} variant ${index}`);
    this.name = "UnknownVariant";
    this.what = what;
    this.index = index;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

// ---------------------------------------------------------------------------------------------
// Section 4: body encoding, bincode 2 "standard" configuration

const U16_MARK = 0xfb;
const U32_MARK = 0xfc;
const U64_MARK = 0xfd;

/** Appends bincode values to a growing buffer. */
export class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }
  u8(value) {
    this.reserve(1);
    this.buf[this.len++] = value;
  }
  /** An unsigned varint (any of u16, u32, u64, lengths); `value` a number or BigInt. */
  varint(value) {
    const v = BigInt(value);
    if (v < 0n || v > 0xffffffffffffffffn) throw new CodecError(`varint out of range: ${v}`);
    if (v <= 250n) return this.u8(Number(v));
    const view = () => new DataView(this.buf.buffer, this.buf.byteOffset + this.len);
    if (v <= 0xffffn) {
      this.u8(U16_MARK);
      this.reserve(2);
      view().setUint16(0, Number(v), true);
      this.len += 2;
    } else if (v <= 0xffffffffn) {
      this.u8(U32_MARK);
      this.reserve(4);
      view().setUint32(0, Number(v), true);
      this.len += 4;
    } else {
      this.u8(U64_MARK);
      this.reserve(8);
      view().setBigUint64(0, v, true);
      this.len += 8;
    }
  }
  bool(value) {
    this.u8(value ? 1 : 0);
  }
  bytes(value) {
    this.varint(value.length);
    this.reserve(value.length);
    this.buf.set(value, this.len);
    this.len += value.length;
  }
  string(value) {
    this.bytes(encoder.encode(value));
  }
  /** `Option<T>`: tag byte 0 (none) or 1 then the value. */
  option(value, write) {
    if (value === null || value === undefined) return this.u8(0);
    this.u8(1);
    write(this, value);
  }
  vec(items, write) {
    this.varint(items.length);
    for (const item of items) write(this, item);
  }
  finish() {
    return this.buf.slice(0, this.len);
  }
}

/** Reads bincode values from one body; `end()` refuses trailing bytes. */
export class Reader {
  constructor(bytes) {
    this.data = bytes;
    this.pos = 0;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  need(n) {
    if (this.pos + n > this.data.length) {
      throw new CodecError(`truncated body: needs ${n} more bytes at ${this.pos}`);
    }
  }
  u8() {
    this.need(1);
    return this.data[this.pos++];
  }
  /** A varint as a BigInt, at most `max` (the field type's maximum). */
  bigVarint(max = 0xffffffffffffffffn) {
    const first = this.u8();
    let v;
    if (first <= 250) v = BigInt(first);
    else if (first === U16_MARK) {
      this.need(2);
      v = BigInt(this.view.getUint16(this.pos, true));
      this.pos += 2;
    } else if (first === U32_MARK) {
      this.need(4);
      v = BigInt(this.view.getUint32(this.pos, true));
      this.pos += 4;
    } else if (first === U64_MARK && max > 0xffffffffn) {
      this.need(8);
      v = this.view.getBigUint64(this.pos, true);
      this.pos += 8;
    } else {
      throw new CodecError(`invalid varint prefix 0x${first.toString(16)}`);
    }
    if (v > max) throw new CodecError(`varint ${v} too large for its field`);
    return v;
  }
  u32() {
    return Number(this.bigVarint(0xffffffffn));
  }
  u64() {
    return this.bigVarint();
  }
  /** A length or count, refused when it claims more than the bytes left (section 4). */
  len(perItem = 1) {
    const n = Number(this.bigVarint());
    if (n * perItem > this.data.length - this.pos) {
      throw new CodecError(`length ${n} exceeds the ${this.data.length - this.pos} bytes left`);
    }
    return n;
  }
  bool() {
    const b = this.u8();
    if (b > 1) throw new CodecError(`invalid bool 0x${b.toString(16)}`);
    return b === 1;
  }
  bytes() {
    const n = this.len();
    const out = this.data.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  string() {
    try {
      return decoder.decode(this.bytes());
    } catch (e) {
      if (e instanceof CodecError) throw e;
      throw new CodecError("string is not valid UTF-8");
    }
  }
  option(read) {
    const tag = this.u8();
    if (tag === 0) return null;
    if (tag === 1) return read(this);
    throw new CodecError(`invalid Option tag 0x${tag.toString(16)}`);
  }
  /** `Vec<T>` of at most `max` elements, refused from its count. */
  vec(read, max) {
    const n = this.len();
    if (n > max) throw new CodecError(`list of ${n} exceeds its maximum ${max}`);
    const items = [];
    for (let i = 0; i < n; i++) items.push(read(this));
    return items;
  }
  variant(count, what) {
    const index = this.u32();
    if (index >= count) throw new UnknownVariant(what, index);
    return index;
  }
  end() {
    if (this.pos !== this.data.length) {
      throw new CodecError(`${this.data.length - this.pos} trailing bytes`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Section 5: messages

const writeUser = (w, user) => {
  w.string(user.id);
  w.string(user.name);
};
const readUser = (r) => ({ id: r.string(), name: r.string() });
const readMember = (r) => ({ session: r.u32(), user: readUser(r) });
const readMemberPage = (r) => ({
  count: r.u32(),
  members: r.vec(readMember, MAX_MEMBER_PAGE),
  next: r.u64(),
});
const writeMemberPage = (w, page) => {
  w.varint(page.count);
  w.vec(page.members, (w, m) => {
    w.varint(m.session);
    writeUser(w, m.user);
  });
  w.varint(page.next);
};

/** Request variant indices. */
export const RequestKind = Object.freeze({
  Login: 0,
  Logout: 1,
  Broadcast: 2,
  Command: 3,
  RenewToken: 4,
  FetchMembers: 5,
});

/**
 * Encodes a `RequestFrame` body: `{ request, body }` where body is one of
 * `{ kind: "Login", room, user: {id, name}, token, recover: {epoch, lastId} | null }`,
 * `{ kind: "Logout", room }`, `{ kind: "Broadcast", room, payload }`,
 * `{ kind: "Command", room, to: [userId], payload }`, `{ kind: "RenewToken", token }`,
 * `{ kind: "FetchMembers", room, cursor, limit }` (cursor a BigInt: MEMBERS_FROM_START or a
 * page's `next`; limit 0 for the most).
 */
export function encodeRequestFrame({ request, body }) {
  const w = new Writer();
  w.varint(request);
  const kind = RequestKind[body.kind];
  if (kind === undefined) throw new CodecError(`unknown request ${body.kind}`);
  w.varint(kind);
  switch (body.kind) {
    case "Login":
      w.string(body.room);
      writeUser(w, body.user);
      w.string(body.token);
      w.option(body.recover, (w, rec) => {
        w.varint(rec.epoch);
        w.varint(rec.lastId);
      });
      break;
    case "Logout":
      w.string(body.room);
      break;
    case "Broadcast":
      w.string(body.room);
      w.bytes(body.payload);
      break;
    case "Command":
      w.string(body.room);
      w.vec(body.to, (w, id) => w.string(id));
      w.bytes(body.payload);
      break;
    case "RenewToken":
      w.string(body.token);
      break;
    case "FetchMembers":
      w.string(body.room);
      w.varint(body.cursor);
      w.varint(body.limit);
      break;
  }
  return w.finish();
}

/** Decodes a `RequestFrame` body (the relay's side; used by the tests). */
export function decodeRequestFrame(bytes) {
  const r = new Reader(bytes);
  const request = r.u32();
  const kind = r.variant(6, "Request");
  let body;
  if (kind === 0) {
    const room = r.string();
    const user = readUser(r);
    const token = r.string();
    const recover = r.option((r) => ({ epoch: r.u64(), lastId: r.u64() }));
    body = { kind: "Login", room, user, token, recover };
  } else if (kind === 1) body = { kind: "Logout", room: r.string() };
  else if (kind === 2) body = { kind: "Broadcast", room: r.string(), payload: r.bytes() };
  else if (kind === 3) {
    const room = r.string();
    const to = r.vec((r) => r.string(), MAX_COMMAND_TARGETS);
    body = { kind: "Command", room, to, payload: r.bytes() };
  } else if (kind === 4) body = { kind: "RenewToken", token: r.string() };
  else body = { kind: "FetchMembers", room: r.string(), cursor: r.u64(), limit: r.u32() };
  r.end();
  return { request, body };
}

/**
 * Decodes a `ControlFrame` body: `{ kind: "Reply", request, outcome }` with outcome one of
 * `{ kind: "LoggedIn", roomNumber, session }`, `{ kind: "Sent", messageId }`, `{ kind: "Done" }`,
 * `{ kind: "Refused", code, detail }`, `{ kind: "Members", page: { count, members, next } }`;
 * or `{ kind: "TokenWillExpire", expiresAtMs }`.
 */
export function decodeControlFrame(bytes) {
  const r = new Reader(bytes);
  let frame;
  if (r.variant(2, "ControlFrame") === 0) {
    const request = r.u32();
    let outcome;
    switch (r.variant(5, "Outcome")) {
      case 0:
        outcome = { kind: "LoggedIn", roomNumber: r.u32(), session: r.u32() };
        break;
      case 1:
        outcome = { kind: "Sent", messageId: r.u64() };
        break;
      case 2:
        outcome = { kind: "Done" };
        break;
      case 3:
        outcome = { kind: "Refused", code: r.u32(), detail: r.string() };
        break;
      default:
        outcome = { kind: "Members", page: readMemberPage(r) };
    }
    frame = { kind: "Reply", request, outcome };
  } else {
    frame = { kind: "TokenWillExpire", expiresAtMs: r.u64() };
  }
  r.end();
  return frame;
}

/** Encodes a `ControlFrame` body (the relay's side; used by the tests). */
export function encodeControlFrame(frame) {
  const w = new Writer();
  if (frame.kind === "TokenWillExpire") {
    w.varint(1);
    w.varint(frame.expiresAtMs);
    return w.finish();
  }
  w.varint(0);
  w.varint(frame.request);
  const o = frame.outcome;
  if (o.kind === "LoggedIn") {
    w.varint(0);
    w.varint(o.roomNumber);
    w.varint(o.session);
  } else if (o.kind === "Sent") {
    w.varint(1);
    w.varint(o.messageId);
  } else if (o.kind === "Done") {
    w.varint(2);
  } else if (o.kind === "Refused") {
    w.varint(3);
    w.varint(o.code);
    w.string(o.detail);
  } else {
    w.varint(4);
    writeMemberPage(w, o.page);
  }
  return w.finish();
}

/** Decodes a `LaneHeader` body: `{ room, roomNumber, epoch }`. */
export function decodeLaneHeader(bytes) {
  const r = new Reader(bytes);
  const header = { room: r.string(), roomNumber: r.u32(), epoch: r.u64() };
  r.end();
  return header;
}

const readMessage = (r) => ({
  id: r.u64(),
  sentAtMs: r.u64(),
  from: readUser(r),
  payload: r.bytes(),
});

/**
 * Decodes a `LaneEvent` body: `{ kind: "UsersJoined" | "UsersLeft", members }`,
 * `{ kind: "Broadcasts", messages }`, `{ kind: "Command", message }`,
 * `{ kind: "Closed", code, detail }`, `{ kind: "Recovered", complete, missed, replayed }`,
 * `{ kind: "MemberCount", count }`, `{ kind: "MemberPage", page: { count, members, next } }`
 * (a large room, PROTOCOL.md section 7).
 * A message is `{ id, sentAtMs, from: {id, name}, payload }`.
 */
export function decodeLaneEvent(bytes) {
  const r = new Reader(bytes);
  let event;
  switch (r.variant(8, "LaneEvent")) {
    case 0:
      event = { kind: "UsersJoined", members: r.vec(readMember, MAX_USERS_PER_UPDATE) };
      break;
    case 1:
      event = { kind: "UsersLeft", members: r.vec(readMember, MAX_USERS_PER_UPDATE) };
      break;
    case 2:
      event = { kind: "Broadcasts", messages: r.vec(readMessage, MAX_BATCH) };
      break;
    case 3:
      event = { kind: "Command", message: readMessage(r) };
      break;
    case 4:
      event = { kind: "Closed", code: r.u32(), detail: r.string() };
      break;
    case 5: {
      const complete = r.bool();
      const missed = r.option((r) => [r.u64(), r.u64()]);
      event = { kind: "Recovered", complete, missed, replayed: r.u64() };
      break;
    }
    case 6:
      event = { kind: "MemberCount", count: r.u32() };
      break;
    default:
      event = { kind: "MemberPage", page: readMemberPage(r) };
  }
  r.end();
  return event;
}

// ---------------------------------------------------------------------------------------------
// Section 6: barrage datagrams

/**
 * Encodes a `ClientDatagram`: `{ kind: "Barrage", roomNumber, request, payload }` (answered on
 * the control stream) or `{ kind: "BarrageNoReply", roomNumber, payload }`.
 */
export function encodeClientDatagram(d) {
  const w = new Writer();
  if (d.kind === "Barrage") {
    w.varint(0);
    w.varint(d.roomNumber);
    w.varint(d.request);
  } else if (d.kind === "BarrageNoReply") {
    w.varint(1);
    w.varint(d.roomNumber);
  } else {
    throw new CodecError(`unknown datagram ${d.kind}`);
  }
  w.bytes(d.payload);
  const out = w.finish();
  if (out.length > MAX_DATAGRAM_BUDGET) {
    throw new CodecError(`datagram of ${out.length} bytes exceeds ${MAX_DATAGRAM_BUDGET}`);
  }
  return out;
}

/** Decodes a `ServerDatagram`: `{ kind: "Barrage", roomNumber, id, sentAtMs, sender, payload }`. */
export function decodeServerDatagram(bytes) {
  if (bytes.length > MAX_DATAGRAM_BUDGET) {
    throw new CodecError(`datagram of ${bytes.length} bytes exceeds ${MAX_DATAGRAM_BUDGET}`);
  }
  const r = new Reader(bytes);
  r.variant(1, "ServerDatagram");
  const d = {
    kind: "Barrage",
    roomNumber: r.u32(),
    id: r.u64(),
    sentAtMs: r.u64(),
    sender: r.u32(),
    payload: r.bytes(),
  };
  r.end();
  return d;
}

// ---------------------------------------------------------------------------------------------
// Section 3: framing (streams)

/** A frame: the body behind its length (u32, big-endian). */
export function frame(body) {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, false);
  out.set(body, 4);
  return out;
}

/**
 * Splits a stream into frame bodies: `push(chunk)`, then `next()` until it returns null (an
 * incomplete frame is not an error). A length above `max` throws before the body is awaited.
 */
export class FrameReader {
  constructor(max = MAX_SERVER_FRAME) {
    this.max = max;
    this.buf = new Uint8Array(0);
  }
  push(chunk) {
    if (this.buf.length === 0) {
      this.buf = chunk;
      return;
    }
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
  }
  next() {
    if (this.buf.length < 4) return null;
    const len = new DataView(this.buf.buffer, this.buf.byteOffset, 4).getUint32(0, false);
    if (len > this.max) throw new CodecError(`frame of ${len} bytes exceeds ${this.max}`);
    if (this.buf.length < 4 + len) return null;
    const body = this.buf.slice(4, 4 + len);
    this.buf = this.buf.subarray(4 + len);
    return body;
  }
  /** Whether bytes of an unfinished frame are buffered (a stream ending now is truncated). */
  get pending() {
    return this.buf.length > 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Section 9: validation (the relay checks the same; checking first saves a round trip)

const ID_CHARS = /^[A-Za-z0-9~!@#$%^&*()_+=\-;',.<>|]+$/;

/** Whether `room` is a valid room ID (1 to 128 bytes of the allowed characters). */
export function isValidRoomId(room) {
  return typeof room === "string" && room.length <= MAX_ROOM_ID && ID_CHARS.test(room);
}

/** Whether `id` is a valid user ID (1 to 64 bytes of the same characters). */
export function isValidUserId(id) {
  return typeof id === "string" && id.length <= MAX_USER_ID && ID_CHARS.test(id);
}

// ---------------------------------------------------------------------------------------------
// Section 11 and 12: result codes and close codes

/** Result codes by name (PROTOCOL.md section 11). */
export const ErrorCode = Object.freeze({
  PAYLOAD_EMPTY: 1001,
  PAYLOAD_TOO_LARGE: 1002,
  INVALID_ROOM_ID: 1003,
  INVALID_USER_ID: 1004,
  INVALID_USER_NAME: 1005,
  NOT_LOGGED_IN: 1006,
  UNKNOWN_TARGET_USER: 1007,
  INVALID_TARGETS: 1008,
  ALREADY_LOGGED_IN: 1009,
  USER_MISMATCH: 1010,
  INVALID_CURSOR: 1011,
  TOKEN_INVALID: 2001,
  TOKEN_EXPIRED: 2002,
  ROOM_NOT_GRANTED: 2003,
  PUBLISH_NOT_GRANTED: 2004,
  TOKEN_USER_MISMATCH: 2005,
  TOO_MANY_ROOMS: 3001,
  ROOM_FULL: 3002,
  KICKED_LOGGED_IN_ELSEWHERE: 3003,
  LOGGED_OUT: 3004,
  SLOW_RECEIVER: 3005,
  SERVER_SHUTTING_DOWN: 3006,
  INTERNAL: 3007,
  SERVER_ROOM_LIMIT: 3008,
  KICKED_BY_SERVER: 3009,
  ROOM_CLOSED: 3010,
  CLUSTER_UNAVAILABLE: 3011,
  LOGIN_RATE_LIMITED: 4001,
  USER_RATE_LIMITED: 4002,
  ROOM_RATE_LIMITED: 4003,
  TIMEOUT: 5001,
  DISCONNECTED: 5002,
  DATAGRAM_UNAVAILABLE: 5003,
  PROTOCOL: 5004,
});

const CODE_NAMES = new Map(Object.entries(ErrorCode).map(([name, code]) => [code, name]));

/** The name of a result code, `UNKNOWN` for one this version does not know. */
export function codeName(code) {
  return CODE_NAMES.get(code) ?? "UNKNOWN";
}

/** Connection close codes (PROTOCOL.md section 12). */
export const CloseCode = Object.freeze({
  NORMAL: 0,
  PROTOCOL_VIOLATION: 1,
  FRAME_TOO_LARGE: 2,
  SHUTDOWN: 3,
  NO_CONTROL_STREAM: 4,
  LOGIN_TIMEOUT: 5,
  CONTROL_STALLED: 6,
});
