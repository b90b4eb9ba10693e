// herald.js: the browser client of herald, the Server-Sent Events service.
// An ES module with no dependencies; herald serves this file at /herald.js.
//
//   import { Herald } from "/herald.js";
//   const herald = new Herald({ onReset, onAuthExpiring, onClosed, onStatus });
//   const sub = herald.subscribe("incident:inc-123", (event) => render(event));
//   sub.unsubscribe();
//
// How it works (README, "Browsers"):
// - One stream per page. Subscriptions are the topics of one named stream
//   (`stream=<handle>`); subscribing or unsubscribing changes them with
//   `PUT /v1/streams/{handle}`, never with a reconnect. A subscription's
//   `effective_at` is the `effective_at` of the change that added its filter,
//   or the stream's position when its filter was already followed: its
//   handler gets the events of its filter with larger ids, in id order, once.
// - One stream per browser. The tabs of an origin elect a leader with the Web
//   Locks API; the leader holds the stream for the union of every tab's
//   subscriptions and posts each event on a BroadcastChannel, where each tab
//   runs its own handlers. When the leader goes (closed, frozen, navigated
//   away) the next tab in the lock's queue reconnects the same named stream
//   from the last id the tabs saw, so nothing is missed; a tab drops an id it
//   has seen, so nothing comes twice. Without Web Locks or BroadcastChannel,
//   or with `share: false`, each tab holds its own stream.
// - Transports. The cookie carries the token by default, and the stream is
//   an EventSource. With `getToken`, the stream is read with fetch and sent
//   `Authorization: Bearer`: the token is never in a URL.
// - Reconnects follow herald's `retry:` (the EventSource's own first
//   reconnect, or the fetch transport's parse of it), then double with
//   jitter up to 30 s while herald cannot be reached. A 401, a 403, a
//   replaced or revoked stream ends it for good (`onClosed`), in every tab.

const CAP = 30000; // the longest wait between two reconnects, in ms
const LINGER = 5000; // how long a stream with no subscription stays open, in ms

const handle = () =>
  crypto.randomUUID?.() ??
  Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");

// herald's topic filters: an exact topic, or a prefix ending in `*`.
const matches = (filter, topic) =>
  filter.endsWith("*") ? topic.startsWith(filter.slice(0, -1)) : filter === topic;

// `*` is every topic the token may read: herald's "no topic" (a `*` filter
// itself needs a grant of `*`).
const wire = (filters) => (filters.includes("*") ? [] : filters);

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// A refusal's problem document (RFC 9457), or what the status says.
const problem = async (res) => {
  const p = await res.json().catch(() => ({}));
  return { status: res.status, ...p };
};

export class Herald {
  #o;
  #url;
  #tab = handle();
  #subs = new Map(); // this tab's subscriptions, by id
  #next = 0;
  #ch; // the BroadcastChannel, when shared
  #lock; // aborts this tab's place in the lock's queue
  #free; // releases the lock this tab holds
  #link; // the stream, in the tab that leads
  #handle;
  #last = null; // the last id this tab saw, a number
  #status = "connecting";
  #closed = false;
  #alive; // releases this tab's own lock

  constructor(options = {}) {
    this.#o = options;
    this.#url = (options.url ?? location.origin).replace(/\/+$/, "");
    if (options.share !== false && globalThis.navigator?.locks && globalThis.BroadcastChannel) {
      this.#ch = new BroadcastChannel(`herald ${this.#url}`);
      this.#ch.onmessage = (e) => this.#hear(e.data);
      // A tab that goes gives the stream to another and its subscriptions
      // up; a frozen one gives the stream up and keeps its subscriptions.
      // Back, it may have lost its place (a new leader drops the filters of
      // a tab that does not answer): each subscription starts again after
      // the last id its handler got, the gap filled from history.
      const back = () => {
        for (const [id, sub] of [...this.#subs]) {
          this.#subs.delete(id);
          if (sub.at !== null) sub.after = sub.at;
          sub.at = null;
          sub.buf = [];
          this.#subs.set(++this.#next, sub);
        }
        this.#elect();
        this.#report();
      };
      addEventListener("pagehide", () => this.#resign(true));
      addEventListener("pageshow", (e) => e.persisted && back());
      document.addEventListener("freeze", () => this.#resign());
      document.addEventListener("resume", back);
      // Held for this Herald's life: a leader tells a live tab (frozen,
      // say) that has not reported yet from one that is gone.
      navigator.locks
        .request(`herald ${this.#url} tab ${this.#tab}`, () => new Promise((r) => (this.#alive = r)))
        .catch(() => {});
      this.#elect();
    } else {
      this.#lead();
    }
  }

  get status() {
    return this.#status;
  }

  /** True when this tab holds the stream. */
  get leader() {
    return !!this.#link;
  }

  get lastEventId() {
    return this.#last === null ? null : String(this.#last);
  }

  /**
   * Calls `handler` with each event of `filter` after the subscription's
   * `effective_at` (`sub.ready`); with `after`, first with the filter's
   * events after `after` up to it, from history.
   */
  subscribe(filter, handler, { after, onError } = {}) {
    const id = ++this.#next;
    let ready;
    const sub = {
      f: filter,
      h: handler,
      after: after == null ? null : Number(after),
      err: onError,
      at: null,
      buf: [],
      ready: new Promise((r) => (ready = r)),
    };
    sub.go = ready;
    this.#subs.set(id, sub);
    this.#report();
    return {
      ready: sub.ready,
      unsubscribe: () => {
        for (const [k, s] of this.#subs) if (s === sub && this.#subs.delete(k)) this.#report();
      },
    };
  }

  /** Stops in this tab for good; the stream moves to another tab if this one led. */
  close() {
    this.#subs.clear();
    this.#end();
  }

  // --- Every tab ---------------------------------------------------------

  #elect() {
    if (this.#closed || this.#lock) return;
    this.#lock = new AbortController();
    navigator.locks
      .request(`herald ${this.#url}`, { signal: this.#lock.signal }, () =>
        new Promise((free) => {
          this.#free = free;
          this.#lead();
        }),
      )
      .catch(() => {});
  }

  #lead() {
    if (this.#closed) return this.#free?.();
    this.#link = new Link(this, this.#o, this.#url, (this.#handle ??= handle()), this.#last, this.#tab);
    this.#post({ t: "q", h: this.#handle });
    this.#report();
  }

  // Gives the stream up (the page is going, or this Herald is closed).
  #resign(quit) {
    this.#link?.stop();
    this.#link = null;
    this.#free?.();
    this.#free = null;
    this.#lock?.abort();
    this.#lock = null;
    if (quit) this.#post({ t: "s", tab: this.#tab, s: [] });
  }

  #end(reason, info) {
    if (this.#closed) return;
    this.#resign(true);
    this.status_("closed");
    this.#closed = true;
    this.#ch?.close();
    this.#alive?.();
    if (reason) this.#o.onClosed?.(reason, info);
  }

  #post(m) {
    if (this.#ch && !this.#closed) this.#ch.postMessage(m);
  }

  // This tab's subscriptions, to the leader: its own link, or the channel.
  #report() {
    const s = [...this.#subs].map(([id, sub]) => [id, sub.f, sub.at]);
    if (this.#link) this.#link.set(this.#tab, s);
    else this.#post({ t: "s", tab: this.#tab, s });
  }

  // A message from the leader (or, in the leader, from a follower).
  #hear(m) {
    switch (m.t) {
      case "s":
        this.#link?.set(m.tab, m.s);
        this.#link?.hello();
        break;
      case "q":
        this.#handle = m.h;
        this.#report();
        break;
      default:
        this.on_(m);
    }
  }

  // What the stream says, in every tab: the leader calls it, and posts it.
  on_(m, leader) {
    if (leader) this.#post(m);
    switch (m.t) {
      case "e": {
        const id = +m.e.id;
        if (this.#last !== null && id <= this.#last) return;
        this.#last = id;
        for (const sub of this.#subs.values()) {
          if (matches(sub.f, m.e.topic)) {
            if (sub.at === null || sub.fill) sub.buf.push(m.e);
            else if (id > sub.at) this.#deliver(sub, m.e);
          }
        }
        break;
      }
      case "p":
        this.#last = Math.max(this.#last ?? 0, m.id);
        break;
      case "q":
        this.#handle = m.h;
        break;
      case "r":
        // The stream goes on after `continue_from` (lower than before when
        // the log itself was reset).
        this.#last = m.id;
        for (const sub of this.#subs.values()) if (sub.at > m.id) sub.at = m.id;
        this.#o.onReset?.(m.i);
        break;
      case "c":
        for (const k of m.k) this.#cover(k, m.at);
        break;
      case "x":
        for (const k of m.k) {
          const [tab, id] = k.split("/");
          const sub = tab === this.#tab && this.#subs.get(+id);
          if (sub) {
            this.#subs.delete(+id);
            sub.err?.(m.p);
          }
        }
        break;
      case "st":
        this.#handle = m.h ?? this.#handle;
        this.status_(m.s);
        break;
      case "z":
        this.#end(m.r, m.i);
    }
  }

  status_(s) {
    if (s === this.#status || this.#closed) return;
    this.#status = s;
    this.#o.onStatus?.(s);
  }

  // A subscription starts at `at`: history first if it asked for it, then
  // what the stream brought meanwhile.
  async #cover(key, at) {
    const [tab, id] = key.split("/");
    const sub = tab === this.#tab && this.#subs.get(+id);
    if (!sub || sub.at !== null) return;
    // Never below `after`: ids up to it are the app's already.
    sub.at = Math.max(at, sub.after ?? at);
    sub.fill = sub.after !== null && sub.after < at;
    sub.go(String(at));
    if (sub.fill) {
      try {
        await this.#history(sub, at);
      } catch (e) {
        // The subscription goes on from `at`; what history could not give
        // is a reset (herald pruned it, 410) or the subscription's error.
        if (e.status === 410) this.#o.onReset?.(e);
        else sub.err?.(e.status ? e : { status: 0, detail: String(e) });
      }
      sub.fill = false;
    }
    for (const e of sub.buf.splice(0)) {
      if (+e.id > sub.at && [...this.#subs.values()].includes(sub)) this.#deliver(sub, e);
    }
  }

  // A live event to its handler; `at` follows it, so an id comes once and
  // a subscription knows where it stands.
  #deliver(sub, e) {
    sub.at = +e.id;
    sub.h(e);
  }

  async #history(sub, at) {
    const token = await this.#o.getToken?.();
    for (let after = sub.after; after < at; ) {
      const q = new URLSearchParams({ after, until: at, topic: sub.f, limit: 1000 });
      const res = await fetch(`${this.#url}/v1/events?${q}`, {
        credentials: "include",
        headers: token ? { Authorization: `Bearer ${token}` } : {},
      });
      if (!res.ok) throw await problem(res);
      const page = await res.json();
      for (const e of page) sub.h(e);
      if (page.length < 1000) break;
      after = +page[page.length - 1].id;
    }
  }
}

// The stream, in the tab that leads: its topics are the union of every tab's
// subscriptions (`#members`, by "tab/id").
class Link {
  #h;
  #o;
  #url;
  #handle;
  #fresh; // no resume: a new handle, or the first stream of this one
  #members = new Map();
  #reported = new Set(); // the tabs that have said what they follow
  #t; // the transport: an EventSource, or { close } for fetch
  #open = false; // the opening frame came: `#sent` is the stream's topics
  #sent = [];
  #busy = false; // a PUT is in flight
  #gone = false; // stopped for good
  #split = false; // a change that added several filters was refused: one at a time
  #timer; // the next connect
  #linger; // the end of a stream nobody follows
  #grace; // just took the stream over: keep its topics until the tabs report
  #retry = 3000; // herald's `retry:`, as far as this side knows it
  #tries = 0;
  #failed = 0; // when the EventSource last failed with no opening since
  #token;

  constructor(h, o, url, handle, last, tab) {
    this.#h = h;
    this.#o = o;
    this.#url = url;
    this.#handle = handle;
    this.#fresh = last === null;
    // The tabs answer the new leader's "q" within milliseconds; until then
    // the stream's own topics stay, so no tab's filter is dropped at the
    // takeover. A tab that holds its lock and has not answered (frozen)
    // keeps them until it does.
    this.#reported.add(tab);
    this.#grace = setTimeout(() => this.#settle(url), 1000);
  }

  async #settle(url) {
    const prefix = `herald ${url} tab `;
    const held = (await navigator.locks?.query?.().catch(() => null))?.held ?? [];
    const silent = held.some((l) => l.name.startsWith(prefix) && !this.#reported.has(l.name.slice(prefix.length)));
    if (this.#gone) return;
    if (silent) return (this.#grace = setTimeout(() => this.#settle(url), 1000));
    this.#grace = null;
    this.#sync();
  }

  // A tab's subscriptions, as it reports them: [[id, filter, at]].
  set(tab, subs) {
    this.#reported.add(tab);
    const old = this.#members;
    this.#members = new Map([...old].filter(([, m]) => m.tab !== tab));
    for (const [id, f, at] of subs) {
      const k = `${tab}/${id}`;
      this.#members.set(k, { tab, f, at: old.get(k)?.at ?? at });
    }
    this.#sync();
  }

  // To a tab that just reported: the stream's handle and status.
  hello() {
    this.#say({ t: "st", s: this.#h.status, h: this.#handle });
  }

  // For good: this tab no longer leads.
  stop() {
    this.#gone = true;
    this.#halt();
  }

  #halt() {
    clearTimeout(this.#timer);
    clearTimeout(this.#linger);
    clearTimeout(this.#grace);
    this.#grace = null;
    this.#t?.close();
    this.#t = null;
    this.#open = false;
  }

  #say(m) {
    this.#h.on_(m, true);
  }

  // The topics the stream should have: every filter a tab follows, once.
  #want() {
    const mine = [...this.#members.values()].map((m) => m.f);
    let fs = [...new Set(this.#grace ? mine.concat(this.#sent) : mine)].sort();
    if (this.#split) {
      let one = false;
      fs = fs.filter((f) => this.#sent.includes(f) || (!one && (one = true)));
    }
    return fs;
  }

  #cover(keys, at) {
    keys = keys.filter((k) => this.#members.has(k));
    if (!keys.length) return;
    for (const k of keys) this.#members.get(k).at = at;
    this.#say({ t: "c", k: keys, at });
  }

  // Brings the stream's topics to what the tabs follow, one PUT at a time.
  async #sync() {
    if (this.#busy || this.#gone) return;
    const want = this.#want();
    if (!want.length) {
      // Nobody follows anything: keep the stream a while, for the next view.
      if (this.#t && !this.#linger) this.#linger = setTimeout(() => this.#idle(), LINGER);
      return;
    }
    clearTimeout(this.#linger);
    this.#linger = null;
    if (!this.#t) return this.#connect(0);
    if (!this.#open) return;
    const waiting = [...this.#members].filter(([, m]) => m.at === null && want.includes(m.f));
    if (same(want, this.#sent)) {
      this.#split = false;
      return this.#cover(waiting.map(([k]) => k), +this.#h.lastEventId);
    }
    this.#busy = true;
    let res;
    try {
      res = await fetch(`${this.#url}/v1/streams/${this.#handle}`, {
        method: "PUT",
        credentials: "include",
        headers: { "Content-Type": "application/json", ...this.#auth() },
        body: JSON.stringify({ topics: wire(want) }),
      });
    } catch {
      // herald is out of reach: the stream drops too, and its reopening syncs.
    }
    this.#busy = false;
    if (this.#gone) return;
    if (res?.ok) {
      const body = await res.json();
      this.#sent = want;
      this.#cover(waiting.map(([k]) => k), +body.effective_at);
    } else if ([400, 403, 422].includes(res?.status)) {
      // Refused (outside the grants, too many topics): the filters it
      // added are dropped, one at a time when it added several.
      const added = want.filter((f) => !this.#sent.includes(f));
      if (added.length > 1) this.#split = true;
      else this.#reject(([, m]) => added.includes(m.f), await problem(res));
    } else {
      // Unreachable, a 5xx, a 401 before the stream's own end, or no
      // instance holds the stream this instant: again after `retry`.
      this.#timer = setTimeout(() => this.#sync(), this.#retry);
      return;
    }
    this.#sync();
  }

  // Drops the subscriptions `which` picks; their tabs call their onError.
  #reject(which, p) {
    const keys = [...this.#members].filter(which).map(([k]) => k);
    for (const k of keys) this.#members.delete(k);
    if (keys.length) this.#say({ t: "x", k: keys, p });
  }

  #idle() {
    this.#halt();
    this.#handle = handle();
    this.#fresh = true;
    this.#sent = [];
    this.#say({ t: "q", h: this.#handle });
  }

  #auth() {
    return this.#token ? { Authorization: `Bearer ${this.#token}` } : {};
  }

  #status(s) {
    this.#say({ t: "st", s });
  }

  // Opens the stream after `ms`: from the last id the tabs saw, unless fresh.
  #connect(ms) {
    this.#status(this.#tries || this.#h.status === "live" ? "reconnecting" : "connecting");
    const t = (this.#t = { close() {} });
    this.#timer = setTimeout(async () => {
      const want = this.#want();
      // Nothing to follow (refused, unsubscribed): no stream, which would
      // be every topic; the next subscribe connects.
      if (!want.length) return (this.#t = null);
      const q = new URLSearchParams({ stream: this.#handle, message_events: true });
      // A handle herald knows takes its own topics, not the URL's: a
      // reconnect names only what herald already accepted.
      const held = [...this.#members.values()].filter((m) => m.at !== null).map((m) => m.f);
      for (const f of wire(this.#fresh || !held.length ? want : [...new Set(held)])) {
        q.append("topic", f);
      }
      const last = this.#fresh ? null : this.#h.lastEventId;
      if (this.#o.getToken) {
        try {
          this.#token = await this.#o.getToken();
        } catch {
          return this.#t === t && this.#drop();
        }
        if (this.#t === t) this.#read(`${this.#url}/v1/stream?${q}`, last);
      } else {
        if (last !== null) q.set("last_event_id", last);
        this.#source(`${this.#url}/v1/stream?${q}`);
      }
    }, ms);
  }

  // The cookie's transport: an EventSource, which this class reconnects.
  #source(url) {
    const es = (this.#t = new EventSource(url, { withCredentials: true }));
    for (const type of ["message", "stream", "reset", "auth-expiring", "replaced", "revoked"]) {
      es.addEventListener(type, (e) => this.#t === es && this.#frame(type, e.data));
    }
    es.onerror = async () => {
      if (this.#t !== es) return es.close();
      this.#open = false;
      if (es.readyState !== EventSource.CLOSED) {
        // Dropped: the browser reconnects by itself after herald's
        // `retry:` (which it keeps to itself), with Last-Event-ID. When
        // that fails too, herald.js takes over, the wait it saw as its base.
        const failed = this.#failed;
        this.#failed = Date.now();
        this.#status("reconnecting");
        if (!failed) return;
        es.close();
        this.#retry = Math.max(100, this.#failed - failed);
        return this.#drop();
      }
      es.close();
      // An EventSource cannot read a refusal: ask again to learn why.
      const ac = new AbortController();
      try {
        const res = await fetch(url, {
          credentials: "include",
          headers: { Accept: "text/event-stream" },
          signal: ac.signal,
        });
        if (res.ok) ac.abort(); // a refusal's body says why: read it first
        if (this.#t === es) this.#refused(res);
      } catch {
        if (this.#t === es) this.#drop();
      }
    };
  }

  // The token's transport: fetch with a streaming body, parsed here
  // (WHATWG HTML, "event stream interpretation").
  async #read(url, last) {
    const ac = new AbortController();
    const t = (this.#t = { close: () => ac.abort() });
    try {
      const res = await fetch(url, {
        credentials: "include",
        cache: "no-store",
        signal: ac.signal,
        headers: {
          Accept: "text/event-stream",
          ...this.#auth(),
          ...(last === null ? {} : { "Last-Event-ID": last }),
        },
      });
      if (!res.ok) return this.#refused(res);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let rest = "";
      let type = "";
      let data = [];
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const lines = (rest + value).split(/\r\n|\r|\n/);
        rest = lines.pop();
        for (const line of lines) {
          if (!line) {
            if (data.length && this.#t === t) this.#frame(type || "message", data.join("\n"));
            type = "";
            data = [];
            continue;
          }
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          const v = i < 0 ? "" : line.slice(i + (line[i + 1] === " " ? 2 : 1));
          if (field === "event") type = v;
          else if (field === "data") data.push(v);
          else if (field === "retry" && /^\d+$/.test(v)) this.#retry = +v;
        }
      }
    } catch {
      // Dropped, or closed by this side.
    }
    if (this.#t === t) this.#drop();
  }

  // The stream ended or could not open: again after `retry`, then after
  // twice as long each time, up to CAP; each wait is drawn from 75 % to
  // 125 % of that, so the clients of a restarted herald do not come back at
  // once.
  #drop() {
    this.#t = null;
    this.#open = false;
    const ms = Math.min(CAP, this.#retry * 2 ** this.#tries++);
    this.#connect(ms * (0.75 + Math.random() / 2));
  }

  async #refused(res) {
    const p = await problem(res);
    const s = res.status;
    if (s === 400 || s === 422 || (s === 403 && this.#fresh)) {
      // A new stream's topics were refused: those subscriptions go (their
      // onError), the others connect.
      this.#t = null;
      this.#reject(([, m]) => m.at === null, p);
      return this.#sync();
    }
    const reason =
      { 401: "unauthorized", 403: "forbidden" }[res.status] ??
      (res.status === 409 && (p.code === "stream_replaced" ? "replaced" : "revoked"));
    if (reason) this.#say({ t: "z", r: reason, i: p });
    else this.#drop();
  }

  #frame(type, text) {
    const d = JSON.parse(text);
    switch (type) {
      case "message":
        return this.#say({ t: "e", e: d });
      case "stream":
        if (d.after !== undefined) {
          // The opening frame: the stream's topics, and where it starts.
          this.#open = true;
          this.#fresh = false;
          this.#tries = 0;
          this.#failed = 0;
          this.#sent = [...d.topics].sort();
          this.#say({ t: "p", id: +d.after });
          this.#status("live");
          this.#sync();
        } else if (d.effective_at !== undefined) {
          this.#say({ t: "p", id: +d.effective_at });
        }
        return;
      case "reset":
        return this.#say({ t: "r", id: +d.continue_from, i: d });
      case "auth-expiring":
        // The stream ends at `expires_at`; its reconnect asks getToken again.
        if (this.#o.getToken) {
          Promise.resolve()
            .then(this.#o.getToken)
            .then((t) => (this.#token = t), () => {});
        }
        this.#o.onAuthExpiring?.(d);
        return;
      default:
        // replaced, revoked: the last frame of a stream ended for good.
        this.#t?.close();
        this.#t = null;
        this.#say({ t: "z", r: type, i: d });
    }
  }
}
