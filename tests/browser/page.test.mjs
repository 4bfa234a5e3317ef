// The live-comment page in a real headless Chromium, against a real `qrelay serve` and the
// `qrelay-cli` binary: WebTransport (draft-02) to the relay's UDP port with the short-lived
// development certificate, the JavaScript client, the page. Outcomes only, never timing.
// Run by scripts/test (node --test tests/browser/).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  barrageUntilSeen,
  cli,
  listen,
  pageSees,
  pageState,
  startBrowser,
  startRelay,
  type,
  udpProxy,
} from "./harness.mjs";

/**
 * The relay of these tests: default limits, except an idle timeout short enough that a page
 * whose network is cut notices within seconds (QUIC takes the smaller of both sides').
 */
const IDLE_TIMEOUT_MS = 3000;
const RELAY_CONFIG = `idle_timeout_ms = ${IDLE_TIMEOUT_MS}\n`;

let relay;
let chromium;

before(async () => {
  relay = await startRelay({ config: RELAY_CONFIG });
  chromium = await startBrowser();
});

after(async () => {
  await chromium?.close();
  await relay?.close();
});

test("the page receives a broadcast and a barrage sent with qrelay-cli", async () => {
  const page = await chromium.open(relay, "room=cli-to-page&user=alice&name=Alice");
  assert.match(await pageState(page, "ready"), /In room cli-to-page as alice/);
  const sent = await cli(relay, "bob", ["broadcast", "--room", "cli-to-page", "hello from the CLI"]);
  assert.equal(sent.message_id, 1);
  await pageSees(page, (seen) => seen.broadcasts.some((m) => m.text === "hello from the CLI" && m.from === "bob"), "the broadcast");
  const chat = await page.$$eval("#chat li", (items) => items.map((li) => li.textContent));
  assert.ok(chat.some((line) => line === "bobhello from the CLI"), JSON.stringify(chat));

  await barrageUntilSeen(
    page,
    () => cli(relay, "bob", ["barrage", "--room", "cli-to-page", "first!"]),
    (seen) => seen.barrage.some((m) => m.text === "first!" && m.from === "bob"),
    "the barrage",
  );
  const flying = await page.$$eval("#stage .comment", (items) => items.map((c) => c.textContent));
  assert.ok(flying.includes("first!"), JSON.stringify(flying));
  await page.close();
});

test("received text is shown as text, never as HTML", async () => {
  const page = await chromium.open(relay, "room=escape&user=alice");
  await pageState(page, "ready");
  const markup = '<img src=x onerror="window.injected=1"><b>bold</b>';
  await cli(relay, "mallory", ["broadcast", "--room", "escape", markup]);
  await barrageUntilSeen(
    page,
    () => cli(relay, "mallory", ["barrage", "--room", "escape", markup]),
    (seen) => seen.barrage.length > 0,
    "the barrage",
  );
  await pageSees(page, (seen) => seen.broadcasts.length > 0, "the broadcast");
  const result = await page.evaluate(() => ({
    injected: window.injected ?? null,
    images: document.querySelectorAll("#chat img, #stage img").length,
    text: [...document.querySelectorAll("#chat li .text")].map((el) => el.textContent).find((t) => t.includes("bold")),
  }));
  assert.deepEqual(result, { injected: null, images: 0, text: markup });
  await page.close();
});

test("a line typed in the page reaches qrelay-cli listen", async () => {
  const listener = await listen(relay, "carol", "page-to-cli");
  try {
    const page = await chromium.open(relay, "room=page-to-cli&user=alice&name=Alice");
    await pageState(page, "ready");
    await type(page, "hello from the browser");
    const line = await listener.next((l) => l.event === "broadcast", "the page's broadcast on the CLI");
    assert.equal(line.room, "page-to-cli");
    assert.equal(line.messages[0].text, "hello from the browser");
    assert.deepEqual(line.messages[0].from, { id: "alice", name: "Alice" });
    await type(page, "/barrage flying from the page");
    const barrage = await listener.next((l) => l.event === "barrage", "the page's barrage on the CLI");
    assert.equal(barrage.messages[0].text, "flying from the page");
    await page.close();
  } finally {
    await listener.close();
  }
});

test("two pages exchange broadcasts and barrage, and see each other come and go", async () => {
  const alice = await chromium.open(relay, "room=two-pages&user=alice&name=Alice");
  await pageState(alice, "ready");
  const bob = await chromium.open(relay, "room=two-pages&user=bob&name=Bob");
  await pageState(bob, "ready");
  await pageSees(alice, (seen) => seen.notices.includes("Bob joined"), "bob's join");
  await pageSees(bob, (seen) => seen.notices.includes("Alice joined"), "alice in the member list");

  await type(alice, "hi bob");
  await pageSees(bob, (seen) => seen.broadcasts.some((m) => m.text === "hi bob" && m.from === "alice"), "alice's broadcast");
  await type(bob, "/barrage wow");
  await pageSees(alice, (seen) => seen.barrage.some((m) => m.text === "wow" && m.from === "bob"), "bob's barrage");
  await bob.click("#barrage-toggle");
  await type(bob, "toggled barrage");
  await pageSees(alice, (seen) => seen.barrage.some((m) => m.text === "toggled barrage"), "the toggle's barrage");
  // Neither page got its own message back.
  const own = await alice.evaluate(() => window.qrelayPage.seen.broadcasts.filter((m) => !m.mine && m.from === "alice").length);
  assert.equal(own, 0);

  await bob.close();
  await pageSees(alice, (seen) => seen.notices.includes("Bob left"), "bob's leave");
  await alice.close();
});

test("a page whose network drops reconnects and recovers the broadcasts it missed", async () => {
  const proxy = await udpProxy(relay.quic);
  try {
    const page = await chromium.open(relay, `room=drop&user=alice&port=${proxy.port}`);
    await pageState(page, "ready");
    await cli(relay, "bob", ["broadcast", "--room", "drop", "before the cut"]);
    await pageSees(page, (seen) => seen.broadcasts.some((m) => m.text === "before the cut"), "the first broadcast");

    proxy.cut(true);
    // Three senders: one user may send 2 broadcasts a second (the default limits).
    for (const n of [1, 2, 3]) {
      await cli(relay, `sender${n}`, ["broadcast", "--room", "drop", `missed ${n}`]);
    }
    await pageSees(page, (seen) => seen.states.includes("reconnecting"), "the loss of its connection");
    proxy.cut(false);
    await pageSees(page, (seen) => seen.states.includes("reconnected"), "the reconnect");
    await pageSees(page, (seen) => ["missed 1", "missed 2", "missed 3"].every((t) => seen.broadcasts.some((m) => m.text === t)), "the replayed broadcasts");
    const seen = await page.evaluate(() => window.qrelayPage.seen);
    const ids = seen.broadcasts.map((m) => m.id);
    assert.deepEqual(ids, [1, 2, 3, 4], "every broadcast once, in order");
    assert.ok(seen.notices.some((n) => /3 missed message\(s\) replayed/.test(n)), JSON.stringify(seen.notices));
    assert.equal(await pageState(page, "ready"), "In room drop as alice (reconnected)");
    await page.close();
  } finally {
    proxy.close();
  }
});

test("an idle page keeps its connection past the relay's idle timeout, and its barrage", async () => {
  const page = await chromium.open(relay, "room=idle&user=alice");
  await pageState(page, "ready");
  // Browsers send no keep-alives on an idle session: the relay's keep the page connected.
  await new Promise((resolve) => setTimeout(resolve, 3 * IDLE_TIMEOUT_MS));
  const states = await page.evaluate(() => window.qrelayPage.seen.states);
  assert.deepEqual(states, [], "the connection was lost and remade");
  // The keep-alives (datagrams) leave the page's barrage and broadcasts flowing.
  await barrageUntilSeen(
    page,
    () => cli(relay, "bob", ["barrage", "--room", "idle", "after the keep-alives"]),
    (seen) => seen.barrage.some((m) => m.text === "after the keep-alives"),
    "barrage after the keep-alives",
  );
  await cli(relay, "bob", ["broadcast", "--room", "idle", "still here"]);
  await pageSees(page, (seen) => seen.broadcasts.some((m) => m.text === "still here"), "a broadcast after the keep-alives");
  await page.close();
});

test("a bad token shows a readable error in the page", async () => {
  const page = await chromium.open(relay, "room=lobby&user=alice&token=not-a-jwt");
  const status = await pageState(page, "error");
  assert.match(status, /^Login to lobby refused: TOKEN_INVALID \(2001\): /);
  await page.close();
});
