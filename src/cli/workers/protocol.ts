/**
 * `scrapez proxy --workers N`: N worker processes serve one listening port, each with its own overlay contexts.
 * This file is what the primary and its workers say to each other; the rest of src/cli/workers/ is the default
 * number of workers (default-workers.ts), a worker's side (worker.ts) and the primary's (primary.ts).
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
 *   tells the workers apart. The primary keeps each slot's counters (SlotCounters), so no sum goes down when a
 *   worker restarts or answers late. `/sd` is the first ready worker's service list, sent to every worker whenever it
 *   changes, so whichever worker answers gives the same list. `/status` shows every worker's scrapes merged
 *   (mergeRecords, src/proxy/status/merge.ts), built by the first worker. `/-/healthy` and `/-/ready` are the
 *   answering worker's own.
 * - Signals go to the primary: SIGHUP is checked by the primary and then reloads every worker; SIGTERM drains
 *   every worker; a worker that exits is started again with back-off. A worker that cannot start when the proxy
 *   starts (an invalid identity file) stops the whole proxy with exit code 1 and the worker's reason.
 */
import type { SdGroup } from "../../proxy/sd.js";
import type { StatusFilter } from "../../proxy/status/json.js";
import type { RecordDump } from "../../proxy/status/merge.js";

export type { RecordDump } from "../../proxy/status/merge.js";

/** The environment variable that makes a `scrapez proxy` process a worker, and names its slot (1..N). */
export const WORKER_SLOT_ENV = "SCRAPEZ_WORKER_SLOT";
/** Set in a worker started again while others serve (a restart, a rolling restart): see WorkerLink.beforeListen. */
export const WORKER_RESTART_ENV = "SCRAPEZ_WORKER_RESTART";
/** How long the primary waits for a worker's part of /metrics or /status. */
export const ASK_TIMEOUT_MS = 10_000;
/**
 * How long the primary waits for a worker to say whether it took a reloaded config (a reload is quick: the file is
 * read and applied); a worker that does not say (stopped, stuck) is reported as failed and the reload goes on.
 */
export const RELOAD_TIMEOUT_MS = 10_000;
/**
 * How long a worker waits for the primary's answer to what it asked: longer than the primary waits for the workers
 * (a worker that does not answer is left out, so the others' answer still comes): /metrics is one collect, /status
 * two in a row, a reload (POST /-/reload) may wait for one already under way.
 */
export const WORKER_ASK_TIMEOUT_MS = {
  metrics: ASK_TIMEOUT_MS + 5_000,
  status: 2 * ASK_TIMEOUT_MS + 5_000,
  reload: 2 * RELOAD_TIMEOUT_MS + 5_000,
} as const;

/** The service list a worker offers on /sd, as the first worker sends it to the others. */
export interface SdSnapshot {
  loaded: boolean;
  notReadyReason: string | undefined;
  groups: SdGroup[];
}

/** Messages between the primary and its workers (the `scrapez` key keeps them apart from anyone else's). */
export type ToPrimary =
  | { scrapez: "ready"; host: string; port: number }
  | { scrapez: "fatal"; reason: string; identity?: string | undefined; code?: string | undefined }
  | { scrapez: "sd"; snap: SdSnapshot }
  | { scrapez: "ask"; id: number; what: "metrics" }
  | { scrapez: "ask"; id: number; what: "reload"; why: string }
  | { scrapez: "ask"; id: number; what: "status"; filter: StatusFilter }
  | { scrapez: "reply"; id: number; data?: unknown; error?: string }
  | { scrapez: "reloaded"; id: number; ok: boolean; reason?: string };
export type ToWorker =
  | { scrapez: "collect"; id: number; what: "metrics" }
  | { scrapez: "collect"; id: number; what: "records" }
  | { scrapez: "collect"; id: number; what: "status"; filter: StatusFilter; records: RecordDump[][] }
  | { scrapez: "sd"; snap: SdSnapshot }
  | { scrapez: "answer"; id: number; data?: unknown; error?: string }
  | { scrapez: "reload"; id: number }
  | { scrapez: "stop" }
  | { scrapez: "stop-now" };

export function isMessage<T extends { scrapez: string }>(m: unknown): m is T {
  return typeof m === "object" && m !== null && typeof (m as { scrapez?: unknown }).scrapez === "string";
}

/** The callback form of `send`: an exiting peer's failed write is expected and is not an error of the proxy. */
export function ignoreSendError(_err: Error | null): void {
  /* the peer's exit is handled where it is watched */
}
