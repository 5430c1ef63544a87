/**
 * Issue 9, item 9: request paths are normalized before they are matched, prefix rules match on segment boundaries,
 * ambiguous paths get a one-line 400, and the exporter is sent the normalized path (never the raw one).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
        { identity: "id.json", targets: [{ service: "app", upstream: url, paths: ["/metrics", "/probe*"] }] },
        "bind.yaml",
        dir,
        {},
      ),
      createLogger("error"),
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
  async function raw(target: string): Promise<{ status: number; body: string }> {
    const c = ov.dial("app");
    const done = collect(c);
    c.write(`GET ${target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n`);
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
