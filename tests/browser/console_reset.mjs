// The console shows a reset: herald comes back on the same address but with
// another (empty) database, so the page's Last-Event-ID is ahead of
// everything that log ever assigned. The page reconnects by itself, gets
// the `reset` frame (reason `cursor_ahead`), shows a reset notice with that
// reason and nothing claiming missed events were replayed (a reset means
// none were), and goes on live. A later reconnect resumes from the reset's
// id without another reset.
//
// The script runs herald itself so it can restart it on the same port.
// env: HERALD_BIN, DATABASE_URL and OTHER_DATABASE_URL (two fresh databases).

import assert from "node:assert/strict";
import { artifactPath, env, Herald, launchChromium, publish, uniqueTopic, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const first = env("DATABASE_URL");
const second = env("OTHER_DATABASE_URL");
const topic = uniqueTopic("console-reset");

let herald = await Herald.start({ database: first });
const port = herald.port;
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const rows = () =>
    page.$$eval("#events > li", (items) =>
      items.map((li) => (li.classList.contains("notice") ? `notice${li.classList.contains("reset") ? ":reset" : ""}` : li.dataset.id)),
    );
  const waitRows = (n) =>
    page.waitForFunction((n) => document.querySelectorAll("#events > li").length >= n, n, { timeout: WAIT_MS });

  await page.goto(`${herald.base}/#topic=${encodeURIComponent(topic)}`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  for (const data of [1, 2, 3]) await publish(herald.base, { topic, data });
  await waitRows(3);
  assert.deepEqual(await rows(), ["3", "2", "1"]);

  // Same address, another database: its log has never assigned id 3.
  await herald.stop();
  herald = await Herald.start({ database: second, port });
  await page.waitForSelector("li.event.notice.reset", { timeout: WAIT_MS });
  const notice = await page.textContent("li.event.notice.reset");
  assert.match(notice, /^reset: this server's log has no event #3\b/);
  assert.match(notice, /live events continue from #0\b/);
  // The page announces a reconnect once the connection has held for a
  // second; this one was a reset, so nothing may claim a replay, then or
  // later. (Absence has no event to wait for: wait out that second.)
  const resetAt = await page.evaluate(() => performance.now());
  await page.waitForFunction((t) => performance.now() > t + 1500, resetAt, { timeout: WAIT_MS });
  const notices = await page.$$eval("li.event.notice", (items) => items.map((li) => li.textContent));
  assert.deepEqual(notices, [notice], "the reset notice alone");
  assert.equal(await page.getAttribute("#state", "data-state"), "reset");

  // Live again: a new event shows above the notice.
  const fresh = await publish(herald.base, { topic, type: "after.reset", data: "new log" });
  assert.equal(fresh.id, "1");
  await page.waitForSelector('li.event[data-id="1"] .type >> text=after.reset', { timeout: WAIT_MS });
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });

  // Another restart on the same database: the page resumes from the id it
  // got last, with no second reset. (`more` can only reach the page over a
  // connection to the restarted instance, after any reset it would send.)
  await herald.stop();
  herald = await Herald.start({ database: second, port });
  const more = await publish(herald.base, { topic, data: "after the second restart" });
  // (Ids restart with the new log: wait for it at the top, not anywhere.)
  await page.waitForFunction((id) => document.querySelector("li.event[data-id]").dataset.id === id, more.id, {
    timeout: WAIT_MS,
  });

  // Newest first. Plain notices ("reconnected") are left out: a page may
  // also reach a stopping instance, which answers and ends the stream.
  const shown = (await rows()).filter((row) => row !== "notice");
  assert.deepEqual(shown, [more.id, "1", "notice:reset", "3", "2", "1"], "one reset, events once each");
  assert.equal(await page.getAttribute("#state", "data-state"), "live");
  await page.screenshot({ path: artifactPath("console-reset.png"), fullPage: true });
  console.log(`console rows: ${shown.join(", ")}; notice: ${notice}`);
} finally {
  await browser.close();
  await herald.kill();
}
