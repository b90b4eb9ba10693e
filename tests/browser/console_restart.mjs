// The console survives a server restart by itself: herald.js reconnects
// to the same address from the last id the page saw, and the page shows
// the events published while the server was away exactly once. herald.js
// reconnects on its own schedule with a new EventSource, so it sends that
// id as `last_event_id=` in the URL (an EventSource sends `Last-Event-ID`
// only on reconnects of its own); the script reads either.
//
// Two console pages: a busy one that has seen events before the restart
// (it resumes from the last id it saw), and a quiet one that has seen none
// (it resumes from the `after` of its stream's opening frame, so it misses
// nothing either).
//
// The script runs herald itself so it can restart it on the same port:
// instance A serves the pages; while A is down, events are published
// through instance B on the same database; then A comes back.
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import {
  artifactPath, env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog, WAIT_MS,
} from "./lib.mjs";

watchdog();
const database = env("DATABASE_URL");
const topic = uniqueTopic("restart");
const quietTopic = uniqueTopic("quiet");

/// A console page on `topic`, with every stream request it makes (and the
/// cursor it resumed from), the attempts that found no server, and every
/// state it showed.
async function openConsole(browser, base, topic) {
  const page = await browser.newPage();
  const streams = [];
  const refused = [];
  page.on("requestfailed", (r) => {
    if (new URL(r.url()).pathname === "/v1/stream") refused.push(r.failure()?.errorText);
  });
  page.on("request", async (r) => {
    if (new URL(r.url()).pathname !== "/v1/stream") return;
    const entry = { request: r, lastEventId: undefined };
    streams.push(entry);
    const query = new URL(r.url()).searchParams.get("last_event_id");
    entry.lastEventId = (await r.allHeaders())["last-event-id"] ?? query;
  });
  await page.addInitScript(() => {
    window.states = [];
    new MutationObserver(() => {
      const state = document.getElementById("state")?.dataset.state;
      if (state && window.states.at(-1) !== state) window.states.push(state);
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
  });
  await page.goto(`${base}/#topic=${encodeURIComponent(topic)}`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  return {
    page,
    refused,
    ids: () => page.$$eval("li.event[data-id]", (items) => items.map((li) => Number(li.dataset.id))),
    state: () => page.getAttribute("#state", "data-state"),
    states: () => page.evaluate(() => window.states),
    waitFor: (condition, arg) => page.waitForFunction(condition, arg, { timeout: WAIT_MS }),
    waitRows: (n) =>
      page.waitForFunction((n) => document.querySelectorAll("li.event[data-id]").length >= n, n, {
        timeout: WAIT_MS,
      }),
    /// The cursor of the first request, and of every reconnect that reached
    /// a server. (A refused attempt shows only the headers the page itself
    /// set, so it is left out.)
    async lastEventIds() {
      await waitFor("request headers", () => streams.every((s) => s.lastEventId !== undefined));
      const answered = streams.slice(1).filter((s) => s.request.failure() === null);
      return { first: streams[0].lastEventId, reconnects: answered.map((s) => s.lastEventId) };
    },
  };
}

let a = await Herald.start({ database });
const port = a.port;
const browser = await launchChromium();
let b;
try {
  const busy = await openConsole(browser, a.base, topic);
  const before = [await publish(a.base, { topic, data: 1 }), await publish(a.base, { topic, data: 2 })];
  await busy.waitRows(2);
  // Opened after those two: its stream starts at id 2 and shows no event.
  const quiet = await openConsole(browser, a.base, quietTopic);
  assert.deepEqual(await quiet.ids(), []);

  // A stops (SIGTERM, as in a deploy); the pages notice and keep trying.
  await a.stop();
  for (const p of [busy, quiet]) {
    await p.waitFor(() => document.getElementById("state").dataset.state === "reconnecting");
  }

  // Meanwhile another instance on the same database takes publishes.
  b = await Herald.start({ database });
  const missed = [];
  for (const data of [3, 4, 5]) missed.push(await publish(b.base, { topic, type: "while.away", data }));
  const quietMissed = [await publish(b.base, { topic: quietTopic, type: "while.away", data: "quiet" })];
  // The pages keep trying while nothing listens on A's port (a refused
  // connection is a network error, which herald.js retries).
  await waitFor("refused reconnect attempts", () => busy.refused.length >= 2 && quiet.refused.length >= 2);
  for (const p of [busy, quiet]) assert.equal(await p.state(), "reconnecting", "A is still down");
  assert.deepEqual(await busy.ids(), before.map((e) => Number(e.id)).reverse(), "nothing new while A is down");

  // A comes back on the same port; the pages reconnect on their own.
  a = await Herald.start({ database, port });
  const expected = [...before, ...missed].map((e) => Number(e.id)).reverse();
  await busy.waitRows(expected.length);
  await quiet.waitRows(quietMissed.length);
  for (const p of [busy, quiet]) await p.page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  // And they go on live on the restarted instance.
  const after = await publish(a.base, { topic, data: 6 });
  const quietAfter = await publish(a.base, { topic: quietTopic, data: "live" });
  await busy.waitFor((id) => document.querySelector(`li.event[data-id="${id}"]`), after.id);
  await quiet.waitFor((id) => document.querySelector(`li.event[data-id="${id}"]`), quietAfter.id);

  // Each event exactly once, newest first: the missed ones came from the
  // replay after the cursor, none of the earlier ones came twice.
  assert.deepEqual(await busy.ids(), [Number(after.id), ...expected]);
  assert.deepEqual(
    await busy.page.$$eval("li.event[data-id] .type", (els) => els.slice(1, 4).map((e) => e.textContent)),
    ["while.away", "while.away", "while.away"],
  );
  assert.deepEqual(await quiet.ids(), [quietAfter, ...quietMissed].map((e) => Number(e.id)));
  // The notice comes once the new connection has held for a second.
  await busy.page.waitForSelector("li.event.notice", { timeout: WAIT_MS });

  // The first request had no cursor. Every reconnect of the busy
  // page sent the id of the last event it had seen; the quiet page sent
  // the id its stream opened at.
  const busyIds = await busy.lastEventIds();
  const quietIds = await quiet.lastEventIds();
  assert.equal(busyIds.first, null, "first connection has no cursor");
  assert.equal(quietIds.first, null, "first connection has no cursor");
  assert.ok(busyIds.reconnects.length >= 1 && quietIds.reconnects.length >= 1, "the pages reconnected");
  assert.deepEqual([...new Set(busyIds.reconnects)], [before[1].id], "busy page: resumed from the last event");
  assert.deepEqual([...new Set(quietIds.reconnects)], [before[1].id], "quiet page: resumed from its opening frame");

  for (const p of [busy, quiet]) {
    const states = await p.states();
    const down = states.lastIndexOf("reconnecting");
    assert.ok(down > 0 && states.slice(down + 1).includes("live"), `states went reconnecting → live: ${states}`);
  }

  await busy.page.screenshot({ path: artifactPath("console-after-restart.png"), fullPage: true });
  console.log(
    `busy page ids ${(await busy.ids()).join(", ")}, reconnects resumed from ${busyIds.reconnects}; ` +
      `quiet page ids ${(await quiet.ids()).join(", ")}, reconnects sent ${quietIds.reconnects}; ` +
      `refused attempts ${busy.refused.length} + ${quiet.refused.length} (${[...new Set(busy.refused)]}); ` +
      `states ${(await busy.states()).join(" → ")}`,
  );
} finally {
  await browser.close();
  await Promise.all([a?.kill(), b?.kill()]);
}
