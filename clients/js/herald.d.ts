// Types for herald.js, the browser client of herald (issue 24). The module
// has no dependencies; these types describe its whole public API.

/** Where the stream stands, as `onStatus` and `Herald.status` report it. */
export type Status = "connecting" | "live" | "reconnecting" | "closed";

/**
 * Why herald.js stopped for good. It never reconnects after any of them.
 * - `replaced`: this subject or address opened a stream over its cap.
 * - `revoked`: an admin ended the stream or revoked its subject.
 * - `unauthorized`: herald answered `401` (no valid token or cookie).
 * - `forbidden`: herald answered `403`.
 *
 * `replaced` and `revoked` stop every tab of the browser.
 */
export type ClosedReason = "replaced" | "revoked" | "unauthorized" | "forbidden";

/** An event as herald sends it. `id` is a string: ids outgrow 2^53. */
export interface Envelope<Data = unknown> {
  /** The event's id in herald's log; ids grow in publish order. */
  id: string;
  /** The topic it was published to, e.g. `incident:inc-123`. */
  topic: string;
  /** The publisher's event type, e.g. `incident.updated`. */
  type: string;
  /** When herald stored it, RFC 3339. */
  time: string;
  /** The publisher's JSON data. */
  data: Data;
}

/** A refusal from herald, as `application/problem+json` (RFC 9457). */
export interface Problem {
  /** A URI for the kind of problem; herald sends `about:blank`. */
  type?: string;
  /** The HTTP status's reason phrase. */
  title?: string;
  /** The HTTP status code, e.g. `403` or `422`. */
  status: number;
  /** What went wrong, in words for a person. */
  detail?: string;
  /** herald's machine-readable code, e.g. `too_many_topics`. */
  code?: string;
  /** With `cursor_too_old`: the oldest id the log still holds. */
  oldest_id?: string;
}

/** The data of herald's `event: reset` frame. */
export interface ResetFrame {
  /** `cursor_too_old`: the events after the cursor were pruned; `cursor_ahead`: the log does not know the cursor. */
  reason: "cursor_too_old" | "cursor_ahead";
  /** The cursor herald could not resume from. */
  last_event_id: string;
  /** The oldest id the log holds, `null` when it holds none. */
  oldest_id: string | null;
  /** The id the stream goes on from. */
  continue_from: string;
}

/** What `onReset` gets: the reset frame, or the `410` problem of a history read (an `after:` too old). */
export type ResetInfo = ResetFrame | Problem;

/** The data of herald's `event: auth-expiring` frame. */
export interface AuthExpiringInfo {
  /** When the token ends the stream, RFC 3339. */
  expires_at: string;
  reason?: string;
}

/** The data of a `replaced` or `revoked` frame, e.g. `{reason: "max_streams_per_subject", cap: 1}`. */
export interface EndedInfo {
  reason: string;
  /** With `replaced`: the cap that was reached. */
  cap?: number;
}

/** What `onClosed` gets beside the reason: the frame's data, or the `401`/`403` problem. */
export type ClosedInfo = EndedInfo | Problem;

export interface HeraldOptions {
  /** herald's base URL, e.g. `https://herald.example.com`. Default: the page's origin. */
  url?: string;
  /**
   * One stream per browser (default `true`): the tabs of an origin elect a
   * leader with Web Locks, which holds the stream for the union of every
   * tab's subscriptions, and events reach the other tabs over a
   * BroadcastChannel. `false`, or a browser without either API: one stream
   * per tab.
   */
  share?: boolean;
  /**
   * Resolves to a JWT. When set, the stream is read with `fetch` and sent
   * `Authorization: Bearer`, not with `EventSource` and the cookie. Asked
   * again on `auth-expiring` and before each reconnect, in the tab holding
   * the stream; the token never goes in a URL.
   */
  getToken?: () => string | Promise<string>;
  /** herald could not resume (`event: reset`, or a history `410` for `after`): reload the page's state. */
  onReset?: (info: ResetInfo) => void;
  /** The stream's token is about to expire: renew the cookie. Runs in the tab holding the stream. */
  onAuthExpiring?: (info: AuthExpiringInfo) => void;
  /** herald.js stopped for good and will not reconnect. Fires once in every tab; not on `close()`. */
  onClosed?: (reason: ClosedReason, info: ClosedInfo) => void;
  /** The status changed. Fires in every tab. */
  onStatus?: (status: Status) => void;
}

export interface SubscribeOptions {
  /**
   * First deliver the filter's events after this id, from history, up to
   * the subscription's `effective_at`; then the live ones. Once each, in
   * order.
   */
  after?: string | number;
  /**
   * herald refused the subscription (`403` outside the token's grants,
   * `422` too many topics). The subscription is dropped.
   */
  onError?: (problem: Problem) => void;
}

/** What `subscribe` returns: hold it to stop. */
export interface Subscription {
  /**
   * Resolves with the subscription's `effective_at`: the handler gets the
   * live events with larger ids.
   */
  readonly ready: Promise<string>;
  /** Stops the handler and drops the filter from the stream. Never reconnects. */
  unsubscribe(): void;
}

export class Herald {
  constructor(options?: HeraldOptions);
  /**
   * Calls `handler` with each event of `filter` (an exact topic, or a
   * prefix ending in `*`) with an id above the subscription's
   * `effective_at`, once each, in id order. Changes the topics of the one
   * stream; never reconnects.
   */
  subscribe<Data = unknown>(
    filter: string,
    handler: (envelope: Envelope<Data>) => void,
    options?: SubscribeOptions,
  ): Subscription;
  /** Stops for good in this tab; if it held the stream, another tab takes over. */
  close(): void;
  /** The current status. */
  readonly status: Status;
  /** Whether this tab holds the stream. */
  readonly leader: boolean;
  /** The last event id this tab saw, `null` before any. */
  readonly lastEventId: string | null;
}
