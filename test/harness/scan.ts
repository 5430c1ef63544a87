/**
 * A TCP connect scan: tries every port of a range on one address, at most `concurrency` attempts in flight, and
 * sorts each port into open (the handshake completed), refused (RST: nothing listens), timed out (no answer:
 * filtered or unreachable) or other errors. A port without a definite answer (timed out, or a local error such
 * as EADDRNOTAVAIL) is tried again, fewer at a time and with a longer wait, so that on a loaded machine an
 * answer the scanner was too busy to read in time is not mistaken for silence. Run inside a network namespace by test/fixtures/netns-agent.ts, so
 * the scan starts where an attacker on that network would stand.
 */
import net from "node:net";

export interface ScanOptions {
  /** First and last port, inclusive; default 1-65535. */
  from?: number;
  to?: number;
  /** Attempts in flight at once; default 2,000. */
  concurrency?: number;
  /** Per attempt; default 1,000 ms. */
  timeoutMs?: number;
  /** Passes over the ports still without an answer, 200 at a time with 4x the timeout; default 2. */
  retries?: number;
}

export interface ScanResult {
  host: string;
  from: number;
  to: number;
  /** Ports that accepted a connection, ascending. */
  open: number[];
  refused: number;
  timedOut: number;
  /** Other errors by code (EHOSTUNREACH, ...), after the retries. */
  errors: Record<string, number>;
  /** Ports tried again after the first pass. */
  retried: number;
  /** Wall time of the whole scan. */
  ms: number;
}

type Outcome = "open" | "refused" | "timeout" | string;

function attempt(host: string, port: number, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const t = setTimeout(() => {
      s.destroy();
      resolve("timeout");
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(t);
      s.destroy();
      resolve("open");
    });
    s.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(t);
      s.destroy();
      resolve(err.code === "ECONNREFUSED" ? "refused" : (err.code ?? "error"));
    });
  });
}

/** Scans `host` (an IPv4 address) from `from` to `to`. Every port gets exactly one outcome. */
export async function scanTcp(host: string, opts: ScanOptions = {}): Promise<ScanResult> {
  const from = opts.from ?? 1;
  const to = opts.to ?? 65_535;
  const concurrency = opts.concurrency ?? 2_000;
  const timeoutMs = opts.timeoutMs ?? 1_000;
  if (!net.isIPv4(host)) throw new Error(`scanTcp: ${host} is not an IPv4 address`);
  if (!(Number.isInteger(from) && Number.isInteger(to) && from >= 1 && to <= 65_535 && from <= to)) {
    throw new Error(`scanTcp: bad port range ${from}-${to}`);
  }
  const t0 = Date.now();
  const result: ScanResult = { host, from, to, open: [], refused: 0, timedOut: 0, errors: {}, retried: 0, ms: 0 };
  /** Ports without a definite answer, with their last outcome. */
  let pending = new Map<number, Outcome>();
  const pass = async (ports: number[], width: number, waitMs: number) => {
    const next = new Map<number, Outcome>();
    let i = 0;
    const worker = async () => {
      while (i < ports.length) {
        const port = ports[i++]!;
        const o = await attempt(host, port, waitMs);
        if (o === "open") result.open.push(port);
        else if (o === "refused") result.refused++;
        else next.set(port, o);
      }
    };
    await Promise.all(Array.from({ length: Math.min(width, ports.length) }, worker));
    pending = next;
  };
  await pass(
    Array.from({ length: to - from + 1 }, (_, k) => from + k),
    concurrency,
    timeoutMs,
  );
  for (let r = 0; r < (opts.retries ?? 2) && pending.size > 0; r++) {
    result.retried += pending.size;
    await pass([...pending.keys()], 200, timeoutMs * 4);
  }
  for (const o of pending.values()) {
    if (o === "timeout") result.timedOut++;
    else result.errors[o] = (result.errors[o] ?? 0) + 1;
  }
  result.open.sort((a, b) => a - b);
  result.ms = Date.now() - t0;
  return result;
}
