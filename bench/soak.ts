/**
 * Soak bench (`npm run bench -- soak [--scrapes=N]`): N scrapes of a real node_exporter through `scrapez proxy` +
 * `scrapez bind` on a real overlay (controller + router from test/harness), several in flight. Prints RSS growth
 * (target < 10 %) and fd counts (target: flat) of both scrapez processes between a warmed-up start and the end, and
 * the scrape rate as a ratio against references measured in the same run on the same machine: node_exporter
 * scraped directly, and through OpenZiti's Go tunnelers (`ziti tunnel proxy` + `ziti tunnel host`).
 *
 * The same stack serves the proxy HTTP fuzz (`npm run bench -- http-proxy [--requests=N]`).
 */
import http from "node:http";
import net from "node:net";
import { runCase, runFuzz } from "../test/harness/http-fuzz.js";
import { NodeExporter } from "../test/harness/node-exporter.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { mib, procStats, type ProcStats } from "../test/harness/proc-stats.js";
import { tempDir } from "../test/harness/process.js";
import { ScrapezProcess } from "../test/harness/scrapez.js";
import { ZitiTunnelHost, ZitiTunnelProxy } from "../test/harness/ziti-tunnel.js";
import { prng } from "../test/unit/prng.js";

const out = (s: string) => process.stdout.write(`${s}\n`);

export interface Stack {
  overlay: Overlay;
  exporter: NodeExporter;
  bind: ScrapezProcess;
  proxy: ScrapezProcess;
  proxyPort: number;
  goHost: ZitiTunnelHost;
  goProxy: ZitiTunnelProxy;
  close(): Promise<void>;
}

export async function startStack(): Promise<Stack> {
  const dir = tempDir("bench-soak");
  const overlay = await Overlay.start();
  const exporter = await NodeExporter.start();
  await overlay.service("node", { dial: ["#clients"], bind: ["#servers"] });
  const hostCfg = await overlay.createConfig("go-node-host", "host.v1", {
    protocol: "tcp",
    address: "127.0.0.1",
    port: exporter.port,
  });
  await overlay.service("go-node", { configs: [hostCfg], bind: ["#go-servers"] });
  const bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: await overlay.identity("bind-a", ["servers"], dir),
    logLevel: "warn", // no audit line per scrape: the soak measures the data path, not stderr
    targets: [{ service: "node", upstream: exporter.url, bindUsingEdgeIdentity: false }],
  });
  bind.start();
  const proxyPort = await freePort();
  const proxy = new ScrapezProcess("scrapez-proxy", "proxy", {
    identities: [await overlay.identity("prometheus-central", ["clients"], dir)],
    listen: `127.0.0.1:${proxyPort}`,
    logLevel: "warn",
  });
  proxy.start();
  const goHost = await ZitiTunnelHost.start(await overlay.identity("go-host", ["go-servers"], dir), ["go-node"]);
  const goProxy = await ZitiTunnelProxy.start(await overlay.identity("go-client", ["clients"], dir), "go-node");
  const agent = new http.Agent({ keepAlive: true });
  await waitUntil(
    async () => (await scrape(agent, proxyPort, "http://node/metrics")) === 200,
    60_000,
    "a scrape through scrapez",
  );
  agent.destroy();
  return {
    overlay,
    exporter,
    bind,
    proxy,
    proxyPort,
    goHost,
    goProxy,
    async close() {
      for (const p of [proxy, bind, goProxy, goHost]) await p.close();
      await exporter.close();
      await overlay.close();
    },
  };
}

/** One GET; resolves to the status (0: failed). The body is read and dropped. */
function scrape(agent: http.Agent, port: number, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(
      {
        host: "127.0.0.1",
        port,
        path,
        agent,
        headers: { host: "node", "x-prometheus-scrape-timeout-seconds": "10" },
        timeout: 15_000,
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
        res.on("error", () => resolve(0));
      },
    );
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

/** `count` scrapes, `concurrency` in flight, each connection kept alive (as Prometheus does). */
async function scrapeMany(
  port: number,
  path: string,
  count: number,
  concurrency: number,
  onProgress?: (done: number) => void,
): Promise<{ ok: number; failed: number; ms: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let next = 0;
  let ok = 0;
  let failed = 0;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next++;
        if ((await scrape(agent, port, path)) === 200) ok++;
        else failed++;
        if (onProgress && (ok + failed) % 10_000 === 0) onProgress(ok + failed);
      }
    }),
  );
  agent.destroy();
  return { ok, failed, ms: Date.now() - t0 };
}

const growth = (a: ProcStats, b: ProcStats) =>
  `RSS ${mib(a.rss)} -> ${mib(b.rss)} (${(((b.rss - a.rss) / a.rss) * 100).toFixed(1)} %), fds ${a.fds} -> ${b.fds}`;

export async function soakBench(stack: Stack, scrapes: number, concurrency = 8): Promise<void> {
  const { proxy, bind, proxyPort } = stack;
  // Warm up (pools, JIT, session caches, the V8 heap's first growth), then take the start figures.
  const warmUp = Math.max(2_000, Math.round(scrapes / 20));
  await scrapeMany(proxyPort, "http://node/metrics", warmUp, concurrency);
  await new Promise((r) => setTimeout(r, 1_000));
  const p0 = procStats(proxy.pid!);
  const b0 = procStats(bind.pid!);
  out(
    `soak: ${scrapes} scrapes through scrapez proxy + bind (real overlay, real node_exporter), ${concurrency} in flight`,
  );
  const res = await scrapeMany(proxyPort, "http://node/metrics", scrapes, concurrency, (n) => {
    const [p, b] = [procStats(proxy.pid!), procStats(bind.pid!)];
    out(`  ${n}: proxy RSS ${mib(p.rss)} fds ${p.fds}; bind RSS ${mib(b.rss)} fds ${b.fds}`);
  });
  await new Promise((r) => setTimeout(r, 2_000));
  const p1 = procStats(proxy.pid!);
  const b1 = procStats(bind.pid!);
  const rate = (res.ok + res.failed) / (res.ms / 1000);
  out(`soak: ${res.ok} x 200, ${res.failed} failed, ${(res.ms / 1000).toFixed(0)} s (${rate.toFixed(0)} scrapes/s)`);
  out(`soak: scrapez proxy ${growth(p0, p1)}`);
  out(`soak: scrapez bind  ${growth(b0, b1)}`);
  // References, same run: direct, and through the Go tunnelers (a shorter run: only the rate is compared).
  const refCount = Math.min(scrapes, 10_000);
  const direct = await scrapeMany(stack.exporter.port, "/metrics", refCount, concurrency);
  const go = await scrapeMany(stack.goProxy.port, "/metrics", refCount, concurrency);
  const r = (x: { ok: number; failed: number; ms: number }) => (x.ok + x.failed) / (x.ms / 1000);
  out(
    `soak: rate ${rate.toFixed(0)}/s; reference direct node_exporter ${r(direct).toFixed(0)}/s (ratio ` +
      `${(rate / r(direct)).toFixed(2)}), ziti tunnel proxy+host ${r(go).toFixed(0)}/s (ratio ${(rate / r(go)).toFixed(2)}, ` +
      `${go.failed} failed)`,
  );
  const pct = (a: ProcStats, b: ProcStats) => ((b.rss - a.rss) / a.rss) * 100;
  const verdict =
    res.failed === 0 && pct(p0, p1) < 10 && pct(b0, b1) < 10 && p1.fds <= p0.fds + 4 && b1.fds <= b0.fds + 4;
  out(`soak: ${verdict ? "PASS" : "FAIL"} (targets: no failed scrape, RSS growth < 10 %, fds flat within 4)`);
  if (!verdict) process.exitCode = 1;
}

export async function proxyHttpFuzzBench(stack: Stack, count: number, seed: number): Promise<void> {
  const { proxy, proxyPort: port } = stack;
  const connect = () => net.connect({ host: "127.0.0.1", port });
  const s0 = procStats(proxy.pid!);
  const t0 = Date.now();
  const tally = await runFuzz({
    count,
    concurrency: 16,
    rngFor: (i) => prng((seed ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0),
    surface: "proxy",
    hosts: ["node", "node:80", "nosuch", "127.0.0.1:1", "localhost", "evil.example", ""],
    connect,
    timeoutMs: 5_000,
    maxFailures: 50,
    onProgress: (n) => n % 10_000 === 0 && out(`  ${n} requests`),
  });
  await new Promise((r) => setTimeout(r, 2_000));
  const s1 = procStats(proxy.pid!);
  const good = await runCase(
    connect(),
    { kind: "good", chunks: [Buffer.from("GET http://node/metrics HTTP/1.1\r\nHost: node\r\n\r\n")], finish: "end" },
    10_000,
    10_000,
  );
  out(
    `http (scrapez proxy process, real overlay), seed ${seed}: ${tally.summary()} in ` +
      `${((Date.now() - t0) / 1000).toFixed(1)} s; failures ${tally.failed}; proxy ${growth(s0, s1)}; ` +
      `alive ${proxy.running}; a good scrape after: ${good.outcome} ${good.status ?? ""}`,
  );
  for (const f of tally.failures.slice(0, 5)) out(`  failure: ${JSON.stringify(f)}`);
  if (tally.failed > 0 || !proxy.running || good.status !== 200) process.exitCode = 1;
}
