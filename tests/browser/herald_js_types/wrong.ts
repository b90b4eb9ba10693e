// Misuses of herald.js's API that must NOT compile: if the types were
// `any`, or looser than the contract, tsc would accept them.
// tests/browser/herald_js_types.mjs requires an error on exactly the lines
// marked `// error`, and nowhere else.

import { Herald } from "../../../clients/js/herald.js";
import type { ClosedReason, Status } from "../../../clients/js/herald.js";

const herald = new Herald({ url: "https://herald.example.com" });

herald.subscribe(42, () => {}); // error: a filter is a string
herald.subscribe("incident:*"); // error: a handler is required
herald.subscribe("incident:*", (e) => e.nonsense); // error: an envelope has no such field
herald.subscribe("incident:*", () => {}, { after: true }); // error: after is an id
const reason: ClosedReason = "expired"; // error: not a reason herald.js gives
const status: Status = "open"; // error: not a status
new Herald({ share: "yes" }); // error: share is a boolean
new Herald({ onClosed: (r: number) => r }); // error: the reason is a string
new Herald({ reconnect: true }); // error: no such option
herald.status = "live"; // error: status is read-only
herald.subscribe("incident:*", () => {}).ready.then((at: number) => at); // error: effective_at is a string
herald.lastEventId.length; // error: null before any event
new Herald({ getToken: () => 42 }); // error: getToken gives a string (or a promise of one)

export { reason, status };
