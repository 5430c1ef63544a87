/** Resident memory and open file descriptors of a running process (Linux /proc), for leak checks and the soak. */
import { readdirSync, readFileSync } from "node:fs";

export interface ProcStats {
  /** Resident set size, bytes. */
  rss: number;
  /** Open file descriptors (sockets included). */
  fds: number;
}

export function procStats(pid: number): ProcStats {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return { rss: Number(m?.[1] ?? 0) * 1024, fds: readdirSync(`/proc/${pid}/fd`).length };
}

export const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
