/**
 * `scrapez proxy --workers N`: N worker processes serve one listening port, each with its own overlay contexts.
 *
 * How the port is shared: node:cluster in round-robin mode. The primary process owns the listening socket, accepts
 * each connection and hands it to the next worker in turn; the worker speaks HTTP (and TLS) on it from then on.
 * Chosen over the kernel's shared accept (cluster's SCHED_NONE, or SO_REUSEPORT) because Linux wakes the worker
 * that last accepted first, which piles the few long-lived keep-alive connections Prometheus opens onto one or two
 * workers; round robin spreads them evenly, and the primary's cost is one accept() per connection, not per scrape.
 *
 * What is shared and what is not:
 * - Each worker is a whole `scrapez proxy` (src/cli/proxy.ts): it reads the config and the identity files itself,
 *   opens its own overlay contexts (its own API session, router channels, pooled connections, service catalog)
 *   and answers the scrapes on the connections it was given. Only the first worker renews certificates; when an
 *   identity file changes (a renewal wrote it back), the others are restarted one at a time so they load it.
 * - `/metrics` is every process's metrics aggregated (src/proxy/metrics.ts, aggregateMetrics): counters and
 *   histograms summed, gauges summed or as WORKER_AGGREGATORS says; scrapez_proxy_worker_requests_total{worker}
 *   tells the workers apart. `/sd` is the first ready worker's service list, sent to every worker whenever it
 *   changes, so whichever worker answers gives the same list. `/status` shows every worker's scrapes merged
 *   (mergeRecords), built by the first worker. `/-/healthy` and `/-/ready` are the answering worker's own.
 * - Signals go to the primary: SIGHUP is checked by the primary and then reloads every worker; SIGTERM drains
 *   every worker; a worker that exits is started again with back-off. A worker that cannot start when the proxy
 *   starts (an invalid identity file) stops the whole proxy with exit code 1 and the worker's reason.
 */
import cluster, { type Worker } from "node:cluster";
import { readFileSync, unwatchFile, watchFile, type Stats } from "node:fs";
import { availableParallelism } from "node:os";
import type { ProxyConfig } from "../proxy/config.js";
import { aggregateMetrics, WorkerPoolMetrics, type MetricsJson } from "../proxy/metrics.js";
import { filterGroups, type SdGroup, type SdSource } from "../proxy/sd.js";
import type { ProxyServer } from "../proxy/server.js";
import { buildStatus, type StatusDocument, type StatusFilter } from "../proxy/status/json.js";
import { ScrapeRecorder, type RecorderOptions, type ScrapeResult } from "../proxy/status/recorder.js";
import type { DialOverlay } from "../overlay/types.js";
import type { Logger } from "../common/log.js";
import { registerProcessMetrics } from "./build-info.js";
import { untilStopSignal, type StopSignal } from "./shutdown.js";

/** The environment variable that makes a `scrapez proxy` process a worker, and names its slot (1..N). */
export const WORKER_SLOT_ENV = "SCRAPEZ_WORKER_SLOT";
/** Set in a worker started again while others serve (a restart, a rolling restart): see beforeListen. */
const WORKER_RESTART_ENV = "SCRAPEZ_WORKER_RESTART";
/** How long such a worker waits for its identities to authenticate before it listens anyway. */
const RESTARTED_WAIT_MS = 60_000;
/** How long the primary waits for a worker's part of /metrics or /status. */
const ASK_TIMEOUT_MS = 10_000;
/** Restart back-off: first delay, cap, and how long a worker must have run for the delay to start over. */
const RESTART_FIRST_MS = 500;
const RESTART_MAX_MS = 30_000;
const RESTART_RESET_AFTER_MS = 60_000;
/** How often a worker looks whether its service list changed (cheap: it compares the groups by reference). */
const SD_CHECK_MS = 500;
/** How often the primary looks at the identity files' modification times (a renewal rewrites them). */
const IDENTITY_POLL_MS = 5_000;

/** The service list a worker offers on /sd, as the first worker sends it to the others. */
export interface SdSnapshot {
  loaded: boolean;
  notReadyReason: string | undefined;
  groups: SdGroup[];
}

/** One worker's scrape records, as the primary collects them for /status. */
export interface RecordDump {
  service: string;
  replica: string | undefined;
  last: ScrapeResult;
  samples: { at: number; ms: number; bytes: number; status: number }[];
}

type Sample = RecordDump["samples"][number];

/** Messages between the primary and its workers (the `scrapez` key keeps them apart from anyone else's). */
type ToPrimary =
  | { scrapez: "ready"; host: string; port: number }
  | { scrapez: "fatal"; reason: string; identity?: string | undefined; code?: string | undefined }
  | { scrapez: "sd"; snap: SdSnapshot }
  | { scrapez: "ask"; id: number; what: "metrics" }
  | { scrapez: "ask"; id: number; what: "reload"; why: string }
  | { scrapez: "ask"; id: number; what: "status"; filter: StatusFilter }
  | { scrapez: "reply"; id: number; data?: unknown; error?: string }
  | { scrapez: "reloaded"; ok: boolean; reason?: string };
type ToWorker =
  | { scrapez: "collect"; id: number; what: "metrics" }
  | { scrapez: "collect"; id: number; what: "records" }
  | { scrapez: "collect"; id: number; what: "status"; filter: StatusFilter; records: RecordDump[][] }
  | { scrapez: "sd"; snap: SdSnapshot }
  | { scrapez: "answer"; id: number; data?: unknown; error?: string }
  | { scrapez: "reload" }
  | { scrapez: "stop" }
  | { scrapez: "stop-now" };

function isMessage<T extends { scrapez: string }>(m: unknown): m is T {
  return typeof m === "object" && m !== null && typeof (m as { scrapez?: unknown }).scrapez === "string";
}

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

// --- the merge of the workers' scrape records (/status) -------------------------------------------------------

/**
 * One recorder holding every worker's records: per target, all samples in time order and the latest last scrape.
 * Targets are recorded least recently scraped first, so the recorder's bounds keep the same ones they would have.
 */
export function mergeRecords(dumps: readonly RecordDump[][], opts: Partial<RecorderOptions> = {}): ScrapeRecorder {
  const byKey = new Map<string, { last: ScrapeResult; samples: Sample[] }>();
  for (const dump of dumps) {
    for (const t of dump) {
      const k = `${t.replica ?? ""}\u0000${t.service}`;
      const seen = byKey.get(k);
      if (!seen) byKey.set(k, { last: t.last, samples: [...t.samples] });
      else {
        seen.samples.push(...t.samples);
        if (t.last.at > seen.last.at) seen.last = t.last;
      }
    }
  }
  const merged = new ScrapeRecorder(opts);
  for (const { last, samples } of [...byKey.values()].sort((a, b) => a.last.at - b.last.at)) {
    samples.sort((a, b) => a.at - b.at);
    // The last scrape is the newest sample; it is recorded last, with its texts.
    const i = samples.findLastIndex((s) => s.at === last.at && s.status === last.status);
    if (i >= 0) samples.splice(i, 1);
    for (const s of samples) merged.record({ ...last, at: s.at, durationMs: s.ms, bytes: s.bytes, status: s.status });
    merged.record(last);
  }
  return merged;
}

/** A worker's records within the window (what older samples would not show anyway is not sent). */
function dumpRecords(recorder: ScrapeRecorder, now = Date.now()): RecordDump[] {
  const from = now - recorder.opts.windowMs;
  return recorder.targets().flatMap(({ service, replica }) => {
    const last = recorder.last(service, replica);
    if (!last) return [];
    return [{ service, replica, last, samples: recorder.samples(service, replica).filter((s) => s.at > from) }];
  });
}

// --- the worker's side ---------------------------------------------------------------------------------------

/** What a worker reports after a reload. */
export type ReloadOutcome = { ok: true } | { ok: false; reason: string };

/** A worker's link to the primary (undefined in a process that is not a worker). */
export class WorkerLink {
  readonly slot: number;
  readonly #asks = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #nextId = 1;
  #onReload: (() => Promise<ReloadOutcome>) | undefined;
  #onCollect: ((m: Extract<ToWorker, { scrapez: "collect" }>) => Promise<unknown>) | undefined;
  #stop: (() => void) | undefined;
  #stopNow: (() => void) | undefined;
  #stopRequested = false;
  #stopNowRequested = false;

  private constructor(slot: number) {
    this.slot = slot;
    process.on("message", (m: unknown) => {
      if (isMessage<ToWorker>(m)) this.#onMessage(m);
    });
    // The primary forwards SIGHUP; one sent to the whole process group (a closed terminal) must not end a worker.
    process.on("SIGHUP", () => undefined);
  }

  static #current: WorkerLink | undefined;

  /** This process's link when it is a worker of `scrapez proxy --workers N` (one per process). */
  static current(): WorkerLink | undefined {
    const slot = Number(process.env[WORKER_SLOT_ENV]);
    if (!cluster.isWorker || !Number.isInteger(slot) || slot < 1) return undefined;
    return (WorkerLink.#current ??= new WorkerLink(slot));
  }

  #send(m: ToPrimary): void {
    try {
      process.send?.(m);
    } catch {
      /* the primary is gone; node:cluster ends this worker when its channel closes */
    }
  }

  #onMessage(m: ToWorker): void {
    switch (m.scrapez) {
      case "answer": {
        const a = this.#asks.get(m.id);
        this.#asks.delete(m.id);
        if (m.error !== undefined) a?.reject(new Error(m.error));
        else a?.resolve(m.data);
        return;
      }
      case "collect":
        void (this.#onCollect?.(m) ?? Promise.reject(new Error("this worker is not serving yet"))).then(
          (data) => this.#send({ scrapez: "reply", id: m.id, data }),
          (err: Error) => this.#send({ scrapez: "reply", id: m.id, error: err.message }),
        );
        return;
      case "reload":
        void (this.#onReload?.() ?? Promise.resolve<ReloadOutcome>({ ok: false, reason: "not serving yet" })).then(
          (o) => this.#send({ scrapez: "reloaded", ...o }),
        );
        return;
      case "stop":
        this.#stopRequested = true;
        this.#stop?.();
        return;
      case "stop-now":
        this.#stopNowRequested = true;
        this.#stopNow?.();
        return;
      case "sd":
        this.#onSd?.(m.snap);
        return;
    }
  }

  #onSd: ((snap: SdSnapshot) => void) | undefined;

  /** Asks the primary for what several workers make together (the aggregated metrics, the merged status). */
  #ask(
    m: { what: "metrics" } | { what: "reload"; why: string } | { what: "status"; filter: StatusFilter },
  ): Promise<unknown> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#asks.delete(id);
        reject(new Error(`the primary process did not answer within ${ASK_TIMEOUT_MS / 1000} s`));
      }, ASK_TIMEOUT_MS);
      timer.unref();
      this.#asks.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.#send({ scrapez: "ask", id, ...m });
    });
  }

  /**
   * This worker could not start: the primary reports `reason` (and stops when the proxy is starting). The worker
   * exits with code 1 once the message is sent (its channel to the primary would keep it alive).
   */
  fatal(reason: string, fields: { identity?: string | undefined; code?: string | undefined } = {}): void {
    const m: ToPrimary = { scrapez: "fatal", reason, ...fields };
    try {
      process.send!(m, undefined, undefined, () => setImmediate(() => process.exit(1)));
    } catch {
      process.exit(1);
    }
  }

  /** The command is over: the worker exits with `code` (its channel to the primary would keep it alive). */
  done(code: number): void {
    setImmediate(() => process.exit(code));
  }

  /**
   * A worker started again while the others serve waits (at most RESTARTED_WAIT_MS) for its identities to
   * authenticate before it listens: from then on it is handed connections, which it must not answer 503.
   */
  async beforeListen(overlays: readonly DialOverlay[]): Promise<void> {
    if (process.env[WORKER_RESTART_ENV] !== "1") return;
    const until = Date.now() + RESTARTED_WAIT_MS;
    while (overlays.some((o) => o.ready === false) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Asks the primary to reload every worker, as SIGHUP does (for a reload asked over HTTP, which reaches one
   * worker); `why` is logged. Resolves to the outcome once every worker answered.
   */
  async reloadAll(why: string): Promise<ReloadOutcome> {
    return (await this.#ask({ what: "reload", why })) as ReloadOutcome;
  }

  /** Reloads arrive from the primary (which got SIGHUP), not as signals. */
  onReload(fn: () => Promise<ReloadOutcome>): void {
    this.#onReload = fn;
  }

  /**
   * Resolves when the primary says stop (SIGTERM/SIGINT reached it) or, as for one process, on SIGTERM/SIGINT sent
   * to this worker itself (the primary then starts it again, unless it is stopping too).
   */
  untilStop(): Promise<StopSignal> {
    const signal = untilStopSignal();
    return new Promise((resolve) => {
      const again = (first: Promise<NodeJS.Signals>) =>
        Promise.race([
          first,
          new Promise<NodeJS.Signals>((r) => {
            if (this.#stopNowRequested) r("SIGTERM");
            this.#stopNow = () => r("SIGTERM");
          }),
        ]);
      void signal.then((s) => resolve({ signal: s.signal, again: again(s.again) }));
      const byPrimary = () =>
        resolve({ signal: "SIGTERM", again: again(signal.then((s) => s.again).then(() => "SIGTERM" as const)) });
      if (this.#stopRequested) byPrimary();
      this.#stop = byPrimary;
    });
  }

  /**
   * Wires a started proxy into the pool: its /metrics, /sd and /status become the pool's, its requests are counted
   * under its slot, and the primary hears that it listens (and, whenever it changes, its service list).
   */
  attach(proxy: ProxyServer, overlays: readonly DialOverlay[], addr: { host: string; port: number }): void {
    const local = proxy.sdSource;
    proxy.metrics.asWorker(this.slot, async () => String(await this.#ask({ what: "metrics" })));
    proxy.server.on("request", () => proxy.metrics.countWorkerRequest());
    proxy.server.on("connect", () => proxy.metrics.countWorkerRequest());
    proxy.status.document = async (filter) => (await this.#ask({ what: "status", filter })) as StatusDocument;
    this.#onSd = (snap) => {
      const source: SdSource = {
        loaded: snap.loaded,
        notReadyReason: snap.notReadyReason,
        groups: (f) => filterGroups(snap.groups, f),
      };
      proxy.sdSource = source;
    };
    const opts = proxy.status.recorder.opts;
    this.#onCollect = async (m) => {
      if (m.what === "metrics") return await proxy.metrics.registry.getMetricsAsJSON();
      if (m.what === "records") return dumpRecords(proxy.status.recorder);
      return buildStatus(proxy.catalog, overlays, mergeRecords(m.records, opts), m.filter);
    };
    // The service list as /sd offers it, sent when it changes (the catalog replaces its groups on every change).
    // The catalog makes new group objects on every refresh: a changed object is compared by content (JSON) before
    // the list goes to the primary, so an unchanged list of thousands of targets is not sent every refresh.
    let seen: { loaded: boolean; reason: string | undefined; groups: readonly SdGroup[] } | undefined;
    let sentJson = "";
    const check = () => {
      const groups = local.groups({});
      const same =
        seen !== undefined &&
        seen.loaded === local.loaded &&
        seen.reason === local.notReadyReason &&
        seen.groups.length === groups.length &&
        groups.every((g, i) => g === seen!.groups[i]);
      if (same) return;
      seen = { loaded: local.loaded, reason: local.notReadyReason, groups };
      const snap: SdSnapshot = { loaded: local.loaded, notReadyReason: local.notReadyReason, groups };
      const json = JSON.stringify(snap);
      if (json === sentJson) return;
      sentJson = json;
      this.#send({ scrapez: "sd", snap });
    };
    check();
    setInterval(check, SD_CHECK_MS).unref();
    this.#send({ scrapez: "ready", host: addr.host, port: addr.port });
  }
}

// --- the primary ---------------------------------------------------------------------------------------------

interface Slot {
  n: number;
  worker: Worker | undefined;
  ready: boolean;
  startedAt: number;
  delayMs: number;
  timer: NodeJS.Timeout | undefined;
  sd: SdSnapshot | undefined;
  /** Set when the primary stops this worker on purpose (a rolling restart): its exit is not a failure. */
  replacing: boolean;
}

export interface PrimaryOptions {
  /** Reads the config again (SIGHUP); throws when it is invalid. */
  load: () => ProxyConfig;
  config: ProxyConfig;
  workers: number;
  log: Logger;
  /** Logged once all workers listen (the single process logs the same fields). */
  describe: (config: ProxyConfig) => Record<string, unknown>;
}

/** Runs the primary process of `scrapez proxy --workers N` until it is stopped; resolves to the exit code. */
export async function runPrimary(o: PrimaryOptions): Promise<number> {
  const { log } = o;
  let config = o.config;
  const metrics = new WorkerPoolMetrics();
  registerProcessMetrics(metrics.registry, "proxy");
  cluster.schedulingPolicy = cluster.SCHED_RR;
  const slots: Slot[] = Array.from({ length: o.workers }, (_, i) => ({
    n: i + 1,
    worker: undefined,
    ready: false,
    startedAt: 0,
    delayMs: RESTART_FIRST_MS,
    timer: undefined,
    sd: undefined,
    replacing: false,
  }));
  let stopping = false;
  let nextId = 1;
  const replies = new Map<number, (m: Extract<ToPrimary, { scrapez: "reply" }>) => void>();
  const reloads = new Map<Slot, (m: Extract<ToPrimary, { scrapez: "reloaded" }>) => void>();
  /** Waits for a worker's start: resolves on "ready", or with why it could not start. */
  const starting = new Map<Slot, (failure: { reason: string; code?: string; identity?: string } | undefined) => void>();
  let leaderSnap: SdSnapshot | undefined;
  /** Set once every worker listens: the reload of every worker (SIGHUP, or a worker asking). */
  const reloader: { all?: (why: string) => Promise<ReloadOutcome> } = {};
  let address = config.listen;

  const send = (s: Slot, m: ToWorker) => {
    try {
      if (s.worker?.isConnected()) s.worker.send(m);
    } catch {
      /* it is exiting; its exit is handled */
    }
  };
  const live = () => slots.filter((s) => s.ready && s.worker);
  const updateGauge = () => metrics.workers.set(live().length);

  /** The first ready worker with a loaded service list (else the first ready one) answers /sd and builds /status. */
  const leader = (): Slot | undefined => live().find((s) => s.sd?.loaded) ?? live()[0];
  const shareSd = (to?: Slot) => {
    const snap = leader()?.sd;
    if (!snap) return;
    if (to) return send(to, { scrapez: "sd", snap });
    if (snap === leaderSnap) return;
    leaderSnap = snap;
    for (const s of live()) send(s, { scrapez: "sd", snap });
  };

  /** Asks workers for their part; a worker that does not answer in time is left out. */
  type Collect =
    | { scrapez: "collect"; what: "metrics" | "records" }
    | { scrapez: "collect"; what: "status"; filter: StatusFilter; records: RecordDump[][] };
  const collect = (targets: Slot[], m: Collect): Promise<unknown[]> =>
    Promise.all(
      targets.map(
        (s) =>
          new Promise<unknown>((resolve) => {
            const id = nextId++;
            const timer = setTimeout(() => {
              replies.delete(id);
              log.warn("a worker did not answer in time; leaving it out", { worker: s.n, what: m.what });
              resolve(undefined);
            }, ASK_TIMEOUT_MS);
            replies.set(id, (r) => {
              clearTimeout(timer);
              if (r.error !== undefined) log.warn("a worker could not answer", { worker: s.n, reason: r.error });
              resolve(r.error === undefined ? r.data : undefined);
            });
            send(s, { ...m, id } as ToWorker);
          }),
      ),
    ).then((all) => all.filter((v) => v !== undefined));

  const answerAsk = async (s: Slot, m: Extract<ToPrimary, { scrapez: "ask" }>) => {
    try {
      let data: unknown;
      if (m.what === "reload") {
        if (!reloader.all) throw new Error("the proxy is still starting");
        data = await reloader.all(m.why);
      } else if (m.what === "metrics") {
        const parts = (await collect(live(), { scrapez: "collect", what: "metrics" })) as MetricsJson[];
        parts.push(await metrics.registry.getMetricsAsJSON());
        data = (await aggregateMetrics(parts)).text;
      } else {
        const records = (await collect(live(), { scrapez: "collect", what: "records" })) as RecordDump[][];
        const first = leader();
        if (!first) throw new Error("no worker is serving");
        const [doc] = await collect([first], { scrapez: "collect", what: "status", filter: m.filter, records });
        if (doc === undefined) throw new Error(`worker ${first.n} did not build the status`);
        data = doc;
      }
      send(s, { scrapez: "answer", id: m.id, data });
    } catch (err) {
      send(s, { scrapez: "answer", id: m.id, error: (err as Error).message });
    }
  };

  const onMessage = (s: Slot, m: ToPrimary) => {
    switch (m.scrapez) {
      case "ready":
        address = `${m.host.includes(":") ? `[${m.host}]` : m.host}:${m.port}`;
        s.ready = true;
        updateGauge();
        starting.get(s)?.(undefined);
        shareSd(s);
        return;
      case "fatal":
        log.error("a worker cannot start", { worker: s.n, reason: m.reason, identity: m.identity, code: m.code });
        starting.get(s)?.({
          reason: m.reason,
          ...(m.code ? { code: m.code } : {}),
          ...(m.identity ? { identity: m.identity } : {}),
        });
        return;
      case "sd":
        s.sd = m.snap;
        shareSd();
        return;
      case "ask":
        void answerAsk(s, m);
        return;
      case "reply":
        replies.get(m.id)?.(m);
        replies.delete(m.id);
        return;
      case "reloaded":
        reloads.get(s)?.(m);
        return;
    }
  };

  const fork = (s: Slot, again = false): Promise<{ reason: string; code?: string; identity?: string } | undefined> => {
    s.timer = undefined;
    s.ready = false;
    s.sd = undefined;
    s.startedAt = Date.now();
    const w = cluster.fork({ [WORKER_SLOT_ENV]: String(s.n), [WORKER_RESTART_ENV]: again ? "1" : "" });
    s.worker = w;
    const started = new Promise<{ reason: string; code?: string; identity?: string } | undefined>((resolve) => {
      let failure: { reason: string; code?: string; identity?: string } | undefined;
      starting.set(s, (f) => {
        if (f) {
          failure ??= f; // the worker exits next; its exit ends the wait
          return;
        }
        starting.delete(s);
        resolve(undefined);
      });
      w.once("exit", (code, signal) => {
        if (!starting.has(s)) return;
        starting.delete(s);
        resolve(failure ?? { reason: `the worker exited before it listened (${signal ?? `exit code ${code}`})` });
      });
    });
    let listened = false;
    w.on("message", (m: unknown) => {
      if (!isMessage<ToPrimary>(m)) return;
      if (m.scrapez === "ready") listened = true;
      onMessage(s, m);
    });
    w.once("exit", (code, signal) => {
      if (s.worker !== w) return;
      s.worker = undefined;
      s.ready = false;
      s.sd = undefined;
      updateGauge();
      shareSd();
      reloads.get(s)?.({ scrapez: "reloaded", ok: false, reason: "the worker exited" });
      // A worker that never listened when the proxy starts is a failed start (the proxy stops), not a crash.
      if (stopping || s.replacing || (!again && !listened)) return;
      const ranMs = Date.now() - s.startedAt;
      if (ranMs >= RESTART_RESET_AFTER_MS) s.delayMs = RESTART_FIRST_MS;
      const inMs = s.delayMs;
      s.delayMs = Math.min(RESTART_MAX_MS, s.delayMs * 2);
      log.error("a worker exited; starting it again", {
        worker: s.n,
        pid: w.process.pid,
        code,
        signal,
        ranSeconds: Math.round(ranMs / 1000),
        restartInMs: inMs,
      });
      s.timer = setTimeout(() => {
        if (stopping) return;
        metrics.restarts.inc({ worker: String(s.n) });
        void fork(s, true);
      }, inMs);
    });
    return started;
  };

  const stopWorker = (s: Slot): Promise<void> =>
    new Promise((resolve) => {
      const w = s.worker;
      if (!w) return resolve();
      w.once("exit", () => resolve());
      send(s, { scrapez: "stop" });
    });

  // Start every worker; if one cannot, the proxy does not start.
  const failures = await Promise.all(slots.map((s) => fork(s)));
  const failed = failures.findIndex((f) => f !== undefined);
  if (failed >= 0) {
    stopping = true;
    const f = failures[failed]!;
    log.error("cannot start: a worker could not start", { worker: failed + 1, ...f });
    for (const s of slots) send(s, { scrapez: "stop-now" });
    await Promise.all(slots.map(stopWorker));
    return 1;
  }
  log.info("listening", { address, ...o.describe(config), workers: o.workers });

  // SIGHUP: checked here first (a config that every worker would refuse is refused once), then every worker reloads.
  let reloading: Promise<unknown> = Promise.resolve();
  reloader.all = (why) => {
    const done = reloading.then(async (): Promise<ReloadOutcome> => {
      let next: ProxyConfig;
      try {
        next = o.load();
      } catch (err) {
        const reason = (err as Error).message;
        log.error("new config rejected; keeping the running one", { why, reason });
        return { ok: false, reason };
      }
      if (next.workers !== config.workers) {
        const reason = "workers changed: restart scrapez proxy to apply that (nothing was changed)";
        log.error("new config rejected; keeping the running one", { why, reason });
        return { ok: false, reason };
      }
      const outcomes = await Promise.all(
        live().map(
          (s) =>
            new Promise<{ worker: number; ok: boolean; reason?: string | undefined }>((resolve) => {
              reloads.set(s, (m) => {
                reloads.delete(s);
                resolve({ worker: s.n, ok: m.ok, reason: m.reason });
              });
              send(s, { scrapez: "reload" });
            }),
        ),
      );
      const refused = outcomes.filter((r) => !r.ok);
      if (refused.length) {
        log.error("a worker refused the new config", { why, refused });
        return { ok: false, reason: refused.map((r) => `worker ${r.worker}: ${r.reason ?? "refused"}`).join("; ") };
      }
      config = next;
      log.setLevel(next.logLevel);
      log.info("config reloaded by every worker", { why, workers: outcomes.length });
      return { ok: true };
    });
    reloading = done;
    return done;
  };
  const reload = () => void reloader.all?.("SIGHUP");
  process.on("SIGHUP", reload);

  // A renewed certificate is written back to the identity file by the first worker (the only one that renews):
  // the others are started again one at a time, so each loads it while the rest keep serving.
  let rolling = Promise.resolve();
  const onIdentityChanged = (cur: Stats, prev: Stats) => {
    if (cur.mtimeMs === prev.mtimeMs || stopping) return;
    rolling = rolling.then(async () => {
      log.info("an identity file changed: restarting the other workers one at a time so they load it", {
        workers: slots.slice(1).map((s) => s.n),
      });
      for (const s of slots.slice(1)) {
        if (stopping) return;
        s.replacing = true;
        await stopWorker(s);
        s.replacing = false;
        if (stopping) return;
        if (s.timer) clearTimeout(s.timer);
        const f = await fork(s, true);
        if (f) log.error("a worker did not start again after the identity file changed", { worker: s.n, ...f });
      }
    });
  };
  for (const file of config.identities)
    watchFile(file, { interval: IDENTITY_POLL_MS, persistent: false }, onIdentityChanged);

  const stop = await untilStopSignal();
  stopping = true;
  process.off("SIGHUP", reload);
  for (const file of config.identities) unwatchFile(file, onIdentityChanged);
  for (const s of slots) if (s.timer) clearTimeout(s.timer);
  log.info("shutting down: every worker drains its requests in flight", {
    signal: stop.signal,
    workers: live().length,
    drainSeconds: config.drainSeconds,
  });
  const exited = Promise.all(slots.map(stopWorker));
  void stop.again.then(() => {
    for (const s of slots) send(s, { scrapez: "stop-now" });
  });
  // A worker that does not end after its drain deadline (and then some) is ended.
  const guard = setTimeout(
    () => {
      for (const s of slots) s.worker?.process.kill("SIGKILL");
    },
    config.drainSeconds * 1000 + 15_000,
  );
  guard.unref();
  await exited;
  clearTimeout(guard);
  log.info("every worker stopped");
  return 0;
}
