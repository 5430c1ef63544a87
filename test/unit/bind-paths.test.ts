/**
 * Issue 9, item 9: request paths are normalized before they are matched, prefix rules match on segment boundaries,
 * ambiguous paths get a one-line 400, and the exporter is sent the normalized path (never the raw one).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parseBindConfig } from "../../src/bind/config.js";
import { normalizeRequestTarget, pathAllowed } from "../../src/bind/paths.js";
import { BindServer } from "../../src/bind/server.js";
import { createLogger } from "../../src/common/log.js";
import { FakeOverlay, collect } from "../harness/bind-standin.js";

describe("normalizeRequestTarget", () => {
  it.each([
    ["/metrics", "/metrics", ""],
    ["/metrics?x=1&y=%2F", "/metrics", "?x=1&y=%2F"],
    ["/probe/../admin", "/admin", ""],
    ["/probe/./x", "/probe/x", ""],
    ["/probe/x/..", "/probe/", ""],
    ["/../../etc/passwd", "/etc/passwd", ""],
    ["/a/b/../../c", "/c", ""],
    ["/probe/", "/probe/", ""],
    ["/", "/", ""],
    ["/%7Euser/%41%62c", "/~user/Abc", ""], // unreserved escapes decoded
    ["/a%20b", "/a%20b", ""], // other escapes kept, hex upper-cased
    ["/a%3fb%25", "/a%3Fb%25", ""],
    ["/a%2eb", "/a.b", ""], // %2E inside a segment is just a dot
    ["/probe?target=../admin", "/probe", "?target=../admin"], // the query is the exporter's business
  ])("%s -> %s", (raw, path, query) => {
    expect(normalizeRequestTarget(raw)).toEqual({ ok: true, path, query });
  });

  it.each([
    ["/probe/..%2f..%2fadmin", /encoded \/ or \\/],
    ["/probe/..%2F..%2Fadmin", /encoded \/ or \\/],
    ["/probe%5c..%5cadmin", /encoded \/ or \\/],
    ["/probe\\..\\admin", /backslash/],
    ["/probe/%2e%2e/admin", /dot segment spelled with %2E/],
    ["/probe/.%2E/admin", /dot segment spelled with %2E/],
    ["/probe/%2e/x", /dot segment spelled with %2E/],
    ["/probe//../admin", /empty path segment/],
    ["//admin", /empty path segment/],
    ["/probe%00", /control byte/],
    ["/probe%0a", /control byte/],
    ["/probe%zz", /malformed percent-escape/],
    ["/probe%2", /malformed percent-escape/],
    ["/a#frag", /fragment/],
    ["/a|b", /outside RFC 3986/],
    ["/a{b}", /outside RFC 3986/],
    ["*", /origin-form/],
    ["http://node/metrics", /origin-form/],
  ])("refuses %s", (raw, reason) => {
    const r = normalizeRequestTarget(raw);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(reason);
  });
});

/**
 * Issue 18, item 4: under the rule /actuator/prometheus*, nothing the exporter could resolve outside the rule gets
 * through. Tomcat cuts `;parameters` off each segment before it resolves dot segments (`..;` is `..`, `;x` is an
 * empty segment it merges away), and a second decoding turns `%252E` into a dot; every such form is refused.
 */
describe("path parameters and double encodings under a prefix rule", () => {
  const RULE = ["/actuator/prometheus*"];
  it.each([
    // What Tomcat resolves to /actuator/env (or above the rule):
    ["/actuator/prometheus/..;/env", /path parameters/],
    ["/actuator/prometheus/..;x=1/env", /path parameters/],
    ["/actuator/prometheus/%2e%2e;/env", /path parameters/],
    ["/actuator/prometheus/%2E%2E;/env", /path parameters/],
    ["/actuator/prometheus/.%2e;/env", /path parameters/],
    ["/actuator/prometheus/x/.;/../../env", /path parameters/],
    ["/actuator/prometheus/x/;/../../env", /path parameters/], // ;-only segment: empty to Tomcat, then merged
    ["/actuator/prometheus/;x/../../env", /path parameters/],
    // Encoded ; (not a parameter to Tomcat, but to whatever decodes first):
    ["/actuator/prometheus/%2E%2E%3B/env", /path parameters/],
    ["/actuator/prometheus/%2e%2e%3b/env", /path parameters/],
    ["/actuator/prometheus/..%3b/env", /path parameters/],
    ["/actuator/prometheus/..%3Bx/env", /path parameters/],
    // Matrix parameters on the matched prefix:
    ["/actuator;x=1/prometheus", /path parameters/],
    ["/actuator/prometheus;jsessionid=1", /path parameters/],
    ["/actuator/prometheus;", /path parameters/],
    ["/actuator/prometheus/x;y=2", /path parameters/],
    // Double encodings (a second decoding makes them separators):
    ["/actuator/prometheus/%252e%252e/env", /double-encoded/],
    ["/actuator/prometheus/%252E%252E%253B/env", /double-encoded/],
    ["/actuator/prometheus/..%252f..%252fenv", /double-encoded/],
    ["/actuator/prometheus/..%255cenv", /double-encoded/],
    ["/actuator/prometheus/%25252e%25252e/env", /double-encoded/],
    // Refused before (kept): backslash, encoded / and \, %2E dot segments, empty segments.
    ["/actuator/prometheus\\..\\env", /backslash/],
    ["/actuator/prometheus/..%5cenv", /encoded \/ or \\/],
    ["/actuator/prometheus/..%2fenv", /encoded \/ or \\/],
    ["/actuator/prometheus/%2e%2e/env", /dot segment spelled with %2E/],
    ["/actuator/prometheus//../env", /empty path segment/],
  ])("refuses %s", (raw, reason) => {
    const r = normalizeRequestTarget(raw);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(reason);
  });

  it.each([
    ["/actuator/prometheus", "/actuator/prometheus", true],
    ["/actuator/prometheus/", "/actuator/prometheus/", true],
    ["/actuator/prometheus/x", "/actuator/prometheus/x", true],
    ["/actuator/prometheus?a=1;b=2", "/actuator/prometheus", true], // ; in the query is the exporter's business
    ["/actuator/prometheus/a%25b", "/actuator/prometheus/a%25b", true], // an encoded % before a non-separator
    ["/actuator/prometheus/a%2541", "/actuator/prometheus/a%2541", true],
    ["/actuator/prometheus/a..b", "/actuator/prometheus/a..b", true],
    ["/actuator/prometheus/...", "/actuator/prometheus/...", true], // not a dot segment anywhere
    ["/actuator/prometheus/../env", "/actuator/env", false], // resolved here, then 404
    ["/actuator/prometheus/x/../../env", "/actuator/env", false],
  ])("%s is %s (allowed: %s)", (raw, path, allowed) => {
    const r = normalizeRequestTarget(raw);
    expect(r.ok && r.path).toBe(path);
    expect(pathAllowed(RULE, path)).toBe(allowed);
  });

  it("an exact rule is unchanged: /metrics only, and /metrics;x refused", () => {
    expect(normalizeRequestTarget("/metrics")).toEqual({ ok: true, path: "/metrics", query: "" });
    expect(pathAllowed(["/metrics"], "/metrics")).toBe(true);
    expect(normalizeRequestTarget("/metrics;x").ok).toBe(false);
    expect(normalizeRequestTarget("/metrics%3Bx").ok).toBe(false);
  });
});

describe("pathAllowed: exact rules, and trailing-* rules on segment boundaries", () => {
  it.each([
    [["/probe*"], "/probe", true],
    [["/probe*"], "/probe/", true],
    [["/probe*"], "/probe/x", true],
    [["/probe*"], "/probe/x/y", true],
    [["/probe*"], "/probex", false],
    [["/probe*"], "/probe-x", false],
    [["/probe*"], "/prob", false],
    [["/probe/*"], "/probe/x", true],
    [["/probe/*"], "/probe/", true],
    [["/probe/*"], "/probe", false],
    [["/*"], "/anything/at/all", true],
    [["/metrics"], "/metrics", true],
    [["/metrics"], "/metrics/", false],
    [["/metrics"], "/metricsx", false],
    [["/metrics", "/federate"], "/federate", true],
  ])("%j allows %s: %s", (rules, path, allowed) => {
    expect(pathAllowed(rules, path)).toBe(allowed);
  });
});

describe("path rules in the config must be in normal form", () => {
  const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-paths-"));
  writeFileSync(join(dir, "id.json"), "{}");
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const parse = (paths: string[]) =>
    parseBindConfig(
      { identity: "id.json", targets: [{ service: "s", upstream: "http://127.0.0.1:1", paths }] },
      "bind.yaml",
      dir,
      {},
    );

  it.each([
    ["/a/../b*", /targets\[0\]\.paths\[0\]: write it in normal form: \/b/],
    ["/a//b", /targets\[0\]\.paths\[0\]: an empty path segment/],
    ["/a%2fb", /targets\[0\]\.paths\[0\]: an encoded \//],
    ["/a\\b", /targets\[0\]\.paths\[0\]: a backslash/],
    ["/%7Ex", /write it in normal form: \/~x/],
    ["/actuator;x/prometheus*", /targets\[0\]\.paths\[0\]: a ; or %3B \(path parameters\)/],
  ])("rejects %s", (p, msg) => {
    expect(() => parse([p])).toThrow(msg);
  });

  it("accepts normal rules", () => {
    expect(parse(["/metrics", "/probe*", "/probe/*", "/*"]).targets[0]!.paths).toHaveLength(4);
  });
});

describe("the bind server matches and forwards the normalized path", () => {
  let upstream: http.Server;
  const seen: string[] = [];
  const audit: Record<string, unknown>[] = [];
  let ov: FakeOverlay;
  let bs: BindServer;
  const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-paths-srv-"));
  writeFileSync(join(dir, "id.json"), "{}");

  beforeAll(async () => {
    upstream = http.createServer((req, res) => {
      seen.push(req.url ?? "");
      res.end(`upstream saw ${req.url}\n`);
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;
    ov = new FakeOverlay();
    bs = new BindServer(
      ov,
      parseBindConfig(
        {
          identity: "id.json",
          targets: [
            { service: "app", upstream: url, paths: ["/metrics", "/probe*"] },
            { service: "boot", upstream: url, paths: ["/actuator/prometheus*"] },
          ],
        },
        "bind.yaml",
        dir,
        {},
      ),
      createLogger("info", {}, (l) => audit.push(JSON.parse(l) as Record<string, unknown>)),
    );
    await bs.start();
  });

  afterAll(async () => {
    await bs?.close();
    upstream?.closeAllConnections();
    upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Sends the raw request target as written (http.request would not pass every byte through). */
  async function raw(target: string, service = "app"): Promise<{ status: number; body: string }> {
    const c = ov.dial(service);
    const done = collect(c);
    c.write(`GET ${target} HTTP/1.1\r\nHost: ${service}\r\nConnection: close\r\n\r\n`);
    const { text } = await done;
    const m = /^HTTP\/1\.1 (\d+) [^\r]*\r\n[\s\S]*?\r\n\r\n([\s\S]*)$/.exec(text);
    if (!m) throw new Error(`not an HTTP answer: ${JSON.stringify(text)}`);
    return { status: Number(m[1]), body: m[2]! };
  }

  it.each([
    ["/probe/../admin", 404, /does not expose \/admin \(allowed: \/metrics, \/probe\*\)/],
    ["/probex", 404, /does not expose \/probex/],
    ["/probe-x", 404, /does not expose \/probe-x/],
    ["/probe/..%2f..%2fadmin", 400, /ambiguous request path: an encoded \/ or \\/],
    ["/probe\\..\\admin", 400, /ambiguous request path: a backslash/],
    ["/probe/%2e%2e/admin", 400, /ambiguous request path: a dot segment spelled with %2E/],
    ["/probe//x", 400, /ambiguous request path: an empty path segment/],
    ["/probe%00", 400, /ambiguous request path: an encoded control byte/],
  ])("%s: %d, one line, the upstream not asked", async (target, status, body) => {
    const before = seen.length;
    const r = await raw(target);
    expect(r.status).toBe(status);
    expect(r.body).toMatch(body);
    expect(r.body).toMatch(/^scrapez bind: service "app"[^\n]*\n$/);
    expect(seen.length).toBe(before);
  });

  // Issue 18, item 4: a Spring Boot exporter behind /actuator/prometheus* never sees what Tomcat reads as
  // /actuator/env; the scraper gets the 400 and the audit line says why.
  it.each([
    ["/actuator/prometheus/..;/env", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus/%2e%2e;/env", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus/%2E%2E%3B/env", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus/..%3b/env", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus/.;/../env", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus/x/;/../../env", /a ; or %3B \(path parameters\)/],
    ["/actuator;x=1/prometheus", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus;jsessionid=1", /a ; or %3B \(path parameters\)/],
    ["/actuator/prometheus/%252e%252e/env", /a double-encoded/],
  ])("%s: 400, the upstream not asked, the audit line names the reason", async (target, reason) => {
    const before = seen.length;
    const r = await raw(target, "boot");
    expect(r.status).toBe(400);
    expect(r.body).toMatch(/^scrapez bind: service "boot": ambiguous request path: [^\n]*\n$/);
    expect(r.body).toMatch(reason);
    expect(seen.length).toBe(before);
    // The audit line is written when the exchange closes, which may be just after the answer arrived.
    await vi.waitFor(() => expect(audit.some((l) => l.msg === "scrape" && l.path === target)).toBe(true));
    expect(audit.find((l) => l.msg === "scrape" && l.path === target)).toMatchObject({
      service: "boot",
      status: 400,
      path_refused: expect.stringMatching(reason),
    });
  });

  it("the Spring Boot rule still serves its own path", async () => {
    const r = await raw("/actuator/prometheus", "boot");
    expect(r.status).toBe(200);
    expect(seen.at(-1)).toBe("/actuator/prometheus");
  });

  it.each([
    ["/probe", "/probe"],
    ["/probe/x?target=a%2Fb", "/probe/x?target=a%2Fb"],
    ["/probe/./a/../b", "/probe/b"],
    ["/%70robe/%7Ex", "/probe/~x"],
    ["/probe/a%3fb", "/probe/a%3Fb"],
    ["/metrics/../probe/z", "/probe/z"],
  ])("%s reaches the exporter as %s", async (target, forwarded) => {
    const r = await raw(target);
    expect(r.status).toBe(200);
    expect(r.body).toBe(`upstream saw ${forwarded}\n`);
    expect(seen.at(-1)).toBe(forwarded);
  });
});
