// A page that refreshes its cookie when herald warns keeps one logical
// stream across token expiries. The page (served by the Rust test, on
// another port of the same host, so the cookie it sets goes to herald too)
// runs the README's "Browsers and tokens" snippet as written; a recorder
// installed before it counts what its EventSource does.
//
// The script says on standard output when the stream first opens
// ("subscribed") and when it has come back after three expiries
// ("reconnected 3 times"); the Rust test publishes meanwhile and then one
// last event with `{"done": true}`. The script checks the stream never
// gave up and prints what the page received: `RESULT {json}`.
//
// env: PAGE_URL (the test page).

import assert from "node:assert/strict";
import { env, launchChromium, waitFor, watchdog } from "./lib.mjs";

const EXPIRIES = 3;

watchdog();
const pageUrl = env("PAGE_URL");

const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(pageUrl);
  const seen = () => page.evaluate(() => window.seen);

  await waitFor("the stream to open", async () => (await seen()).opens >= 1);
  console.log("subscribed");

  // Each expiry: a warning, the stream's end, a reconnect. Counted by
  // distinct `expires_at`: each refreshed cookie holds a token of its own,
  // and a page that did not refresh would be warned of the same one again.
  await waitFor(
    `${EXPIRIES} expiries and reconnects`,
    async () => {
      const s = await seen();
      const tokens = new Set(s.expiring.map((w) => w.expires_at));
      return tokens.size >= EXPIRIES && s.opens >= EXPIRIES + 1;
    },
    30_000,
  );
  console.log(`reconnected ${EXPIRIES} times`);

  await waitFor("the last event", async () => (await seen()).done);
  const s = await seen();
  assert.deepEqual(errors, [], "no script error on the page");
  assert.equal(s.signIns, 0, "the page never had to sign in again");
  assert.ok(
    s.errors.every((state) => state === 0),
    `every error was a reconnect (CONNECTING), never a refusal (CLOSED): ${s.errors}`,
  );
  assert.equal(await page.evaluate(() => window.source.readyState), 1, "the EventSource is open at the end");
  for (const warning of s.expiring) {
    assert.equal(warning.reason, "token_expiring");
    assert.ok(!Number.isNaN(Date.parse(warning.expires_at)), `expires_at is a time: ${warning.expires_at}`);
  }
  console.log(`RESULT ${JSON.stringify(s)}`);
} finally {
  await browser.close();
}
