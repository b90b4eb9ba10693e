// The console's "From" (the last 10 minutes, hour, day) on herald.js: each
// filter starts from its first event in the window, read from history, then
// goes on live. Two filters that match the same events show each event once,
// newest first whatever order their histories arrive in; a filter with
// nothing in the window still shows what comes next. "From" on the open
// stream starts the new filters from the window too, without a second
// stream, and shows nothing twice.
//
// env: HERALD_URL (a running herald).

import assert from "node:assert/strict";
import { env, launchChromium, publish, uniqueTopic, waitFor, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const root = uniqueTopic("since");
const a = `${root}:a`;
const b = `${root}:b`;
const quiet = `${root}-quiet`;

// Before the page opens: the window's events.
const a1 = await publish(base, { topic: a, data: 1 });
const b1 = await publish(base, { topic: b, data: 2 });
const a2 = await publish(base, { topic: a, data: 3 });

const browser = await launchChromium();
try {
  const page = await (await browser.newContext()).newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico") problems.push(`${r.status()} for ${r.url()}`);
  });
  let streamRequests = 0;
  page.on("request", (r) => {
    if (new URL(r.url()).pathname === "/v1/stream") streamRequests += 1;
  });
  const ids = () => page.$$eval("li.event[data-id]", (items) => items.map((li) => li.dataset.id));
  const shown = (n) => waitFor(`${n} rows`, async () => (await ids()).length >= n);

  // `a` and `root:*` both match a1 and a2; `quiet` has nothing yet.
  const hash = [a, `${root}:*`, quiet].map((t) => `topic=${encodeURIComponent(t)}`).join("&");
  await page.goto(`${base}/#${hash}&since=10m`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  assert.equal(await page.inputValue("#since"), "10m", "From comes from the URL");
  await shown(3);
  assert.deepEqual(await ids(), [a2.id, b1.id, a1.id], "the window, each event once, newest first");

  // Live after the window, on every filter.
  const a3 = await publish(base, { topic: a, data: 4 });
  const q1 = await publish(base, { topic: quiet, data: 5 });
  await shown(5);
  assert.deepEqual(await ids(), [q1.id, a3.id, a2.id, b1.id, a1.id]);

  // From on the open stream: `b` alone, from the last hour. Its window's
  // events are shown already; `a` is no longer followed.
  await page.fill("#topics", b);
  await page.selectOption("#since", "1h");
  await page.click("#connect");
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("li.notice")].some((li) => li.textContent.startsWith(`now following ${t} `)),
    b,
    { timeout: WAIT_MS },
  );
  await publish(base, { topic: a, data: "not followed" });
  const b2 = await publish(base, { topic: b, data: 6 });
  await waitFor(`event ${b2.id}`, async () => (await ids()).includes(b2.id));
  assert.deepEqual(await ids(), [b2.id, q1.id, a3.id, a2.id, b1.id, a1.id], "nothing twice, nothing unfollowed");
  assert.equal(new URL(page.url()).hash, `#topic=${encodeURIComponent(b)}&since=1h`);
  assert.equal(streamRequests, 1, "one stream throughout");

  assert.deepEqual(problems, []);
  console.log(`From: rows ${(await ids()).join(", ")} on one stream`);
} finally {
  await browser.close();
}
