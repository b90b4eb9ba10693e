// herald console: follows topics with herald.js (the browser client herald
// serves at /herald.js), shows each event as it arrives, and publishes test
// events. herald.js keeps one named stream per browser, however many
// console tabs are open, and turns every change of topics into a PUT on
// that stream. No build step; everything user-supplied is rendered as
// text, never HTML.

import { Herald } from "/herald.js";

const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);
let count = 0;
// The ids shown since the last reset (a reset may restart ids), with their
// rows: an event two filters match, or that a second subscription of the
// same filter replays, is shown once.
const shown = new Map();
// The Herald this page follows with, and what it follows; null when
// stopped (Stop, or a stream herald closed for good).
let session = null;

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text;
}

function setCount() {
  $("count").textContent = `${count} event${count === 1 ? "" : "s"}`;
  $("empty").hidden = count > 0 || $("events").children.length > 0;
}

function fieldFilters() {
  return $("topics").value.split(/[\s,]+/).filter(Boolean);
}

// The filters in words, as the refusals name them.
function describe(filters) {
  return filters.length ? filters.join(", ") : "any topic";
}

// The page's own URL keeps the subscription, so it can be bookmarked.
function saveToUrl(topics, since) {
  const q = new URLSearchParams();
  topics.forEach((t) => q.append("topic", t));
  if (since) q.set("since", since);
  history.replaceState(null, "", q.toString() ? `#${q}` : location.pathname);
}

function loadFromUrl() {
  const q = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  $("topics").value = q.getAll("topic").join(" ");
  const since = q.get("since");
  if (since && [...$("since").options].some((o) => o.value === since)) $("since").value = since;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function trim() {
  const list = $("events");
  while (list.children.length > MAX_ROWS) {
    const last = list.lastElementChild;
    if (shown.get(last.dataset.id) === last) shown.delete(last.dataset.id);
    last.remove();
  }
  setCount();
}

function prepend(node) {
  $("events").prepend(node);
  trim();
}

// Newest first. Live events arrive in id order and go on top; a filter's
// events from history ("From") arrive after later ones of another filter,
// so each goes below the rows with larger ids. Rows below the last reset
// notice are another sequence of ids, and stay where they are.
function place(node, id) {
  let after = null;
  for (let li = $("events").firstElementChild; li && !li.classList.contains("reset"); li = li.nextElementSibling) {
    if (li.dataset.id === undefined) continue;
    if (Number(li.dataset.id) < id) break;
    after = li;
  }
  if (after) after.after(node);
  else $("events").prepend(node);
  trim();
}

// A subscription's handler: the envelope as herald sent it.
function showEvent(envelope) {
  if (shown.has(envelope.id)) return;
  if ($("state").dataset.state === "reset") setState("live", "live");
  count += 1;
  const item = el("li", "event new");
  item.dataset.id = envelope.id;
  const meta = el("div", "meta");
  meta.append(
    el("span", "id", `#${envelope.id}`),
    el("span", "type", envelope.type),
    el("span", "topic", envelope.topic),
    el("time", "time", new Date(envelope.time).toLocaleString()),
  );
  meta.lastChild.dateTime = envelope.time;
  item.append(meta, el("pre", "data", JSON.stringify(envelope.data, null, 2)));
  shown.set(envelope.id, item);
  place(item, Number(envelope.id));
}

function showNotice(text, kind) {
  const item = el("li", `event notice ${kind || ""}`, text);
  prepend(item);
  return item;
}

// A line under a form: what a request came to. "Could not reach herald" is
// marked, so it goes away once herald answers again.
function showResult(node, text, bad = false) {
  node.className = bad ? "result bad" : "result";
  node.textContent = text;
  delete node.dataset.unreachable;
  delete node.dataset.expiring;
}

function showUnreachable(node, err) {
  showResult(node, `Could not reach herald: ${err.message}`, true);
  node.dataset.unreachable = "";
}

// herald answered (the stream is live, a request got a response): whatever
// said it could not be reached is out of date.
function reached() {
  document.querySelectorAll("[data-unreachable]").forEach((node) => showResult(node, ""));
}

// A refusal of `action` ("read incident:*", "publish to ops") in words:
// 401 means no valid token came with the request (the browser's cookie is
// missing, expired or not herald's), 403 that the token does not grant it.
// herald's `why` says which. Other statuses are the caller's to word.
function authRefusal(status, action, why) {
  if (status === 401) return `Sign in to ${action}: ${why}`;
  if (status === 403) return `Not allowed to ${action}: ${why}`;
  return null;
}

// herald's answer to a refused request, an RFC 9457 problem; `status` is
// the HTTP status whatever the body was (a proxy's page, say).
async function problemOf(res) {
  const body = await res.json().catch(() => ({}));
  return { ...body, status: res.status };
}

function refusalWords(problem, what) {
  if (problem.unreachable) return `Could not reach herald: ${problem.unreachable.message}`;
  const why = problem.detail || problem.title || `status ${problem.status}`;
  return authRefusal(problem.status, `read ${what}`, why) ?? `herald refused this subscription (${problem.status}): ${why}`;
}

function resetReason(info) {
  if (info.status === 410) return `the events asked for are no longer held (${info.detail || "410"})`;
  switch (info.reason) {
    case "cursor_too_old":
      return `events after #${info.last_event_id} are no longer held (the oldest held is #${info.oldest_id})`;
    case "cursor_ahead":
      return `this server's log has no event #${info.last_event_id} (it was reset, or is another deployment)`;
    default:
      return `herald cannot resume after #${info.last_event_id} (${info.reason})`;
  }
}

// --- Following topics ----------------------------------------------------

// A session is one Herald: Subscribe starts one when there is none, and
// changes its subscriptions otherwise; Stop, a refusal of its first
// subscription, or a stream herald ended (replaced, revoked, 401, 403)
// ends it. Changes run one at a time, in the order they were asked.
function start(filters, since) {
  const s = {
    herald: null,
    entries: [], // the subscriptions in force: { filter, sub }
    field: filters, // the field's filters for them (empty: every topic)
    asked: filters, // what the latest change asked for
    status: "connecting",
    wasLive: false, // a 401 after this is a session that expired
    settling: null,
    queue: Promise.resolve(),
  };
  s.ended = new Promise((resolve) => (s.finish = resolve));
  session = s;
  const mine = (f) => (...args) => session === s && f(s, ...args);
  s.herald = new Herald({
    onStatus: mine(onStatus),
    onReset: mine(onReset),
    onAuthExpiring: mine(onAuthExpiring),
    onClosed: mine(onClosed),
  });
  setState("connecting", "connecting…");
  showResult($("sub-result"), "");
  $("connect").textContent = "Resubscribe";
  $("disconnect").disabled = false;
  change(s, filters, since);
}

function end(s) {
  if (session !== s) return;
  session = null;
  clearTimeout(s.settling);
  s.finish();
  s.herald.close();
  $("disconnect").disabled = true;
  $("connect").textContent = "Subscribe";
}

function change(s, filters, since) {
  s.queue = s.queue.then(() => apply(s, filters, since));
}

// Subscribes the filters added, and once herald took them all, unsubscribes
// those removed: a change herald refuses (a filter outside the token's
// grants, say) leaves the page following what it followed, with no gap. An
// empty field is `*`, which herald takes as every topic.
async function apply(s, field, since) {
  if (session !== s) return;
  const filters = field.length ? field : ["*"];
  // "From" starts every filter again from the window's start; otherwise
  // only the filters added are new.
  const kept = since ? [] : s.entries.filter((e) => filters.includes(e.filter));
  const added = since ? filters : filters.filter((f) => !s.entries.some((e) => e.filter === f));
  const dropped = s.entries.filter((e) => !kept.includes(e));
  const first = s.entries.length === 0;
  s.asked = field;
  if (first || (!added.length && !dropped.length)) saveToUrl(field, since);
  if (!added.length && !dropped.length) return;

  const results = await Promise.all(added.map((f) => follow(s, f, since)));
  if (session !== s) return;
  const refused = results.find((r) => !r.sub);
  if (refused) {
    for (const r of results) r.sub?.unsubscribe();
    if (first) return refuse(s, refused.problem, refused.filter);
    // The stream goes on with the topics it had, and the field says so.
    $("topics").value = s.field.join(" ");
    showResult($("sub-result"), refusalWords(refused.problem, refused.filter), true);
    return;
  }
  for (const e of dropped) e.sub.unsubscribe();
  s.entries = [...kept, ...results.map((r) => ({ filter: r.filter, sub: r.sub }))];
  s.field = field;
  saveToUrl(field, since);
  if (first) return;
  showResult($("sub-result"), "");
  const what = describe(field);
  if (!results.length) return showNotice(`now following ${what}`, "switched");
  const at = Math.max(...results.map((r) => r.at));
  const from = since ? `the window's events, then those after #${at}` : `events after #${at}`;
  showNotice(`now following ${what} (${from})`, "switched");
}

// One subscription, once herald took it: { filter, sub, at } with its
// effective_at, or { filter, problem } when refused (or the session ended).
function subscribe(s, filter, after) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (result) => {
      if (!settled) resolve(result);
      settled = true;
    };
    const sub = s.herald.subscribe(filter, showEvent, {
      after,
      onError: (problem) => (settled ? historyFailed(filter, problem) : settle({ filter, problem })),
    });
    sub.ready.then((at) => settle({ filter, sub, at: Number(at) }));
    s.ended.then(() => settle({ filter, problem: { ended: true } }));
  });
}

// Once herald took a subscription, an error is its history ("From") that
// could not be read; herald.js goes on with its live events.
function historyFailed(filter, problem) {
  const why = problem.detail || problem.title || `status ${problem.status}`;
  showResult($("sub-result"), `Could not read the earlier events of ${filter}: ${why}`, true);
}

// "From" (the last 10 minutes, hour, day): the filter's first event in the
// window, found with `GET /v1/events?since=…&topic=…&limit=1`, and a
// subscription with `after` the id before it: herald.js reads the rest of
// the window from history up to the subscription's effective_at, then
// goes on live, each event once and in order.
//
// When the window holds no event of the filter, a subscription without
// `after` would miss one published between that answer and effective_at.
// So the same question is asked again once the subscription holds: an
// event it finds at or below effective_at came in that gap, and a second
// subscription from it replays the gap (the rows show each id once) before
// the first goes. Asking only after subscribing would be as correct, but
// would need the second subscription whenever the window holds events,
// which is the common case.
async function follow(s, filter, since) {
  if (!since) return subscribe(s, filter);
  const before = await firstSince(filter, since);
  if (before.problem) return before;
  if (before.event) return subscribe(s, filter, String(Number(before.event.id) - 1));
  const live = await subscribe(s, filter);
  if (!live.sub) return live;
  const again = await firstSince(filter, since);
  if (!again.event || Number(again.event.id) > live.at) return live;
  const replay = await subscribe(s, filter, String(Number(again.event.id) - 1));
  if (!replay.sub) return live;
  live.sub.unsubscribe();
  return replay;
}

async function firstSince(filter, since) {
  const q = new URLSearchParams({ since, topic: filter, limit: "1" });
  let res;
  try {
    res = await fetch(`/v1/events?${q}`);
  } catch (err) {
    return { filter, problem: { unreachable: err } };
  }
  reached();
  if (!res.ok) return { filter, problem: await problemOf(res) };
  const [event] = await res.json();
  return { filter, event };
}

// The first subscription was refused: nothing to follow, so the session
// ends, and the page says why.
function refuse(s, problem, what) {
  end(s);
  if (problem.ended) return;
  if (problem.unreachable) {
    setState("closed", "closed");
    showUnreachable($("sub-result"), problem.unreachable);
    return;
  }
  setState("refused", "refused");
  showResult($("sub-result"), refusalWords(problem, what), true);
}

// --- What herald.js says ---------------------------------------------------

function onStatus(s, status) {
  const was = s.status;
  s.status = status;
  clearTimeout(s.settling);
  switch (status) {
    case "live":
      reached();
      document.querySelectorAll("[data-expiring]").forEach((node) => showResult(node, ""));
      setState("live", "live");
      // A reconnect counts once the stream holds: a reset comes right
      // after the stream's opening frame, and then nothing was replayed.
      if (was === "reconnecting" && s.wasLive) {
        s.settling = setTimeout(() => {
          if (session === s && s.status === "live") showNotice("reconnected; missed events were replayed");
        }, 1000);
      }
      s.wasLive = true;
      break;
    case "reconnecting":
      setState("reconnecting", "reconnecting…");
      break;
    case "connecting":
      setState("connecting", "connecting…");
      break;
    default:
      setState("closed", "closed");
  }
}

// herald could not resume the stream (or a window's history is pruned):
// nothing was replayed, so no notice may claim it was.
function onReset(s, info) {
  clearTimeout(s.settling);
  if (info.continue_from !== undefined) shown.clear();
  setState("reset", "reset");
  const then =
    info.continue_from === undefined
      ? "live events continue"
      : `live events continue from #${info.continue_from}`;
  showNotice(`reset: ${resetReason(info)}. Refetch state; ${then}.`, "reset");
}

// herald warns before the token expires; the stream ends then. Whoever
// embeds the console may renew the cookie meanwhile: the reconnect then
// carries it and this line goes. If not, the reconnect is refused.
// (herald.js calls this in the tab that holds the stream.)
function onAuthExpiring(s, info) {
  const at = new Date(info.expires_at).toLocaleTimeString();
  const result = $("sub-result");
  showResult(result, `Your session expires at ${at}.`);
  result.dataset.expiring = "";
}

// Ended for good: herald.js will not reconnect.
function onClosed(s, reason, info = {}) {
  end(s);
  const result = $("sub-result");
  if (reason === "replaced" || reason === "revoked") {
    setState("closed", "closed");
    const why =
      reason === "replaced"
        ? `a newer stream of yours took its place (${info.cap ? `at most ${info.cap} are open at once` : info.detail})`
        : `it was ended by an administrator${info.detail ? ` (${info.detail})` : ""}`;
    showResult(result, `The stream closed: ${why}. Subscribe to open another.`, true);
  } else if (reason === "unauthorized" && s.wasLive) {
    // herald ends a stream at its token's `exp`; nothing renewed the
    // cookie before the reconnect.
    setState("expired", "session expired");
    showResult(result, "Your session expired; sign in again.", true);
  } else {
    setState("refused", "refused");
    showResult(result, refusalWords(info, describe(s.asked)), true);
  }
}

// --- The page --------------------------------------------------------------

function resubscribe() {
  const filters = fieldFilters();
  const since = $("since").value;
  if (session) change(session, filters, since);
  else start(filters, since);
}

function disconnect() {
  if (session) end(session);
  setState("idle", "not connected");
}

async function publish(event) {
  event.preventDefault();
  const result = $("pub-result");
  showResult(result, "");
  let data;
  try {
    data = JSON.parse($("pub-data").value || "null");
  } catch (err) {
    showResult(result, `Data is not JSON: ${err.message}`, true);
    return;
  }
  const body = { topic: $("pub-topic").value.trim(), data };
  const type = $("pub-type").value.trim();
  if (type) body.type = type;
  let res;
  try {
    res = await fetch("/v1/events", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    showUnreachable(result, err);
    return;
  }
  reached();
  const answer = await res.json().catch(() => ({}));
  if (res.ok) {
    showResult(result, `Stored as #${answer.id} at ${answer.time}`);
  } else {
    const why = answer.detail || answer.title || res.statusText;
    showResult(result, authRefusal(res.status, `publish to ${body.topic}`, why) ?? `${res.status}: ${why}`, true);
  }
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem("herald-theme", next);
  applyTheme(next);
}

applyTheme(localStorage.getItem("herald-theme"));
$("theme").addEventListener("click", toggleTheme);
$("subscribe").addEventListener("submit", (e) => {
  e.preventDefault();
  resubscribe();
});
$("disconnect").addEventListener("click", disconnect);
$("clear").addEventListener("click", () => {
  $("events").replaceChildren();
  shown.clear();
  count = 0;
  setCount();
});
$("publish").addEventListener("submit", publish);
loadFromUrl();
resubscribe();
