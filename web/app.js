// The live-comment demo page: a stage where barrage flies across, a chat list of broadcasts,
// join and leave notices, and one input (Enter sends a broadcast; the toggle or a
// `/barrage TEXT` line sends barrage). Query: ?room=lobby&user=alice[&name=Alice][&token=JWT]
// [&port=N].
// Received text is only ever inserted as text (textContent), never as HTML.

import { QrelayError, connect, pageConnectOptions } from "./qrelay.js";

/** Chat lines kept in the list. */
const MAX_CHAT_LINES = 200;
/** Horizontal tracks comments fly along. */
const TRACKS = 8;
/** Comments on the stage at once; older ones are removed early. */
const MAX_COMMENTS = 60;
const BARRAGE_PREFIX = "/barrage ";

const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const userId = params.get("user") || `web-${Math.random().toString(36).slice(2, 8)}`;
const userName = params.get("name") || userId;
// `port` overrides the relay's UDP port from /config.json (a proxy in front of it).
const port = params.get("port") || undefined;

const $ = (id) => document.getElementById(id);
const status = $("status");
const chat = $("chat");
const stage = $("stage");
const input = $("message");
const toggle = $("barrage-toggle");

/** What the page saw, for tests and the benchmark (read with page.evaluate). */
const seen = { broadcasts: [], barrage: [], notices: [], states: [], errors: [] };
window.qrelayPage = { seen, client: null, room, user: userId };

function setStatus(text, state) {
  status.textContent = text;
  if (state) document.body.dataset.state = state;
}

function chatLine(className, from, body) {
  const li = document.createElement("li");
  li.className = className;
  if (from !== null) {
    const who = document.createElement("span");
    who.className = "from";
    who.textContent = from;
    li.append(who);
  }
  const what = document.createElement("span");
  what.className = "text";
  what.textContent = body;
  li.append(what);
  chat.append(li);
  while (chat.children.length > MAX_CHAT_LINES) chat.firstElementChild.remove();
  chat.scrollTop = chat.scrollHeight;
}

let track = 0;
function fly(body, mine) {
  const comment = document.createElement("span");
  comment.className = mine ? "comment mine" : "comment";
  comment.textContent = body;
  comment.style.top = `${5 + (track++ % TRACKS) * (90 / TRACKS)}%`;
  comment.style.setProperty("--duration", `${7 + Math.random() * 4}s`);
  comment.addEventListener("animationend", () => comment.remove());
  stage.append(comment);
  const comments = stage.querySelectorAll(".comment");
  if (comments.length > MAX_COMMENTS) comments[0].remove();
}

async function token(devTokens) {
  const given = params.get("token");
  if (given) return given;
  if (!devTokens) {
    throw new Error(
      "no token: add &token=JWT to the address (qrelay token --user USER --room ROOM prints one)",
    );
  }
  const url = `/dev/token?user=${encodeURIComponent(userId)}&room=${encodeURIComponent(room)}`;
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`no development token: cannot reach the relay's page listener: ${e.message ?? e}`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`no development token: ${body.error ?? response.status}: ${body.detail ?? ""}`);
  return body.token;
}

function explain(e) {
  if (e instanceof QrelayError) return `${e.error} (${e.code}): ${e.detail}`;
  return e?.message ?? String(e);
}

async function send(line) {
  let barrage = toggle.checked;
  if (line.startsWith(BARRAGE_PREFIX)) {
    barrage = true;
    line = line.slice(BARRAGE_PREFIX.length);
  }
  if (!line) return;
  const client = window.qrelayPage.client;
  try {
    if (barrage) {
      fly(line, true);
      await client.sendBarrageMessage(room, line);
    } else {
      const id = await client.sendBroadcastMessage(room, line);
      chatLine("mine", userName, line);
      seen.broadcasts.push({ id, from: userId, text: line, mine: true });
    }
  } catch (e) {
    seen.errors.push(explain(e));
    chatLine("notice", null, `not sent: ${explain(e)}`);
  }
}

/** The input and Send button, on or off (off once the connection is gone for good). */
function composer(on) {
  input.disabled = !on;
  $("send").disabled = !on;
}

async function main() {
  // WebTransport exists only in a secure context: an https page, or one from localhost or
  // 127.0.0.1 (http://HOST-NAME:8080 from another machine is not one).
  if (!window.isSecureContext) {
    throw new Error(
      `this page must be served over https, or opened as http://localhost or http://127.0.0.1 ` +
        `(browsers offer WebTransport only to secure pages; ${location.origin} is not one)`,
    );
  }
  if (typeof WebTransport === "undefined") throw new Error("this browser has no WebTransport");
  setStatus(`Connecting to room ${room} as ${userId}…`, "connecting");
  $("room-title").textContent = `Chat in ${room}`;
  const options = await pageConnectOptions(location, port);
  const first = await token(options.devTokens);
  const client = await connect({
    ...options,
    user: { id: userId, name: userName },
    getToken: () => token(options.devTokens),
    refresh: () => pageConnectOptions(location, port),
  });
  window.qrelayPage.client = client;
  client.on("broadcast", ({ messages }) => {
    for (const m of messages) {
      chatLine("", m.from.name, m.text);
      seen.broadcasts.push({ id: m.id, from: m.from.id, text: m.text, sentAtMs: m.sentAtMs, at: Date.now() });
    }
  });
  client.on("barrage", ({ messages }) => {
    for (const m of messages) {
      fly(m.text, false);
      seen.barrage.push({ id: m.id, from: m.from.id, text: m.text, sentAtMs: m.sentAtMs, at: Date.now() });
    }
  });
  client.on("command", ({ message }) => chatLine("notice", null, `${message.from.name} (command): ${message.text}`));
  const notice = (text) => {
    seen.notices.push(text);
    chatLine("notice", null, text);
  };
  client.on("usersjoined", ({ users }) => notice(`${users.map((u) => u.name).join(", ")} joined`));
  client.on("usersleft", ({ users }) => notice(`${users.map((u) => u.name).join(", ")} left`));
  // A large room counts its members instead of naming who comes and goes.
  const count = (n) => ($("room-title").textContent = `Chat in ${room} · ${n} here`);
  client.on("memberpage", ({ count: n }) => count(n));
  client.on("membercount", ({ count: n }) => count(n));
  // PROTOCOL.md section 7, "Recovery": `missed` names broadcasts that can no longer be
  // replayed; a new epoch (`restarted`) alone means the room started again on the relay.
  client.on("recovered", ({ complete, missed, replayed, restarted }) => {
    let text = `back in ${room}: ${replayed} missed message(s) replayed`;
    if (restarted) text += "; the room was restarted on the relay";
    if (missed) text += ` (some were lost: ${missed[0]}–${missed[1]})`;
    else if (!complete) text += " (no messages known to be missed)";
    notice(text);
  });
  client.on("roomclosed", ({ error, detail }) => {
    setStatus(`Left ${room}: ${error}: ${detail}`, "error");
    composer(false);
  });
  client.on("connectionstate", ({ state, attempt, reason }) => {
    seen.states.push(state);
    if (state === "reconnecting") setStatus(`Connection lost: reconnecting (attempt ${attempt})…`, "reconnecting");
    else if (state === "reconnected") setStatus(`In room ${room} as ${userId} (reconnected)`, "ready");
    else {
      setStatus(`Disconnected: ${reason}`, "error");
      composer(false);
    }
  });
  client.on("disconnected", ({ reason }) => {
    setStatus(`Disconnected: ${reason}`, "error");
    composer(false);
  });
  // A development token lasts an hour: the relay warns before it ends, and the page renews it
  // without reconnecting (a token given with &token= cannot be renewed here).
  client.on("tokenwillexpire", async () => {
    if (params.get("token")) return notice("the token expires soon: reload with a new &token=");
    try {
      await client.renewToken(await token(options.devTokens));
    } catch (e) {
      notice(`token not renewed: ${explain(e)}`);
    }
  });
  try {
    await client.loginRoom(room, first);
  } catch (e) {
    client.close();
    throw new Error(`Login to ${room} refused: ${explain(e)}`);
  }
  setStatus(`In room ${room} as ${userId}`, "ready");
  composer(true);
  input.focus();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const line = input.value.trim();
  input.value = "";
  send(line);
});

main().catch((e) => {
  seen.errors.push(explain(e));
  setStatus(explain(e), "error");
});
