/**
 * The status document: every target the service catalog offers (and any other known target that was scraped),
 * its state and recent scrapes, plus the proxy's identities, their controller and routers. `/status.json` serves
 * it as is; `/status` renders it (./page.ts); `scrapez status` prints it. Field names are stable: docs/status.md.
 */
import type { ServiceCatalog } from "../catalog.js";
import { targetHost } from "../../common/naming.js";
import type { DialOverlay } from "../../overlay/types.js";
import { STATES, isOk, type ScrapeRecorder, type TargetState } from "./recorder.js";

export const STATUS_VERSION = 1;
/** Rows in one answer at most (failing rows sort first, so they are always in it); `summary` counts them all. */
export const MAX_ROWS = 5_000;

export interface RouterRow {
  routerId: string;
  url: string;
  state: string;
  latencyMs: number | null;
}

export interface IdentityRow {
  name: string;
  controller: string | null;
  routers: RouterRow[];
}

export interface TargetRow {
  service: string;
  replica: string | null;
  /** The host to scrape it by through the proxy (`<replica>~<service>` for a replica). */
  host: string;
  attributes: string[];
  /** The proxy's identity that dials it. */
  identity: string;
  /** Offered on /sd (false: reachable but left out by `discovery` filters, listed because it was scraped). */
  discovered: boolean;
  state: TargetState;
  lastScrape: string | null;
  lastStatus: number | null;
  lastError: string | null;
  lastDurationMs: number | null;
  lastBytes: number | null;
  scrapedBy: { principal: string; address: string | null; userAgent: string | null } | null;
  window: {
    scrapes: number;
    failures: number;
    p50Ms: number | null;
    p99Ms: number | null;
    bytes: number;
    avgBytes: number | null;
  };
  spark: { ms: (number | null)[]; failed: boolean[] };
}

export interface StatusDocument {
  version: number;
  generatedAt: string;
  proxy: {
    identities: IdentityRow[];
    serviceList: {
      loaded: boolean;
      ready: boolean;
      refreshedAt: string | null;
      ageSeconds: number | null;
      error: string | null;
    };
  };
  window: { seconds: number; sparkBucketSeconds: number };
  filter: { q: string; state: TargetState[] };
  summary: { targets: number; ok: number; failing: number; never: number; matched: number; shown: number };
  targets: TargetRow[];
}

export interface StatusFilter {
  /** Case-insensitive substring of the service, replica or host. */
  q?: string;
  /** Keep only these states (all when empty). */
  state?: TargetState[];
  limit?: number;
}

/** Parses `?q=&state=failing&state=ok` (or `state=failing,ok`); unknown states are ignored. */
export function parseFilter(search: URLSearchParams): StatusFilter {
  const state = search
    .getAll("state")
    .flatMap((s) => s.split(","))
    .map((s) => s.trim().toLowerCase())
    .filter((s): s is TargetState => (STATES as readonly string[]).includes(s));
  const limit = Number(search.get("limit"));
  return {
    q: (search.get("q") ?? "").slice(0, 200),
    state: [...new Set(state)],
    ...(Number.isInteger(limit) && limit > 0 ? { limit: Math.min(limit, MAX_ROWS) } : {}),
  };
}

const round1 = (n: number | null | undefined): number | null =>
  n === null || n === undefined || !Number.isFinite(n) ? null : Math.round(n * 10) / 10;

const ORDER: Record<TargetState, number> = { failing: 0, ok: 1, never: 2 };

/** Failing first, then ok, then never scraped; by service, then replica, within each. */
export function compareRows(a: TargetRow, b: TargetRow): number {
  return (
    ORDER[a.state] - ORDER[b.state] ||
    (a.service < b.service ? -1 : a.service > b.service ? 1 : 0) ||
    ((a.replica ?? "") < (b.replica ?? "") ? -1 : (a.replica ?? "") > (b.replica ?? "") ? 1 : 0)
  );
}

export function matches(row: TargetRow, f: StatusFilter): boolean {
  if (f.state?.length && !f.state.includes(row.state)) return false;
  const q = (f.q ?? "").trim().toLowerCase();
  if (!q) return true;
  return [row.service, row.replica ?? "", row.host].some((s) => s.toLowerCase().includes(q));
}

export function buildStatus(
  catalog: ServiceCatalog,
  overlays: readonly DialOverlay[],
  recorder: ScrapeRecorder,
  filter: StatusFilter = {},
  now = Date.now(),
): StatusDocument {
  const seen = new Set<string>();
  const rows: TargetRow[] = [];
  const add = (service: string, replica: string | undefined, discovered: boolean) => {
    const k = `${replica ?? ""}\u0000${service}`;
    if (seen.has(k)) return;
    const known = catalog.describe(replica === undefined ? { service } : { service, identity: replica });
    if (!known) return;
    seen.add(k);
    const last = recorder.last(service, replica);
    const w = recorder.stats(service, replica, now);
    rows.push({
      service,
      replica: replica ?? null,
      host: targetHost(replica === undefined ? { service } : { service, identity: replica }),
      attributes: [...known.attributes].sort(),
      identity: known.dialer,
      discovered,
      state: last === undefined ? "never" : isOk(last.status) ? "ok" : "failing",
      lastScrape: last ? new Date(last.at).toISOString() : null,
      lastStatus: last?.status ?? null,
      lastError: last?.error ?? null,
      lastDurationMs: round1(last?.durationMs),
      lastBytes: last?.bytes ?? null,
      scrapedBy: last
        ? { principal: last.principal, address: last.address ?? null, userAgent: last.userAgent ?? null }
        : null,
      window: {
        scrapes: w.scrapes,
        failures: w.failures,
        p50Ms: round1(w.p50Ms),
        p99Ms: round1(w.p99Ms),
        bytes: w.bytes,
        avgBytes: w.avgBytes,
      },
      spark: { ms: w.spark.ms.map(round1), failed: w.spark.failed },
    });
  };
  for (const g of catalog.groups()) add(g.labels.__meta_ziti_service!, g.labels.__meta_ziti_replica, true);
  for (const t of recorder.targets()) add(t.service, t.replica, false);
  rows.sort(compareRows);
  const summary = { targets: rows.length, ok: 0, failing: 0, never: 0, matched: 0, shown: 0 };
  for (const r of rows) summary[r.state]++;
  const matched = rows.filter((r) => matches(r, filter));
  const shown = matched.slice(0, Math.min(filter.limit ?? MAX_ROWS, MAX_ROWS));
  summary.matched = matched.length;
  summary.shown = shown.length;
  const at = catalog.refreshedAt;
  return {
    version: STATUS_VERSION,
    generatedAt: new Date(now).toISOString(),
    proxy: {
      identities: overlays.map((o) => ({
        name: o.identityName,
        controller: o.controllerUrl ?? null,
        routers: (o.routerStatus?.() ?? []).map((r) => ({
          routerId: r.routerId,
          url: r.url,
          state: r.state,
          latencyMs: round1(r.latencyMs),
        })),
      })),
      serviceList: {
        loaded: catalog.loaded,
        ready: catalog.ready,
        refreshedAt: at === undefined ? null : new Date(at).toISOString(),
        ageSeconds: at === undefined ? null : Math.max(0, Math.round((now - at) / 1000)),
        error: catalog.notReadyReason ?? null,
      },
    },
    window: {
      seconds: Math.round(recorder.opts.windowMs / 1000),
      sparkBucketSeconds: Math.round(recorder.opts.windowMs / recorder.opts.sparkBuckets / 1000),
    },
    filter: { q: filter.q ?? "", state: filter.state ?? [] },
    summary,
    targets: shown,
  };
}
