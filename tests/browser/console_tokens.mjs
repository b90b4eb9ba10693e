// The console at `/` with herald requiring tokens, its token in the
// `herald_token` cookie (same origin, so herald.js's EventSource and the
// console's fetch send it). With a cookie that grants reading `user:alice:*` and no
// publishing, the console reads alice's inbox live, and says in words why
// it may not read bob's topics or publish, with herald's reason. Without
// a cookie it says a token is needed.
//
// env: HERALD_URL (herald with tokens), ALICE_TOKEN (subscribe
// `user:{sub}:*`, publish nothing), BACKEND_TOKEN (publish `*`).

import assert from "node:assert/strict";
import { artifactPath, env, launchChromium, publish, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const alice = env("ALICE_TOKEN");
const backend = { Authorization: `Bearer ${env("BACKEND_TOKEN")}` };
const inbox = "user:alice:inbox";

// herald's own reason for a refusal, read directly with the same cookie.
async function detail(path, cookie, init = {}) {
  const headers = { ...(init.headers ?? {}), ...(cookie ? { Cookie: `herald_token=${cookie}` } : {}) };
  const res = await fetch(`${base}${path}`, { ...init, headers });
  assert.equal(res.headers.get("content-type"), "application/problem+json", `${path}: ${res.status}`);
  return { status: res.status, detail: (await res.json()).detail };
}
const stream = (topic) => `/v1/stream?topic=${encodeURIComponent(topic)}&message_events=true`;
const post = (topic) => ({
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ topic, data: { text: "hello from the console" } }),
});

async function publishFromConsole(page, topic) {
  if (!(await page.isVisible("#pub-send"))) await page.click("#publish-panel summary");
  await page.fill("#pub-topic", topic);
  await page.click("#pub-send");
  await page.waitForFunction(() => document.getElementById("pub-result").textContent !== "", null, { timeout: WAIT_MS });
  return page.textContent("#pub-result");
}

const browser = await launchChromium();
try {
  // Signed in as alice: the cookie a sign-in would set.
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  await context.addCookies([{ name: "herald_token", value: alice, url: base, httpOnly: true, sameSite: "Lax" }]);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  // Her inbox, live.
  await page.goto(`${base}/#topic=${encodeURIComponent(inbox)}`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  const stored = await publish(base, { topic: inbox, data: { text: "for alice" } }, backend);
  await page.waitForSelector(`li.event[data-id="${stored.id}"]`, { timeout: WAIT_MS });

  // Bob's topics: 403, in words.
  const bob = "user:bob:*";
  const forbidden = await detail(stream(bob), alice);
  assert.equal(forbidden.status, 403);
  // Asked on the open stream, the switch is refused and the stream goes on
  // with alice's topics.
  await page.fill("#topics", bob);
  await page.click("#connect");
  await page.waitForFunction(() => document.getElementById("sub-result").textContent !== "", null, {
    timeout: WAIT_MS,
  });
  assert.equal(await page.textContent("#sub-result"), `Not allowed to read ${bob}: ${forbidden.detail}`);
  assert.equal(await page.getAttribute("#sub-result", "class"), "result bad");
  assert.equal(await page.getAttribute("#state", "data-state"), "live", "the stream goes on");
  assert.equal(await page.inputValue("#topics"), inbox, "with the topics it had");
  assert.equal(await page.isDisabled("#connect"), false, "Subscribe can be tried again");
  // A new page asking for them from the start is refused, in words.
  const fresh = await context.newPage();
  fresh.on("pageerror", (e) => errors.push(e.message));
  await fresh.goto(`${base}/#topic=${encodeURIComponent(bob)}`);
  await fresh.waitForSelector('#state[data-state="refused"]', { timeout: WAIT_MS });
  assert.equal(await fresh.textContent("#sub-result"), `Not allowed to read ${bob}: ${forbidden.detail}`);
  await fresh.close();

  // Publishing: her token grants none.
  const cannotPublish = await detail("/v1/events", alice, post(inbox));
  assert.equal(cannotPublish.status, 403);
  assert.equal(await publishFromConsole(page, inbox), `Not allowed to publish to ${inbox}: ${cannotPublish.detail}`);
  assert.equal(await page.getAttribute("#pub-result", "class"), "result bad");
  await page.screenshot({ path: artifactPath("console-forbidden.png"), fullPage: true });

  // No cookie at all: a token is needed, with herald's 401 reason.
  const anonymous = await browser.newContext();
  const signedOut = await anonymous.newPage();
  signedOut.on("pageerror", (e) => errors.push(e.message));
  const missing = await detail(stream(inbox), null);
  assert.equal(missing.status, 401);
  await signedOut.goto(`${base}/#topic=${encodeURIComponent(inbox)}`);
  await signedOut.waitForSelector('#state[data-state="refused"]', { timeout: WAIT_MS });
  assert.equal(await signedOut.textContent("#sub-result"), `Sign in to read ${inbox}: ${missing.detail}`);
  const missingToPublish = await detail("/v1/events", null, post(inbox));
  assert.equal(missingToPublish.status, 401);
  assert.equal(await publishFromConsole(signedOut, inbox), `Sign in to publish to ${inbox}: ${missingToPublish.detail}`);
  await signedOut.screenshot({ path: artifactPath("console-signed-out.png"), fullPage: true });

  assert.deepEqual(errors, []);
  console.log(`alice read ${inbox} (event ${stored.id}); refused: ${bob} ${forbidden.status}, publish ${cannotPublish.status}; no cookie: ${missing.status}`);
} finally {
  await browser.close();
}
