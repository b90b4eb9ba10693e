// The TypeScript types of herald.js (clients/js/herald.d.ts, issue 24),
// checked with the typescript package's `tsc` (strict, no emit):
// - herald_js_types/example.ts, which uses every option and member of the
//   API, must compile;
// - herald_js_types/wrong.ts, which misuses it, must fail on exactly the
//   lines marked `// error:` and nowhere else, so the types are neither
//   `any` nor looser than the contract.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { watchdog } from "./lib.mjs";

watchdog();
const here = fileURLToPath(new URL(".", import.meta.url));

/// `tsc -p <project>` from this directory: its exit status and output.
function tsc(project) {
  const run = spawnSync(
    process.execPath,
    ["node_modules/typescript/bin/tsc", "-p", project, "--pretty", "false"],
    { cwd: here, encoding: "utf8" },
  );
  if (run.error) throw run.error;
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

const version = spawnSync(process.execPath, ["node_modules/typescript/bin/tsc", "--version"], {
  cwd: here,
  encoding: "utf8",
}).stdout.trim();

const good = tsc("herald_js_types/tsconfig.json");
if (good.status !== 0) {
  console.error(`example.ts does not compile against herald.d.ts (tsc exited ${good.status}):\n${good.output}`);
  process.exit(1);
}
console.log(`example.ts compiles (${version}, strict)`);

const bad = tsc("herald_js_types/tsconfig.wrong.json");
assert.notEqual(bad.status, 0, `wrong.ts compiled: the types accept what the API does not\n${bad.output}`);
const marked = readFileSync(new URL("herald_js_types/wrong.ts", import.meta.url), "utf8")
  .split("\n")
  .flatMap((line, i) => (/^[^/].*\/\/ error:/.test(line) ? [i + 1] : []));
const failed = [
  ...new Set([...bad.output.matchAll(/wrong\.ts\((\d+),\d+\): error TS\d+/g)].map((m) => Number(m[1]))),
];
assert.ok(marked.length > 0, "wrong.ts marks no line `// error:`");
assert.deepEqual(
  failed,
  marked,
  `tsc must fail on exactly the lines of wrong.ts marked \`// error:\`\n${bad.output}`,
);
console.log(`wrong.ts fails on each of its ${marked.length} misuses, and only there`);
