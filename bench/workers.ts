/**
 * `node dist/bench/workers.js [--workers=1,2,4] [--seconds=3] [--rounds=3] [--concurrency=1,16,64]
 * [--payloads=static-60k,node_exporter]`: `scrapez proxy --workers N` for each N side by side in one run, on one
 * local overlay behind one `scrapez bind`, with OpenZiti's Go tunnelers (`ziti tunnel proxy` + `host`) as the
 * reference (issue 23 item 3). The paths and the e2e bench's loader (bench/e2e.ts): a keep-alive loader with
 * `concurrency` connections, the paths interleaved in each round, medians over rounds. Per cell: scrapes/s, p50, and
 * CPU seconds per 1,000 scrapes of the proxy (the primary and all its workers, from /proc) and of the far side.
 * Printed as ratios against the Go pair; the JSON goes to `.cache/bench/workers-<commit>.json`.
 *
 * One keep-alive connection is served by one worker, so c=1 cannot gain from workers; c=16 and 64 spread over them.
 * On a 2-core machine the overlay, the bind side, the loader and the Go tunnelers share the two cores with the
 * workers: read the ratios, and docs/proxy.md (Workers) for what a dedicated machine gives.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import { cpuSeconds, keepAliveLoad, median, quantile, rssMiB, staticExporter, writeResults } from "./measure.js";
import { NodeExporter } from "../test/harness/node-exporter.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { tempDir } from "../test/harness/process.js";
import { ScrapezProcess } from "../test/harness/scrapez.js";
import { ZitiTunnelHost, ZitiTunnelProxy } from "../test/harness/ziti-tunnel.js";

type Payload = "static-60k" | "node_exporter";

const args = process.argv.slice(2);
const opt = (name: string, fallback: string): string =>
  args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
const workerCounts = opt("workers", "1,2,4").split(",").map(Number);
const seconds = Number(opt("seconds", "3"));
const rounds = Number(opt("rounds", "3"));
const concurrency = opt("concurrency", "1,16,64").split(",").map(Number);
const payloads = opt("payloads", "static-60k,node_exporter").split(",") as Payload[];

/** A process and its descendants (a proxy's primary and its workers). */
function tree(pid: number): number[] {
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    /* gone */
  }
  return [pid, ...kids.flatMap(tree)];
}

const treeCpu = (pid: number) =>
  tree(pid).reduce((sum, p) => {
    try {
      return sum + cpuSeconds(p);
    } catch {
      return sum;
    }
  }, 0);
const treeRss = (pid: number) => tree(pid).reduce((sum, p) => sum + rssMiB(p), 0);

interface Route {
  request: () => http.RequestOptions;
  /** The processes on the path: CPU is counted over each one's tree. */
  pids: Record<string, number>;
}

/** `c` keep-alive loops for `seconds` (as bench/e2e.ts): good scrapes' latencies, failures, CPU per 1,000. */
async function load(route: Route, c: number) {
  const { lat, errors, elapsed, cpu } = await keepAliveLoad(route.request, c, seconds, route.pids, treeCpu);
  return { rate: lat.length / elapsed, p50: quantile(lat, 0.5), errors, cpu };
}

const say = (s: string) => process.stderr.write(`[workers] ${s}\n`);
const dir = tempDir("bench-workers");
say(`a local overlay, node_exporter, a static 60 KB server, scrapez bind, proxies with ${workerCounts} workers, Go`);
const overlay = await Overlay.start();
const exporter = await NodeExporter.start();
const staticServer = await staticExporter(60 * 1024);
const staticPort = staticServer.port;
const closers: (() => Promise<unknown>)[] = [() => staticServer.close(), () => exporter.close(), () => overlay.close()];
try {
  const upstream: Record<Payload, number> = { "static-60k": staticPort, node_exporter: exporter.port };
  const svc: Record<Payload, string> = { "static-60k": "static", node_exporter: "node" };
  for (const s of ["static", "node"]) await overlay.service(`sz-${s}`, { dial: ["#clients"], bind: ["#servers"] });
  for (const p of payloads) {
    const cfg = await overlay.createConfig(`go-${svc[p]}-host`, "host.v1", {
      protocol: "tcp",
      address: "127.0.0.1",
      port: upstream[p],
    });
    await overlay.service(`go-${svc[p]}`, { configs: [cfg], bind: ["#go-servers"] });
  }
  const bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: await overlay.identity("bind-a", ["servers"], dir),
    logLevel: "warn",
    targets: [
      { service: "sz-static", upstream: `http://127.0.0.1:${staticPort}`, bindUsingEdgeIdentity: false },
      { service: "sz-node", upstream: exporter.url, bindUsingEdgeIdentity: false },
    ],
  });
  bind.start();
  closers.unshift(() => bind.close());
  const promId = await overlay.identity("prometheus-central", ["clients"], dir);
  const proxies = new Map<number, { proc: ScrapezProcess; port: number }>();
  for (const n of workerCounts) {
    const port = await freePort();
    const proc = new ScrapezProcess(
      `scrapez-proxy-w${n}`,
      "proxy",
      { identities: [promId], listen: `127.0.0.1:${port}`, logLevel: "warn" },
      undefined,
      { env: { SCRAPEZ_WORKERS: String(n) } },
    );
    proc.start();
    closers.unshift(() => proc.close());
    proxies.set(n, { proc, port });
  }
  const goHost = await ZitiTunnelHost.start(
    await overlay.identity("go-host", ["go-servers"], dir),
    payloads.map((p) => `go-${svc[p]}`),
  );
  closers.unshift(() => goHost.close());
  const goClient = await overlay.identity("go-client", ["clients"], dir);
  const goProxies: Record<string, ZitiTunnelProxy> = {};
  for (const p of payloads) {
    const s = `go-${svc[p]}`;
    goProxies[s] = await ZitiTunnelProxy.start(goClient, s);
    closers.unshift(() => goProxies[s]!.close());
  }
  const viaProxy = (n: number, service: string) => () => ({
    host: "127.0.0.1",
    port: proxies.get(n)!.port,
    path: `http://${service}/metrics`,
  });
  // Every worker of every proxy answers before the clock starts (each connection goes to the next worker).
  for (const n of workerCounts) {
    for (const p of payloads) {
      await waitUntil(
        async () => {
          const oks = await Promise.all(
            Array.from(
              { length: 2 * n },
              () =>
                new Promise<boolean>((resolve) => {
                  const req = http.get({ ...viaProxy(n, `sz-${svc[p]}`)(), agent: false }, (res) => {
                    res.resume();
                    resolve(res.statusCode === 200);
                  });
                  req.on("error", () => resolve(false));
                }),
            ),
          );
          return oks.every(Boolean);
        },
        90_000,
        `sz-${svc[p]} through the proxy with ${n} workers`,
      );
    }
  }
  const paths = ["go", ...workerCounts.map((n) => `scrapez w${n}`)];
  const routes = (p: Payload): Record<string, Route> => ({
    go: {
      request: () => ({ host: "127.0.0.1", port: goProxies[`go-${svc[p]}`]!.port, path: "/metrics" }),
      pids: { proxy: goProxies[`go-${svc[p]}`]!.pid!, far: goHost.pid! },
    },
    ...Object.fromEntries(
      workerCounts.map((n) => [
        `scrapez w${n}`,
        { request: viaProxy(n, `sz-${svc[p]}`), pids: { proxy: proxies.get(n)!.proc.pid!, far: bind.pid! } },
      ]),
    ),
  });
  const samples = new Map<string, Awaited<ReturnType<typeof load>>[]>();
  for (let round = 1; round <= rounds; round++) {
    for (const p of payloads) {
      for (const c of concurrency) {
        // The order of the paths alternates between rounds, so none always runs after the same one.
        for (const path of round % 2 ? paths : [...paths].reverse()) {
          const r = await load(routes(p)[path]!, c);
          const k = `${p}|${c}|${path}`;
          samples.set(k, [...(samples.get(k) ?? []), r]);
        }
      }
    }
    say(`round ${round}/${rounds} done`);
  }
  const cells = [...samples].map(([k, rs]) => {
    const [payload, c, path] = k.split("|") as [Payload, string, string];
    return {
      payload,
      concurrency: Number(c),
      path,
      rate: median(rs.map((r) => r.rate)),
      p50: median(rs.map((r) => r.p50)),
      errors: rs.reduce((a, r) => a + r.errors, 0),
      cpuProxy: median(rs.map((r) => r.cpu.proxy!)),
      cpuFar: median(rs.map((r) => r.cpu.far!)),
    };
  });
  const rss = Object.fromEntries(workerCounts.map((n) => [`scrapez w${n}`, treeRss(proxies.get(n)!.proc.pid!)]));
  const cell = (p: Payload, c: number, path: string) =>
    cells.find((x) => x.payload === p && x.concurrency === c && x.path === path)!;
  let out = `\nscrapez proxy --workers N vs OpenZiti's Go tunnelers, one run, medians of ${rounds} rounds\n`;
  out +=
    "payload        c   path          scrapes/s  vs Go  vs w1   p50 ms  proxy CPU s/1000 (vs Go)  far side  errors\n";
  for (const p of payloads) {
    for (const c of concurrency) {
      const go = cell(p, c, "go");
      const w1 = cell(p, c, `scrapez w${workerCounts[0]}`);
      for (const path of paths) {
        const x = cell(p, c, path);
        out +=
          `${p.padEnd(14)} ${String(c).padStart(2)}  ${path.padEnd(12)} ${x.rate.toFixed(0).padStart(10)} ` +
          `${(x.rate / go.rate).toFixed(2).padStart(6)} ${(x.rate / w1.rate).toFixed(2).padStart(6)} ` +
          `${x.p50.toFixed(1).padStart(8)}  ${x.cpuProxy.toFixed(3).padStart(8)} (${(x.cpuProxy / go.cpuProxy).toFixed(2)})` +
          `${"".padStart(9)}${x.cpuFar.toFixed(3).padStart(8)}  ${String(x.errors).padStart(6)}\n`;
      }
    }
  }
  out += `RSS after load (the primary and its workers): ${Object.entries(rss)
    .map(([k, v]) => `${k} ${v.toFixed(0)} MiB`)
    .join(", ")}; go proxy ${rssMiB(goProxies[`go-${svc[payloads[0]!]}`]!.pid!).toFixed(0)} MiB\n`;
  out += `load average: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}\n`;
  process.stdout.write(out);
  writeResults("workers", { seconds, rounds, workers: workerCounts, cells, rss });
} finally {
  for (const close of closers) await close().catch(() => undefined);
}
