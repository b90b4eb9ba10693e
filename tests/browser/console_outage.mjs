// The console's "Could not reach herald" goes once herald is back. herald
// stops; a publish from the page fails with that message; herald comes back
// on the same port, the page's herald.js reconnects by itself, and the
// message is gone as soon as the stream opens: nothing on the page still
// says herald is unreachable while it shows live.
//
// The script runs herald itself so it can restart it on the same port.
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const database = env("DATABASE_URL");
const topic = uniqueTopic("outage");

let herald = await Herald.start({ database });
const port = herald.port;
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${herald.base}/#topic=${encodeURIComponent(topic)}`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });

  // herald goes away; publishing from the page cannot reach it.
  await herald.stop();
  await page.waitForSelector('#state[data-state="reconnecting"]', { timeout: WAIT_MS });
  await page.click("#publish-panel summary");
  await page.fill("#pub-topic", topic);
  await page.click("#pub-send");
  await page.waitForSelector("#pub-result.bad", { timeout: WAIT_MS });
  assert.match(await page.textContent("#pub-result"), /^Could not reach herald: /);

  // herald is back: the stream reopens (live once it has held), and the
  // message went when it opened.
  herald = await Herald.start({ database, port });
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  assert.equal(await page.textContent("#pub-result"), "", "no stale 'Could not reach herald'");
  assert.equal(await page.getAttribute("#pub-result", "class"), "result");

  // And publishing from the page works again.
  await page.click("#pub-send");
  await page.waitForSelector("#pub-result >> text=/^Stored as #/", { timeout: WAIT_MS });
  const shown = await page.waitForSelector("li.event[data-id]", { timeout: WAIT_MS });
  assert.equal(await shown.$eval(".topic", (e) => e.textContent), topic);
  await publish(herald.base, { topic, data: "from a backend" });
  await page.waitForFunction(() => document.querySelectorAll("li.event[data-id]").length === 2, null, {
    timeout: WAIT_MS,
  });

  assert.deepEqual(errors, []);
  console.log("'Could not reach herald' shown while herald was down, gone once the stream reopened");
} finally {
  await browser.close();
  await herald.kill();
}
