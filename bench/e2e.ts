/**
 * `npm run bench -- e2e`: the scrape end to end, side by side with OpenZiti's Go tunnelers (issue 11), on one local
 * overlay in one run:
 *
 *   direct         the loader scrapes the exporter itself (the floor)
 *   scrapez        scrapez proxy (as Prometheus uses it: absolute-form requests) -> overlay -> scrapez bind
 *   go             `ziti tunnel proxy` (a TCP port per service) -> overlay -> `ziti tunnel host`
 *   scrapez->go    scrapez proxy -> `ziti tunnel host`            (mixed pairs: what each side costs)
 *   go->scrapez    `ziti tunnel proxy` -> scrapez bind
 *
 * Payloads: a static ~60 KB body (an in-process server) and a real node_exporter. Concurrency 1, 16 and 64, a
 * keep-alive loader, `--e2e-seconds` per cell (default 3) and `--rounds` rounds (default 3) with the paths
 * interleaved inside each round, after `--e2e-warmup` seconds per cell (default 3) of unmeasured load on every path
 * but direct; each figure is the median over rounds (each round's ratios are printed as it ends). Per cell:
 * scrapes/s, p50 and p99 latency, and CPU seconds per 1,000 scrapes of each process on the path (utime + stime from /proc/<pid>/stat, read before
 * and after the cell). After the run: RSS of each process. Before it: RSS with 10 services bound (bind) and 10
 * discovered targets (proxy), just started and after 60 s with nothing to do (the idle figure). Prints one table
 * with ratios against the Go tunnelers and writes JSON to `.cache/bench/e2e-<commit>.json` for comparison between
 * commits. Absolute numbers depend on the machine (this
 * one has 2 cores shared by every process on the path and the loader): read the ratios.
 *
 * The waits of one scrape (issue 23 item 1): the scrapez processes run with bench/wire-probe.mjs preloaded, which
 * serves the SDK's wire counters (src/ziti/protocol/wire-stats.ts) and the event loop's turn count; read before and
 * after each cell, they are printed per scrape and per side for the scrapez pair: frames and bytes sent, socket
 * writes and TLS records, acknowledgements sent and received, SDK-flow-control payloads and retransmissions, and
 * event-loop turns (at c=1 the turns from request to answer; at higher concurrency turns are shared, so per scrape
 * is the average). The Go pair keeps no such counters, so for both pairs the bench also times each hop of a scrape
 * at c=1 from packet timestamps on loopback (bench/hops.ts, with tcpdump): how long each process, the router and
 * the upstream took between what came in and what went out.
 */
import http from "node:http";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  keepAliveLoad,
  median,
  quantile,
  rssMiB,
  staticExporter,
  wireCounters,
  writeResults,
  type WireCounters,
} from "./measure.js";
import { repoRoot } from "../test/harness/binaries.js";
import { formatHops, measureHops } from "./hops.js";
import { NodeExporter } from "../test/harness/node-exporter.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { tempDir } from "../test/harness/process.js";
import { ScrapezProcess } from "../test/harness/scrapez.js";
import { ZitiTunnelHost, ZitiTunnelProxy } from "../test/harness/ziti-tunnel.js";

type PathName = "direct" | "scrapez" | "go" | "scrapez->go" | "go->scrapez";
/** How long the processes are left with nothing to do before the idle RSS is read. */
const IDLE_SECONDS = 60;
const PATHS: PathName[] = ["direct", "scrapez", "go", "scrapez->go", "go->scrapez"];
type Payload = "static-60k" | "node_exporter";

/** How the loader reaches one payload over one path: a request's options, and the processes on the path. */
interface Route {
  request: () => http.RequestOptions;
  pids: Record<string, number>;
  /** The wire probes (bench/wire-probe.mjs ports) of the scrapez processes on the path, by process. */
  probes?: Record<string, number>;
}

interface Cell {
  path: PathName;
  payload: Payload;
  concurrency: number;
  rate: number;
  /** Scrapes per second in each round, in order (`rate` is their median). */
  rates: number[];
  p50: number;
  p99: number;
  errors: number;
  /** CPU seconds per 1,000 scrapes, by process. */
  cpuPer1000: Record<string, number>;
  /** Wire counters per scrape, by scrapez process (median over rounds). */
  wirePerScrape: Record<string, WireCounters>;
}

/** `concurrency` keep-alive loops for `seconds`: latencies of the good scrapes, and how many failed. */
async function load(route: Route, concurrency: number, seconds: number) {
  const probes = Object.entries(route.probes ?? {});
  const wire0 = await Promise.all(probes.map(([, port]) => wireCounters(port)));
  const { lat, errors, elapsed, cpu } = await keepAliveLoad(route.request, concurrency, seconds, route.pids);
  const wire1 = await Promise.all(probes.map(([, port]) => wireCounters(port)));
  const wire: Record<string, WireCounters> = Object.fromEntries(
    probes.map(([k], i) => [
      k,
      Object.fromEntries(
        Object.keys(wire1[i]!).map((f) => [f, (wire1[i]![f]! - wire0[i]![f]!) / Math.max(1, lat.length)]),
      ),
    ]),
  );
  return { rate: lat.length / elapsed, p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), errors, cpu, wire };
}

export async function e2eBench(opts: {
  seconds: number;
  rounds: number;
  concurrency: number[];
  warmupSeconds: number;
}): Promise<void> {
  const say = (s: string) => process.stderr.write(`[e2e] ${s}\n`);
  const dir = tempDir("bench-e2e");
  say("starting a local overlay, node_exporter, a static 60 KB server, scrapez bind/proxy and the Go tunnelers");
  const overlay = await Overlay.start();
  const exporter = await NodeExporter.start();
  const staticServer = await staticExporter(60 * 1024);
  const staticPort = staticServer.port;
  const closers: (() => Promise<unknown>)[] = [
    () => staticServer.close(),
    () => exporter.close(),
    () => overlay.close(),
  ];
  try {
    const upstream: Record<Payload, number> = { "static-60k": staticPort, node_exporter: exporter.port };
    const svc: Record<Payload, string> = { "static-60k": "static", node_exporter: "node" };
    // scrapez bind serves sz-<svc> (and 10 services in all, for the idle figure); the Go host serves go-<svc>.
    for (const s of ["static", "node", ...Array.from({ length: 8 }, (_, i) => `idle-${i}`)]) {
      await overlay.service(`sz-${s}`, { dial: ["#clients"], bind: ["#servers"] });
    }
    for (const p of Object.keys(upstream) as Payload[]) {
      const cfg = await overlay.createConfig(`go-${svc[p]}-host`, "host.v1", {
        protocol: "tcp",
        address: "127.0.0.1",
        port: upstream[p],
      });
      await overlay.service(`go-${svc[p]}`, { configs: [cfg], bind: ["#go-servers"] });
    }
    // Each scrapez process serves its wire counters on a port of its own (bench/wire-probe.mjs, preloaded).
    const probe = async () => {
      const port = await freePort();
      const env = {
        NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${join(repoRoot, "bench", "wire-probe.mjs")}`.trim(),
        SCRAPEZ_WIRE_PROBE_PORT: String(port),
      };
      return { port, env };
    };
    const bindProbe = await probe();
    const proxyProbe = await probe();
    const bind = new ScrapezProcess(
      "scrapez-bind",
      "bind",
      {
        identity: await overlay.identity("bind-a", ["servers"], dir),
        logLevel: "warn",
        targets: [
          { service: "sz-static", upstream: `http://127.0.0.1:${staticPort}`, bindUsingEdgeIdentity: false },
          { service: "sz-node", upstream: exporter.url, bindUsingEdgeIdentity: false },
          ...Array.from({ length: 8 }, (_, i) => ({
            service: `sz-idle-${i}`,
            upstream: `http://127.0.0.1:${staticPort}`,
            bindUsingEdgeIdentity: false,
          })),
        ],
      },
      tempDir("scrapez-bind"),
      { env: bindProbe.env },
    );
    bind.start();
    closers.unshift(() => bind.close());
    const proxyPort = await freePort();
    const proxy = new ScrapezProcess(
      "scrapez-proxy",
      "proxy",
      {
        identities: [await overlay.identity("prometheus-central", ["clients"], dir)],
        listen: `127.0.0.1:${proxyPort}`,
        logLevel: "warn",
      },
      tempDir("scrapez-proxy"),
      { env: proxyProbe.env },
    );
    proxy.start();
    closers.unshift(() => proxy.close());
    const goHost = await ZitiTunnelHost.start(await overlay.identity("go-host", ["go-servers"], dir), [
      "go-static",
      "go-node",
    ]);
    closers.unshift(() => goHost.close());
    const goClient = await overlay.identity("go-client", ["clients"], dir);
    const goProxies: Record<string, ZitiTunnelProxy> = {};
    for (const s of ["go-static", "go-node", "sz-static", "sz-node"]) {
      goProxies[s] = await ZitiTunnelProxy.start(goClient, s);
      closers.unshift(() => goProxies[s]!.close());
    }
    const viaProxy = (service: string) => () => ({
      host: "127.0.0.1",
      port: proxyPort,
      path: `http://${service}/metrics`,
    });
    const viaGo = (service: string) => () => ({ host: "127.0.0.1", port: goProxies[service]!.port, path: "/metrics" });
    const agent = new http.Agent({ keepAlive: true });
    for (const s of ["sz-static", "sz-node", "go-static", "go-node"]) {
      await waitUntil(
        () =>
          new Promise<boolean>((resolve) => {
            const req = http.get({ ...viaProxy(s)(), agent }, (res) => {
              res.resume();
              resolve(res.statusCode === 200);
            });
            req.on("error", () => resolve(false));
          }),
        60_000,
        `${s} answers through scrapez proxy`,
      );
    }
    agent.destroy();
    // Just started and warmed (one scrape each), then after IDLE_SECONDS with nothing to do: V8 gives back what
    // start-up left behind only once the process has been quiet for a while, and "idle" is the second figure.
    const started = { bind: rssMiB(bind.pid!), proxy: rssMiB(proxy.pid!) };
    say(`waiting ${IDLE_SECONDS} s with nothing to do for the idle RSS`);
    await sleep(IDLE_SECONDS * 1000);
    const idle = { bind: rssMiB(bind.pid!), proxy: rssMiB(proxy.pid!), started };
    say(
      `RSS with 10 services bound: scrapez bind ${idle.bind.toFixed(0)} MiB idle (${started.bind.toFixed(0)} just ` +
        `started), proxy ${idle.proxy.toFixed(0)} MiB idle (${started.proxy.toFixed(0)} just started)`,
    );

    const routes = (p: Payload): Record<PathName, Route> => ({
      direct: { request: () => ({ host: "127.0.0.1", port: upstream[p], path: "/metrics" }), pids: {} },
      scrapez: {
        request: viaProxy(`sz-${svc[p]}`),
        pids: { "scrapez proxy": proxy.pid!, "scrapez bind": bind.pid! },
        probes: { "scrapez proxy": proxyProbe.port, "scrapez bind": bindProbe.port },
      },
      go: {
        request: viaGo(`go-${svc[p]}`),
        pids: { "go proxy": goProxies[`go-${svc[p]}`]!.pid!, "go host": goHost.pid! },
      },
      "scrapez->go": {
        request: viaProxy(`go-${svc[p]}`),
        pids: { "scrapez proxy": proxy.pid!, "go host": goHost.pid! },
      },
      "go->scrapez": {
        request: viaGo(`sz-${svc[p]}`),
        pids: { "go proxy": goProxies[`sz-${svc[p]}`]!.pid!, "scrapez bind": bind.pid! },
      },
    });
    // Warm-up, unmeasured: every path but direct serves each cell for `warmupSeconds` before round 1. A fresh node
    // process runs its JavaScript interpreted until V8 has compiled what is hot; at c=1 that takes some 3,000
    // scrapes here, in which a scrape costs about twice the CPU (docs/performance.md, "Warm-up"). The Go tunnelers,
    // compiled ahead of time, get the same warm-up. The figures are of processes that have been serving, as a
    // proxy or sidecar is; `--e2e-warmup=0` measures from a cold start.
    if (opts.warmupSeconds > 0) {
      say(`warming up: every path but direct ${opts.warmupSeconds} s per cell, unmeasured`);
      for (const p of ["static-60k", "node_exporter"] as Payload[]) {
        for (const c of opts.concurrency) {
          for (const path of PATHS.filter((x) => x !== "direct")) {
            await keepAliveLoad(routes(p)[path].request, c, opts.warmupSeconds, {});
          }
        }
      }
    }
    const samples = new Map<string, Awaited<ReturnType<typeof load>>[]>();
    for (let round = 1; round <= opts.rounds; round++) {
      for (const p of ["static-60k", "node_exporter"] as Payload[]) {
        for (const c of opts.concurrency) {
          for (const path of PATHS) {
            const r = await load(routes(p)[path], c, opts.seconds);
            const k = `${p}|${c}|${path}`;
            samples.set(k, [...(samples.get(k) ?? []), r]);
          }
        }
      }
      const ratios = (["static-60k", "node_exporter"] as Payload[]).flatMap((p) =>
        opts.concurrency.map((c) => {
          const at = (path: PathName) => samples.get(`${p}|${c}|${path}`)!.at(-1)!.rate;
          return (at("scrapez") / at("go")).toFixed(2);
        }),
      );
      say(`round ${round}/${opts.rounds} done; throughput scrapez / go by cell: ${ratios.join(" ")}`);
    }
    const cells: Cell[] = [];
    for (const [k, rs] of samples) {
      const [payload, c, path] = k.split("|") as [Payload, string, PathName];
      const procs = Object.keys(rs[0]!.cpu);
      cells.push({
        path,
        payload,
        concurrency: Number(c),
        rate: median(rs.map((r) => r.rate)),
        rates: rs.map((r) => r.rate),
        p50: median(rs.map((r) => r.p50)),
        p99: median(rs.map((r) => r.p99)),
        errors: rs.reduce((n, r) => n + r.errors, 0),
        cpuPer1000: Object.fromEntries(procs.map((pr) => [pr, median(rs.map((r) => r.cpu[pr]!))])),
        wirePerScrape: Object.fromEntries(
          Object.keys(rs[0]!.wire).map((pr) => [
            pr,
            Object.fromEntries(Object.keys(rs[0]!.wire[pr]!).map((f) => [f, median(rs.map((r) => r.wire[pr]![f]!))])),
          ]),
        ),
      });
    }
    // Where one scrape's time goes, hop by hop, for both pairs at c=1 (bench/hops.ts: packet timestamps).
    say("timing each hop of a scrape at c=1 from packet timestamps on loopback (tcpdump), both pairs");
    const hops = await measureHops(
      (["static-60k", "node_exporter"] as Payload[]).flatMap((p) =>
        (["scrapez", "go"] as const).map((pair) => {
          const goProxy = goProxies[`go-${svc[p]}`]!;
          return {
            label: `${pair}, ${p}`,
            dialPid: pair === "scrapez" ? proxy.pid! : goProxy.pid!,
            dialPort: pair === "scrapez" ? proxyPort : goProxy.port,
            hostPid: pair === "scrapez" ? bind.pid! : goHost.pid!,
            upstream: upstream[p],
            router: overlay.routerPort,
            load: () => keepAliveLoad(routes(p)[pair].request, 1, opts.seconds, {}),
          };
        }),
      ),
    );
    const rss = {
      "scrapez proxy": rssMiB(proxy.pid!),
      "scrapez bind": rssMiB(bind.pid!),
      "go proxy": rssMiB(goProxies["go-node"]!.pid!),
      "go host": rssMiB(goHost.pid!),
    };
    printTable(cells, idle, rss);
    process.stdout.write(
      "\nwhere one scrape's time goes at c=1, hop by hop (ms, medians; dial = scrapez proxy or ziti tunnel proxy, " +
        "host = scrapez bind or ziti tunnel host; bench/hops.ts)\n",
    );
    process.stdout.write(typeof hops === "string" ? `not measured: ${hops}\n` : formatHops(hops));
    writeResults("e2e", { opts, idleRssMiB: idle, rssMiB: rss, cells, hops });
  } finally {
    for (const c of closers) await c().catch(() => undefined);
  }
}

function printTable(
  cells: Cell[],
  idle: { bind: number; proxy: number; started: { bind: number; proxy: number } },
  rss: Record<string, number>,
): void {
  const get = (p: Payload, c: number, path: PathName) =>
    cells.find((x) => x.payload === p && x.concurrency === c && x.path === path)!;
  const cpu = (x: Cell) => Object.values(x.cpuPer1000).reduce((a, b) => a + b, 0);
  const rows: string[][] = [
    [
      "payload, c",
      "direct /s",
      "scrapez /s (p50, p99 ms)",
      "go /s (p50, p99 ms)",
      "scrapez->go /s",
      "go->scrapez /s",
      "thr ratio",
      "p50 ratio",
      "cpu/1000 ratio",
    ],
  ];
  const payloads = [...new Set(cells.map((x) => x.payload))];
  const cs = [...new Set(cells.map((x) => x.concurrency))].sort((a, b) => a - b);
  for (const p of payloads) {
    for (const c of cs) {
      const d = get(p, c, "direct");
      const s = get(p, c, "scrapez");
      const g = get(p, c, "go");
      rows.push([
        `${p}, c=${c}`,
        d.rate.toFixed(0),
        `${s.rate.toFixed(0)} (${s.p50.toFixed(1)}, ${s.p99.toFixed(1)})${s.errors ? ` ${s.errors} err` : ""}`,
        `${g.rate.toFixed(0)} (${g.p50.toFixed(1)}, ${g.p99.toFixed(1)})${g.errors ? ` ${g.errors} err` : ""}`,
        get(p, c, "scrapez->go").rate.toFixed(0),
        get(p, c, "go->scrapez").rate.toFixed(0),
        (s.rate / g.rate).toFixed(2),
        ((s.p50 - d.p50) / Math.max(0.001, g.p50 - d.p50)).toFixed(2),
        (cpu(s) / cpu(g)).toFixed(2),
      ]);
    }
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((x, i) => x.padEnd(w[i]!)).join("  ");
  process.stdout.write(`\nend to end, scrapez vs OpenZiti's Go tunnelers (medians of rounds)\n`);
  process.stdout.write(`${rows.map(fmt).join("\n")}\n`);
  process.stdout.write(
    "thr ratio: scrapez / go scrapes per second (goal >= 1.0); p50 ratio: added p50 latency over direct, " +
      "scrapez / go (goal <= 1.0); cpu/1000 ratio: CPU seconds per 1,000 scrapes of both processes (goal <= 1.0)\n",
  );
  // The waits of one scrape: the scrapez pair's wire counters per scrape, each side.
  const wf: [string, (w: WireCounters) => number][] = [
    ["frames", (w) => w.framesSent!],
    ["KiB", (w) => w.bytesSent! / 1024],
    ["writes", (w) => w.socketWrites!],
    ["TLS rec", (w) => w.tlsRecords!],
    ["acks out", (w) => w.acksSent!],
    ["acks in", (w) => w.acksReceived!],
    ["payloads", (w) => w.payloadsSent!],
    ["retx", (w) => w.retransmits!],
    ["turns", (w) => w.loopTurns!],
  ];
  const wrows: string[][] = [["payload, c", "side", ...wf.map(([n]) => n)]];
  for (const p of payloads) {
    for (const c of cs) {
      for (const [side, w] of Object.entries(get(p, c, "scrapez").wirePerScrape)) {
        wrows.push([`${p}, c=${c}`, side, ...wf.map(([, f]) => f(w).toFixed(1))]);
      }
    }
  }
  const ww = wrows[0]!.map((_, i) => Math.max(...wrows.map((r) => r[i]!.length)));
  process.stdout.write(`\nper scrape, scrapez pair, each side (sent unless "in"; medians of rounds)\n`);
  process.stdout.write(`${wrows.map((r) => r.map((x, i) => x.padEnd(ww[i]!)).join("  ")).join("\n")}\n`);
  process.stdout.write(
    `RSS after the run (MiB): ${Object.entries(rss)
      .map(([k, v]) => `${k} ${v.toFixed(0)}`)
      .join(", ")}; idle ${IDLE_SECONDS} s with 10 services: scrapez bind ${idle.bind.toFixed(0)} (goal <= 80; ` +
      `${idle.started.bind.toFixed(0)} just started), scrapez proxy ${idle.proxy.toFixed(0)} (goal <= 100; ` +
      `${idle.started.proxy.toFixed(0)} just started)\n`,
  );
}
