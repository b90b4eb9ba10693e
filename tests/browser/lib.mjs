// Shared by the real-client scripts in this directory: Debian's Chromium
// through playwright-core, herald processes a script starts and restarts
// itself, publishing over HTTP, and waiting on conditions (never on time).
//
// The Rust wrappers in tests/api/clients.rs run these scripts; each script
// exits 0 when every assertion held and non-zero with the reason otherwise.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

/// How long any single wait may take before the script fails.
export const WAIT_MS = 20_000;

/// A required environment variable, or a clear failure.
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (the Rust wrapper in tests/api/clients.rs sets it)`);
  return value;
}

/// Fails the whole script if it runs longer than `ms`, whatever hangs.
export function watchdog(ms = 90_000) {
  setTimeout(() => {
    console.error(`script did not finish within ${ms} ms`);
    process.exit(3);
  }, ms).unref();
}

/// Debian's Chromium, headless, with a fresh profile (playwright's default).
export async function launchChromium() {
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/// Where screenshots go: `tests/artifacts/` (git-ignored), or $ARTIFACTS.
export function artifactPath(name) {
  const dir = process.env.ARTIFACTS ?? new URL("../artifacts/", import.meta.url).pathname;
  mkdirSync(dir, { recursive: true });
  return `${dir.replace(/\/$/, "")}/${name}`;
}

/// Polls `check` (sync or async) until it returns a truthy value, which it
/// returns; fails with `what` after `ms`.
export async function waitFor(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/// `POST /v1/events`; returns the stored envelope (or array), failing
/// unless the answer is `201`.
export async function publish(base, body, headers = {}) {
  const res = await fetch(`${base}/v1/events`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`publish answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

/// A JWT signed with HS256 and `secret`, for a herald started with that
/// `--jwt-secret`: for a token that must be fresh when a page connects
/// (one minted before Chromium starts may already be close to its `exp`).
export function hs256Token(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/// A unique topic for one run.
export function uniqueTopic(prefix) {
  return `${prefix}:t${process.pid}-${Date.now().toString(36)}`;
}

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/// The herald binary ($HERALD_BIN) as a process of this script, so the
/// script can stop it and start it again on the same port.
export class Herald {
  /// Starts herald on `database` and waits for its "herald is serving" log
  /// line. `port` 0 picks a free one; `flags` adds or overrides flags;
  /// `rustLog` is its `RUST_LOG`.
  static async start({ database, port = 0, flags = {}, rustLog = "info" }) {
    const all = {
      "--listen": `127.0.0.1:${port}`,
      "--database-url": database,
      "--log-format": "json",
      // Short intervals, as the Rust tests use, so reconnects are quick.
      "--heartbeat": "300ms",
      "--retry": "200ms",
      "--drain": "200ms",
      "--poll-interval": "200ms",
      ...flags,
    };
    const args = Object.entries(all).flat();
    const childEnv = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_") && k !== "DATABASE_URL"),
    );
    childEnv.RUST_LOG = rustLog;
    const child = spawn(env("HERALD_BIN"), args, { env: childEnv, stdio: ["ignore", "ignore", "pipe"] });
    running.add(child);
    const herald = new Herald(child);
    const address = await herald.#serving();
    herald.port = Number(address.split(":").pop());
    herald.base = `http://${address}`;
    return herald;
  }

  constructor(child) {
    this.child = child;
    this.logs = [];
    this.exited = new Promise((resolve) => child.on("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }));
  }

  #serving() {
    const lines = createInterface({ input: this.child.stderr });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`herald did not start:\n${this.logs.join("\n")}`)), WAIT_MS);
      this.exited.then(({ code }) => reject(new Error(`herald exited (${code}) before serving:\n${this.logs.join("\n")}`)));
      lines.on("line", (line) => {
        this.logs.push(line);
        try {
          const entry = JSON.parse(line);
          if (entry.message === "herald is serving") {
            clearTimeout(timer);
            resolve(entry.address);
          }
        } catch {
          // Not a log line of ours (a panic, say): kept in `logs`.
        }
      });
    });
  }

  /// SIGTERM (a deploy: streams drain, then the process exits) and wait.
  async stop() {
    this.child.kill("SIGTERM");
    const timeout = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`herald did not exit:\n${this.logs.join("\n")}`)), WAIT_MS).unref());
    return Promise.race([this.exited, timeout]);
  }

  /// SIGKILL: sockets close at once, nothing drains.
  async kill() {
    this.child.kill("SIGKILL");
    return this.exited;
  }
}
