// The tab that holds a browser's stream goes away under load, five times
// in a row: each time another tab takes the stream over within herald's
// `retry` + 1 s, resumes from the last id the tabs saw, and no tab misses
// an event or gets one twice. A new tab joins after each takeover, so the
// browser keeps six.
//
// The script runs herald itself: its /metrics count this herald's streams
// only (an in-process herald shares its recorder with every test).
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  assertNoPageErrors, checkTabs, difference, expectedIds, leaders, Load, metric, openTab, readLog, record, subscribe,
} from "./heraldjs_lib.mjs";

const TABS = 6;
const ROUNDS = 5;
/// herald's `retry:` (lib.mjs starts herald with 200ms), and the takeover bound.
const RETRY_MS = 200;
const TAKEOVER_MS = RETRY_MS + 1000;

watchdog(110_000);
const herald = await Herald.start({ database: env("DATABASE_URL") });
const base = herald.base;
const p = uniqueTopic("leader");
const topics = [`${p}:inc-1`, `${p}:inc-2`, `${p}:ops:db`];
const filters = [`${p}:inc-1`, `${p}:*`, `${p}:inc-2`, `${p}:ops:*`, `${p}:inc-*`];

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  let opened = 0;
  const join = async () => {
    const tab = await openTab(context, base, `tab${opened}`);
    await subscribe(tab, "first", filters[opened % filters.length]);
    await subscribe(tab, "second", filters[(opened + 2) % filters.length]);
    opened += 1;
    return tab;
  };
  let tabs = [];
  for (let i = 0; i < TABS; i += 1) tabs.push(await join());
  assert.equal(await metric(base, "herald_streams_active"), 1, "one stream for the browser");

  const load = new Load({ base, topics, perSecond: 100 });
  const gone = [];
  const takeovers = [];
  for (let round = 1; round <= ROUNDS; round += 1) {
    // A second of load on the current leader first.
    const sent = load.sent;
    await waitFor("a second of load", () => load.sent >= sent + 100);
    const [leader, ...more] = await leaders(tabs);
    assert.ok(leader && more.length === 0, `round ${round}: one leader among ${tabs.map((t) => t.name)}`);
    const opens = await metric(base, "herald_streams_opened_total");
    const requests = new Map(tabs.map((t) => [t, t.streamRequests]));

    // What the leader got up to now; it may get a few more before it goes,
    // so it is checked as a prefix below.
    const last = await record(leader);
    const closing = Date.now();
    await leader.page.close();
    tabs = tabs.filter((t) => t !== leader);
    gone.push({ name: leader.name, record: last });

    const next = await waitFor(
      `round ${round}: a tab to take the stream over`,
      async () => {
        if ((await metric(base, "herald_streams_opened_total")) <= opens) return null;
        const [next] = await leaders(tabs);
        return next && next.streamRequests > requests.get(next) ? next : null;
      },
    );
    const took = Date.now() - closing;
    takeovers.push(`${leader.name}→${next.name} ${took} ms`);
    assert.ok(took <= TAKEOVER_MS, `round ${round}: ${next.name} took over in ${took} ms, more than ${TAKEOVER_MS} ms`);
    await waitFor("the old stream to end", async () => (await metric(base, "herald_streams_active")) === 1);
    tabs.push(await join());
  }
  const sent = load.sent;
  await waitFor("a last second of load", () => load.sent >= sent + 100);
  await load.stop();
  assert.deepEqual(load.failed, [], "every publish was stored");

  // The tabs still open got everything; the ones that closed got a prefix.
  const { checked } = await checkTabs(base, tabs);
  const log = await readLog(base);
  for (const { name, record } of gone) {
    for (const [key, s] of Object.entries(record.subs)) {
      const diff = difference(s.got, expectedIds(log, s).slice(0, s.got.length));
      assert.equal(diff, null, `${name} ${key} before it closed`);
    }
  }
  assert.equal(await metric(base, "herald_streams_active"), 1, "one stream at the end");
  assertNoPageErrors(tabs);
  console.log(
    `${ROUNDS} takeovers (${takeovers.join(", ")}); ${log.length} events, ${checked} deliveries checked in ` +
      `${tabs.length} tabs, ${gone.length} closed tabs checked up to their close`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
