// The JavaScript client's logic against a scripted relay in memory (a stand-in for the
// browser's WebTransport with the same streams and datagrams): request and reply, lanes and
// their events, barrage held for an unknown sender, replays without duplicates, reconnect with
// recovery, frames of unknown kinds skipped and malformed ones refused. The real browser
// against the real relay is tests/browser/. Run: node --test web/test/

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  FrameReader,
  Writer,
  decodeRequestFrame,
  encodeControlFrame,
  frame,
} from "../codec.js";
import { CloseCode, ErrorCode, QrelayError, connect, pageConnectOptions } from "../qrelay.js";

const utf8 = (s) => new TextEncoder().encode(s);
const tick = () => new Promise((r) => setTimeout(r, 5));

/** Waits until `check()` is true (bounded). */
async function until(check, what) {
  for (let i = 0; i < 400; i++) {
    if (check()) return;
    await tick();
  }
  throw new Error(`never: ${what}`);
}

/** The relay's side of one session: what the client sent, and ways to answer. */
class FakeSession {
  constructor(url, options) {
    FakeSession.all.push(this);
    this.url = url;
    this.options = options;
    this.requests = [];
    this.sentDatagrams = [];
    this.closedWith = null;
    this.ready = FakeSession.refuse ? Promise.reject(new Error("refused")) : Promise.resolve();
    this.ready.catch(() => {});
    this.closed = new Promise((resolve, reject) => {
      this.end = resolve;
      this.fail = reject;
    });
    this.incomingUnidirectionalStreams = new ReadableStream({ start: (c) => (this.lanes = c) });
    const session = this;
    this.datagrams = {
      maxDatagramSize: 1211,
      readable: new ReadableStream({ start: (c) => (session.datagramsIn = c) }),
      writable: new WritableStream({ write: (d) => session.sentDatagrams.push(d) }),
    };
  }
  async createBidirectionalStream() {
    const frames = new FrameReader();
    return {
      writable: new WritableStream({
        write: (chunk) => {
          frames.push(chunk);
          for (let body; (body = frames.next()) !== null; ) this.requests.push(decodeRequestFrame(body));
        },
      }),
      readable: new ReadableStream({ start: (c) => (this.control = c) }),
    };
  }
  close(info) {
    this.closedWith = info ?? {};
    this.end({ closeCode: info?.closeCode ?? 0, reason: info?.reason ?? "" });
  }
  reply(request, outcome) {
    this.control.enqueue(frame(encodeControlFrame({ kind: "Reply", request, outcome })));
  }
  /** Answers the last Login with LoggedIn. */
  async acceptLogin(roomNumber = 1, session = 7) {
    await until(() => this.requests.some((r) => r.body.kind === "Login"), "a login");
    const login = this.requests.filter((r) => r.body.kind === "Login").pop();
    this.reply(login.request, { kind: "LoggedIn", roomNumber, session });
    return login;
  }
  openLane(room, roomNumber, epoch) {
    let lane;
    this.lanes.enqueue(new ReadableStream({ start: (c) => (lane = c) }));
    const w = new Writer();
    w.string(room);
    w.varint(roomNumber);
    w.varint(epoch);
    lane.enqueue(frame(w.finish()));
    return { send: (body) => lane.enqueue(frame(body)) };
  }
  drop() {
    this.fail(new Error("connection lost"));
  }
}
FakeSession.all = [];
FakeSession.refuse = false;

function member(w, session, id, name) {
  w.varint(session);
  w.string(id);
  w.string(name);
}
function usersJoined(...members) {
  const w = new Writer();
  w.varint(0);
  w.varint(members.length);
  for (const [session, id, name] of members) member(w, session, id, name);
  return w.finish();
}
function broadcasts(...messages) {
  const w = new Writer();
  w.varint(2);
  w.varint(messages.length);
  for (const [id, fromId, text] of messages) {
    w.varint(id);
    w.varint(1700000000000n);
    w.string(fromId);
    w.string(fromId.toUpperCase());
    w.bytes(utf8(text));
  }
  return w.finish();
}
function recovered(complete, missed, replayed) {
  const w = new Writer();
  w.varint(5);
  w.bool(complete);
  w.option(missed, (w, [first, last]) => {
    w.varint(first);
    w.varint(last);
  });
  w.varint(replayed);
  return w.finish();
}
function barrage(roomNumber, id, sender, text) {
  const w = new Writer();
  w.varint(0);
  w.varint(roomNumber);
  w.varint(id);
  w.varint(1700000000000n);
  w.varint(sender);
  w.bytes(utf8(text));
  return w.finish();
}

async function loggedIn(options = {}) {
  FakeSession.all = [];
  const client = await connect({ url: "https://relay/qrelay", user: { id: "alice" }, WebTransport: FakeSession, ...options });
  const events = [];
  for (const type of ["broadcast", "barrage", "usersjoined", "usersleft", "recovered", "roomclosed", "connectionstate", "disconnected"]) {
    client.on(type, (detail) => events.push({ type, ...detail }));
  }
  const session = FakeSession.all[0];
  const login = client.loginRoom("lobby", "t1");
  await session.acceptLogin(1, 7);
  assert.deepEqual(await login, { roomNumber: 1, session: 7 });
  return { client, session, events };
}

test("a login is one Login request with the user and token, answered by its reply", async () => {
  const { client, session } = await loggedIn();
  assert.deepEqual(session.requests[0].body, {
    kind: "Login",
    room: "lobby",
    user: { id: "alice", name: "alice" },
    token: "t1",
    recover: null,
  });
  const sent = client.sendBroadcastMessage("lobby", "hi");
  await until(() => session.requests.length === 2, "the broadcast");
  assert.deepEqual(session.requests[1].body, { kind: "Broadcast", room: "lobby", payload: utf8("hi") });
  session.reply(session.requests[1].request, { kind: "Sent", messageId: 5n });
  assert.equal(await sent, 5);
  client.close();
});

test("a refusal rejects with a QrelayError naming its code; local checks need no round trip", async () => {
  const { client, session } = await loggedIn();
  const sent = client.sendCustomCommand("lobby", "x", ["nobody"]);
  await until(() => session.requests.length === 2, "the command");
  session.reply(session.requests[1].request, { kind: "Refused", code: ErrorCode.UNKNOWN_TARGET_USER, detail: "nobody is not here" });
  await assert.rejects(sent, (e) => e instanceof QrelayError && e.error === "UNKNOWN_TARGET_USER" && e.detail === "nobody is not here");
  await assert.rejects(client.sendBroadcastMessage("lobby", ""), (e) => e.code === ErrorCode.PAYLOAD_EMPTY);
  await assert.rejects(client.sendBroadcastMessage("lobby", "x".repeat(1025)), (e) => e.code === ErrorCode.PAYLOAD_TOO_LARGE);
  await assert.rejects(client.loginRoom("bad room", "t"), (e) => e.code === ErrorCode.INVALID_ROOM_ID);
  assert.equal(session.requests.length, 2, "nothing sent for the local refusals");
  client.close();
});

test("lane events become events; barrage from a sender not named yet waits for its join", async () => {
  const { client, session, events } = await loggedIn();
  const lane = session.openLane("lobby", 1, 9n);
  session.datagramsIn.enqueue(barrage(1, 100, 8, "early"));
  session.datagramsIn.enqueue(Uint8Array.of(0xff)); // the relay's keep-alive
  session.datagramsIn.enqueue(barrage(1, 101, 0, "from the API"));
  await until(() => events.some((e) => e.type === "barrage"), "the system barrage");
  assert.equal(events.filter((e) => e.type === "barrage").length, 1, "bob's barrage waits for his join");
  lane.send(usersJoined([8, "bob", "Bob"]));
  lane.send(broadcasts([1, "bob", "one"], [2, "bob", "two"]));
  await until(() => events.some((e) => e.type === "broadcast"), "the broadcasts");
  const barrageTexts = events.filter((e) => e.type === "barrage").map((e) => [e.messages[0].from.id, e.messages[0].text]);
  assert.deepEqual(barrageTexts, [["system", "from the API"], ["bob", "early"]]);
  assert.deepEqual(events.find((e) => e.type === "usersjoined").users, [{ id: "bob", name: "Bob" }]);
  const got = events.find((e) => e.type === "broadcast");
  assert.deepEqual(got.messages.map((m) => [m.id, m.text, m.from.name]), [[1, "one", "BOB"], [2, "two", "BOB"]]);
  client.close();
});

test("a large room: the login's member page names barrage senders; counts and pages on request", async () => {
  const { client, session, events } = await loggedIn();
  const counts = [];
  client.on("membercount", ({ count }) => counts.push(count));
  const pages = [];
  client.on("memberpage", (page) => pages.push(page));
  const lane = session.openLane("lobby", 1, 9n);
  const w = new Writer();
  w.varint(7);
  w.varint(1001);
  w.varint(1);
  member(w, 3, "bob", "Bob");
  w.varint(0x8000000700000003n);
  lane.send(w.finish());
  const count = new Writer();
  count.varint(6);
  count.varint(1002);
  lane.send(count.finish());
  session.datagramsIn.enqueue(barrage(1, 1, 3, "from the page"));
  await until(() => events.some((e) => e.type === "barrage") && counts.length === 1, "the barrage and the count");
  assert.deepEqual(pages.map((p) => [p.count, p.users, p.next]), [[1001, [{ id: "bob", name: "Bob" }], 0x8000000700000003n]]);
  assert.deepEqual(counts, [1002]);
  assert.equal(events.find((e) => e.type === "barrage").messages[0].from.name, "Bob");

  const fetched = client.fetchMembers("lobby", pages[0].next, 50);
  await until(() => session.requests.length === 2, "the request");
  assert.deepEqual(session.requests[1].body, { kind: "FetchMembers", room: "lobby", cursor: 0x8000000700000003n, limit: 50 });
  session.reply(session.requests[1].request, {
    kind: "Members",
    page: { count: 1002, members: [{ session: 9, user: { id: "carol", name: "Carol" } }], next: 0n },
  });
  assert.deepEqual(await fetched, { count: 1002, users: [{ id: "carol", name: "Carol" }], next: 0n });
  client.close();
});

test("a lost connection is remade and each room logged in again with what it last saw", async () => {
  const { client, session, events } = await loggedIn({ getToken: async () => "t2" });
  const lane = session.openLane("lobby", 1, 9n);
  lane.send(broadcasts([1, "bob", "one"], [2, "bob", "two"]));
  await until(() => events.some((e) => e.type === "broadcast"), "the first broadcasts");
  session.drop();
  await until(() => FakeSession.all.length === 2, "a new session");
  const again = FakeSession.all[1];
  const login = await again.acceptLogin(1, 8);
  assert.deepEqual(login.body.recover, { epoch: 9n, lastId: 2n });
  assert.equal(login.body.token, "t2");
  await until(() => events.some((e) => e.type === "connectionstate" && e.state === "reconnected"), "reconnected");
  // The replay repeats broadcast 2: it is delivered once.
  const replay = again.openLane("lobby", 1, 9n);
  replay.send(broadcasts([2, "bob", "two"], [3, "bob", "three"]));
  await until(() => events.filter((e) => e.type === "broadcast").length === 2, "the replay");
  const ids = events.filter((e) => e.type === "broadcast").flatMap((e) => e.messages.map((m) => m.id));
  assert.deepEqual(ids, [1, 2, 3]);
  assert.deepEqual(events.filter((e) => e.type === "connectionstate").map((e) => e.state), ["reconnecting", "reconnected"]);
  client.close();
});

test("a frame of an unknown kind is skipped; a malformed one closes the session", async () => {
  const { client, session, events } = await loggedIn();
  const lane = session.openLane("lobby", 1, 9n);
  lane.send(Uint8Array.of(42, 1, 2, 3)); // a newer relay's event
  lane.send(broadcasts([1, "bob", "after"]));
  await until(() => events.some((e) => e.type === "broadcast"), "the event after the unknown one");
  assert.equal(session.closedWith, null);
  lane.send(Uint8Array.of(2, 1)); // a batch of one message, cut short
  await until(() => session.closedWith !== null, "the close");
  assert.equal(session.closedWith.closeCode, CloseCode.PROTOCOL_VIOLATION);
  client.close();
});

test("reconnecting gives up after its bound and says so", async () => {
  const { session, events } = await loggedIn({ reconnectForMs: 300 });
  FakeSession.refuse = true;
  try {
    session.drop();
    await until(() => events.some((e) => e.type === "disconnected"), "giving up");
    const failed = events.find((e) => e.type === "connectionstate" && e.state === "failed");
    assert.match(failed.reason, /^gave up reconnecting after/);
  } finally {
    FakeSession.refuse = false;
  }
});

test("a malformed certificate hash is refused before any connection is tried", async () => {
  FakeSession.all = [];
  for (const hash of ["abc", "z".repeat(64), "ab".repeat(33), new Uint8Array(31)]) {
    await assert.rejects(
      connect({ url: "https://relay/qrelay", serverCertificateHashes: [hash], user: { id: "alice" }, WebTransport: FakeSession }),
      (e) => e instanceof TypeError && /serverCertificateHashes\[0\] is not a SHA-256/.test(e.message),
    );
  }
  assert.equal(FakeSession.all.length, 0);
  const client = await connect({ url: "https://relay/qrelay", serverCertificateHashes: ["AB".repeat(32)], user: { id: "alice" }, WebTransport: FakeSession });
  assert.deepEqual(FakeSession.all[0].options.serverCertificateHashes[0].value, new Uint8Array(32).fill(0xab));
  client.close();
});

test("a failed handshake names its likely causes", async () => {
  FakeSession.refuse = true;
  try {
    await assert.rejects(
      connect({ url: "https://relay/qrelay", user: { id: "alice" }, WebTransport: FakeSession }),
      (e) => e.code === ErrorCode.DISCONNECTED && /not running/.test(e.detail) && /certificate/.test(e.detail) && /console/.test(e.detail),
    );
  } finally {
    FakeSession.refuse = false;
  }
});

test("a recovery in a restarted room says so; only missed IDs mean broadcasts were lost", async () => {
  const { client, session, events } = await loggedIn();
  const lane = session.openLane("lobby", 1, 9n);
  lane.send(broadcasts([1, "bob", "one"], [2, "bob", "two"]));
  await until(() => events.some((e) => e.type === "broadcast"), "the first broadcasts");
  session.drop();
  await until(() => FakeSession.all.length === 2, "a new session");
  const again = FakeSession.all[1];
  const login = await again.acceptLogin(1, 8);
  assert.deepEqual(login.body.recover, { epoch: 9n, lastId: 2n });
  // The room was created anew (epoch 10): its IDs start again at 1, and they are all shown.
  const replay = again.openLane("lobby", 1, 10n);
  replay.send(recovered(false, null, 1));
  replay.send(broadcasts([1, "carol", "new one"]));
  await until(() => events.filter((e) => e.type === "broadcast").length === 2, "the replay");
  const r = events.find((e) => e.type === "recovered");
  assert.deepEqual(r, { type: "recovered", room: "lobby", complete: false, missed: null, replayed: 1, restarted: true });
  // A relogin in the same epoch that lost some: `missed` names them, and nothing restarted.
  again.drop();
  await until(() => FakeSession.all.length === 3, "a third session");
  const third = FakeSession.all[2];
  assert.deepEqual((await third.acceptLogin(1, 9)).body.recover, { epoch: 10n, lastId: 1n });
  third.openLane("lobby", 1, 10n).send(recovered(false, [2n, 5n], 0));
  await until(() => events.filter((e) => e.type === "recovered").length === 2, "the second recovery");
  const lost = events.filter((e) => e.type === "recovered")[1];
  assert.deepEqual([lost.complete, lost.missed, lost.restarted], [false, [2, 5], false]);
  client.close();
});

test("pageConnectOptions checks the status before reading config.json", async () => {
  const realFetch = globalThis.fetch;
  try {
    globalThis.fetch = async () => new Response("<h1>Bad Gateway</h1>", { status: 502 });
    await assert.rejects(pageConnectOptions("http://relay.example:8080/"), /^Error: http:\/\/relay\.example:8080\/config\.json: HTTP 502$/);
    globalThis.fetch = async () => Response.json({ error: "NOT_FOUND", detail: "WebTransport is off" }, { status: 404 });
    await assert.rejects(pageConnectOptions("http://relay.example:8080/"), /config\.json: HTTP 404: WebTransport is off/);
    globalThis.fetch = async () => {
      throw new TypeError("Failed to fetch");
    };
    await assert.rejects(pageConnectOptions("http://relay.example:8080/"), /cannot reach the relay's page listener at http:\/\/relay\.example:8080\/config\.json: Failed to fetch/);
    globalThis.fetch = async () =>
      Response.json({ webtransport: { port: 4433, path: "/qrelay", certificate_hashes: ["ab".repeat(32)] }, dev_tokens: true });
    assert.deepEqual(await pageConnectOptions("http://127.0.0.1:8080/", 5000), {
      url: "https://127.0.0.1:5000/qrelay",
      serverCertificateHashes: ["ab".repeat(32)],
      devTokens: true,
    });
  } finally {
    globalThis.fetch = realFetch;
  }
});
