// `replaced` and `revoked` stop every tab of a browser.
//
// - herald caps alice at one stream (`--max-streams-per-subject 1`). A
//   browser (context) with three tabs shares one stream; a second browser
//   of alice's opens one: herald replaces the first. Each of the first
//   browser's tabs gets onClosed("replaced") once and stays closed (status
//   "closed", no stream request again, no event after); the second browser
//   goes on.
// - An operator revokes bob (`DELETE /v1/subjects/bob/streams`): each of
//   his browser's three tabs gets onClosed("revoked") once and stays closed.
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  adminHeaders, assertNoPageErrors, backendHeaders, listStreams, metric, openTab, record, setCookie, subscribe,
  TOKEN_FLAGS, userToken,
} from "./heraldjs_lib.mjs";

/// herald's `retry:` (lib.mjs starts herald with 200ms).
const RETRY_MS = 200;

watchdog();
const database = env("DATABASE_URL");
const p = uniqueTopic("ends");
const topic = `${p}:inbox`;

const herald = await Herald.start({ database, flags: { ...TOKEN_FLAGS, "--max-streams-per-subject": "1" } });
const base = herald.base;
const backend = backendHeaders();
const admin = adminHeaders();

/// A browser of `sub` with `count` tabs subscribed to `topic`, its stream
/// open.
async function browserOf(browser, sub, count) {
  const context = await browser.newContext();
  await setCookie(context, base, userToken(sub, [`${p}:*`], 3600));
  const tabs = [];
  for (let i = 0; i < count; i += 1) {
    const tab = await openTab(context, base, `${sub}'s tab ${tabs.length}`);
    await subscribe(tab, "inbox", topic);
    tabs.push(tab);
  }
  return tabs;
}

/// Waits until every tab's onClosed has fired; then, after a bounded wait
/// (the one wait on time here: it asserts that nothing more happens), checks
/// it fired once with `reason`, the tab is closed and asked for no stream
/// again.
async function assertStopped(tabs, reason) {
  await waitFor(`onClosed(${reason}) in every tab`, async () =>
    (await Promise.all(tabs.map(record))).every((r) => r.closed.length > 0));
  const requests = tabs.map((t) => t.streamRequests);
  await new Promise((resolve) => setTimeout(resolve, 5 * RETRY_MS));
  const records = await Promise.all(tabs.map(record));
  for (const [i, r] of records.entries()) {
    assert.deepEqual(r.closed.map((c) => c.reason), [reason], `${tabs[i].name}: onClosed once, ${reason}`);
    assert.equal(r.status, "closed", `${tabs[i].name}: status`);
  }
  assert.deepEqual(tabs.map((t) => t.streamRequests), requests, `no stream request after ${reason}`);
  return records;
}

const browser = await launchChromium();
try {
  // --- replaced ------------------------------------------------------------
  const first = await browserOf(browser, "alice", 3);
  await waitFor("alice's first stream", async () => (await metric(base, "herald_streams_active")) === 1);
  const [second] = await browserOf(browser, "alice", 1);
  const replaced = await assertStopped(first, "replaced");
  assert.equal(
    await metric(base, 'herald_streams_ended_total{reason="replaced"}'),
    1,
    "herald replaced one stream",
  );
  // The second browser goes on; the first gets nothing more.
  const event = await publish(base, { topic, data: "after the replacement" }, backend);
  await waitFor("the second browser to get it", async () =>
    (await record(second)).subs.inbox.got.includes(String(event.id)));
  const firstAfter = await Promise.all(first.map(record));
  firstAfter.forEach((r, i) =>
    assert.deepEqual(r.subs.inbox.got, replaced[i].subs.inbox.got, `${first[i].name} got nothing after`));
  assert.equal((await record(second)).closed.length, 0, "the second browser is not closed");

  // --- revoked -------------------------------------------------------------
  const bob = await browserOf(browser, "bob", 3);
  await waitFor("bob's stream to be recorded", async () =>
    (await listStreams(base, { state: "open", headers: admin })).some((s) => s.subject === "bob"));
  const res = await fetch(`${base}/v1/subjects/bob/streams`, { method: "DELETE", headers: admin });
  assert.equal(res.status, 200, `revoke: ${await res.text()}`);
  await assertStopped(bob, "revoked");
  assert.equal((await record(second)).closed.length, 0, "alice's browser is not touched");

  assertNoPageErrors([...first, second, ...bob]);
  console.log(
    `alice's 3 tabs: ${replaced.map((r) => r.closed[0].reason).join(", ")}; her second browser got ${event.id}; ` +
      `bob's 3 tabs revoked; stream requests ${[...first, second, ...bob].map((t) => t.streamRequests).join(", ")}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
