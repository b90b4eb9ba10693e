// One tab moves from incident to incident ten times while events flow on
// all of them: it unsubscribes from one and subscribes to the next (so its
// page has, for a moment, no subscription at all), and every change goes
// to the one stream it has. herald holds one stream throughout: one
// request to /v1/stream, one record in its registry, never ended, and
// `herald_streams_active` 1 after every change. Each handler gets exactly
// its incident's events after its `ready` effective_at, and none after its
// unsubscribe.
//
// The script runs herald itself: its /metrics count this herald's streams
// only (an in-process herald shares its recorder with every test).
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  assertNoPageErrors, checkTabs, listStreams, Load, metric, openTab, record, subscribe, unsubscribe,
} from "./heraldjs_lib.mjs";

const SWITCHES = 10;

watchdog();
const herald = await Herald.start({ database: env("DATABASE_URL") });
const base = herald.base;
const p = uniqueTopic("switch");
const incident = (n) => `${p}:inc-${n}`;
const topics = Array.from({ length: SWITCHES + 1 }, (_, n) => incident(n));

const browser = await launchChromium();
try {
  const tab = await openTab(await browser.newContext(), base, "tab");
  await subscribe(tab, "inc-0", incident(0));
  const [stream] = await waitFor("the stream to be recorded", async () => {
    const listed = await listStreams(base);
    return listed.length ? listed : null;
  });
  const load = new Load({ base, topics, perSecond: 100 });

  for (let n = 1; n <= SWITCHES; n += 1) {
    // The handler has seen a few of its incident's events before it
    // leaves, and the last one published before it does.
    await waitFor(`inc-${n - 1} to get events`, async () => (await record(tab)).subs[`inc-${n - 1}`].got.length >= 5);
    const marker = await publish(base, { topic: incident(n - 1), type: "marker" });
    await waitFor(`inc-${n - 1} to get ${marker.id}`, async () =>
      (await record(tab)).subs[`inc-${n - 1}`].got.includes(String(marker.id)));
    await unsubscribe(tab, `inc-${n - 1}`);
    await subscribe(tab, `inc-${n}`, incident(n));
    assert.equal(await metric(base, "herald_streams_active"), 1, `one stream after switch ${n}`);
  }
  const marker = await publish(base, { topic: incident(SWITCHES), type: "marker" });
  await waitFor("the last incident's marker", async () =>
    (await record(tab)).subs[`inc-${SWITCHES}`].got.includes(String(marker.id)));
  await load.stop();
  assert.deepEqual(load.failed, [], "every publish was stored");

  const { checked, records } = await checkTabs(base, [tab]);
  // The registry records topic changes in batches: wait for the last one.
  const streams = await waitFor("the last change to be recorded", async () => {
    const listed = await listStreams(base, { state: "all" });
    return listed.length !== 1 || listed[0].topics.includes(incident(SWITCHES)) ? listed : null;
  });
  assert.equal(streams.length, 1, `one stream on the server across ${SWITCHES} switches: ${JSON.stringify(streams)}`);
  assert.equal(streams[0].id, stream.id, "the stream the tab opened first");
  assert.equal(streams[0].handle, stream.handle);
  assert.equal(streams[0].ended_at, null, "still open");
  assert.deepEqual(streams[0].topics, [incident(SWITCHES)], "its topics are the last incident's");
  assert.equal(await metric(base, "herald_streams_opened_total"), 1, "opened once");
  assert.equal(tab.streamRequests, 1, "the page made one request to /v1/stream");
  assert.ok(!records[0].statuses.includes("reconnecting"), `never reconnected: ${records[0].statuses}`);
  assertNoPageErrors([tab]);
  console.log(
    `${SWITCHES} switches on stream ${stream.handle ?? stream.id}; ${checked} deliveries checked; ` +
      `effective_at ${Object.values(records[0].subs).map((s) => s.effectiveAt).join(", ")}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
