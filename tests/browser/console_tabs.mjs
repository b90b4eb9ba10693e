// Console tabs of one browser share one stream: herald.js elects one tab to
// hold it (Web Locks) and hands its events to the others
// (BroadcastChannel). Tab one follows T; tab two follows T and U. herald
// counts one open stream (`herald_streams_active` 1) and the browser asked
// for one; an event on T shows in both tabs, once each, and one on U only
// in tab two. Then the tab holding the stream closes: the other takes it
// over, still one stream, and goes on showing events.
//
// The script runs herald itself: `herald_streams_active` counts the streams
// of a whole process, and the Rust test binary runs other tests' streams
// in its own.
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const database = env("DATABASE_URL");
const t = uniqueTopic("tabs");
const u = uniqueTopic("tabs-other");

const herald = await Herald.start({ database });
const base = herald.base;

async function streamsActive() {
  const text = await (await fetch(`${base}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => /^herald_streams_active[ {]/.test(l))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const errors = [];
  let streamRequests = 0;
  context.on("request", (r) => {
    if (new URL(r.url()).pathname === "/v1/stream") streamRequests += 1;
  });
  const open = async (topics) => {
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${base}/#${topics.map((x) => `topic=${encodeURIComponent(x)}`).join("&")}`);
    await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
    return page;
  };
  const ids = (page) => page.$$eval("li.event[data-id]", (items) => items.map((li) => li.dataset.id));
  const shows = (page, id) => page.waitForSelector(`li.event[data-id="${id}"]`, { timeout: WAIT_MS });

  const one = await open([t]);
  const two = await open([t, u]);
  assert.equal(await two.inputValue("#topics"), `${t} ${u}`);

  // Both tabs follow: an event of each topic.
  const other = await publish(base, { topic: u, data: "for tab two" });
  const both = await publish(base, { topic: t, data: "for both" });
  await shows(one, both.id);
  await shows(two, both.id);
  await shows(two, other.id);
  assert.deepEqual(await ids(one), [both.id], "tab one: its topic's event, once");
  assert.deepEqual(await ids(two), [both.id, other.id], "tab two: both events, once each, newest first");
  assert.equal(await streamsActive(), 1, "one stream open on herald for two tabs");
  assert.equal(streamRequests, 1, "the browser asked for one stream");

  // Tab one asked for the stream first, so it holds it. It goes; tab two
  // takes the stream over.
  await one.close();
  const after = await publish(base, { topic: t, data: "after the first tab went" });
  await shows(two, after.id);
  await waitFor("one stream open after the takeover", async () => (await streamsActive()) === 1);
  assert.deepEqual(await ids(two), [after.id, both.id, other.id], "each event once after the takeover");
  assert.equal(await two.getAttribute("#state", "data-state"), "live");
  assert.equal(streamRequests, 2, "the takeover asked for the stream again, once");

  assert.deepEqual(errors, []);
  console.log(
    `two tabs, one stream (herald_streams_active 1); after the takeover ${streamRequests} stream requests in all; ` +
      `tab two rows ${(await ids(two)).join(", ")}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
