/**
 * `scrapez bind` as a real process against a real overlay and a real node_exporter.
 */
import { execFile } from "node:child_process";
import http from "node:http";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZitiContext, identityKeyPin } from "../../src/ziti/index.js";
import { contextInternals } from "../../src/ziti/internal.js";
import { zitiLine } from "../harness/binaries.js";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { listeningAddresses, waitUntil } from "../harness/ports.js";
import { ScrapezProcess, cliPath } from "../harness/scrapez.js";
import { tunnelProxy } from "../harness/ziti-tunnel.js";

const run = promisify(execFile);
let overlay: Overlay;
let exporter: NodeExporter;
let slow: http.Server;
let slowPort: number;
let bindId: string;
let bind: ScrapezProcess;
let client: ZitiContext;
let outsider: ZitiContext;
let agent: http.Agent;
let outsiderAgent: http.Agent;
const cleanup: (() => Promise<unknown>)[] = [];

interface Resp {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function get(a: http.Agent, host: string, path: string, headers: Record<string, string> = {}): Promise<Resp> {
  return new Promise((resolve, reject) => {
    http
      .get({ host, path, agent: a, headers, timeout: 20_000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      })
      .on("error", reject);
  });
}

function bindConfig(targets: object[], extra: object = {}) {
  return { identity: bindId, statusFile: join(bind?.dir ?? "/tmp", "status.json"), targets, ...extra };
}

const nodeTarget = () => ({
  service: "node",
  upstream: exporter.url,
  allow: {
    identities: ["prom-client"],
    keys: { "prom-client": identityKeyPin(contextInternals(client).identity.certPem) },
  },
});
const slowTarget = { service: "slow", upstream: "", paths: ["/metrics"] };

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  slow = http.createServer((_req, res) => setTimeout(() => res.end("late\n"), 5_000));
  await new Promise<void>((r) => slow.listen(0, "127.0.0.1", r));
  slowPort = (slow.address() as { port: number }).port;
  slowTarget.upstream = `http://127.0.0.1:${slowPort}`;
  for (const s of ["node", "slow", "added", "replicated"])
    await overlay.service(s, { dial: ["#clients"], bind: ["#servers"] });
  bindId = await overlay.identity("bind-a", ["servers"]);
  client = await ZitiContext.fromIdentityFile(await overlay.identity("prom-client", ["clients"]));
  outsider = await ZitiContext.fromIdentityFile(await overlay.identity("outsider", ["clients"]));
  agent = client.httpAgent({ keepAlive: true });
  outsiderAgent = outsider.httpAgent({ keepAlive: true });
  bind = new ScrapezProcess("scrapez-bind", "bind", {});
  bind.writeConfig(bindConfig([nodeTarget(), slowTarget], { self: { service: "added-self-unused" } }));
});

afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
  agent?.destroy();
  outsiderAgent?.destroy();
  await client?.close();
  await outsider?.close();
  await bind?.close();
  slow?.close();
  await exporter?.close();
  await overlay?.close();
});

describe("scrapez bind (real overlay, real node_exporter)", () => {
  it("`scrapez probe --ready` fails before binding and passes after; the process listens on no port", async () => {
    const probe = (kind: string) =>
      run(process.execPath, [cliPath, "probe", kind, "--config", bind.configFile]).then(
        () => 0,
        (e: { code: number }) => e.code,
      );
    expect(await probe("--ready")).toBe(1);
    // "added-self-unused" has no policy: it must not block readiness, which counts targets only.
    bind.start();
    await bind.waitFor(async () => (await probe("--ready")) === 0, 60_000, "probe --ready passes");
    expect(await probe("--live")).toBe(0);
    expect(listeningAddresses(bind.pid!, { udp: true })).toEqual([]);
  });

  it("serves node_exporter through the overlay to our SDK: same metric families, Content-Type preserved, audited", async () => {
    const direct = await fetch(`${exporter.url}/metrics`);
    const directText = await direct.text();
    const r = await get(agent, "node", "/metrics");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe(direct.headers.get("content-type"));
    expect(metricNames(r.body)).toEqual(metricNames(directText));
    // gzip passes through untouched
    const gz = await get(agent, "node", "/metrics", { "accept-encoding": "gzip" });
    expect(gz.headers["content-encoding"]).toBe("gzip");
    await waitUntil(
      () =>
        bind
          .logLines()
          .some((l) => l.msg === "scrape" && l.caller === "prom-client" && l.service === "node" && l.status === 200),
      5_000,
      "an audit line for the scrape",
    );
    expect(listeningAddresses(bind.pid!, { udp: true })).toEqual([]);
  });

  it("serves OpenZiti's Go peer (ziti tunnel proxy) too", async () => {
    const goClient = await overlay.identity("prom-client-go", ["clients"]);
    // A Go tunneler sends no caller proof. A v1.x router asserts no dialer name, so there it cannot be verified and
    // is served by a target without an allow-list (test/integration/caller.test.ts shows one with a list refuses
    // it); a v2 router asserts the dialer's name (openziti/ziti#3547), so the bind names it, verified by the router.
    const { allow: _allow, ...open } = nodeTarget();
    const reloads = () => bind.logLines().filter((l) => l.msg === "config reloaded").length;
    const before = reloads();
    bind.writeConfig(bindConfig([open, slowTarget]));
    try {
      await waitUntil(() => reloads() > before, 15_000, "reload");
      const p = await tunnelProxy(goClient, "node");
      cleanup.push(() => p.proc.close());
      const text = await waitUntil(
        async () => {
          const r = await fetch(`http://127.0.0.1:${p.port}/metrics`).catch(() => undefined);
          return r?.ok ? r.text() : undefined;
        },
        30_000,
        "scrape via ziti tunnel proxy",
      );
      expect(metricNames(text)).toContain("node_load1");
      const line = await waitUntil(
        () => bind.logLines().find((l) => l.msg === "scrape" && l.claimed === "prom-client-go"),
        5_000,
        "the Go client's audit line",
      );
      expect(line).toMatchObject(
        zitiLine() === "2"
          ? { caller: "prom-client-go", verified_by: "router", status: 200 }
          : { caller: "unverified", verified_by: "none", status: 200 },
      );
    } finally {
      // The allow-list goes back even when an assertion above failed: the tests after this one rely on it.
      const restored = reloads();
      bind.writeConfig(bindConfig([nodeTarget(), slowTarget]));
      await waitUntil(() => reloads() > restored, 15_000, "reload with the allow-list back");
    }
  });

  it("answers 403 to a caller outside the allow-list and 404 to a path outside the list", async () => {
    const denied = await get(outsiderAgent, "node", "/metrics");
    expect(denied.status).toBe(403);
    const outsiderPin = identityKeyPin(contextInternals(outsider).identity.certPem);
    // Verified by its caller proof (v1.x) or named by the router (v2); either way not on the list.
    expect(denied.body).toBe(
      zitiLine() === "2"
        ? `scrapez bind: caller identity "outsider" (claims "outsider") is verified but not allowed to scrape service "node"\n`
        : `scrapez bind: caller key ${outsiderPin} (claims "outsider") is verified but not allowed to scrape service ` +
            `"node"; to admit it, list its name in allow.identities and this key under allow.keys\n`,
    );
    const notExposed = await get(agent, "node", "/debug/pprof");
    expect(notExposed.status).toBe(404);
    expect(notExposed.body).toMatch(/does not expose \/debug\/pprof \(allowed: \/metrics\)/);
  });

  it("a reload that removes a pin refuses that caller at once, on its kept-alive connection too, without re-binding", async () => {
    /** A GET on `agent` that also says which overlay connection carried it. */
    const getOn = (host: string) =>
      new Promise<{ status: number; socket: unknown }>((resolve, reject) => {
        const req = http.get({ host, path: "/metrics", agent, timeout: 20_000 }, (res) => {
          res.resume();
          res.on("end", () => resolve({ status: res.statusCode ?? 0, socket: req.socket }));
        });
        req.on("error", reject);
      });
    const count = (msg: string, service?: string) =>
      bind.logLines().filter((l) => l.msg === msg && (service === undefined || l.service === service)).length;
    const reloaded = async (config: object, what: string) => {
      const before = count("config reloaded");
      bind.writeConfig(config);
      await waitUntil(
        () => count("config reloaded") > before,
        15_000,
        what,
        () => bind.logTail(4096),
      );
    };
    const first = await getOn("node");
    expect(first.status).toBe(200);
    const bound = count("service bound", "node");
    const outsiderOnly = {
      identities: ["outsider"],
      keys: { outsider: identityKeyPin(contextInternals(outsider).identity.certPem) },
    };
    await reloaded(bindConfig([{ ...nodeTarget(), allow: outsiderOnly }, slowTarget]), "the pin removed");
    // The same kept-alive overlay connection: its next request is checked against the new list.
    const refused = await getOn("node");
    expect(refused.status).toBe(403);
    expect(refused.socket).toBe(first.socket);
    expect((await get(outsiderAgent, "node", "/metrics")).status).toBe(200);
    await reloaded(bindConfig([nodeTarget(), slowTarget]), "the pin back");
    expect((await getOn("node")).status).toBe(200);
    expect((await get(outsiderAgent, "node", "/metrics")).status).toBe(403);
    // Neither reload re-bound the service.
    expect(count("service bound", "node")).toBe(bound);
  });

  it("answers 504 within the scrape timeout header for a slow upstream", async () => {
    const t0 = Date.now();
    const r = await get(agent, "slow", "/metrics", { "x-prometheus-scrape-timeout-seconds": "2" });
    const took = Date.now() - t0;
    expect(r.status).toBe(504);
    expect(r.body).toMatch(/service "slow": upstream http:\/\/127\.0\.0\.1:\d+ did not answer within 1\.5s/);
    expect(took).toBeLessThan(2_000);
  });

  it("hot reload adds and removes a target while another keeps serving; an invalid config keeps the old one", async () => {
    bind.writeConfig(bindConfig([nodeTarget(), { service: "added", upstream: exporter.url }]));
    await waitUntil(
      () =>
        bind
          .logLines()
          .some((l) => l.msg === "config reloaded" && String(l.added) === "added" && String(l.removed) === "slow"),
      15_000,
      "a reload that adds 'added' and removes 'slow'",
      () => bind.logTail(4096),
    );
    expect((await get(agent, "added", "/metrics")).status).toBe(200);
    expect((await get(agent, "node", "/metrics")).status).toBe(200);
    const slowGone = await get(agent, "slow", "/metrics").then(
      (r) => r.status,
      (e: Error) => e.message,
    );
    expect(slowGone).toMatch(/no terminators|DIAL_FAILED|dial slow failed/);

    bind.writeConfig("targets: [ { service: added, upstream: not-a-url, bogus: 1 } ]\n");
    await waitUntil(
      () => bind.logLines().some((l) => l.msg === "new config rejected; keeping the running one"),
      15_000,
      "rejection",
    );
    const rejected = bind.logLines().find((l) => l.msg === "new config rejected; keeping the running one")!;
    expect(String(rejected.reason)).toMatch(/targets\[0\]\.upstream: not an http\(s\) URL/);
    expect((await get(agent, "node", "/metrics")).status).toBe(200);
    expect((await get(agent, "added", "/metrics")).status).toBe(200);
  });

  it("answers 502 naming the service and the cause when the exporter is down", async () => {
    await exporter.stop();
    try {
      const r = await get(agent, "node", "/metrics");
      expect(r.status).toBe(502);
      expect(r.body).toMatch(
        /^scrapez bind: service "node": upstream http:\/\/127\.0\.0\.1:\d+ refused the connection .*\(ECONNREFUSED\)\n$/,
      );
    } finally {
      await exporter.start();
    }
    expect((await get(agent, "node", "/metrics")).status).toBe(200);
  });

  it("two replicas binding the same service by edge identity are each reachable on their own", async () => {
    const bindB = await overlay.identity("bind-b", ["servers"]);
    const replicaTargets = [{ service: "replicated", upstream: exporter.url }];
    bind.writeConfig(bindConfig([nodeTarget(), ...replicaTargets]));
    const b = new ScrapezProcess("scrapez-bind-b", "bind", {});
    b.writeConfig({ identity: bindB, statusFile: join(b.dir, "status.json"), targets: replicaTargets });
    b.start();
    cleanup.push(() => b.close());
    await b.waitFor(() => b.logLines().some((l) => l.msg === "service bound"), 30_000, "replica b bound");
    await waitUntil(
      () =>
        get(agent, "replicated", "/metrics").then(
          (r) => r.status === 200,
          () => false,
        ),
      15_000,
      "replicated up",
    );
    for (const who of ["bind-a", "bind-b"]) {
      const c = await client.dial("replicated", { identity: who });
      c.write("GET /metrics HTTP/1.1\r\nHost: replicated\r\nConnection: close\r\n\r\n");
      const text = await new Promise<string>((resolve) => {
        let s = "";
        c.on("error", () => undefined);
        c.on("data", (d: Buffer) => (s += d.toString()));
        c.on("end", () => {
          c.end();
          resolve(s);
        });
      });
      expect(text).toMatch(/^HTTP\/1\.1 200 OK/);
    }
    const callers = (p: ScrapezProcess) =>
      p.logLines().filter((l) => l.msg === "scrape" && l.service === "replicated").length;
    // The audit line reaches the process's stderr about when the answer reaches us: wait for it, do not race it.
    await waitUntil(() => callers(bind) >= 1 && callers(b) >= 1, 10_000, "an audit line from each replica");
  });

  it("scrapes work again after the edge router restarts, without restarting scrapez bind", async () => {
    const pid = bind.pid;
    await overlay.stopRouter();
    await overlay.startRouter();
    const r = await waitUntil(
      () =>
        get(agent, "node", "/metrics").then(
          (x) => (x.status === 200 ? x : undefined),
          () => undefined,
        ),
      60_000,
      "a scrape after the router restart",
      () => bind.logTail(4096),
    );
    expect(metricNames(r.body)).toContain("node_load1");
    expect(bind.pid).toBe(pid);
    expect(bind.running).toBe(true);
  });
});

describe("scrapez bind: bad config exits before binding anything", () => {
  it.each([
    [
      "unknown key",
      { identity: "x.json", targets: [{ service: "a", upstream: "http://127.0.0.1:1" }], colour: 1 },
      /Unrecognized key.*colour|colour/,
    ],
    [
      "missing identity file",
      { identity: "/nonexistent/id.json", targets: [{ service: "a", upstream: "http://127.0.0.1:1" }] },
      /identity: file \/nonexistent\/id\.json does not exist/,
    ],
    [
      "bad URL",
      { identity: "x.json", targets: [{ service: "a", upstream: "ftp://x" }] },
      /targets\[0\]\.upstream: not an http\(s\) URL/,
    ],
  ])("%s", async (_name, cfg, message) => {
    const p = new ScrapezProcess("bad-bind", "bind", cfg);
    p.start();
    await waitUntil(() => !p.running, 10_000, "exit");
    expect(p.logTail()).toMatch(message);
    await p.close();
  });
});
