/**
 * One bound target's life on the bind side: its terminators (bound, re-bound after a failure with backoff, closed),
 * the overlay connections they hand over (admitted to a slot, then to the relay (./relay.ts), or piped raw for
 * passthrough), its exporter sockets, its limits and its state. Nothing here opens a listening socket.
 */
import { readFileSync } from "node:fs";
import type { Logger } from "../common/log.js";
import type { BindOverlay, OverlayConnection, OverlayListenOptions, OverlayListener } from "../overlay/types.js";
import { callerOf, slotTable, type Admission } from "./admission.js";
import { Backoff } from "./backoff.js";
import type { BindTarget } from "./config.js";
import type { Exchanges } from "./exchange.js";
import type { ConnLimits } from "./guard.js";
import type { BindMetrics } from "./metrics.js";
import { audit } from "./respond.js";
import type { SlotTable } from "./slots.js";
import { RelayConnection } from "./relay.js";
import type { RelayTarget } from "./relay-exchange.js";
import { UpstreamPool } from "./upstream-pool.js";

export type ServiceState = "binding" | "bound" | "rebinding" | "failed";

/** What every runtime shares with the bind server. */
export interface RuntimeDeps {
  ctx: BindOverlay;
  metrics: BindMetrics;
  log: Logger;
  admission: Admission;
  exchanges: Exchanges;
  /** A graceful stop has begun: new connections are refused. */
  draining: () => boolean;
  /** A service's state changed (for the status file). */
  changed: () => void;
}

/** A target's connection limits (re-read per connection: a reload may change `allow` in place, nothing else). */
function limitsOf(t: BindTarget): ConnLimits {
  return {
    headersTimeoutMs: t.headersTimeoutSeconds * 1000,
    requestTimeoutMs: t.requestTimeoutSeconds * 1000,
    idleTimeoutMs: t.idleTimeoutSeconds * 1000,
  };
}

/** The exporter's sockets for the relay, with the target's TLS settings for an https upstream. */
function upstreamPool(target: BindTarget, u: UpstreamAddress): UpstreamPool {
  return new UpstreamPool({
    hostname: u.hostname,
    port: u.port,
    ...(u.tls
      ? {
          tls: {
            ...(target.tls?.ca ? { ca: readFileSync(target.tls.ca) } : {}),
            ...(target.tls?.cert ? { cert: readFileSync(target.tls.cert), key: readFileSync(target.tls.key!) } : {}),
            rejectUnauthorized: !target.tls?.insecureSkipVerify,
          },
        }
      : {}),
  });
}

/** Where a target's HTTP requests go, parsed once from its `upstream` URL (not on every request). */
export interface UpstreamAddress {
  tls: boolean;
  /** For the socket: an IPv6 literal without its brackets. */
  hostname: string;
  port: number;
  /** The Host header the exporter is sent (as the URL has it). */
  host: string;
}

function upstreamAddress(upstream: string): UpstreamAddress {
  const u = new URL(upstream);
  const tls = u.protocol === "https:";
  return {
    tls,
    hostname: u.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: Number(u.port || (tls ? 443 : 80)),
    host: u.host,
  };
}

export class ServiceRuntime {
  /** The target as last applied (a reload may replace its allow-list in place), and its JSON to compare. */
  #target: BindTarget;
  #key: string;
  /** The shared terminator, plus (bindUsingEdgeIdentity) one addressable as `<identity>@<service>`. */
  #listeners: OverlayListener[] = [];
  /** Overlay connections open. */
  readonly conns = new Set<OverlayConnection>();
  /** Which of them hold one of the target's maxConnections slots, and who gives way when it is full (./slots.ts). */
  readonly #slots: SlotTable<OverlayConnection>;
  /** The exporter's keep-alive connections. */
  readonly #pool: UpstreamPool;
  /** The target's upstream, parsed (a reload changes the allow-list in place, never the upstream). */
  #upstream: UpstreamAddress;
  #state: ServiceState = "binding";
  #lastError: string | undefined;
  #retry: NodeJS.Timeout | undefined;
  /** Delays between attempts to bind after a failure. */
  readonly #backoff = new Backoff();
  /** Unbound for good (removed, or a graceful stop): no re-binding. */
  #closed = false;
  readonly #deps: RuntimeDeps;

  /** Reads the target's TLS files (throws when one cannot be read). Call bind() to bind it. */
  constructor(target: BindTarget, deps: RuntimeDeps) {
    this.#target = target;
    this.#key = JSON.stringify(target);
    this.#deps = deps;
    this.#upstream = upstreamAddress(target.upstream);
    this.#pool = upstreamPool(target, this.#upstream);
    this.#slots = slotTable(target.maxConnections);
    deps.metrics.bound.set({ service: target.service }, 0);
  }

  get target(): BindTarget {
    return this.#target;
  }

  /** Where the target's HTTP requests go. */
  get upstream(): UpstreamAddress {
    return this.#upstream;
  }

  get service(): string {
    return this.#target.service;
  }

  /** The target's config as JSON (a reload compares it to tell an unchanged target). */
  get key(): string {
    return this.#key;
  }

  get state(): ServiceState {
    return this.#state;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** Binds the target's terminators; on failure, logs, says "failed" and tries again after a backoff delay. */
  async bind(): Promise<void> {
    const t = this.#target;
    const { ctx, metrics, log } = this.#deps;
    const base: OverlayListenOptions = {
      ...(t.cost !== undefined ? { cost: t.cost } : {}),
      ...(t.precedence ? { precedence: t.precedence } : {}),
    };
    // OpenZiti routes a dial without an instance id only to terminators without one, so an addressable
    // replica needs both: the shared terminator and one bound with its edge identity.
    const variants: OverlayListenOptions[] = t.bindUsingEdgeIdentity
      ? [base, { ...base, bindUsingEdgeIdentity: true }]
      : [base];
    try {
      const listeners: OverlayListener[] = [];
      try {
        for (const v of variants) listeners.push(await ctx.listen(t.service, v));
      } catch (err) {
        await Promise.all(listeners.map((l) => l.close()));
        throw err;
      }
      if (this.#closed) {
        await Promise.all(listeners.map((l) => l.close()));
        return;
      }
      this.#listeners = listeners;
      this.#backoff.reset();
      for (const l of listeners) {
        l.on("connection", (c: OverlayConnection) => this.#connection(c));
        l.on("unbound", (reason: string) => this.#setState("rebinding", reason));
        // Why re-binding does not succeed yet (a router or the egress proxy unreachable): logged once per reason.
        l.on("rebindError", (err: Error) => {
          if (this.#state === "rebinding") this.#setState("rebinding", err.message);
        });
        l.on("bound", () => {
          if (!listeners.every((x) => x.state === "bound")) return;
          if (this.#state === "rebinding") metrics.rebinds.inc({ service: t.service });
          this.#setState("bound");
        });
      }
      this.#setState("bound");
    } catch (err) {
      const msg = (err as Error).message;
      if (this.#closed) return;
      const delay = this.#backoff.next();
      log.error(`service not bound; retrying in ${(delay / 1000).toFixed(1)}s`, {
        service: t.service,
        reason: msg,
        retry_in_ms: delay,
        next_try: new Date(Date.now() + delay).toISOString(),
      });
      this.#setState("failed", msg);
      this.#retry = setTimeout(() => void this.bind(), delay);
      this.#retry.unref();
    }
  }

  /** A new overlay connection from one of the terminators. */
  #connection(c: OverlayConnection): void {
    const { metrics, admission, exchanges } = this.#deps;
    const t = this.#target;
    c.on("error", () => c.destroy());
    if (this.#deps.draining()) return void c.destroy();
    // this.#target, read now: a reload may have replaced the allow-list in place.
    if (!admission.admit(this.#slots, t.service, t.allow, c)) return;
    // A passthrough pipe has no request head to wait for: it counts as busy for as long as it is open.
    if (t.passthrough) this.#slots.requestStarted(c);
    this.conns.add(c);
    metrics.connections.set({ service: t.service }, this.conns.size);
    c.once("close", () => {
      this.#slots.release(c);
      this.conns.delete(c);
      if (!this.#closed) metrics.connections.set({ service: t.service }, this.conns.size);
    });
    if (t.passthrough) return exchanges.passthrough(this, c);
    this.#relay(c);
  }

  #relay(c: OverlayConnection): RelayConnection {
    const { metrics, log, admission, exchanges, draining } = this.#deps;
    const rt = (): RelayTarget => ({ target: this.#target, upstream: this.#upstream, pool: this.#pool });
    return new RelayConnection(c, rt, {
      metrics,
      log,
      draining,
      limits: () => limitsOf(this.#target),
      expired: (kind) => admission.expired(this.#target.service, kind),
      describe: () => `service "${this.#target.service}"`,
      started: (ex) => {
        this.#slots.requestStarted(c);
        ex.once("close", () => this.#slots.requestEnded(c));
        exchanges.track(ex, c);
      },
    });
  }

  #setState(state: ServiceState, reason?: string): void {
    if (this.#state === state && this.#lastError === reason) return;
    this.#state = state;
    this.#lastError = reason;
    this.#deps.metrics.bound.set({ service: this.#target.service }, state === "bound" ? 1 : 0);
    const fields = { service: this.#target.service, state, ...(reason ? { reason } : {}) };
    // A failure is logged where it happens, with when the next attempt is.
    if (state !== "failed") this.#deps.log.info(`service ${state}`, fields);
    this.#deps.changed();
  }

  /**
   * A new allow-list, in place: each HTTP request is checked against the target as it is then; a passthrough pipe
   * was checked once, at its start, so those of callers no longer admitted are closed.
   */
  reallow(t: BindTarget): void {
    this.#target = t;
    this.#key = JSON.stringify(t);
    this.#upstream = upstreamAddress(t.upstream);
    if (!t.passthrough) return;
    for (const c of this.conns) {
      const who = callerOf(c, t.service, t.allow);
      if (!who.refusal) continue;
      this.#deps.log.info("connection closed: the reloaded allow-list no longer admits its caller", {
        ...audit(who),
        service: t.service,
      });
      c.destroy();
    }
  }

  /** No re-binding from here on (a graceful stop); returns the terminators, for the caller to close. */
  stopRebinding(): OverlayListener[] {
    clearTimeout(this.#retry);
    this.#closed = true;
    return this.#listeners;
  }

  /** Unbinds the target and closes its connections, upstream ones included. */
  async close(): Promise<void> {
    const { metrics, log } = this.#deps;
    const name = this.#target.service;
    await Promise.all(this.stopRebinding().map((l) => l.close()));
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    this.#pool.destroy();
    metrics.bound.remove({ service: name });
    metrics.connections.remove({ service: name });
    log.info("service unbound", { service: name });
  }
}
