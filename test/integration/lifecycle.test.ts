/**
 * How `scrapez bind` and `scrapez proxy` behave as processes under a supervisor (Kubernetes, docker compose):
 * SIGTERM drains scrapes in flight within drainSeconds and exits 0; the proxy reloads its config on SIGHUP;
 * flags beat SCRAPEZ_* variables beat the file; both registries carry scrapez_build_info and the process metrics.
 * All real processes (dist/ CLI) on a real overlay, with a slow exporter the test controls.
 */
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { Overlay } from "../harness/overlay.js";
import { canConnect, freePort, waitUntil } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const dir = tempDir("lifecycle");
const token = "lifecycle-token-1";
const tokenFile = join(dir, "token");
let overlay: Overlay;
let slow: http.Server;
let slowUrl: string;
/** Requests the slow exporter has received (by `id` query parameter). */
const received = new Set<string>();
let bindId: string;
let promId: string;
let bind: ScrapezProcess;
let proxyPort: number;
const procs: ScrapezProcess[] = [];

interface Answer {
  status: number;
  body: string;
  /** When the answer was complete (Date.now()). */
  at: number;
}

/** GET through a proxy, absolute-form (as Prometheus's proxy_url does); rejects when the connection fails. */
function viaProxy(port: number, url: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    http
      .get(
        {
          host: "127.0.0.1",
          port,
          path: url,
          headers: { authorization: `Bearer ${token}`, ...headers },
          timeout: 90_000,
          agent: false,
        },
        (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body, at: Date.now() }));
          res.on("error", reject);
        },
      )
      .on("error", reject)
      .on("timeout", function (this: http.ClientRequest) {
        this.destroy(new Error("client timeout"));
      });
  });
}

function started(p: ScrapezProcess): ScrapezProcess {
  procs.push(p);
  return p.start();
}

/** Sends one signal to the CLI process itself (not its group) and returns when it was sent. */
function signal(p: ScrapezProcess, sig: NodeJS.Signals): number {
  process.kill(p.pid!, sig);
  return Date.now();
}

/** Waits until the process exited; returns when (Date.now(), polled every 50 ms). */
async function exited(p: ScrapezProcess, timeoutMs: number): Promise<number> {
  return waitUntil(
    () => (p.exitCode !== undefined ? Date.now() : undefined),
    timeoutMs,
    `${p.name} exited`,
    () => p.logTail(4096),
  );
}

const logged = (p: ScrapezProcess, msg: string) => p.logLines().filter((l) => l.msg === msg);

async function newProxy(name: string, config: object, extra: { args?: string[]; env?: NodeJS.ProcessEnv } = {}) {
  const port = await freePort();
  const p = started(
    new ScrapezProcess(
      name,
      "proxy",
      { identities: [promId], listen: `127.0.0.1:${port}`, auth: { bearerTokenFile: tokenFile }, ...config },
      tempDir(name),
      extra,
    ),
  );
  await p.waitFor(() => logged(p, "listening").length > 0, 30_000, "listening");
  await waitUntil(
    async () => (await viaProxy(port, "/-/ready")).status === 200,
    60_000,
    `${name} ready`,
    () => p.logTail(4096),
  );
  return { p, port };
}

async function newBind(name: string, services: string[], config: object = {}, extra = {}) {
  const b = started(
    new ScrapezProcess(
      name,
      "bind",
      {
        identity: bindId,
        targets: services.map((s) => ({ service: s, upstream: slowUrl, bindUsingEdgeIdentity: false })),
        ...config,
      },
      tempDir(name),
      extra,
    ),
  );
  await b.waitFor(() => logged(b, "service bound").length >= services.length, 60_000, "services bound");
  return b;
}

/** Scrapes `service` through the long-lived proxy until it answers 200 (its terminator is known to the router). */
async function until200(port: number, service: string): Promise<void> {
  await waitUntil(
    async () => (await viaProxy(port, `http://${service}/metrics`).catch(() => ({ status: 0 }))).status === 200,
    60_000,
    `${service} answers 200`,
  );
}

beforeAll(async () => {
  writeFileSync(tokenFile, `${token}\n`);
  overlay = await Overlay.start();
  slow = http.createServer((req, res) => {
    const q = new URL(req.url ?? "/", "http://x").searchParams;
    const id = q.get("id");
    if (id) received.add(id);
    const delay = Number(q.get("delay") ?? 0);
    setTimeout(() => {
      res.setHeader("content-type", "text/plain; version=0.0.4");
      res.end(`# TYPE slow_metric gauge\nslow_metric{id="${id ?? ""}"} 1\n`);
    }, delay);
  });
  await new Promise<void>((r) => slow.listen(0, "127.0.0.1", r));
  slowUrl = `http://127.0.0.1:${(slow.address() as net.AddressInfo).port}`;
  for (const s of ["slow", "slow-b", "bind-self"]) await overlay.service(s, { dial: ["#clients"], bind: ["#servers"] });
  bindId = await overlay.identity("lifecycle-bind", ["servers"]);
  promId = await overlay.identity("lifecycle-prom", ["clients"]);
  bind = await newBind("bind-main", ["slow"], { self: { service: "bind-self" } });
  ({ port: proxyPort } = await newProxy("proxy-main", {}));
  await until200(proxyPort, "slow");
}, 180_000);

afterAll(async () => {
  await Promise.allSettled(procs.map((p) => p.close()));
  await new Promise<void>((r) => (slow ? slow.close(() => r()) : r()));
  await overlay?.close();
});

describe("scrapez proxy on SIGTERM", () => {
  it("finishes a slow scrape in flight with 200, refuses new connections, and exits 0 within drainSeconds", async () => {
    const { p, port } = await newProxy("proxy-drain", { drainSeconds: 40 });
    await until200(port, "slow");
    const inFlight = viaProxy(port, "http://slow/metrics?delay=4000&id=proxy-drain");
    await waitUntil(() => received.has("proxy-drain"), 30_000, "the slow scrape reached the exporter");
    const sent = signal(p, "SIGTERM");
    await p.waitFor(() => logged(p, "shutting down: draining requests in flight").length > 0, 10_000, "drain start");
    expect(logged(p, "shutting down: draining requests in flight")[0]).toMatchObject({ inFlight: 1, drainSeconds: 40 });
    // Stopped listening at once: a new scraper connection is refused while the slow scrape is still under way.
    expect(await canConnect(port)).toBe(false);
    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.body).toContain('slow_metric{id="proxy-drain"} 1');
    const end = await exited(p, 60_000);
    expect(p.exitCode).toBe(0);
    expect(end - sent).toBeLessThan(40_000); // within the deadline: it left as soon as the scrape was done
    expect(logged(p, "drained").length).toBe(1);
    process.stdout.write(`[lifecycle] proxy: SIGTERM to exit ${end - sent} ms with a 4 s scrape in flight\n`);
  }, 120_000);

  it("closes a scrape still running at the deadline and exits 0 at the deadline, not when the scrape ends", async () => {
    const { p, port } = await newProxy("proxy-deadline", {}, { args: ["--drain-seconds", "2"] });
    await until200(port, "slow");
    const inFlight = viaProxy(port, "http://slow/metrics?delay=60000&id=proxy-deadline").then(
      (a) => a,
      (e: Error) => e,
    );
    await waitUntil(() => received.has("proxy-deadline"), 30_000, "the long scrape reached the exporter");
    const sent = signal(p, "SIGTERM");
    const end = await exited(p, 45_000);
    expect(p.exitCode).toBe(0);
    expect(end - sent).toBeGreaterThanOrEqual(2_000);
    expect(end - sent).toBeLessThan(45_000); // far less than the 60 s the scrape would take
    expect(logged(p, "drain deadline reached; closing what is left")[0]).toMatchObject({ unfinished: 1 });
    const r = await inFlight;
    expect(r instanceof Error || r.status !== 200).toBe(true);
  }, 120_000);
});

describe("scrapez bind on SIGTERM", () => {
  it("unbinds at once (new scrapes fail), finishes the scrape in flight with 200, and exits 0", async () => {
    const b = await newBind("bind-drain", ["slow-b"], { drainSeconds: 60 });
    await until200(proxyPort, "slow-b");
    // Prometheus's own deadline header (30 s) lets the 10 s scrape through the proxy's and bind's timeouts.
    const inFlight = viaProxy(proxyPort, "http://slow-b/metrics?delay=10000&id=bind-drain", {
      "x-prometheus-scrape-timeout-seconds": "30",
    });
    await waitUntil(() => received.has("bind-drain"), 30_000, "the slow scrape reached the exporter");
    const sent = signal(b, "SIGTERM");
    // While that scrape is still in flight, the service has no terminator any more: a new scrape is not served.
    const refused = await waitUntil(
      async () => {
        const a = await viaProxy(proxyPort, "http://slow-b/metrics?id=after-sigterm");
        return a.status !== 200 ? a : undefined;
      },
      9_000,
      "a new scrape of slow-b refused",
    );
    expect(refused.status).toBeGreaterThanOrEqual(500);
    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.body).toContain('slow_metric{id="bind-drain"} 1');
    expect(refused.at).toBeLessThan(answer.at);
    expect(received.has("after-sigterm")).toBe(false);
    const end = await exited(b, 90_000);
    expect(b.exitCode).toBe(0);
    expect(end - sent).toBeLessThan(60_000);
    expect(logged(b, "drained").length).toBe(1);
    process.stdout.write(`[lifecycle] bind: SIGTERM to exit ${end - sent} ms with a 10 s scrape in flight\n`);
  }, 150_000);
});

describe("scrapez proxy on SIGHUP", () => {
  it("applies a new token and log level live, refuses an invalid config and a new listen address, keeps serving", async () => {
    const d = tempDir("proxy-hup");
    const tokenA = join(d, "token-a");
    writeFileSync(tokenA, "token-aaaa\n");
    const { p, port } = await newProxy("proxy-hup", { auth: { bearerTokenFile: tokenA } });
    const metrics = (t: string) => viaProxy(port, "/metrics", { authorization: `Bearer ${t}` });
    expect((await metrics("token-aaaa")).status).toBe(200);

    // 1. A rotated token file (same config) and logLevel debug: both live.
    writeFileSync(tokenA, "token-bbbb\n");
    const cfg = { ...readConfig(p), logLevel: "debug" };
    p.writeConfig(cfg);
    signal(p, "SIGHUP");
    await p.waitFor(() => logged(p, "config reloaded").length === 1, 20_000, "reloaded");
    expect(logged(p, "config reloaded")[0]!.changed).toEqual(["logLevel"]);
    expect((await metrics("token-aaaa")).status).toBe(401);
    expect((await metrics("token-bbbb")).status).toBe(200);
    await viaProxy(port, "http://slow/metrics?id=hup-debug", { authorization: "Bearer token-bbbb" });
    await p.waitFor(() => p.logLines().some((l) => l.level === "debug"), 20_000, "a debug line after the reload");

    // 2. An invalid config: refused, the running one kept.
    p.writeConfig({ ...cfg, logLevel: "loud" });
    signal(p, "SIGHUP");
    await p.waitFor(() => logged(p, "new config rejected; keeping the running one").length === 1, 20_000, "reject");
    expect(String(logged(p, "new config rejected; keeping the running one")[0]!.reason)).toMatch(
      /logLevel: Invalid option/,
    );
    expect((await metrics("token-bbbb")).status).toBe(200);

    // 3. A new listen address needs a restart: refused as a whole (its auth change is not applied either).
    const other = await freePort();
    writeFileSync(join(d, "token-c"), "token-cccc\n");
    p.writeConfig({ ...cfg, listen: `127.0.0.1:${other}`, auth: { bearerTokenFile: join(d, "token-c") } });
    signal(p, "SIGHUP");
    await p.waitFor(() => logged(p, "new config rejected; keeping the running one").length === 2, 20_000, "reject 2");
    expect(String(logged(p, "new config rejected; keeping the running one")[1]!.reason)).toMatch(
      /listen changed: restart scrapez proxy/,
    );
    expect(await canConnect(other)).toBe(false);
    expect((await metrics("token-cccc")).status).toBe(401);
    expect((await metrics("token-bbbb")).status).toBe(200);
    expect(p.running).toBe(true);
    expect(p.logLines().some((l) => l.level === "fatal")).toBe(false);
  }, 120_000);
});

/** The YAML config the harness wrote for a process. */
function readConfig(p: ScrapezProcess): Record<string, unknown> {
  return YAML.parse(readFileSync(p.configFile, "utf8")) as Record<string, unknown>;
}

describe("flags, SCRAPEZ_* variables and the config file", () => {
  it("a flag wins over its variable, which wins over the file (listen and logLevel, on a real proxy)", async () => {
    const [filePort, envPort, flagPort] = [await freePort(), await freePort(), await freePort()];
    const d = tempDir("proxy-flags");
    const p = started(
      new ScrapezProcess(
        "proxy-flags",
        "proxy",
        {
          identities: [promId],
          listen: `127.0.0.1:${filePort}`,
          logLevel: "error",
          auth: { bearerTokenFile: tokenFile },
        },
        d,
        {
          args: ["--listen", `127.0.0.1:${flagPort}`, "--log-level", "info"],
          env: { SCRAPEZ_LISTEN: `127.0.0.1:${envPort}`, SCRAPEZ_LOG_LEVEL: "warn" },
        },
      ),
    );
    // The info line is only written because --log-level info beat SCRAPEZ_LOG_LEVEL=warn and the file's error.
    await p.waitFor(() => logged(p, "listening").length > 0, 30_000, "listening");
    expect(logged(p, "listening")[0]!.address).toBe(`127.0.0.1:${flagPort}`);
    expect(await canConnect(flagPort)).toBe(true);
    expect(await canConnect(envPort)).toBe(false);
    expect(await canConnect(filePort)).toBe(false);
  }, 60_000);

  it("bind takes its identity from --identity over the file, and refuses --listen as a usage error (exit 2)", async () => {
    // The file's identity does not exist and its logLevel is error: "service bound" (info) is only logged, and the
    // service only bound, because --identity and --log-level beat the file and SCRAPEZ_LOG_LEVEL=warn.
    const b = await newBind(
      "bind-flags",
      ["slow"],
      { identity: "does-not-exist.json", logLevel: "error" },
      { args: ["--identity", bindId, "--log-level", "info"], env: { SCRAPEZ_LOG_LEVEL: "warn" } },
    );
    expect(logged(b, "service bound")[0]).toMatchObject({ level: "info", service: "slow" });
    await b.stop();
    const refuse = started(
      new ScrapezProcess("bind-listen", "bind", { identity: bindId, targets: [] }, tempDir("bind-listen"), {
        args: ["--listen", "127.0.0.1:1"],
      }),
    );
    await exited(refuse, 30_000);
    expect(refuse.exitCode).toBe(2);
    expect(refuse.logTail()).toMatch(/scrapez bind listens on nothing, so it has no --listen/);
  }, 90_000);
});

describe("build info and process metrics", () => {
  const version = (
    JSON.parse(readFileSync(join(import.meta.dirname, "../../package.json"), "utf8")) as {
      version: string;
    }
  ).version;

  it("the proxy's /metrics has scrapez_build_info and the default process metrics, unprefixed", async () => {
    const r = await viaProxy(proxyPort, "/metrics");
    expect(r.status).toBe(200);
    // revision and branch: read from the checkout's .git (src/cli/build-info.ts).
    expect(r.body).toMatch(
      new RegExp(
        `^scrapez_build_info\\{version="${version}",revision="[0-9a-f]{40}",branch="[^"]+",nodeversion="${process.version}",command="proxy"\\} 1$`,
        "m",
      ),
    );
    for (const m of ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"])
      expect(r.body).toMatch(new RegExp(`^${m} [0-9.e+]+$`, "m"));
    expect(r.body).toMatch(/^nodejs_heap_size_used_bytes /m);
    expect(r.body).toMatch(/^scrapez_proxy_requests_total\{/m);
  });

  it("the bind side's self-metrics service has them too", async () => {
    const r = await waitUntil(
      async () => {
        // `self` is bound by edge identity: the replica host `<identity>~<service>` (docs/proxy.md "Names").
        const a = await viaProxy(proxyPort, "http://lifecycle-bind~bind-self/metrics");
        return a.status === 200 ? a : undefined;
      },
      60_000,
      "bind-self answers",
    );
    // revision and branch: read from the checkout's .git (src/cli/build-info.ts).
    expect(r.body).toMatch(
      new RegExp(
        `^scrapez_build_info\\{version="${version}",revision="[0-9a-f]{40}",branch="[^"]+",nodeversion="${process.version}",command="bind"\\} 1$`,
        "m",
      ),
    );
    expect(r.body).toMatch(/^process_resident_memory_bytes [0-9.e+]+$/m);
    expect(r.body).toMatch(/^scrapez_bind_scrapes_total\{/m);
    expect(bind.running).toBe(true);
  });
});
