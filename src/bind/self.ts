/**
 * The bind's self-metrics service (`self` in bind.yaml): its own metrics on `/metrics` of an overlay service bound
 * by edge identity, behind its own allow-list and a small fixed connection cap. A reload changes the allow-list in
 * place; a new service name, or `self` added or removed, re-binds or unbinds it.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "../common/log.js";
import type { BindOverlay, OverlayConnection, OverlayListener } from "../overlay/types.js";
import { callerOf, slotTable, trackExchanges, type Admission } from "./admission.js";
import type { BindConfig } from "./config.js";
import { ConnGuard, type ConnLimits } from "./guard.js";
import type { BindMetrics } from "./metrics.js";
import { clientError, send } from "./respond.js";

/** Limits of the self-metrics service (not configurable; it answers one small page). */
const SELF_LIMITS: ConnLimits = { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000, idleTimeoutMs: 300_000 };
const SELF_MAX_CONNECTIONS = 16;

type SelfSpec = NonNullable<BindConfig["self"]>;

/** A bound self service; `spec` is its config as last applied (its allow-list is read per request). */
interface Bound {
  spec: SelfSpec;
  listener?: OverlayListener;
  server: http.Server;
  conns: Set<OverlayConnection>;
}

export interface SelfDeps {
  ctx: BindOverlay;
  metrics: BindMetrics;
  log: Logger;
  admission: Admission;
}

export class SelfService {
  readonly #deps: SelfDeps;
  #current: Bound | undefined;
  /** start() has run (until then a reload leaves `self` to it). */
  #started = false;

  constructor(deps: SelfDeps) {
    this.#deps = deps;
  }

  /** Its terminator, if bound (a graceful stop closes it with the targets'). */
  get listener(): OverlayListener | undefined {
    return this.#current?.listener;
  }

  /** Binds `self` (nothing when it is not configured). A failure is logged; the targets serve regardless. */
  async start(self: BindConfig["self"]): Promise<void> {
    this.#started = true;
    if (!self) return;
    const { ctx, metrics, log, admission } = this.#deps;
    const server = http.createServer((req, res) => {
      // As last applied (a reload changes the allow-list in place).
      const spec = this.#current?.server === server ? this.#current.spec : self;
      const who = callerOf(req.socket, spec.service, spec.allow);
      if (who.refusal) return send(res, 403, who.refusal);
      if ((req.url ?? "").split("?")[0] !== "/metrics")
        return send(res, 404, `scrapez bind: only /metrics on "${self.service}"`);
      metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": metrics.registry.contentType });
          res.end(text);
        },
        (err: Error) => send(res, 500, err.message),
      );
    });
    server.keepAliveTimeout = 0;
    server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => clientError(err, socket));
    const guard = new ConnGuard(
      server,
      () => SELF_LIMITS,
      (kind) => admission.expired(self.service, kind),
      () => `service "${self.service}"`,
    );
    const conns = new Set<OverlayConnection>();
    const slots = slotTable(SELF_MAX_CONNECTIONS);
    trackExchanges(server, slots);
    const current: Bound = { spec: self, server, conns };
    this.#current = current;
    try {
      current.listener = await ctx.listen(self.service, { bindUsingEdgeIdentity: true });
      current.listener.on("connection", (c: OverlayConnection) => {
        c.on("error", () => c.destroy());
        const spec = this.#current?.server === server ? this.#current.spec : self;
        if (!admission.admit(slots, spec.service, spec.allow, c)) return;
        conns.add(c);
        c.once("close", () => {
          slots.release(c);
          conns.delete(c);
        });
        server.emit("connection", c);
        guard.add(c);
      });
      log.info("self-metrics bound", { service: self.service });
    } catch (err) {
      log.error("self-metrics service not bound", { service: self.service, reason: (err as Error).message });
    }
  }

  /** Applies a reloaded `self`; what changed, if anything. */
  async apply(next: BindConfig["self"]): Promise<"added" | "removed" | "changed" | undefined> {
    if (!this.#started) return undefined; // start() has not run yet: it will use the config as it is then
    const cur = this.#current?.spec;
    if (JSON.stringify(cur) === JSON.stringify(next)) return undefined;
    if (cur && next && cur.service === next.service) {
      this.#current!.spec = next; // the allow-list: read per request
      return "changed";
    }
    await this.stop();
    await this.start(next);
    return !next ? "removed" : !cur ? "added" : "changed";
  }

  /** Closes its overlay connections (a graceful stop: the self service has nothing worth waiting for). */
  destroyConnections(): void {
    for (const c of this.#current?.conns ?? []) c.destroy();
  }

  /** Unbinds it and closes its connections. */
  async stop(): Promise<void> {
    const s = this.#current;
    this.#current = undefined;
    if (!s) return;
    await s.listener?.close();
    s.server.close();
    for (const c of s.conns) c.destroy();
    this.#deps.log.info("self-metrics unbound", { service: s.spec.service });
  }

  /** At close: its terminator closed and its connections destroyed (the server is left to the process's end). */
  async close(): Promise<void> {
    await this.#current?.listener?.close();
    // A server that never listens does not track its connections (closeAllConnections would do nothing).
    this.destroyConnections();
  }
}
