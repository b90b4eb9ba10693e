// `new Herald({ share: false })` opts out of sharing: two tabs of one
// browser hold a stream each (two records with different handles, two
// open on herald), each tab holds its own, and each gets its events.
//
// The script runs herald itself: its /metrics count this herald's streams
// only (an in-process herald shares its recorder with every test).
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import { assertNoPageErrors, checkTabs, listStreams, metric, openTab, record, subscribe } from "./heraldjs_lib.mjs";

watchdog();
const herald = await Herald.start({ database: env("DATABASE_URL") });
const base = herald.base;
const p = uniqueTopic("unshared");

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const tabs = [];
  for (const name of ["first", "second"]) {
    const tab = await openTab(context, base, name, { share: false });
    await subscribe(tab, "inbox", `${p}:${name}`);
    await subscribe(tab, "all", `${p}:*`);
    tabs.push(tab);
  }
  const streams = await waitFor("both streams to be recorded", async () => {
    const listed = await listStreams(base, { state: "open" });
    return listed.length >= 2 ? listed : null;
  });
  assert.equal(streams.length, 2, `two streams: ${JSON.stringify(streams)}`);
  assert.notEqual(streams[0].handle, streams[1].handle, "each with a handle of its own");
  assert.equal(await metric(base, "herald_streams_active"), 2);
  assert.deepEqual(tabs.map((t) => t.streamRequests), [1, 1], "one request to /v1/stream from each tab");
  const flags = await Promise.all(tabs.map(record));
  assert.deepEqual(flags.map((r) => r.leader), [true, true], "each tab holds its own stream");

  let last;
  for (let n = 0; n < 20; n += 1) {
    last = await publish(base, { topic: `${p}:${n % 2 ? "first" : "second"}`, data: { n } });
  }
  await waitFor("the last event in both tabs", async () =>
    (await Promise.all(tabs.map(record))).every((r) => r.subs.all.got.includes(String(last.id))));
  const { checked } = await checkTabs(base, tabs);
  assertNoPageErrors(tabs);
  console.log(`two tabs, two streams ${streams.map((s) => s.handle).join(" and ")}; ${checked} deliveries checked`);
} finally {
  await browser.close();
  await herald.kill();
}
