/**
 * A real binary run by a test: its own process group and temp dir, a capped log, a readiness wait that fails
 * with the log, and a teardown that always kills the group and removes the files (also on interruption).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitUntil } from "./ports.js";

const LOG_CAP = 64 * 1024;
const live = new Set<ManagedProcess>();

function killAll(): void {
  for (const p of live) p.killNow();
}
process.once("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });
}

/** A temp dir under the OS temp dir, removed by the caller (or by a ManagedProcess that owns it). */
export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `scrapez-${prefix}-`));
}

export interface ProcessOptions {
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Removed on stop() when set. */
  ownDir?: string;
}

export class ManagedProcess {
  readonly name: string;
  readonly opts: ProcessOptions;
  #child: ChildProcess | undefined;
  #log = "";
  #exited: Promise<number | null> = Promise.resolve(null);
  #exitCode: number | null | undefined;

  constructor(opts: ProcessOptions) {
    this.name = opts.name;
    this.opts = opts;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#exitCode === undefined;
  }

  start(): this {
    if (this.running) return this;
    this.#exitCode = undefined;
    const child = spawn(this.opts.command, this.opts.args, {
      cwd: this.opts.cwd,
      env: { ...process.env, ...this.opts.env },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.#child = child;
    live.add(this);
    const append = (b: Buffer) => {
      this.#log += b.toString("utf8");
      if (this.#log.length > LOG_CAP) this.#log = this.#log.slice(-LOG_CAP);
    };
    child.stdout?.on("data", append);
    child.stderr?.on("data", append);
    this.#exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.#exitCode = code ?? (signal ? -1 : null);
        append(Buffer.from(`\n[${this.name} exited: code=${code} signal=${signal}]\n`));
        resolve(code);
      });
      child.once("error", (err) => {
        this.#exitCode = -1;
        append(Buffer.from(`\n[${this.name} failed to start: ${err.message}]\n`));
        resolve(-1);
      });
    });
    return this;
  }

  /** The last 64 KiB of stdout+stderr. */
  logTail(max = LOG_CAP): string {
    return this.#log.slice(-max);
  }

  /** Waits for a readiness check; on time-out throws with the captured log. */
  async waitFor<T>(
    check: () => Promise<T | undefined | false> | T | undefined | false,
    timeoutMs: number,
    what: string,
  ): Promise<T> {
    return waitUntil(
      async () => {
        if (this.#exitCode !== undefined) {
          throw new Error(
            `${this.name} exited (code ${this.#exitCode}) while waiting for ${what}\n--- ${this.name} log ---\n${this.logTail(8192)}`,
          );
        }
        return check();
      },
      timeoutMs,
      `${this.name}: ${what}`,
      () => `--- ${this.name} log (tail) ---\n${this.logTail(8192)}`,
    );
  }

  async waitForLog(re: RegExp, timeoutMs: number, what = `log line ${re}`): Promise<void> {
    await this.waitFor(() => re.test(this.#log), timeoutMs, what);
  }

  killNow(): void {
    const pid = this.#child?.pid;
    if (pid && this.#exitCode === undefined) {
      try {
        process.kill(-pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }

  /** SIGTERM to the group, SIGKILL after the grace period. Idempotent. */
  async stop(graceMs = 5_000): Promise<void> {
    const pid = this.#child?.pid;
    if (pid && this.#exitCode === undefined) {
      try {
        process.kill(-pid, "SIGTERM");
      } catch {
        /* already gone */
      }
      const t = setTimeout(() => this.killNow(), graceMs);
      await this.#exited;
      clearTimeout(t);
    }
    live.delete(this);
  }

  /** stop() and remove the owned directory. */
  async close(): Promise<void> {
    await this.stop();
    if (this.opts.ownDir) rmSync(this.opts.ownDir, { recursive: true, force: true });
  }
}
