/**
 * The bind side: each target's Ziti service is bound on the overlay and every overlay connection is handed to the
 * relay (./relay.ts), which forwards allowed requests to the upstream exporter (./relay-exchange.ts).
 * Nothing here opens a listening socket.
 *
 * BindServer holds the bound targets (a ServiceRuntime each: ./runtime.ts), applies reloads, reports status and runs
 * a graceful stop. One exchange (an HTTP request, or a passthrough pipe) is ./exchange.ts; who may use a connection
 * (caller, slots) ./admission.ts; the self-metrics service ./self.ts; its metrics ./metrics.ts; how it words its
 * answers ./respond.ts.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "../common/log.js";
import type { BindOverlay } from "../overlay/types.js";
import { Admission } from "./admission.js";
import type { BindConfig, BindTarget } from "./config.js";
import { Exchanges, type InFlight } from "./exchange.js";
import { RelayExchange } from "./relay-exchange.js";
import { BindMetrics } from "./metrics.js";
import { checkReloadable } from "./reload.js";
import { ServiceRuntime, type RuntimeDeps, type ServiceState } from "./runtime.js";
import { SelfService } from "./self.js";

export { BindMetrics, statusLabel } from "./metrics.js";
export { invalidResponse, upstreamTimeoutMs } from "./respond.js";
export type { ServiceState } from "./runtime.js";

export type { BindOverlay } from "../overlay/types.js";

export class BindServer {
  readonly metrics = new BindMetrics();
  #config: BindConfig;
  /** The bound targets, by service name. */
  readonly #runtimes = new Map<string, ServiceRuntime>();
  readonly #deps: RuntimeDeps;
  readonly #self: SelfService;
  #onChange: () => void = () => undefined;
  /** Requests being answered and passthrough pipes open, with the overlay connection each uses (graceful stop). */
  readonly #inFlight = new Map<InFlight, Duplex>();
  /** Requests in flight per overlay connection: a connection with none is idle. */
  readonly #busy = new WeakMap<Duplex, number>();
  /** Set by drain(): no new connections or requests; in-flight ones finish, then their connection closes. */
  #draining = false;
  #drainCheck: (() => void) | undefined;

  constructor(ctx: BindOverlay, config: BindConfig, log: Logger) {
    this.#config = config;
    this.metrics.certSource = ctx;
    const admission = new Admission(this.metrics, log);
    const draining = () => this.#draining;
    const exchanges = new Exchanges({
      metrics: this.metrics,
      log,
      draining,
      track: (key, conn) => this.#track(key, conn),
    });
    this.#deps = { ctx, metrics: this.metrics, log, admission, exchanges, draining, changed: () => this.#onChange() };
    this.#self = new SelfService({ ctx, metrics: this.metrics, log, admission });
  }

  /** Called whenever a service's state changes (for the status file). */
  onChange(fn: () => void): void {
    this.#onChange = fn;
  }

  get config(): BindConfig {
    return this.#config;
  }

  /** Binds every target (and `self`). Targets that cannot bind yet keep retrying in the background. */
  async start(): Promise<void> {
    await Promise.all(this.#config.targets.map((t) => this.#add(t)));
    await this.#self.start(this.#config.self);
  }

  status(): { ready: boolean; services: Record<string, { state: ServiceState; lastError?: string }> } {
    const services: Record<string, { state: ServiceState; lastError?: string }> = {};
    // A configured target that start() (or a reload) has not reached yet is "binding": without this, the moment
    // between creating the server and its first #add read as ready with 0 services, and an exec probe passed.
    for (const t of this.#config.targets) services[t.service] = { state: "binding" };
    for (const [name, rt] of this.#runtimes)
      services[name] = { state: rt.state, ...(rt.lastError ? { lastError: rt.lastError } : {}) };
    const ready = Object.values(services).every((s) => s.state === "bound");
    return { ready, services };
  }

  /**
   * Applies a new config. Targets: added ones bound, removed ones unbound, unchanged ones untouched; a change of
   * `allow` alone applies in place, with no gap (every request, also the next one on a kept-alive connection, is
   * checked against the list as it is then, and passthrough pipes of callers no longer admitted are closed); any
   * other change re-binds the target. `self`: its allow-list in place; a new service name, or `self` added or
   * removed, (re-)binds or unbinds it. A change to a field that applies only at start (src/bind/reload.ts) refuses
   * the whole config with ReloadNeedsRestart, naming each such field; nothing of it applies.
   */
  async apply(
    next: BindConfig,
  ): Promise<{ added: string[]; removed: string[]; changed: string[]; self?: "added" | "removed" | "changed" }> {
    checkReloadable(this.#config, next);
    const nextByName = new Map(next.targets.map((t) => [t.service, t]));
    const added: string[] = [];
    const removed: string[] = [];
    const changed: string[] = [];
    const rebind: string[] = [];
    for (const [name, rt] of this.#runtimes) {
      const t = nextByName.get(name);
      if (!t) removed.push(name);
      else if (JSON.stringify(t) !== rt.key) {
        changed.push(name);
        if (onlyAllowDiffers(t, rt.target)) rt.reallow(t);
        else rebind.push(name);
      }
    }
    for (const t of next.targets) if (!this.#runtimes.has(t.service)) added.push(t.service);
    this.#config = next;
    for (const name of [...removed, ...rebind]) await this.#remove(name);
    await Promise.all([...rebind, ...added].map((n) => this.#add(nextByName.get(n)!)));
    const self = await this.#self.apply(next.self);
    this.#onChange();
    return { added, removed, changed, ...(self ? { self } : {}) };
  }

  async #add(target: BindTarget): Promise<void> {
    const rt = new ServiceRuntime(target, this.#deps);
    this.#runtimes.set(target.service, rt);
    await rt.bind();
  }

  async #remove(name: string): Promise<void> {
    const rt = this.#runtimes.get(name);
    if (!rt) return;
    this.#runtimes.delete(name);
    await rt.close();
  }

  /** Counts `key` (a response, or a passthrough connection) as in flight on `conn` until it closes. */
  #track(key: InFlight, conn: Duplex): void {
    this.#inFlight.set(key, conn);
    this.#busy.set(conn, (this.#busy.get(conn) ?? 0) + 1);
    key.once("close", () => {
      this.#inFlight.delete(key);
      this.#busy.set(conn, (this.#busy.get(conn) ?? 1) - 1);
      // Draining: the connection is not kept for another request (the dialer's next scrape dials anew).
      if (this.#draining && key !== conn && !this.#busy.get(conn)) conn.end();
      this.#drainCheck?.();
    });
  }

  /** Requests being answered plus passthrough pipes open. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /**
   * A graceful stop (SIGTERM): every service is unbound at once (new dials find no terminator here) and idle
   * overlay connections are closed; requests in flight and passthrough pipes get until `deadlineMs` to finish,
   * each connection closing after its last response. Resolves with how many were still open at the deadline (0 when
   * all finished); call close() afterwards.
   */
  async drain(deadlineMs: number): Promise<{ unfinished: number }> {
    this.#draining = true;
    const listeners = [...this.#runtimes.values()].flatMap((rt) => rt.stopRebinding());
    if (this.#self.listener) listeners.push(this.#self.listener);
    await Promise.allSettled(listeners.map((l) => l.close()));
    for (const rt of this.#runtimes.values()) {
      for (const c of rt.conns) if (!this.#busy.get(c)) c.destroy();
    }
    this.#self.destroyConnections();
    for (const res of this.#inFlight.keys()) {
      if (res instanceof http.ServerResponse && !res.headersSent) res.shouldKeepAlive = false;
      if (res instanceof RelayExchange && !res.headSent) res.keepAlive = false;
    }
    await new Promise<void>((done) => {
      const timer = setTimeout(done, deadlineMs);
      timer.unref();
      this.#drainCheck = () => {
        if (this.#inFlight.size === 0) {
          clearTimeout(timer);
          done();
        }
      };
      this.#drainCheck();
    });
    this.#drainCheck = undefined;
    return { unfinished: this.#inFlight.size };
  }

  async close(): Promise<void> {
    this.#drainCheck = undefined;
    for (const name of [...this.#runtimes.keys()]) await this.#remove(name);
    await this.#self.close();
  }
}

/** Whether two configs of one target differ in `allow` only (a change that applies without re-binding). */
function onlyAllowDiffers(a: BindTarget, b: BindTarget): boolean {
  const { allow: _a, ...ra } = a;
  const { allow: _b, ...rb } = b;
  return JSON.stringify(ra) === JSON.stringify(rb);
}
