/**
 * Issue 9 on the real overlay (controller + router of the line under test), the dial side: `scrapez proxy` as a real process.
 * - item 1: a bound service (our SDK's listen, a raw writer on each accepted connection) answers bytes Node's HTTP
 *   client accepts but its writer refuses; the proxy answers 502 at once naming the service and the cause, while
 *   another target keeps answering 200 and the process lives on.
 * - item 11: CONNECT tunnels are capped and closed when idle; an unmodified Prometheus whose job sends the proxy's
 *   credentials twice (proxy_url userinfo and `authorization`) never leaks them to the exporter, and a job with
 *   proxy credentials plus the target's own bearer token still delivers that token.
 * Issue 18 item 2: thousands of replica names the overlay does not list (for a service with one replica bound by
 * edge identity, and for one bound without) are answered from the proxy's list: a 502 naming the real replica, no
 * dial, at most one replica listing per service per interval; with the time, quantiles and RSS growth measured.
 */
import { writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZitiContext, type ZitiConnection } from "../../src/ziti/index.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { Prometheus } from "../harness/prometheus.js";
import { ScrapezProcess } from "../harness/scrapez.js";
import { mib, procStats } from "../harness/proc-stats.js";

const dir = tempDir("proxy-hardening");
const token = "hardening-proxy-token";
const tokenFile = join(dir, "token");
const auth = { authorization: `Bearer ${token}` };
let overlay: Overlay;
let server: ZitiContext;
let proxy: ScrapezProcess;
let proxyPort: number;
let prom: Prometheus | undefined;
const seen = new Map<string, http.IncomingHttpHeaders>();
const conns = new Set<ZitiConnection>();

/** What the raw service answers, by request path. */
const RAW: Record<string, string> = {
  "/s000": "HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nhi",
  "/s099": "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi",
  "/reason-ctl": "HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nhi",
  "/s101": "HTTP/1.1 101 Switching Protocols\r\n\r\n",
  "/upgrade": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
  "/header-value-ctl": "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
};
const GOOD = "# TYPE good_up gauge\ngood_up 1\n";

/** A raw HTTP writer on each accepted overlay connection: answers `answer(path)` and keeps the connection open. */
function rawWriter(answer: (path: string) => string): (c: ZitiConnection) => void {
  return (c) => {
    conns.add(c);
    c.once("close", () => conns.delete(c));
    c.on("error", () => c.destroy());
    let got = "";
    c.on("data", (d: Buffer) => {
      got += d.toString("latin1");
      while (got.includes("\r\n\r\n")) {
        const path = /^[A-Z]+ (\S+)/.exec(got)?.[1] ?? "/";
        got = got.slice(got.indexOf("\r\n\r\n") + 4);
        c.write(Buffer.from(answer(path), "latin1"));
      }
    });
  };
}

function viaProxy(
  target: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    http
      .get(
        { host: "127.0.0.1", port: proxyPort, path: target, headers: { ...auth, ...headers }, agent: false },
        (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () =>
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body, ms: Date.now() - started }),
          );
        },
      )
      .setTimeout(40_000, function (this: http.ClientRequest) {
        this.destroy(new Error(`no answer from the proxy within 40 s for ${target}`));
      })
      .on("error", reject);
  });
}

async function proxyMetric(prefix: string): Promise<number> {
  const r = await viaProxy("/metrics");
  return r.body
    .split("\n")
    .filter((l) => l.startsWith(prefix))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

/** A raw CONNECT with the proxy's credentials; resolves with the status and the socket positioned after the head. */
function connectTo(authority: string): Promise<{ status: number; head: string; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(proxyPort, "127.0.0.1", () =>
      socket.write(
        `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: Bearer ${token}\r\n\r\n`,
      ),
    );
    let got = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      got = Buffer.concat([got, d]);
      const end = got.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      socket.pause();
      const rest = got.subarray(end + 4);
      if (rest.length) socket.unshift(rest);
      const head = got.subarray(0, end + 4).toString("latin1");
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), head, socket });
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
}

function readToEnd(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    let out = "";
    s.on("data", (d: Buffer) => (out += d.toString()));
    s.once("close", () => resolve(out));
    s.resume();
  });
}

beforeAll(async () => {
  writeFileSync(tokenFile, `${token}\n`);
  overlay = await Overlay.start();
  for (const s of ["raw", "good", "echo", "headers", "replicated"]) await overlay.service(s);
  const serverId = await overlay.identity("hardening-server", ["servers"]);
  const promId = await overlay.identity("prometheus-central", ["clients"]);
  server = await ZitiContext.fromIdentityFile(serverId);
  (await server.listen("raw")).on(
    "connection",
    rawWriter((p) => RAW[p] ?? RAW["/s000"]!),
  );
  (await server.listen("good")).on(
    "connection",
    rawWriter(() => `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${GOOD.length}\r\n\r\n${GOOD}`),
  );
  (await server.listen("echo")).on("connection", (c: ZitiConnection) => {
    conns.add(c);
    c.once("close", () => conns.delete(c));
    c.on("error", () => c.destroy());
    c.pipe(c);
  });
  const headersApp = http.createServer((req, res) => {
    seen.set(req.url ?? "/", req.headers);
    res.setHeader("content-type", "text/plain; version=0.0.4");
    res.end("# TYPE headers_app_up gauge\nheaders_app_up 1\n");
  });
  await server.serve("headers", headersApp);
  // One replica bound by edge identity: addressable as hardening-server~replicated.
  (await server.listen("replicated", { bindUsingEdgeIdentity: true })).on(
    "connection",
    rawWriter(() => `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${GOOD.length}\r\n\r\n${GOOD}`),
  );

  proxyPort = await freePort();
  proxy = new ScrapezProcess("scrapez-proxy-hardening", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${proxyPort}`,
    auth: { bearerTokenFile: tokenFile },
    tunnels: { maxConcurrent: 2, idleSeconds: 2 },
  });
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 60_000, "proxy listening");
  await waitUntil(async () => (await viaProxy("http://good/metrics")).status === 200, 60_000, "good answers 200");
}, 240_000);

afterAll(async () => {
  await prom?.close();
  await proxy?.close();
  for (const c of conns) c.destroy();
  await server?.close();
  await overlay?.close();
});

describe("a bound service answering bytes Node's writer refuses (real overlay)", () => {
  it.each([
    ["/s000", /status 000 is not a final HTTP status/],
    ["/s099", /status 099 is not a final HTTP status/],
    ["/reason-ctl", /the reason phrase "O\\x01K" has a control character/],
    ["/s101", /status 101 is not a final HTTP status/],
    ["/upgrade", /101 Switching Protocols to a GET that asked for no upgrade/],
    ["/header-value-ctl", /not valid HTTP: header \S+'s value has a control character \(HPE_INVALID_HEADER_TOKEN\)/],
  ])("%s: 502 naming the service and the cause, at once; the other target keeps answering 200", async (path, cause) => {
    // Prometheus's own deadline is 30 s away: a 502 (not a 504) is an answer made at once, not a time-out.
    const [bad, good] = await Promise.all([
      viaProxy(`http://raw${path}`, { "x-prometheus-scrape-timeout-seconds": "30" }),
      viaProxy("http://good/metrics"),
    ]);
    expect(bad.status).toBe(502);
    expect(bad.headers["x-scrapez-proxy-error"]).toBe("bad-upstream-response");
    expect(bad.body).toMatch(
      /^scrapez proxy: service "raw" via identity "prometheus-central" answered with a response that cannot be passed on: /,
    );
    expect(bad.body).toMatch(cause);
    expect(good).toMatchObject({ status: 200, body: GOOD });
    expect((await viaProxy("/scrape/good/metrics")).status).toBe(200);
    expect(proxy.running).toBe(true);
    process.stdout.write(`[proxy-hardening] ${path}: 502 after ${bad.ms} ms\n`);
  });

  it("the process is still up and its self-metrics count the 502s under the service's name", async () => {
    expect(proxy.running).toBe(true);
    expect(await proxyMetric('scrapez_proxy_requests_total{service="raw",code="502"}')).toBeGreaterThanOrEqual(6);
    expect(proxy.logLines().some((l) => l.level === "error")).toBe(false);
  });
});

describe("CONNECT caps and idle time-out, and proxy credentials (real overlay)", () => {
  it("a third concurrent tunnel gets 503; an idle tunnel is closed after tunnels.idleSeconds", async () => {
    const a = await connectTo("echo:443");
    const b = await connectTo("echo:443");
    expect([a.status, b.status]).toEqual([200, 200]);
    const c = await connectTo("echo:443");
    expect(c.status).toBe(503);
    expect(c.head).toMatch(/x-scrapez-proxy-error: too-many-tunnels/i);
    expect(await readToEnd(c.socket)).toBe(
      "scrapez proxy: too many CONNECT tunnels open (2, tunnels.maxConcurrent); try again later\n",
    );
    // Bytes really cross the overlay and back.
    a.socket.resume();
    const echoed = new Promise<string>((r) => a.socket.once("data", (d: Buffer) => r(d.toString())));
    a.socket.write("ping");
    expect(await echoed).toBe("ping");
    // Neither tunnel sends another byte: both are closed by the proxy.
    const started = Date.now();
    await Promise.all([readToEnd(a.socket), readToEnd(b.socket)]);
    const idleMs = Date.now() - started;
    expect(idleMs).toBeGreaterThanOrEqual(1_500); // not before (about) idleSeconds = 2
    expect(await proxyMetric('scrapez_proxy_tunnel_events_total{event="idle-timeout"}')).toBe(2);
    expect(await proxyMetric('scrapez_proxy_tunnel_events_total{event="over-limit"}')).toBe(1);
    await waitUntil(async () => (await proxyMetric("scrapez_proxy_tunnels_open")) === 0, 10_000, "no tunnel open");
    const d = await connectTo("echo:443");
    expect(d.status).toBe(200);
    d.socket.destroy();
    process.stdout.write(`[proxy-hardening] idle tunnels closed ${idleMs} ms after their last byte (idleSeconds 2)\n`);
  });

  it("Prometheus: the proxy's credentials never reach the exporter; the target's own token does", async () => {
    const userinfo = `http://prometheus:${token}@127.0.0.1:${proxyPort}`;
    const job = (name: string, path: string, proxyUrl: string, credentials: string) => ({
      job_name: name,
      metrics_path: path,
      proxy_url: proxyUrl,
      authorization: { type: "Bearer", credentials },
      static_configs: [{ targets: ["headers"] }],
    });
    prom = await Prometheus.start({
      global: { scrape_interval: "1s", scrape_timeout: "1s" },
      scrape_configs: [
        // The proxy's token as the job's authorization only (Prometheus sends it as Authorization).
        job("proxy-token-as-authorization", "/a", `http://127.0.0.1:${proxyPort}`, token),
        // The proxy's credentials twice: proxy_url userinfo (Proxy-Authorization) and the job's authorization.
        job("proxy-token-twice", "/b", userinfo, token),
        // Proxy credentials in proxy_url, the exporter's own bearer token as the job's authorization.
        job("own-target-token", "/c", userinfo, "exporter-token"),
      ],
    });
    const up = await prom.waitForQuery("up == 1", 90_000, (r) => r.length === 3);
    expect(up.map((s) => s.metric.job).sort()).toEqual([
      "own-target-token",
      "proxy-token-as-authorization",
      "proxy-token-twice",
    ]);
    expect(seen.get("/a")?.authorization).toBeUndefined();
    expect(seen.get("/b")?.authorization).toBeUndefined();
    expect(seen.get("/c")?.authorization).toBe("Bearer exporter-token");
    for (const p of ["/a", "/b", "/c"]) {
      expect(seen.get(p)?.["proxy-authorization"]).toBeUndefined();
      expect(JSON.stringify(seen.get(p))).not.toContain(token);
      expect(JSON.stringify(seen.get(p))).not.toContain(Buffer.from(`prometheus:${token}`).toString("base64"));
    }
  });
});

describe("replica names the overlay does not list (real overlay)", () => {
  /** Requests, 50 at a time (the run is 20,000; this one stays short). */
  const COUNT = 2_000;

  it("2,000 distinct rN~<service>: a 502 naming the real replica at once, no dial, one replica listing per interval", async () => {
    await waitUntil(
      async () => (await viaProxy("http://hardening-server~replicated/metrics")).status === 200,
      60_000,
      "the bound replica answers",
    );
    await new Promise((r) => setTimeout(r, 5_100)); // the last replica listing is an interval old: one may be due
    const metric = async () => ({
      miss: await proxyMetric('scrapez_proxy_replica_lists_total{cause="miss"'),
      refresh: await proxyMetric('scrapez_proxy_replica_lists_total{cause="refresh"'),
      catalog: await proxyMetric("scrapez_proxy_catalog_refreshes_total"),
      // Of these two services only: the Prometheus of the test before may still be scraping another.
      dials:
        (await proxyMetric('scrapez_proxy_dials_total{service="replicated"')) +
        (await proxyMetric('scrapez_proxy_dials_total{service="good"')),
    });
    const before = await metric();
    const rss0 = procStats(proxy.pid!).rss;
    const client = new http.Agent({ keepAlive: true, maxSockets: 50 });
    const times: number[] = [];
    const bad: string[] = [];
    let next = 0;
    const started = Date.now();
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (next < COUNT) {
          const i = next++;
          // Every fourth for "good", bound without edge identities (the rN~good): it lists no replica.
          const svc = i % 4 === 3 ? "good" : "replicated";
          const t0 = process.hrtime.bigint();
          const r = await new Promise<{ status: number; code: unknown; body: string }>((resolve, reject) =>
            http
              .get(
                {
                  host: "127.0.0.1",
                  port: proxyPort,
                  path: `http://r${i}~${svc}/metrics`,
                  headers: auth,
                  agent: client,
                },
                (res) => {
                  let body = "";
                  res.setEncoding("utf8");
                  res.on("data", (d: string) => (body += d));
                  res.on("end", () =>
                    resolve({ status: res.statusCode ?? 0, code: res.headers["x-scrapez-proxy-error"], body }),
                  );
                },
              )
              .on("error", reject),
          );
          times.push(Number(process.hrtime.bigint() - t0) / 1e6);
          const want =
            svc === "good"
              ? `scrapez proxy: service "good" has no replica "r${i}": no identity binds it by edge identity, so it has no replicas; address the service as good\n`
              : `scrapez proxy: service "replicated" has no replica "r${i}": its replicas are "hardening-server"; address one as hardening-server~replicated\n`;
          if (r.status !== 502 || r.code !== "not-dialable" || r.body !== want) bad.push(`${i}: ${r.status} ${r.body}`);
        }
      }),
    );
    const elapsed = Date.now() - started;
    client.destroy();
    const rss1 = procStats(proxy.pid!).rss;
    const after = await metric();
    expect(bad.slice(0, 3)).toEqual([]);
    // No dial: a name the list does not have never reaches the router (nor costs the controller a session).
    expect(after.dials - before.dials).toBe(0);
    // Each of the two services' replicas asked for at most once per 5 s interval (none at all when the periodic
    // refresh listed them less than 5 s before).
    expect(after.miss - before.miss).toBeLessThanOrEqual(2 * (1 + Math.floor(elapsed / 5_000)));
    expect(proxy.running).toBe(true);
    times.sort((a, b) => a - b);
    const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(2);
    process.stdout.write(
      `[proxy-hardening] ${COUNT} unknown replica names, 50 at a time: ${elapsed} ms, p50 ${q(0.5)} ms, ` +
        `p99 ${q(0.99)} ms, max ${q(1)} ms; RSS ${mib(rss0)} -> ${mib(rss1)}; replica listings: ` +
        `${after.miss - before.miss} on misses, ${after.refresh - before.refresh} by ` +
        `${after.catalog - before.catalog} service-list refreshes; dials ${after.dials - before.dials}\n`,
    );
  }, 180_000);
});
