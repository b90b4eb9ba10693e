// The size of clients/js/herald.js as a page pays for it (issue 24): the
// module minified by esbuild (the packaged minifier, as a bundler would
// minify it) and gzipped at level 9, as a server would send it. Prints the
// three figures and fails above 5 KB, taken as 5000 bytes (the stricter
// reading of "KB", not 5120).

import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";
import { watchdog } from "./lib.mjs";

/// The budget for minified + gzipped bytes.
const LIMIT = 5000;

watchdog();
const file = new URL("../../clients/js/herald.js", import.meta.url);
const source = readFileSync(file, "utf8");
const { code } = await transform(source, { format: "esm", minify: true });
const gzipped = gzipSync(code, { level: 9 });

const raw = Buffer.byteLength(source);
const minified = Buffer.byteLength(code);
console.log(`herald.js: ${raw} bytes, ${minified} bytes minified, ${gzipped.length} bytes minified+gzip`);
if (gzipped.length > LIMIT) {
  console.error(`herald.js is ${gzipped.length} bytes minified and gzipped: over the ${LIMIT}-byte budget by ${gzipped.length - LIMIT}`);
  process.exit(1);
}
