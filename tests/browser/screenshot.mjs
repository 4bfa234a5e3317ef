// Makes docs/page.png: the live-comment page with comments on the stage, a chat and notices.
// Run: node tests/browser/screenshot.mjs (needs the binaries, as the tests do).

import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { cli, pageSees, pageState, startBrowser, startRelay, type } from "./harness.mjs";

const OUT = join(resolve(dirname(fileURLToPath(import.meta.url)), "../.."), "docs", "page.png");

const relay = await startRelay({ args: ["--limits", "benchmark"] });
const chromium = await startBrowser();
try {
  const alice = await chromium.open(relay, "room=lobby&user=alice&name=Alice", { width: 1100, height: 560 });
  await pageState(alice, "ready");
  const bob = await chromium.open(relay, "room=lobby&user=bob&name=Bob");
  await pageState(bob, "ready");
  await cli(relay, "carol", ["broadcast", "--room", "lobby", "hi all, carol from the CLI here"]);
  await type(bob, "hello from the second tab");
  await type(alice, "welcome, both of you!");
  const comments = ["first!", "what a goal", "😂😂😂", "replay please", "GG", "this stage is fast", "+1 +1", "lol", "nice one", "again!"];
  for (const [i, text] of comments.entries()) {
    await type(bob, `/barrage ${text}`);
    if (i % 4 === 1) await cli(relay, "carol", ["barrage", "--room", "lobby", `carol: ${text}`]);
    await new Promise((r) => setTimeout(r, 250));
  }
  await pageSees(alice, (seen) => seen.barrage.length >= 10, "the comments");
  await alice.screenshot({ path: OUT });
  console.log(`wrote ${OUT}`);
} finally {
  await chromium.close();
  await relay.close();
}
