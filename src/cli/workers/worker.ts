/** A worker's side of `scrapez proxy --workers N` (./protocol.ts says how the pool works): its link to the primary. */
import cluster from "node:cluster";
import { filterGroups, type SdGroup, type SdSource } from "../../proxy/sd.js";
import type { ProxyServer, ReloadOutcome } from "../../proxy/server.js";
import { buildStatus, type StatusDocument, type StatusFilter } from "../../proxy/status/json.js";
import { dumpRecords, mergeRecords } from "../../proxy/status/merge.js";
import type { DialOverlay } from "../../overlay/types.js";
import { untilStopSignal, type StopSignal } from "../shutdown.js";
import {
  ignoreSendError,
  isMessage,
  WORKER_ASK_TIMEOUT_MS,
  WORKER_RESTART_ENV,
  WORKER_SLOT_ENV,
  type SdSnapshot,
  type ToPrimary,
  type ToWorker,
} from "./protocol.js";

/** How long a worker started again (WORKER_RESTART_ENV) waits for its identities to authenticate before it listens. */
const RESTARTED_WAIT_MS = 60_000;
/** How often a worker looks whether its service list changed (cheap: it compares the groups by reference). */
const SD_CHECK_MS = 500;

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
      process.send?.(m, undefined, undefined, ignoreSendError);
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
          (o) => this.#send({ scrapez: "reloaded", id: m.id, ...o }),
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
    const ms = WORKER_ASK_TIMEOUT_MS[m.what];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#asks.delete(id);
        reject(new Error(`the primary process did not answer within ${ms / 1000} s`));
      }, ms);
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
   * under its slot (the proxy counts each, see ProxyMetrics.countWorkerRequest), and the primary hears that it
   * listens (and, whenever it changes, its service list).
   */
  attach(proxy: ProxyServer, overlays: readonly DialOverlay[], addr: { host: string; port: number }): void {
    const local = proxy.sdSource;
    proxy.metrics.asWorker(this.slot, async () => String(await this.#ask({ what: "metrics" })));
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
