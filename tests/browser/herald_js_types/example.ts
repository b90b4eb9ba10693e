// A page using every option and member of herald.js's API, checked against
// clients/js/herald.d.ts by `tsc` (tests/browser/herald_js_types.mjs). It
// is never run. The `never` checks fail the build if a union of the types
// gains or loses a member the contract does not have.

import { Herald } from "../../../clients/js/herald.js";
import type {
  AuthExpiringInfo,
  ClosedInfo,
  ClosedReason,
  Envelope,
  HeraldOptions,
  Problem,
  ResetInfo,
  Status,
  SubscribeOptions,
  Subscription,
} from "../../../clients/js/herald.js";

interface Incident {
  status: "open" | "resolved";
  title: string;
}

const log: string[] = [];

function badge(status: Status): string {
  switch (status) {
    case "connecting":
    case "live":
    case "reconnecting":
    case "closed":
      return status;
    default: {
      const unreachable: never = status;
      return unreachable;
    }
  }
}

function signIn(reason: ClosedReason, info: ClosedInfo): void {
  switch (reason) {
    case "replaced":
    case "revoked":
    case "unauthorized":
    case "forbidden":
      break;
    default: {
      const unreachable: never = reason;
      throw new Error(unreachable);
    }
  }
  if ("status" in info) log.push(`${reason}: ${info.status} ${info.code ?? ""}`);
  else log.push(`${reason}: ${info.reason} (cap ${info.cap ?? "none"})`);
}

function refetchEverything(info: ResetInfo): void {
  if ("continue_from" in info) {
    const why: "cursor_too_old" | "cursor_ahead" = info.reason;
    log.push(why, info.last_event_id, info.oldest_id ?? "empty log", info.continue_from);
  } else {
    log.push(`history answered ${info.status}, oldest ${info.oldest_id ?? "?"}`);
  }
}

const options: HeraldOptions = {
  url: "https://herald.example.com",
  share: true,
  getToken: async () => {
    const res = await fetch("/token", { credentials: "include" });
    return res.text();
  },
  onReset: (info) => refetchEverything(info),
  onAuthExpiring: (info: AuthExpiringInfo) => {
    log.push(`token ends at ${info.expires_at} (${info.reason ?? "no reason"})`);
    void fetch("/refresh", { method: "POST" });
  },
  onClosed: (reason, info) => signIn(reason, info),
  onStatus: (status) => log.push(badge(status)),
};
const herald = new Herald(options);

// The defaults; and one stream per tab, with a token from an async function.
const plain = new Herald();
const alone = new Herald({ share: false, getToken: async () => "eyJhbGciOiJIUzI1NiJ9.e30.c2ln" });

function render(event: Envelope<Incident>): void {
  const id: string = event.id;
  const topic: string = event.topic;
  const type: string = event.type;
  const time: string = event.time;
  const status: "open" | "resolved" = event.data.status;
  log.push(id, topic, type, time, status, event.data.title);
}

const refused = (problem: Problem): void => {
  const status: number = problem.status;
  log.push(
    String(status),
    problem.type ?? "about:blank",
    problem.title ?? "",
    problem.detail ?? "",
    problem.code ?? "",
    problem.oldest_id ?? "",
  );
};

const backfill: SubscribeOptions = { after: "42", onError: refused };
const sub: Subscription = herald.subscribe<Incident>("incident:inc-123", render, backfill);
const deploys = herald.subscribe("deploy:*", (event) => log.push(event.id, JSON.stringify(event.data)), {
  after: 42,
});
const everything = plain.subscribe("*", (event: Envelope) => log.push(event.type));
const mine = alone.subscribe("audit:*", (event) => log.push(event.topic), { onError: (p) => log.push(p.detail ?? "") });

const effectiveAt: string = await sub.ready;
log.push(effectiveAt, await deploys.ready);

sub.unsubscribe();
deploys.unsubscribe();
everything.unsubscribe();
mine.unsubscribe();

const now: Status = herald.status;
const leads: boolean = herald.leader;
const last: string | null = herald.lastEventId;
log.push(now, String(leads), last ?? "none");

herald.close();
plain.close();
alone.close();
