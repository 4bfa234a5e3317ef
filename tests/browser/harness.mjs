// What the browser tests and the browser benchmark share: a relay process (`qrelay serve`) on
// 127.0.0.1 with its page listener, the `qrelay-cli` binary, headless Chromium (Debian's
// `chromium`, driven by puppeteer-core), and a UDP proxy that can cut a page's network.
// Everything binds 127.0.0.1:0, has a deadline, and is stopped by `close()`.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { createSocket } from "node:dgram";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import puppeteer from "puppeteer-core";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR ?? join(REPO, "target");
/** The binaries under test: built by scripts/test (`cargo build --bins`). */
export const QRELAY = process.env.QRELAY_BIN ?? join(TARGET, "debug", "qrelay");
export const QRELAY_CLI = process.env.QRELAY_CLI_BIN ?? join(TARGET, "debug", "qrelay-cli");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Longest any single wait in a test may take. */
export const WAIT_MS = 20_000;

for (const [what, path] of [["qrelay", QRELAY], ["qrelay-cli", QRELAY_CLI], ["chromium", CHROMIUM]]) {
  if (!existsSync(path)) {
    throw new Error(`${what} not found at ${path}: run scripts/test (it builds the binaries and installs chromium)`);
  }
}

/** Resolves `promise`, or rejects after `ms` saying what did not happen. */
export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * A `qrelay serve` process on 127.0.0.1:0 with its page listener; `config` is TOML; `http`:
 * with its HTTP listener too (`relay.metrics()` reads `/metrics`).
 */
export async function startRelay({ config = "", args = [], http = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "qrelay-browser-"));
  const ready = join(dir, "ready.json");
  const configFile = join(dir, "relay.toml");
  writeFileSync(configFile, config);
  const child = spawn(
    QRELAY,
    ["serve", "--config", configFile, "--listen", "127.0.0.1:0", ...(http ? ["--http", "127.0.0.1:0"] : ["--no-http"]), "--web", "127.0.0.1:0",
      "--certs-dir", join(dir, "certs"), "--ready-file", ready, ...args],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } },
  );
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const started = Date.now();
  while (!existsSync(ready) || readFileSync(ready, "utf8").trim() === "") {
    if (child.exitCode !== null) throw new Error(`qrelay serve exited ${child.exitCode}: ${stderr}`);
    if (Date.now() - started > WAIT_MS) throw new Error(`qrelay serve not ready: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const addrs = JSON.parse(readFileSync(ready, "utf8"));
  return {
    quic: addrs.quic,
    web: addrs.web,
    /** The relay's counters named `qrelay_NAME`, as numbers (needs `http`). */
    async metrics() {
      const text = await (await fetch(`http://${addrs.http}/metrics`)).text();
      const values = {};
      for (const line of text.split("\n")) {
        const match = /^qrelay_(\w+?)(?:_total)? (\d+)$/.exec(line);
        if (match) values[match[1]] = Number(match[2]);
      }
      return values;
    },
    certs: join(dir, "certs"),
    get stderr() {
      return stderr;
    },
    async close() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await within(once(child, "exit"), "qrelay serve to stop").catch(() => child.kill("SIGKILL"));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `qrelay-cli` options for `relay` as `user`. */
function cliArgs(relay, user) {
  return ["--server", relay.quic, "--ca", join(relay.certs, "ca.pem"), "--secret",
    join(relay.certs, "token.secret"), "--user", user, "--no-reconnect"];
}

/** Runs one `qrelay-cli` command to its end; resolves with its JSON line. */
export async function cli(relay, user, command) {
  const child = spawn(QRELAY_CLI, [...cliArgs(relay, user), ...command], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (err += c));
  const [code] = await within(once(child, "exit"), `qrelay-cli ${command.join(" ")}`);
  const line = JSON.parse(out.trim().split("\n").pop());
  if (code !== 0 || !line.ok) throw new Error(`qrelay-cli ${command.join(" ")}: ${out} ${err}`);
  return line;
}

/** A `qrelay-cli listen` process; `next(predicate)` waits for a matching JSON line. */
export async function listen(relay, user, room) {
  const child = spawn(QRELAY_CLI, [...cliArgs(relay, user), "listen", "--room", room], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines = [];
  const waiters = [];
  createInterface({ input: child.stdout }).on("line", (text) => {
    const line = JSON.parse(text);
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.predicate(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const listener = {
    lines,
    next(predicate, what) {
      const seen = lines.find(predicate);
      if (seen) return Promise.resolve(seen);
      return within(new Promise((resolve) => waiters.push({ predicate, resolve })), what);
    },
    async close() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await within(once(child, "exit"), "qrelay-cli listen to stop").catch(() => child.kill("SIGKILL"));
      }
    },
  };
  await listener.next((l) => l.event === "login", `${user}'s listen to log in`);
  return listener;
}

/** Headless Chromium; `open(query)` opens the page of `relay` with that query string. */
export async function startBrowser() {
  const args = ["--enable-quic", "--disable-gpu"];
  // Chromium refuses to run as root with its sandbox (the CI machine runs as root).
  if (process.getuid?.() === 0) args.push("--no-sandbox");
  const browser = await within(
    puppeteer.launch({ executablePath: CHROMIUM, headless: true, args }),
    "chromium to start",
  );
  return {
    browser,
    async open(relay, query, { width = 1100, height = 620 } = {}) {
      const page = await browser.newPage();
      await page.setViewport({ width, height });
      page.consoleLines = [];
      page.on("console", (m) => page.consoleLines.push(m.text()));
      page.on("pageerror", (e) => page.consoleLines.push(`pageerror: ${e.message}`));
      await within(page.goto(`http://${relay.web}/?${query}`), `the page ${query} to load`);
      return page;
    },
    close: () => browser.close(),
  };
}

/** Waits until the page's state is `state` (`ready`, `error`, …); returns the status text. */
export async function pageState(page, state) {
  try {
    await page.waitForFunction((s) => document.body.dataset.state === s, { timeout: WAIT_MS }, state);
  } catch (e) {
    const status = await page.$eval("#status", (el) => el.textContent).catch(() => "?");
    throw new Error(`page never reached ${state}: status "${status}"; console: ${page.consoleLines.join(" | ")}`);
  }
  return page.$eval("#status", (el) => el.textContent);
}

/** Waits until `fn(seen)` is true in the page (`seen`: what the page received). */
export async function pageSees(page, fn, what) {
  try {
    await page.waitForFunction(`(${fn})(window.qrelayPage.seen)`, { timeout: WAIT_MS, polling: 20 });
  } catch {
    const seen = await page.evaluate(() => JSON.stringify(window.qrelayPage.seen));
    throw new Error(`the page never saw ${what}: ${seen}`);
  }
}

/**
 * Barrage is best effort: one datagram may be dropped on the way, or dropped by the receiving
 * client as older than its 500 ms limit on a busy machine. `send` sends one barrage, `seen`
 * (a predicate over the page's `seen`, as for `pageSees`) says it arrived; sends again, at
 * most `tries` times, until one arrives. A relay or page that delivers no barrage at all
 * still fails.
 */
export async function barrageUntilSeen(page, send, seen, what, tries = 10) {
  for (let i = 0; i < tries; i++) {
    await send(i);
    try {
      await page.waitForFunction(`(${seen})(window.qrelayPage.seen)`, { timeout: 2000, polling: 20 });
      return;
    } catch {
      // Not (yet) arrived: send another.
    }
  }
  const state = await page.evaluate(() => JSON.stringify(window.qrelayPage.seen));
  throw new Error(`the page never saw ${what} in ${tries} barrages: ${state}`);
}

/** Types `line` into the page's input and presses Enter. */
export async function type(page, line) {
  await page.type("#message", line);
  await page.keyboard.press("Enter");
}

/**
 * A UDP proxy on 127.0.0.1:0 in front of `target` (HOST:PORT): one upstream socket per client
 * address. `cut(true)` drops every datagram both ways, as when the network goes away.
 */
export async function udpProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const front = createSocket("udp4");
  const upstreams = new Map();
  let cut = false;
  front.on("message", (msg, from) => {
    if (cut) return;
    const key = `${from.address}:${from.port}`;
    let up = upstreams.get(key);
    if (!up) {
      up = createSocket("udp4");
      up.on("message", (reply) => {
        if (!cut) front.send(reply, from.port, from.address);
      });
      up.bind(0, "127.0.0.1");
      upstreams.set(key, up);
    }
    up.send(msg, port, host);
  });
  front.bind(0, "127.0.0.1");
  await once(front, "listening");
  return {
    port: front.address().port,
    cut(value) {
      cut = value;
    },
    close() {
      for (const up of upstreams.values()) up.close();
      front.close();
    },
  };
}
