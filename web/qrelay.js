// The qrelay JavaScript client: the protocol of docs/PROTOCOL.md over WebTransport, with the
// shape of the Rust client (src/client): connect, log in to rooms, send each kind of message
// and get its result, receive events, reconnect and recover by itself. A plain ES module: no
// build step, no dependency. Types: qrelay.d.ts beside this file.
//
// Mapping (PROTOCOL.md, "WebTransport"): the control stream is a bidirectional stream of the
// session, each room lane a unidirectional stream the relay opens, barrage the session's
// datagrams.

import {
  CloseCode,
  CodecError,
  ErrorCode,
  FrameReader,
  MAX_PAYLOAD,
  MEMBERS_FROM_START,
  MAX_REQUEST_FRAME,
  MAX_SERVER_FRAME,
  UnknownVariant,
  codeName,
  decodeControlFrame,
  decodeLaneEvent,
  decodeLaneHeader,
  decodeServerDatagram,
  encodeClientDatagram,
  encodeRequestFrame,
  frame,
  isValidRoomId,
} from "./codec.js";

export { ErrorCode, CloseCode, codeName } from "./codec.js";

/** How long a request waits for its reply before it fails with TIMEOUT. */
const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
/** How long the client keeps reconnecting before it gives up (the Rust client's default). */
const DEFAULT_RECONNECT_FOR_MS = 120_000;
/** First and longest wait between two reconnect attempts. */
const INITIAL_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 2000;
/** A barrage whose sender the lane has not named yet is held this long (PROTOCOL.md section 6). */
const BARRAGE_HOLD_MS = 500;
/** Oldest barrage the browser hands to the page (the Rust client's `barrage_max_age`). */
const BARRAGE_MAX_AGE_MS = 500;
/** Most barrage held per room for an unknown sender. */
const BARRAGE_HOLD_MAX = 256;
/** The body of the relay's keep-alive datagram (never a valid ServerDatagram). */
const KEEP_ALIVE = 0xff;
/** The sender of barrage and broadcasts from the server API (session 0). */
const SYSTEM_USER = Object.freeze({ id: "system", name: "System" });

const utf8 = new TextEncoder();
const text = new TextDecoder("utf-8", { fatal: false });

/** A refused or failed operation: `code` is a PROTOCOL.md result code, `error` its name. */
export class QrelayError extends Error {
  constructor(code, detail) {
    super(`${codeName(code)} (${code}): ${detail}`);
    this.name = "QrelayError";
    this.code = code;
    this.error = codeName(code);
    this.detail = detail;
  }
}

/**
 * Decodes with `decode`; a frame of a kind this version does not know (a newer relay's) is
 * skipped (null): it is whole, so the stream stays in step. Other errors are thrown.
 */
function skipUnknown(decode) {
  try {
    return decode();
  } catch (e) {
    if (e instanceof UnknownVariant && (e.what === "LaneEvent" || e.what === "ControlFrame")) return null;
    throw e;
  }
}

/** Hex (as `/config.json` gives it) to bytes. */
function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * One `serverCertificateHashes` entry as the 32 bytes of a SHA-256: 64 hex characters or a
 * `Uint8Array` of 32 bytes; anything else is refused here (the browser would only report a
 * failed handshake).
 */
function certificateHash(hash, index) {
  if (typeof hash === "string" && /^[0-9a-fA-F]{64}$/.test(hash)) return hexBytes(hash);
  if (hash instanceof Uint8Array && hash.length === 32) return hash;
  const shown = typeof hash === "string" ? JSON.stringify(hash) : String(hash);
  throw new TypeError(
    `serverCertificateHashes[${index}] is not a SHA-256 (64 hex characters or 32 bytes): ${shown.slice(0, 80)}`,
  );
}

/** What a failed WebTransport handshake most likely means (the browser does not say). */
const HANDSHAKE_CAUSES =
  "the relay is not running or its UDP port is not reachable from here, or the browser does not " +
  "trust its certificate (a serverCertificateHashes value that is wrong or stale after the relay " +
  "renewed its certificate, or a real certificate the browser does not trust); the browser " +
  "console has the details";

function payloadOf(message) {
  const bytes = typeof message === "string" ? utf8.encode(message) : message;
  if (bytes.length === 0) throw new QrelayError(ErrorCode.PAYLOAD_EMPTY, "the message is empty");
  if (bytes.length > MAX_PAYLOAD) {
    throw new QrelayError(
      ErrorCode.PAYLOAD_TOO_LARGE,
      `the message is ${bytes.length} bytes, more than ${MAX_PAYLOAD}`,
    );
  }
  return bytes;
}

function received(message) {
  return {
    id: Number(message.id),
    sentAtMs: Number(message.sentAtMs),
    from: message.from,
    payload: message.payload,
    text: text.decode(message.payload),
  };
}

/**
 * Connects to a relay and returns a {@link Client}.
 * @param {import("./qrelay.d.ts").ConnectOptions} options
 */
export async function connect(options) {
  const client = new Client(options);
  await client._open();
  return client;
}

/**
 * Fetches a page listener's `/config.json` and returns the options `connect` needs to reach
 * its relay from a page on `location` (its host, the relay's port and certificate hashes).
 */
export async function pageConnectOptions(base = globalThis.location, port) {
  const url = new URL("/config.json", base);
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`cannot reach the relay's page listener at ${url}: ${e.message ?? e}`);
  }
  if (!response.ok) {
    // The relay answers errors as JSON with a `detail`; a proxy in front of it may not.
    const detail = await response.json().then((body) => body.detail, () => undefined);
    throw new Error(`${url}: HTTP ${response.status}${detail ? `: ${detail}` : ""}`);
  }
  const config = await response.json();
  const wt = config.webtransport;
  const host = new URL(base).hostname;
  const hostPart = host.includes(":") ? `[${host}]` : host;
  return {
    url: `https://${hostPart}:${port ?? wt.port}${wt.path}`,
    serverCertificateHashes: wt.certificate_hashes,
    devTokens: config.dev_tokens,
  };
}

/** A connection to a relay, with its rooms. Events: see qrelay.d.ts (`ClientEvents`). */
export class Client extends EventTarget {
  constructor(options) {
    super();
    this.options = {
      requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS,
      reconnect: true,
      reconnectForMs: DEFAULT_RECONNECT_FOR_MS,
      ...options,
    };
    if (!options.user?.id) throw new TypeError("options.user.id is required");
    this.user = { id: options.user.id, name: options.user.name ?? options.user.id };
    /** Rooms by ID: token, room number, epoch, last broadcast ID, members by session. */
    this.rooms = new Map();
    /** Rooms whose login is under way. */
    this.joining = new Map();
    this.pending = new Map();
    this.nextRequest = 1;
    this.closedByUser = false;
    this.transport = null;
    this.session = null;
  }

  /** Adds a listener that gets the event's `detail`; returns a function that removes it. */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Logs in to `room` with `token`; resolves with `{ roomNumber, session }`. */
  async loginRoom(room, token) {
    if (!isValidRoomId(room)) {
      throw new QrelayError(ErrorCode.INVALID_ROOM_ID, `room ID ${JSON.stringify(room)} is not valid`);
    }
    if (this.rooms.has(room)) {
      throw new QrelayError(ErrorCode.ALREADY_LOGGED_IN, `already logged in to ${room}`);
    }
    const state = { room, token, roomNumber: 0, epoch: null, lastId: 0n, members: new Map(), held: [] };
    // The lane may open before the reply arrives: it finds the room here meanwhile.
    this.joining.set(room, state);
    try {
      const outcome = await this._login(state, null);
      this.rooms.set(room, state);
      return outcome;
    } finally {
      this.joining.delete(room);
    }
  }

  /** Leaves `room`. */
  async logoutRoom(room) {
    this.rooms.delete(room);
    await this._request({ kind: "Logout", room });
  }

  /** Sends a broadcast (reliable, ordered); resolves with its per-room message ID. */
  async sendBroadcastMessage(room, message) {
    const outcome = await this._request({ kind: "Broadcast", room, payload: payloadOf(message) });
    const id = outcome.messageId;
    const state = this.rooms.get(room);
    if (state && id > state.lastId) state.lastId = id;
    return Number(id);
  }

  /** Sends a barrage (a datagram, best effort); resolves with its message ID. */
  async sendBarrageMessage(room, message) {
    const payload = payloadOf(message);
    const state = this._room(room);
    const request = this.nextRequest++;
    const reply = this._await(request);
    await this._sendDatagram(
      encodeClientDatagram({ kind: "Barrage", roomNumber: state.roomNumber, request, payload }),
    );
    return Number((await reply).messageId);
  }

  /** Sends a barrage that gets no reply: nothing to await, no ID, no refusal. */
  sendBarrageMessageNoReply(room, message) {
    const payload = payloadOf(message);
    const state = this._room(room);
    return this._sendDatagram(
      encodeClientDatagram({ kind: "BarrageNoReply", roomNumber: state.roomNumber, payload }),
    );
  }

  /** Sends a custom command to `to` (user IDs; empty: everyone else in the room). */
  async sendCustomCommand(room, message, to = []) {
    const outcome = await this._request({ kind: "Command", room, to, payload: payloadOf(message) });
    return Number(outcome.messageId);
  }

  /**
   * One page of `room`'s member list, in session order: `{ count, users, next }`; pass `next`
   * back for the following page (`0n` after the last). `limit` 0 asks for the most (200).
   */
  async fetchMembers(room, cursor = MEMBERS_FROM_START, limit = 0) {
    const outcome = await this._request({ kind: "FetchMembers", room, cursor: BigInt(cursor), limit });
    const state = this.rooms.get(room);
    // The sessions name barrage senders.
    if (state) for (const m of outcome.page.members) state.members.set(m.session, m.user);
    return { count: outcome.page.count, users: outcome.page.members.map((m) => m.user), next: outcome.page.next };
  }

  /** Replaces the token of every room, without reconnecting. */
  async renewToken(token) {
    await this._request({ kind: "RenewToken", token });
    for (const state of this.rooms.values()) state.token = token;
  }

  /** Closes the connection for good (code NORMAL); no event follows. */
  close() {
    this.closedByUser = true;
    this._failPending(new QrelayError(ErrorCode.DISCONNECTED, "the client was closed"));
    try {
      this.transport?.close({ closeCode: CloseCode.NORMAL, reason: "client closed" });
    } catch {
      // Already closed.
    }
  }

  // -------------------------------------------------------------------------------------------
  // Internals

  _room(room) {
    const state = this.rooms.get(room);
    if (!state) throw new QrelayError(ErrorCode.NOT_LOGGED_IN, `not logged in to room ${room}`);
    return state;
  }

  async _open() {
    const { url, serverCertificateHashes } = this.options;
    const WebTransportImpl = this.options.WebTransport ?? globalThis.WebTransport;
    if (!WebTransportImpl) {
      throw new Error(
        globalThis.isSecureContext === false
          ? "WebTransport needs a secure page: serve it over https, or from localhost or 127.0.0.1"
          : "this browser has no WebTransport",
      );
    }
    const options = {};
    if (serverCertificateHashes?.length) {
      options.serverCertificateHashes = serverCertificateHashes.map((hash, i) => ({
        algorithm: "sha-256",
        value: certificateHash(hash, i),
      }));
    }
    const transport = new WebTransportImpl(url, options);
    try {
      await transport.ready;
    } catch (e) {
      throw new QrelayError(
        ErrorCode.DISCONNECTED,
        `cannot reach the relay at ${url}: ${String(e.message ?? e).replace(/\.$/, "")}. Likely causes: ${HANDSHAKE_CAUSES}`,
      );
    }
    const control = await transport.createBidirectionalStream();
    this.transport = transport;
    this.control = control.writable.getWriter();
    this.datagrams = transport.datagrams.writable.getWriter();
    // Barrage the page has not read within this age is dropped by the browser, as the Rust
    // client's `barrage_max_age` does: live comments are never shown late.
    if ("incomingMaxAge" in transport.datagrams) transport.datagrams.incomingMaxAge = BARRAGE_MAX_AGE_MS;
    this.lanes = new Map();
    this._readControl(transport, control.readable);
    this._readLanes(transport);
    this._readDatagrams(transport);
    transport.closed.then(
      (info) => this._lost(transport, info.closeCode, info.reason),
      (e) => this._lost(transport, null, e.message ?? String(e)),
    );
  }

  _login(state, recover) {
    return this._request({
      kind: "Login",
      room: state.room,
      user: this.user,
      token: state.token,
      recover,
    }).then((outcome) => {
      state.roomNumber = outcome.roomNumber;
      this.session = outcome.session;
      return { roomNumber: outcome.roomNumber, session: outcome.session };
    });
  }

  _await(request) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(request);
        reject(new QrelayError(ErrorCode.TIMEOUT, `no reply within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this.pending.set(request, { resolve, reject, timer });
    });
  }

  async _request(body) {
    if (!this.transport) throw new QrelayError(ErrorCode.DISCONNECTED, "not connected");
    const request = this.nextRequest++;
    const bytes = encodeRequestFrame({ request, body });
    if (bytes.length > MAX_REQUEST_FRAME) {
      throw new QrelayError(ErrorCode.PAYLOAD_TOO_LARGE, `request of ${bytes.length} bytes`);
    }
    const reply = this._await(request);
    try {
      await this.control.write(frame(bytes));
    } catch (e) {
      this._settle(request, null, new QrelayError(ErrorCode.DISCONNECTED, `cannot send: ${e.message ?? e}`));
    }
    return reply;
  }

  async _sendDatagram(bytes) {
    if (!this.transport) throw new QrelayError(ErrorCode.DISCONNECTED, "not connected");
    const max = this.transport.datagrams.maxDatagramSize;
    if (max !== undefined && bytes.length > max) {
      throw new QrelayError(ErrorCode.DATAGRAM_UNAVAILABLE, `datagram of ${bytes.length} bytes, path takes ${max}`);
    }
    await this.datagrams.write(bytes);
  }

  _settle(request, outcome, error) {
    const pending = this.pending.get(request);
    if (!pending) return;
    this.pending.delete(request);
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else if (outcome.kind === "Refused") pending.reject(new QrelayError(outcome.code, outcome.detail));
    else pending.resolve(outcome);
  }

  _failPending(error) {
    for (const request of [...this.pending.keys()]) this._settle(request, null, error);
  }

  async _readControl(transport, readable) {
    const reader = readable.getReader();
    const frames = new FrameReader(MAX_SERVER_FRAME);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        frames.push(value);
        for (let body; (body = frames.next()) !== null; ) {
          const f = skipUnknown(() => decodeControlFrame(body));
          if (f === null) continue;
          if (f.kind === "Reply") this._settle(f.request, f.outcome, null);
          else this.emit("tokenwillexpire", { expiresAtMs: Number(f.expiresAtMs) });
        }
      }
    } catch (e) {
      if (e instanceof CodecError) this._violation(transport, e);
    }
  }

  async _readLanes(transport) {
    const streams = transport.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await streams.read();
        if (done) return;
        this._readLane(transport, value);
      }
    } catch {
      // The session ended: `closed` says how.
    }
  }

  async _readLane(transport, readable) {
    const reader = readable.getReader();
    const frames = new FrameReader(MAX_SERVER_FRAME);
    let state = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        frames.push(value);
        for (let body; (body = frames.next()) !== null; ) {
          if (state === null) {
            const header = decodeLaneHeader(body);
            state = this.rooms.get(header.room) ?? this.joining.get(header.room) ?? null;
            if (!state) state = { room: header.room, members: new Map(), held: [], lastId: 0n, orphan: true };
            // Another epoch: the room was created anew on the relay (its IDs start again at 1).
            state.restarted = state.epoch != null && state.epoch !== header.epoch;
            if (state.restarted) state.lastId = 0n;
            state.epoch = header.epoch;
            state.roomNumber = header.roomNumber;
            state.members = new Map();
            continue;
          }
          const event = skipUnknown(() => decodeLaneEvent(body));
          if (event !== null) this._laneEvent(state, event);
        }
      }
    } catch (e) {
      if (e instanceof CodecError) this._violation(transport, e);
    }
  }

  _laneEvent(state, event) {
    const room = state.room;
    switch (event.kind) {
      case "UsersJoined": {
        for (const m of event.members) state.members.set(m.session, m.user);
        this.emit("usersjoined", { room, users: event.members.map((m) => m.user) });
        this._releaseHeld(state);
        break;
      }
      case "UsersLeft": {
        for (const m of event.members) state.members.delete(m.session);
        this.emit("usersleft", { room, users: event.members.map((m) => m.user) });
        break;
      }
      case "Broadcasts": {
        // A replay after a reconnect may repeat what was seen: keep each ID once.
        const fresh = event.messages.filter((m) => m.id > state.lastId);
        if (fresh.length === 0) break;
        state.lastId = fresh[fresh.length - 1].id;
        this.emit("broadcast", { room, messages: fresh.map(received) });
        break;
      }
      case "Command":
        this.emit("command", { room, message: received(event.message) });
        break;
      case "MemberPage": {
        // A large room's login: the count and a first page instead of the whole list.
        for (const m of event.page.members) state.members.set(m.session, m.user);
        this.emit("memberpage", {
          room,
          count: event.page.count,
          users: event.page.members.map((m) => m.user),
          next: event.page.next,
        });
        this._releaseHeld(state);
        break;
      }
      case "MemberCount":
        this.emit("membercount", { room, count: event.count });
        break;
      case "Recovered":
        this.emit("recovered", {
          room,
          complete: event.complete,
          missed: event.missed && event.missed.map(Number),
          replayed: Number(event.replayed),
          restarted: Boolean(state.restarted),
        });
        break;
      case "Closed": {
        const detail = { room, code: event.code, error: codeName(event.code), detail: event.detail };
        if (event.code === ErrorCode.SERVER_SHUTTING_DOWN && this.options.reconnect) {
          // The connection ends next; the reconnect logs in again.
          break;
        }
        const relogin = event.code === ErrorCode.SLOW_RECEIVER || event.code === ErrorCode.CLUSTER_UNAVAILABLE;
        if (relogin && this.options.reconnect && this.rooms.has(room)) {
          this._relogin(state);
          break;
        }
        if (this.rooms.get(room) === state) this.rooms.delete(room);
        this.emit("roomclosed", detail);
        break;
      }
    }
  }

  async _relogin(state) {
    try {
      await this._login(state, { epoch: state.epoch, lastId: state.lastId });
    } catch (e) {
      this.rooms.delete(state.room);
      this.emit("roomclosed", { room: state.room, code: e.code, error: e.error, detail: e.detail });
    }
  }

  async _readDatagrams(transport) {
    const reader = transport.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        // The relay's keep-alive (PROTOCOL.md section 13).
        if (value.length === 1 && value[0] === KEEP_ALIVE) continue;
        let d;
        try {
          d = decodeServerDatagram(value);
        } catch {
          continue; // A malformed datagram is dropped, as the Rust client does.
        }
        const state = [...this.rooms.values(), ...this.joining.values()].find(
          (s) => s.roomNumber === d.roomNumber,
        );
        if (!state) continue;
        this._barrage(state, d);
      }
    } catch {
      // The session ended.
    }
  }

  _barrage(state, d) {
    const from = d.sender === 0 ? SYSTEM_USER : state.members.get(d.sender);
    if (!from) {
      if (state.held.length < BARRAGE_HOLD_MAX) state.held.push({ d, at: Date.now() });
      return;
    }
    this.emit("barrage", { room: state.room, messages: [received({ ...d, from })] });
  }

  _releaseHeld(state) {
    const now = Date.now();
    const held = state.held;
    state.held = [];
    for (const { d, at } of held) {
      if (now - at > BARRAGE_HOLD_MS) continue;
      this._barrage(state, d);
    }
  }

  _violation(transport, error) {
    try {
      transport.close({ closeCode: CloseCode.PROTOCOL_VIOLATION, reason: error.message.slice(0, 200) });
    } catch {
      // Already closed.
    }
  }

  /** The session ended: reconnect and recover, unless the user closed it or must not. */
  async _lost(transport, code, reason) {
    if (transport !== this.transport) return;
    this.transport = null;
    this._failPending(new QrelayError(ErrorCode.DISCONNECTED, `connection lost: ${reason}`));
    if (this.closedByUser) return;
    const final = code === CloseCode.LOGIN_TIMEOUT || code === CloseCode.PROTOCOL_VIOLATION;
    if (!this.options.reconnect || final || this.rooms.size === 0) {
      this.emit("disconnected", { code, reason });
      return;
    }
    const started = Date.now();
    let lastError = reason;
    for (let attempt = 1; !this.closedByUser; attempt++) {
      this.emit("connectionstate", { state: "reconnecting", attempt });
      const backoff = Math.min(INITIAL_BACKOFF_MS * 2 ** (attempt - 1), MAX_BACKOFF_MS);
      await new Promise((resolve) => setTimeout(resolve, backoff));
      if (Date.now() - started > this.options.reconnectForMs) break;
      try {
        if (this.options.refresh) Object.assign(this.options, await this.options.refresh());
        await this._open();
        for (const state of [...this.rooms.values()]) {
          if (this.options.getToken) state.token = await this.options.getToken(state.room);
          const recover = state.epoch != null ? { epoch: state.epoch, lastId: state.lastId } : null;
          try {
            await this._login(state, recover);
          } catch (e) {
            if (!(e instanceof QrelayError) || e.code === ErrorCode.DISCONNECTED || e.code === ErrorCode.TIMEOUT) throw e;
            this.rooms.delete(state.room);
            this.emit("roomclosed", { room: state.room, code: e.code, error: e.error, detail: e.detail });
          }
        }
        this.emit("connectionstate", { state: "reconnected" });
        return;
      } catch (e) {
        lastError = e.message ?? String(e);
        try {
          this.transport?.close();
        } catch {
          // Already closed.
        }
        this.transport = null;
      }
    }
    if (this.closedByUser) return;
    const why = `gave up reconnecting after ${Math.round((Date.now() - started) / 1000)} s; last error: ${lastError}`;
    this.emit("connectionstate", { state: "failed", reason: why });
    this.emit("disconnected", { code: null, reason: why });
  }
}
