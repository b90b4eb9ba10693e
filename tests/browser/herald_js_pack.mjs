// clients/js as the npm package `herald-client` (issue 24): `npm pack`
// makes a tarball holding exactly herald.js, herald.d.ts, package.json and
// README.md; unpacked into a node_modules, the package resolves by name
// through its `exports` for Node and for tsc (bundler and NodeNext
// resolution both find herald.d.ts), and its module imports where there is
// no window (Node), so herald.js touches no `location` or `navigator`
// until it is used; what it exports is what herald.d.ts declares.

import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { watchdog } from "./lib.mjs";

watchdog();
const here = fileURLToPath(new URL(".", import.meta.url));
const client = fileURLToPath(new URL("../../clients/js/", import.meta.url));
const tsc = join(here, "node_modules/typescript/bin/tsc");
const work = mkdtempSync(join(tmpdir(), "herald-client-"));

try {
  // Pack, as `npm publish` would.
  const packed = JSON.parse(
    execFileSync("npm", ["pack", "--json", "--pack-destination", work], {
      cwd: client,
      encoding: "utf8",
      env: { ...process.env, npm_config_loglevel: "error", npm_config_fund: "false", npm_config_audit: "false" },
    }),
  )[0];
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "herald.d.ts", "herald.js", "package.json"], "the tarball's files");
  assert.equal(packed.name, "herald-client");
  console.log(`${packed.filename}: ${files.join(", ")} (${packed.size} bytes packed)`);

  // Unpack where a project's dependencies go.
  const installed = join(work, "node_modules/herald-client");
  mkdirSync(installed, { recursive: true });
  execFileSync("tar", ["-xzf", join(work, packed.filename), "-C", installed, "--strip-components=1"]);

  // The module by its path, in Node: no window, no location, no navigator.
  const byPath = await import(pathToFileURL(join(installed, "herald.js")).href);
  assert.equal(typeof byPath.Herald, "function", "herald.js exports the class Herald");
  // What herald.d.ts declares is there: the one export, its methods and getters.
  assert.deepEqual(Object.keys(byPath), ["Herald"], "herald.js's exports, as herald.d.ts declares them");
  const proto = byPath.Herald.prototype;
  for (const method of ["subscribe", "close"]) assert.equal(typeof proto[method], "function", method);
  for (const getter of ["status", "leader", "lastEventId"]) {
    assert.equal(typeof Object.getOwnPropertyDescriptor(proto, getter)?.get, "function", getter);
  }

  // By the package's name, as an application imports it.
  writeFileSync(join(work, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  const byName = spawnSync(
    process.execPath,
    ["--input-type=module", "-e", 'import { Herald } from "herald-client"; console.log(typeof Herald);'],
    { cwd: work, encoding: "utf8" },
  );
  assert.equal(byName.status, 0, `import "herald-client" failed:\n${byName.stderr}`);
  assert.equal(byName.stdout.trim(), "function", "import { Herald } from \"herald-client\"");
  console.log('import { Herald } from "herald-client" works in Node');

  // Its types by the package's name, under both resolutions of a TypeScript app.
  writeFileSync(
    join(work, "app.ts"),
    [
      'import { Herald, type Envelope } from "herald-client";',
      "const herald = new Herald({ share: false });",
      'const sub = herald.subscribe("incident:*", (e: Envelope) => console.log(e.id));',
      "sub.unsubscribe();",
      "// @ts-expect-error: the types come from herald.d.ts, not `any`",
      "herald.subscribe(42, () => {});",
      "",
    ].join("\n"),
  );
  for (const resolution of [["es2022", "bundler"], ["nodenext", "nodenext"]]) {
    const [module, moduleResolution] = resolution;
    const run = spawnSync(
      process.execPath,
      [tsc, "--strict", "--noEmit", "--pretty", "false", "--target", "es2022", "--lib", "es2022,dom",
        "--types", "", "--module", module, "--moduleResolution", moduleResolution, "app.ts"],
      { cwd: work, encoding: "utf8" },
    );
    assert.equal(run.status, 0, `tsc (${moduleResolution}) on an app importing "herald-client":\n${run.stdout}${run.stderr}`);
  }
  console.log('tsc finds the types of "herald-client" with bundler and NodeNext resolution');
} finally {
  rmSync(work, { recursive: true, force: true });
}
