/**
 * The primary process of `scrapez proxy --workers N` (./protocol.ts says how the pool works): starts the workers
 * and starts them again, answers what they ask for together (/metrics, /status, a reload), forwards signals.
 */
import cluster, { type Worker } from "node:cluster";
import { unwatchFile, watchFile, type Stats } from "node:fs";
import type { ProxyConfig } from "../../proxy/config.js";
import { aggregateMetrics, gaugesOf, SlotCounters, WorkerPoolMetrics, type MetricsJson } from "../../proxy/metrics.js";
import type { ReloadOutcome } from "../../proxy/server.js";
import type { StatusFilter } from "../../proxy/status/json.js";
import type { Logger } from "../../common/log.js";
import { registerProcessMetrics } from "../build-info.js";
import { untilStopSignal } from "../shutdown.js";
import {
  ASK_TIMEOUT_MS,
  ignoreSendError,
  isMessage,
  RELOAD_TIMEOUT_MS,
  WORKER_RESTART_ENV,
  WORKER_SLOT_ENV,
  type RecordDump,
  type SdSnapshot,
  type ToPrimary,
  type ToWorker,
} from "./protocol.js";

/** Restart back-off: first delay, cap, and how long a worker must have run for the delay to start over. */
const RESTART_FIRST_MS = 500;
const RESTART_MAX_MS = 30_000;
const RESTART_RESET_AFTER_MS = 60_000;
/** How often the primary looks at the identity files' modification times (a renewal rewrites them). */
const IDENTITY_POLL_MS = 5_000;

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
  /** What the slot's workers counted, so /metrics's sums never go down across a restart or a late answer. */
  counters: SlotCounters;
  /** What waits for the running worker's answer (a collect, a reload): each is told when the worker exits. */
  waiting: Set<() => void>;
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
    counters: new SlotCounters(),
    waiting: new Set(),
  }));
  let stopping = false;
  let nextId = 1;
  const replies = new Map<number, (m: Extract<ToPrimary, { scrapez: "reply" }>) => void>();
  const reloads = new Map<number, (m: Extract<ToPrimary, { scrapez: "reloaded" }>) => void>();
  /** Waits for a worker's start: resolves on "ready", or with why it could not start. */
  const starting = new Map<Slot, (failure: { reason: string; code?: string; identity?: string } | undefined) => void>();
  let leaderSnap: SdSnapshot | undefined;
  /** Set once every worker listens: the reload of every worker (SIGHUP, or a worker asking). */
  const reloader: { all?: (why: string) => Promise<ReloadOutcome> } = {};
  let address = config.listen;

  /**
   * A worker that is exiting can still look connected: its channel then fails the write (EPIPE) later, which node
   * reports to the callback, or without one as an "error" event that nothing would catch. Its exit is handled.
   */
  const send = (s: Slot, m: ToWorker) => {
    try {
      if (s.worker?.isConnected()) s.worker.send(m, undefined, ignoreSendError);
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

  /**
   * Asks workers for their part: one answer per target, in order, or undefined for a worker left out: it did not
   * answer in time, could not, or exited meanwhile.
   */
  type Collect =
    | { scrapez: "collect"; what: "metrics" | "records" }
    | { scrapez: "collect"; what: "status"; filter: StatusFilter; records: RecordDump[][] };
  type Answer = { data: unknown; worker: Worker };
  const collectEach = (targets: Slot[], m: Collect): Promise<(Answer | undefined)[]> =>
    Promise.all(
      targets.map(
        (s) =>
          new Promise<Answer | undefined>((resolve) => {
            const worker = s.worker;
            if (!worker) return resolve(undefined);
            const id = nextId++;
            const finish = (a: Answer | undefined) => {
              clearTimeout(timer);
              replies.delete(id);
              s.waiting.delete(exited);
              resolve(a);
            };
            const exited = () => finish(undefined);
            const timer = setTimeout(() => {
              log.warn("a worker did not answer in time; leaving it out", { worker: s.n, what: m.what });
              finish(undefined);
            }, ASK_TIMEOUT_MS);
            s.waiting.add(exited);
            replies.set(id, (r) => {
              if (r.error !== undefined) log.warn("a worker could not answer", { worker: s.n, reason: r.error });
              finish(r.error === undefined ? { data: r.data, worker } : undefined);
            });
            send(s, { ...m, id } as ToWorker);
          }),
      ),
    );
  const collect = async (targets: Slot[], m: Collect): Promise<unknown[]> =>
    (await collectEach(targets, m)).flatMap((a) => (a ? [a.data] : []));

  /**
   * /metrics: the primary's own, each answering worker's gauges, and every slot's counters (SlotCounters: those of
   * its exited workers and, for a worker that did not answer, the last it sent), so that no sum goes down.
   */
  const poolMetrics = async (): Promise<string> => {
    const targets = live();
    const answers = await collectEach(targets, { scrapez: "collect", what: "metrics" });
    const parts: MetricsJson[] = [await metrics.registry.getMetricsAsJSON()];
    targets.forEach((s, i) => {
      const a = answers[i];
      if (!a) return;
      // An answer from a worker that has exited since is not its slot's running worker's any more.
      if (s.worker === a.worker) s.counters.update(a.data as MetricsJson);
      parts.push(gaugesOf(a.data as MetricsJson));
    });
    for (const s of slots) parts.push(s.counters.counters());
    return (await aggregateMetrics(parts)).text;
  };

  /**
   * /status: every worker's records, merged and rendered by the leader. Requests that come while one is being built
   * share it (the same filter: the document; any filter: the records), instead of each sending every worker's
   * samples to the leader to be merged again.
   */
  let recordsInFlight: Promise<RecordDump[][]> | undefined;
  const statusInFlight = new Map<string, Promise<unknown>>();
  const allRecords = (): Promise<RecordDump[][]> =>
    (recordsInFlight ??= (collect(live(), { scrapez: "collect", what: "records" }) as Promise<RecordDump[][]>).finally(
      () => (recordsInFlight = undefined),
    ));
  const statusDoc = (filter: StatusFilter): Promise<unknown> => {
    const key = JSON.stringify(filter);
    let doc = statusInFlight.get(key);
    if (!doc) {
      doc = (async () => {
        const records = await allRecords();
        const first = leader();
        if (!first) throw new Error("no worker is serving");
        const [built] = await collect([first], { scrapez: "collect", what: "status", filter, records });
        if (built === undefined) throw new Error(`worker ${first.n} did not build the status`);
        return built;
      })().finally(() => statusInFlight.delete(key));
      statusInFlight.set(key, doc);
    }
    return doc;
  };

  const answerAsk = async (s: Slot, m: Extract<ToPrimary, { scrapez: "ask" }>) => {
    try {
      let data: unknown;
      if (m.what === "reload") {
        if (!reloader.all) throw new Error("the proxy is still starting");
        data = await reloader.all(m.why);
      } else if (m.what === "metrics") {
        data = await poolMetrics();
      } else {
        data = await statusDoc(m.filter);
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
        reloads.get(m.id)?.(m);
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
    // Any failure of its channel is followed by its exit, which is handled below.
    w.on("error", (err: Error) => log.debug("a worker's channel failed", { worker: s.n, reason: err.message }));
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
      s.counters.retire();
      for (const tell of [...s.waiting]) tell();
      if (!stopping) shareSd(); // the others are stopping too: nothing is worth telling them
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
      // A worker that neither answers nor exits (stopped, stuck) is reported as failed after RELOAD_TIMEOUT_MS.
      const outcomes = await Promise.all(
        live().map(
          (s) =>
            new Promise<{ worker: number; ok: boolean; reason?: string | undefined }>((resolve) => {
              const id = nextId++;
              const finish = (ok: boolean, reason: string | undefined) => {
                clearTimeout(timer);
                reloads.delete(id);
                s.waiting.delete(exited);
                resolve({ worker: s.n, ok, reason });
              };
              const exited = () => finish(false, "the worker exited");
              const timer = setTimeout(() => {
                const seconds = RELOAD_TIMEOUT_MS / 1000;
                log.error("a worker did not answer the reload in time; going on without it", {
                  why,
                  worker: s.n,
                  seconds,
                });
                finish(
                  false,
                  `did not answer within ${seconds} s (it keeps the config it has, or reloads when it can)`,
                );
              }, RELOAD_TIMEOUT_MS);
              s.waiting.add(exited);
              reloads.set(id, (m) => finish(m.ok, m.reason));
              send(s, { scrapez: "reload", id });
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
