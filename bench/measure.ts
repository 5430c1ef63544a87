/**
 * What the end-to-end benches (e2e.ts, scale.ts, ab.ts, workers.ts) share: what they read from /proc, their loader,
 * their static exporter, and how they keep their results.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import type { Duplex } from "node:stream";

const TICK = 100; // USER_HZ

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICK;
}

/** A process's resident memory now, MiB. */
export function rssMiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : NaN;
}

/** The q-quantile of an ascending array (NaN when empty). */
export function quantile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : NaN;
}

/** Writes `.cache/bench/<section>-<commit>.json` (with the commit and time added) and says where. */
export function writeResults(section: string, data: object): void {
  let commit = "unknown";
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    // not a checkout
  }
  mkdirSync(".cache/bench", { recursive: true });
  const file = `.cache/bench/${section}-${commit}.json`;
  writeFileSync(file, JSON.stringify({ commit, at: new Date().toISOString(), ...data }, null, 2));
  process.stdout.write(`\nwritten: ${file}\n`);
}

/** A scrapez process's wire counters and event-loop turns so far (bench/wire-probe.mjs, preloaded), by name. */
export type WireCounters = Record<string, number>;

/** Reads the wire probe on `port` (bench/wire-probe.mjs). */
export function wireCounters(port: number): Promise<WireCounters> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port, path: "/", agent: false }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => {
          try {
            resolve(JSON.parse(body) as WireCounters);
          } catch (err) {
            reject(err as Error);
          }
        });
      })
      .on("error", reject);
  });
}

/**
 * `concurrency` keep-alive loops of GET `request()` for `seconds` (each scrape times out after 10 s): the good
 * scrapes' latencies (ms, ascending), the failures, the seconds it took, and the CPU ms per good scrape of each
 * process in `pids`, read with `cpu` (default: the process alone) before and after. What the e2e, workers and
 * A/B benches measure per cell. `agent` makes the loops' keep-alive pool (default: plain TCP connections).
 */
export async function keepAliveLoad(
  request: () => http.RequestOptions,
  concurrency: number,
  seconds: number,
  pids: Record<string, number>,
  cpu: (pid: number) => number = cpuSeconds,
  makeAgent: (maxSockets: number) => http.Agent = (maxSockets) => new http.Agent({ keepAlive: true, maxSockets }),
): Promise<{ lat: number[]; errors: number; elapsed: number; cpu: Record<string, number> }> {
  const agent = makeAgent(concurrency);
  const lat: number[] = [];
  let errors = 0;
  const end = Date.now() + seconds * 1000;
  const one = () =>
    new Promise<void>((resolve) => {
      const t0 = performance.now();
      const req = http.get({ ...request(), agent }, (res) => {
        res.resume();
        res.on("end", () => {
          if (res.statusCode === 200) lat.push(performance.now() - t0);
          else errors++;
          resolve();
        });
        res.on("error", () => (errors++, resolve()));
      });
      req.setTimeout(10_000, () => req.destroy(new Error("timeout")));
      req.on("error", () => (errors++, resolve()));
    });
  const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpu(pid)]));
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) await one();
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  agent.destroy();
  const perScrape = Object.fromEntries(
    Object.entries(pids).map(([k, pid]) => [k, ((cpu(pid) - cpu0[k]!) * 1000) / Math.max(1, lat.length)]),
  );
  lat.sort((a, b) => a - b);
  return { lat, errors, elapsed, cpu: perScrape };
}

/**
 * A keep-alive agent whose every connection is a CONNECT tunnel through the HTTP proxy on 127.0.0.1:`proxyPort` to
 * `authority` (`host:port`): what Prometheus does for an https target, here carrying plain HTTP, so that the proxy
 * relays bytes and never parses a scrape (bench/ab.ts --b-raw).
 */
export class ConnectAgent extends http.Agent {
  readonly #proxyPort: number;
  readonly #authority: string;

  constructor(proxyPort: number, authority: string, opts: http.AgentOptions) {
    super(opts);
    this.#proxyPort = proxyPort;
    this.#authority = authority;
  }

  override createConnection(
    _opts: http.ClientRequestArgs,
    done?: (err: Error | null, socket: Duplex) => void,
  ): undefined {
    const s = net.connect(this.#proxyPort, "127.0.0.1");
    let head = Buffer.alloc(0);
    const fail = (err: Error) => {
      s.destroy();
      done?.(err, s);
    };
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      // Not paused: the client's 'data' listener comes before its request, and nothing arrives until then.
      s.off("data", onData);
      s.off("error", fail);
      const status = head.subarray(0, head.indexOf("\r\n")).toString("latin1");
      if (!/^HTTP\/1\.[01] 200 /.test(status)) return fail(new Error(`CONNECT ${this.#authority}: ${status}`));
      if (end + 4 < head.length) s.unshift(head.subarray(end + 4));
      done?.(null, s);
    };
    s.on("data", onData);
    s.on("error", fail);
    s.write(`CONNECT ${this.#authority} HTTP/1.1\r\nhost: ${this.#authority}\r\n\r\n`);
    return undefined;
  }
}

/**
 * The benches' static exporter: an HTTP server on 127.0.0.1 (a free port) that answers every request with `bytes`
 * bytes of `fill` and a Content-Length.
 */
export async function staticExporter(bytes: number, fill = "x"): Promise<{ port: number; close: () => Promise<void> }> {
  const body = Buffer.alloc(bytes, fill);
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
