// Shared by the herald.js scripts (heraldjs_*.mjs): tabs that load
// `/herald.js` from herald into a blank same-origin page and record what its
// handlers and callbacks get, a steady publisher, herald's log as the truth
// to compare with, and herald's own view of its streams.
//
// A tab is a page of a browser context; the pages of one context share Web
// Locks and BroadcastChannel (one browser), another context is another
// browser. Each subscription records the ids its handler got, in order; a
// subscription is checked against the log: the events of its filter with
// ids after its `ready` effective_at (or its `after:`), once each, in order.

import assert from "node:assert/strict";
import { hs256Token, publish, waitFor } from "./lib.mjs";

// ---------------------------------------------------------------------------
// Tabs
// ---------------------------------------------------------------------------

/// A page of `context` on herald's origin (`/healthz`: same origin, no
/// script of its own) running `new Herald(options)`, with every callback
/// recorded in `window.T`. `options` is plain data; `getToken: true` makes
/// the page's `getToken` call `window.mintToken` (see [`exposeMint`]), and
/// `renewOnExpiring: true` makes `onAuthExpiring` call `window.renewCookie`.
export async function openTab(context, base, name, options = {}) {
  const page = await context.newPage();
  const tab = { name, page, requests: [], streamRequests: 0, errors: [], closedAt: null };
  page.on("pageerror", (e) => tab.errors.push(`${name}: page error: ${e.message}`));
  // Errors herald.js logs; not the browser's own line for each answer it
  // took as failed (a 404 favicon, a refusal a test provokes).
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
      tab.errors.push(`${name}: console error: ${m.text()}`);
    }
  });
  page.on("request", (r) => {
    tab.requests.push(r.url());
    if (new URL(r.url()).pathname === "/v1/stream") tab.streamRequests += 1;
  });
  await page.goto(`${base}/healthz`);
  await page.evaluate(async (options) => {
    const { Herald } = await import("/herald.js");
    const T = { subs: {}, closed: [], statuses: [], resets: [], expiring: [], tokens: 0 };
    window.T = T;
    window.handles = {};
    const { getToken, renewOnExpiring, ...rest } = options;
    const herald = new Herald({
      ...rest,
      ...(getToken ? { getToken: async () => (T.tokens++, window.mintToken()) } : {}),
      onReset: (info) => T.resets.push(info ?? null),
      onAuthExpiring: (info) => {
        T.expiring.push(info ?? null);
        if (renewOnExpiring) return window.renewCookie();
      },
      onClosed: (reason, info) => T.closed.push({ reason, info: info ?? null, at: Date.now() }),
      onStatus: (status) => T.statuses.push(status),
    });
    window.herald = herald;
  }, options);
  return tab;
}

/// Subscribes `key` to `filter` in `tab` and waits for its `ready`; returns
/// the effective_at. `after` asks for a backfill.
export async function subscribe(tab, key, filter, { after } = {}) {
  return tab.page.evaluate(
    async ({ key, filter, after }) => {
      const rec = { filter, after: after ?? null, got: [], topics: [], effectiveAt: null };
      Object.assign(rec, { error: null, stoppedAt: null });
      T.subs[key] = rec;
      const options = { onError: (problem) => (rec.error = problem ?? "refused") };
      if (after !== undefined) options.after = after;
      const handle = herald.subscribe(filter, (envelope) => {
        rec.got.push(String(envelope.id));
        rec.topics.push(envelope.topic);
      }, options);
      handles[key] = handle;
      rec.effectiveAt = String(await handle.ready);
      return rec.effectiveAt;
    },
    { key, filter, after },
  );
}

/// Unsubscribes `key`; records how many events its handler had then, so a
/// check can tell that none came after.
export async function unsubscribe(tab, key) {
  return tab.page.evaluate((key) => {
    handles[key].unsubscribe();
    T.subs[key].stoppedAt = T.subs[key].got.length;
    return T.subs[key].got.length;
  }, key);
}

/// Everything the tab recorded (`window.T`), plus `herald.status`,
/// `herald.leader` and `herald.lastEventId`.
export async function record(tab) {
  return tab.page.evaluate(() => ({
    ...T,
    status: herald.status,
    leader: herald.leader,
    lastEventId: herald.lastEventId,
  }));
}

/// The tabs whose `herald.leader` is true now.
export async function leaders(tabs) {
  const flags = await Promise.all(tabs.map((t) => t.page.evaluate(() => herald.leader)));
  return tabs.filter((_, i) => flags[i]);
}

/// Fails on any page error or console error a tab saw.
export function assertNoPageErrors(tabs) {
  assert.deepEqual(tabs.flatMap((t) => t.errors), [], "no script error in any tab");
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// The HS256 secret of the herald a token script starts.
export const SECRET = "herald-js-browser-test-secret";

/// Flags for a herald that requires tokens signed with [`SECRET`], warns a
/// stream 1 s before its token's `exp` and ends it at `exp` (no leeway).
export const TOKEN_FLAGS = { "--jwt-secret": SECRET, "--token-expiry-warning": "1s", "--jwt-leeway": "0s" };

const now = () => Math.floor(Date.now() / 1000);

/// A browser user's token: reads `subscribe`, for `life` seconds (`exp` is
/// whole seconds, so it lives between `life` - 1 and `life`).
export function userToken(sub, subscribe, life) {
  return hs256Token(SECRET, { sub, iat: now(), exp: now() + life, herald: { subscribe } });
}

/// A backend's headers: publishes and reads everything, for an hour.
export function backendHeaders() {
  const token = hs256Token(SECRET, {
    sub: "backend", iat: now(), exp: now() + 3600, herald: { publish: ["*"], subscribe: ["*"] },
  });
  return { Authorization: `Bearer ${token}` };
}

/// An operator's headers: the admin grant, for an hour.
export function adminHeaders() {
  const token = hs256Token(SECRET, { sub: "ops", iat: now(), exp: now() + 3600, herald: { admin: true } });
  return { Authorization: `Bearer ${token}` };
}

/// Sets `token` as herald's cookie in `context`, as a sign-in would.
export async function setCookie(context, base, token) {
  await context.addCookies([{ name: "herald_token", value: token, url: base, httpOnly: true, sameSite: "Lax" }]);
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

/// Publishes `perSecond` events a second, spread round-robin over `topics`,
/// in batches every 50 ms, until [`Load.stop`]. Pacing only: nothing waits
/// on it. A publish that fails (herald restarting) is counted and skipped:
/// the checks read the log, not this publisher's list. `base` may be
/// changed while it runs (publish through another instance).
export class Load {
  constructor({ base, topics, perSecond = 100, headers = {} }) {
    Object.assign(this, { base, topics, perSecond, headers });
    this.sent = 0;
    this.failed = [];
    this.paused = false;
    this.stopped = false;
    this.inFlight = Promise.resolve();
    this.done = this.#run();
  }

  async #run() {
    const tick = 50;
    const perTick = Math.max(1, Math.round((this.perSecond * tick) / 1000));
    const start = Date.now();
    for (let k = 1; !this.stopped; k += 1) {
      if (!this.paused) {
        this.inFlight = this.#send(perTick);
        await this.inFlight;
      }
      // Keep the rate: the k-th batch goes at start + k × tick.
      const wait = start + k * tick - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  async #send(count) {
    const batch = [];
    for (let i = 0; i < count; i += 1) {
      const n = this.sent + i;
      batch.push({ topic: this.topics[n % this.topics.length], type: "load", data: { n } });
    }
    try {
      await publish(this.base, batch, this.headers);
      this.sent += batch.length;
    } catch (e) {
      this.failed.push(e.message);
    }
  }

  /// Stops after the batch in flight; resolves once it is answered.
  async stop() {
    this.stopped = true;
    await this.done;
  }

  /// Publishes nothing until [`Load.resume`]; resolves once the batch in
  /// flight, if any, is answered.
  async pause() {
    this.paused = true;
    await this.inFlight;
  }

  resume() {
    this.paused = false;
  }
}

// ---------------------------------------------------------------------------
// herald's side: the log, metrics, streams
// ---------------------------------------------------------------------------

/// The log from `after` on, oldest first (every page of
/// `GET /v1/events`), as `{id, topic}`; `topics` narrows it.
export async function readLog(base, { after = "0", topics = [], headers = {} } = {}) {
  const events = [];
  let cursor = after;
  for (;;) {
    const query = new URLSearchParams({ after: cursor, limit: "1000" });
    for (const t of topics) query.append("topic", t);
    const res = await fetch(`${base}/v1/events?${query}`, { headers });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`GET /v1/events?${query} answered ${res.status}: ${text}`);
    const page = JSON.parse(text);
    events.push(...page.map((e) => ({ id: String(e.id), topic: e.topic })));
    if (page.length < 1000) return events;
    cursor = String(page.at(-1).id);
  }
}

/// The sum of a metric's samples on `/metrics`; `name` may name one series
/// (`herald_streams_ended_total{reason="replaced"}`).
export async function metric(base, name, headers = {}) {
  const text = await (await fetch(`${base}/metrics`, { headers })).text();
  let sum = 0;
  let found = false;
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name} `) || (!name.includes("{") && line.startsWith(`${name}{`))) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
      found = true;
    }
  }
  if (!found) throw new Error(`no ${name} on /metrics`);
  return sum;
}

/// `GET /v1/streams?state=…` (admin: anonymous loopback, or an admin token
/// in `headers`): the registry's records, newest first.
export async function listStreams(base, { state = "all", headers = {} } = {}) {
  const res = await fetch(`${base}/v1/streams?state=${state}`, { headers });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /v1/streams answered ${res.status}: ${text}`);
  return JSON.parse(text).streams;
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Whether `filter` (an exact topic, or a prefix ending in `*`) takes `topic`.
export function matches(filter, topic) {
  return filter.endsWith("*") ? topic.startsWith(filter.slice(0, -1)) : topic === filter;
}

/// The ids a subscription should get: the log's events of its filter after
/// its `after` (when given) or its effective_at.
export function expectedIds(log, sub) {
  const from = BigInt(sub.after ?? sub.effectiveAt);
  return log.filter((e) => BigInt(e.id) > from && matches(sub.filter, e.topic)).map((e) => e.id);
}

/// What is wrong with `got` against `expected` (null when equal): missing,
/// repeated, unexpected and out-of-order ids, a few of each.
export function difference(got, expected) {
  if (got.length === expected.length && got.every((id, i) => id === expected[i])) return null;
  const want = new Set(expected);
  const seen = new Map();
  for (const id of got) seen.set(id, (seen.get(id) ?? 0) + 1);
  const missing = expected.filter((id) => !seen.has(id));
  const repeated = [...seen].filter(([, n]) => n > 1).map(([id, n]) => `${id}×${n}`);
  const unexpected = got.filter((id) => !want.has(id));
  const disorder = got.findIndex((id, i) => i > 0 && BigInt(id) <= BigInt(got[i - 1]));
  const spans = (list) => {
    // Runs of consecutive ids in the filter's order, for long gaps.
    const index = new Map(expected.map((id, i) => [id, i]));
    const out = [];
    for (const id of list) {
      const last = out.at(-1);
      if (last && index.get(id) === last.end + 1) {
        last.end += 1;
        last.to = id;
      } else {
        out.push({ from: id, to: id, end: index.get(id) });
      }
    }
    return out.map((r) => (r.from === r.to ? r.from : `${r.from}–${r.to}`)).slice(0, 6).join(", ");
  };
  const few = (list) =>
    `${list.length}${list.length ? ` [${list.slice(0, 8).join(", ")}${list.length > 8 ? ", …" : ""}]` : ""}`;
  return (
    `got ${got.length}, expected ${expected.length} (${expected[0]}…${expected.at(-1)}); ` +
    `missing ${few(missing)}${missing.length > 8 ? ` (runs ${spans(missing)})` : ""}, ` +
    `repeated ${few(repeated)}, unexpected ${few(unexpected)}` +
    (disorder > 0 ? `, out of order at ${got[disorder - 1]} → ${got[disorder]}` : "")
  );
}

/// Waits until every live subscription of `tabs` has got as many events as
/// the log says it should (or `ms` passes), then fails with every
/// difference found. A subscription that was unsubscribed must have got a
/// prefix of its events, and nothing after its unsubscribe. Returns the
/// number of events checked.
export async function checkTabs(base, tabs, { headers = {}, ms = 15_000 } = {}) {
  let log = [];
  let records = [];
  try {
    await waitFor(
      "every handler to get its events",
      async () => {
        log = await readLog(base, { headers });
        records = await Promise.all(tabs.map(record));
        return records.every((r) =>
          Object.values(r.subs).every((s) => s.stoppedAt !== null || s.got.length >= expectedIds(log, s).length),
        );
      },
      ms,
    );
  } catch {
    // Fall through: the comparison below says what is missing.
  }
  log = await readLog(base, { headers });
  records = await Promise.all(tabs.map(record));
  const problems = [];
  let checked = 0;
  records.forEach((r, i) => {
    for (const [key, s] of Object.entries(r.subs)) {
      const label = `${tabs[i].name} ${key} (${s.filter}, from ${s.after ?? s.effectiveAt})`;
      if (s.error) problems.push(`${label}: refused: ${JSON.stringify(s.error)}`);
      const expected = expectedIds(log, s);
      checked += s.got.length;
      if (s.stoppedAt === null) {
        const diff = difference(s.got, expected);
        if (diff) problems.push(`${label}: ${diff}`);
      } else {
        const diff = difference(s.got, expected.slice(0, s.got.length));
        if (diff) problems.push(`${label} (unsubscribed): not a prefix of its events: ${diff}`);
        if (s.got.length !== s.stoppedAt) {
          problems.push(`${label}: ${s.got.length - s.stoppedAt} events after its unsubscribe`);
        }
      }
    }
  });
  assert.deepEqual(problems, [], "every handler got exactly the events of its filter, once, in order");
  return { checked, log, records };
}

// ---------------------------------------------------------------------------
// Token expiries
// ---------------------------------------------------------------------------

/// Two tabs ("first", "second") of `context` with `options`, each following
/// `topics[0]` (`inbox`) and `${prefix}:*` (`all`), kept through `expiries`
/// token expiries of `life` seconds under 100 events/s. Checks every tab
/// against the log and that every connection in herald's registry has one
/// handle (one logical stream); returns the tabs, what each recorded and
/// the connections.
export async function throughExpiries({ context, base, options, topics, prefix, expiries, life }) {
  const backend = backendHeaders();
  const tabs = [];
  for (const name of ["first", "second"]) {
    const tab = await openTab(context, base, name, options);
    await subscribe(tab, "inbox", topics[0]);
    await subscribe(tab, "all", `${prefix}:*`);
    tabs.push(tab);
  }
  const load = new Load({ base, topics, perSecond: 100, headers: backend });
  // The stream's first connection and one more per expiry, all under one
  // handle, the first ones ended.
  const connections = await waitFor(
    `${expiries} expiries and reconnects`,
    async () => {
      const rows = await listStreams(base, { headers: adminHeaders() });
      return rows.length > expiries && rows.filter((r) => r.ended_at).length >= expiries ? rows : null;
    },
    (expiries + 2) * life * 1000,
  );
  await load.stop();
  assert.deepEqual(load.failed, [], "every publish was stored");
  const { checked, records } = await checkTabs(base, tabs, { headers: backend });
  const handles = new Set(connections.map((r) => r.handle));
  assert.equal(handles.size, 1, `one logical stream: ${JSON.stringify(connections)}`);
  assert.ok(connections[0].handle, "a named stream");
  return { tabs, checked, records, connections };
}
