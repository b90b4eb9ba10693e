// herald.js with `getToken` reads its stream with fetch and `Authorization:
// Bearer`. Tokens live 3 s; herald warns a second before `exp` and ends the
// stream at `exp`. Through three expiries, two tabs of one browser (the
// leader asks `getToken` for a fresh token each time) keep one logical
// stream: every connection in herald's registry has the same handle. No
// handler misses an event or gets one twice, and no token ever appears in
// a request URL (nor `access_token`) or in herald's log. A browser whose
// getToken gives a refused token gets onClosed("unauthorized") once in
// each tab, and no retry.
//
// The script runs herald itself, to read its log.
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import {
  assertNoPageErrors, openTab, record, throughExpiries, TOKEN_FLAGS, userToken,
} from "./heraldjs_lib.mjs";

const EXPIRIES = 3;
const TOKEN_LIFE = 3;

watchdog(100_000);
const database = env("DATABASE_URL");
const p = uniqueTopic("fetch");
const topics = [`${p}:inbox`, `${p}:alerts`];

// Every log line herald has (request spans included), to look for tokens.
const herald = await Herald.start({ database, flags: TOKEN_FLAGS, rustLog: "debug,sqlx=warn" });
const base = herald.base;
const browser = await launchChromium();
try {
  const context = await browser.newContext();
  const minted = [];
  await context.exposeFunction("mintToken", () => {
    const token = userToken("alice", [`${p}:*`], TOKEN_LIFE);
    minted.push(token);
    return token;
  });
  const { tabs, checked, records, connections } = await throughExpiries({
    context, base, options: { getToken: true }, topics, prefix: p, expiries: EXPIRIES, life: TOKEN_LIFE,
  });
  assert.ok(connections.every((r) => r.subject === "alice"));
  const asked = records.reduce((n, r) => n + r.tokens, 0);
  assert.ok(asked > EXPIRIES, `getToken asked ${asked} times`);
  assert.ok(records.every((r) => r.closed.length === 0), "never closed");

  // No token in any URL the pages requested, nor in herald's log.
  const urls = tabs.flatMap((t) => t.requests);
  for (const url of urls) {
    assert.ok(!/access_token|token=/i.test(url), `a token parameter in ${url}`);
    for (const token of minted) assert.ok(!url.includes(token.split(".")[2]), `a token in ${url}`);
  }
  // herald logs a refusal, with its request's span: here of a token the
  // page had, now expired.
  const refused = await fetch(`${base}/v1/events?after=0&topic=${encodeURIComponent(topics[0])}`, {
    headers: { Authorization: `Bearer ${minted[0]}` },
  });
  assert.equal(refused.status, 401, "an expired token is refused");
  await waitFor("the refusal in herald's log", () => herald.logs.some((l) => l.includes("request refused")));
  const logs = herald.logs.join("\n");
  for (const token of minted) {
    assert.ok(!logs.includes(token.split(".")[2]), "a token's signature in herald's log");
    assert.ok(!logs.includes(token.split(".")[1]), "a token's claims in herald's log");
  }
  assertNoPageErrors(tabs);

  // A browser whose getToken gives a token herald refuses (expired): the
  // stream's 401 reaches onClosed once, in each tab, and nothing retries.
  const refusedContext = await browser.newContext();
  await refusedContext.exposeFunction("mintToken", () => userToken("alice", [`${p}:*`], -60));
  // Both tabs before either subscribes (a tab opened after the refusal
  // would be a new start, and try once itself).
  const lapsed = [];
  for (const name of ["refused first", "refused second"]) {
    lapsed.push(await openTab(refusedContext, base, name, { getToken: true }));
  }
  for (const tab of lapsed) await tab.page.evaluate((topic) => herald.subscribe(topic, () => {}), topics[0]);
  await waitFor("onClosed in every refused tab", async () =>
    (await Promise.all(lapsed.map(record))).every((r) => r.closed.length > 0));
  const requests = lapsed.map((t) => t.streamRequests);
  // The one wait on time here: it asserts that nothing more happens (no
  // retry, no second onClosed), for well over herald's 200 ms retry.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  for (const [i, r] of (await Promise.all(lapsed.map(record))).entries()) {
    assert.deepEqual(r.closed.map((c) => c.reason), ["unauthorized"], `${lapsed[i].name}: onClosed once`);
    assert.equal(r.status, "closed", `${lapsed[i].name}: status`);
  }
  assert.deepEqual(lapsed.map((t) => t.streamRequests), requests, "no stream request after the 401");
  assert.equal(requests.reduce((a, b) => a + b), 1, "one stream request, refused, from the whole browser");
  assertNoPageErrors(lapsed);
  console.log(
    `one stream ${connections[0].handle}, ${connections.length} connections ended ` +
      `${connections.map((r) => r.end_reason).join(", ")}; getToken asked ${asked} times, ` +
      `${minted.length} tokens minted; ${checked} deliveries checked; ${urls.length} request URLs and ` +
      `${herald.logs.length} log lines free of tokens; expiring warnings ${records.map((r) => r.expiring.length)}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
