/**
 * The catalog of dialable services across the proxy's identities: what requests may reach and what /sd offers.
 * Built from `services()` (and `replicas()` where the overlay has it), rebuilt at once on "servicesChanged" and
 * every `discovery.refreshSeconds`. A failed refresh keeps the last good list (as Prometheus itself does with
 * http_sd) and makes the proxy not ready until a refresh succeeds again.
 *
 * Identities that have not authenticated yet (the proxy starts without the controller; each identity keeps trying
 * on its own) are left out and the list is rebuilt when one authenticates: the proxy is ready once at least one
 * identity is and the list is loaded. Until then every answer that needs the list says why (`notReadyReason`).
 */
import { mapBounded } from "../common/bounded.js";
import type { Logger } from "../common/log.js";
import type { ProxyConfig } from "./config.js";
import type { ProxyMetrics } from "./metrics.js";
import { globMatch, nameToHost, selectorMatch, targetHost } from "../common/naming.js";
import type { DialOverlay, OverlayService, TargetName } from "../overlay/types.js";

/** One http_sd target group. */
export interface SdGroup {
  targets: string[];
  labels: Record<string, string>;
}

interface Entry {
  ctx: DialOverlay;
  service: OverlayService;
  replicas: string[];
}

interface Snapshot {
  at: number;
  /** Every service some identity may Dial (discovery filters do not limit what is reachable). */
  byName: Map<string, Entry>;
  /** Lower-cased name -> names, for clients that lower-case host names. */
  byLower: Map<string, string[]>;
  /** What /sd offers (discovery filters applied), sorted. */
  groups: SdGroup[];
}

/** A resolved request target. */
export interface Resolved {
  ctx: DialOverlay;
  service: string;
  identity?: string;
}

/** After a miss, look the list up again at most this often (an unknown host must not hammer the controller). */
const MISS_RELIST_MS = 5_000;
/** Replica lists (one controller request each) asked for at once during a refresh. */
const REPLICA_LISTS_AT_ONCE = 8;

/** An overlay without a `ready` property is always ready (stand-ins, older SDKs). */
function isReady(o: DialOverlay): boolean {
  return o.ready !== false;
}

export function attributesLabel(attrs: readonly string[]): string {
  return attrs.length ? `,${[...attrs].sort().join(",")},` : "";
}

export class ServiceCatalog {
  readonly #overlays: DialOverlay[];
  #discovery: ProxyConfig["discovery"];
  readonly #log: Logger;
  readonly #metrics: ProxyMetrics;
  #snap: Snapshot | undefined;
  #building: Promise<void> | undefined;
  #again = false;
  #lastError: string | undefined;
  #lastAttempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #firstLoad: Promise<void> | undefined;
  readonly #onChanged = () => void this.refresh().catch(() => undefined);
  readonly #onAuthenticated = () => void this.refresh().catch(() => undefined);
  #closed = false;

  constructor(overlays: DialOverlay[], discovery: ProxyConfig["discovery"], log: Logger, metrics: ProxyMetrics) {
    this.#overlays = overlays;
    this.#discovery = discovery;
    this.#log = log;
    this.#metrics = metrics;
  }

  /** Subscribes to changes, starts the periodic refresh and loads the list once (rejects if that load fails). */
  start(): Promise<void> {
    if (!this.#firstLoad) {
      for (const o of this.#overlays) {
        o.on("servicesChanged", this.#onChanged);
        o.on("authenticated", this.#onAuthenticated);
      }
      this.#timer = setInterval(
        () => void this.refresh().catch(() => undefined),
        this.#discovery.refreshSeconds * 1000,
      );
      this.#timer.unref();
      this.#firstLoad = this.refresh();
      this.#firstLoad.catch(() => undefined);
    }
    return this.#firstLoad;
  }

  /** A reloaded config's discovery settings: filters apply from the refresh this starts, the period from now. */
  setDiscovery(d: ProxyConfig["discovery"]): void {
    if (this.#closed) return;
    const periodChanged = d.refreshSeconds !== this.#discovery.refreshSeconds;
    this.#discovery = d;
    if (this.#timer && periodChanged) {
      clearInterval(this.#timer);
      this.#timer = setInterval(() => void this.refresh().catch(() => undefined), d.refreshSeconds * 1000);
      this.#timer.unref();
    }
    if (this.#firstLoad) void this.refresh().catch(() => undefined);
  }

  /**
   * Loaded at least once. A later failed refresh keeps the last list and keeps the proxy ready: overlay
   * connections already open keep working while the controller is away, and taking the proxy out of service
   * (a Kubernetes readiness probe) would turn a controller outage into failed scrapes. `staleReason` says why.
   */
  get ready(): boolean {
    return this.#snap !== undefined;
  }

  /** Why the catalog is not ready (never loaded), or undefined. */
  get notReadyReason(): string | undefined {
    if (this.#snap !== undefined) return undefined;
    // Read live from the identities: their reasons change with every attempt, between two catalog builds.
    if (!this.#overlays.some(isReady)) return `no identity is authenticated to the controller yet: ${this.#waiting()}`;
    return this.#lastError ?? "the service list is not loaded yet";
  }

  /** Why the list being served is stale (the last refresh failed), or undefined. */
  get staleReason(): string | undefined {
    return this.#snap === undefined ? undefined : this.#lastError;
  }

  /** Why some identity's services are not in the list yet (undefined when every identity is authenticated). */
  get pendingReason(): string | undefined {
    return this.#overlays.every(isReady) ? undefined : `not authenticated yet: ${this.#waiting()}`;
  }

  /** Each identity's state, for /-/ready: `"name" ready` or `"name" not ready (reason)`. */
  identityStates(): string {
    return this.#overlays
      .map((o) =>
        isReady(o) ? `"${o.identityName}" ready` : `"${o.identityName}" not ready (${o.notReadyReason ?? "?"})`,
      )
      .join(", ");
  }

  #waiting(): string {
    return this.#overlays
      .filter((o) => !isReady(o))
      .map((o) => `identity "${o.identityName}": ${o.notReadyReason ?? "not authenticated"}`)
      .join("; ");
  }

  get loaded(): boolean {
    return this.#snap !== undefined;
  }

  /** Re-lists services now; concurrent calls share one build, and a call during a build schedules one more. */
  refresh(): Promise<void> {
    if (this.#building) {
      this.#again = true;
      return this.#building;
    }
    this.#building = (async () => {
      try {
        do {
          this.#again = false;
          await this.#build();
        } while (this.#again && !this.#closed);
      } finally {
        this.#building = undefined;
      }
    })();
    return this.#building;
  }

  async #build(): Promise<void> {
    this.#lastAttempt = Date.now();
    const byName = new Map<string, Entry>();
    const usable = this.#overlays.filter(isReady);
    if (usable.length === 0) {
      // Not an error of the list: notReadyReason reads the identities' own reasons; 'authenticated' rebuilds.
      this.#lastError = undefined;
      throw new Error(`no identity is authenticated to the controller yet: ${this.#waiting()}`);
    }
    try {
      for (const ctx of usable) {
        const dialable = (await ctx.services()).filter((s) => s.permissions.includes("Dial") && !byName.has(s.name));
        // One controller request per service: REPLICA_LISTS_AT_ONCE at a time, so 1,000 services take a
        // fraction of a second rather than 1,000 round trips in a row (the order of the list does not depend on it).
        const replicas = await mapBounded(dialable, REPLICA_LISTS_AT_ONCE, async (s) => {
          if (!ctx.replicas) return [];
          try {
            return [...(await ctx.replicas(s.name))].sort();
          } catch (err) {
            this.#log.debug("cannot list replicas", { service: s.name, reason: (err as Error).message });
            return [];
          }
        });
        dialable.forEach((s, i) => byName.set(s.name, { ctx, service: s, replicas: replicas[i]! }));
      }
    } catch (err) {
      const e = err as Error & { code?: string };
      this.#lastError = `cannot list services: ${e.message}`;
      this.#metrics.catalogRefreshes.inc({ result: "error" });
      this.#log.warn("cannot list services; keeping the last list", { code: e.code, reason: e.message });
      throw err;
    }
    const byLower = new Map<string, string[]>();
    for (const name of byName.keys())
      byLower.set(name.toLowerCase(), [...(byLower.get(name.toLowerCase()) ?? []), name]);
    const groups: SdGroup[] = [];
    const d = this.#discovery;
    for (const name of [...byName.keys()].sort()) {
      const { ctx, service: s, replicas } = byName.get(name)!;
      if (d.include && !d.include.some((sel) => selectorMatch(sel, s))) continue;
      if (d.exclude?.some((sel) => selectorMatch(sel, s))) continue;
      const labels = {
        __meta_ziti_service: s.name,
        __meta_ziti_service_id: s.id,
        __meta_ziti_service_attributes: attributesLabel(s.roleAttributes),
        __meta_ziti_identity: ctx.identityName,
      };
      // No port: the proxy ignores it, Prometheus 3 keeps the target as `instance` (`node`), and 2.x adds the
      // scheme's (`node:80`, or `node:443` with scheme: https, which then goes through CONNECT).
      if (replicas.length === 0) groups.push({ targets: [nameToHost(s.name)], labels });
      for (const r of replicas) {
        groups.push({
          targets: [targetHost({ service: s.name, identity: r })],
          labels: { ...labels, __meta_ziti_replica: r },
        });
      }
    }
    const changed = this.#snap === undefined || this.#snap.groups.length !== groups.length;
    this.#snap = { at: Date.now(), byName, byLower, groups };
    this.#lastError = undefined;
    this.#metrics.sdTargets.set(groups.length);
    this.#metrics.catalogRefreshes.inc({ result: "ok" });
    if (changed) this.#log.info("service list loaded", { dialable: byName.size, discovered: groups.length });
  }

  /** The /sd answer: `service` globs and `attribute`s (any of each, both when both are given). */
  groups(filter: { service?: string[]; attribute?: string[] } = {}): SdGroup[] {
    const svc = filter.service ?? [];
    const attrs = filter.attribute ?? [];
    return (this.#snap?.groups ?? []).filter(
      (g) =>
        (svc.length === 0 || svc.some((p) => globMatch(p, g.labels.__meta_ziti_service!))) &&
        (attrs.length === 0 || attrs.some((a) => g.labels.__meta_ziti_service_attributes!.includes(`,${a},`))),
    );
  }

  #lookup(t: TargetName): Resolved | undefined {
    const snap = this.#snap;
    if (!snap) return undefined;
    let e = snap.byName.get(t.service);
    if (!e) {
      const names = snap.byLower.get(t.service.toLowerCase());
      if (names?.length === 1) e = snap.byName.get(names[0]!);
    }
    if (!e) return undefined;
    let identity = t.identity;
    if (identity !== undefined && !e.replicas.includes(identity)) {
      const ci = e.replicas.filter((r) => r.toLowerCase() === identity!.toLowerCase());
      if (ci.length === 1) identity = ci[0];
      // A replica the overlay does not list is not dialable (a miss: the list is looked up again, at most every
      // few seconds, in case it is new). Only when the overlay lists no replicas for the service is the dial left
      // to decide (the service may be bound without edge identities, or the list unavailable).
      else if (e.replicas.length > 0) return undefined;
    }
    return { ctx: e.ctx, service: e.service.name, ...(identity !== undefined ? { identity } : {}) };
  }

  /**
   * The identity that may dial the target, or undefined when none may (or the list is not loaded: see `loaded`).
   * On a miss, waits for a build under way or lists services again (at most every few seconds) in case the service
   * is new.
   */
  async resolve(t: TargetName): Promise<Resolved | undefined> {
    const hit = this.#lookup(t);
    if (hit) return hit;
    if (this.#building) await this.#building.catch(() => undefined);
    else if (Date.now() - this.#lastAttempt >= MISS_RELIST_MS) await this.refresh().catch(() => undefined);
    return this.#lookup(t);
  }

  /** When the service list was last loaded successfully (ms since the epoch), or undefined before the first load. */
  get refreshedAt(): number | undefined {
    return this.#snap?.at;
  }

  /**
   * What the catalog knows of a target (exact names, as `resolve` returns them): the service's role attributes and
   * the identity that dials it; undefined when the service is not dialable or `identity` is not one of its replicas.
   */
  describe(t: TargetName): { attributes: readonly string[]; dialer: string } | undefined {
    const e = this.#snap?.byName.get(t.service);
    if (!e || (t.identity !== undefined && !e.replicas.includes(t.identity))) return undefined;
    return { attributes: e.service.roleAttributes, dialer: e.ctx.identityName };
  }

  /** Every identity's name, for messages. */
  identityNames(): string[] {
    return this.#overlays.map((o) => o.identityName);
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const o of this.#overlays) {
      o.off?.("servicesChanged", this.#onChanged);
      o.off?.("authenticated", this.#onAuthenticated);
    }
  }
}
