// examples/browser.html opened as a local file (file://, origin `null`) in
// a real Chromium: herald never accepts that origin, so the page must not
// try to subscribe; it says how to serve it over HTTP instead.
//
// env: HERALD_URL (a running herald), PAGE_FILE (examples/browser.html).

import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import { env, launchChromium, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const topic = "incident:*";

const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const requests = [];
  page.on("request", (r) => {
    if (!r.url().startsWith("file:")) requests.push(r.url());
  });
  const url = pathToFileURL(env("PAGE_FILE"));
  url.search = new URLSearchParams({ herald: base, topic }).toString();
  await page.goto(url.href);
  assert.equal(await page.evaluate(() => self.origin), "null", "a file's origin is null");

  await page.waitForSelector("#serve-me", { state: "visible", timeout: WAIT_MS });
  assert.equal(await page.$eval("#state", (o) => o.value), "not served over HTTP");
  const message = (await page.textContent("#serve-me")).replace(/\s+/g, " ");
  assert.match(message, /opened as a file, so its origin is null, and herald does not accept that origin/);
  assert.match(message, /in the examples directory, run python3 -m http\.server 8000 --bind 127\.0\.0\.1/);
  assert.match(message, /start herald with --cors-origins http:\/\/127\.0\.0\.1:8000/);
  // The link keeps this page's own herald and topic.
  const served = new URL(await page.getAttribute("#served", "href"));
  assert.equal(`${served.origin}${served.pathname}`, "http://127.0.0.1:8000/browser.html");
  assert.deepEqual(Object.fromEntries(served.searchParams), { herald: base, topic });
  assert.equal(
    await page.textContent("#served"),
    `http://127.0.0.1:8000/browser.html?herald=${base}&topic=${topic}`,
    "the link reads as typed",
  );

  assert.deepEqual(requests, [], "no request to herald from a file page");
  assert.deepEqual(errors, []);
  console.log(`examples/browser.html as a file says: ${message.trim()}`);
} finally {
  await browser.close();
}
