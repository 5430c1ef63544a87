/**
 * `scrapez bind` as a command, in process, before it authenticates (the controller's port is closed, so it keeps
 * retrying): what it logs at start at the default level (issue 18, item 9: an identity file others can read, an
 * allow-list name without a pin), and how a reload treats `statusFile` (moved) and `zitiAuth` (refused, named).
 * The same process against a real overlay is test/integration/bind.test.ts.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import YAML from "yaml";
import { command } from "../../src/cli/bind.js";
import { makePki } from "../harness/pki.js";
import { freePort, waitUntil } from "../harness/ports.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-cli-"));
const cfg = join(dir, "bind.yaml");
const identity = join(dir, "id.json");
const lines: Record<string, unknown>[] = [];
const logged = (msg: string | RegExp) =>
  lines.filter((l) => (typeof msg === "string" ? l.msg === msg : msg.test(String(l.msg))));

const base = {
  identity: "id.json",
  statusFile: "a.status.json",
  targets: [{ service: "node", upstream: "http://127.0.0.1:9100", allow: { identities: ["prom"] } }],
};
const writeConfig = (c: object) => writeFileSync(cfg, YAML.stringify(c));

let run: Promise<number>;
let spy: { mockRestore(): void };

beforeAll(async () => {
  const pki = makePki(join(dir, "pki"));
  const pem = (f: string) => `pem:${readFileSync(pki[f]!, "utf8")}`;
  const json = {
    ztAPI: `https://127.0.0.1:${await freePort()}/edge/client/v1`, // nothing listens: never authenticated
    id: { cert: pem("client.crt"), key: pem("client.key"), ca: pem("ca.crt") },
  };
  writeFileSync(identity, JSON.stringify(json));
  chmodSync(identity, 0o644); // as a careless `cp` leaves it: the private key readable by everyone
  writeConfig(base);
  // The command logs JSON lines on stderr (createLogger's default): kept here, parsed.
  spy = vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
    for (const l of String(chunk).split("\n")) {
      if (l.startsWith("{")) lines.push(JSON.parse(l) as Record<string, unknown>);
    }
    return true;
  });
  run = command.run(["--config", cfg]);
  await waitUntil(() => existsSync(join(dir, "a.status.json")), 20_000, "the first status file");
});

afterAll(async () => {
  process.emit("SIGTERM" as never);
  const code = await run;
  spy.mockRestore();
  rmSync(dir, { recursive: true, force: true });
  expect(code).toBe(0);
});

describe("scrapez bind at start, at the default log level", () => {
  it("warns that the identity file is readable by group/others and holds a private key, with the fix", () => {
    const w = logged(/^identity file .* is readable by group\/others/);
    expect(w).toHaveLength(1);
    expect(w[0]).toMatchObject({
      level: "warn",
      msg: `identity file ${identity} is readable by group/others (mode 0644) and holds a private key: chmod 600 ${identity}`,
      identity,
    });
  });

  it("warns of an allow-listed name without a pin: refused on v1.x routers, the fix, and that v2 routers assert it", () => {
    const w = logged(/allows "prom" by name only/);
    expect(w).toHaveLength(1);
    expect(w[0]).toMatchObject({ level: "warn", service: "node", identity: "prom" });
    const msg = String(w[0]!.msg);
    expect(msg).toMatch(/OpenZiti v1\.x routers .* every scrape from it is refused \(403\)/);
    expect(msg).toContain("`scrapez identity key --identity <prom's identity file>`");
    expect(msg).toMatch(/v2\.0\+ routers assert the dialer's identity, so a name-only entry works there/);
    expect(msg).toContain("verified_by: router");
  });
});

describe("scrapez bind reloads (before it authenticated)", () => {
  it("writes its status 0600, and a reloaded statusFile moves it: written there, the old one removed", async () => {
    const a = join(dir, "a.status.json");
    const b = join(dir, "b.status.json");
    expect(statSync(a).mode & 0o777).toBe(0o600);
    writeConfig({ ...base, statusFile: "b.status.json" });
    process.emit("SIGHUP" as never);
    await waitUntil(() => existsSync(b) && !existsSync(a), 10_000, "the status file moved to b");
    expect(statSync(b).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(b, "utf8"))).toMatchObject({ pid: process.pid, authenticated: false });
    expect(logged("status file moved")[0]).toMatchObject({ from: a, to: b });
  });

  it("refuses a reload that changes zitiAuth, naming the field; the running config stays in force", async () => {
    const before = logged("new config rejected; keeping the running one").length;
    writeConfig({ ...base, statusFile: "c.status.json", zitiAuth: "legacy" });
    process.emit("SIGHUP" as never);
    await waitUntil(
      () => logged("new config rejected; keeping the running one").length > before,
      10_000,
      "the reload refused",
    );
    const r = logged("new config rejected; keeping the running one")[before]!;
    expect(r).toMatchObject({ level: "error", fields: ["zitiAuth"] });
    expect(String(r.reason)).toMatch(/^zitiAuth changed: restart scrapez bind to apply it/);
    // Nothing of the refused file applied: the status stays where it was.
    expect(existsSync(join(dir, "c.status.json"))).toBe(false);
    expect(existsSync(join(dir, "b.status.json"))).toBe(true);
  });
});
