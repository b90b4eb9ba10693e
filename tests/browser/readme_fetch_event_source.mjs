// The README's snippet for `@microsoft/fetch-event-source` on Node, run as
// written: between the markers is the README's block, byte for byte
// (tests/api/clients/third_party.rs checks). The lines after it follow
// one stream and print what the snippet hands over, for the Rust test
// that runs this script to read:
//   EVENT <type> <envelope JSON>   for each event
//   REFUSED <status>               once herald refused the stream
// Then nothing of the script's own is left running: the process exits
// only if the library has stopped too.
//
// usage: node readme_fetch_event_source.mjs STREAM_URL TOKEN

// README snippet: begin
import { fetchEventSource } from "@microsoft/fetch-event-source";

// Written for browsers: it takes its timers from `window` and, even with
// openWhenHidden, removes a listener from `document` when it stops.
globalThis.window ??= globalThis;
globalThis.document ??= Object.assign(new EventTarget(), { hidden: false });

class Refused extends Error {}

// Calls handle(type, envelope) for each event, `reset` included, and
// refused(status) once herald refuses the token (401: sign in again) or
// the topics (403). Anything else (a drop, a restart, a 503) is retried
// after `retry:`, with Last-Event-ID.
async function subscribe(url, token, handle, refused) {
  try {
    await fetchEventSource(url, {
      headers: { Authorization: `Bearer ${token}` },
      openWhenHidden: true, // no page to hide
      async onopen(res) {
        if (res.status === 401 || res.status === 403) throw new Refused(String(res.status));
        if (!res.ok) throw new Error(`herald answered ${res.status}`); // retried
      },
      onmessage(m) {
        // The opening frame says what the stream is, and `: ping`
        // comments come as messages without data: neither is an event.
        if (m.event === "stream" || !m.data) return;
        handle(m.event, JSON.parse(m.data));
      },
      onclose() {
        throw new Error("the stream ended"); // retried (else it would stop)
      },
      onerror(err) {
        if (err instanceof Refused) throw err; // stops
      },
    });
  } catch (err) {
    if (!(err instanceof Refused)) throw err;
    refused(Number(err.message));
  }
}
// README snippet: end

const [url, token] = process.argv.slice(2);
await subscribe(
  url,
  token,
  (type, envelope) => console.log(`EVENT ${type} ${JSON.stringify(envelope)}`),
  (status) => console.log(`REFUSED ${status}`),
);
