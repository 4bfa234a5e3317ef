// The browser benchmark (BENCHMARKS.md, "Browsers"): latency of a broadcast from one page to
// another and from `qrelay-cli chat` to a page (p50/p99), and barrage throughput into one
// page. One relay (`qrelay serve --limits benchmark`, the debug or release binary under
// CARGO_TARGET_DIR, QRELAY_BIN to choose), one headless Chromium, all on 127.0.0.1; bounded in
// messages and time. Run: scripts/bench-browser (or node tests/browser/bench.mjs).
//
// Times are wall-clock milliseconds with sub-millisecond precision on both ends
// (`performance.timeOrigin + performance.now()` in the pages and in node), which share the
// machine's clock; each message carries its send time.

import { spawn } from "node:child_process";
import { join } from "node:path";

import { QRELAY_CLI, pageState, startBrowser, startRelay, within } from "./harness.mjs";

/** Broadcasts timed per path, one at a time (the next leaves after a pause). */
const LATENCY_MESSAGES = Number(process.env.BENCH_MESSAGES ?? 300);
/** Pause between two timed broadcasts: the latency of a quiet room, not a queue. */
const LATENCY_GAP_MS = 10;
/** Barrage lines `qrelay-cli chat` is given at once (it sends them one after another). */
const BARRAGE_CLI_MESSAGES = 5000;
/** Barrage offered to one page by another: rates (per second) and how long each runs. */
const BARRAGE_RATES = [1000, 5000, 20000];
const BARRAGE_SECONDS = 3;

const now = () => performance.timeOrigin + performance.now();

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(name, samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const fmt = (v) => v.toFixed(2);
  return `${name}: n=${sorted.length} p50=${fmt(percentile(sorted, 50))} ms p99=${fmt(percentile(sorted, 99))} ms max=${fmt(sorted[sorted.length - 1])} ms`;
}

/** Starts recording in `page`: every broadcast and barrage with its receive time. */
async function record(page) {
  await page.evaluate(() => {
    const client = window.qrelayPage.client;
    window.bench = { broadcasts: [], barrage: 0 };
    client.on("broadcast", ({ messages }) => {
      const at = performance.timeOrigin + performance.now();
      for (const m of messages) window.bench.broadcasts.push({ text: m.text, at });
    });
    client.on("barrage", ({ messages }) => (window.bench.barrage += messages.length));
  });
}

async function delays(page, from) {
  const got = await page.evaluate(() => window.bench.broadcasts.splice(0));
  return got
    .map((m) => ({ sent: JSON.parse(m.text), at: m.at }))
    .filter(({ sent }) => sent.from === from)
    .map(({ sent, at }) => at - sent.t);
}

const relay = await startRelay({ args: ["--limits", "benchmark"], http: true });
const chromium = await startBrowser();
try {
  const room = "bench";
  const alice = await chromium.open(relay, `room=${room}&user=alice`);
  const bob = await chromium.open(relay, `room=${room}&user=bob`);
  await pageState(alice, "ready");
  await pageState(bob, "ready");
  await record(bob);

  // Page to page: alice sends, bob receives (one browser process, two WebTransport sessions).
  await within(
    alice.evaluate(
      async (n, gap) => {
        const client = window.qrelayPage.client;
        for (let i = 0; i < n; i++) {
          const t = performance.timeOrigin + performance.now();
          await client.sendBroadcastMessage("bench", JSON.stringify({ from: "alice", i, t }));
          await new Promise((r) => setTimeout(r, gap));
        }
      },
      LATENCY_MESSAGES,
      LATENCY_GAP_MS,
    ),
    "page-to-page broadcasts",
    120_000,
  );
  await new Promise((r) => setTimeout(r, 500));
  const pageToPage = await delays(bob, "alice");

  // CLI to page: `qrelay-cli chat` sends each line typed as a broadcast.
  const chat = spawn(
    QRELAY_CLI,
    ["--server", relay.quic, "--ca", join(relay.certs, "ca.pem"), "--secret", join(relay.certs, "token.secret"),
      "--user", "carol", "chat", "--room", room],
    { stdio: ["pipe", "ignore", "ignore"] },
  );
  await bob.waitForFunction(() => window.qrelayPage.seen.notices.some((n) => n.startsWith("carol joined")), { timeout: 20_000 });
  for (let i = 0; i < LATENCY_MESSAGES; i++) {
    chat.stdin.write(`${JSON.stringify({ from: "carol", i, t: now() })}\n`);
    await new Promise((r) => setTimeout(r, LATENCY_GAP_MS));
  }
  await new Promise((r) => setTimeout(r, 500));
  const cliToPage = await delays(bob, "carol");

  // Barrage from the CLI into the page: carol's chat sends every line it is given as fast as
  // it can (each `/barrage` waits for its reply), bob's page counts and times the arrivals.
  await bob.evaluate(() => {
    window.bench.barrage = 0;
    window.bench.barrageTimes = [];
    window.qrelayPage.client.on("barrage", () => window.bench.barrageTimes.push(performance.now()));
  });
  const cliBarrage = BARRAGE_CLI_MESSAGES;
  chat.stdin.write(`/barrage ${"x".repeat(32)}\n`.repeat(cliBarrage));
  const cliStarted = now();
  // Until all arrived, or none for 2 s (the rest was dropped): at most 60 s.
  for (let last = -1, quiet = 0; quiet < 8 && now() - cliStarted < 60_000; ) {
    await new Promise((r) => setTimeout(r, 250));
    const count = await bob.evaluate(() => window.bench.barrage);
    if (count >= cliBarrage) break;
    quiet = count === last ? quiet + 1 : 0;
    last = count;
  }
  const cliSeconds = (now() - cliStarted) / 1000;
  const cliReceived = await bob.evaluate(() => window.bench.barrage);
  const cliSpan = await bob.evaluate(() => {
    const t = window.bench.barrageTimes;
    return t.length > 1 ? (t[t.length - 1] - t[0]) / 1000 : 0;
  });
  chat.stdin.end();
  const afterCli = await relay.metrics();

  // Barrage page to page: alice offers a rate for a few seconds, bob counts; the relay's
  // counters say how much of it reached the relay and left it for bob.
  await new Promise((r) => setTimeout(r, 1000)); // carol's chat has left
  const throughput = [];
  for (const rate of BARRAGE_RATES) {
    await bob.evaluate(() => (window.bench.barrage = 0));
    const before = await relay.metrics();
    const sent = await within(
      alice.evaluate(
        async (rate, seconds) => {
          const client = window.qrelayPage.client;
          const payload = "x".repeat(32);
          const start = performance.now();
          let sent = 0;
          // Every millisecond tick sends what the rate owes so far.
          while (performance.now() - start < seconds * 1000) {
            const owed = Math.floor(((performance.now() - start) / 1000) * rate);
            for (; sent < owed; sent++) await client.sendBarrageMessageNoReply("bench", payload);
            await new Promise((r) => setTimeout(r, 1));
          }
          return sent;
        },
        rate,
        BARRAGE_SECONDS,
      ),
      "barrage",
      60_000,
    );
    await new Promise((r) => setTimeout(r, 1000));
    const after = await relay.metrics();
    const received = await bob.evaluate(() => window.bench.barrage);
    const atRelay = after.datagrams_received - before.datagrams_received;
    const toBob = after.datagrams_sent - before.datagrams_sent;
    throughput.push(
      `barrage page to page, offered ${rate}/s for ${BARRAGE_SECONDS} s: page sent ${sent}, relay got ${atRelay} and sent ${toBob}, page received ${received} (${Math.round(received / BARRAGE_SECONDS)}/s, ${((100 * received) / Math.max(sent, 1)).toFixed(1)} % of sent)`,
    );
  }

  console.log(summary("page to page (broadcast)", pageToPage));
  console.log(summary("qrelay-cli chat to page (broadcast)", cliToPage));
  console.log(
    `barrage qrelay-cli chat to page: ${cliReceived} of ${cliBarrage} received in ${cliSpan.toFixed(2)} s between the first and the last (${Math.round(cliReceived / Math.max(cliSpan, 0.001))}/s; waited ${cliSeconds.toFixed(1)} s); relay so far: dropped for congested receivers ${afterCli.datagrams_dropped_congested} (of ${afterCli.datagrams_sent} sent to the two pages)`,
  );
  for (const line of throughput) console.log(line);
  const m = await relay.metrics();
  const counters = ["barrages", "datagrams_received", "datagrams_sent", "datagrams_dropped_congested", "datagrams_unsendable", "datagrams_malformed", "refusals"];
  console.log(`relay: ${counters.map((k) => `${k}=${m[k] ?? "-"}`).join(" ")}`);
  for (const [name, page] of [["alice", alice], ["bob", bob]]) {
    const state = await page.evaluate(() => ({
      status: document.getElementById("status").textContent,
      states: window.qrelayPage.seen.states,
      errors: window.qrelayPage.seen.errors,
    }));
    console.log(`${name}'s page at the end: ${JSON.stringify(state)}`);
  }
} finally {
  await chromium.close();
  await relay.close();
}
