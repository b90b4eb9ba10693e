// The console switches topics on the stream it has: ten switches, one
// connection (counted by herald's stream registry), and after each switch
// the new topic's events show and the old topic's do not. herald.js makes
// each switch PUTs on the page's named stream (the new topic, then the old
// one's removal), never a reconnect.
//
// env: HERALD_URL (a running herald on a database of its own).

import assert from "node:assert/strict";
import { env, launchChromium, publish, uniqueTopic, waitFor, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const prefix = uniqueTopic("switch");
const topic = (n) => `${prefix}:t${n}`;

const browser = await launchChromium();
try {
  const page = await (await browser.newContext()).newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  let streamRequests = 0;
  page.on("request", (r) => {
    if (new URL(r.url()).pathname === "/v1/stream") streamRequests += 1;
  });
  await page.goto(`${base}/#topic=${encodeURIComponent(topic(0))}`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });

  const shown = () => page.$$eval("li.event[data-id]", (items) => items.map((li) => li.dataset.id));
  const expected = [];
  for (let n = 1; n <= 10; n += 1) {
    await page.fill("#topics", topic(n));
    await page.click("#connect");
    await page.waitForFunction(
      (t) => [...document.querySelectorAll("li.notice")].some((li) => li.textContent.includes(`now following ${t} `)),
      topic(n),
      { timeout: WAIT_MS },
    );
    // The topic left behind is not shown; the new one is, at once.
    await publish(base, { topic: topic(n - 1), data: { left: n - 1 } });
    const stored = await publish(base, { topic: topic(n), data: { n } });
    expected.unshift(stored.id);
    await waitFor(`event ${stored.id} to show`, async () => (await shown()).includes(stored.id));
  }
  assert.deepEqual(await shown(), expected, "every event of the topic in force, none of the others");
  assert.equal(await page.getAttribute("#state", "data-state"), "live");
  assert.equal(new URL(page.url()).hash, `#topic=${encodeURIComponent(topic(10))}`);
  assert.equal(streamRequests, 1, "the browser opened one stream");

  // herald's registry counts one stream, opened once, still open. The
  // console adds a topic before it drops the old one (so a refused switch
  // leaves the stream as it was): the last topic left goes in a PUT of its
  // own, which may land just after the page showed the switch.
  const listed = await waitFor("the stream to be recorded with the last topic alone", async () => {
    const res = await fetch(`${base}/v1/streams?state=all&topic=${encodeURIComponent(topic(10))}`);
    const body = await res.json();
    return body.streams.length === 1 && body.streams[0].topics.length === 1 ? body.streams : null;
  });
  const all = await (await fetch(`${base}/v1/streams?state=all`)).json();
  assert.equal(all.streams.length, 1, "one stream on the server across ten switches");
  assert.deepEqual(listed[0].topics, [topic(10)]);
  assert.equal(listed[0].ended_at, null);
  assert.deepEqual(problems, []);
  console.log(`ten switches on one stream; events ${expected.reverse().join(", ")}`);
} finally {
  await browser.close();
}
