// The README's snippet for the `eventsource` package, run as written:
// between the markers is the README's block, byte for byte
// (tests/api/clients/third_party.rs checks). The lines after it follow
// one stream and print what the snippet hands over, for the Rust test
// that runs this script to read:
//   EVENT <type> <envelope JSON>   for each event
//   REFUSED <status>               once herald refused the stream
// Then nothing of the script's own is left running: the process exits
// only if the library has stopped too.
//
// usage: node readme_eventsource.mjs STREAM_URL TOKEN TYPE...

// README snippet: begin
import { EventSource } from "eventsource";

// Calls handle(type, envelope) for each event of `types` and for `reset`,
// and refused(status) once herald refuses the stream: 401 (sign in again),
// 403 (the token may not read those topics), or any other answer but 200
// (a 503 while its database is away). It has then stopped for good.
function subscribe(url, token, types, handle, refused) {
  const es = new EventSource(url, {
    // Headers go through the `fetch` option, on every reconnect too.
    fetch: (input, init) =>
      fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
  });
  for (const type of [...types, "reset"]) {
    es.addEventListener(type, (e) => handle(type, JSON.parse(e.data)));
  }
  es.addEventListener("error", (e) => {
    if (es.readyState === EventSource.CLOSED) refused(e.code);
  });
  return es;
}
// README snippet: end

const [url, token, ...types] = process.argv.slice(2);
subscribe(
  url,
  token,
  types,
  (type, envelope) => console.log(`EVENT ${type} ${JSON.stringify(envelope)}`),
  (status) => console.log(`REFUSED ${status}`),
);
