// The console when its token runs out and nothing refreshes it: herald
// warns (`auth-expiring`), and the console says when the session ends;
// at `exp` the stream ends, herald.js's reconnect is refused 401 and it
// gives up (`onClosed`); the console then says the session expired and to
// sign in again, not merely "closed".
//
// env: HERALD_URL (herald with tokens, no leeway, a short
// --token-expiry-warning), JWT_SECRET (its HS256 secret: the script mints
// alice's token, reading `user:{sub}:*`, just before it opens the console,
// so its few seconds start then).

import assert from "node:assert/strict";
import { artifactPath, env, hs256Token, launchChromium, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const inbox = "user:alice:inbox";
const LIFE_S = 5;

const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const token = hs256Token(env("JWT_SECRET"), {
    sub: "alice",
    exp: Math.floor(Date.now() / 1000) + LIFE_S,
    herald: { subscribe: ["user:{sub}:*"], publish: [] },
  });
  await context.addCookies([{ name: "herald_token", value: token, url: base, httpOnly: true, sameSite: "Lax" }]);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  await page.goto(`${base}/#topic=${encodeURIComponent(inbox)}`);
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });

  // The warning: when the session ends, while the stream is still live.
  await page.waitForFunction(
    () => document.getElementById("sub-result").textContent.startsWith("Your session expires at "),
    null,
    { timeout: WAIT_MS },
  );
  assert.equal(await page.getAttribute("#state", "data-state"), "live");

  // The end: refused on reconnect, and said so.
  await page.waitForSelector('#state[data-state="expired"]', { timeout: WAIT_MS });
  assert.equal(await page.textContent("#state"), "session expired");
  assert.equal(await page.textContent("#sub-result"), "Your session expired; sign in again.");
  assert.equal(await page.getAttribute("#sub-result", "class"), "result bad");
  assert.equal(await page.isDisabled("#connect"), false, "Subscribe can be tried again");
  assert.equal(await page.isDisabled("#disconnect"), true);
  await page.screenshot({ path: artifactPath("console-expired.png"), fullPage: true });

  assert.deepEqual(errors, []);
  console.log("the console said: Your session expired; sign in again.");
} finally {
  await browser.close();
}
