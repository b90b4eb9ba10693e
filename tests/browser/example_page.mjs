// examples/browser.html in a real Chromium, served from another origin that
// herald lists in --cors-origins: it goes live and shows published events.
//
// env: HERALD_URL (herald), PAGE_URL (examples/browser.html on a listed origin).

import assert from "node:assert/strict";
import { env, launchChromium, publish, uniqueTopic, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const topic = uniqueTopic("example");

const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const url = new URL(env("PAGE_URL"));
  url.search = new URLSearchParams({ herald: base, topic: `${topic.split(":")[0]}:*` }).toString();
  await page.goto(url.href);
  await page.waitForFunction(() => document.getElementById("state").value === "live", null, { timeout: WAIT_MS });

  const stored = [
    await publish(base, { topic, type: "incident.updated", data: { status: "investigating" } }),
    await publish(base, { topic, data: "<b>plain text</b>" }),
  ];
  await page.waitForFunction(() => document.querySelectorAll("#events li").length === 2, null, { timeout: WAIT_MS });

  const shown = await page.$$eval("#events li", (items) => items.map((li) => li.textContent));
  assert.deepEqual(
    shown,
    stored.map((e) => `#${e.id} ${e.topic} ${e.type} ${JSON.stringify(e.data)}`).reverse(),
  );
  assert.equal(await page.$("#events b"), null, "data shown as text");
  assert.deepEqual(errors, []);
  console.log(`examples/browser.html showed: ${shown.join(" | ")}`);
} finally {
  await browser.close();
}
