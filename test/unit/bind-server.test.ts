/**
 * The bind side's HTTP logic, with an in-memory stand-in for the overlay: each "overlay connection" is one end of an
 * in-process Duplex pair handed to the listener's "connection" event, exactly as the SDK hands a ZitiConnection.
 * Upstreams are real: a local HTTP server and a real node_exporter on runtime-chosen loopback ports.
 * (The proof over the real overlay is test/integration/bind.test.ts.)
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseBindConfig, type BindConfig } from "../../src/bind/config.js";
import { BindServer } from "../../src/bind/server.js";
import { createLogger } from "../../src/common/log.js";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { FakeOverlay } from "../harness/bind-standin.js";
import { freePort, waitUntil } from "../harness/ports.js";

// ---------------------------------------------------------------------------------------------------------------
// The stand-in overlay

/** Callers whose proofs the stand-in SDK "verified", with their keys' pins. */
const PROM_PIN = `sha256:${"p".repeat(43)}`;
const VERIFIED_KEYS: Record<string, string> = { prom: PROM_PIN, verified: `sha256:${"v".repeat(43)}` };

interface Resp {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  ms: number;
}

/** One HTTP request over a stand-in overlay connection. */
function scrape(
  overlay: FakeOverlay,
  service: string,
  caller: string | undefined,
  path = "/metrics",
  opts: { method?: string; headers?: Record<string, string> } = {},
): Promise<Resp> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: service,
        path,
        method: opts.method ?? "GET",
        headers: opts.headers ?? {},
        createConnection: () => overlay.dial(service, caller) as unknown as import("node:net").Socket,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (d: Buffer) => chunks.push(d));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            ms: Date.now() - started,
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Fixtures: real upstreams on runtime-chosen loopback ports

const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-unit-"));
writeFileSync(join(dir, "id.json"), "{}");

const OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN_BODY = "# TYPE app_up gauge\napp_up 1\n";
const GZ_BODY = gzipSync(Buffer.from("# TYPE app_zipped gauge\napp_zipped 1\n"));

let exporter: NodeExporter;
let app: http.Server;
let appUrl: string;
let appHits = 0;
const logLines: Record<string, unknown>[] = [];
const log = createLogger("debug", { component: "bind" }, (l) => logLines.push(JSON.parse(l) as never));

function listenLocal(handler: http.RequestListener): Promise<{ server: http.Server; url: string }> {
  return new Promise((resolve) => {
    const server = http.createServer(handler);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as import("node:net").AddressInfo;
      resolve({ server, url: `http://127.0.0.1:${port}` });
    });
  });
}

function closeServer(s: http.Server): Promise<void> {
  s.closeAllConnections();
  return new Promise((r) => s.close(() => r()));
}

function config(targets: object[], extra: object = {}): BindConfig {
  return parseBindConfig({ identity: "id.json", targets, ...extra }, "bind.yaml", dir, {});
}

beforeAll(async () => {
  exporter = await NodeExporter.start();
  ({ server: app, url: appUrl } = await listenLocal((req, res) => {
    appHits++;
    if (req.url?.split("?")[0] === "/metrics") {
      res.writeHead(200, { "content-type": OPENMETRICS, "x-app": "kept" });
      res.end(PLAIN_BODY);
    } else if (req.url === "/zipped") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4", "content-encoding": "gzip" });
      res.end(GZ_BODY);
    } else if (req.url === "/probe/ping") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("pong\n");
    } else if (req.url?.startsWith("/echo")) {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(req.url);
    } else if (req.url?.startsWith("/slow")) {
      const t = setTimeout(() => res.end("late\n"), 5_000);
      res.on("close", () => clearTimeout(t));
    } else {
      res.writeHead(418, { "content-type": "text/plain" });
      res.end("teapot\n");
    }
  }));
}, 60_000);

afterAll(async () => {
  await exporter?.close();
  if (app) await closeServer(app);
  rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------------------------

describe("bind server over a stand-in overlay", () => {
  let overlay: FakeOverlay;
  let server: BindServer;

  beforeAll(async () => {
    overlay = new FakeOverlay(VERIFIED_KEYS);
    server = new BindServer(
      overlay,
      config([
        { service: "node", upstream: exporter.url, allow: { identities: ["prom"], keys: { prom: PROM_PIN } } },
        { service: "app", upstream: appUrl, paths: ["/metrics", "/zipped", "/slow", "/probe/*", "/teapot", "/echo"] },
        { service: "slow", upstream: appUrl, paths: ["/slow"], timeoutSeconds: 1 },
        { service: "down", upstream: `http://127.0.0.1:${await freePort()}` },
      ]),
      log,
    );
    await server.start();
  });

  afterAll(async () => {
    await server?.close();
  });

  it("binds every target, with an addressable terminator when bindUsingEdgeIdentity (the default) is on", () => {
    const node = overlay.calls.filter((c) => c.service === "node");
    expect(node.map((c) => Boolean(c.opts.bindUsingEdgeIdentity)).sort()).toEqual([false, true]);
    expect(server.status()).toEqual({
      ready: true,
      services: {
        node: { state: "bound" },
        app: { state: "bound" },
        slow: { state: "bound" },
        down: { state: "bound" },
      },
    });
  });

  it("serves a real node_exporter: 200, Content-Type unchanged, the same metric families as a direct scrape", async () => {
    const r = await scrape(overlay, "node", "prom");
    expect(r.status).toBe(200);
    const direct = await fetch(`${exporter.url}/metrics`);
    expect(r.headers["content-type"]).toBe(direct.headers.get("content-type"));
    expect(r.headers["content-type"]).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(metricNames(r.body.toString())).toEqual(metricNames(await direct.text()));
  });

  it("passes node_exporter's gzip through without decompressing it", async () => {
    const r = await scrape(overlay, "node", "prom", "/metrics", { headers: { "accept-encoding": "gzip" } });
    expect(r.status).toBe(200);
    expect(r.headers["content-encoding"]).toBe("gzip");
    expect(r.body.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    expect(gunzipSync(r.body).toString()).toMatch(/^# HELP node_/m);
  });

  it("passes status, headers and an already-compressed body through byte for byte", async () => {
    const plain = await scrape(overlay, "app", "anyone");
    expect(plain.status).toBe(200);
    expect(plain.headers["content-type"]).toBe(OPENMETRICS);
    expect(plain.headers["x-app"]).toBe("kept");
    expect(plain.body.toString()).toBe(PLAIN_BODY);

    const zipped = await scrape(overlay, "app", "anyone", "/zipped", { headers: { "accept-encoding": "gzip" } });
    expect(zipped.headers["content-encoding"]).toBe("gzip");
    expect(zipped.body.equals(GZ_BODY)).toBe(true);

    const teapot = await scrape(overlay, "app", "anyone", "/teapot");
    expect(teapot.status).toBe(418);
    expect(teapot.body.toString()).toBe("teapot\n");
  });

  it("matches a trailing-* path as a prefix and passes the query string on", async () => {
    expect((await scrape(overlay, "app", "x", "/probe/ping")).body.toString()).toBe("pong\n");
    const r = await scrape(overlay, "app", "x", "/echo?match[]=up");
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe("/echo?match[]=up");
  });

  it("answers 404 for a path outside `paths`, without touching the upstream", async () => {
    const before = appHits;
    const r = await scrape(overlay, "app", "anyone", "/debug/pprof");
    expect(r.status).toBe(404);
    expect(r.headers["content-type"]).toMatch(/^text\/plain/);
    expect(r.body.toString()).toMatch(/^scrapez bind: service "app" does not expose \/debug\/pprof.*\n$/);
    expect(r.body.toString().trim().split("\n")).toHaveLength(1);
    expect(appHits).toBe(before);
  });

  it("answers 403 to an unverified caller, even one claiming an allowed name, and to a verified one not listed", async () => {
    for (const caller of ["outsider", undefined]) {
      const r = await scrape(overlay, "node", caller);
      expect(r.status).toBe(403);
      expect(r.body.toString()).toMatch(/^scrapez bind: service "node" admits only verified callers .*unverified.*\n$/);
    }
    // A caller that only claims the allowed name (the SDK verified no proof for it).
    overlay.unverified = true;
    const forged = await scrape(overlay, "node", "prom").finally(() => (overlay.unverified = false));
    expect(forged.status).toBe(403);
    expect(forged.body.toString()).toMatch(/this caller \(claims "prom"\) is unverified/);
    const other = await scrape(overlay, "node", "verified");
    expect(other.status).toBe(403);
    expect(other.body.toString()).toMatch(
      /^scrapez bind: caller key sha256:v+ \(claims "verified"\) is verified but not allowed/,
    );
    const audit = logLines.filter((l) => l.msg === "scrape" && l.service === "node" && l.status === 403);
    expect(audit.map((l) => [l.caller, l.claimed, l.verified_by])).toEqual(
      expect.arrayContaining([
        ["unverified", "outsider", "none"],
        ["unverified", "prom", "none"],
        [VERIFIED_KEYS.verified, "verified", "proof"],
      ]),
    );
    const text = await server.metrics.registry.getSingleMetricAsString("scrapez_bind_scrapes_total");
    const callers = new Set([...text.matchAll(/caller="([^"]*)"/g)].map((m) => m[1]));
    expect([...callers].sort()).toEqual(["any", "not-allowed", "prom", "unverified"].filter((c) => callers.has(c)));
    expect(callers.has("outsider")).toBe(false);
  });

  it("answers 405 to methods other than GET and HEAD; HEAD works", async () => {
    const post = await scrape(overlay, "app", "x", "/metrics", { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe("GET, HEAD");
    const head = await scrape(overlay, "app", "x", "/metrics", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers["content-type"]).toBe(OPENMETRICS);
    expect(head.body.length).toBe(0);
  });

  it("answers 502 naming the service and ECONNREFUSED when nothing listens upstream", async () => {
    const r = await scrape(overlay, "down", "x");
    expect(r.status).toBe(502);
    expect(r.body.toString()).toMatch(
      /^scrapez bind: service "down": upstream http:\/\/127\.0\.0\.1:\d+ refused the connection.*\(ECONNREFUSED\)\n$/,
    );
  });

  it("answers 502 once an upstream that was serving is stopped", async () => {
    const { server: up, url } = await listenLocal((_q, s) => s.end("ok\n"));
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const bs = new BindServer(ov, config([{ service: "gone", upstream: url }]), log);
    await bs.start();
    try {
      expect((await scrape(ov, "gone", "x")).status).toBe(200);
      await closeServer(up);
      await new Promise((r) => setTimeout(r, 50)); // let the keep-alive socket's close reach the agent
      const r = await scrape(ov, "gone", "x");
      expect(r.status).toBe(502);
      expect(r.body.toString()).toContain(`service "gone": upstream ${url}`);
    } finally {
      await bs.close();
    }
  });

  it("answers 504 a little before X-Prometheus-Scrape-Timeout-Seconds", async () => {
    const r = await scrape(overlay, "app", "x", "/slow", { headers: { "x-prometheus-scrape-timeout-seconds": "1" } });
    expect(r.status).toBe(504);
    expect(r.ms).toBeGreaterThanOrEqual(400);
    expect(r.ms).toBeLessThan(1000);
    expect(r.body.toString()).toMatch(/^scrapez bind: service "app": upstream .* did not answer within 0\.5s\n$/);
  });

  it("answers 504 after the target's timeoutSeconds when the scraper sends no timeout header", async () => {
    const r = await scrape(overlay, "slow", "x", "/slow");
    expect(r.status).toBe(504);
    expect(r.ms).toBeGreaterThanOrEqual(900);
    expect(r.ms).toBeLessThan(2500);
  });

  it("writes one audit line per scrape with caller, service, path, status, bytes and duration", async () => {
    logLines.length = 0;
    const r = await scrape(overlay, "app", "prom-a", "/metrics?x=1");
    const line = await waitUntil(
      () => logLines.find((l) => l.msg === "scrape" && l.claimed === "prom-a"),
      5_000,
      "the audit line",
    );
    // No allow-list on "app": admitted, but the audit does not take the claimed name for the caller.
    expect(line).toMatchObject({ level: "info", service: "app", path: "/metrics", status: 200 });
    expect(line).toMatchObject({ caller: "unverified", claimed: "prom-a", verified_by: "none" });
    expect(line.bytes).toBe(r.body.length);
    expect(typeof line.duration_ms).toBe("number");
    expect(typeof line.time).toBe("string");
    expect(logLines.filter((l) => l.msg === "scrape")).toHaveLength(1);
  });

  it("counts scrapes, durations and upstream errors in its private registry", async () => {
    const text = await server.metrics.registry.metrics();
    expect(text).toMatch(/scrapez_bind_scrapes_total\{service="node",caller="prom",status="200"\} [1-9]/);
    expect(text).toMatch(/scrapez_bind_scrapes_total\{service="node",caller="unverified",status="403"\} [1-9]/);
    expect(text).toMatch(/scrapez_bind_scrapes_total\{service="app",caller="any",status="200"\} [1-9]/);
    expect(text).toMatch(/scrapez_bind_upstream_errors_total\{service="down",kind="refused"\} [1-9]/);
    expect(text).toMatch(/scrapez_bind_upstream_errors_total\{service="slow",kind="timeout"\} [1-9]/);
    expect(text).toMatch(/scrapez_bind_scrape_duration_seconds_count\{service="app"\} [1-9]/);
    expect(text).toMatch(/scrapez_bind_bound\{service="node"\} 1/);
  });
});

describe("bind server state, self-metrics and reload", () => {
  it("is not ready before start() has bound anything: every configured target reads as binding", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const bs = new BindServer(ov, config([{ service: "early", upstream: appUrl }]), log);
    try {
      expect(bs.status()).toEqual({ ready: false, services: { early: { state: "binding" } } });
      await bs.start();
      expect(bs.status()).toEqual({ ready: true, services: { early: { state: "bound" } } });
    } finally {
      await bs.close();
    }
  });

  it("reports a service that cannot bind as failed (not ready) and the rest as bound", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    ov.refuse.add("nope");
    const bs = new BindServer(
      ov,
      config([
        { service: "ok", upstream: appUrl },
        { service: "nope", upstream: appUrl },
      ]),
      log,
    );
    await bs.start();
    try {
      const s = bs.status();
      expect(s.ready).toBe(false);
      expect(s.services.ok).toEqual({ state: "bound" });
      expect(s.services.nope).toMatchObject({
        state: "failed",
        lastError: expect.stringMatching(/no Bind permission/),
      });
    } finally {
      await bs.close();
    }
  });

  it("follows a listener losing and regaining its routers, and counts the rebind", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const bs = new BindServer(ov, config([{ service: "svc", upstream: appUrl, bindUsingEdgeIdentity: false }]), log);
    let changes = 0;
    bs.onChange(() => changes++);
    await bs.start();
    try {
      const [l] = ov.open("svc");
      l!.state = "rebinding";
      l!.emit("unbound", "router gone");
      expect(bs.status()).toEqual({
        ready: false,
        services: { svc: { state: "rebinding", lastError: "router gone" } },
      });
      l!.state = "bound";
      l!.emit("bound");
      expect(bs.status().ready).toBe(true);
      expect(changes).toBeGreaterThanOrEqual(3);
      const text = await bs.metrics.registry.metrics();
      expect(text).toMatch(/scrapez_bind_(rebinds|reconnects)_total\{service="svc"\} 1/);
    } finally {
      await bs.close();
    }
  });

  it("serves its own metrics as the `self` overlay service, never on a port", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const bs = new BindServer(
      ov,
      config([{ service: "svc", upstream: appUrl }], { self: { service: "scrapez-self" } }),
      log,
    );
    await bs.start();
    try {
      await scrape(ov, "svc", "prom");
      const r = await scrape(ov, "scrapez-self", "prom");
      expect(r.status).toBe(200);
      expect(r.headers["content-type"]).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(r.body.toString()).toMatch(/scrapez_bind_scrapes_total\{service="svc",caller="any",status="200"\} 1/);
      expect(r.body.toString()).not.toMatch(/^process_cpu/m); // private registry: no global default metrics
      expect((await scrape(ov, "scrapez-self", "prom", "/other")).status).toBe(404);
    } finally {
      await bs.close();
    }
  });

  it("applies self.allow to the self-metrics service: only a verified, pinned caller", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const self = { service: "scrapez-self", allow: { identities: ["prom"], keys: { prom: PROM_PIN } } };
    const bs = new BindServer(ov, config([{ service: "svc", upstream: appUrl }], { self }), log);
    await bs.start();
    try {
      expect((await scrape(ov, "scrapez-self", "prom")).status).toBe(200);
      expect((await scrape(ov, "scrapez-self", "verified")).status).toBe(403);
      ov.unverified = true;
      const forged = await scrape(ov, "scrapez-self", "prom");
      expect(forged.status).toBe(403);
      expect(forged.body.toString()).toMatch(/"scrapez-self" admits only verified callers/);
    } finally {
      await bs.close();
    }
  });

  it("reload: binds added targets, unbinds removed ones, re-binds changed ones, leaves unchanged ones alone", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const t = (service: string, extra: object = {}) => ({ service, upstream: appUrl, ...extra });
    const bs = new BindServer(ov, config([t("keep"), t("drop"), t("edit")]), log);
    await bs.start();
    try {
      const keep = ov.open("keep");
      const drop = ov.open("drop");
      const edit = ov.open("edit");
      expect(keep).toHaveLength(2);

      const d = await bs.apply(config([t("keep"), t("edit", { paths: ["/zipped"] }), t("new")]));
      expect(d).toEqual({ added: ["new"], removed: ["drop"], changed: ["edit"] });
      expect(keep.every((l) => !l.closed)).toBe(true);
      expect(ov.open("keep")).toEqual(keep);
      expect(drop.every((l) => l.closed)).toBe(true);
      expect(edit.every((l) => l.closed)).toBe(true);
      expect(ov.open("edit")).toHaveLength(2);
      expect(ov.open("new")).toHaveLength(2);
      expect(Object.keys(bs.status().services).sort()).toEqual(["edit", "keep", "new"]);

      // The changed target serves with its new config; the removed one is gone from the metrics.
      expect((await scrape(ov, "edit", "x", "/metrics")).status).toBe(404);
      expect((await scrape(ov, "edit", "x", "/zipped")).status).toBe(200);
      expect((await scrape(ov, "keep", "x")).status).toBe(200);
      expect(await bs.metrics.registry.metrics()).not.toMatch(/scrapez_bind_bound\{service="drop"\}/);

      // Applying the same config again changes nothing.
      const listenCalls = ov.calls.length;
      expect(await bs.apply(config([t("keep"), t("edit", { paths: ["/zipped"] }), t("new")]))).toEqual({
        added: [],
        removed: [],
        changed: [],
      });
      expect(ov.calls.length).toBe(listenCalls);
    } finally {
      await bs.close();
    }
  });

  it("reload: refuses an identity change and keeps serving", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const bs = new BindServer(ov, config([{ service: "svc", upstream: appUrl }]), log);
    await bs.start();
    try {
      writeFileSync(join(dir, "other.json"), "{}");
      const other = parseBindConfig(
        { identity: "other.json", targets: [{ service: "svc", upstream: appUrl }] },
        "bind.yaml",
        dir,
        {},
      );
      await expect(bs.apply(other)).rejects.toThrow(/identity changed/);
      expect((await scrape(ov, "svc", "x")).status).toBe(200);
    } finally {
      await bs.close();
    }
  });

  it("close() unbinds every listener", async () => {
    const ov = new FakeOverlay(VERIFIED_KEYS);
    const bs = new BindServer(ov, config([{ service: "a", upstream: appUrl }], { self: { service: "self" } }), log);
    await bs.start();
    await bs.close();
    expect(ov.listeners.length).toBeGreaterThan(0);
    expect(ov.listeners.every((l) => l.closed)).toBe(true);
  });
});
