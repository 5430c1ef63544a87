/**
 * `node dist/bench/ab.js --a=DIR --b=DIR [--seconds=N] [--rounds=N] [--warmup=N] [--payloads=static-60k,node_exporter]
 * [--concurrency=1,16,64]`: two builds of scrapez side by side in one run, each as proxy + bind on one local overlay,
 * with OpenZiti's Go tunnelers (`ziti tunnel proxy` + `host`) as the reference, so a change to the forward path is
 * judged against its parent on the same machine at the same time (the e2e bench compares one build with Go; two
 * runs of it, one per build, differ by more than most changes make on a shared machine).
 *
 * DIR is a checkout whose `dist/src/cli/main.js` is built (`npx tsc -p tsconfig.json` there). Per cell every path
 * first runs `--warmup` seconds (default 1) unmeasured, then the paths run in turn (the order alternates between
 * rounds) and each figure is the median over rounds: scrapes/s, p50, and CPU seconds per 1,000 scrapes of each
 * process (utime + stime from /proc). Printed as B/A ratios, and each build's CPU per scrape as a ratio against the
 * Go pair's. `SCRAPEZ_NODE_ARGS` applies to both builds' processes; `SCRAPEZ_NODE_ARGS_A` or `_B`, when set, replaces
 * it for that build alone (so one build can be judged against itself under other node or V8 flags: `--a` and `--b`
 * the same directory). Each scrapez process also runs with
 * bench/wire-probe.mjs preloaded, and a second table gives each build's wire counters per scrape (frames, socket
 * writes, TLS records, acks sent, by side; medians over rounds): what a change does to the wire, which machine load
 * does not move as it moves the timings. Last, each process's RSS after the run.
 *
 * `--b-raw` makes build B a pure byte relay: its bind targets are `passthrough` and its scrapes go through CONNECT
 * tunnels of its proxy (plain HTTP inside), so neither process parses or writes HTTP per scrape, as the Go
 * tunnelers do not. With `--a` and `--b` the same build, B/A is then what the HTTP layers cost, and B's CPU per
 * scrape against the Go pair's what the SDK and the overlay connections cost alone.
 */
import http from "node:http";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import YAML from "yaml";
import { ConnectAgent, keepAliveLoad, median, quantile, rssMiB, staticExporter, wireCounters } from "./measure.js";
import { NodeExporter } from "../test/harness/node-exporter.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { ManagedProcess, tempDir } from "../test/harness/process.js";
import { repoRoot } from "../test/harness/binaries.js";
import { ZitiTunnelHost, ZitiTunnelProxy } from "../test/harness/ziti-tunnel.js";

/** static-1m (not run by default): an answer past SDK flow control's start window (128 KiB, xgress.ts). */
type Payload = "static-60k" | "node_exporter" | "static-1m";

const args = process.argv.slice(2);
const opt = (name: string, fallback?: string): string => {
  const v = args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;
  if (v === undefined) throw new Error(`--${name}=... is required`);
  return v;
};
const dirs = { A: resolve(opt("a")), B: resolve(opt("b")) };
const seconds = Number(opt("seconds", "3"));
const rounds = Number(opt("rounds", "3"));
const warmup = Number(opt("warmup", "1"));
const payloads = opt("payloads", "static-60k,node_exporter").split(",") as Payload[];
const concurrency = opt("concurrency", "1,16,64").split(",").map(Number);
const rawB = args.includes("--b-raw");

/** One scrapez command of the build in `dir`, configured by `config` (as test/harness/scrapez.ts starts one). */
function scrapez(
  variant: "A" | "B",
  dir: string,
  name: string,
  command: "bind" | "proxy",
  config: object,
  probePort: number,
): ManagedProcess {
  const own = tempDir(name);
  const configFile = join(own, `${command}.yaml`);
  writeFileSync(configFile, YAML.stringify(config));
  return new ManagedProcess({
    name,
    command: process.execPath,
    args: [
      ...((process.env[`SCRAPEZ_NODE_ARGS_${variant}`] ?? process.env.SCRAPEZ_NODE_ARGS)?.split(" ").filter(Boolean) ??
        []),
      join(dir, "dist", "src", "cli", "main.js"),
      command,
      "--config",
      configFile,
    ],
    ownDir: own,
    env: {
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${join(repoRoot, "bench", "wire-probe.mjs")}`.trim(),
      SCRAPEZ_WIRE_PROBE_PORT: String(probePort),
      // One proxy process, as the e2e bench and the tests run it: the CPU read from /proc is then all of it, and a
      // worker would fail on the wire probe's port, which its primary already holds.
      ...(command === "proxy" ? { SCRAPEZ_WORKERS: "1" } : {}),
    },
  });
}

/** The wire counters per scrape shown for each build and side (wire-stats.ts). */
const WIRE_FIELDS = ["framesSent", "socketWrites", "tlsRecords", "acksSent", "retransmits"] as const;

/** `concurrency` keep-alive loops for `seconds` against `request`: rate, p50 and CPU per 1,000 scrapes by pid. */
async function load(
  request: () => http.RequestOptions,
  pids: Record<string, number>,
  c: number,
  seconds: number,
  probes: Record<string, number> = {},
  agent?: (maxSockets: number) => http.Agent,
) {
  const sides = Object.entries(probes);
  const wire0 = await Promise.all(sides.map(([, port]) => wireCounters(port)));
  const { lat, errors, elapsed, cpu } = await keepAliveLoad(request, c, seconds, pids, undefined, agent);
  const wire1 = await Promise.all(sides.map(([, port]) => wireCounters(port)));
  const wire: Record<string, number> = {};
  sides.forEach(([side], i) => {
    for (const f of WIRE_FIELDS) wire[`${side}.${f}`] = (wire1[i]![f]! - wire0[i]![f]!) / Math.max(1, lat.length);
  });
  return { rate: lat.length / elapsed, p50: quantile(lat, 0.5), errors, cpu, wire };
}

async function main(): Promise<void> {
  const say = (s: string) => process.stderr.write(`[ab] ${s}\n`);
  const dir = tempDir("bench-ab");
  const overlay = await Overlay.start();
  const exporter = await NodeExporter.start();
  const staticServer = await staticExporter(60 * 1024);
  const bigServer = await staticExporter(1024 * 1024, "y");
  const upstream: Record<Payload, string> = {
    "static-60k": `http://127.0.0.1:${staticServer.port}`,
    node_exporter: exporter.url,
    "static-1m": `http://127.0.0.1:${bigServer.port}`,
  };
  const closers: (() => Promise<unknown>)[] = [
    () => staticServer.close(),
    () => bigServer.close(),
    () => exporter.close(),
    () => overlay.close(),
  ];
  try {
    const svc: Record<Payload, string> = { "static-60k": "static", node_exporter: "node", "static-1m": "big" };
    const variants = ["A", "B"] as const;
    for (const v of variants) {
      for (const p of payloads) await overlay.service(`${v}-${svc[p]}`, { dial: ["#clients"], bind: [`#${v}`] });
    }
    for (const p of payloads) {
      const port = Number(new URL(upstream[p]).port);
      const cfg = await overlay.createConfig(`go-${svc[p]}-host`, "host.v1", {
        protocol: "tcp",
        address: "127.0.0.1",
        port,
      });
      await overlay.service(`go-${svc[p]}`, { configs: [cfg], bind: ["#go-servers"] });
    }
    const client = await overlay.identity("go-client", ["clients"], dir);
    const procs: Record<
      string,
      { proxy: ManagedProcess; bind: ManagedProcess; port: number; probes: Record<string, number> }
    > = {};
    for (const v of variants) {
      const port = await freePort();
      const probes = { proxy: await freePort(), bind: await freePort() };
      const bind = scrapez(
        v,
        dirs[v],
        `bind-${v}`,
        "bind",
        {
          identity: await overlay.identity(`bind-${v}`, [v], dir),
          logLevel: "warn",
          targets: payloads.map((p) => ({
            service: `${v}-${svc[p]}`,
            upstream: upstream[p],
            bindUsingEdgeIdentity: false,
            ...(v === "B" && rawB ? { passthrough: true } : {}),
          })),
        },
        probes.bind,
      ).start();
      closers.unshift(() => bind.close());
      const proxy = scrapez(
        v,
        dirs[v],
        `proxy-${v}`,
        "proxy",
        {
          identities: [await overlay.identity(`proxy-${v}`, ["clients"], dir)],
          listen: `127.0.0.1:${port}`,
          logLevel: "warn",
        },
        probes.proxy,
      ).start();
      closers.unshift(() => proxy.close());
      procs[v] = { proxy, bind, port, probes };
    }
    const goHost = await ZitiTunnelHost.start(
      await overlay.identity("go-host", ["go-servers"], dir),
      payloads.map((p) => `go-${svc[p]}`),
    );
    closers.unshift(() => goHost.close());
    const goProxies: Record<string, ZitiTunnelProxy> = {};
    for (const p of payloads) {
      goProxies[p] = await ZitiTunnelProxy.start(client, `go-${svc[p]}`);
      closers.unshift(() => goProxies[p]!.close());
    }
    const raw = (v: "A" | "B") => v === "B" && rawB;
    const via = (v: "A" | "B", p: Payload) => () => ({
      host: raw(v) ? `${v}-${svc[p]}` : "127.0.0.1",
      port: raw(v) ? 80 : procs[v]!.port,
      path: raw(v) ? "/metrics" : `http://${v}-${svc[p]}/metrics`,
    });
    /** B's scrapes through CONNECT tunnels of its proxy (--b-raw); otherwise plain keep-alive connections. */
    const agentOf = (v: "A" | "B", p: Payload) =>
      raw(v)
        ? (maxSockets: number) => new ConnectAgent(procs[v]!.port, `${v}-${svc[p]}:80`, { keepAlive: true, maxSockets })
        : undefined;
    for (const v of variants) {
      for (const p of payloads) {
        await waitUntil(
          () =>
            new Promise<boolean>((done) => {
              const agent = agentOf(v, p)?.(1) ?? false;
              const req = http.get({ ...via(v, p)(), agent }, (res) => {
                if (agent) res.once("end", () => agent.destroy());
                res.resume();
                done(res.statusCode === 200);
              });
              req.on("error", () => done(false));
            }),
          60_000,
          `${v}-${svc[p]} answers through its scrapez proxy`,
        );
      }
    }
    type Path = "A" | "B" | "go";
    const routes = (
      p: Payload,
    ): Record<
      Path,
      {
        request: () => http.RequestOptions;
        pids: Record<string, number>;
        probes?: Record<string, number>;
        agent?: ((maxSockets: number) => http.Agent) | undefined;
      }
    > => ({
      A: {
        request: via("A", p),
        pids: { proxy: procs.A!.proxy.pid!, bind: procs.A!.bind.pid! },
        probes: procs.A!.probes,
        agent: agentOf("A", p),
      },
      B: {
        request: via("B", p),
        pids: { proxy: procs.B!.proxy.pid!, bind: procs.B!.bind.pid! },
        probes: procs.B!.probes,
        agent: agentOf("B", p),
      },
      go: {
        request: () => ({ host: "127.0.0.1", port: goProxies[p]!.port, path: "/metrics" }),
        pids: { proxy: goProxies[p]!.pid!, bind: goHost.pid! },
      },
    });
    const samples = new Map<string, Awaited<ReturnType<typeof load>>[]>();
    for (let round = 1; round <= rounds; round++) {
      const order: Path[] = round % 2 ? ["A", "B", "go"] : ["B", "A", "go"];
      for (const p of payloads) {
        for (const c of concurrency) {
          // Unmeasured first: the first path after a change of cell paid for the change (new connections, the
          // previous cell's garbage), by 0.6-1.7x its CPU per scrape here, whichever build it was.
          for (const path of order) {
            const route = routes(p)[path];
            await load(route.request, route.pids, c, warmup, {}, route.agent);
          }
          for (const path of order) {
            const route = routes(p)[path];
            const r = await load(route.request, route.pids, c, seconds, route.probes, route.agent);
            const k = `${p}|${c}|${path}`;
            samples.set(k, [...(samples.get(k) ?? []), r]);
          }
        }
      }
      say(`round ${round}/${rounds} done`);
    }
    const med = (k: string, f: (r: Awaited<ReturnType<typeof load>>) => number) => median(samples.get(k)!.map(f));
    const rows: string[][] = [
      [
        "payload, c",
        "A /s",
        "B /s",
        "go /s",
        "B/A rate",
        "B/A p50",
        "A cpu/1000 proxy+bind",
        "B cpu/1000 proxy+bind",
        "go cpu/1000",
        "B/A cpu proxy",
        "B/A cpu bind",
        "cpu vs go A, B",
      ],
    ];
    const out: Record<string, unknown>[] = [];
    for (const p of payloads) {
      for (const c of concurrency) {
        const k = (path: Path) => `${p}|${c}|${path}`;
        const rate = (path: Path) => med(k(path), (r) => r.rate);
        const p50 = (path: Path) => med(k(path), (r) => r.p50);
        const cpu = (path: Path, which: "proxy" | "bind") => med(k(path), (r) => r.cpu[which]!);
        const both = (path: Path) => cpu(path, "proxy") + cpu(path, "bind");
        rows.push([
          `${p}, c=${c}`,
          rate("A").toFixed(0),
          rate("B").toFixed(0),
          rate("go").toFixed(0),
          (rate("B") / rate("A")).toFixed(2),
          (p50("B") / p50("A")).toFixed(2),
          `${cpu("A", "proxy").toFixed(2)}+${cpu("A", "bind").toFixed(2)}`,
          `${cpu("B", "proxy").toFixed(2)}+${cpu("B", "bind").toFixed(2)}`,
          both("go").toFixed(2),
          (cpu("B", "proxy") / cpu("A", "proxy")).toFixed(2),
          (cpu("B", "bind") / cpu("A", "bind")).toFixed(2),
          `${(both("A") / both("go")).toFixed(2)}, ${(both("B") / both("go")).toFixed(2)}`,
        ]);
        out.push({
          payload: p,
          concurrency: c,
          samples: Object.fromEntries((["A", "B", "go"] as Path[]).map((x) => [x, samples.get(k(x))])),
        });
      }
    }
    const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    process.stdout.write(`\nA = ${dirs.A}\nB = ${dirs.B}\n(medians of ${rounds} rounds of ${seconds} s per cell)\n`);
    process.stdout.write(`${rows.map((r) => r.map((x, i) => x.padEnd(w[i]!)).join("  ")).join("\n")}\n`);
    process.stdout.write(
      "cpu/1000: CPU seconds per 1,000 scrapes (utime + stime); B/A below 1.00 means B costs less than A\n",
    );
    const wireRows: string[][] = [["payload, c", "build", ...WIRE_FIELDS.flatMap((f) => [`proxy ${f}`, `bind ${f}`])]];
    for (const p of payloads) {
      for (const c of concurrency) {
        for (const v of variants) {
          const key = `${p}|${c}|${v}`;
          wireRows.push([
            `${p}, c=${c}`,
            v,
            ...WIRE_FIELDS.flatMap((f) => [
              med(key, (r) => r.wire[`proxy.${f}`] ?? NaN).toFixed(2),
              med(key, (r) => r.wire[`bind.${f}`] ?? NaN).toFixed(2),
            ]),
          ]);
        }
      }
    }
    const ww = wireRows[0]!.map((_, i) => Math.max(...wireRows.map((r) => r[i]!.length)));
    process.stdout.write(`\nper scrape, on the wire (wire-stats.ts; medians)\n`);
    process.stdout.write(`${wireRows.map((r) => r.map((x, i) => x.padEnd(ww[i]!)).join("  ")).join("\n")}\n`);
    // Read right after the last cell: both builds served the same scrapes, so their RSS compares (what one
    // reading of RSS after a burst can say: it moves between runs, see docs/performance.md, Memory).
    const rss: Record<string, number> = {};
    for (const v of variants) {
      rss[`${v} proxy`] = rssMiB(procs[v]!.proxy.pid!);
      rss[`${v} bind`] = rssMiB(procs[v]!.bind.pid!);
    }
    for (const p of payloads) rss[`go proxy (${p})`] = rssMiB(goProxies[p]!.pid!);
    rss["go host"] = rssMiB(goHost.pid!);
    const rssLine = Object.entries(rss)
      .map(([k, v]) => `${k} ${v.toFixed(0)}`)
      .join(", ");
    process.stdout.write(`\nRSS after the run (MiB): ${rssLine}\n`);
    const file = join(process.env.AB_OUT ?? dir, "ab.json");
    writeFileSync(file, JSON.stringify({ dirs, seconds, rounds, rssMiB: rss, cells: out }, null, 2));
    process.stdout.write(`written: ${file}\n`);
  } finally {
    for (const c of closers) await c().catch(() => undefined);
  }
}

await main();
