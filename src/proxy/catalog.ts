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
import { filterGroups, sdGroups, type SdFilter, type SdGroup } from "./sd.js";
import { ErrorCodes, type DialOverlay, type OverlayService, type TargetName } from "../overlay/types.js";
import { WarmOverlay, Warmup, type WarmTarget } from "./warmup.js";

interface Entry {
  ctx: DialOverlay;
  service: OverlayService;
  /**
   * The identities that bound the service by edge identity, sorted, as the controller last listed them (empty: none
   * did); undefined when they could not be listed (the overlay has no `replicas()`, or the request failed), and
   * only then does a dial decide whether a replica name exists.
   */
  replicas: string[] | undefined;
  /** When the replicas were last asked for (ms since the epoch): a miss asks again at most every MISS_RELIST_MS. */
  listedAt: number;
  /** The replica list being asked for on a miss, shared by every request that waits for it. */
  listing?: Promise<void> | undefined;
  /** When a refresh lists the replicas again if nothing says sooner (ms since the epoch; see REPLICA_RELIST_PERIODS). */
  relistAt: number;
  /** The service's entry as listed, to tell a changed service from the same one. */
  fingerprint: string;
}

/** What the catalog knows of a service a request named, for the answer to a replica it does not list. */
export interface KnownService {
  service: string;
  /** As in Entry: undefined when the list is unknown. */
  replicas: readonly string[] | undefined;
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
  /** The identity that dials it (its dials take the target's warm connection first: ./warmup.ts). */
  ctx: DialOverlay;
  service: string;
  identity?: string;
}

/**
 * After a miss, look up again at most this often, counted from the end of the last look-up: the service list for a
 * service the catalog does not know, that one service's replica list for a replica it does not list (an unknown
 * name must not hammer the controller). Either look-up is shared by all the requests that wait for it.
 */
export const MISS_RELIST_MS = 5_000;
/** Replica lists (one controller request each) asked for at once during a refresh. */
const REPLICA_LISTS_AT_ONCE = 8;
/**
 * A service's replicas are listed again by a refresh only when they may have changed: the service is new or its entry
 * changed, its last listing failed, it had no replica at its last listing, a dial of one of its replicas was refused
 * (the replica went away), or its list is older than this many refresh periods (give or take a quarter, so that 1,000 services do not all fall due at once).
 * The controller's client API has no change marker for terminators (service-updates' lastChangeAt moves with
 * services and policies only) and cannot filter services by them, so a replica that a new host binds for a service
 * already listed is found by that age: within 10 refreshes (5 minutes by default), or at once by a request naming it.
 */
export const REPLICA_RELIST_PERIODS = 10;

export { attributesLabel, type SdGroup } from "./sd.js";

/** An overlay without a `ready` property is always ready (stand-ins, older SDKs). */
function isReady(o: DialOverlay): boolean {
  return o.ready !== false;
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
  /** Dials ahead of each listed target's first scrape (./warmup.ts). */
  readonly #warmup: Warmup;
  /** Each identity as resolved targets dial it: through the warm-up. */
  readonly #dialers: Map<DialOverlay, WarmOverlay>;

  constructor(overlays: DialOverlay[], discovery: ProxyConfig["discovery"], log: Logger, metrics: ProxyMetrics) {
    this.#overlays = overlays;
    this.#discovery = discovery;
    this.#log = log;
    this.#metrics = metrics;
    this.#warmup = new Warmup(metrics, log);
    this.#warmup.onRefused = (ctx, service, err) => this.#dialRefused(ctx, service, err);
    this.#dialers = new Map(overlays.map((o) => [o, new WarmOverlay(o, this.#warmup)]));
  }

  /** The targets /sd lists, for the warm-up. */
  #warm(): void {
    const snap = this.#snap;
    if (!snap || this.#closed) return;
    // Turned off (also by a reload): an empty offer drops what is queued and the connections held.
    if (this.#discovery.warmUp === false) return this.#warmup.offer([]);
    const targets: WarmTarget[] = [];
    for (const g of snap.groups) {
      const service = g.labels.__meta_ziti_service!;
      const e = snap.byName.get(service);
      if (e && e.ctx.dialAhead !== false) targets.push({ ctx: e.ctx, service, identity: g.labels.__meta_ziti_replica });
    }
    this.#warmup.offer(targets);
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
    try {
      await this.#buildOnce();
    } finally {
      // The miss throttle counts from the end: a build that takes longer than MISS_RELIST_MS (thousands of
      // services, a slow controller) must not be followed at once by the next one a miss asks for.
      this.#lastAttempt = Date.now();
    }
  }

  async #buildOnce(): Promise<void> {
    const byName = new Map<string, Entry>();
    const usable = this.#overlays.filter(isReady);
    if (usable.length === 0) {
      // Not an error of the list: notReadyReason reads the identities' own reasons; 'authenticated' rebuilds.
      this.#lastError = undefined;
      throw new Error(`no identity is authenticated to the controller yet: ${this.#waiting()}`);
    }
    const prev = this.#snap?.byName;
    const now = Date.now();
    try {
      for (const ctx of usable) {
        const dialable = (await ctx.services()).filter((s) => s.permissions.includes("Dial") && !byName.has(s.name));
        // One controller request per service whose replicas may have changed (see REPLICA_RELIST_PERIODS; on the
        // first load, every service), REPLICA_LISTS_AT_ONCE at a time, so 1,000 services take a fraction of a
        // second rather than 1,000 round trips in a row (the order of the list does not depend on it).
        const entries = await mapBounded(dialable, REPLICA_LISTS_AT_ONCE, async (s): Promise<Entry> => {
          const fingerprint = JSON.stringify(s);
          const p = prev?.get(s.name);
          // An empty list is asked for again at every refresh: a service no host has bound by identity yet is the
          // one whose first replica (a DaemonSet's node starting after the proxy) is most likely to come next.
          const keep = p?.replicas !== undefined && p.replicas.length > 0 && now < p.relistAt;
          if (p && keep && p.ctx === ctx && p.fingerprint === fingerprint) {
            return { ctx, service: s, replicas: p.replicas, listedAt: p.listedAt, relistAt: p.relistAt, fingerprint };
          }
          const listedAt = Date.now();
          const replicas = await this.#listReplicas(ctx, s.name, "refresh");
          return { ctx, service: s, replicas, listedAt, relistAt: this.#nextRelist(), fingerprint };
        });
        dialable.forEach((s, i) => byName.set(s.name, entries[i]!));
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
    const groups = sdGroups(byName, this.#discovery);
    const changed = this.#snap === undefined || this.#snap.groups.length !== groups.length;
    this.#snap = { at: Date.now(), byName, byLower, groups };
    this.#lastError = undefined;
    this.#metrics.sdTargets.set(groups.length);
    this.#metrics.catalogRefreshes.inc({ result: "ok" });
    if (changed) this.#log.info("service list loaded", { dialable: byName.size, discovered: groups.length });
    this.#warm();
  }

  /** When a list made now is due again: REPLICA_RELIST_PERIODS refresh periods, give or take a quarter. */
  #nextRelist(): number {
    const period = this.#discovery.refreshSeconds * 1000 * REPLICA_RELIST_PERIODS;
    return Date.now() + period * (0.75 + Math.random() / 2);
  }

  /**
   * A dial of one of `service`'s replicas was refused by the router (no such terminator: the replica went away, or
   * it is re-binding): its replicas are listed again (at most once per MISS_RELIST_MS, as a miss).
   */
  #dialRefused(ctx: DialOverlay, service: string, err: unknown): void {
    if (this.#closed || (err as { code?: unknown } | null)?.code !== ErrorCodes.DIAL_FAILED) return;
    const e = this.#snap?.byName.get(service);
    if (e && e.ctx === ctx) void this.#relistReplicas(e, "refused").catch(() => undefined);
  }

  /** One controller request: `service`'s replicas, sorted; undefined when they cannot be listed (logged). */
  async #listReplicas(
    ctx: DialOverlay,
    service: string,
    cause: "refresh" | "miss" | "refused",
  ): Promise<string[] | undefined> {
    if (!ctx.replicas) return undefined;
    try {
      const list = [...(await ctx.replicas(service))].sort();
      this.#metrics.replicaLists.inc({ cause, result: "ok" });
      return list;
    } catch (err) {
      this.#metrics.replicaLists.inc({ cause, result: "error" });
      this.#log.debug("cannot list replicas", { service, reason: (err as Error).message });
      return undefined;
    }
  }

  /** The /sd answer: `service` globs and `attribute`s (any of each, both when both are given). */
  groups(filter: SdFilter = {}): SdGroup[] {
    return filterGroups(this.#snap?.groups ?? [], filter);
  }

  /** The entry of the service a request names: the exact name, else the one name that differs only in case. */
  #entry(service: string): Entry | undefined {
    const snap = this.#snap;
    if (!snap) return undefined;
    const e = snap.byName.get(service);
    if (e) return e;
    const names = snap.byLower.get(service.toLowerCase());
    return names?.length === 1 ? snap.byName.get(names[0]!) : undefined;
  }

  #lookup(t: TargetName): Resolved | undefined {
    const e = this.#entry(t.service);
    if (!e) return undefined;
    let identity = t.identity;
    // A replica the overlay does not list is not dialable, also when it lists none (the service is bound without
    // edge identities): a dial would only ask the router, and a refused dial costs the controller a new session.
    // Only when the list is unknown (the overlay cannot list replicas, or the request failed) does the dial decide.
    if (identity !== undefined && e.replicas !== undefined && !e.replicas.includes(identity)) {
      const ci = e.replicas.filter((r) => r.toLowerCase() === identity!.toLowerCase());
      if (ci.length !== 1) return undefined;
      identity = ci[0];
    }
    const ctx = this.#dialers.get(e.ctx) ?? e.ctx;
    return { ctx, service: e.service.name, ...(identity !== undefined ? { identity } : {}) };
  }

  /**
   * The identity that may dial the target, or undefined when none may (or the list is not loaded: see `loaded`).
   * On a miss:
   * - a service the catalog knows, a replica it does not list: that service's replicas are asked for again in case
   *   the replica is new, at most once per MISS_RELIST_MS (from the end of the last listing, the catalog's own
   *   refreshes included), in one request that every miss arriving meanwhile waits for; any other miss is answered
   *   from the list at once. Nothing is kept per requested name.
   * - a service it does not know: waits for a build under way, or lists services again (at most once per
   *   MISS_RELIST_MS after the last build ended) in case the service is new.
   */
  async resolve(t: TargetName): Promise<Resolved | undefined> {
    const hit = this.#lookup(t);
    if (hit) return hit;
    const e = this.#entry(t.service);
    if (e) await this.#relistReplicas(e, "miss");
    else if (this.#building) await this.#building.catch(() => undefined);
    else if (Date.now() - this.#lastAttempt >= MISS_RELIST_MS) await this.refresh().catch(() => undefined);
    return this.#lookup(t);
  }

  /** Asks for one service's replicas again, unless that was done within MISS_RELIST_MS; one request at a time. */
  #relistReplicas(e: Entry, cause: "miss" | "refused"): Promise<void> {
    if (e.listing) return e.listing;
    if (Date.now() - e.listedAt < MISS_RELIST_MS || this.#closed) return Promise.resolve();
    const started = Date.now();
    e.listedAt = started;
    e.listing = (async () => {
      let list: string[] | undefined;
      try {
        list = await this.#listReplicas(e.ctx, e.service.name, cause);
      } finally {
        e.listing = undefined;
      }
      // A build may have replaced the entry meanwhile; its list is newer only if it was asked for after ours.
      const cur = this.#snap?.byName.get(e.service.name);
      const ours = [...new Set([e, cur])].filter((x): x is Entry => x?.ctx === e.ctx && x.listedAt <= started);
      const ended = Date.now();
      for (const x of ours) x.listedAt = ended;
      if (list === undefined) return; // the list kept is the last one listed
      const relistAt = this.#nextRelist();
      for (const x of ours) x.relistAt = relistAt;
      const changed = ours.some((x) => x.replicas?.join("\n") !== list.join("\n"));
      for (const x of ours) x.replicas = list;
      if (changed && cur && ours.includes(cur) && this.#snap) {
        this.#snap.groups = sdGroups(this.#snap.byName, this.#discovery);
        this.#metrics.sdTargets.set(this.#snap.groups.length);
        this.#log.info("replica list changed", { service: e.service.name, replicas: list.length });
        this.#warm();
      }
    })();
    return e.listing;
  }

  /** The service a request named and its replicas, when the catalog knows the service (for the 502's text). */
  known(service: string): KnownService | undefined {
    const e = this.#entry(service);
    return e && { service: e.service.name, replicas: e.replicas };
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
    if (!e || (t.identity !== undefined && !e.replicas?.includes(t.identity))) return undefined;
    return { attributes: e.service.roleAttributes, dialer: e.ctx.identityName };
  }

  /** Every identity's name, for messages. */
  identityNames(): string[] {
    return this.#overlays.map((o) => o.identityName);
  }

  close(): void {
    this.#closed = true;
    this.#warmup.close();
    clearInterval(this.#timer);
    for (const o of this.#overlays) {
      o.off?.("servicesChanged", this.#onChanged);
      o.off?.("authenticated", this.#onAuthenticated);
    }
  }
}
