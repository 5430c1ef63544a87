/**
 * `scrapez proxy --workers 2` on the real overlay, scraped by a real Prometheus (issue 23 item 3): both workers
 * answer scrapes (each connection goes to the next worker in turn), /metrics adds up what each counted, /sd and
 * /status say the same whichever worker answers, SIGHUP reloads both, a worker killed is started again while the
 * other keeps serving (and no counter at /metrics goes down), a stuck worker fails a reload after a time limit
 * instead of holding it, the primary survives a worker killed while it talks to it, SIGTERM drains both, and a proxy
 * whose workers cannot start exits 1 with their reason.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StatusDocument } from "../../src/proxy/status/json.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { removeDir, tempDir } from "../harness/process.js";
import { Prometheus } from "../harness/prometheus.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const dir = tempDir("proxy-workers-test");
const tokenFile = join(dir, "token");
let token = "workers-token-1";
let overlay: Overlay;
let exporter: NodeExporter;
let bind: ScrapezProcess;
let proxy: ScrapezProcess;
let prom: Prometheus;
let proxyPort: number;
let promId: string;

/** One request on a connection of its own (so the primary hands each to the next worker). */
function request(
  path: string,
  headers: http.OutgoingHttpHeaders = { authorization: `Bearer ${token}` },
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: proxyPort, path, agent: false, headers: { connection: "close", ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error(`${path}: no answer in 15 s`)));
    req.on("error", reject);
    req.end();
  });
}

/** The samples of one metric family in a text exposition: `{labels} value` per line. */
function samples(text: string, name: string): { labels: string; value: number }[] {
  const out: { labels: string; value: number }[] = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) out.push({ labels: m[2] ?? "", value: Number(m[3]) });
  }
  return out;
}

const value = (text: string, name: string, labels: string) =>
  samples(text, name).find((s) => s.labels === labels)?.value ?? 0;

/** Each worker's count of requests it answered, by slot. */
function perWorker(text: string): Map<string, number> {
  return new Map(
    samples(text, "scrapez_proxy_worker_requests_total").map((s) => [/worker="(\d+)"/.exec(s.labels)![1]!, s.value]),
  );
}

async function metrics(): Promise<string> {
  const r = await request("/metrics");
  expect(r.status).toBe(200);
  return r.body;
}

/** The worker processes: the primary's children. */
function workerPids(): number[] {
  const pid = proxy.pid!;
  return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
}

/** The proxy's log lines (JSON) since it had `mark` of them. */
const linesSince = (mark: number) => proxy.logLines().slice(mark);

/**
 * Sends the primary SIGHUP and waits until it logs that every worker took the config; returns the worker slots
 * that logged "config reloaded" for it.
 */
async function reloadAll(what: string): Promise<number[]> {
  const mark = proxy.logLines().length;
  process.kill(proxy.pid!, "SIGHUP");
  await proxy.waitFor(() => linesSince(mark).some((l) => l.msg === "config reloaded by every worker"), 20_000, what);
  return linesSince(mark)
    .filter((l) => l.msg === "config reloaded")
    .map((l) => l.worker as number);
}

/** A worker process's slot (the primary starts it with SCRAPEZ_WORKER_SLOT in its environment). */
function slotOf(pid: number): number {
  const env = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
  return Number(env.find((e) => e.startsWith("SCRAPEZ_WORKER_SLOT="))!.split("=")[1]);
}

/** Bytes waiting to be read on a process's Unix sockets (its IPC channels to the workers), as `ss` shows them. */
function unreadByPrimary(pid: number): number {
  return execFileSync("ss", ["-xpH"], { encoding: "utf8" })
    .split("\n")
    .filter((l) => l.includes(`pid=${pid},`))
    .reduce((sum, l) => sum + Number(l.trim().split(/\s+/)[2] ?? 0), 0);
}

/** Every sample of the proxy's `_total` counters, by name and labels. */
function totals(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^(scrapez_proxy_[a-zA-Z0-9_:]*_total)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m) out.set(`${m[1]}${m[2] ?? ""}`, Number(m[3]));
  }
  return out;
}

/** No counter of `earlier` is lower (or missing) in `later`: Prometheus would read that as a counter reset. */
function expectNoDrop(earlier: Map<string, number>, later: Map<string, number>, when: string): void {
  expect(earlier.size, "counters before").toBeGreaterThan(5);
  const dropped = [...earlier]
    .filter(([k, v]) => (later.get(k) ?? -1) < v)
    .map(([k, v]) => `${k}: ${v} -> ${later.get(k)}`);
  expect(dropped, when).toEqual([]);
}

beforeAll(async () => {
  writeFileSync(tokenFile, `${token}\n`);
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  // `node` is Prometheus's (through /sd); `node2` the test's own scrapes, which nothing else touches.
  for (const s of ["node", "node2"]) await overlay.service(s, { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("bind-a", ["servers"]);
  promId = await overlay.identity("prometheus-central", ["clients"]);
  bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: bindId,
    targets: [
      { service: "node", upstream: exporter.url },
      { service: "node2", upstream: exporter.url, bindUsingEdgeIdentity: false },
    ],
  });
  bind.start();
  await bind.waitFor(
    () => bind.logLines().filter((l) => l.msg === "service bound").length >= 2,
    60_000,
    "both services bound",
  );
  proxyPort = await freePort();
  proxy = new ScrapezProcess(
    "scrapez-proxy",
    "proxy",
    { identities: [promId], listen: `127.0.0.1:${proxyPort}`, auth: { bearerTokenFile: tokenFile } },
    undefined,
    { args: ["--workers", "2"] },
  );
  proxy.start();
  await proxy.waitFor(
    () => proxy.logLines().some((l) => l.msg === "listening" && l.workers === 2),
    60_000,
    "both workers listening",
  );
  prom = await Prometheus.start(
    {
      global: { scrape_interval: "2s", scrape_timeout: "2s", evaluation_interval: "2s" },
      scrape_configs: [
        {
          job_name: "overlay",
          proxy_url: `http://127.0.0.1:${proxyPort}`,
          authorization: { type: "Bearer", credentials_file: tokenFile },
          http_sd_configs: [
            {
              url: `http://127.0.0.1:${proxyPort}/sd?service=node`,
              refresh_interval: "2s",
              authorization: { type: "Bearer", credentials_file: tokenFile },
            },
          ],
        },
      ],
    },
    { version: "3" },
  );
}, 240_000);

afterAll(async () => {
  await prom?.close();
  await proxy?.close();
  await bind?.close();
  await exporter?.close();
  await overlay?.close();
  removeDir(dir);
});

const promUp = () =>
  prom.waitForTargets(
    (t) => t.length === 1 && t[0]!.health === "up" && t[0]!.labels.instance === "bind-a~node",
    60_000,
  );

describe("scrapez proxy --workers 2 on the real overlay", () => {
  it("both workers answer scrapes, and /metrics adds up what each counted", async () => {
    await promUp();
    expect(workerPids()).toHaveLength(2);
    const before = await metrics();
    const n = 40;
    for (let i = 0; i < n; i++) {
      const r = await request("http://node2/metrics");
      expect(r.status).toBe(200);
      expect(r.body).toContain("node_exporter_build_info");
    }
    const after = await metrics();
    // Each worker answered some of them (a connection each, handed out in turn) ...
    const w0 = perWorker(before);
    const w1 = perWorker(after);
    expect([...w1.keys()].sort()).toEqual(["1", "2"]);
    for (const w of ["1", "2"]) expect(w1.get(w)! - (w0.get(w) ?? 0)).toBeGreaterThanOrEqual(n / 4);
    // ... and /metrics, whichever worker answered it, counts all of them once.
    const ok = '{service="node2",code="200"}';
    expect(value(after, "scrapez_proxy_requests_total", ok) - value(before, "scrapez_proxy_requests_total", ok)).toBe(
      n,
    );
    expect(value(after, "scrapez_proxy_workers", "")).toBe(2);
    // One build, one start time (the earliest), whatever the number of processes.
    expect(samples(after, "scrapez_build_info").map((s) => s.value)).toEqual([1]);
    expect(samples(after, "process_start_time_seconds")).toHaveLength(1);
    // Prometheus's scrapes of `node` went through the proxy too.
    expect(value(after, "scrapez_proxy_requests_total", '{service="node",code="200"}')).toBeGreaterThan(0);
  });

  it("/sd and /status say the same whichever worker answers", async () => {
    const answeredBefore = perWorker(await metrics());
    const sd = new Set<string>();
    const ids = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const r = await request("/sd");
      expect(r.status).toBe(200);
      sd.add(r.body);
      const groups = JSON.parse(r.body) as { targets: string[] }[];
      for (const g of groups) for (const t of g.targets) ids.add(t);
    }
    expect(sd.size).toBe(1);
    expect([...ids].sort()).toEqual(["bind-a~node", "node2"]);
    // The test's own 40 scrapes of node2 went to both workers; /status counts them all, whoever answers, also when
    // several requests come at once (they share what the primary collects).
    const counts = new Set<number>();
    for (let i = 0; i < 2; i++) {
      for (const r of await Promise.all([0, 1, 2].map(() => request("/status.json")))) {
        expect(r.status).toBe(200);
        const doc = JSON.parse(r.body) as StatusDocument;
        const row = doc.targets.find((t) => t.service === "node2")!;
        expect(row.state).toBe("ok");
        counts.add(row.window.scrapes);
        expect(doc.targets.find((t) => t.replica === "bind-a")?.window.scrapes).toBeGreaterThan(0);
      }
    }
    expect([...counts]).toEqual([40]);
    // Both workers answered some of these /sd and /status requests (each on a connection of its own).
    const answeredAfter = perWorker(await metrics());
    for (const w of ["1", "2"]) {
      expect(answeredAfter.get(w)! - (answeredBefore.get(w) ?? 0), `worker ${w}`).toBeGreaterThanOrEqual(3);
    }
  });

  it("SIGHUP reaches every worker: a rotated token is required by both", async () => {
    const old = token;
    token = "workers-token-2";
    writeFileSync(tokenFile, `${token}\n`);
    const reloaded = await reloadAll("the reload confirmed by both workers");
    expect(reloaded.sort()).toEqual([1, 2]);
    const before = perWorker(await metrics());
    for (let i = 0; i < 10; i++) {
      expect((await request("http://node2/metrics", { authorization: `Bearer ${old}` })).status).toBe(401);
      expect((await request("http://node2/metrics")).status).toBe(200);
    }
    const after = perWorker(await metrics());
    for (const w of ["1", "2"]) expect(after.get(w)! - before.get(w)!).toBeGreaterThanOrEqual(5);
    await promUp(); // Prometheus reads the token file at each scrape
  });

  it("a worker that dies is started again, scrapes go on meanwhile, and no counter at /metrics goes down", async () => {
    const [victim, survivor] = workerPids();
    // Traffic on both workers first, so the one killed has counted something of its own.
    for (let i = 0; i < 10; i++) expect((await request("http://node2/metrics")).status).toBe(200);
    const counted = totals(await metrics());
    const mark = proxy.logLines().length;
    process.kill(victim!, "SIGKILL");
    await proxy.waitFor(
      () =>
        proxy
          .logLines()
          .slice(mark)
          .find((l) => l.msg === "a worker exited; starting it again" && l.signal === "SIGKILL"),
      10_000,
      "the dead worker noticed",
    );
    // While it is down, the other worker takes every connection, and /metrics still counts what the dead one did.
    for (let i = 0; i < 5; i++) expect((await request("http://node2/metrics")).status).toBe(200);
    const whileDown = totals(await metrics());
    expectNoDrop(counted, whileDown, "while the killed worker is down");
    await waitUntil(
      async () => {
        const pids = workerPids();
        if (pids.length !== 2 || pids.includes(victim!)) return false;
        return value(await metrics(), "scrapez_proxy_workers", "") === 2;
      },
      30_000,
      "a new worker in place of the killed one",
    );
    expect(workerPids()).toContain(survivor);
    const text = await metrics();
    expectNoDrop(whileDown, totals(text), "once the killed worker is back");
    expect(samples(text, "scrapez_proxy_worker_restarts_total").reduce((a, s) => a + s.value, 0)).toBe(1);
    const before = perWorker(text);
    for (let i = 0; i < 20; i++) expect((await request("http://node2/metrics")).status).toBe(200);
    const after = perWorker(await metrics());
    for (const w of ["1", "2"]) expect(after.get(w)! - before.get(w)!).toBeGreaterThanOrEqual(5);
    // Prometheus's scrapes carry on.
    const promOk = '{service="node",code="200"}';
    const seen = value(await metrics(), "scrapez_proxy_requests_total", promOk);
    await waitUntil(
      async () => value(await metrics(), "scrapez_proxy_requests_total", promOk) >= seen + 2,
      30_000,
      "two more scrapes by Prometheus",
    );
    await promUp();
  });

  it("a reload that a stuck worker does not answer is reported as failed after a time limit; the next reaches both", async () => {
    const pids = workerPids();
    expect(pids).toHaveLength(2);
    const stuck = pids[0]!;
    const stuckSlot = slotOf(stuck);
    const otherSlot = slotOf(pids[1]!);
    const mark = proxy.logLines().length;
    const since = () => linesSince(mark);
    process.kill(stuck, "SIGSTOP");
    try {
      process.kill(proxy.pid!, "SIGHUP");
      await proxy.waitFor(
        () => since().some((l) => l.msg === "a worker refused the new config"),
        30_000,
        "the reload's outcome without the stuck worker",
      );
      const late = since().find((l) => l.msg === "a worker did not answer the reload in time; going on without it");
      expect(late?.worker).toBe(stuckSlot);
      const refused = since().find((l) => l.msg === "a worker refused the new config")!.refused as {
        worker: number;
        ok: boolean;
        reason?: string;
      }[];
      expect(refused).toEqual([
        { worker: stuckSlot, ok: false, reason: expect.stringMatching(/did not answer within/) },
      ]);
      // The other worker took the config meanwhile.
      expect(
        since()
          .filter((l) => l.msg === "config reloaded")
          .map((l) => l.worker),
      ).toEqual([otherSlot]);
      expect(since().some((l) => l.msg === "config reloaded by every worker")).toBe(false);
    } finally {
      process.kill(stuck, "SIGCONT");
    }
    // Once it runs again it takes the reload it was sent; its late answer is not taken for the next reload's.
    await proxy.waitFor(
      () => since().some((l) => l.msg === "config reloaded" && l.worker === stuckSlot),
      20_000,
      "the resumed worker's reload",
    );
    const both = await reloadAll("the next reload confirmed by both workers");
    expect(both.sort()).toEqual([1, 2]);
    expect(workerPids()).toContain(stuck);
    await promUp();
  });

  it("the primary survives a worker that vanishes while it collects /metrics or /status from it", async () => {
    // The primary is stopped while a worker asks it for /metrics (or /status) on a keep-alive connection, and a
    // worker is killed meanwhile. Once it runs again the primary reads the ask before it reads the dead worker's
    // end of the channel, so it writes to a worker that has gone (EPIPE): once an uncaught 'error' (exit 70).
    const primary = proxy.pid!;
    for (const [round, path] of ["/metrics", "/status.json", "/metrics"].entries()) {
      await waitUntil(
        async () => workerPids().length === 2 && value(await metrics(), "scrapez_proxy_workers", "") === 2,
        60_000,
        "both workers serving",
      );
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const onConnection = (p: string) =>
        new Promise<number>((resolve, reject) => {
          const req = http.get(
            { host: "127.0.0.1", port: proxyPort, path: p, agent, headers: { authorization: `Bearer ${token}` } },
            (res) => {
              res.resume();
              res.on("end", () => resolve(res.statusCode!));
              res.on("error", reject);
            },
          );
          req.setTimeout(30_000, () => req.destroy(new Error(`${p}: no answer in 30 s`)));
          req.on("error", reject);
        });
      try {
        expect(await onConnection("/-/healthy")).toBe(200); // the connection, now a worker's own
        const victim = workerPids()[round % 2]!;
        const mark = proxy.logLines().length;
        process.kill(primary, "SIGSTOP");
        let answer: Promise<number | Error>;
        try {
          answer = onConnection(path).catch((err: Error) => err); // the worker asks the stopped primary
          await waitUntil(() => unreadByPrimary(primary) > 0, 10_000, "the ask at the primary's end of the channel");
          process.kill(victim, "SIGKILL");
          // Dead (a zombie until the stopped primary reaps it).
          await waitUntil(() => /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${victim}/stat`, "utf8")), 10_000, "the kill");
        } finally {
          process.kill(primary, "SIGCONT");
        }
        await proxy.waitFor(
          () => linesSince(mark).some((l) => l.msg === "a worker exited; starting it again"),
          10_000,
          "the killed worker noticed",
        );
        // The answer is the surviving worker's (the dead one left out), or none if the dead worker had the connection.
        const got = await answer;
        if (typeof got === "number") expect(got, path).toBe(200);
        expect(proxy.running).toBe(true);
      } finally {
        agent.destroy();
      }
    }
    await waitUntil(
      async () => workerPids().length === 2 && value(await metrics(), "scrapez_proxy_workers", "") === 2,
      60_000,
      "both workers serving again",
    );
    expect(proxy.running).toBe(true);
    expect(proxy.logLines().filter((l) => /uncaught|unhandled/i.test(String(l.msg)))).toEqual([]);
    await promUp();
  });

  it("SIGTERM to the primary stops every worker, and the proxy exits 0", async () => {
    const pids = workerPids();
    expect(pids).toHaveLength(2);
    process.kill(proxy.pid!, "SIGTERM");
    await waitUntil(() => !proxy.running, 30_000, "the proxy to exit");
    expect(proxy.exitCode).toBe(0);
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
    expect(proxy.logLines().some((l) => l.msg === "every worker stopped")).toBe(true);
  });

  it("workers that cannot start (an invalid identity file) stop the proxy with exit code 1 and their reason", async () => {
    const bad = join(dir, "bad-identity.json");
    writeFileSync(bad, JSON.stringify({ ztAPI: "https://127.0.0.1:1/edge/client/v1", id: { cert: "x" } }), {
      mode: 0o600,
    });
    const broken = new ScrapezProcess(
      "scrapez-proxy-bad",
      "proxy",
      { identities: [bad], listen: `127.0.0.1:${await freePort()}` },
      undefined,
      { args: ["--workers", "2"] },
    );
    try {
      broken.start();
      await waitUntil(() => !broken.running, 60_000, "the proxy to give up");
      const log = broken.logTail(8192);
      expect(broken.exitCode, log).toBe(1);
      const fatal = broken.logLines().find((l) => l.msg === "cannot start: a worker could not start");
      expect(fatal?.reason, log).toMatch(/bad-identity\.json/);
      expect(broken.logLines().some((l) => l.msg === "listening")).toBe(false);
    } finally {
      await broken.close();
    }
  });
});
