// herald console: subscribes with the browser's own EventSource, shows each
// event as it arrives, and publishes test events. Its stream is named, so
// other topics are a switch of the same stream (PUT /v1/streams/{handle}),
// not a new connection. No build step, no
// dependencies; everything user-supplied is rendered as text, never HTML.
"use strict";

const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);
let source = null;
let count = 0;
// The page's named stream, and what it follows.
let handle = null;
let following = { topics: [], since: "" };

// A handle for the stream: random, 16 to 64 of [A-Za-z0-9_-].
// `crypto.randomUUID` exists only in secure contexts (https, localhost).
function newHandle() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text;
}

function setCount() {
  $("count").textContent = `${count} event${count === 1 ? "" : "s"}`;
  $("empty").hidden = count > 0 || $("events").children.length > 0;
}

function filters() {
  return $("topics").value.split(/[\s,]+/).filter(Boolean);
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

function prepend(node) {
  const list = $("events");
  list.prepend(node);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  setCount();
}

function showEvent(envelope) {
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
  prepend(item);
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

// herald answered (a stream opened, a request got a response): whatever
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

// An EventSource gives up on any answer but `200 text/event-stream` and
// cannot read it (WHATWG HTML, "fail the connection"). herald's answer is
// an RFC 9457 problem with the reason in `detail`: ask the same URL again
// with fetch to read it. A 401 for a stream that had been open means its
// token ran out (herald ends a stream at its token's `exp`) and nothing
// renewed the cookie before the browser reconnected.
async function explainRefusal(es, url, what, opened) {
  const result = $("sub-result");
  const abort = new AbortController();
  let res;
  try {
    res = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: abort.signal });
  } catch (err) {
    if (source === es) showUnreachable(result, err);
    return;
  }
  reached();
  if (res.ok) {
    // Accepted this time (a cap that has room again, say): not a stream we
    // keep. Subscribing again is the user's call.
    abort.abort();
    if (source === es) showResult(result, "The stream closed. Subscribe to try again.", true);
    return;
  }
  let why = res.statusText;
  try {
    const problem = await res.json();
    why = problem.detail || problem.title || why;
  } catch {
    // Not a problem document (a proxy's page, say): the status is all.
  }
  if (source !== es) return;
  if (res.status === 401 && opened) {
    setState("expired", "session expired");
    showResult(result, "Your session expired; sign in again.", true);
    return;
  }
  setState("refused", "refused");
  const words = authRefusal(res.status, `read ${what}`, why);
  showResult(result, words ?? `herald refused this subscription (${res.status}): ${why}`, true);
}

function resetReason(info) {
  switch (info.reason) {
    case "cursor_too_old":
      return `events after #${info.last_event_id} are no longer held (the oldest held is #${info.oldest_id})`;
    case "cursor_ahead":
      return `this server's log has no event #${info.last_event_id} (it was reset, or is another deployment)`;
    default:
      return `herald cannot resume after #${info.last_event_id} (${info.reason})`;
  }
}

// Other topics on a live stream switch that stream: no reconnect, no
// replay, no second slot under the caps. Only another "From" (a start in
// the past) needs a new stream, and so does a switch herald cannot make
// (the stream is reconnecting).
async function resubscribe() {
  const topics = filters();
  const since = $("since").value;
  const live = source && source.readyState === EventSource.OPEN;
  if (live && handle && !since && !following.since && (await switchTopics(topics))) return;
  connect();
}

// Asks herald to switch the stream; false when only a new stream will do.
// The stream itself announces the switch (`event: stream`), in order with
// the events, and that is when the page says so.
async function switchTopics(topics) {
  const es = source;
  const result = $("sub-result");
  let res;
  try {
    res = await fetch(`/v1/streams/${handle}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ topics }),
    });
  } catch (err) {
    showUnreachable(result, err);
    return true;
  }
  reached();
  if (source !== es) return true;
  if (res.ok) {
    following = { topics, since: "" };
    saveToUrl(topics, "");
    showResult(result, "");
    return true;
  }
  if (res.status === 409) return false;
  // Refused (topics outside the token's grants, say): the stream goes on
  // with the topics it had, and the field says so again.
  const problem = await res.json().catch(() => ({}));
  const why = problem.detail || problem.title || res.statusText;
  const what = topics.length ? topics.join(", ") : "any topic";
  $("topics").value = following.topics.join(" ");
  showResult(result, authRefusal(res.status, `read ${what}`, why) ?? `${res.status}: ${why}`, true);
  return true;
}

function connect() {
  disconnect();
  const topics = filters();
  const since = $("since").value;
  saveToUrl(topics, since);
  handle = newHandle();
  following = { topics, since };
  const q = new URLSearchParams();
  q.set("stream", handle);
  topics.forEach((t) => q.append("topic", t));
  // One onmessage handler for every type: the type is in the envelope.
  q.set("message_events", "true");
  if (since) q.set("since", since);

  setState("connecting", "connecting…");
  showResult($("sub-result"), "");
  const url = `/v1/stream?${q}`;
  const es = new EventSource(url);
  source = es;
  // A reconnect counts once the connection holds: an instance that is
  // stopping answers and ends at once, and that is no reconnection.
  let opened = false;
  let settling = null;
  let reconnected = null;
  es.onopen = () => {
    reached();
    document.querySelectorAll("[data-expiring]").forEach((node) => showResult(node, ""));
    reconnected = null;
    if (!opened) {
      opened = true;
      setState("live", "live");
      return;
    }
    clearTimeout(settling);
    settling = setTimeout(() => {
      if (source === es && es.readyState === EventSource.OPEN) {
        setState("live", "live");
        reconnected = showNotice("reconnected; missed events were replayed");
      }
    }, 1000);
  };
  es.onmessage = (e) => {
    setState("live", "live");
    showEvent(JSON.parse(e.data));
  };
  // The stream's own frames: its opening, and each switch of its topics,
  // which applies to the events after `effective_at`.
  es.addEventListener("stream", (e) => {
    const info = JSON.parse(e.data);
    if (info.effective_at === undefined) return;
    const what = info.topics.join(", ");
    showNotice(`now following ${what} (events after #${info.effective_at})`, "switched");
  });
  // Ended from outside: over the subject's cap (a newer stream took its
  // place), or by an admin. The browser would reconnect and be refused;
  // say why instead.
  for (const ended of ["replaced", "revoked"]) {
    es.addEventListener(ended, (e) => {
      const info = JSON.parse(e.data);
      es.close();
      if (source !== es) return;
      setState("closed", "closed");
      $("connect").disabled = false;
      $("disconnect").disabled = true;
      const why =
        ended === "replaced"
          ? `a newer stream of yours took its place (at most ${info.cap} are open at once)`
          : "it was ended by an administrator";
      showResult($("sub-result"), `The stream closed: ${why}. Subscribe to open another.`, true);
    });
  }
  // A reset means herald could not serve this connection's cursor: nothing
  // was replayed, so this connection makes no claim that it was.
  es.addEventListener("reset", (e) => {
    const info = JSON.parse(e.data);
    clearTimeout(settling);
    reconnected?.remove();
    reconnected = null;
    setState("reset", "reset");
    showNotice(`reset: ${resetReason(info)}. Refetch state; live events continue from #${info.continue_from}.`, "reset");
  });
  // herald warns before the token expires; the stream ends then. Whoever
  // embeds the console may renew the cookie meanwhile: the reconnect then
  // carries it and this line goes. If not, the reconnect is refused.
  es.addEventListener("auth-expiring", (e) => {
    const at = new Date(JSON.parse(e.data).expires_at).toLocaleTimeString();
    const result = $("sub-result");
    showResult(result, `Your session expires at ${at}.`);
    result.dataset.expiring = "";
  });
  es.onerror = () => {
    clearTimeout(settling);
    if (source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      setState("closed", "closed");
      $("connect").disabled = false;
      $("disconnect").disabled = true;
      explainRefusal(es, url, topics.length ? topics.join(", ") : "any topic", opened);
    } else {
      setState("reconnecting", "reconnecting…");
    }
  };
  $("connect").textContent = "Resubscribe";
  $("disconnect").disabled = false;
}

function disconnect() {
  if (source) source.close();
  source = null;
  handle = null;
  setState("idle", "not connected");
  $("disconnect").disabled = true;
  $("connect").textContent = "Subscribe";
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
  count = 0;
  setCount();
});
$("publish").addEventListener("submit", publish);
loadFromUrl();
connect();
