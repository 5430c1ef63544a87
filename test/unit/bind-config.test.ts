import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseBindConfig, pathAllowed } from "../../src/bind/config.js";
import { upstreamTimeoutMs } from "../../src/bind/server.js";
import { probe, writeStatus } from "../../src/bind/status.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, "id.json"), "{}");
const ok = { identity: "id.json", targets: [{ service: "node", upstream: "http://127.0.0.1:9100" }] };
const parse = (raw: unknown) => parseBindConfig(raw, "bind.yaml", dir, {});

describe("bind config", () => {
  it("applies defaults and resolves paths against the config's directory", () => {
    const c = parse(ok);
    expect(c.identity).toBe(join(dir, "id.json"));
    expect(c.targets[0]).toMatchObject({ paths: ["/metrics"], bindUsingEdgeIdentity: true, timeoutSeconds: 10 });
  });

  it("lets the environment override identity and log level", () => {
    writeFileSync(join(dir, "other.json"), "{}");
    const c = parseBindConfig(ok, "bind.yaml", dir, { SCRAPEZ_IDENTITY: "other.json", SCRAPEZ_LOG_LEVEL: "debug" });
    expect(c.identity).toBe(join(dir, "other.json"));
    expect(c.logLevel).toBe("debug");
  });

  it.each([
    ["not an object", "nope", /\(top level\)/],
    ["unknown top-level key", { ...ok, colour: "blue" }, /colour/],
    ["unknown target key", { ...ok, targets: [{ ...ok.targets[0], bogus: 1 }] }, /targets\[0\].*bogus|bogus/],
    ["missing identity", { targets: ok.targets }, /identity:/],
    ["identity file missing", { ...ok, identity: "nope.json" }, /identity: file .*nope\.json does not exist/],
    ["no targets", { ...ok, targets: [] }, /targets: at least one target/],
    [
      "bad URL",
      { ...ok, targets: [{ service: "a", upstream: "localhost:9100" }] },
      /targets\[0\]\.upstream: not an http\(s\) URL/,
    ],
    [
      "URL with a path",
      { ...ok, targets: [{ service: "a", upstream: "http://h:1/metrics" }] },
      /targets\[0\]\.upstream: give only scheme/,
    ],
    ["path without slash", { ...ok, targets: [{ ...ok.targets[0], paths: ["metrics"] }] }, /targets\[0\]\.paths\[0\]/],
    [
      "duplicate services",
      { ...ok, targets: [ok.targets[0], { service: "node", upstream: "http://127.0.0.1:1" }] },
      /targets\[1\]\.service: duplicate service "node" \(also targets\[0\]\)/,
    ],
    [
      "tls on http",
      { ...ok, targets: [{ ...ok.targets[0], tls: { insecureSkipVerify: true } }] },
      /targets\[0\]\.tls: tls is only for https/,
    ],
    ["bad precedence", { ...ok, targets: [{ ...ok.targets[0], precedence: "high" }] }, /targets\[0\]\.precedence/],
    ["self clashes with a target", { ...ok, self: { service: "node" } }, /self\.service/],
  ])("rejects %s, naming the field", (_n, raw, msg) => {
    expect(() => parse(raw)).toThrow(msg);
  });

  it("matches exact paths and trailing-* prefixes only", () => {
    expect(pathAllowed(["/metrics"], "/metrics")).toBe(true);
    expect(pathAllowed(["/metrics"], "/metrics/x")).toBe(false);
    expect(pathAllowed(["/probe*"], "/probe/x")).toBe(true);
    expect(pathAllowed(["/probe*"], "/probex")).toBe(false); // segment boundary (bind-paths.test.ts has the table)
    expect(pathAllowed(["/federate"], "/")).toBe(false);
  });

  it("derives the upstream timeout from Prometheus's scrape-timeout header", () => {
    expect(upstreamTimeoutMs("10", 3)).toBe(9500);
    expect(upstreamTimeoutMs("0.5", 3)).toBe(250);
    expect(upstreamTimeoutMs(undefined, 3)).toBe(3000);
    expect(upstreamTimeoutMs("junk", 3)).toBe(3000);
  });

  it("caps the dialer's scrape-timeout header at maxTimeoutSeconds", () => {
    expect(upstreamTimeoutMs("600", 10, 60)).toBe(59_500);
    expect(upstreamTimeoutMs("1e9", 10, 60)).toBe(59_500);
    expect(upstreamTimeoutMs("25", 10, 60)).toBe(24_500); // a federation scrape (scrape_timeout 25s) is untouched
    expect(upstreamTimeoutMs(undefined, 10, 60)).toBe(10_000);
  });

  it("defaults maxTimeoutSeconds to 60 (or timeoutSeconds if larger) and requestTimeoutSeconds to it + 30", () => {
    expect(parse(ok).targets[0]).toMatchObject({
      timeoutSeconds: 10,
      maxTimeoutSeconds: 60,
      requestTimeoutSeconds: 90,
      headersTimeoutSeconds: 10,
      idleTimeoutSeconds: 300,
      maxConnections: 64,
    });
    const long = parse({ ...ok, targets: [{ ...ok.targets[0], timeoutSeconds: 120 }] }).targets[0]!;
    expect(long).toMatchObject({ maxTimeoutSeconds: 120, requestTimeoutSeconds: 150 });
    const set = parse({ ...ok, targets: [{ ...ok.targets[0], maxTimeoutSeconds: 30 }] }).targets[0]!;
    expect(set).toMatchObject({ maxTimeoutSeconds: 30, requestTimeoutSeconds: 60 });
  });

  it.each([
    [
      { timeoutSeconds: 20, maxTimeoutSeconds: 10 },
      /targets\[0\]\.maxTimeoutSeconds: must be at least timeoutSeconds \(20\)/,
    ],
    [{ maxTimeoutSeconds: 601 }, /targets\[0\]\.maxTimeoutSeconds/],
    [{ maxTimeoutSeconds: 0 }, /targets\[0\]\.maxTimeoutSeconds/],
    [
      { requestTimeoutSeconds: 60 },
      /targets\[0\]\.requestTimeoutSeconds: must be longer than maxTimeoutSeconds \(60\)/,
    ],
    [{ maxConnections: 0 }, /targets\[0\]\.maxConnections/],
    [{ maxConnections: 1.5 }, /targets\[0\]\.maxConnections/],
    [{ headersTimeoutSeconds: -1 }, /targets\[0\]\.headersTimeoutSeconds/],
    [{ idleTimeoutSeconds: "soon" }, /targets\[0\]\.idleTimeoutSeconds/],
  ])("rejects the limits %j, naming the field", (extra, msg) => {
    expect(() => parse({ ...ok, targets: [{ ...ok.targets[0], ...extra }] })).toThrow(msg);
  });
});

describe("status file probes", () => {
  const file = join(dir, "status.json");
  const base = { pid: process.pid, authenticated: true, ready: true, services: { node: { state: "bound" } } };
  it("passes --ready only when live, authenticated and every service bound", () => {
    expect(probe(join(dir, "missing.json"), "ready")).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/has not started/),
    });
    writeStatus(file, { ...base, updatedAt: new Date().toISOString() });
    expect(probe(file, "ready").ok).toBe(true);
    writeStatus(file, {
      ...base,
      ready: false,
      services: { node: { state: "binding" } },
      updatedAt: new Date().toISOString(),
    });
    expect(probe(file, "ready")).toMatchObject({ ok: false, detail: "not bound: node (binding)" });
    expect(probe(file, "live").ok).toBe(true);
    writeStatus(file, { ...base, updatedAt: new Date(Date.now() - 120_000).toISOString() });
    expect(probe(file, "live")).toMatchObject({ ok: false, detail: expect.stringMatching(/stuck/) });
    writeStatus(file, { ...base, pid: 2 ** 22 + 7, updatedAt: new Date().toISOString() });
    expect(probe(file, "live")).toMatchObject({ ok: false, detail: expect.stringMatching(/not running/) });
  });
});
