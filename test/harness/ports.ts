/** Free loopback ports, chosen at run time; TCP readiness and polling helpers. */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import net from "node:net";

const handedOut = new Set<number>();

/** A port that was free on 127.0.0.1 a moment ago (and not handed out before in this process). */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const a = srv.address() as net.AddressInfo;
        srv.close(() => resolve(a.port));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("could not find a free loopback port");
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
 * Lets a test prove a binary listens on loopback only.
 */
export function listeningAddresses(pid: number): string[] {
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
  for (const [file, v6] of [
    ["tcp", false],
    ["tcp6", true],
  ] as const) {
    let text = "";
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, "utf8");
    } catch {
      continue; // no IPv6
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== "0A" || !inodes.has(f[9]!)) continue; // 0A = LISTEN
      const [hexAddr, hexPort] = f[1]!.split(":") as [string, string];
      out.push(`${v6 ? `[${hexToIPv6(hexAddr)}]` : hexToIPv4(hexAddr)}:${parseInt(hexPort, 16)}`);
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
