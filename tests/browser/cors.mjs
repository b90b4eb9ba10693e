// A page on another origin, in a real Chromium: listed in herald's
// `--cors-origins`, it subscribes with `EventSource(url, {withCredentials:
// true})` and publishes with `fetch(…, {credentials: "include"})`, cookies
// included, and receives its event. A page on an origin that is not listed
// gets nothing: its EventSource fails for good and its fetch rejects, and
// nothing it sent is stored.
//
// env: HERALD_URL (herald, e.g. http://127.0.0.1:P), ALLOWED_PAGE (a blank
// page on a listed origin), OTHER_PAGE (a blank page on an unlisted origin).

import assert from "node:assert/strict";
import { env, launchChromium, uniqueTopic, waitFor, watchdog, WAIT_MS } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const allowedPage = env("ALLOWED_PAGE");
const otherPage = env("OTHER_PAGE");
const topic = uniqueTopic("cors");

// Runs in the page: subscribe with credentials, publish with credentials,
// and return what arrived.
async function subscribeAndPublish({ base, topic, waitMs }) {
  const within = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), waitMs)),
    ]);
  const es = new EventSource(`${base}/v1/stream?topic=${encodeURIComponent(topic)}`, { withCredentials: true });
  try {
    await within(
      new Promise((resolve, reject) => {
        es.onopen = resolve;
        es.onerror = () => reject(new Error(`EventSource failed (readyState ${es.readyState})`));
      }),
      "EventSource open",
    );
    const arrived = new Promise((resolve) =>
      es.addEventListener("cors.checked", (e) => resolve({ data: JSON.parse(e.data), lastEventId: e.lastEventId, origin: e.origin })),
    );
    const res = await fetch(`${base}/v1/events`, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json", "Idempotency-Key": `cors-${topic}` },
      body: JSON.stringify({ topic, type: "cors.checked", data: { from: location.origin } }),
    });
    const stored = await res.json();
    return { status: res.status, stored, event: await within(arrived, "the event on the stream") };
  } finally {
    es.close();
  }
}

// Runs in the page: the same from an origin herald does not list.
async function tryFromElsewhere({ base, topic, waitMs }) {
  const es = new EventSource(`${base}/v1/stream?topic=${encodeURIComponent(topic)}`, { withCredentials: true });
  const subscribe = await Promise.race([
    new Promise((resolve) => {
      es.onopen = () => resolve("open");
      es.onerror = () => resolve(es.readyState === EventSource.CLOSED ? "closed" : "retrying");
    }),
    new Promise((resolve) => setTimeout(() => resolve("no answer"), waitMs)),
  ]);
  es.close();
  const attempt = async (init) => {
    try {
      const res = await fetch(`${base}/v1/events${init.method === "GET" ? `?topic=${topic}` : ""}`, init);
      return `answered ${res.status}`;
    } catch (e) {
      return e.name;
    }
  };
  const publish = await attempt({
    method: "POST",
    credentials: "include",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ topic, type: "cors.forged", data: { from: location.origin } }),
  });
  const read = await attempt({ method: "GET", credentials: "include" });
  return { subscribe, publish, read };
}

const browser = await launchChromium();
try {
  const context = await browser.newContext();
  // A cookie for herald's origin: "with credentials" means the browser sends it.
  await context.addCookies([{ name: "herald_session", value: "s3cr3t", url: base }]);
  const page = await context.newPage();
  // Every request the page makes to herald, with the headers it sent
  // (filled in as the browser reports them).
  const toHerald = [];
  page.on("request", async (r) => {
    if (!r.url().startsWith(base)) return;
    const entry = { method: r.method(), path: new URL(r.url()).pathname, headers: undefined };
    toHerald.push(entry);
    entry.headers = await r.allHeaders();
  });

  // From the listed origin.
  await page.goto(allowedPage);
  const allowedOrigin = new URL(allowedPage).origin;
  const got = await page.evaluate(subscribeAndPublish, { base, topic, waitMs: WAIT_MS });
  assert.equal(got.status, 201, JSON.stringify(got.stored));
  assert.equal(got.stored.topic, topic);
  assert.deepEqual(got.event.data, got.stored, "the stream carried the stored envelope");
  assert.equal(got.event.lastEventId, got.stored.id);
  assert.equal(got.event.origin, new URL(base).origin);
  assert.deepEqual(got.stored.data, { from: allowedOrigin });
  await waitFor("request headers", () => toHerald.every((r) => r.headers));
  const sent = toHerald.filter((r) => r.method !== "OPTIONS");
  for (const path of ["/v1/stream", "/v1/events"]) {
    const req = sent.find((r) => r.path === path);
    assert.ok(req, `the page requested ${path}`);
    assert.equal(req.headers.origin, allowedOrigin, `${path} Origin`);
    assert.match(req.headers.cookie ?? "", /herald_session=s3cr3t/, `${path} sent the cookie`);
  }

  // From an origin herald does not list.
  const page2 = await context.newPage();
  await page2.goto(otherPage);
  const refused = await page2.evaluate(tryFromElsewhere, { base, topic, waitMs: WAIT_MS });
  assert.deepEqual(refused, { subscribe: "closed", publish: "TypeError", read: "TypeError" });

  // Herald stored only the event from the listed origin: the forged publish
  // never got past its preflight.
  const history = await (await fetch(`${base}/v1/events?topic=${topic}`)).json();
  assert.deepEqual(history, [got.stored]);
  // And the listed origin is still served after that.
  const again = await page.evaluate(subscribeAndPublish, { base, topic: `${topic}-2`, waitMs: WAIT_MS });
  assert.equal(again.status, 201);

  console.log(`${allowedOrigin} subscribed and published (event ${got.stored.id}); ${new URL(otherPage).origin} refused: ${JSON.stringify(refused)}`);
} finally {
  await browser.close();
}
