/**
 * `scrapez proxy`'s HTTP logic over an in-memory overlay stand-in (test/unit/proxy-standin.ts): forward-proxy mode,
 * CONNECT, path mode, refusal of non-overlay hosts, error and timeout mapping, keep-alive and self-metrics.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nameToHost } from "../../src/common/naming.js";
import { ERROR_HEADER, parseAbsolute, parsePathMode, scrapeDeadlineMs } from "../../src/proxy/request.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import {
  StandInOverlay,
  Trap,
  Upstream,
  connect,
  makePki,
  metric,
  readAll,
  request,
  startProxy,
  testDir,
  type Running,
} from "../harness/proxy-standin.js";

const METRICS = "# TYPE app_requests_total counter\napp_requests_total 42\n";
const GZ = gzipSync(Buffer.from(METRICS.repeat(50)));
const td = testDir();
let app: Upstream;
let replicaB: Upstream;
let tlsApp: https.Server;
let tlsPort: number;
let pki: Record<string, string>;
const overlay = new StandInOverlay();
let p: Running;

function appHandler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = req.url ?? "/";
  const status = /^\/status\/(\d{3})/.exec(url);
  if (status) {
    const body = `scrapez bind: service "app": answer ${status[1]}\n`;
    res.writeHead(Number(status[1]), { "content-type": "text/plain; charset=utf-8", "x-from": "bind" });
    return void res.end(body);
  }
  if (url.startsWith("/gzip")) {
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4", "content-encoding": "gzip", vary: "x" });
    return void res.end(GZ);
  }
  if (url.startsWith("/slow")) {
    const t = setTimeout(() => res.end(METRICS), 3_000);
    res.once("close", () => clearTimeout(t));
    return;
  }
  if (url.startsWith("/reset-when-reused")) {
    const s = req.socket as net.Socket & { served?: number };
    s.served = (s.served ?? 0) + 1;
    if (s.served > 1) return void req.socket.destroy();
  }
  if (url.startsWith("/hop")) {
    res.writeHead(200, [
      "Content-Type",
      "text/plain; version=0.0.4",
      "Connection",
      "keep-alive, X-Hop-Res",
      "X-Hop-Res",
      "secret",
      "Set-Cookie",
      "a=1",
      "Set-Cookie",
      "b=2",
    ]);
    return void res.end(METRICS);
  }
  res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
  res.end(req.method === "HEAD" ? undefined : METRICS);
}

beforeAll(async () => {
  pki = makePki(td.dir);
  app = await new Upstream(appHandler).start();
  replicaB = await new Upstream((_q, r) => r.end("replica b\n")).start();
  tlsApp = https.createServer(
    { cert: readFileSync(pki["server.crt"]!), key: readFileSync(pki["server.key"]!) },
    (q, r) => r.end(`tls ${q.url}\n`),
  );
  await new Promise<void>((r) => tlsApp.listen(0, "127.0.0.1", r));
  tlsPort = (tlsApp.address() as net.AddressInfo).port;
  overlay
    .add("app", { port: app.port, attrs: ["metrics"] })
    .add("My Service", { port: app.port })
    .add("Node-A", { port: app.port })
    .add("svc.1", { port: app.port })
    .add("tls-app", { port: tlsPort })
    .add("hidden", { port: app.port, permissions: ["Bind"] })
    .add("black-hole")
    .add("no-routers")
    .add("no-terminator");
  overlay.hang.add("black-hole");
  overlay.fail.set("no-routers", new ZitiError(ErrorCodes.NO_EDGE_ROUTERS, "no online edge router can serve it"));
  // Replicas bound by edge identity (svc.1's "someone" has no route: its dial fails in the overlay).
  overlay.replicaMap.set("app", ["bind-b"]);
  overlay.replicaMap.set("svc.1", ["someone"]);
  overlay.routes.set("bind-b~app", replicaB.port);
  p = await startProxy(td.dir, [overlay], { timeouts: { dialSeconds: 0.4, defaultScrapeSeconds: 5 } });
});

afterAll(async () => {
  await p?.close();
  await app?.close();
  await replicaB?.close();
  tlsApp?.close();
  td.remove();
});

describe("request parsing", () => {
  it.each([
    ["http://node:80/metrics", { hostPort: "node:80", path: "/metrics" }],
    ["http://svc.1:9100/metrics?a=1&b=2", { hostPort: "svc.1:9100", path: "/metrics?a=1&b=2" }],
    ["http://Node-A", { hostPort: "Node-A", path: "/" }],
    ["http://n?x=1", { hostPort: "n", path: "/?x=1" }],
    ["http://user:pw@node/", undefined],
    ["https://node/", undefined],
  ])("absolute form %s", (url, want) => {
    expect(parseAbsolute(url)).toEqual(want);
  });

  it.each([
    ["/scrape/app/metrics", { target: { service: "app" }, path: "/metrics" }],
    ["/scrape/app", { target: { service: "app" }, path: "/" }],
    ["/scrape/app?x=1", { target: { service: "app" }, path: "/?x=1" }],
    ["/scrape/app/a/b?match[]=up", { target: { service: "app" }, path: "/a/b?match[]=up" }],
    ["/scrape/My%20Service/metrics", { target: { service: "My Service" }, path: "/metrics" }],
    ["/scrape/bind-b~app/metrics", { target: { service: "app", identity: "bind-b" }, path: "/metrics" }],
    ["/scrape/%E0%A4%A/x", "bad"],
    ["/other", undefined],
  ])("path mode %s", (url, want) => {
    expect(parsePathMode(url)).toEqual(want);
  });

  it.each([
    [undefined, 10, 10_000],
    ["10", 5, 9_500],
    ["1", 5, 900],
    ["0.5", 5, 450],
    ["nope", 7, 7_000],
    ["-1", 7, 7_000],
    ["100000", 7, 599_500],
  ])("scrape deadline for header %s", (header, fallback, want) => {
    expect(scrapeDeadlineMs(header, fallback)).toBe(want);
  });
});

describe("forward-proxy mode (proxy_url)", () => {
  it("dials the service named by the host and streams the answer back unchanged", async () => {
    const r = await request(p.port, "http://app:80/metrics?x=1&y=2", {
      headers: {
        "x-prometheus-scrape-timeout-seconds": "10",
        accept: "application/openmetrics-text;version=1.0.0,*/*;q=0.1",
        "user-agent": "Prometheus/2.42.0+ds",
        connection: "keep-alive, x-hop",
        "x-hop": "dropped",
        "proxy-connection": "keep-alive",
      },
    });
    expect(r.status).toBe(200);
    expect(r.text).toBe(METRICS);
    expect(r.headers["content-type"]).toBe("text/plain; version=0.0.4");
    expect(r.headers[ERROR_HEADER]).toBeUndefined();
    const seen = app.last;
    expect(seen.url).toBe("/metrics?x=1&y=2");
    expect(seen.headers.host).toBe("app");
    expect(seen.headers["x-prometheus-scrape-timeout-seconds"]).toBe("10");
    expect(seen.headers["user-agent"]).toBe("Prometheus/2.42.0+ds");
    expect(seen.headers.accept).toBe("application/openmetrics-text;version=1.0.0,*/*;q=0.1");
    expect(seen.headers["x-hop"]).toBeUndefined();
    expect(seen.headers["proxy-connection"]).toBeUndefined();
    expect(overlay.dialsOf("app").at(-1)).toMatchObject({ service: "app" });
  });

  it("passes gzip bodies through byte for byte, with Content-Encoding", async () => {
    const r = await request(p.port, "http://app/gzip", { headers: { "accept-encoding": "gzip" } });
    expect(r.status).toBe(200);
    expect(r.headers["content-encoding"]).toBe("gzip");
    expect(r.headers["content-type"]).toBe("text/plain; version=0.0.4");
    expect(r.body.equals(GZ)).toBe(true);
    expect(app.last.headers["accept-encoding"]).toBe("gzip");
  });

  it("drops hop-by-hop response headers (and those Connection names) but keeps repeated ones", async () => {
    const r = await request(p.port, "http://app/hop");
    expect(r.status).toBe(200);
    expect(r.headers["x-hop-res"]).toBeUndefined();
    expect(r.headers["set-cookie"]).toEqual(["a=1", "b=2"]);
  });

  it.each([403, 404, 502, 504])("passes the bind side's %i through unchanged", async (code) => {
    const r = await request(p.port, `http://app/status/${code}`);
    expect(r.status).toBe(code);
    expect(r.text).toBe(`scrapez bind: service "app": answer ${code}\n`);
    expect(r.headers["x-from"]).toBe("bind");
    expect(r.headers[ERROR_HEADER]).toBeUndefined();
  });

  it("ignores the port Prometheus adds", async () => {
    for (const hp of ["app:80", "app:9100", "app"])
      expect((await request(p.port, `http://${hp}/metrics`)).status).toBe(200);
  });

  it.each([
    ["a name that is not a host, hex-encoded", nameToHost("My Service"), "My Service"],
    ["an upper-case name as is", "Node-A", "Node-A"],
    ["an upper-case name lower-cased by a client", "node-a", "Node-A"],
    ["a name whose last label is numeric", "svc.1", "svc.1"],
  ])("reaches %s", async (_what, host, service) => {
    const before = overlay.dialsOf(service).length;
    const r = await request(p.port, `http://${host}:80/metrics`);
    expect(r.status).toBe(200);
    expect(overlay.dialsOf(service).length).toBeGreaterThanOrEqual(before);
    expect(app.last.url).toBe("/metrics");
  });

  it("addresses one replica as <identity>~<service>, dialing with that terminator identity", async () => {
    const r = await request(p.port, "http://bind-b~app:80/metrics");
    expect(r.status).toBe(200);
    expect(r.text).toBe("replica b\n");
    expect(overlay.dialsOf("app").at(-1)).toMatchObject({ service: "app", identity: "bind-b" });
  });

  it("forwards HEAD; refuses other methods without dialing", async () => {
    expect((await request(p.port, "http://app/metrics", { method: "HEAD" })).status).toBe(200);
    const dials = overlay.dials.length;
    const r = await request(p.port, "http://app/-/reload", { method: "POST" });
    expect(r.status).toBe(405);
    expect(r.headers.allow).toBe("GET, HEAD");
    expect(overlay.dials.length).toBe(dials);
  });

  it("forwards Authorization to the target when it was not the proxy's credentials", async () => {
    await request(p.port, "http://app/metrics", { headers: { authorization: "Bearer for-the-exporter" } });
    expect(app.last.headers.authorization).toBe("Bearer for-the-exporter");
  });
});

describe("not an open proxy", () => {
  it("refuses every host that is not a dialable overlay service, and never connects to it", async () => {
    const trap = await new Trap().start();
    const dials = overlay.dials.length;
    const targets = [
      `http://127.0.0.1:${trap.port}/metrics`,
      `http://localhost:${trap.port}/`,
      `http://[::1]:${trap.port}/`,
      "http://hidden/metrics", // Bind permission only
      "http://no-such-service/metrics",
      "http://example.org/",
    ];
    for (const t of targets) {
      const r = await request(p.port, t);
      expect(r.status, t).toBe(502);
      expect(r.text).toMatch(
        /^scrapez proxy: service ".+" is not dialable by identity "prometheus-central" \(no such service, or no Dial policy grants it\); only overlay services are reachable\n$/,
      );
      expect(r.text.split("\n")).toHaveLength(2);
      expect(r.headers[ERROR_HEADER]).toBe("not-dialable");
    }
    const path = await request(p.port, `/scrape/127.0.0.1:${trap.port}/metrics`);
    expect(path.status).toBe(502);
    const c = await connect(p.port, `127.0.0.1:${trap.port}`);
    expect(c.status).toBe(502);
    expect(c.response).toMatch(/^HTTP\/1\.1 502 Bad Gateway/);
    c.socket.destroy();
    const c2 = await connect(p.port, `localhost:${trap.port}`);
    expect(c2.status).toBe(502);
    c2.socket.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(trap.touched).toBe(0);
    expect(overlay.dials.length).toBe(dials);
    trap.close();
  });

  it("answers https:// or other absolute URLs with 400 (https goes through CONNECT)", async () => {
    for (const u of ["https://app/metrics", "ftp://app/x"]) {
      const r = await request(p.port, u);
      expect(r.status).toBe(400);
      expect(r.text).toMatch(/use CONNECT/);
    }
  });
});

describe("errors and timeouts", () => {
  it("a dial that does not complete: 504 within dialSeconds", async () => {
    const r = await request(p.port, "http://black-hole/metrics");
    expect(r.status).toBe(504);
    expect(r.text).toMatch(/^scrapez proxy: dialing service "black-hole" via identity "prometheus-central" timed out/);
    expect(r.headers[ERROR_HEADER]).toBe(ErrorCodes.DIAL_TIMEOUT);
    expect(r.ms).toBeLessThan(2_000);
    expect(overlay.dialsOf("black-hole").at(-1)!.timeoutMs).toBe(400);
  });

  it("X-Prometheus-Scrape-Timeout-Seconds bounds the dial too", async () => {
    const p2 = await startProxy(td.dir, [overlay], { timeouts: { dialSeconds: 30, defaultScrapeSeconds: 30 } });
    try {
      const r = await request(p2.port, "http://black-hole/metrics", {
        headers: { "x-prometheus-scrape-timeout-seconds": "0.5" },
      });
      expect(r.status).toBe(504);
      expect(r.ms).toBeLessThan(1_500);
      expect(overlay.dialsOf("black-hole").at(-1)!.timeoutMs).toBeLessThanOrEqual(450);
    } finally {
      await p2.close();
    }
  });

  it("an answer slower than X-Prometheus-Scrape-Timeout-Seconds: 504 just before Prometheus gives up", async () => {
    const r = await request(p.port, "http://app/slow", { headers: { "x-prometheus-scrape-timeout-seconds": "1" } });
    expect(r.status).toBe(504);
    expect(r.text).toBe('scrapez proxy: service "app" via identity "prometheus-central" did not answer within 0.9s\n');
    expect(r.ms).toBeGreaterThanOrEqual(850);
    expect(r.ms).toBeLessThan(1_000);
  });

  it.each([
    [
      "no-routers",
      502,
      ErrorCodes.NO_EDGE_ROUTERS,
      /service "no-routers" via identity "prometheus-central": no online edge router/,
    ],
    [
      "no-terminator",
      502,
      ErrorCodes.DIAL_FAILED,
      /service "no-terminator" via identity "prometheus-central" is unreachable: dial no-terminator failed/,
    ],
  ])("%s: %i with a one-line body naming the service and identity", async (svc, status, code, body) => {
    const r = await request(p.port, `http://${svc}/metrics`);
    expect(r.status).toBe(status);
    expect(r.headers[ERROR_HEADER]).toBe(code);
    expect(r.text).toMatch(body);
    expect(r.text.trimEnd()).not.toContain("\n");
  });

  it("a service the overlay stops granting between listing and dialing: 502 naming it", async () => {
    overlay.fail.set("svc.1", new ZitiError(ErrorCodes.NOT_AUTHORIZED, 'may not Dial service "svc.1"'));
    try {
      // A fresh agent (no pooled connection): a replica no earlier request named forces a new dial.
      const r = await request(p.port, "http://someone~svc.1/metrics");
      expect(r.status).toBe(502);
      expect(r.text).toMatch(/service "svc.1" \(replica "someone"\) via identity "prometheus-central" is not dialable/);
    } finally {
      overlay.fail.delete("svc.1");
    }
  });
});

describe("CONNECT tunnels (scheme: https)", () => {
  it("dials the service, answers 200 and carries TLS end to end; teardown closes both sides", async () => {
    const before = metric(await (await request(p.port, "/metrics")).text, "scrapez_proxy_active_connections");
    const c = await connect(p.port, "tls-app:443");
    expect(c.response).toBe("HTTP/1.1 200 Connection Established\r\n\r\n");
    const t = tls.connect({ socket: c.socket, ca: readFileSync(pki["ca.crt"]!), servername: "localhost" });
    await new Promise<void>((r, j) => t.once("secureConnect", r).once("error", j));
    t.write("GET /metrics HTTP/1.1\r\nHost: tls-app\r\nConnection: close\r\n\r\n");
    const out = await readAll(t);
    expect(out).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(out).toMatch(/tls \/metrics\n$/);
    expect(overlay.dialsOf("tls-app").length).toBe(1);
    await new Promise((r) => setTimeout(r, 100));
    const after = metric(await (await request(p.port, "/metrics")).text, "scrapez_proxy_active_connections");
    expect(after).toBe(before);
  });

  it("forwards bytes sent right after the CONNECT header", async () => {
    const c = await connect(p.port, "app:80", {}, "GET /metrics HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    expect(c.status).toBe(200);
    const out = await readAll(c.socket);
    expect(out).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*app_requests_total 42\n/);
  });

  it("closing the client closes the overlay connection", async () => {
    const open = app.openSockets.size;
    const c = await connect(p.port, "app:80");
    expect(c.status).toBe(200);
    await new Promise((r) => setTimeout(r, 50));
    expect(app.openSockets.size).toBe(open + 1);
    c.socket.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(app.openSockets.size).toBe(open);
  });

  it("the far end closing closes the client; close() ends open tunnels", async () => {
    const p2 = await startProxy(td.dir, [overlay]);
    const c = await connect(p2.port, "app:80");
    expect(c.status).toBe(200);
    await new Promise((r) => setTimeout(r, 50));
    for (const s of app.openSockets) s.destroy();
    await readAll(c.socket);
    expect(c.socket.destroyed || c.socket.readableEnded).toBe(true);
    const c2 = await connect(p2.port, "app:80");
    expect(c2.status).toBe(200);
    const ended = readAll(c2.socket);
    await p2.close(); // would hang if the tunnel kept the server open
    await ended;
  });

  it.each([
    ["no-such:443", 502, /is not dialable by identity "prometheus-central"/],
    ["no-routers:443", 502, /no online edge router/],
    ["black-hole:443", 504, /dialing service "black-hole" .* timed out/],
  ])("CONNECT %s: %i", async (authority, status, body) => {
    const c = await connect(p.port, authority);
    expect(c.status).toBe(status);
    expect(await readAll(c.socket)).toMatch(body);
  });
});

describe("path mode", () => {
  it.each([
    ["/scrape/app/metrics?x=1", "/metrics?x=1", METRICS],
    ["/scrape/app", "/", METRICS],
    [`/scrape/${nameToHost("My Service")}/metrics`, "/metrics", METRICS],
    ["/scrape/My%20Service/metrics", "/metrics", METRICS],
    ["/scrape/bind-b~app/metrics", undefined, "replica b\n"],
  ])("%s", async (path, upstreamUrl, body) => {
    const r = await request(p.port, path);
    expect(r.status).toBe(200);
    expect(r.text).toBe(body);
    if (upstreamUrl) expect(app.last.url).toBe(upstreamUrl);
  });

  it("unknown endpoints are 404", async () => {
    expect((await request(p.port, "/nope")).status).toBe(404);
  });
});

describe("connection reuse", () => {
  it("100 sequential scrapes of one service use a handful of overlay dials", async () => {
    const okDials = async () =>
      metric((await request(p.port, "/metrics")).text, 'scrapez_proxy_dials_total{service="app",result="ok"}');
    const okBefore = await okDials();
    const before = overlay.dialsOf("app").filter((d) => d.identity === undefined).length;
    const conns = app.connections;
    for (let i = 0; i < 100; i++) {
      const r = await request(p.port, "http://app:80/metrics");
      expect(r.status).toBe(200);
    }
    const dials = overlay.dialsOf("app").filter((d) => d.identity === undefined).length - before;
    expect(dials).toBeLessThanOrEqual(1);
    expect(app.connections - conns).toBeLessThanOrEqual(1);
    expect((await okDials()) - okBefore).toBe(dials);
  });

  it("concurrent scrapes are bounded by maxSocketsPerService", async () => {
    const p2 = await startProxy(td.dir, [overlay], { agent: { maxSocketsPerService: 2, keepAliveSeconds: 60 } });
    try {
      const before = overlay.dialsOf("app").length;
      const rs = await Promise.all(Array.from({ length: 10 }, () => request(p2.port, "http://app/metrics")));
      expect(rs.every((r) => r.status === 200)).toBe(true);
      expect(overlay.dialsOf("app").length - before).toBe(2);
    } finally {
      await p2.close();
    }
  });

  it("retries once on a fresh connection when a pooled one was closed by the far end", async () => {
    const p2 = await startProxy(td.dir, [overlay]);
    try {
      const before = overlay.dialsOf("app").length;
      expect((await request(p2.port, "http://app/reset-when-reused")).status).toBe(200);
      const r = await request(p2.port, "http://app/reset-when-reused");
      expect(r.status).toBe(200);
      expect(r.text).toBe(METRICS);
      expect(overlay.dialsOf("app").length - before).toBe(2);
    } finally {
      await p2.close();
    }
  });
});

describe("health, readiness and self-metrics", () => {
  it("/-/healthy and /-/ready answer 200 without credentials", async () => {
    expect((await request(p.port, "/-/healthy")).status).toBe(200);
    expect((await request(p.port, "/-/ready")).text).toBe(
      'scrapez proxy is ready; identities: "prometheus-central" ready\n',
    );
  });

  it("/metrics has the documented series", async () => {
    await request(p.port, "http://app/metrics");
    await request(p.port, "http://nope/metrics");
    await request(p.port, "/sd");
    const r = await request(p.port, "/metrics");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toMatch(/^text\/plain/);
    expect(metric(r.text, 'scrapez_proxy_requests_total{service="app",code="200"}')).toBeGreaterThan(0);
    expect(metric(r.text, 'scrapez_proxy_requests_total{service="(refused)",code="502"}')).toBeGreaterThan(0);
    expect(metric(r.text, 'scrapez_proxy_requests_total{service="/sd",code="200"}')).toBeGreaterThan(0);
    expect(r.text).not.toMatch(/service="nope"/);
    expect(
      metric(r.text, 'scrapez_proxy_dials_total{service="black-hole",result="ZITI_DIAL_TIMEOUT"}'),
    ).toBeGreaterThan(0);
    expect(metric(r.text, 'scrapez_proxy_dial_duration_seconds_count{service="app"}')).toBeGreaterThan(0);
    expect(r.text).toMatch(/^scrapez_proxy_active_connections \d+$/m);
    // app, My Service, Node-A, svc.1, tls-app, black-hole, no-routers, no-terminator (hidden is Bind-only)
    expect(metric(r.text, "scrapez_proxy_sd_targets")).toBe(8);
  });

  it("logs one structured line per failed scrape, naming service and code", () => {
    expect(p.logs).toContainEqual(
      expect.objectContaining({
        level: "warn",
        msg: "scrape failed",
        service: "black-hole",
        code: ErrorCodes.DIAL_TIMEOUT,
      }),
    );
  });

  it("not ready (503, with the reason) while the service list cannot be loaded; ready once it can", async () => {
    const down = new StandInOverlay("prom-2").add("app", { port: app.port });
    down.servicesError = new ZitiError(ErrorCodes.CONTROLLER_UNREACHABLE, "controller unreachable");
    const p2 = await startProxy(td.dir, [down], { discovery: { refreshSeconds: 1 } });
    try {
      const r = await request(p2.port, "/-/ready");
      expect(r.status).toBe(503);
      expect(r.text).toBe(
        'scrapez proxy is not ready: cannot list services: controller unreachable; identities: "prom-2" ready\n',
      );
      const sd = await request(p2.port, "/sd");
      expect(sd.status).toBe(503);
      const s = await request(p2.port, "http://app/metrics");
      expect(s.status).toBe(503);
      expect(s.text).toMatch(/cannot reach service "app" yet: cannot list services: controller unreachable/);
      down.servicesError = undefined;
      await new Promise((res) => setTimeout(res, 1_300));
      expect((await request(p2.port, "/-/ready")).status).toBe(200);
      expect((await request(p2.port, "http://app/metrics")).status).toBe(200);
    } finally {
      await p2.close();
    }
  });
});
