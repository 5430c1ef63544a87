/** How many workers `scrapez proxy` starts when the config does not say (the CPUs and memory it may use). */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";

/** Memory a worker is given when a cgroup memory limit caps the default (a worker measured ~100-150 MiB after load). */
export const WORKER_MEMORY_BYTES = 192 * 1024 * 1024;

/**
 * The workers when the config does not say: the CPUs this process may use, os.availableParallelism() (its CPU
 * affinity), capped by a cgroup v2 CPU quota (`cpu.max`: a container limited to 2 CPUs on a 64-core node gets 2),
 * by its memory limit (`memory.max`, WORKER_MEMORY_BYTES a worker: a 512 MiB container gets at most 2, so the
 * default cannot get a pod OOM-killed), and by 64, the most the config takes.
 */
export function defaultWorkers(
  cpuMax: string | null = readCgroup("cpu.max"),
  memoryMax: string | null = readCgroup("memory.max"),
): number {
  let n = availableParallelism();
  const cpu = /^(\d+) (\d+)$/.exec(cpuMax?.trim() ?? "");
  if (cpu) n = Math.min(n, Math.ceil(Number(cpu[1]) / Number(cpu[2])));
  const mem = /^\d+$/.exec(memoryMax?.trim() ?? "");
  if (mem) n = Math.min(n, Math.floor(Number(mem[0]) / WORKER_MEMORY_BYTES));
  return Math.max(1, Math.min(64, n));
}

/** A cgroup v2 file of this process's cgroup (the root of its namespace in a container), or null without one. */
function readCgroup(file: string): string | null {
  try {
    return readFileSync(`/sys/fs/cgroup/${file}`, "utf8");
  } catch {
    return null;
  }
}
