// The console shows herald's reason when it refuses a subscription. An
// EventSource that gets `400 application/problem+json` closes for good and
// cannot read the answer; herald.js asks again with fetch and hands the
// problem to the subscription's onError, and the page shows its `detail`.
// Fixing the filter and subscribing again clears it.
//
// env: HERALD_URL (a running herald).

import assert from "node:assert/strict";
import { artifactPath, env, launchChromium, publish, uniqueTopic, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const bad = "incident*:x";
const topic = uniqueTopic("refused");

// What herald answers for that filter, read directly.
const direct = await fetch(`${base}/v1/stream?topic=${encodeURIComponent(bad)}&message_events=true`);
assert.equal(direct.status, 400);
assert.equal(direct.headers.get("content-type"), "application/problem+json");
const problem = await direct.json();
assert.ok(problem.detail, "the problem has a detail");

const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  await page.goto(`${base}/#topic=${encodeURIComponent(bad)}`);
  await page.waitForSelector('#state[data-state="refused"]', { timeout: WAIT_MS });
  assert.equal(await page.textContent("#state"), "refused");
  assert.equal(await page.textContent("#sub-result"), `herald refused this subscription (400): ${problem.detail}`);
  assert.equal(await page.getAttribute("#sub-result", "class"), "result bad");
  assert.equal(await page.isDisabled("#connect"), false, "Subscribe can be tried again");
  await page.screenshot({ path: artifactPath("console-refused.png"), fullPage: true });

  // A valid filter: live, the reason gone, and events arrive.
  await page.fill("#topics", topic);
  await page.click("#connect");
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  assert.equal(await page.textContent("#sub-result"), "");
  const stored = await publish(base, { topic, data: "after the fix" });
  await page.waitForSelector(`li.event[data-id="${stored.id}"]`, { timeout: WAIT_MS });

  assert.deepEqual(errors, []);
  console.log(`console showed: herald refused this subscription (400): ${problem.detail}`);
} finally {
  await browser.close();
}
