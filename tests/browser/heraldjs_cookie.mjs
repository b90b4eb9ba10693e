// herald.js in cookie mode (the default): the `herald_token` cookie carries
// a token that lives 3 s; herald warns a second before `exp` and ends the
// stream at `exp`.
//
// - With an `onAuthExpiring` that renews the cookie (as a page's
//   `fetch("/refresh")` would; here the browser context sets it), two tabs
//   keep one logical stream through three expiries (every connection in
//   herald's registry has the same handle) and miss nothing.
// - Without a renewal, the reconnect is refused 401: `onClosed`
//   ("unauthorized") fires once in each tab, the status is "closed", and
//   nothing asks for a stream again.
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  assertNoPageErrors, backendHeaders, difference, expectedIds, openTab, readLog, record, setCookie, subscribe,
  throughExpiries, TOKEN_FLAGS, userToken,
} from "./heraldjs_lib.mjs";

const EXPIRIES = 3;
const TOKEN_LIFE = 3;
/// herald's `retry:` (lib.mjs starts herald with 200ms).
const RETRY_MS = 200;

watchdog(100_000);
const database = env("DATABASE_URL");
const p = uniqueTopic("cookie");
const topics = [`${p}:inbox`, `${p}:alerts`];
const aliceToken = () => userToken("alice", [`${p}:*`], TOKEN_LIFE);

const herald = await Herald.start({ database, flags: TOKEN_FLAGS });
const base = herald.base;
const backend = backendHeaders();
const browser = await launchChromium();
try {
  // --- With a renewal ------------------------------------------------------
  const renewing = await browser.newContext();
  let renewals = 0;
  await renewing.exposeFunction("renewCookie", async () => {
    renewals += 1;
    await setCookie(renewing, base, aliceToken());
  });
  await setCookie(renewing, base, aliceToken());
  const { tabs, checked, records, connections } = await throughExpiries({
    context: renewing, base, options: { renewOnExpiring: true }, topics, prefix: p,
    expiries: EXPIRIES, life: TOKEN_LIFE,
  });
  assert.ok(renewals >= EXPIRIES, `the cookie was renewed ${renewals} times`);
  const warned = records.reduce((n, r) => n + r.expiring.length, 0);
  assert.ok(warned >= EXPIRIES, `onAuthExpiring ran ${warned} times`);
  assert.ok(records.every((r) => r.closed.length === 0), "never closed");
  assertNoPageErrors(tabs);
  console.log(
    `renewing: one stream ${connections[0].handle}, ${connections.length} connections ended ` +
      `${connections.map((r) => r.end_reason).join(", ")}; ${renewals} renewals, ${warned} warnings; ` +
      `${checked} deliveries checked`,
  );
  await renewing.close();

  // --- Without a renewal ---------------------------------------------------
  const lapsing = await browser.newContext();
  await setCookie(lapsing, base, aliceToken());
  const lapsed = [];
  for (const name of ["first", "second"]) {
    const tab = await openTab(lapsing, base, `lapsing ${name}`);
    await subscribe(tab, "inbox", topics[0]);
    lapsed.push(tab);
  }
  const ended = await waitFor(
    "onClosed in every tab",
    async () => {
      const all = await Promise.all(lapsed.map(record));
      return all.every((r) => r.closed.length > 0) ? all : null;
    },
    (TOKEN_LIFE + 2) * 1000,
  );
  const requests = lapsed.map((t) => t.streamRequests);
  // The one wait on time in this script: it asserts that nothing happens
  // (no reconnect, no second onClosed), for well over herald's retry.
  await new Promise((resolve) => setTimeout(resolve, 5 * RETRY_MS));
  const after = await Promise.all(lapsed.map(record));
  assert.deepEqual(lapsed.map((t) => t.streamRequests), requests, "no stream request after onClosed");
  for (const [i, r] of after.entries()) {
    assert.deepEqual(r.closed.map((c) => c.reason), ["unauthorized"], `${lapsed[i].name}: onClosed once, unauthorized`);
    assert.equal(r.status, "closed", `${lapsed[i].name}: status`);
    assert.equal(r.statuses.at(-1), "closed", `${lapsed[i].name}: last onStatus`);
  }
  // What the tabs got before the end is still exact.
  const log = await readLog(base, { headers: backend });
  for (const [i, r] of after.entries()) {
    const s = r.subs.inbox;
    assert.equal(difference(s.got, expectedIds(log, s).slice(0, s.got.length)), null, `${lapsed[i].name}`);
  }
  assertNoPageErrors(lapsed);
  console.log(
    `lapsing: onClosed ${ended.map((r) => r.closed.map((c) => c.reason).join("+")).join(", ")}; ` +
      `stream requests per tab ${requests.join(", ")}, none after`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
