// A browser's own EventSource handles the `reset` frame: opened with a
// cursor ahead of the log (`last_event_id=999999`), it receives one `reset`
// event (reason `cursor_ahead`, with data, so the browser dispatches it),
// takes its id as the new Last-Event-ID, stays open, and then receives
// newly published events.
//
// env: HERALD_URL (a running herald).

import assert from "node:assert/strict";
import { env, launchChromium, publish, uniqueTopic, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const topic = uniqueTopic("reset");

// Runs in the page (herald's origin).
async function resetThenLive({ topic, waitMs }) {
  const within = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), waitMs)),
    ]);
  const seen = [];
  const es = new EventSource(`/v1/stream?topic=${encodeURIComponent(topic)}&last_event_id=999999`);
  es.onopen = () => seen.push("open");
  es.onerror = () => seen.push(`error (readyState ${es.readyState})`);
  try {
    const reset = await within(
      new Promise((resolve) =>
        es.addEventListener("reset", (e) => {
          seen.push("reset");
          resolve({ data: JSON.parse(e.data), lastEventId: e.lastEventId });
        }),
      ),
      "the reset event",
    );
    const next = new Promise((resolve) =>
      es.addEventListener("after.reset", (e) => {
        seen.push("after.reset");
        resolve({ data: JSON.parse(e.data), lastEventId: e.lastEventId });
      }),
    );
    const res = await fetch("/v1/events", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ topic, type: "after.reset", data: "fresh" }),
    });
    const stored = await res.json();
    const event = await within(next, "an event after the reset");
    return { reset, stored, event, seen, readyState: es.readyState };
  } finally {
    es.close();
  }
}

const browser = await launchChromium();
try {
  const earlier = await publish(base, { topic, data: "before" });
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  const got = await page.evaluate(resetThenLive, { topic, waitMs: WAIT_MS });

  assert.equal(got.reset.data.reason, "cursor_ahead");
  assert.equal(got.reset.data.last_event_id, "999999");
  assert.equal(got.reset.data.oldest_id, "1");
  const head = Number(got.reset.data.continue_from);
  assert.ok(head >= Number(earlier.id) && head < Number(got.stored.id), `continue_from ${head}`);
  assert.equal(got.reset.lastEventId, got.reset.data.continue_from, "the reset's id becomes Last-Event-ID");
  assert.deepEqual(got.event.data, got.stored);
  assert.equal(got.event.lastEventId, got.stored.id);
  assert.deepEqual(got.seen, ["open", "reset", "after.reset"], "no error, reset first, then the live event");
  assert.equal(got.readyState, 1, "still OPEN");
  console.log(`reset ${JSON.stringify(got.reset.data)}, then event ${got.stored.id}`);
} finally {
  await browser.close();
}
