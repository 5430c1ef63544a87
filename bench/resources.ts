/**
 * What `scrapez bind` and `scrapez proxy` cost at run time, for the Helm chart's resource requests
 * (deploy/helm/scrapez/values.yaml cites these figures). Real processes on a real local overlay, node_exporter with
 * its default collectors behind scrapez bind, scrapes through scrapez proxy:
 *
 *   - idle: both processes up and ready, nothing scraped, for 60 s (CPU: the background work, such as the
 *     status file, service refresh and the channels' heartbeats);
 *   - a steady scrape every second for 60 s (a Prometheus scraping every 15 s does 1/15 of that);
 *   - stress: 8 concurrent scrape loops as fast as they go, for 30 s (peak RSS, CPU per scrape);
 *   - the exec probe `scrapez probe --ready` (a Node process per probe: wall time, CPU, max RSS).
 *
 * CPU is read from /proc/<pid>/stat (utime + stime), memory from /proc/<pid>/status (VmRSS now, VmHWM the peak).
 * Run: `npx tsc -p tsconfig.json && node dist/bench/resources.js` (about 4 minutes).
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { nodeExporterBin } from "../test/harness/binaries.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { ManagedProcess, tempDir } from "../test/harness/process.js";
import { cliPath, ScrapezProcess } from "../test/harness/scrapez.js";

const TICK = 100; // USER_HZ on Linux

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICK; // utime, stime (fields 14 and 15)
}

function memMiB(pid: number, field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) / 1024;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function scrape(proxyPort: number): Promise<{ status: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port: proxyPort, path: "http://node/metrics", timeout: 30_000 }, (res) => {
        let bytes = 0;
        res.on("data", (d: Buffer) => (bytes += d.length));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, bytes }));
      })
      .on("error", reject);
  });
}

interface Row {
  phase: string;
  seconds: number;
  scrapes: number;
  bind: { cpu: number; rss: number; hwm: number };
  proxy: { cpu: number; rss: number; hwm: number };
}

const dir = tempDir("resources");
const overlay = await Overlay.start();
const procs: ManagedProcess[] = [];
try {
  await overlay.service("node", { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("bind-a", ["servers"], dir);
  const promId = await overlay.identity("prometheus-central", ["clients"], dir);
  const exporterPort = await freePort();
  const exporter = new ManagedProcess({
    name: "node_exporter",
    command: nodeExporterBin(),
    args: [`--web.listen-address=127.0.0.1:${exporterPort}`], // default collectors: a realistic payload
  });
  procs.push(exporter.start());
  const statusFile = join(dir, "bind.status.json");
  const bind = new ScrapezProcess("bind", "bind", {
    identity: bindId,
    statusFile,
    logLevel: "warn", // no audit line per scrape, as a quiet production log level
    targets: [{ service: "node", upstream: `http://127.0.0.1:${exporterPort}` }],
  });
  const proxyPort = await freePort();
  const proxy = new ScrapezProcess("proxy", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${proxyPort}`,
    logLevel: "warn",
  });
  procs.push(bind.start(), proxy.start());
  await waitUntil(
    async () => {
      try {
        return (await scrape(proxyPort)).status === 200;
      } catch {
        return false;
      }
    },
    120_000,
    "a scrape through scrapez proxy and scrapez bind answers 200",
  );
  const pids = { bind: bind.pid!, proxy: proxy.pid! };
  const payload = (await scrape(proxyPort)).bytes;
  const rows: Row[] = [];
  const phase = async (name: string, seconds: number, load: (until: number) => Promise<number>) => {
    const c0 = { bind: cpuSeconds(pids.bind), proxy: cpuSeconds(pids.proxy) };
    const scrapes = await load(Date.now() + seconds * 1000);
    const at = (k: "bind" | "proxy") => ({
      cpu: cpuSeconds(pids[k]) - c0[k],
      rss: memMiB(pids[k], "VmRSS"),
      hwm: memMiB(pids[k], "VmHWM"),
    });
    rows.push({ phase: name, seconds, scrapes, bind: at("bind"), proxy: at("proxy") });
  };
  await sleep(10_000); // settle after start
  await phase("idle", 60, async (until) => {
    await sleep(until - Date.now());
    return 0;
  });
  await phase("1 scrape/s", 60, async (until) => {
    let n = 0;
    while (Date.now() < until) {
      const t = Date.now();
      if ((await scrape(proxyPort)).status === 200) n++;
      await sleep(Math.max(0, 1000 - (Date.now() - t)));
    }
    return n;
  });
  await phase("stress: 8 concurrent loops", 30, async (until) => {
    let n = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (Date.now() < until) if ((await scrape(proxyPort)).status === 200) n++;
      }),
    );
    return n;
  });
  await phase("idle again", 30, async (until) => {
    await sleep(until - Date.now());
    return 0;
  });

  // The exec probe: one Node process per probe.
  const probes: { wall: number; cpu: number; maxRss: number }[] = [];
  // /usr/bin/time reports on stderr; the shell passes only its line on.
  for (let i = 0; i < 5; i++) {
    const line = execFileSync(
      "sh",
      [
        "-c",
        `/usr/bin/time -f "%e %U %S %M" "$0" "$1" probe --ready --status-file "$2" 2>&1 >/dev/null | tail -1`,
        process.execPath,
        cliPath,
        statusFile,
      ],
      { encoding: "utf8" },
    ).trim();
    const [wall, user, sys, kb] = line.split(" ").map(Number) as [number, number, number, number];
    probes.push({ wall, cpu: user + sys, maxRss: kb / 1024 });
  }

  const f = (n: number, d = 1) => n.toFixed(d);
  process.stdout.write(`\nnode_exporter payload: ${payload} bytes per scrape (default collectors)\n`);
  process.stdout.write(
    `load average during the run: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}\n\n`,
  );
  process.stdout.write(
    "phase                         secs  scrapes | bind: cpu%  ms/scrape  RSS MiB  peak | proxy: cpu%  ms/scrape  RSS MiB  peak\n",
  );
  for (const r of rows) {
    const per = (cpu: number) => (r.scrapes ? f((cpu * 1000) / r.scrapes, 2) : "-");
    process.stdout.write(
      `${r.phase.padEnd(29)} ${String(r.seconds).padStart(4)} ${String(r.scrapes).padStart(8)} | ` +
        `${f((r.bind.cpu / r.seconds) * 100, 2).padStart(10)} ${per(r.bind.cpu).padStart(10)} ${f(r.bind.rss).padStart(8)} ${f(r.bind.hwm).padStart(5)} | ` +
        `${f((r.proxy.cpu / r.seconds) * 100, 2).padStart(11)} ${per(r.proxy.cpu).padStart(10)} ${f(r.proxy.rss).padStart(8)} ${f(r.proxy.hwm).padStart(5)}\n`,
    );
  }
  const avg = (k: "wall" | "cpu" | "maxRss") => probes.reduce((s, p) => s + p[k], 0) / probes.length;
  const max = (k: "wall" | "cpu" | "maxRss") => Math.max(...probes.map((p) => p[k]));
  process.stdout.write(
    `\nscrapez probe --ready (5 runs): wall avg ${f(avg("wall"), 2)} s (max ${f(max("wall"), 2)}), ` +
      `CPU avg ${f(avg("cpu"), 2)} s, max RSS ${f(max("maxRss"))} MiB\n`,
  );
} finally {
  for (const p of procs) await p.close();
  await overlay.close();
}
