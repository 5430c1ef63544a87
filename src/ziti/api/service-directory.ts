/**
 * Layer 3: what the controller grants a context: the services its identity sees (loaded at authentication, then
 * kept current by polling the controller's change marker, with back-off while that fails), the lookup of one
 * service with a permission, the Dial/Bind sessions cached per service, and the replicas bound by edge identity.
 */
import { Backoff } from "../backoff.js";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import type { ControllerClient } from "./controller.js";
import type { ServiceInfo, SessionInfo } from "./controller-wire.js";

const log = debug("context");

export interface ServiceDirectoryOptions {
  /** How often to ask the controller whether the service list changed (ms; 0 disables). */
  servicePollMs: number;
  /** Our identity's name, for error messages. */
  identityName: () => string;
  /** The service list changed (names, permissions or configs). */
  changed: (services: ServiceInfo[]) => void;
}

export class ServiceDirectory {
  readonly #controller: ControllerClient;
  readonly #opts: ServiceDirectoryOptions;
  #services = new Map<string, ServiceInfo>();
  #loadedAt = 0;
  #lastChangeAt: string | undefined;
  readonly #sessions = new Map<string, Promise<SessionInfo>>();
  /** The session each cached promise resolved to, so a dial drops only the session it used (see dropSession). */
  readonly #resolved = new Map<string, SessionInfo>();
  /** Sessions asked of the controller (POST /sessions), Dial and Bind. */
  #created = 0;
  #pollTimer: NodeJS.Timeout | undefined;
  readonly #pollBackoff: Backoff;
  #stopped = false;

  constructor(controller: ControllerClient, opts: ServiceDirectoryOptions) {
    this.#controller = controller;
    this.#opts = opts;
    // A failing service poll backs off from twice the interval, doubling, to 2 minutes (or the interval if longer).
    const poll = Math.max(1, opts.servicePollMs);
    this.#pollBackoff = new Backoff({ initialMs: 2 * poll, maxMs: Math.max(poll, 120_000) });
  }

  /** Every service this identity can see (reloaded first if older than the poll interval). */
  async list(): Promise<ServiceInfo[]> {
    if (Date.now() - this.#loadedAt > this.#opts.servicePollMs) await this.refresh();
    return [...this.#services.values()];
  }

  /** Loads the service list now; tells `changed` if it differs. */
  async refresh(): Promise<void> {
    const list = await this.#controller.listServices();
    const next = new Map(list.map((s) => [s.name, s]));
    const changed =
      next.size !== this.#services.size ||
      list.some((s) => JSON.stringify(s) !== JSON.stringify(this.#services.get(s.name)));
    this.#services = next;
    this.#loadedAt = Date.now();
    if (changed) this.#opts.changed(list);
  }

  /** Starts polling (every servicePollMs while the controller answers). */
  startPolling(): void {
    this.#schedulePoll();
  }

  /** Stops polling for good. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#pollTimer);
    this.#pollTimer = undefined;
  }

  /** Polls every servicePollMs while the controller answers; backs off (jittered, capped) while it fails. */
  #schedulePoll(delayMs = this.#opts.servicePollMs): void {
    if (this.#opts.servicePollMs <= 0 || this.#stopped) return;
    clearTimeout(this.#pollTimer);
    this.#pollTimer = setTimeout(() => void this.#poll(), delayMs);
    this.#pollTimer.unref();
  }

  /** A timer callback: catches everything. */
  async #poll(): Promise<void> {
    let delayMs = this.#opts.servicePollMs;
    try {
      const at = await this.#controller.serviceUpdates();
      if (at !== this.#lastChangeAt || Date.now() - this.#loadedAt > 5 * 60_000) {
        this.#lastChangeAt = at;
        await this.refresh();
      }
      this.#pollBackoff.reset();
    } catch (err) {
      delayMs = this.#pollBackoff.next();
      log(
        "service poll failed (%d in a row): %s; next in %d ms",
        this.#pollBackoff.failures,
        (err as Error).message,
        delayMs,
      );
    }
    this.#schedulePoll(delayMs);
  }

  /** The service `name` if this identity may `permission` it (reloading the list once if not); else why not. */
  async service(name: string, permission: "Dial" | "Bind"): Promise<ServiceInfo> {
    let svc = this.#services.get(name);
    if (!svc || !svc.permissions.includes(permission)) {
      await this.refresh();
      svc = this.#services.get(name);
    }
    const who = this.#opts.identityName();
    if (!svc) {
      throw new ZitiError(
        ErrorCodes.SERVICE_NOT_FOUND,
        `service "${name}" is not visible to identity "${who}" (no such service, or no service policy grants it)`,
      );
    }
    if (!svc.permissions.includes(permission)) {
      throw new ZitiError(
        ErrorCodes.NOT_AUTHORIZED,
        `identity "${who}" may not ${permission} service "${name}" (permissions: ${svc.permissions.join(", ") || "none"})`,
      );
    }
    return svc;
  }

  /** Identities of the replicas that bound `svc` by edge identity. */
  replicas(svc: ServiceInfo): Promise<string[]> {
    return this.#controller.listTerminatorIdentities(svc.id);
  }

  /** Sessions created so far (each one controller request). */
  get sessionsCreated(): number {
    return this.#created;
  }

  /**
   * The cached Dial or Bind session for a service, created on first use (a failed one is not kept). One per service
   * and type: every replica of a service is dialed with its one Dial session (the terminator is chosen by the dial).
   */
  session(svc: ServiceInfo, type: "Dial" | "Bind"): Promise<SessionInfo> {
    const key = `${type}:${svc.name}`;
    let p = this.#sessions.get(key);
    if (!p) {
      this.#created++;
      const made = this.#controller.createSession(svc.id, type);
      p = made;
      this.#sessions.set(key, made);
      made.then(
        (s) => {
          if (this.#sessions.get(key) === made) this.#resolved.set(key, s);
        },
        () => {
          if (this.#sessions.get(key) === made) this.#sessions.delete(key);
        },
      );
    }
    return p;
  }

  /**
   * Forgets a cached session so the next use creates a new one. With `stale` (the session a failed dial used), only
   * if that is still the cached one: when many dials of a service fail together (a host re-binding, a router
   * restart), the first one's retry makes the new session and the others retry with it instead of each making one.
   */
  dropSession(service: string, type: "Bind" | "Dial", stale?: SessionInfo): void {
    const key = `${type}:${service}`;
    if (stale && this.#sessions.has(key) && this.#resolved.get(key) !== stale) return;
    this.#sessions.delete(key);
    this.#resolved.delete(key);
  }

  /** Forgets every cached session (a new API session). */
  clearSessions(): void {
    this.#sessions.clear();
    this.#resolved.clear();
  }
}
