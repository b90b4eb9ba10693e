// herald.js keeps one stream per browser however many tabs it has: twenty
// tabs of one browser context subscribe to overlapping filters (exact
// topics and prefixes, two handlers on one filter in a tab); herald holds
// one stream for all of them. Then 100 events a second for 20 seconds:
// every handler of every tab gets exactly the events of its filter from
// its `ready` effective_at on, once each, in order (checked against the
// log).
//
// The script runs herald itself: its /metrics count this herald's streams
// only (an in-process herald shares its recorder with every test).
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  assertNoPageErrors, checkTabs, leaders, listStreams, Load, metric, openTab, subscribe,
} from "./heraldjs_lib.mjs";

const TABS = 20;
const LOAD_SECONDS = 20;

watchdog(110_000);
const herald = await Herald.start({ database: env("DATABASE_URL") });
const base = herald.base;
const p = uniqueTopic("tabs");
const topics = [`${p}:inc-1`, `${p}:inc-2`, `${p}:inc-3`, `${p}:ops:db`, `${p}:ops:web`];
const filters = [
  `${p}:inc-1`,
  `${p}:*`,
  `${p}:inc-2`,
  `${p}:ops:*`,
  `${p}:inc-3`,
  `${p}:inc-*`,
  `${p}:ops:db`,
];

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const tabs = [];
  for (let i = 0; i < TABS; i += 1) {
    const tab = await openTab(context, base, `tab${i}`);
    tabs.push(tab);
    // Two filters a tab, overlapping with the next tab's.
    await subscribe(tab, "first", filters[i % filters.length]);
    await subscribe(tab, "second", filters[(i + 3) % filters.length]);
  }
  // The same filter twice in one tab: both handlers get its events.
  await subscribe(tabs[0], "again", filters[0]);

  const [leader, ...others] = await leaders(tabs);
  assert.ok(leader, "a tab leads");
  assert.deepEqual(others, [], "one tab leads");
  assert.equal(await metric(base, "herald_streams_active"), 1, "one stream for twenty tabs");
  assert.equal(await metric(base, "herald_streams_opened_total"), 1, "opened once");
  const streamRequests = tabs.reduce((n, t) => n + t.streamRequests, 0);
  assert.equal(streamRequests, 1, "one request to /v1/stream from the whole browser");

  const load = new Load({ base, topics, perSecond: 100 });
  const total = LOAD_SECONDS * 100;
  await waitFor(`${total} events published`, () => load.sent >= total, LOAD_SECONDS * 1000 + 10_000);
  await load.stop();
  assert.deepEqual(load.failed, [], "every publish was stored");

  const { checked, log } = await checkTabs(base, tabs);
  assert.equal(await metric(base, "herald_streams_active"), 1, "still one stream after the load");
  const open = await listStreams(base, { state: "all" });
  assert.equal(open.length, 1, `one stream recorded: ${JSON.stringify(open)}`);
  assert.equal(open[0].ended_at, null);
  assertNoPageErrors(tabs);
  console.log(
    `${TABS} tabs, ${log.length} events published in ${LOAD_SECONDS} s over ${topics.length} topics, ` +
      `${checked} deliveries to handlers checked; leader ${leader.name}; one stream ${open[0].handle ?? open[0].id} ` +
      `with topics ${open[0].topics.join(" ")}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
