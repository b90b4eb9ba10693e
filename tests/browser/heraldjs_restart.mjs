// herald restarts twice under load, and the tabs of a browser miss nothing.
//
// Instance A serves four tabs of one browser (one stream). Twice: A stops
// (SIGTERM, as in a deploy); the publisher moves to instance B on the same
// database and keeps publishing; the tabs see A gone (the leader's
// attempt is refused; every tab's status goes "reconnecting") and keep
// trying; A comes back on the
// same port and the publisher moves back. Every handler of every tab gets
// exactly the events of its filter from its effective_at, once, in order.
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import { assertNoPageErrors, checkTabs, leaders, Load, openTab, record, subscribe } from "./heraldjs_lib.mjs";

const TABS = 4;
const RESTARTS = 2;

watchdog(110_000);
const database = env("DATABASE_URL");
const p = uniqueTopic("restart");
const topics = [`${p}:inc-1`, `${p}:inc-2`, `${p}:ops:db`];
const filters = [`${p}:inc-1`, `${p}:*`, `${p}:inc-2`, `${p}:ops:*`];

let a = await Herald.start({ database });
const port = a.port;
const base = a.base;
let b;
const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const tabs = [];
  const refused = [];
  for (let i = 0; i < TABS; i += 1) {
    const tab = await openTab(context, base, `tab${i}`);
    tab.page.on("requestfailed", (r) => {
      if (new URL(r.url()).pathname === "/v1/stream") refused.push(r.failure()?.errorText);
    });
    await subscribe(tab, "first", filters[i % filters.length]);
    await subscribe(tab, "second", filters[(i + 1) % filters.length]);
    tabs.push(tab);
  }
  const load = new Load({ base, topics, perSecond: 100 });
  const statuses = [];

  for (let round = 1; round <= RESTARTS; round += 1) {
    let sent = load.sent;
    await waitFor("a second of load on A", () => load.sent >= sent + 100);
    const [leader] = await leaders(tabs);
    const refusedBefore = refused.length;

    // A stops; the publisher moves to B.
    await load.pause();
    await a.stop();
    b = await Herald.start({ database });
    load.base = b.base;
    load.resume();
    await waitFor("the leader to see A gone", async () =>
      refused.length > refusedBefore && (await record(leader)).status === "reconnecting");
    sent = load.sent;
    await waitFor("a second of load on B", () => load.sent >= sent + 100);

    // A comes back on its port; the publisher moves back; B goes.
    await load.pause();
    a = await Herald.start({ database, port });
    load.base = a.base;
    load.resume();
    await b.stop();
    b = undefined;
    await waitFor("the tabs to be live again", async () =>
      (await Promise.all(tabs.map(record))).every((r) => r.status === "live"));
    statuses.push(`round ${round}: leader ${leader.name}, ${refused.length - refusedBefore} refused attempts`);
  }
  const sent = load.sent;
  await waitFor("a last second of load", () => load.sent >= sent + 100);
  await load.stop();
  assert.deepEqual(load.failed, [], "every publish was stored");

  const { checked, log, records } = await checkTabs(base, tabs);
  for (const [i, r] of records.entries()) {
    assert.ok(r.statuses.includes("reconnecting"), `${tabs[i].name} saw herald go: ${r.statuses}`);
    assert.equal(r.closed.length, 0, `${tabs[i].name} never closed`);
  }
  assertNoPageErrors(tabs);
  console.log(
    `${RESTARTS} restarts; ${statuses.join("; ")}; ${log.length} events, ${checked} deliveries checked ` +
      `in ${TABS} tabs; statuses of tab0: ${records[0].statuses.join(" → ")}`,
  );
} finally {
  await browser.close();
  await Promise.all([a?.kill(), b?.kill()]);
}
