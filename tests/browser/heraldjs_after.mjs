// `subscribe(filter, handler, { after })` across a topic change: a tab
// follows topic A; events on topic B pile up in the log; then it adds B
// with `after: X` while both topics are busy. B's handler gets B's events
// after X from history up to its effective_at, then the live ones: with no
// gap and no duplicate at the seam, exactly what `GET
// /v1/events?after=X&topic=B` lists. A second tab of the same browser (a
// follower) then adds B, already on the stream, with an `after` of its
// own, and gets the same guarantee.
//
// The script runs herald itself: its /metrics count this herald's streams
// only (an in-process herald shares its recorder with every test).
//
// env: HERALD_BIN (the binary), DATABASE_URL (a fresh database).

import assert from "node:assert/strict";
import { env, Herald, launchChromium, publish, uniqueTopic, waitFor, watchdog } from "./lib.mjs";
import { assertNoPageErrors, checkTabs, leaders, Load, openTab, readLog, subscribe } from "./heraldjs_lib.mjs";

watchdog();
const herald = await Herald.start({ database: env("DATABASE_URL") });
const base = herald.base;
const p = uniqueTopic("after");
const [a, b] = [`${p}:a`, `${p}:b`];

const browser = await launchChromium();
try {
  // Thirty events before any tab: B's fifth is X.
  const early = [];
  for (let n = 0; n < 30; n += 1) early.push(await publish(base, { topic: n % 2 ? b : a, data: { n } }));
  const x = String(early.filter((e) => e.topic === b)[4].id);

  const context = await browser.newContext();
  const first = await openTab(context, base, "first");
  const second = await openTab(context, base, "second");
  await subscribe(first, "a", a);
  await subscribe(second, "a", a);
  const [leader] = await leaders([first, second]);
  // More of B while the stream follows only A: only history has them.
  for (let n = 0; n < 10; n += 1) await publish(base, { topic: b, data: { while: "A only", n } });

  const load = new Load({ base, topics: [a, b], perSecond: 100 });
  await waitFor("half a second of load", () => load.sent >= 50);
  const effective = await subscribe(first, "b", b, { after: x });
  assert.ok(BigInt(effective) > BigInt(x), `effective_at ${effective} is after X ${x}`);

  // The follower adds B with an `after` between X and now.
  await waitFor("more load", () => load.sent >= 150);
  const bs = await readLog(base, { after: x, topics: [b] });
  const x2 = bs[Math.floor(bs.length / 2)].id;
  const effective2 = await subscribe(second, "b", b, { after: x2 });
  const sent = load.sent;
  await waitFor("a second of load after", () => load.sent >= sent + 100);
  await load.stop();
  assert.deepEqual(load.failed, [], "every publish was stored");

  // Each handler against the log (checkTabs), and B's against the history
  // API as a client would call it.
  const { records } = await checkTabs(base, [first, second]);
  for (const [record, after, eff] of [[records[0], x, effective], [records[1], x2, effective2]]) {
    const history = (await readLog(base, { after, topics: [b] })).map((e) => e.id);
    assert.deepEqual(record.subs.b.got, history, `B after ${after}: history then live, once each, in order`);
    const fromHistory = history.filter((id) => BigInt(id) <= BigInt(eff)).length;
    assert.ok(
      fromHistory > 0 && fromHistory < history.length,
      `both sides of the seam at ${eff}: ${fromHistory} of ${history.length}`,
    );
  }
  assertNoPageErrors([first, second]);
  console.log(
    `leader ${leader.name}; B after ${x}: ${records[0].subs.b.got.length} events, seam at ${effective}; ` +
      `follower B after ${x2}: ${records[1].subs.b.got.length} events, seam at ${effective2}`,
  );
} finally {
  await browser.close();
  await herald.kill();
}
