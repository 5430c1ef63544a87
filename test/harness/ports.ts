/** Free loopback ports, chosen at run time; TCP readiness and polling helpers. */
import { mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/*
 * Why not just bind(0): the kernel takes ports for bind(0) AND for every outgoing connect() from the ephemeral
 * range, so a port freed by freePort() can become the local port of one of the thousands of client connections
 * the tests make (another worker's, another session's) before the binary binds it; the binary then exits with
 * "address already in use". So ports come from below the ephemeral range, which the kernel never hands out
 * itself, are checked by binding them, and are claimed across processes with a lock file
 * (<tmpdir>/scrapez-ports/<port>, holding the pid) for as long as this process lives.
 */
const HARNESS_LOW = 20_000;
const lockDir = join(tmpdir(), "scrapez-ports");
const claimed = new Set<number>();

function portRange(): [number, number] | undefined {
  let lo = 32_768;
  let hi = 60_999;
  try {
    [lo, hi] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number) as [
      number,
      number,
    ];
  } catch {
    /* not Linux: assume the Linux default */
  }
  if (lo - HARNESS_LOW >= 1_000) return [HARNESS_LOW, lo - 1];
  if (65_535 - hi >= 1_000) return [hi + 1, 65_535];
  return undefined; // no room outside the ephemeral range: fall back to bind(0)
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Claims `port` for this process with an exclusive lock file; false if another live process holds it. */
function claim(port: number): boolean {
  const file = join(lockDir, String(port));
  try {
    writeFileSync(file, String(process.pid), { flag: "wx" });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    // No usable lock dir: go without cross-process claims (the bind check still holds).
  }
  claimed.add(port);
  return true;
}

/** Removes the lock files of ports this process claimed (on exit; also called by process.ts's cleanup). */
export function releasePorts(): void {
  for (const port of claimed) rmSync(join(lockDir, String(port)), { force: true });
  claimed.clear();
}
process.once("exit", releasePorts);

/** Lock files of processes that no longer exist (SIGKILLed before they could remove them). */
function sweepStaleLocks(): void {
  let names: string[] = [];
  try {
    mkdirSync(lockDir, { recursive: true });
    names = readdirSync(lockDir);
  } catch {
    return;
  }
  for (const name of names) {
    const file = join(lockDir, name);
    try {
      const pid = Number(readFileSync(file, "utf8"));
      if (pid > 0 && !pidAlive(pid)) rmSync(file, { force: true });
    } catch {
      /* removed meanwhile */
    }
  }
}
sweepStaleLocks();

function canBind(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(undefined));
    srv.listen(port, "127.0.0.1", () => {
      const a = srv.address() as net.AddressInfo;
      srv.close(() => resolve(a.port));
    });
  });
}

/**
 * A port on 127.0.0.1 that is free now and reserved for this process (no other harness process gets it while
 * this one lives). Outside the kernel's ephemeral range, see above.
 */
export async function freePort(): Promise<number> {
  const range = portRange();
  for (let i = 0; i < 200; i++) {
    const candidate = range ? range[0] + Math.floor(Math.random() * (range[1] - range[0] + 1)) : 0;
    if (claimed.has(candidate)) continue;
    const port = await canBind(candidate);
    if (port === undefined || claimed.has(port)) continue;
    if (claim(port)) return port;
  }
  throw new Error(`could not find a free loopback port${range ? ` in ${range[0]}-${range[1]}` : ""}`);
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Thrown from a waitUntil() check to stop waiting at once (e.g. the process being waited on exited). */
export class StopWaiting extends Error {}

/**
 * Polls `check` (every 200 ms) until it returns a truthy value or the time runs out; a throwing check counts as
 * "not yet" (its last error is reported on time-out) unless it throws StopWaiting. `onTimeout` adds detail (logs).
 */
export async function waitUntil<T>(
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  what: string,
  onTimeout?: () => string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      if (err instanceof StopWaiting) throw err;
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const detail = lastErr ? ` (last error: ${(lastErr as Error).message})` : "";
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${detail}${onTimeout ? `\n${onTimeout()}` : ""}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * The TCP addresses a process listens on, e.g. "127.0.0.1:40309" or "[::]:9100" (Linux only: reads /proc).
 * Lets a test prove a binary listens on loopback only. With `udp`, also its unconnected (receiving) UDP sockets,
 * prefixed "udp ".
 */
export function listeningAddresses(pid: number, opts: { udp?: boolean } = {}): string[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      /* fd closed meanwhile */
    }
  }
  const out: string[] = [];
  const files: (readonly [string, boolean])[] = [
    ["tcp", false],
    ["tcp6", true],
  ];
  if (opts.udp) files.push(["udp", false], ["udp6", true]);
  for (const [file, v6] of files) {
    let text = "";
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, "utf8");
    } catch {
      continue; // no IPv6
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !inodes.has(f[9]!)) continue;
      const udp = file.startsWith("udp");
      // TCP: state 0A = LISTEN. UDP: no remote address, so it receives from anyone.
      if (udp ? !/^0+:0000$/.test(f[2]!) : f[3] !== "0A") continue;
      const [hexAddr, hexPort] = f[1]!.split(":") as [string, string];
      const addr = `${v6 ? `[${hexToIPv6(hexAddr)}]` : hexToIPv4(hexAddr)}:${parseInt(hexPort, 16)}`;
      out.push(udp ? `udp ${addr}` : addr);
    }
  }
  return out.sort();
}

/** /proc/net/tcp stores an IPv4 address as one host-order (little-endian here) 32-bit word. */
function hexToIPv4(hex: string): string {
  return Buffer.from(hex, "hex").reverse().join(".");
}

function hexToIPv6(hex: string): string {
  const b = Buffer.from(hex, "hex");
  for (let i = 0; i < 16; i += 4) b.subarray(i, i + 4).reverse();
  const g: string[] = [];
  for (let i = 0; i < 16; i += 2) g.push(b.readUInt16BE(i).toString(16));
  // Compress the longest run of two or more zero groups to "::".
  let best = [-1, 0];
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && g[j] === "0") j++;
    if (j - i > best[1]!) best = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  if (best[1]! < 2) return g.join(":");
  return `${g.slice(0, best[0]).join(":")}::${g.slice(best[0]! + best[1]!).join(":")}`;
}
