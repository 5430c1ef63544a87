/**
 * bcrypt for the web config's basic_auth_users (./web-config.ts): results cached as exporter-toolkit caches them
 * (user, hash and password together, 100 entries, random eviction), so only the first request with a given password
 * pays for bcrypt. That runs in a worker thread, never on the event loop (bcryptjs is pure JavaScript, and its async
 * form only slices the work on the main thread), with at most 64 comparisons waiting: a request beyond that is
 * refused (401), not queued.
 */
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import type { Logger } from "../common/log.js";

/** A fixed hash checked for an unknown user, so timing does not tell which users exist (as the toolkit does). */
const UNKNOWN_USER_HASH = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
const CACHE_SIZE = 100;
/** bcrypt comparisons waiting for the worker, at most; a request that would be one more is refused (401). */
export const BCRYPT_MAX_PENDING = 64;
/** At most one warning per this long about requests refused because the queue was full. */
const REFUSED_WARN_MS = 10_000;

/**
 * The worker's code. bcryptjs is pure JavaScript: its "async" form runs in ~100 ms slices scheduled with
 * process.nextTick, so on the main thread one cost-10 comparison holds the event loop for tens of milliseconds.
 * In a worker thread it holds only the worker. The code is evaluated (CommonJS) rather than loaded from a file, so
 * the same thing runs from dist/ and from the TypeScript sources (the tests); bcryptjs is required by the path
 * this module resolves.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const bcrypt = require(workerData.bcrypt);
parentPort.on("message", (m) => {
  let same = false, error;
  try { same = bcrypt.compareSync(m.password, m.hash); } catch (err) { error = String((err && err.message) || err); }
  parentPort.postMessage({ id: m.id, same, error });
});
`;

/**
 * One worker thread that runs bcrypt comparisons one after another: started on the first comparison, unref'd (it
 * never keeps the process alive, even with comparisons pending: those belong to requests whose sockets do), and
 * started again on the next comparison after it dies (the comparisons it was running fail).
 */
export class BcryptWorker {
  #worker: Worker | undefined;
  readonly #waiting = new Map<number, (r: boolean | Error) => void>();
  #next = 0;
  /** Threads started: 1, plus one per restart after a death. */
  started = 0;

  /** Comparisons sent and not yet answered. */
  get pending(): number {
    return this.#waiting.size;
  }

  compare(password: string, hash: string): Promise<boolean> {
    const w = this.#worker ?? this.#start();
    const id = this.#next++;
    return new Promise<boolean>((resolve, reject) => {
      this.#waiting.set(id, (r) => (r instanceof Error ? reject(r) : resolve(r)));
      w.postMessage({ id, password, hash });
    });
  }

  /** Stops the thread (its comparisons fail); the next comparison starts a new one. */
  async terminate(): Promise<void> {
    const w = this.#worker;
    if (w) await w.terminate();
  }

  #start(): Worker {
    const w = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { bcrypt: createRequire(import.meta.url).resolve("bcryptjs") },
    });
    this.started++;
    this.#worker = w;
    w.on("message", (m: { id: number; same: boolean; error?: string }) => {
      const done = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      done?.(m.error !== undefined ? new Error(`bcrypt: ${m.error}`) : m.same);
    });
    const dead = (err: Error) => {
      if (this.#worker !== w) return;
      this.#worker = undefined;
      const all = [...this.#waiting.values()];
      this.#waiting.clear();
      for (const done of all) done(err);
    };
    w.on("error", dead);
    w.on("exit", (code) => dead(new Error(`bcrypt worker exited (code ${code})`)));
    // After the listeners: adding a 'message' listener refs the worker again.
    w.unref();
    return w;
  }
}

/** The process's bcrypt worker: one is enough (a comparison is CPU, and the proxy has one event loop to protect). */
let shared: BcryptWorker | undefined;
function sharedWorker(): BcryptWorker {
  return (shared ??= new BcryptWorker());
}

export interface BcryptCacheOptions {
  /** Where the comparisons run (default: the process's one worker thread). */
  worker?: BcryptWorker;
  /** Comparisons waiting at most (default BCRYPT_MAX_PENDING); one more is refused, not queued. */
  maxPending?: number;
  /** Warned (at most every 10 s, with counts; never a user or password) when requests are refused. */
  log?: Pick<Logger, "warn">;
}

/**
 * bcrypt results by (user, hash, password), as exporter-toolkit caches them: 100 entries, a random one evicted.
 * The key is a SHA-256 of the three, so no password is kept in memory as it was sent. bcrypt itself never runs on
 * the event loop: a comparison the cache cannot answer goes to a worker thread (BcryptWorker), and when
 * `maxPending` are already waiting for it the check is refused (false, not cached) instead of queued.
 */
export class BcryptCache {
  readonly #entries = new Map<string, boolean>();
  readonly #pending = new Map<string, Promise<boolean>>();
  readonly #worker: BcryptWorker | undefined;
  readonly #maxPending: number;
  readonly #log: Pick<Logger, "warn"> | undefined;
  #lastWarn = -Infinity;
  #refusedSinceWarn = 0;
  /** bcrypt comparisons actually run (not answered from the cache). */
  computed = 0;
  /** Checks refused because `maxPending` comparisons were already waiting, or because the worker failed. */
  refused = 0;

  constructor(options: BcryptCacheOptions = {}) {
    this.#worker = options.worker;
    this.#maxPending = options.maxPending ?? BCRYPT_MAX_PENDING;
    this.#log = options.log;
  }

  static key(user: string, hash: string, password: string): string {
    return createHash("sha256").update(`${user}\0${hash}\0${password}`).digest("hex");
  }

  get(key: string): boolean | undefined {
    return this.#entries.get(key);
  }

  set(key: string, ok: boolean): void {
    if (!this.#entries.has(key) && this.#entries.size >= CACHE_SIZE) {
      const drop = [...this.#entries.keys()][Math.floor(Math.random() * this.#entries.size)]!;
      this.#entries.delete(drop);
    }
    this.#entries.set(key, ok);
  }

  /** Comparisons waiting for the worker now. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Whether `password` is `user`'s in `users`: from the cache, else bcrypt in the worker thread (fills the cache).
   * Requests with the same credentials at once share one comparison. An unknown user costs one comparison against a
   * fixed hash, as a known one does. False, and nothing cached, when the queue is full or the worker failed.
   */
  check(users: ReadonlyMap<string, string>, user: string, password: string): Promise<boolean> {
    const hash = users.get(user);
    const key = BcryptCache.key(user, hash ?? UNKNOWN_USER_HASH, password);
    const cached = this.get(key);
    if (cached !== undefined) return Promise.resolve(cached);
    let p = this.#pending.get(key);
    if (p) return p;
    if (this.#pending.size >= this.#maxPending) {
      this.#refuse("queue full");
      return Promise.resolve(false);
    }
    this.computed++;
    p = (this.#worker ?? sharedWorker())
      .compare(password, hash ?? UNKNOWN_USER_HASH)
      .then(
        (same) => {
          const ok = same && hash !== undefined;
          this.set(key, ok);
          return ok;
        },
        (err: unknown) => {
          this.#refuse(err instanceof Error ? err.message : String(err));
          return false;
        },
      )
      .finally(() => this.#pending.delete(key));
    this.#pending.set(key, p);
    return p;
  }

  /** The cache's answer for these credentials, if it holds one. */
  cached(users: ReadonlyMap<string, string>, user: string, password: string): boolean | undefined {
    return this.get(BcryptCache.key(user, users.get(user) ?? UNKNOWN_USER_HASH, password));
  }

  /** Whether the cache already holds the answer for these credentials. */
  has(users: ReadonlyMap<string, string>, user: string, password: string): boolean {
    return this.cached(users, user, password) !== undefined;
  }

  #refuse(reason: string): void {
    this.refused++;
    this.#refusedSinceWarn++;
    const now = performance.now();
    if (!this.#log || now - this.#lastWarn < REFUSED_WARN_MS) return;
    this.#log.warn("web config basic_auth_users: requests refused (401) without a bcrypt check", {
      reason,
      refused: this.#refusedSinceWarn,
      maxPending: this.#maxPending,
    });
    this.#lastWarn = now;
    this.#refusedSinceWarn = 0;
  }
}
