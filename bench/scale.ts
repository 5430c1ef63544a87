/**
 * `npm run bench -- scale`: issue 11's scale figures, on one local overlay with a real Prometheus.
 *
 * 1. One `scrapez bind` binding `--scale-services` services (default 1,000; goal: RSS < 150 MB, all bound in < 30 s),
 *    timed from process start to its status file saying every service is bound. A second bind process binds
 *    the same services, so each service has two replicas and the proxy discovers 2 x services targets.
 * 2. One `scrapez proxy` with those targets in `/sd`, scraped by a real Prometheus through `proxy_url` every 15 s.
 *    Steps of 10, 100, 1,000 and 2,000 targets (`--scale-steps`), each `--scale-step-minutes` long (default 1),
 *    then the full set for `--scale-minutes` (default 5; goal: no failed scrape, p99 scrape_duration_seconds
 *    < 100 ms, proxy RSS < 256 MB). Per step: failed scrapes (from `up`), p50/p99/max of every
 *    `scrape_duration_seconds` sample Prometheus stored, proxy and bind CPU per 1,000 scrapes (/proc), peak proxy
 *    RSS (sampled every second), and how long `/sd` takes to answer.
 *
 * The exporters are one in-process server answering a ~2.5 KB exposition (50 series): the figures are what the
 * proxy and the binds cost per target, not an exporter's (nor Prometheus's: 2,000 targets of 200 series each kept
 * Prometheus itself busy enough on 2 cores that direct scrapes had a 3 s p99). The reference for each step is
 * the same Prometheus scraping that server directly for as many targets, for a minute after the overlay step.
 * Before the steps: what the proxy and binds cost per minute with nothing scraping them, and their RSS after that
 * minute (a bind's RSS is also taken 5 s after it is bound, when the garbage of binding is still held).
 * JSON goes to `.cache/bench/scale-<commit>.json`.
 */
import { existsSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { cpuSeconds, quantile, rssMiB, writeResults } from "./measure.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { tempDir } from "../test/harness/process.js";
import { Prometheus } from "../test/harness/prometheus.js";
import { ScrapezProcess } from "../test/harness/scrapez.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** How long the idle cost is measured for. */
const IDLE_SECONDS = 60;
/** The start of each step counted apart: two scrape intervals, so every target's first (dialing) scrapes. */
const COLD_SECONDS = 30;

/** A ~2.5 KB exposition of 50 series, like a small app's /metrics. */
function exposition(): string {
  const lines: string[] = ["# HELP scale_demo_value A value.", "# TYPE scale_demo_value gauge"];
  for (let i = 0; i < 50; i++) lines.push(`scale_demo_value{shard="s${i % 10}",item="item-${i}"} ${i * 1.5}`);
  return lines.join("\n") + "\n";
}

interface Step {
  targets: number;
  /** Targets Prometheus actually scraped (count(up) at the end). */
  activeTargets: number;
  minutes: number;
  /** The first COLD_SECONDS: every target's first scrapes, each dialing a new overlay connection. */
  cold: { scrapes: number; failed: number; p99: number };
  /** After that: the steady state the goals are about. scrape_duration_seconds of every stored sample, ms. */
  scrapes: number;
  failed: number;
  p50: number;
  p99: number;
  max: number;
  /** The same targets count scraped directly (no overlay), p99 ms: the reference. */
  directP99: number;
  /**
   * The reference's own first COLD_SECONDS: what Prometheus and the machine do when as many targets start at once
   * without the overlay (new series, new connections), to read the overlay's first 30 s against.
   */
  directCold: { scrapes: number; failed: number; p99: number };
  cpuPer1000: { proxy: number; binds: number };
  proxyRssPeakMiB: number;
  sdMs: number;
  /**
   * What the proxy counted meanwhile (its /metrics, summed over services): dials by result (a connection dialed
   * ahead and taken counts as an ok dial), answers by status, connections dialed ahead by outcome.
   */
  proxy: { dials: Record<string, number>; answers: Record<string, number>; warm: Record<string, number> };
}

export async function scaleBench(opts: {
  services: number;
  steps: number[];
  stepMinutes: number;
  minutes: number;
}): Promise<void> {
  const say = (s: string) => process.stderr.write(`[scale] ${s}\n`);
  const dir = tempDir("bench-scale");
  const closers: (() => Promise<unknown>)[] = [];
  let watchdog: NodeJS.Timeout | undefined;
  try {
    const body = exposition();
    const exporter = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4", "content-length": Buffer.byteLength(body) });
      res.end(body);
    });
    await new Promise<void>((r) => exporter.listen(0, "127.0.0.1", r));
    closers.unshift(() => new Promise((r) => exporter.close(r)));
    const exporterUrl = `http://127.0.0.1:${(exporter.address() as AddressInfo).port}`;

    say("starting a local overlay");
    const overlay = await Overlay.start();
    closers.unshift(() => overlay.close());
    // OpenZiti v1.6.3's controller keeps a terminator's peer data (our e2ee public key) as slices into bbolt's
    // memory map after the read transaction ends; when a later write grows the database past the map, bbolt
    // maps it anew and the next circuit to that terminator reads unmapped memory: "fatal error: fault" in
    // EncodeU32ToBytesMap (openziti/ziti#1736; controller/db/terminator_store.go copies no bytes). With 4,000
    // terminators and 2,000 dial sessions the database grows mid-run and it crashed in 3 runs of 4. bbolt sizes
    // its map from the file at open, so a sparse 256 MiB file gives it room for the whole run.
    // (The v1.6.3 quickstart's database; the v2 line's quickstart keeps its store elsewhere and needs no room made.)
    const ctrlDb = join(overlay.home, "qs", "db", "ctrl.db");
    if (existsSync(ctrlDb)) {
      await overlay.stopController();
      truncateSync(ctrlDb, 256 * 1024 * 1024);
      await overlay.startController();
    }
    // Every process the figures depend on: if one exits, say so with its log at once (the figures after it mean nothing).
    const watched: { name: string; exitCode: number | null | undefined; logTail(max?: number): string }[] = [
      overlay.controller,
      ...overlay.routers,
    ];
    const deaths: string[] = [];
    watchdog = setInterval(() => {
      for (const p of watched) {
        if (p.exitCode !== undefined && !deaths.includes(p.name)) {
          deaths.push(p.name);
          mkdirSync(".cache/bench", { recursive: true });
          const file = `.cache/bench/scale-${p.name}-exit.log`;
          writeFileSync(file, p.logTail());
          say(
            `${p.name} EXITED (${p.exitCode}); the end of its log:\n${p.logTail(4096)}\n(all of what was kept: ${file})`,
          );
        }
      }
    }, 1000);
    const names = Array.from({ length: opts.services }, (_, i) => `scale-${String(i).padStart(5, "0")}`);
    let t0 = Date.now();
    // Two policies by attribute, then the services 8 at a time (the controller's REST API is the slow part).
    await overlay.createServicePolicy("scale-dial", "Dial", ["#scale"], ["#scale-clients"]);
    await overlay.createServicePolicy("scale-bind", "Bind", ["#scale"], ["#scale-servers"]);
    for (let i = 0; i < names.length; i += 8) {
      await Promise.all(names.slice(i, i + 8).map((n) => overlay.createService(n, { roleAttributes: ["scale"] })));
    }
    say(`created ${names.length} services in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const targets = names.map((service) => ({ service, upstream: exporterUrl }));
    const binds: { proc: ScrapezProcess; boundSeconds: number; rssMiB: number; idleRssMiB?: number }[] = [];
    for (const id of ["bind-a", "bind-b"]) {
      const statusFile = join(dir, `${id}.status.json`);
      const proc = new ScrapezProcess(`scrapez-${id}`, "bind", {
        identity: await overlay.identity(id, ["scale-servers"], dir),
        logLevel: "warn",
        statusFile,
        targets,
      });
      t0 = Date.now();
      proc.start();
      watched.push(proc);
      closers.unshift(() => proc.close());
      let bound = 0;
      await waitUntil(
        () => {
          try {
            const s = JSON.parse(readFileSync(statusFile, "utf8")) as { services: Record<string, { state: string }> };
            bound = Object.values(s.services).filter((v) => v.state === "bound").length;
          } catch {
            // not written yet, or being replaced
          }
          return bound === names.length;
        },
        300_000,
        `${id} to bind ${names.length} services`,
        () => `${bound} bound when it gave up\n${proc.logTail(4096)}`,
      );
      const boundSeconds = (Date.now() - t0) / 1000;
      await sleep(5000); // settle: what a sidecar holds once bound
      binds.push({ proc, boundSeconds, rssMiB: rssMiB(proc.pid!) });
      say(
        `${id}: ${names.length} services bound in ${boundSeconds.toFixed(1)} s (goal < 30), ` +
          `RSS ${binds.at(-1)!.rssMiB.toFixed(0)} MiB 5 s later (goal < 150)`,
      );
    }

    const bindCpu = () => cpuOf(binds.map((b) => b.proc.pid!));
    const proxyPort = await freePort();
    const proxy = new ScrapezProcess("scrapez-proxy", "proxy", {
      identities: [await overlay.identity("prometheus-central", ["scale-clients"], dir)],
      listen: `127.0.0.1:${proxyPort}`,
      logLevel: "warn",
    });
    t0 = Date.now();
    proxy.start();
    watched.push(proxy);
    closers.unshift(() => proxy.close());
    const sdUrl = `http://127.0.0.1:${proxyPort}/sd`;
    const all = 2 * names.length;
    let found = 0;
    await waitUntil(
      async () => {
        try {
          const r = await fetch(sdUrl);
          found = r.ok ? ((await r.json()) as unknown[]).length : 0;
        } catch {
          found = 0;
        }
        return found === all;
      },
      300_000,
      `the proxy's /sd to list ${all} targets`,
      () => `${found} listed when it gave up\n${proxy.logTail(4096)}`,
    );
    say(`the proxy lists all ${all} targets in /sd ${((Date.now() - t0) / 1000).toFixed(1)} s after it started`);
    // The proxy dials every /sd target ahead of its first scrape (src/proxy/warmup.ts): how long until each has
    // been tried, how many are held, and the Dial sessions that took (one per service).
    const tw = Date.now();
    let warm = await warmCounts(proxyPort);
    await waitUntil(
      async () => {
        warm = await warmCounts(proxyPort);
        return warm.tried >= all;
      },
      300_000,
      `the proxy to dial all ${all} targets ahead`,
      () => `${JSON.stringify(warm)}\n${proxy.logTail(4096)}`,
    );
    const warmUp = { seconds: (Date.now() - t0) / 1000, afterSdSeconds: (Date.now() - tw) / 1000, ...warm };
    say(
      `warm-up: all ${all} targets dialed ahead ${warmUp.seconds.toFixed(1)} s after the proxy started ` +
        `(${warmUp.afterSdSeconds.toFixed(1)} s after /sd was complete): ${JSON.stringify(warm)}`,
    );
    const sdMs = async () => {
      const s = performance.now();
      await (await fetch(sdUrl)).arrayBuffer();
      return performance.now() - s;
    };

    // What the processes cost with nothing scraping them (catalog refreshes, listeners, latency probes, status file).
    const idleCpu0 = { proxy: cpuSeconds(proxy.pid!), binds: bindCpu() };
    await sleep(IDLE_SECONDS * 1000);
    const idle = {
      proxyCpuPerMin: ((cpuSeconds(proxy.pid!) - idleCpu0.proxy) * 60) / IDLE_SECONDS,
      bindsCpuPerMin: ((bindCpu() - idleCpu0.binds) * 60) / IDLE_SECONDS,
      proxyRssMiB: rssMiB(proxy.pid!),
    };
    // The binds have had at least IDLE_SECONDS with nothing to do. V8 gives back the garbage binding left (most of
    // the RSS just after binding) once a process is quiet, though not at a fixed time: this is one reading, not a floor.
    for (const b of binds) b.idleRssMiB = rssMiB(b.proc.pid!);
    say(
      `idle (nothing scraping): proxy ${idle.proxyCpuPerMin.toFixed(2)} CPU s/min, RSS ${idle.proxyRssMiB.toFixed(0)} MiB; ` +
        `both binds ${idle.bindsCpuPerMin.toFixed(2)} CPU s/min, RSS ${binds.map((b) => b.idleRssMiB!.toFixed(0)).join(" and ")} MiB`,
    );

    const steps = [...opts.steps.filter((n) => n < all), all];
    const results: Step[] = [];
    const exporterAddr = exporterUrl.slice("http://".length);
    const job = { scrape_interval: "15s", scrape_timeout: "10s" };
    for (const n of steps) {
      const minutes = n === all ? opts.minutes : opts.stepMinutes;
      // The first n targets in /sd order (the proxy sorts by service, then replica), chosen by a keep rule.
      const groups = (await (await fetch(sdUrl)).json()) as { targets: string[] }[];
      const chosen = groups.slice(0, n).map((g) => g.targets[0]!);
      const keep =
        n === all ? [] : [{ source_labels: ["__address__"], regex: chosen.map(escapeRegex).join("|"), action: "keep" }];
      say(`step: ${n} targets through the overlay for ${minutes} min`);
      const counted0 = await proxyCounts(proxyPort);
      const overlayRun = await scrapeFor(
        {
          ...job,
          job_name: "overlay",
          proxy_url: `http://127.0.0.1:${proxyPort}`,
          http_sd_configs: [{ url: sdUrl, refresh_interval: "30s" }],
          relabel_configs: keep,
        },
        minutes,
        { proxy: proxy.pid!, binds: binds.map((b) => b.proc.pid!) },
      );
      const counted1 = await proxyCounts(proxyPort);
      // The reference: the same Prometheus scraping the same server directly, as many targets (told apart by a
      // label), for a minute right after.
      say(`step: ${n} targets scraped directly for 1 min (the reference)`);
      const directRun = await scrapeFor(
        {
          ...job,
          job_name: "direct",
          static_configs: Array.from({ length: n }, (_, i) => ({ targets: [exporterAddr], labels: { i: String(i) } })),
        },
        1,
        { proxy: proxy.pid!, binds: [] },
      );
      const coldUntil = overlayRun.start + COLD_SECONDS;
      const part = (cold: boolean) => {
        const pick = (xs: [number, number][]) => xs.filter(([t]) => t < coldUntil === cold).map(([, v]) => v);
        const up = pick(overlayRun.up);
        return { up, durations: pick(overlayRun.durations).sort((a, b) => a - b) };
      };
      const cold = part(true);
      const steady = part(false);
      const directSteady = directRun.durations
        .filter(([t]) => t >= directRun.start + COLD_SECONDS)
        .map(([, v]) => v)
        .sort((a, b) => a - b);
      const r: Step = {
        targets: n,
        activeTargets: overlayRun.active,
        minutes,
        cold: {
          scrapes: cold.up.length,
          failed: cold.up.filter((v) => v !== 1).length,
          p99: quantile(cold.durations, 0.99) * 1000,
        },
        scrapes: steady.up.length,
        failed: steady.up.filter((v) => v !== 1).length,
        p50: quantile(steady.durations, 0.5) * 1000,
        p99: quantile(steady.durations, 0.99) * 1000,
        max: (steady.durations.at(-1) ?? NaN) * 1000,
        directP99: quantile(directSteady, 0.99) * 1000,
        directCold: {
          scrapes: directRun.up.filter(([t]) => t < directRun.start + COLD_SECONDS).length,
          failed: directRun.up.filter(([t, v]) => t < directRun.start + COLD_SECONDS && v !== 1).length,
          p99:
            quantile(
              directRun.durations
                .filter(([t]) => t < directRun.start + COLD_SECONDS)
                .map(([, v]) => v)
                .sort((a, b) => a - b),
              0.99,
            ) * 1000,
        },
        cpuPer1000: {
          proxy: (overlayRun.cpu.proxy * 1000) / Math.max(1, overlayRun.up.length),
          binds: (overlayRun.cpu.binds * 1000) / Math.max(1, overlayRun.up.length),
        },
        proxyRssPeakMiB: overlayRun.proxyRssPeak,
        sdMs: await sdMs(),
        proxy: {
          dials: delta(counted0.dials, counted1.dials),
          answers: delta(counted0.answers, counted1.answers),
          warm: delta(counted0.warm, counted1.warm),
        },
      };
      results.push(r);
      say(
        `${n} targets: first ${COLD_SECONDS} s ${r.cold.scrapes} scrapes, ${r.cold.failed} failed, p99 ` +
          `${r.cold.p99.toFixed(1)} ms; then ${r.scrapes} scrapes, ${r.failed} failed; scrape_duration p50 ${r.p50.toFixed(1)} ms, ` +
          `p99 ${r.p99.toFixed(1)} ms (direct ${r.directP99.toFixed(1)} ms; direct's first ${COLD_SECONDS} s: ` +
          `${r.directCold.failed} of ${r.directCold.scrapes} failed, p99 ${r.directCold.p99.toFixed(1)} ms), max ${r.max.toFixed(1)} ms; CPU s per ` +
          `1,000 scrapes: proxy ${r.cpuPer1000.proxy.toFixed(2)}, binds ${r.cpuPer1000.binds.toFixed(2)}; ` +
          `proxy RSS peak ${r.proxyRssPeakMiB.toFixed(0)} MiB; /sd ${r.sdMs.toFixed(0)} ms; proxy dials ` +
          `${JSON.stringify(r.proxy.dials)}, answers ${JSON.stringify(r.proxy.answers)}, dialed ahead ` +
          `${JSON.stringify(r.proxy.warm)}`,
      );
    }
    printScale(opts.services, binds, idle, results);
    writeResults("scale", {
      opts,
      warmUp,
      binds: binds.map((b) => ({ boundSeconds: b.boundSeconds, rssMiB: b.rssMiB, idleRssMiB: b.idleRssMiB })),
      idle,
      exited: deaths,
      steps: results,
    });
    if (deaths.length)
      throw new Error(`the figures are not valid: ${deaths.join(", ")} exited during the run (logs above)`);
  } finally {
    clearInterval(watchdog); // the teardown below stops them all
    for (const c of closers) await c().catch(() => undefined);
  }
}

/** Runs a Prometheus with one scrape job for `minutes`: every `up` and `scrape_duration_seconds` sample it stored,
 * the CPU seconds the processes used meanwhile, and the proxy's peak RSS (sampled every second). */
async function scrapeFor(
  job: { job_name: string } & Record<string, unknown>,
  minutes: number,
  pids: { proxy: number; binds: number[] },
): Promise<{
  /** Unix seconds when it started scraping, and every sample as [unix seconds, value]. */
  start: number;
  up: [number, number][];
  durations: [number, number][];
  active: number;
  cpu: { proxy: number; binds: number };
  proxyRssPeak: number;
}> {
  const bindCpu = () => cpuOf(pids.binds);
  const prom = await Prometheus.start({ scrape_configs: [job] });
  try {
    const cpu0 = { proxy: cpuSeconds(pids.proxy), binds: bindCpu() };
    let peak = 0;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pids.proxy))), 1000);
    const start = Date.now();
    await sleep(minutes * 60_000);
    clearInterval(sampler);
    const cpu = { proxy: cpuSeconds(pids.proxy) - cpu0.proxy, binds: bindCpu() - cpu0.binds };
    const window = Math.round((Date.now() - start) / 1000);
    const sel = `{job="${job.job_name}"}`;
    const values = (metric: string) => rangeValues(prom, `${metric}${sel}[${window}s]`);
    const up = await values("up");
    const durations = await values("scrape_duration_seconds");
    const active = Number((await prom.query(`count(up${sel})`))[0]?.value[1] ?? 0);
    return { start: start / 1000, up, durations, active, cpu, proxyRssPeak: peak };
  } finally {
    await prom.close();
  }
}

function printScale(
  services: number,
  binds: { boundSeconds: number; rssMiB: number; idleRssMiB?: number }[],
  idle: { proxyCpuPerMin: number; bindsCpuPerMin: number; proxyRssMiB: number },
  steps: Step[],
): void {
  process.stdout.write(
    `\nscale: one scrapez bind with ${services} services, a scrapez proxy scraped by Prometheus every 15 s\n`,
  );
  binds.forEach((b, i) =>
    process.stdout.write(
      `bind ${i + 1}: all bound in ${b.boundSeconds.toFixed(1)} s (goal < 30); RSS ${b.rssMiB.toFixed(0)} MiB 5 s after, ` +
        `${b.idleRssMiB?.toFixed(0) ?? "?"} MiB after ${IDLE_SECONDS} s idle (goal < 150)\n`,
    ),
  );
  process.stdout.write(
    `idle, nothing scraping: proxy ${idle.proxyCpuPerMin.toFixed(2)} CPU s/min, RSS ${idle.proxyRssMiB.toFixed(0)} MiB; ` +
      `both binds ${idle.bindsCpuPerMin.toFixed(2)} CPU s/min (in the CPU per scrape below)\n`,
  );
  const rows: string[][] = [
    [
      "targets",
      "min",
      "first 30 s: failed, p99 ms",
      "scrapes",
      "failed",
      "p50 ms",
      "p99 ms",
      "direct p99",
      "p99 ratio",
      "max ms",
      "proxy cpu/1000",
      "binds cpu/1000",
      "proxy RSS peak",
      "/sd ms",
    ],
  ];
  for (const s of steps) {
    rows.push([
      `${s.targets} (${s.activeTargets} up)`,
      String(s.minutes),
      `${s.cold.failed} of ${s.cold.scrapes}, ${s.cold.p99.toFixed(0)}`,
      String(s.scrapes),
      String(s.failed),
      s.p50.toFixed(1),
      s.p99.toFixed(1),
      s.directP99.toFixed(1),
      (s.p99 / s.directP99).toFixed(1),
      s.max.toFixed(1),
      `${s.cpuPer1000.proxy.toFixed(2)} s`,
      `${s.cpuPer1000.binds.toFixed(2)} s`,
      `${s.proxyRssPeakMiB.toFixed(0)} MiB`,
      s.sdMs.toFixed(0),
    ]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  process.stdout.write(`${rows.map((r) => r.map((x, i) => x.padEnd(w[i]!)).join("  ")).join("\n")}\n`);
  process.stdout.write(
    "goals at the last step, after its first 30 s: 0 failed, p99 < 100 ms, proxy RSS < 256 MiB. The first 30 s " +
      "(every target's first scrapes, each dialing a new overlay connection) are counted apart. p99 ratio: " +
      "scrape_duration p99 through the overlay / the same number of targets scraped directly by the same Prometheus, " +
      "in the minute after.\n",
  );
}

/** The proxy's warm-up so far: dials ahead by result, connections held, concurrency, sessions made (its /metrics). */
async function warmCounts(port: number): Promise<{
  tried: number;
  ok: number;
  held: number;
  concurrency: number;
  sessions: number;
  failed: Record<string, number>;
}> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const one = (name: string) =>
    [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))].reduce((n, m) => n + Number(m[1]), 0);
  const failed: Record<string, number> = {};
  let tried = 0;
  let ok = 0;
  for (const m of text.matchAll(/^scrapez_proxy_warm_dials_total\{result="([^"]*)"\} (\S+)$/gm)) {
    tried += Number(m[2]);
    if (m[1] === "ok") ok += Number(m[2]);
    else failed[m[1]!] = Number(m[2]);
  }
  return {
    tried,
    ok,
    held: one("scrapez_proxy_warm_connections_held"),
    concurrency: one("scrapez_proxy_warm_concurrency"),
    sessions: one("scrapez_proxy_sessions_created_total"),
    failed,
  };
}

/** The proxy's dial results and answer statuses so far, summed over services (from its /metrics). */
async function proxyCounts(port: number): Promise<{
  dials: Record<string, number>;
  answers: Record<string, number>;
  warm: Record<string, number>;
}> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const sum = (metric: string, label: string) => {
    const out: Record<string, number> = {};
    const re = new RegExp(`^${metric}\\{[^}]*\\b${label}="([^"]*)"[^}]*\\} (\\S+)$`, "gm");
    for (const m of text.matchAll(re)) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    return out;
  };
  return {
    dials: sum("scrapez_proxy_dials_total", "result"),
    answers: sum("scrapez_proxy_requests_total", "code"),
    warm: sum("scrapez_proxy_warm_connections_total", "outcome"),
  };
}

function delta(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  return Object.fromEntries(
    Object.entries(b)
      .map(([k, v]) => [k, v - (a[k] ?? 0)] as const)
      .filter(([, v]) => v > 0),
  );
}

/** CPU seconds used so far by these processes together. */
function cpuOf(pids: number[]): number {
  return pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Every sample of a range-vector query (one instant), flattened over series: [unix seconds, value]. */
async function rangeValues(prom: Prometheus, expr: string): Promise<[number, number][]> {
  const r = await prom.get(`/api/v1/query?query=${encodeURIComponent(expr)}`);
  const j = (await r.json()) as { data: { result: { values: [number, string][] }[] } };
  return j.data.result.flatMap((s) => s.values.map(([t, v]): [number, number] => [t, Number(v)]));
}
