/**
 * Issue 9, the dial side: one broken peer never takes `scrapez proxy` down or grows it. Over the overlay stand-in
 * (test/unit/proxy-standin.ts): upstream answers Node's writer refuses (item 1), /sd glob cost and query caps
 * (item 7), the Host guard on origin-form requests (item 8), bounded agent pools and metric labels (item 10),
 * CONNECT caps and idle timeouts and credential stripping (item 11), and throws from peers' bytes (item 6).
 * The real-overlay proofs of items 1 and 11 are test/integration/proxy-hardening.test.ts.
 */
import http from "node:http";
import net from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AgentCache } from "../../src/proxy/agent.js";
import { codeLabel, resultLabel } from "../../src/proxy/metrics.js";
import { globMatch, globMatchSteps } from "../../src/common/naming.js";
import {
  ERROR_HEADER,
  MAX_SD_GLOB,
  MAX_SD_PARAMS,
  MAX_SD_PATTERNS,
  MAX_SD_QUERY,
  hostAllowed,
  unpassable,
} from "../../src/proxy/request.js";
import { ErrorCodes } from "../../src/ziti/errors.js";
import { waitUntil } from "../harness/ports.js";
import { prng } from "./prng.js";
import {
  StandInOverlay,
  Upstream,
  connect,
  metric,
  readAll,
  request,
  startProxy,
  testDir,
  type Running,
} from "../harness/proxy-standin.js";

const METRICS = "# TYPE app_requests_total counter\napp_requests_total 42\n";
const td = testDir();
const token = "proxy-token-123";
const tokenFile = td.file("token", `${token}\n`);
const running: Running[] = [];
let app: Upstream;
let raw: net.Server;
let echo: net.Server;
const rawSockets = new Set<net.Socket>();

/** What the raw upstream answers, by request path: bytes Node's HTTP client takes but its server side may not. */
const RAW: Record<string, string> = {
  "/s000": "HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nhi",
  "/s099": "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi",
  "/reason-ctl": "HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nhi",
  "/reason-del": "HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nhi",
  "/s101": "HTTP/1.1 101 Switching Protocols\r\n\r\n",
  "/continue-then-000": "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 000 X\r\nContent-Length: 0\r\n\r\n",
  "/upgrade": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
  "/header-value-ctl": "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
  "/header-name-space": "HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 2\r\n\r\nhi",
  "/ok": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n",
  "/s777": "HTTP/1.1 777 Lucky\r\nContent-Length: 3\r\n\r\n77\n",
};

function rawServer(): net.Server {
  return net.createServer((s) => {
    rawSockets.add(s);
    s.once("close", () => rawSockets.delete(s));
    s.on("error", () => s.destroy());
    let got = "";
    s.on("data", (d: Buffer) => {
      got += d.toString("latin1");
      while (got.includes("\r\n\r\n")) {
        const path = /^[A-Z]+ (\S+)/.exec(got)?.[1] ?? "/";
        got = got.slice(got.indexOf("\r\n\r\n") + 4);
        // A hostile peer: answers its bytes and keeps the connection open.
        s.write(Buffer.from(RAW[path] ?? RAW["/ok"]!, "latin1"));
      }
    });
  });
}

async function listen(s: net.Server): Promise<number> {
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return (s.address() as net.AddressInfo).port;
}

function overlay(): StandInOverlay {
  const o = new StandInOverlay();
  o.add("app", { port: app.port })
    .add("raw", { port: (raw.address() as net.AddressInfo).port })
    .add("echo", { port: (echo.address() as net.AddressInfo).port })
    .add("multi")
    .add("broken")
    .add("odd-failure");
  o.replicaMap.set("multi", ["bind-a", "bind-b"]);
  o.routes.set("bind-a~multi", app.port);
  o.broken.add("broken");
  return o;
}

async function start(raw: Record<string, unknown> = {}, o = overlay()): Promise<Running & { overlay: StandInOverlay }> {
  const r = await startProxy(td.dir, [o], raw);
  running.push(r);
  return Object.assign(r, { overlay: o });
}

beforeAll(async () => {
  app = await new Upstream((req, res) => {
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end(req.method === "HEAD" ? undefined : METRICS);
  }).start();
  raw = rawServer();
  await listen(raw);
  echo = net.createServer((s) => {
    s.on("error", () => s.destroy());
    s.pipe(s);
  });
  await listen(echo);
});

afterEach(async () => {
  for (const r of running.splice(0)) await r.close();
});

afterAll(async () => {
  await app?.close();
  for (const s of rawSockets) s.destroy();
  raw?.close();
  echo?.close();
  td.remove();
});

const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString("base64")}`;

describe("an upstream answer Node's HTTP writer refuses", () => {
  it.each([
    ["/s000", /status 000 is not a final HTTP status/],
    ["/s099", /status 099 is not a final HTTP status/],
    ["/reason-ctl", /the reason phrase "O\\x01K" has a control character/],
    ["/reason-del", /the reason phrase "O\\x7fK" has a control character/],
    ["/s101", /status 101 is not a final HTTP status/],
    ["/continue-then-000", /status 000 is not a final HTTP status/],
    ["/upgrade", /101 Switching Protocols to a GET that asked for no upgrade/],
    ["/header-value-ctl", /not valid HTTP: header \S+'s value has a control character \(HPE_INVALID_HEADER_TOKEN\)/],
    ["/header-name-space", /not valid HTTP: header name ".*" is not a token \(HPE_INVALID_HEADER_TOKEN\)/],
  ])("%s: 502 at once naming the service and the cause; everyone else is still served", async (path, cause) => {
    const p = await start();
    // The scrape's own deadline is far away: a 502 (not a 504) shows the answer came at once.
    const headers = { "x-prometheus-scrape-timeout-seconds": "25" };
    for (const target of [`http://raw${path}`, `/scrape/raw${path}`]) {
      const r = await request(p.port, target, { headers, timeoutMs: 20_000 });
      expect(r.status, target).toBe(502);
      expect(r.headers[ERROR_HEADER]).toBe("bad-upstream-response");
      expect(r.text).toMatch(
        /^scrapez proxy: service "raw" via identity "prometheus-central" answered with a response that cannot be passed on: /,
      );
      expect(r.text).toMatch(cause);
      expect(r.text.split("\n")).toHaveLength(2);
      const good = await request(p.port, "http://app/metrics");
      expect(good.status).toBe(200);
      expect(good.text).toBe(METRICS);
    }
    // The same raw service answering valid HTTP still works (the broken connection went back to no pool).
    const ok = await request(p.port, "http://raw/ok", { timeoutMs: 20_000 });
    expect(ok.status).toBe(200);
    expect(ok.text).toBe("ok\n");
    expect(p.logs).toContainEqual(
      expect.objectContaining({ level: "warn", msg: "scrape failed", service: "raw", code: "bad-upstream-response" }),
    );
  });

  it("an unusual but writable status (777) passes through unchanged", async () => {
    const p = await start();
    const r = await request(p.port, "http://raw/s777");
    expect(r.status).toBe(777);
    expect(r.text).toBe("77\n");
  });

  it.each([
    [200, "OK", ["Content-Type", "text/plain"], undefined],
    [999, "", [], undefined],
    [0, "OK", [], /status 000/],
    [99, "OK", [], /status 099/],
    [1000, "OK", [], /status 1000/],
    [undefined, "OK", [], /status none/],
    [200, "O\nK", [], /reason phrase "O\\x0aK"/],
    [200, "caf\u00e9", [], undefined],
    [200, "OK", ["X A", "b"], /header name "X A" is not a valid token/],
    [200, "OK", ["", "b"], /header name "" is not a valid token/],
    [200, "OK", ["X-A", "a\x00b"], /value of header "X-A"/],
    [200, "OK", ["X-A", "a\x7fb"], /value of header "X-A"/],
    [200, "OK", ["X-\u0100", "b"], /header name "X-\\x100"/],
  ])("unpassable(%s, %j, %j)", (status, reason, headers, want) => {
    const why = unpassable(status, reason, headers as string[]);
    if (want === undefined) expect(why).toBeUndefined();
    else expect(why).toMatch(want);
  });
});

describe("/sd globs in linear time, bounded queries", () => {
  const EVIL = "*?*?*?*?*?*?*?*!";

  it("the pathological glob takes steps linear in the name's length (and fails, as it must)", () => {
    const steps = [1_000, 2_000, 4_000, 8_000].map((n) => {
      const r = globMatchSteps(EVIL, "a".repeat(n));
      expect(r.match).toBe(false);
      expect(r.steps).toBeLessThanOrEqual(3 * (n + EVIL.length));
      return r.steps;
    });
    // Doubling the name at most doubles the work (plus a constant): linear, not exponential.
    for (let i = 1; i < steps.length; i++) expect(steps[i]!).toBeLessThanOrEqual(2 * steps[i - 1]! + 2 * EVIL.length);
    process.stdout.write(`[proxy] glob ${EVIL} against 1k/2k/4k/8k chars: ${steps.join("/")} steps\n`);
  });

  it("any glob is bounded by (name + 1) x (glob + 1) steps", () => {
    const rand = prng(9);
    for (let k = 0; k < 2_000; k++) {
      const glob = Array.from({ length: 1 + Math.floor(rand() * 12) }, () => "*?ab"[Math.floor(rand() * 4)]).join("");
      const name = Array.from({ length: Math.floor(rand() * 40) }, () => "ab"[Math.floor(rand() * 2)]).join("");
      expect(globMatchSteps(glob, name).steps).toBeLessThanOrEqual((name.length + 1) * (glob.length + 1));
    }
  });

  it.each([
    ["node-*", "node-a", true],
    ["node-?", "node-ab", false],
    ["node-?", "node-a", true],
    ["a.b", "axb", false],
    ["a.b", "a.b", true],
    ["*", "", true],
    ["*", "anything", true],
    ["", "", true],
    ["", "a", false],
    ["?", "", false],
    ["**", "x", true],
    ["a*c", "abbbc", true],
    ["a*c", "abcd", false],
    ["*a*b*", "xaxbx", true],
    ["*a*b*", "xbxax", false],
    ["*.cluster-a", "node.cluster-a", true],
    ["*.cluster-a", "node.cluster-b", false],
    ["(x)+", "(x)+", true],
    ["[ab]", "a", false],
    ["[ab]", "[ab]", true],
    ["a\\b", "a\\b", true],
    ["^$", "^$", true],
    ["*!", "a".repeat(50), false],
    ["My *", "My Service", true],
  ])("glob %j matches %j: %s", (glob, s, want) => {
    expect(globMatch(glob, s)).toBe(want);
  });

  it("agrees with the regular-expression reading of the glob on random inputs (fixed seed)", () => {
    const rand = prng(7);
    const ref = (g: string, s: string) =>
      new RegExp(
        `^${g
          .replace(/[.+^${}()|[\]\\]/g, "\\$&")
          .replace(/\*/g, ".*")
          .replace(/\?/g, ".")}$`,
      ).test(s);
    for (let k = 0; k < 5_000; k++) {
      const glob = Array.from({ length: Math.floor(rand() * 8) }, () => "*?ab."[Math.floor(rand() * 5)]).join("");
      const name = Array.from({ length: Math.floor(rand() * 10) }, () => "ab."[Math.floor(rand() * 3)]).join("");
      expect(globMatch(glob, name), `${glob} vs ${name}`).toBe(ref(glob, name));
    }
  });

  it("/sd answers the pathological glob against a long service name", async () => {
    const o = overlay().add("a".repeat(300));
    const p = await start({}, o);
    const r = await request(p.port, `/sd?service=${encodeURIComponent(EVIL)}`, { timeoutMs: 20_000 });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toEqual([]);
    const hit = await request(p.port, `/sd?service=${encodeURIComponent("*?*?*?*a")}`);
    expect(JSON.parse(hit.text).map((g: { labels: Record<string, string> }) => g.labels.__meta_ziti_service)).toEqual([
      "a".repeat(300),
    ]);
  });

  it.each([
    [
      "too many parameters",
      Array.from({ length: MAX_SD_PARAMS + 1 }, (_, i) => `service=s${i}`).join("&"),
      /more than 32 parameters/,
    ],
    ["a query too long", `service=${"*".repeat(100)}&x=${"a".repeat(MAX_SD_QUERY)}`, /\d+ characters \(at most 4096\)/],
    ["a glob too long", `service=${"?".repeat(MAX_SD_GLOB + 1)}`, /service= is 257 characters \(at most 256\)/],
  ])("%s: 400 with a one-line reason", async (_what, query, body) => {
    const p = await start();
    const r = await request(p.port, `/sd?${query}`);
    expect(r.status).toBe(400);
    expect(r.headers[ERROR_HEADER]).toBe("sd-query-too-large");
    expect(r.text).toMatch(/^scrapez proxy: \/sd query too large: /);
    expect(r.text).toMatch(body);
    expect(r.text.split("\n")).toHaveLength(2);
  });

  it("queries at the caps are served", async () => {
    const p = await start();
    const q = ["service=ap?", `service=${"?".repeat(MAX_SD_GLOB)}`];
    while (q.length < MAX_SD_PATTERNS) q.push(`attribute=a${q.length}`, `service=s${q.length}`);
    while (q.length < MAX_SD_PARAMS) q.push(`other=${q.length}`); // parameters /sd does not read
    const query = q.slice(0, MAX_SD_PARAMS).join("&");
    expect(query.length).toBeLessThanOrEqual(MAX_SD_QUERY);
    const r = await request(p.port, `/sd?${query}`);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toEqual([]); // "app" has no attribute a2, a4, ...
    const one = await request(p.port, `/sd?service=ap?&service=${"?".repeat(MAX_SD_GLOB)}`);
    expect(JSON.parse(one.text)).toHaveLength(1);
  });
});

describe("origin-form requests check Host (DNS rebinding)", () => {
  it.each([
    ["127.0.0.1:9480", true],
    ["127.0.0.1", true],
    ["127.9.8.7:1", true],
    ["[::1]:9480", true],
    ["[::1]", true],
    ["localhost:9480", true],
    ["LOCALHOST", true],
    ["localhost.", true],
    ["10.1.2.3:9480", true], // an IP literal cannot be a rebound name: a page served from it is the proxy itself
    ["[fd00::1]:9480", true],
    ["evil.example", false],
    ["evil.example:9480", false],
    ["127.0.0.1.evil.example", false],
    ["localhost.evil.example", false],
    ["proxy.internal:9480", true], // the listen host
    ["PROXY.internal", true],
    ["scrapez-proxy.monitoring:9480", true], // allowedHosts
    ["scrapez-proxy.monitoring.evil", false],
    ["2130706433", false], // not an IP literal (browsers would send 127.0.0.1)
    [undefined, true], // HTTP/1.0 without Host: not a browser
  ])("Host %j: allowed %s", (host, want) => {
    expect(hostAllowed(host, "proxy.internal", ["scrapez-proxy.monitoring"])).toBe(want);
  });

  it.each(["/sd", "/metrics", "/scrape/app/metrics", "/nope"])(
    "%s with a foreign Host: 421 naming the Host and the config field",
    async (path) => {
      const p = await start();
      const r = await request(p.port, path, { headers: { host: "rebind.evil.example:9480" } });
      expect(r.status).toBe(421);
      expect(r.headers[ERROR_HEADER]).toBe("host-not-allowed");
      expect(r.text).toBe(
        `scrapez proxy: Host "rebind.evil.example:9480" is not allowed for ${path}: use 127.0.0.1, localhost or ` +
          "the listen address, or add the name to allowedHosts in the proxy config\n",
      );
      expect((await request(p.port, path, { headers: { host: `127.0.0.1:${p.port}` } })).status).not.toBe(421);
      expect((await request(p.port, path, { headers: { host: `localhost:${p.port}` } })).status).not.toBe(421);
    },
  );

  it("probes (/-/healthy, /-/ready) answer whatever the Host (kubelet sends the pod IP or its own)", async () => {
    const p = await start();
    for (const path of ["/-/healthy", "/-/ready"])
      expect((await request(p.port, path, { headers: { host: "evil.example" } })).status).toBe(200);
  });

  it("allowedHosts admits the names it lists", async () => {
    const p = await start({ allowedHosts: ["scrapez-proxy.monitoring.svc"] });
    const ok = await request(p.port, "/sd", { headers: { host: "Scrapez-Proxy.Monitoring.svc:9480" } });
    expect(ok.status).toBe(200);
    const no = await request(p.port, "/sd", { headers: { host: "scrapez-proxy.evil" } });
    expect(no.status).toBe(421);
  });

  it("with auth configured the credentials protect the endpoints: any Host with the token is served", async () => {
    const p = await start({ auth: { bearerTokenFile: tokenFile } });
    const ok = await request(p.port, "/sd", {
      headers: { host: "scrapez-proxy.example", authorization: `Bearer ${token}` },
    });
    expect(ok.status).toBe(200);
    expect((await request(p.port, "/sd", { headers: { host: "scrapez-proxy.example" } })).status).toBe(401);
  });

  it("absolute-form proxy requests and CONNECT are not affected (their Host is the target)", async () => {
    const p = await start();
    const r = await request(p.port, "http://app/metrics", { headers: { host: "app" } });
    expect(r.status).toBe(200);
    const c = await connect(p.port, "app:80");
    expect(c.status).toBe(200);
    c.socket.destroy();
  });

  it("rejects bad allowedHosts entries with the field named", async () => {
    await expect(start({ allowedHosts: ["http://x"] })).rejects.toThrow(/allowedHosts\.0|allowedHosts\[0\]/);
  });
});

describe("bounded pools and metric labels", () => {
  it("10,000 distinct replica names: pools and label values stay bounded", async () => {
    // "app"'s replicas cannot be listed (the request fails): only then does the dial decide whether a name exists.
    const o = overlay();
    o.replicas = (service) =>
      service === "app"
        ? Promise.reject(new Error("controller unavailable"))
        : StandInOverlay.prototype.replicas.call(o, service);
    const p = await start({ agent: { maxPools: 16, maxSocketsPerService: 2, keepAliveSeconds: 60 } }, o);
    const client = new http.Agent({ keepAlive: true, maxSockets: 16 });
    let maxPools = 0;
    let next = 0;
    const statuses = new Map<number, number>();
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < 10_000) {
          const i = next++;
          const r = await request(p.port, `http://r${i}~app/metrics`, { agent: client });
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
          maxPools = Math.max(maxPools, p.proxy.poolCount);
        }
      }),
    );
    client.destroy();
    // The dial decides, and the stand-in has no terminator for any of them.
    expect(statuses.get(502)).toBe(10_000);
    expect(maxPools).toBeLessThanOrEqual(16);
    expect(p.proxy.poolCount).toBeLessThanOrEqual(16);
    const m = (await request(p.port, "/metrics")).text;
    const series = m.split("\n").filter((l) => l.startsWith("scrapez_proxy_"));
    expect(series.some((l) => /r\d+/.test(l))).toBe(false);
    expect(series.length).toBeLessThan(100);
    expect(metric(m, "scrapez_proxy_pools")).toBeLessThanOrEqual(16);
    // Every name past the first 16 pushed one pool out, and the operator can see it.
    expect(metric(m, "scrapez_proxy_pool_evictions_total")).toBeGreaterThanOrEqual(10_000 - 16);
    process.stdout.write(`[proxy] 10,000 replica names: at most ${maxPools} pools, ${series.length} series\n`);
    // 10,000 requests take ~16 s on an idle 2-core machine; the suite's three files at a time doubled that once.
  }, 120_000);

  it("a replica the overlay does not list is refused without a dial and gets no pool", async () => {
    const p = await start();
    const dials = p.overlay.dials.length;
    for (let i = 0; i < 50; i++) {
      const r = await request(p.port, `http://r${i}~multi/metrics`);
      expect(r.status).toBe(502);
      expect(r.headers[ERROR_HEADER]).toBe("not-dialable");
      expect(r.text).toBe(
        `scrapez proxy: service "multi" has no replica "r${i}": its replicas are "bind-a", "bind-b"; address one as bind-a~multi\n`,
      );
    }
    expect(p.overlay.dials.length).toBe(dials);
    expect(p.proxy.poolCount).toBe(0);
    expect((await request(p.port, "http://bind-a~multi/metrics")).status).toBe(200);
    expect((await request(p.port, "http://BIND-A~multi/metrics")).status).toBe(200);
    expect(p.proxy.poolCount).toBe(1);
  });

  it("a pool with no connection left goes after keepAliveSeconds", async () => {
    const p = await start({ agent: { keepAliveSeconds: 0.2, maxSocketsPerService: 2, maxPools: 8 } });
    expect((await request(p.port, "http://app/metrics")).status).toBe(200);
    expect((await request(p.port, "http://bind-a~multi/metrics")).status).toBe(200);
    expect(p.proxy.poolCount).toBe(2);
    await waitUntil(() => p.proxy.poolCount === 0, 10_000, "idle pools dropped");
  });

  it("the least recently used pool goes first; one still in use finishes its request", async () => {
    const made: string[] = [];
    const destroyed: string[] = [];
    const retired: string[] = [];
    const fake = (name: string, idle: boolean) =>
      ({
        idle,
        lastUsed: Date.now(),
        destroy: () => destroyed.push(name),
        retire: () => retired.push(name),
      }) as unknown as import("../../src/proxy/agent.js").OverlayAgent;
    let evictions = 0;
    const cache = new AgentCache({ max: 2, idleMs: 60_000, onEvict: () => evictions++ });
    const get = (name: string, idle = true) =>
      cache.get(name, () => {
        made.push(name);
        return fake(name, idle);
      });
    get("a", false);
    get("b");
    get("a"); // a is now the most recent
    get("c"); // evicts b
    get("d"); // evicts a, which is busy: retired, not destroyed
    expect(made).toEqual(["a", "b", "c", "d"]);
    expect(destroyed).toEqual(["b"]);
    expect(retired).toEqual(["a"]);
    expect(evictions).toBe(2);
    expect(cache.size).toBe(2);
    cache.close();
  });

  it("label values: HTTP statuses bucketed, error codes from fixed sets only", async () => {
    expect(codeLabel(200)).toBe("200");
    expect(codeLabel(502)).toBe("502");
    expect(codeLabel(777)).toBe("7xx");
    expect(codeLabel(599)).toBe("5xx");
    expect(resultLabel(ErrorCodes.DIAL_FAILED)).toBe(ErrorCodes.DIAL_FAILED);
    expect(resultLabel("ECONNRESET")).toBe("ECONNRESET");
    expect(resultLabel("HPE_INVALID_STATUS")).toBe("HPE_INVALID_STATUS");
    expect(resultLabel("chosen by a peer")).toBe("error");
    expect(resultLabel(undefined)).toBe("error");
    const p = await start();
    expect((await request(p.port, "http://raw/s777")).status).toBe(777);
    const m = (await request(p.port, "/metrics")).text;
    expect(metric(m, 'scrapez_proxy_requests_total{service="raw",code="7xx"}')).toBe(1);
    expect(m).not.toMatch(/code="777"/);
  });
});

describe("CONNECT tunnels are capped and time out when idle; proxy credentials never reach the exporter", () => {
  it("over tunnels.maxConcurrent: 503 with a one-line reason; a closed tunnel frees its place", async () => {
    const p = await start({ tunnels: { maxConcurrent: 2, idleSeconds: 60 } });
    // Refused and failed tunnels give their place back.
    for (const t of ["nope:443", "broken:443", "nope2:443"]) (await connect(p.port, t)).socket.destroy();
    await waitUntil(() => p.proxy.tunnelCount === 0, 10_000, "refused and failed tunnels gave their places back");
    const a = await connect(p.port, "echo:443");
    const b = await connect(p.port, "echo:443");
    expect([a.status, b.status]).toEqual([200, 200]);
    const c = await connect(p.port, "echo:443");
    expect(c.status).toBe(503);
    expect(c.response).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(c.response).toMatch(/x-scrapez-proxy-error: too-many-tunnels\r\n/i);
    expect(await readAll(c.socket)).toBe(
      "scrapez proxy: too many CONNECT tunnels open (2, tunnels.maxConcurrent); try again later\n",
    );
    expect(p.proxy.tunnelCount).toBe(2);
    a.socket.destroy();
    await waitUntil(() => p.proxy.tunnelCount === 1, 10_000, "the closed tunnel's place is free");
    const d = await connect(p.port, "echo:443");
    expect(d.status).toBe(200);
    d.socket.write("ping");
    d.socket.resume();
    const m = (await request(p.port, "/metrics")).text;
    expect(metric(m, 'scrapez_proxy_tunnel_events_total{event="over-limit"}')).toBe(1);
    expect(metric(m, 'scrapez_proxy_requests_total{service="(limit)",code="503"}')).toBe(1);
    expect(metric(m, "scrapez_proxy_tunnels_open")).toBe(2);
    b.socket.destroy();
    d.socket.destroy();
    await waitUntil(() => p.proxy.tunnelCount === 0, 10_000, "every tunnel's place is free");
  });

  it("a tunnel with no byte either way for tunnels.idleSeconds is closed; a busy one is not", async () => {
    const p = await start({ tunnels: { maxConcurrent: 8, idleSeconds: 1.5 } });
    const idle = await connect(p.port, "echo:443");
    const busy = await connect(p.port, "echo:443");
    expect([idle.status, busy.status]).toEqual([200, 200]);
    let echoed = "";
    busy.socket.on("data", (d: Buffer) => (echoed += d.toString()));
    busy.socket.resume();
    let idleClosed = false;
    idle.socket.once("close", () => (idleClosed = true));
    idle.socket.resume();
    // Bytes every 100 ms for 4 s (well past the idle limit) keep the busy tunnel open.
    for (let i = 0; i < 40; i++) {
      busy.socket.write(".");
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitUntil(() => idleClosed, 10_000, "the idle tunnel closed");
    expect(busy.socket.destroyed).toBe(false);
    await waitUntil(() => echoed.length === 40, 5_000, "the busy tunnel's bytes echoed");
    let busyClosed = false;
    busy.socket.once("close", () => (busyClosed = true));
    await waitUntil(() => busyClosed, 10_000, "the busy tunnel closed once idle");
    const m = (await request(p.port, "/metrics")).text;
    expect(metric(m, 'scrapez_proxy_tunnel_events_total{event="idle-timeout"}')).toBe(2);
    expect(p.proxy.tunnelCount).toBe(0);
  });

  it.each([
    ["the proxy token in Authorization only", { authorization: `Bearer ${token}` }, undefined],
    [
      "proxy_url userinfo and the job's authorization, both the proxy's",
      { "proxy-authorization": basic("prometheus", token), authorization: `Bearer ${token}` },
      undefined,
    ],
    [
      "proxy_url userinfo for the proxy and the target's own bearer token",
      { "proxy-authorization": basic("prometheus", token), authorization: "Bearer for-the-exporter" },
      "Bearer for-the-exporter",
    ],
    [
      "the proxy's token as Bearer in one header and as Basic in the other",
      { "proxy-authorization": `Bearer ${token}`, authorization: basic("anyone", token) },
      undefined,
    ],
    ["the token as a Basic password in Authorization", { authorization: basic("x", token) }, undefined],
    [
      "the proxy's token in Proxy-Authorization and a target's Basic credentials",
      { "proxy-authorization": `Bearer ${token}`, authorization: basic("scraper", "exporter-pw") },
      basic("scraper", "exporter-pw"),
    ],
  ])("%s", async (_what, headers, want) => {
    const p = await start({ auth: { bearerTokenFile: tokenFile } });
    for (const target of ["http://app/metrics", "/scrape/app/metrics"]) {
      const r = await request(p.port, target, { headers: headers as Record<string, string> });
      expect(r.status, target).toBe(200);
      expect(app.last.headers.authorization, target).toBe(want);
      expect(app.last.headers["proxy-authorization"], target).toBeUndefined();
    }
  });

  it("basic auth: the same credentials in both headers are both stripped", async () => {
    const pwFile = td.file("pw", "pw-123\n");
    const p = await start({ auth: { basic: { username: "prom", passwordFile: pwFile } } });
    const cred = basic("prom", "pw-123");
    const r = await request(p.port, "http://app/metrics", {
      headers: { "proxy-authorization": cred, authorization: cred },
    });
    expect(r.status).toBe(200);
    expect(app.last.headers.authorization).toBeUndefined();
  });
});

describe("a peer's bytes never throw out of an event handler", () => {
  it("a dialed stream that fails at once: 502 for a request, a closed tunnel for CONNECT, and the process serves on", async () => {
    const p = await start();
    const r = await request(p.port, "http://broken/metrics", { timeoutMs: 20_000 });
    expect(r.status).toBe(502);
    expect(r.text).toMatch(/service "broken" via identity "prometheus-central" is unreachable: connection reset/);
    const c = await connect(p.port, "broken:443");
    expect(c.status).toBe(200);
    await readAll(c.socket);
    expect((await request(p.port, "http://app/metrics")).status).toBe(200);
  });

  it.each([
    ["null", null],
    ["a string", "boom"],
    ["an object with a peer-chosen code", { code: "x\r\ninjected: 1", message: "odd" }],
  ])("a dial rejecting with %s: 502, bounded labels, no crash", async (_what, value) => {
    const o = overlay();
    o.fail.set("odd-failure", value);
    const p = await start({}, o);
    const r = await request(p.port, "http://odd-failure/metrics", { timeoutMs: 20_000 });
    expect(r.status).toBe(502);
    expect(r.headers[ERROR_HEADER]).toMatch(/^[a-zA-Z0-9_-]+$/);
    const c = await connect(p.port, "odd-failure:443");
    expect(c.status).toBe(502);
    c.socket.destroy();
    const m = (await request(p.port, "/metrics")).text;
    expect(m).not.toMatch(/injected/);
    expect((await request(p.port, "http://app/metrics")).status).toBe(200);
  });
});
