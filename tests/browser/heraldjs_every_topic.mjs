// `subscribe("*")` follows every topic the token may read, even when the
// token may not read `*` itself: herald.js sends herald's "no topic" for it
// (an empty list), which herald answers with the token's grants. Alice may
// read `user:alice:*`; her `*` subscription gets her events, not bob's, and
// no refusal.
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  TOKEN_FLAGS, assertNoPageErrors, backendHeaders, openTab, record, setCookie, subscribe, userToken,
} from "./heraldjs_lib.mjs";

watchdog();
const herald = await Herald.start({ database: env("DATABASE_URL"), flags: TOKEN_FLAGS });
const base = herald.base;
const tag = uniqueTopic("every").replace(/:/g, "-");

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  await setCookie(context, base, userToken("alice", ["user:{sub}:*"], 3600));
  const tab = await openTab(context, base, "alice");
  const at = await subscribe(tab, "all", "*");
  const mine = await publish(base, { topic: `user:alice:${tag}`, data: 1 }, backendHeaders());
  await publish(base, { topic: `user:bob:${tag}`, data: 2 }, backendHeaders());
  const last = await publish(base, { topic: `user:alice:${tag}`, data: 3 }, backendHeaders());
  const got = await waitFor("alice's two events", async () => {
    const rec = await record(tab);
    return rec.subs.all.got.length >= 2 ? rec.subs.all : null;
  });
  assert.equal(got.error, null, `no refusal: ${JSON.stringify(got.error)}`);
  assert.deepEqual(got.got, [mine.id, last.id], `alice's events after ${at}, not bob's`);
  assertNoPageErrors([tab]);
  console.log(`subscribe("*") with alice's grants: got ${got.got.join(",")}`);
} finally {
  await browser.close();
  await herald.stop();
}
