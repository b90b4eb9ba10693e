// The console at `/` in a real Chromium: it subscribes from the page URL's
// `#topic=…`, says "connecting" until the stream's `open` event and "live"
// only after it, shows published events newest first with their id, type,
// topic and pretty-printed data, renders data as text (never HTML), and
// saves a screenshot in each theme.
//
// env: HERALD_URL (a running herald).

import assert from "node:assert/strict";
import { artifactPath, env, launchChromium, publish, uniqueTopic, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const topic = uniqueTopic("console");
const other = uniqueTopic("elsewhere");
const events = [
  { topic, type: "incident.opened", data: { title: "Checkout is slow", severity: 2, tags: ["payments", "eu"] } },
  { topic, type: "incident.updated", data: { status: "investigating", note: "<img src=x onerror=alert(1)>" } },
  { topic, data: "résolu ✓" },
];

const browser = await launchChromium();
try {
  const context = await browser.newContext({ colorScheme: "dark", viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // Every request the page makes must succeed, except the favicon, which
  // herald does not serve (browsers ask for it on their own).
  page.on("response", (r) => {
    if (r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico") {
      problems.push(`${r.status()} for ${r.url()}`);
    }
  });

  // Every state the page shows, and the stream's `open` event among them.
  await page.addInitScript(() => {
    window.seen = [];
    const Native = window.EventSource;
    window.EventSource = class extends Native {
      constructor(...args) {
        super(...args);
        this.addEventListener("open", () => window.seen.push("(open)"));
      }
    };
    new MutationObserver(() => {
      const state = document.getElementById("state");
      const shown = state && `${state.dataset.state}: ${state.textContent}`;
      if (shown && window.seen.at(-1) !== shown) window.seen.push(shown);
    }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  // Hold the stream request until the page has been seen waiting for it.
  let answer;
  const held = new Promise((resolve) => (answer = resolve));
  await page.route("**/v1/stream?*", async (route) => {
    await held;
    await route.continue();
  });
  await page.goto(`${base}/#topic=${encodeURIComponent(topic)}`);
  await page.waitForFunction(() => window.seen.includes("connecting: connecting…"), null, { timeout: WAIT_MS });
  assert.equal(await page.textContent("#state"), "connecting…", "no answer yet: connecting");
  answer();
  await page.waitForSelector('#state[data-state="live"]', { timeout: WAIT_MS });
  await page.unroute("**/v1/stream?*");
  assert.deepEqual(
    await page.evaluate(() => window.seen),
    ["idle: not connected", "connecting: connecting…", "(open)", "live: live"],
    "connecting until the stream opens, live after",
  );
  assert.equal(await page.inputValue("#topics"), topic, "topics come from the URL hash");

  // An event on another topic must not show up.
  await publish(base, { topic: other, data: 0 });
  const stored = [];
  for (const e of events) stored.push(await publish(base, e));
  await page.waitForFunction((n) => document.querySelectorAll("li.event[data-id]").length >= n, events.length, {
    timeout: WAIT_MS,
  });

  const rows = await page.$$eval("li.event[data-id]", (items) =>
    items.map((li) => ({
      id: li.dataset.id,
      idText: li.querySelector(".id").textContent,
      type: li.querySelector(".type").textContent,
      topic: li.querySelector(".topic").textContent,
      data: li.querySelector("pre.data").textContent,
      dateTime: li.querySelector("time").dateTime,
    })),
  );
  const expected = stored
    .map((s) => ({
      id: s.id,
      idText: `#${s.id}`,
      type: s.type,
      topic,
      data: JSON.stringify(s.data, null, 2),
      dateTime: s.time,
    }))
    .reverse(); // newest first
  assert.deepEqual(rows, expected);
  assert.deepEqual(
    stored.map((s) => s.type),
    ["incident.opened", "incident.updated", "message"],
  );
  assert.equal(await page.getAttribute("#state", "data-state"), "live");
  assert.equal(await page.textContent("#count"), "3 events");
  assert.equal(await page.$("li.event img"), null, "data is rendered as text, not HTML");

  // The page names its own subscription so it can be bookmarked.
  assert.equal(new URL(page.url()).hash, `#topic=${encodeURIComponent(topic)}`);

  await page.screenshot({ path: artifactPath("console-dark.png"), fullPage: true });
  await page.click("#theme");
  assert.equal(await page.getAttribute("html", "data-theme"), "light");
  await page.screenshot({ path: artifactPath("console-light.png"), fullPage: true });

  assert.deepEqual(problems, []);
  console.log(`console showed ids ${rows.map((r) => r.id).join(", ")}; screenshots saved`);
} finally {
  await browser.close();
}
