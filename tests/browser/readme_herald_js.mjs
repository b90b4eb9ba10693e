// The README's herald.js snippet ("Clients", "Browsers: herald.js"), as
// written, in Chromium: the Rust wrapper passes it in $SNIPPET with the test
// herald's address in place of https://herald.example.com. The page defines
// what the snippet leaves to the app (render, badge, …) and records calls.

import { env, launchChromium, publish, waitFor, watchdog } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const snippet = env("SNIPPET");
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${base}/healthz`);
  await page.evaluate(() => {
    window.calls = { render: [], badge: [], refetchEverything: [], signIn: [], leave: null };
    window.render = (event) => window.calls.render.push(event);
    window.badge = (status) => window.calls.badge.push(status);
    window.refetchEverything = (info) => window.calls.refetchEverything.push(info);
    window.signIn = (reason) => window.calls.signIn.push(reason);
    window.onViewChange = (leave) => (window.calls.leave = leave);
  });
  await page.addScriptTag({ type: "module", content: snippet });
  await waitFor("the snippet's stream to be live", () =>
    page.evaluate(() => window.calls.badge.includes("live")));
  if (errors.length) throw new Error(`the snippet threw: ${errors.join("; ")}`);

  const stored = await publish(base, {
    topic: "incident:inc-123",
    type: "incident.updated",
    data: { status: "resolved" },
  });
  await publish(base, { topic: "incident:inc-456", type: "incident.updated", data: {} });
  const last = await publish(base, { topic: "incident:inc-123", type: "incident.updated", data: {} });
  const rendered = await waitFor("render() to get both inc-123 events", async () => {
    const got = await page.evaluate(() => window.calls.render);
    return got.length >= 2 && got;
  });
  const ids = rendered.map((e) => e.id);
  if (ids.join() !== [stored.id, last.id].join()) {
    throw new Error(`render() got ${ids}, expected ${stored.id},${last.id} (inc-123 only, in order)`);
  }
  if (rendered[0].data.status !== "resolved" || rendered[0].type !== "incident.updated") {
    throw new Error(`render() got ${JSON.stringify(rendered[0])}, not the envelope`);
  }
  // The view changes: the hook the snippet registered unsubscribes.
  await page.evaluate(() => window.calls.leave());
  const calls = await page.evaluate(() => window.calls);
  if (calls.signIn.length || calls.refetchEverything.length) {
    throw new Error(`unexpected calls: ${JSON.stringify(calls)}`);
  }
  if (errors.length) throw new Error(`the page threw: ${errors.join("; ")}`);
  console.log(`README herald.js snippet: render() got ${ids}; status ${calls.badge.join(" → ")}`);
} finally {
  await browser.close();
}
