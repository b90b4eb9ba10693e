// The WHATWG-compliant `eventsource` package (v4, Node 20) against herald:
// events arrive with `lastEventId` set; when the connection is cut it
// reconnects by itself after the server's `retry:` hint, sends
// `Last-Event-ID`, and gets the events published while it was away, each
// exactly once.
//
// The client reaches herald through a small TCP proxy in this script that
// can cut every connection and refuse new ones, as a network outage would;
// the proxy also shows the request headers the client sent.
//
// env: HERALD_URL (a running herald).

import assert from "node:assert/strict";
import net from "node:net";
import { EventSource } from "eventsource";
import { env, publish, uniqueTopic, waitFor, watchdog } from "./lib.mjs";

watchdog();
const base = env("HERALD_URL");
const topic = uniqueTopic("node-es");

/// Forwards to herald; `cut()` closes every connection and refuses new ones
/// until `restore()`. `requests` holds the head of each request it passed on.
class Proxy {
  constructor(target) {
    this.target = new URL(target);
    this.sockets = new Set();
    this.requests = [];
    this.refused = 0;
    this.isCut = false;
    this.server = net.createServer((client) => this.#accept(client));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  #accept(client) {
    if (this.isCut) {
      this.refused += 1;
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(this.target.port), this.target.hostname);
    this.sockets.add(client).add(upstream);
    let head = "";
    client.on("data", (chunk) => {
      if (!head.includes("\r\n\r\n")) {
        head += chunk.toString("latin1");
        if (head.includes("\r\n\r\n")) this.requests.push(parseHead(head));
      }
    });
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
  }

  cut() {
    this.isCut = true;
    for (const socket of this.sockets) socket.destroy();
  }

  restore() {
    this.isCut = false;
  }

  close() {
    this.cut();
    this.server.close();
  }
}

function parseHead(head) {
  const [requestLine, ...lines] = head.split("\r\n\r\n")[0].split("\r\n");
  const headers = {};
  for (const line of lines) {
    const i = line.indexOf(":");
    headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return { requestLine, headers };
}

const proxy = new Proxy(base);
const via = await proxy.listen();
const es = new EventSource(`${via}/v1/stream?topic=${encodeURIComponent(topic)}`);
const received = [];
const errors = [];
let opens = 0;
es.addEventListener("open", () => (opens += 1));
es.addEventListener("error", (e) => errors.push(e.message ?? "error"));
for (const type of ["job.started", "job.progress", "job.done"]) {
  es.addEventListener(type, (e) => received.push({ type: e.type, lastEventId: e.lastEventId, envelope: JSON.parse(e.data) }));
}

try {
  await waitFor("the first open", () => opens === 1);
  const first = [];
  for (const [type, data] of [["job.started", { job: 7 }], ["job.progress", 50], ["job.progress", 80]]) {
    first.push(await publish(base, { topic, type, data }));
  }
  await waitFor("the first three events", () => received.length === 3);

  // The network goes away; events are published meanwhile.
  proxy.cut();
  await waitFor("the client to notice", () => errors.length >= 1 && es.readyState === EventSource.CONNECTING);
  const missed = [];
  for (const [type, data] of [["job.progress", 90], ["job.progress", 99], ["job.done", { ok: true }]]) {
    missed.push(await publish(base, { topic, type, data }));
  }
  // It keeps trying while refused (a network error is retried, not fatal).
  await waitFor("refused reconnect attempts", () => proxy.refused >= 2);
  assert.equal(es.readyState, EventSource.CONNECTING);

  proxy.restore();
  await waitFor("the reconnect", () => opens === 2);
  await waitFor("the missed events", () => received.length === 6);
  const live = await publish(base, { topic, type: "job.done", data: "again" });
  await waitFor("a live event after the reconnect", () => received.length === 7);

  const stored = [...first, ...missed, live];
  assert.deepEqual(
    received.map((r) => r.envelope),
    stored,
    "every event exactly once, in order",
  );
  assert.deepEqual(
    received.map((r) => r.lastEventId),
    stored.map((s) => s.id),
    "lastEventId is each event's id",
  );
  assert.deepEqual(
    received.map((r) => r.type),
    stored.map((s) => s.type),
  );

  const streams = proxy.requests.filter((r) => r.requestLine.startsWith("GET /v1/stream"));
  assert.equal(streams.length, 2, "one connection, one reconnect");
  assert.equal(streams[0].headers["last-event-id"], undefined);
  assert.equal(streams[1].headers["last-event-id"], first.at(-1).id, "the reconnect sent Last-Event-ID");
  assert.equal(streams[1].headers.accept, "text/event-stream");
  console.log(
    `received ids ${received.map((r) => r.lastEventId).join(", ")}; reconnect sent Last-Event-ID ` +
      `${streams[1].headers["last-event-id"]} after ${proxy.refused} refused attempts`,
  );
} finally {
  es.close();
  proxy.close();
}
