/**
 * A real headless Chromium (Debian's `chromium`, installed by scripts/setup.sh) driven over the DevTools protocol
 * on a pipe (`--remote-debugging-pipe`: JSON messages ended by NUL on fds 3 and 4), so no port is opened and no
 * WebSocket client is needed. Started with the flags that keep it off the network (see the machine notes: without
 * them it tries to reach Google's hosts) and a fresh profile in a temp dir.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import type { Readable, Writable } from "node:stream";
import { removeDir, tempDir } from "./process.js";

export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--hide-scrollbars",
];

export function chromiumBin(): string {
  for (const p of ["/usr/bin/chromium", "/usr/bin/chromium-browser"]) if (existsSync(p)) return p;
  throw new Error("chromium is not installed: run `bash scripts/setup.sh` (it installs Debian's chromium package)");
}

interface Pending {
  resolve(v: Record<string, unknown>): void;
  reject(e: Error): void;
  method: string;
}

export class Chromium {
  readonly #proc: ChildProcess;
  readonly #in: Writable;
  readonly #dir: string;
  #buf = Buffer.alloc(0);
  #id = 0;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners: ((m: { method: string; params: Record<string, unknown>; sessionId?: string }) => void)[] = [];
  #stderr = "";
  sessionId: string | undefined;

  private constructor() {
    this.#dir = tempDir("chromium");
    this.#proc = spawn(
      chromiumBin(),
      [...CHROMIUM_FLAGS, `--user-data-dir=${this.#dir}`, "--remote-debugging-pipe", "about:blank"],
      { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] },
    );
    this.#in = this.#proc.stdio[3] as Writable;
    const out = this.#proc.stdio[4] as Readable;
    out.on("data", (d: Buffer) => this.#onData(d));
    this.#proc.stderr!.on("data", (d: Buffer) => {
      this.#stderr = (this.#stderr + d.toString()).slice(-8192);
    });
    this.#proc.once("exit", (code, sig) => {
      for (const p of this.#pending.values()) {
        p.reject(new Error(`chromium exited (${code ?? sig}) during ${p.method}:\n${this.#stderr}`));
      }
      this.#pending.clear();
    });
    this.#in.on("error", () => undefined);
  }

  /** Starts Chromium and opens one page (attached in flat mode: `sessionId` addresses it). */
  static async launch(): Promise<Chromium> {
    const c = new Chromium();
    try {
      const { targetId } = (await c.send("Target.createTarget", { url: "about:blank" })) as { targetId: string };
      const { sessionId } = (await c.send("Target.attachToTarget", { targetId, flatten: true })) as {
        sessionId: string;
      };
      c.sessionId = sessionId;
    } catch (err) {
      await c.close();
      throw err;
    }
    return c;
  }

  get stderrTail(): string {
    return this.#stderr;
  }

  #onData(d: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, d]);
    for (let end = this.#buf.indexOf(0); end >= 0; end = this.#buf.indexOf(0)) {
      const msg = JSON.parse(this.#buf.subarray(0, end).toString("utf8")) as {
        id?: number;
        result?: Record<string, unknown>;
        error?: { message: string };
        method?: string;
        params?: Record<string, unknown>;
        sessionId?: string;
      };
      this.#buf = this.#buf.subarray(end + 1);
      if (msg.id !== undefined) {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        if (msg.error) p?.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p?.resolve(msg.result ?? {});
      } else if (msg.method) {
        const ev = {
          method: msg.method,
          params: msg.params ?? {},
          ...(msg.sessionId ? { sessionId: msg.sessionId } : {}),
        };
        for (const l of this.#listeners) l(ev);
      }
    }
  }

  /** A DevTools command (to the page's session unless `browser` is set). */
  send(method: string, params: Record<string, unknown> = {}, browser = false): Promise<Record<string, unknown>> {
    const id = ++this.#id;
    const session = browser || !this.sessionId ? {} : { sessionId: this.sessionId };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`${method}: no answer from chromium within 60 s\n${this.#stderr}`));
      }, 60_000);
      this.#pending.set(id, {
        method,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#in.write(`${JSON.stringify({ id, method, params, ...session })}\0`);
    });
  }

  on(listener: (m: { method: string; params: Record<string, unknown>; sessionId?: string }) => void): void {
    this.#listeners.push(listener);
  }

  /** Resolves with the first event named `method` for the page (within `timeoutMs`). */
  waitForEvent(method: string, timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${method} within ${timeoutMs} ms\n${this.#stderr}`)), timeoutMs);
      this.on((m) => {
        if (m.method === method && m.sessionId === this.sessionId) {
          clearTimeout(t);
          resolve(m.params);
        }
      });
    });
  }

  /** Evaluates an expression in the page and returns its value (awaiting a promise). */
  async evaluate<T>(expression: string): Promise<T> {
    const r = (await this.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true })) as {
      result: { value: T };
      exceptionDetails?: { text: string; exception?: { description?: string } };
    };
    if (r.exceptionDetails) {
      throw new Error(`evaluate: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    }
    return r.result.value;
  }

  async close(): Promise<void> {
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) {
      const exited = new Promise<void>((r) => this.#proc.once("exit", () => r()));
      this.send("Browser.close", {}, true).catch(() => undefined);
      const t = setTimeout(() => this.#proc.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(t);
    }
    removeDir(this.#dir);
  }
}

/** Width and height of a PNG, from its IHDR chunk; throws if it is not a PNG. */
export function pngSize(png: Buffer): { width: number; height: number } {
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  if (png.length < 24 || !png.subarray(0, 8).equals(sig) || png.toString("latin1", 12, 16) !== "IHDR") {
    throw new Error("not a PNG file");
  }
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}
