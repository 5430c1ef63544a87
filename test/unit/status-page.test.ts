/**
 * `/status` and `/status.json` of `scrapez proxy` over the in-memory overlay stand-in (real HTTP, real upstream
 * servers): what a forwarded scrape records (status, the bind side's error text, the proxy's own failures, bytes,
 * who scraped), auth, filters without JavaScript, and above all escaping: service names and error texts come
 * from peers, so a `<script>` in either must arrive as text, never as markup. The real overlay, a real Prometheus
 * and a real Chromium are test/integration/status.test.ts.
 */
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nameToHost } from "../../src/common/naming.js";
import type { StatusDocument, TargetRow } from "../../src/proxy/status/json.js";
import { esc, renderPage, sparkline } from "../../src/proxy/status/page.js";
import { errorText } from "../../src/proxy/status/service.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import { StandInOverlay, Upstream, request, startProxy, testDir, type Running } from "../harness/proxy-standin.js";

const EVIL = `<script>alert("pwned")</script>`;
const EVIL_NAME = `evil${EVIL}`;
const METRICS = "# TYPE up gauge\nup 1\n";
const td = testDir();
const overlay = new StandInOverlay("prometheus-central");
let up: Upstream;
let p: Running;
const token = "t0ken-for-status";
const auth = { authorization: `Bearer ${token}` };

beforeAll(async () => {
  up = await new Upstream((req, res) => {
    const u = req.url ?? "/";
    if (u.startsWith("/down")) {
      res.writeHead(502, { "content-type": "text/plain" });
      return void res.end(
        `scrapez bind: service "app": upstream http://127.0.0.1:1 refused the connection (is the exporter running?) (ECONNREFUSED)\n`,
      );
    }
    if (u.startsWith("/evil")) {
      res.writeHead(500, { "content-type": "text/html" });
      return void res.end(`${EVIL} and more`);
    }
    if (u.startsWith("/gz")) {
      res.writeHead(503, { "content-type": "text/plain", "content-encoding": "gzip" });
      return void res.end(gzipSync(Buffer.from("exporter is warming up\n")));
    }
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end(METRICS);
  }).start();
  overlay.add("app", { port: up.port, attrs: ["app", "team-a"] });
  overlay.add(EVIL_NAME, { port: up.port, attrs: [`x"><img src=x onerror=alert(1)>`] });
  overlay.add("nodial", { attrs: [] }); // no route: the stand-in's dial fails
  overlay.add("quiet", { port: up.port });
  overlay.replicaMap.set("app", ["bind-a"]);
  overlay.routes.set("bind-a~app", up.port);
  overlay.fail.set("nodial", new ZitiError(ErrorCodes.DIAL_FAILED, "dial nodial failed: service has no terminators"));
  p = await startProxy(td.dir, [overlay], {
    auth: { bearerTokenFile: td.file("token", token), basic: { username: "ops", passwordFile: td.file("pw", "pw1") } },
  });
});

afterAll(async () => {
  await p?.close();
  await up?.close();
  td.remove();
});

async function statusJson(query = ""): Promise<StatusDocument> {
  const r = await request(p.port, `/status.json${query}`, { headers: auth });
  expect(r.status).toBe(200);
  expect(r.headers["content-type"]).toMatch(/^application\/json/);
  return JSON.parse(r.text) as StatusDocument;
}

const rowOf = (doc: StatusDocument, service: string, replica: string | null = null): TargetRow | undefined =>
  doc.targets.find((t) => t.service === service && t.replica === replica);

describe("/status and /status.json on scrapez proxy", () => {
  it("are behind the same auth as /sd and /metrics", async () => {
    for (const path of ["/status", "/status.json"]) {
      expect((await request(p.port, path)).status).toBe(401);
      expect((await request(p.port, path, { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
    }
    const basic = `Basic ${Buffer.from("ops:pw1").toString("base64")}`;
    expect((await request(p.port, "/status", { headers: { authorization: basic } })).status).toBe(200);
  });

  it("lists every discovered target before any scrape, all never scraped", async () => {
    const doc = await statusJson();
    expect(doc.targets.map((t) => [t.service, t.replica, t.state])).toEqual([
      ["app", "bind-a", "never"],
      [EVIL_NAME, null, "never"],
      ["nodial", null, "never"],
      ["quiet", null, "never"],
    ]);
    expect(rowOf(doc, "app", "bind-a")!.attributes).toEqual(["app", "team-a"]);
  });

  it("records forwarded scrapes: status, bytes, who scraped, the bind side's error text, the proxy's own failures", async () => {
    const ua = { ...auth, "user-agent": "Prometheus/2.42.0" };
    expect((await request(p.port, "http://bind-a~app/metrics", { headers: ua })).status).toBe(200);
    expect((await request(p.port, `http://${nameToHost(EVIL_NAME)}/evil`, { headers: ua })).status).toBe(500);
    expect((await request(p.port, "http://nodial/metrics", { headers: ua })).status).toBe(502);
    const basic = `Basic ${Buffer.from("ops:pw1").toString("base64")}`;
    expect((await request(p.port, "/scrape/quiet/gz", { headers: { authorization: basic } })).status).toBe(503);
    const doc = await statusJson();
    expect(doc.targets.map((t) => t.state)).toEqual(["failing", "failing", "failing", "ok"]);
    const app = rowOf(doc, "app", "bind-a")!;
    expect(app).toMatchObject({
      state: "ok",
      lastStatus: 200,
      lastError: null,
      lastBytes: METRICS.length,
      scrapedBy: { principal: "bearer", address: "127.0.0.1", userAgent: "Prometheus/2.42.0" },
      window: { scrapes: 1, failures: 0, bytes: METRICS.length, avgBytes: METRICS.length },
    });
    expect(app.window.p50Ms).toBeGreaterThanOrEqual(0);
    expect(rowOf(doc, EVIL_NAME)).toMatchObject({ lastStatus: 500, lastError: `${EVIL} and more` });
    expect(rowOf(doc, "nodial")!.lastError).toMatch(
      /^scrapez proxy: service "nodial" via identity "prometheus-central" is unreachable: dial nodial failed/,
    );
    // A gzip-encoded error body is decoded; basic auth's user is the principal.
    expect(rowOf(doc, "quiet")).toMatchObject({
      lastError: "exporter is warming up",
      scrapedBy: { principal: "basic:ops" },
    });
  });

  it("keeps the first ~300 characters of an error body, on one line", async () => {
    expect(errorText(Buffer.from(`line one\nline two ${"y".repeat(5000)}`), undefined, 502)).toMatch(
      /^line one line two y{280,}…$/,
    );
    expect(errorText(Buffer.alloc(0), undefined, 502)).toBe("HTTP 502 with an empty body");
    expect(errorText(Buffer.from("zz"), "br", 502)).toBe("HTTP 502 (br-encoded body)");
  });

  it("does not record a replica name the catalog does not know, nor a service that is not dialable", async () => {
    const before = p.proxy.status.recorder.size;
    for (let i = 0; i < 20; i++) await request(p.port, `http://made-up-${i}~app/metrics`, { headers: auth });
    await request(p.port, "http://no-such-service/metrics", { headers: auth });
    expect(p.proxy.status.recorder.size).toBe(before);
    const doc = await statusJson();
    expect(doc.targets.some((t) => (t.replica ?? "").startsWith("made-up"))).toBe(false);
  });

  it("the page escapes peer-controlled names and error texts: only the page's own script is a script", async () => {
    const r = await request(p.port, "/status", { headers: auth });
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("text/html; charset=utf-8");
    const html = r.text;
    expect(html).not.toContain(EVIL);
    expect(html).not.toContain("<img");
    expect(html.match(/<script/g)).toHaveLength(1);
    expect(html).toContain(`evil&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;`);
    expect(html).toContain(`&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; and more`);
    expect(html).toContain(`#x&quot;&gt;&lt;img src=x onerror=alert(1)&gt;`);
    // The CSP allows exactly that one (nonce'd) script and no other origin.
    const nonce = /<script nonce="([^"]+)">/.exec(html)![1]!;
    expect(r.headers["content-security-policy"]).toContain(`script-src 'nonce-${nonce}'`);
    expect(r.headers["content-security-policy"]).toContain("default-src 'none'");
    // No external assets: no src= or href= to another origin, no stylesheet links.
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//);
    expect(html.match(/<link [^>]*>/g)).toEqual(['<link rel="icon" href="data:,">']); // no favicon request
  });

  it("filters by name and state through query parameters (works without JavaScript)", async () => {
    const failing = (await request(p.port, "/status?state=failing", { headers: auth })).text;
    expect(failing.match(/<tr class="target /g)).toHaveLength(3);
    expect(failing).not.toContain('data-state="ok"');
    expect(failing).toContain('<option value="failing" selected>');
    const named = (await request(p.port, "/status?q=QUIET", { headers: auth })).text;
    expect(named.match(/<tr class="target /g)).toHaveLength(1);
    expect(named).toContain('value="QUIET"');
    const doc = await statusJson("?q=app&state=ok");
    expect(doc.targets.map((t) => t.host)).toEqual(["bind-a~app"]);
    expect(doc.filter).toEqual({ q: "app", state: ["ok"] });
  });

  it("/status is listed in the 404 help and counted in the self-metrics", async () => {
    expect((await request(p.port, "/nope", { headers: auth })).text).toMatch(/\/status\)/);
    const m = await request(p.port, "/metrics", { headers: auth });
    expect(m.text).toMatch(/scrapez_proxy_requests_total\{service="\/status",code="200"\} \d+/);
  });
});

describe("renderPage", () => {
  const doc = (targets: Partial<TargetRow>[]): StatusDocument => ({
    version: 1,
    generatedAt: "2026-01-01T00:00:00.000Z",
    proxy: {
      identities: [
        {
          name: `id<b>`,
          controller: "https://127.0.0.1:1280/edge/client/v1",
          routers: [{ routerId: `r<i>1`, url: "tls://127.0.0.1:3022", state: "open", latencyMs: 0.4 }],
        },
      ],
      serviceList: { loaded: true, ready: true, refreshedAt: "2025-12-31T23:59:48.000Z", ageSeconds: 12, error: null },
    },
    window: { seconds: 300, sparkBucketSeconds: 10 },
    filter: { q: `"><script>`, state: [] },
    summary: { targets: targets.length, ok: 0, failing: 0, never: 0, matched: targets.length, shown: targets.length },
    targets: targets.map((t) => ({
      service: "s",
      replica: null,
      host: "s",
      attributes: [],
      identity: "id",
      discovered: true,
      state: "never",
      lastScrape: null,
      lastStatus: null,
      lastError: null,
      lastDurationMs: null,
      lastBytes: null,
      scrapedBy: null,
      window: { scrapes: 0, failures: 0, p50Ms: null, p99Ms: null, bytes: 0, avgBytes: null },
      spark: { ms: new Array(30).fill(null), failed: new Array(30).fill(false) },
      ...t,
    })),
  });

  it("escapes every peer-controlled field: identity, router id, filter value, principal, user agent", () => {
    const html = renderPage(
      doc([
        {
          state: "failing",
          scrapedBy: { principal: `bearer:<script>`, address: "127.0.0.1", userAgent: `"><script>` },
          lastError: "</td><script>x</script>",
        },
      ]),
      { nonce: "abc" },
    );
    expect(html.match(/<script/g)).toHaveLength(1);
    expect(html).toContain("id&lt;b&gt;");
    expect(html).toContain("r&lt;i&gt;1");
    expect(html).toContain('value="&quot;&gt;&lt;script&gt;"');
    expect(html).toContain("bearer:&lt;script&gt;");
    expect(html).toContain("&lt;/td&gt;&lt;script&gt;x&lt;/script&gt;");
    expect(html).toContain('<time class="ago" datetime="2025-12-31T23:59:48.000Z"');
    expect(html).toContain("12 s ago");
  });

  it("says so when nothing is discovered, and draws a sparkline only with samples", () => {
    expect(renderPage(doc([]), { nonce: "n" })).toContain("no targets discovered (yet)");
    const none = { ms: new Array(30).fill(null), failed: new Array(30).fill(false) };
    expect(sparkline(none)).toContain("no scrapes");
    const ms = new Array(30).fill(null);
    ms[3] = 10;
    ms[4] = 20;
    ms[10] = 5;
    const failed = new Array(30).fill(false);
    failed[10] = true;
    const svg = sparkline({ ms, failed });
    expect(svg.match(/<polyline/g)).toHaveLength(2); // a gap splits the line
    expect(svg.match(/<rect/g)).toHaveLength(1);
    expect(svg).toMatch(/^<svg class="spark"/);
  });

  it("esc() escapes the five HTML specials", () => {
    expect(esc(`<a href='x'>&"`)).toBe("&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
    expect(esc(null)).toBe("");
  });
});
