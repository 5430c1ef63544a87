/**
 * A real binary run by a test: its own process group and temp dir, a capped log, a readiness wait that fails
 * with the log, and a teardown that always kills the group and removes the files (also on interruption).
 *
 * Leftovers are prevented three ways:
 * - every live process is killed (the whole group) when this Node process exits, and on SIGINT/SIGTERM/SIGHUP
 *   when nobody else handles the signal (a script with its own handler tears down itself; 'exit' still runs),
 *   and when a forked test worker loses its parent (IPC 'disconnect');
 * - on Linux each child runs under `setpriv --pdeathsig KILL`, so it dies even if this Node process is
 *   SIGKILLed (e.g. a test worker killed on a time-out), which no handler can catch;
 * - each process gets TMPDIR = its own temp dir, so files a binary drops there (the ziti CLI's
 *   /tmp/gops-agent.<pid>.sock, which a killed process never removes) go away with that dir; temp dirs are
 *   named after the Node process that made them, and those of a process that no longer exists are removed
 *   when the harness is next loaded.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { releasePorts, StopWaiting, waitUntil } from "./ports.js";

/** How much of stdout+stderr each process keeps (the newest bytes). */
export const LOG_CAP = 64 * 1024;

const live = new Set<ManagedProcess>();
/** Temp dirs to remove when this Node process exits, unless removed earlier. */
const dirsToRemove = new Set<string>();
/** Other synchronous teardowns (network namespaces: test/harness/netns.ts), run after every process is killed. */
const cleanups = new Set<() => void>();

/**
 * Registers a synchronous teardown that runs when this Node process exits or is interrupted (with the process
 * cleanup above, after every live process got SIGKILL). Returns a function that unregisters it.
 */
export function onCleanup(fn: () => void): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

function cleanupNow(): void {
  for (const p of live) p.killNow();
  releasePorts();
  for (const fn of cleanups) {
    try {
      fn();
    } catch {
      /* best effort: the next run's sweep removes what is left */
    }
  }
  cleanups.clear();
  for (const d of dirsToRemove) rmSync(d, { recursive: true, force: true });
  dirsToRemove.clear();
}
process.once("exit", cleanupNow);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  const onSignal = () => {
    // Only when ours is the sole handler: then Node would otherwise die without running 'exit' handlers.
    // Another handler (a script's graceful teardown, the test runner) decides how to exit; 'exit' still cleans up.
    if (process.listenerCount(sig) > 1) return;
    cleanupNow();
    // Re-raise with the default action (not process.exit: vitest replaces it in its workers with a throw).
    process.off(sig, onSignal);
    process.kill(process.pid, sig);
  };
  process.on(sig, onSignal);
}

// A forked worker (vitest's forks pool) whose parent died is orphaned and keeps running (vitest's worker then
// spins), and our children's pipes would keep it alive: when the IPC channel to the parent closes, clean up
// now and make sure the worker goes too (SIGKILL: its process.exit is replaced by vitest, see above).
if (process.send) {
  process.once("disconnect", () => {
    cleanupNow();
    setTimeout(() => process.kill(process.pid, "SIGKILL"), 5_000).unref();
  });
}

/** `setpriv --pdeathsig KILL` where available (Linux, util-linux): the child dies with its parent. */
const SETPRIV = process.platform === "linux" && existsSync("/usr/bin/setpriv") ? "/usr/bin/setpriv" : undefined;

/** iproute2's `ip` (for ProcessOptions.netns). */
export const IP_BIN = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => existsSync(p)) ?? "ip";

/**
 * A fresh dir under the OS temp dir, `scrapez-<prefix>-p<pid>-XXXXXX`; removed when this Node process exits at
 * the latest (or, if it was SIGKILLed, by the next harness run: see sweepOrphanedDirs).
 */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `scrapez-${prefix}-p${process.pid}-`));
  dirsToRemove.add(d);
  return d;
}

/** Removes temp dirs made by tempDir() in Node processes that no longer exist (killed before cleaning up). */
function sweepOrphanedDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^scrapez-.+-p(\d+)-[A-Za-z0-9]{6}$/.exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // its owner is alive (or the pid was reused): leave it
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ESRCH") continue;
    }
    rmSync(join(tmpdir(), name), { recursive: true, force: true });
  }
}
sweepOrphanedDirs();

/** Removes a dir now (and forgets it for the exit-time cleanup). */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirsToRemove.delete(dir);
}

export interface ProcessOptions {
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** Working directory; default: the process's dir. */
  cwd?: string;
  /** The process's dir (TMPDIR, default cwd), created by the caller and NOT removed by close(). */
  dir?: string;
  /** Like `dir`, but owned: close() removes it. Without `dir` or `ownDir` a fresh temp dir is made and owned. */
  ownDir?: string;
  /** SIGTERM-to-SIGKILL grace period for stop(); default 5 s. */
  graceMs?: number;
  /**
   * Run inside this network namespace (`ip netns exec <netns> command args`; see test/harness/netns.ts). Its
   * 127.0.0.1 is the namespace's own loopback, not the test's.
   */
  netns?: string;
  /** Run as this numeric user, group and supplementary groups (as a pod's runAsUser, runAsGroup and fsGroup). */
  user?: { uid: number; gid: number; groups: number[] };
}

/** Newest-bytes-win log buffer: chunks are dropped from the front once over the cap. */
class RingLog {
  #chunks: Buffer[] = [];
  #size = 0;
  constructor(readonly cap: number) {}

  push(b: Buffer): void {
    if (b.length >= this.cap) {
      this.#chunks = [b.subarray(b.length - this.cap)];
      this.#size = this.cap;
      return;
    }
    this.#chunks.push(b);
    this.#size += b.length;
    while (this.#size - this.#chunks[0]!.length >= this.cap) this.#size -= this.#chunks.shift()!.length;
  }

  tail(max: number): string {
    const all = Buffer.concat(this.#chunks, this.#size);
    return all.subarray(Math.max(0, all.length - max)).toString("utf8");
  }
}

export class ManagedProcess {
  readonly name: string;
  readonly opts: ProcessOptions;
  /** The process's own dir: its TMPDIR and default working dir. */
  readonly dir: string;
  readonly #ownsDir: boolean;
  #child: ChildProcess | undefined;
  readonly #log = new RingLog(LOG_CAP);
  #exited: Promise<void> = Promise.resolve();
  #exitCode: number | null | undefined;
  #closed = false;

  constructor(opts: ProcessOptions) {
    this.name = opts.name;
    this.opts = opts;
    if (opts.ownDir) {
      this.dir = opts.ownDir;
      dirsToRemove.add(this.dir);
    } else {
      this.dir = opts.dir ?? tempDir(opts.name.replace(/[^\w.-]/g, "_"));
    }
    this.#ownsDir = !opts.dir;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** True from start() until the process exited. */
  get running(): boolean {
    return this.#child !== undefined && this.#exitCode === undefined;
  }

  /** The exit code of the last run (-1: killed by a signal or failed to spawn); undefined while running. */
  get exitCode(): number | null | undefined {
    return this.#exitCode;
  }

  /** Spawns the binary in its own process group. A no-op while running; may be called again after stop(). */
  start(): this {
    if (this.#closed) throw new Error(`${this.name}: start() after close()`);
    if (this.running) return this;
    this.#exitCode = undefined;
    const u = this.opts.user;
    if (u && !SETPRIV) throw new Error(`${this.name}: running as another user needs setpriv (util-linux)`);
    // One setpriv for both: a second one changing the user would clear the parent-death signal.
    const as = u ? [`--reuid=${u.uid}`, `--regid=${u.gid}`, `--groups=${u.groups.join(",")}`] : [];
    // `ip netns exec` enters the namespace and execs the binary (same pid, same process group).
    const argv = this.opts.netns
      ? [IP_BIN, "netns", "exec", this.opts.netns, this.opts.command, ...this.opts.args]
      : [this.opts.command, ...this.opts.args];
    const [command, args] = SETPRIV
      ? [SETPRIV, ["--pdeathsig", "KILL", ...as, "--", ...argv]]
      : [argv[0]!, argv.slice(1)];
    const child = spawn(command, args, {
      cwd: this.opts.cwd ?? this.dir,
      env: { ...process.env, TMPDIR: this.dir, ...this.opts.env },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.#child = child;
    live.add(this);
    const append = (b: Buffer) => this.#log.push(b);
    child.stdout?.on("data", append);
    child.stderr?.on("data", append);
    this.#exited = new Promise((resolve) => {
      const done = (code: number | null, note: string) => {
        if (this.#exitCode !== undefined) return;
        this.#exitCode = code;
        live.delete(this);
        append(Buffer.from(`\n[${this.name} ${note}]\n`));
        resolve();
      };
      child.once("exit", (code, signal) => done(code ?? -1, `exited: code=${code} signal=${signal}`));
      child.once("error", (err) => done(-1, `failed to start: ${err.message}`));
    });
    return this;
  }

  /** The newest `max` bytes (default and at most 64 KiB) of stdout+stderr, over all runs. */
  logTail(max = LOG_CAP): string {
    return this.#log.tail(max);
  }

  /**
   * Polls `check` until it returns something truthy. Throws, with the log tail, on time-out or as soon as the
   * process exits.
   */
  async waitFor<T>(
    check: () => Promise<T | undefined | false> | T | undefined | false,
    timeoutMs: number,
    what: string,
  ): Promise<T> {
    return waitUntil(
      () => {
        if (this.#exitCode !== undefined) {
          throw new StopWaiting(
            `${this.name} exited (code ${this.#exitCode}) while waiting for ${what}\n` +
              `--- ${this.name} log (tail) ---\n${this.logTail(8192)}`,
          );
        }
        return check();
      },
      timeoutMs,
      `${this.name}: ${what}`,
      () => `--- ${this.name} log (tail) ---\n${this.logTail(8192)}`,
    );
  }

  /** Waits for a line matching `re` in the log. */
  async waitForLog(re: RegExp, timeoutMs: number, what = `log line ${re}`): Promise<void> {
    await this.waitFor(() => re.test(this.logTail()), timeoutMs, what);
  }

  /** SIGKILL to the whole group, without waiting. */
  killNow(): void {
    this.#signal("SIGKILL");
  }

  #signal(sig: NodeJS.Signals): void {
    const pid = this.#child?.pid;
    if (pid && this.#exitCode === undefined) {
      try {
        process.kill(-pid, sig);
      } catch {
        /* already gone */
      }
    }
  }

  /** SIGTERM to the group, SIGKILL after the grace period; resolves once it exited. Idempotent; keeps the dir. */
  async stop(graceMs = this.opts.graceMs ?? 5_000): Promise<void> {
    if (this.running) {
      this.#signal("SIGTERM");
      const t = setTimeout(() => this.killNow(), graceMs);
      await this.#exited;
      clearTimeout(t);
    }
  }

  /** stop() and remove the process's dir when it owns it. Idempotent; no start() afterwards. */
  async close(): Promise<void> {
    await this.stop();
    this.#closed = true;
    if (this.#ownsDir) removeDir(this.dir);
  }
}

export interface CommandResult {
  /** The exit code; -1 when it did not exit by itself (not found, timed out, killed). */
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a short command to completion and returns its exit code and output (capped at 16 MiB); never throws. For
 * the one-shot CLIs tests call (docker, helm, bash scripts); a long-running binary is a ManagedProcess.
 */
export function runCommand(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; input?: string | Buffer; cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 120_000, maxBuffer: 16 << 20, cwd: opts.cwd, env: opts.env, encoding: "utf8" },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
        resolve({ code, stdout, stderr: err && code === -1 ? `${stderr}\n${err.message}` : stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}
