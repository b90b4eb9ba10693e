// A tab that freezes (Chromium's page lifecycle, as a background tab is
// frozen to save power) gives the stream up if it led, and misses nothing
// once it resumes. Three tabs of one browser, each following a topic of
// its own under load: the leader freezes, another tab takes over within
// `retry` + 1 s; a while later (past the new leader's first second) the
// frozen tab resumes; then a follower freezes and resumes. Every handler
// of every tab gets exactly the events of its filter from its
// effective_at, once, in order.
//
// The script runs herald itself: its /metrics count this herald's streams
// only (an in-process herald shares its recorder with every test).
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import { assertNoPageErrors, checkTabs, leaders, Load, metric, openTab, record, subscribe } from "./heraldjs_lib.mjs";

const RETRY_MS = 200;
const TAKEOVER_MS = RETRY_MS + 1000;
/// How long a tab stays frozen.
const FROZEN_MS = 3000;

watchdog();
const herald = await Herald.start({ database: env("DATABASE_URL") });
const base = herald.base;
const p = uniqueTopic("freeze");
const topics = [`${p}:a`, `${p}:b`, `${p}:c`];

/// Freezes `tab` for `ms` as Chromium's page lifecycle does: the
/// document's `freeze` event (and the microtasks it leaves, such as a
/// released Web Lock), then no task runs until `resume`: messages wait in
/// the tab's queues. Chromium under playwright does not freeze pages itself
/// (CDP's `Page.setWebLifecycleState` fires nothing here) and a page held
/// in the debugger loses its BroadcastChannel messages, so the page's own
/// thread is kept busy instead, in the freeze event's task. Resolves once
/// the tab has resumed.
async function freeze(tab, ms) {
  await tab.page.evaluate(async (ms) => {
    document.dispatchEvent(new Event("freeze"));
    for (let i = 0; i < 20; i += 1) await null;
    const end = Date.now() + ms;
    while (Date.now() < end);
  }, ms);
  await tab.page.evaluate(() => document.dispatchEvent(new Event("resume")));
}

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const tabs = [];
  for (const [i, topic] of topics.entries()) {
    const tab = await openTab(context, base, `tab${i}`);
    await subscribe(tab, "own", topic);
    tabs.push(tab);
  }
  const load = new Load({ base, topics, perSecond: 100 });
  const second = async () => {
    const sent = load.sent;
    await waitFor("a second of load", () => load.sent >= sent + 100);
  };
  await second();

  // The leader freezes: another tab takes over.
  const [leader] = await leaders(tabs);
  const others = tabs.filter((t) => t !== leader);
  const opens = await metric(base, "herald_streams_opened_total");
  const freezing = Date.now();
  const frozen = freeze(leader, FROZEN_MS);
  const next = await waitFor("a tab to take over from the frozen leader", async () => {
    if ((await metric(base, "herald_streams_opened_total")) <= opens) return null;
    return (await leaders(others))[0];
  });
  const took = Date.now() - freezing;
  assert.ok(took <= TAKEOVER_MS, `${next.name} took over in ${took} ms, more than ${TAKEOVER_MS} ms`);
  // Frozen past the new leader's first second (when it keeps the stream's
  // old topics for tabs yet to report), then back.
  await frozen;
  await second();

  // A follower freezes and comes back.
  const follower = tabs.find((t) => t !== next && t !== leader);
  await freeze(follower, FROZEN_MS);
  await second();
  await load.stop();

  const { checked } = await checkTabs(base, tabs);
  const states = await Promise.all(tabs.map(record));
  assertNoPageErrors(tabs);
  console.log(
    `leader ${leader.name} froze, ${next.name} took over in ${took} ms; follower ${follower.name} froze; ` +
      `${checked} deliveries checked; statuses ${states.map((s) => `${s.status}/${s.leader}`).join(", ")}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
