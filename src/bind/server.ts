/**
 * The bind side: each target's Ziti service is bound on the overlay and every overlay connection is handed to an
 * http.Server that never listens; allowed requests are forwarded to the upstream exporter with http-proxy.
 * Nothing here opens a listening socket.
 *
 * Its metrics are in ./metrics.ts, how it answers (checks of the upstream response, its own one-line answers) in
 * ./respond.ts. Size: over 350 lines because one class holds each target's life cycle (bind, re-bind, reload,
 * drain) and its request handler, which share the per-target runtime state; splitting the handler out would mean
 * passing that state across files.
 */
import http from "node:http";
import net from "node:net";
import https from "node:https";
import { readFileSync } from "node:fs";
import type { Duplex } from "node:stream";
import type { Logger } from "../common/log.js";
import type { BindOverlay, OverlayConnection, OverlayListenOptions, OverlayListener } from "../overlay/types.js";
import { Forward, upstreamHeaders } from "../common/forward.js";
import { SCRAPE_TIMEOUT_HEADER } from "../common/deadline.js";
import { Backoff } from "./backoff.js";
import { resolveCaller, type Caller } from "./caller.js";
import { pathAllowed, type BindAllow, type BindConfig, type BindTarget } from "./config.js";
import { ConnGuard, type ConnLimits, type Expiry } from "./guard.js";
import { normalizeRequestTarget } from "./paths.js";
import { checkReloadable } from "./reload.js";
import { BindMetrics, statusLabel } from "./metrics.js";
import { SlotTable, callerGroup, type SlotCaller } from "./slots.js";
import { audit, clientError, forwardFailure, send, upstreamTimeoutMs } from "./respond.js";

export { BindMetrics, statusLabel } from "./metrics.js";
export { invalidResponse, upstreamTimeoutMs } from "./respond.js";

export type { BindOverlay } from "../overlay/types.js";

/** Limits of the self-metrics service (not configurable; it answers one small page). */
const SELF_LIMITS: ConnLimits = { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000, idleTimeoutMs: 300_000 };
const SELF_MAX_CONNECTIONS = 16;

function limitsOf(t: BindTarget): ConnLimits {
  return {
    headersTimeoutMs: t.headersTimeoutSeconds * 1000,
    requestTimeoutMs: t.requestTimeoutSeconds * 1000,
    idleTimeoutMs: t.idleTimeoutSeconds * 1000,
  };
}

export type ServiceState = "binding" | "bound" | "rebinding" | "failed";

/**
 * A service's slot table. A connection whose exchange is over on our side (we ended our writing side, or destroyed
 * it) gives its slot back at once, though the SDK may wait for its circuit's last acknowledgements before 'close'.
 */
function slotTable(cap: number): SlotTable<OverlayConnection> {
  return new SlotTable<OverlayConnection>({ cap, isDone: (c) => c.destroyed || c.writableEnded });
}

/** Tells the slot table when a request head is complete (the server's 'request') and when its exchange ends. */
function trackExchanges(server: http.Server, slots: SlotTable<OverlayConnection>): void {
  server.prependListener("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const c = req.socket as unknown as OverlayConnection;
    slots.requestStarted(c);
    res.once("close", () => slots.requestEnded(c));
  });
}

interface Runtime {
  target: BindTarget;
  key: string;
  /** The shared terminator, plus (bindUsingEdgeIdentity) one addressable as `<identity>@<service>`. */
  listeners: OverlayListener[];
  server: http.Server;
  /** Overlay connections handed to the server (a server that never listens does not track them itself). */
  conns: Set<OverlayConnection>;
  /** Which of them hold one of the target's maxConnections slots, and who gives way when it is full (./slots.ts). */
  slots: SlotTable<OverlayConnection>;
  /** The exporter's keep-alive connections. */
  agent: http.Agent;
  /** Header, request and idle deadlines of its overlay connections. */
  guard: ConnGuard;
  state: ServiceState;
  lastError?: string | undefined;
  retry?: NodeJS.Timeout | undefined;
  /** Delays between attempts to bind after a failure. */
  backoff: Backoff;
  closed: boolean;
}

export class BindServer {
  readonly metrics = new BindMetrics();
  readonly #ctx: BindOverlay;
  readonly #log: Logger;
  #config: BindConfig;
  readonly #runtimes = new Map<string, Runtime>();
  /** When the over-cap warning was last logged, per service. */
  readonly #capLogged = new Map<string, number>();
  /** The self-metrics service; `spec` is its config as last applied (its allow-list is read per request). */
  #self:
    | {
        spec: NonNullable<BindConfig["self"]>;
        listener?: OverlayListener;
        server: http.Server;
        conns: Set<OverlayConnection>;
      }
    | undefined;
  /** start() has reached the self-metrics service (until then a reload leaves `self` to it). */
  #selfStarted = false;
  #onChange: () => void = () => undefined;
  /** Requests being answered and passthrough pipes open, with the overlay connection each uses (graceful stop). */
  readonly #inFlight = new Map<object, Duplex>();
  /** Requests in flight per overlay connection: a connection with none is idle. */
  readonly #busy = new WeakMap<Duplex, number>();
  /** Set by drain(): no new connections or requests; in-flight ones finish, then their connection closes. */
  #draining = false;
  #drainCheck: (() => void) | undefined;

  constructor(ctx: BindOverlay, config: BindConfig, log: Logger) {
    this.#ctx = ctx;
    this.#config = config;
    this.#log = log;
    this.metrics.certSource = ctx;
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
    await this.#startSelf();
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
        if (onlyAllowDiffers(t, rt.target)) this.#reallow(rt, t);
        else rebind.push(name);
      }
    }
    for (const t of next.targets) if (!this.#runtimes.has(t.service)) added.push(t.service);
    this.#config = next;
    for (const name of [...removed, ...rebind]) await this.#remove(name);
    await Promise.all([...rebind, ...added].map((n) => this.#add(nextByName.get(n)!)));
    const self = await this.#applySelf(next.self);
    this.#onChange();
    return { added, removed, changed, ...(self ? { self } : {}) };
  }

  /** A new allow-list for a bound target, in place (see apply). */
  #reallow(rt: Runtime, t: BindTarget): void {
    rt.target = t;
    rt.key = JSON.stringify(t);
    // HTTP: #handle checks each request against rt.target.allow. A passthrough pipe was checked once, at its start.
    if (!t.passthrough) return;
    for (const c of rt.conns) {
      const who = this.#callerOf(c, t.service, t.allow);
      if (!who.refusal) continue;
      this.#log.info("connection closed: the reloaded allow-list no longer admits its caller", {
        ...audit(who),
        service: t.service,
      });
      c.destroy();
    }
  }

  /** Applies a reloaded `self` (see apply); what changed, if anything. */
  async #applySelf(next: BindConfig["self"]): Promise<"added" | "removed" | "changed" | undefined> {
    if (!this.#selfStarted) return undefined; // start() has not reached it yet: it will use this.#config.self
    const cur = this.#self?.spec;
    if (JSON.stringify(cur) === JSON.stringify(next)) return undefined;
    if (cur && next && cur.service === next.service) {
      this.#self!.spec = next; // the allow-list: read per request
      return "changed";
    }
    await this.#stopSelf();
    await this.#startSelf();
    return !next ? "removed" : !cur ? "added" : "changed";
  }

  async #stopSelf(): Promise<void> {
    const s = this.#self;
    this.#self = undefined;
    if (!s) return;
    await s.listener?.close();
    s.server.close();
    for (const c of s.conns) c.destroy();
    this.#log.info("self-metrics unbound", { service: s.spec.service });
  }

  async #add(target: BindTarget): Promise<void> {
    const agentOpts = { keepAlive: true, maxSockets: 4, keepAliveMsecs: 30_000 };
    const agent = target.upstream.startsWith("https:")
      ? new https.Agent({
          ...agentOpts,
          ...(target.tls?.ca ? { ca: readFileSync(target.tls.ca) } : {}),
          ...(target.tls?.cert ? { cert: readFileSync(target.tls.cert), key: readFileSync(target.tls.key!) } : {}),
          rejectUnauthorized: !target.tls?.insecureSkipVerify,
        })
      : new http.Agent(agentOpts);
    // Node's keep-alive timer is off: a server that never listens arms none of its timeouts reliably; ConnGuard does.
    const server = http.createServer({ keepAliveTimeout: 0 });
    const rt: Runtime = {
      target,
      key: JSON.stringify(target),
      listeners: [],
      conns: new Set(),
      slots: slotTable(target.maxConnections),
      server,
      agent,
      guard: new ConnGuard(
        server,
        () => limitsOf(rt.target),
        (kind) => this.#expired(rt.target.service, kind),
        () => `service "${rt.target.service}"`,
      ),
      state: "binding",
      backoff: new Backoff(),
      closed: false,
    };
    trackExchanges(server, rt.slots);
    rt.server.on("request", (req, res) => this.#handle(rt, req, res));
    rt.server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => clientError(err, socket));
    this.#runtimes.set(target.service, rt);
    this.metrics.bound.set({ service: target.service }, 0);
    await this.#bind(rt);
  }

  async #bind(rt: Runtime): Promise<void> {
    const t = rt.target;
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
        for (const v of variants) listeners.push(await this.#ctx.listen(t.service, v));
      } catch (err) {
        await Promise.all(listeners.map((l) => l.close()));
        throw err;
      }
      if (rt.closed) {
        await Promise.all(listeners.map((l) => l.close()));
        return;
      }
      rt.listeners = listeners;
      rt.backoff.reset();
      for (const l of listeners) {
        l.on("connection", (c: OverlayConnection) => {
          c.on("error", () => c.destroy());
          if (this.#draining) return void c.destroy();
          // rt.target, not t: a reload may have replaced the allow-list in place.
          if (!this.#admit(rt.slots, t.service, rt.target.allow, c)) return;
          // A passthrough pipe has no request head to wait for: it counts as busy for as long as it is open.
          if (t.passthrough) rt.slots.requestStarted(c);
          rt.conns.add(c);
          this.metrics.connections.set({ service: t.service }, rt.conns.size);
          c.once("close", () => {
            rt.slots.release(c);
            rt.conns.delete(c);
            if (!rt.closed) this.metrics.connections.set({ service: t.service }, rt.conns.size);
          });
          if (t.passthrough) return this.#passthrough(rt, c);
          rt.server.emit("connection", c);
          rt.guard.add(c);
        });
        l.on("unbound", (reason: string) => this.#setState(rt, "rebinding", reason));
        l.on("bound", () => {
          if (!listeners.every((x) => x.state === "bound")) return;
          if (rt.state === "rebinding") this.metrics.rebinds.inc({ service: t.service });
          this.#setState(rt, "bound");
        });
      }
      this.#setState(rt, "bound");
    } catch (err) {
      const msg = (err as Error).message;
      if (rt.closed) return;
      const delay = rt.backoff.next();
      this.#log.error(`service not bound; retrying in ${(delay / 1000).toFixed(1)}s`, {
        service: t.service,
        reason: msg,
        retry_in_ms: delay,
        next_try: new Date(Date.now() + delay).toISOString(),
      });
      this.#setState(rt, "failed", msg);
      rt.retry = setTimeout(() => void this.#bind(rt), delay);
      rt.retry.unref();
    }
  }

  #setState(rt: Runtime, state: ServiceState, reason?: string): void {
    if (rt.state === state && rt.lastError === reason) return;
    rt.state = state;
    rt.lastError = reason;
    this.metrics.bound.set({ service: rt.target.service }, state === "bound" ? 1 : 0);
    const fields = { service: rt.target.service, state, ...(reason ? { reason } : {}) };
    // A failure is logged where it happens, with when the next attempt is.
    if (state !== "failed") this.#log.info(`service ${state}`, fields);
    this.#onChange();
  }

  /**
   * Gives a new connection one of the service's slots (./slots.ts), destroying the connection it displaces if the
   * service was full. False: every slot is busy or fairly held; the connection was closed at once and counted.
   * Evictions and refusals are logged at most once per 10 s per service each.
   */
  #admit(slots: SlotTable<OverlayConnection>, service: string, allow: BindAllow | undefined, c: OverlayConnection) {
    const caller: SlotCaller = {
      group: callerGroup({ key: c.callerKey, routerName: c.dialerIdentityName }),
      admitted: !resolveCaller(service, allow, {
        claimed: c.callerId,
        routerName: c.dialerIdentityName,
        key: c.callerKey,
        proofError: c.callerProofError,
      }).refusal,
    };
    const a = slots.admit(c, caller);
    if (!a.ok) {
      c.destroy();
      this.metrics.connectionsRefused.inc({ service });
      this.#rareLog(`refused ${service}`, "connection refused: every connection slot of this service is busy", {
        service,
      });
      return false;
    }
    if (a.evicted) {
      a.evicted.conn.destroy();
      this.metrics.connectionsEvicted.inc({ service, reason: a.evicted.reason });
      this.#rareLog(`evicted ${service}`, "connection evicted to make room for a new one", {
        service,
        reason: a.evicted.reason,
        group: caller.group,
      });
    }
    return true;
  }

  #rareLog(key: string, msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    if ((this.#capLogged.get(key) ?? 0) + 10_000 <= now) {
      this.#capLogged.set(key, now);
      this.#log.warn(msg, fields);
    }
  }

  #expired(service: string, kind: Expiry): void {
    this.metrics.connectionsExpired.inc({ service, reason: kind });
    if (kind !== "idle_timeout") this.#log.info("connection closed", { service, reason: kind });
  }

  async #remove(name: string): Promise<void> {
    const rt = this.#runtimes.get(name);
    if (!rt) return;
    this.#runtimes.delete(name);
    rt.closed = true;
    clearTimeout(rt.retry);
    await Promise.all(rt.listeners.map((l) => l.close()));
    rt.server.close();
    for (const c of rt.conns) c.destroy();
    rt.conns.clear();
    rt.agent.destroy();
    this.metrics.bound.remove({ service: name });
    this.metrics.connections.remove({ service: name });
    this.#log.info("service unbound", { service: name });
  }

  /** Raw byte pipe to the upstream (the scraper's TLS runs end to end); the caller allow-list still applies. */
  #passthrough(rt: Runtime, c: OverlayConnection): void {
    const t = rt.target;
    const who = this.#callerOf(c, t.service, t.allow);
    const caller = who.caller;
    const started = Date.now();
    if (who.refusal) {
      this.#log.info("connection refused", { ...audit(who), service: t.service, reason: who.refusal });
      this.metrics.scrapes.inc({ service: t.service, caller: who.label, status: "403" });
      c.destroy();
      return;
    }
    this.#track(c, c);
    const u = new URL(t.upstream);
    const up = net.connect({ host: u.hostname, port: Number(u.port || (u.protocol === "https:" ? 443 : 80)) });
    up.setTimeout(t.timeoutSeconds * 1000, () => up.destroy(new Error("idle timeout")));
    up.on("error", (err: NodeJS.ErrnoException) => {
      this.metrics.upstreamErrors.inc({ service: t.service, kind: err.code === "ECONNREFUSED" ? "refused" : "other" });
      this.#log.warn("passthrough upstream error", { caller, service: t.service, reason: err.message });
      c.destroy();
    });
    c.pipe(up);
    up.pipe(c);
    c.once("close", () => up.destroy());
    up.once("close", () => {
      c.destroy();
      this.metrics.scrapes.inc({ service: t.service, caller: who.label, status: "tunnel" });
      this.#log.info("scrape", {
        ...audit(who),
        service: t.service,
        mode: "passthrough",
        bytes: c.bytesWritten,
        duration_ms: Date.now() - started,
      });
    });
  }

  /** Counts `key` (a response, or a passthrough connection) as in flight on `conn` until it closes. */
  #track(key: http.ServerResponse | Duplex, conn: Duplex): void {
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

  #handle(rt: Runtime, req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.#draining) {
      // A new request on a connection that was busy when the stop began: refused, and the connection closed.
      res.shouldKeepAlive = false;
      return send(res, 503, `scrapez bind: service "${rt.target.service}": shutting down`);
    }
    this.#track(res, req.socket);
    const started = process.hrtime.bigint();
    const t = rt.target;
    const who = this.#callerOf(req.socket, t.service, t.allow);
    const rawUrl = req.url ?? "/";
    const target = normalizeRequestTarget(rawUrl);
    const path = target.ok ? target.path : rawUrl.split("?")[0]!;
    let bytes = 0;
    let upstreamErrorKind: string | undefined;
    res.once("close", () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const status = res.statusCode;
      this.metrics.scrapes.inc({ service: t.service, caller: who.label, status: statusLabel(status) });
      this.metrics.duration.observe({ service: t.service }, seconds);
      if (upstreamErrorKind) this.metrics.upstreamErrors.inc({ service: t.service, kind: upstreamErrorKind });
      this.#log.info("scrape", {
        ...audit(who),
        service: t.service,
        method: req.method,
        path,
        ...(rawUrl.split("?")[0] !== path ? { raw_path: rawUrl.split("?")[0] } : {}),
        ...(target.ok ? {} : { path_refused: target.reason }),
        status,
        bytes,
        duration_ms: Math.round(seconds * 1000),
      });
    });
    if (who.refusal) return send(res, 403, who.refusal);
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(res, 405, `scrapez bind: service "${t.service}" answers only GET and HEAD, not ${req.method}`);
    }
    if (!target.ok) {
      return send(res, 400, `scrapez bind: service "${t.service}": ambiguous request path: ${target.reason}`);
    }
    // What was checked is what is fetched: the exporter gets the normalized path, never the raw one.
    const upstreamPath = target.path + target.query;
    if (!pathAllowed(t.paths, path)) {
      return send(
        res,
        404,
        `scrapez bind: service "${t.service}" does not expose ${path} (allowed: ${t.paths.join(", ")})`,
      );
    }
    const timeoutMs = upstreamTimeoutMs(req.headers[SCRAPE_TIMEOUT_HEADER], t.timeoutSeconds, t.maxTimeoutSeconds);
    const u = new URL(t.upstream);
    const tls = u.protocol === "https:";
    const headers = upstreamHeaders(req.headers, u.host);
    const forward = new Forward(
      req,
      res,
      { deadlineMs: timeoutMs, abandon: "destroy", log: this.#log },
      {
        open: () =>
          (tls ? https : http).request({
            agent: rt.agent,
            hostname: u.hostname.replace(/^\[(.*)\]$/, "$1"),
            port: Number(u.port || (tls ? 443 : 80)),
            path: upstreamPath,
            method: req.method,
            headers,
          }),
        fail: (f) => {
          const out = forwardFailure(f, t, timeoutMs);
          if (out.kind) upstreamErrorKind = out.kind;
          send(res, out.status, out.text);
        },
        passing: (ur) => ur.on("data", (d: Buffer) => (bytes += d.length)),
        cut: () => void (upstreamErrorKind = "timeout"),
      },
    );
    forward.start();
  }

  /**
   * Who is calling on an overlay connection, from what the SDK verified (never from the self-declared CallerId),
   * and whether `allow` admits it. Sets the connection's `verifiedCaller` to the admitted name.
   */
  #callerOf(socket: unknown, service: string, allow: BindAllow | undefined): Caller {
    const c = socket as Partial<OverlayConnection>;
    const who = resolveCaller(service, allow, {
      claimed: c.callerId,
      routerName: c.dialerIdentityName,
      key: c.callerKey,
      proofError: c.callerProofError,
    });
    if (who.name) (socket as OverlayConnection).verifiedCaller = who.name;
    return who;
  }

  async #startSelf(): Promise<void> {
    this.#selfStarted = true;
    const self = this.#config.self;
    if (!self) return;
    const server = http.createServer((req, res) => {
      // As last applied (a reload changes the allow-list in place).
      const spec = this.#self?.server === server ? this.#self.spec : self;
      const who = this.#callerOf(req.socket, spec.service, spec.allow);
      if (who.refusal) return send(res, 403, who.refusal);
      if ((req.url ?? "").split("?")[0] !== "/metrics")
        return send(res, 404, `scrapez bind: only /metrics on "${self.service}"`);
      this.metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": this.metrics.registry.contentType });
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
      (kind) => this.#expired(self.service, kind),
      () => `service "${self.service}"`,
    );
    const conns = new Set<OverlayConnection>();
    const slots = slotTable(SELF_MAX_CONNECTIONS);
    trackExchanges(server, slots);
    this.#self = { spec: self, server, conns };
    try {
      this.#self.listener = await this.#ctx.listen(self.service, { bindUsingEdgeIdentity: true });
      this.#self.listener.on("connection", (c: OverlayConnection) => {
        c.on("error", () => c.destroy());
        const spec = this.#self?.server === server ? this.#self.spec : self;
        if (!this.#admit(slots, spec.service, spec.allow, c)) return;
        conns.add(c);
        c.once("close", () => {
          slots.release(c);
          conns.delete(c);
        });
        server.emit("connection", c);
        guard.add(c);
      });
      this.#log.info("self-metrics bound", { service: self.service });
    } catch (err) {
      this.#log.error("self-metrics service not bound", { service: self.service, reason: (err as Error).message });
    }
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
    const listeners = [...this.#runtimes.values()].flatMap((rt) => {
      clearTimeout(rt.retry);
      rt.closed = true; // no rebinding from here on
      return rt.listeners;
    });
    if (this.#self?.listener) listeners.push(this.#self.listener);
    await Promise.allSettled(listeners.map((l) => l.close()));
    for (const rt of this.#runtimes.values()) {
      for (const c of rt.conns) if (!this.#busy.get(c)) c.destroy();
    }
    for (const c of this.#self?.conns ?? []) c.destroy();
    for (const res of this.#inFlight.keys()) {
      if (res instanceof http.ServerResponse && !res.headersSent) res.shouldKeepAlive = false;
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
    await this.#self?.listener?.close();
    // A server that never listens does not track its connections (closeAllConnections would do nothing).
    for (const c of this.#self?.conns ?? []) c.destroy();
  }
}

/** Whether two configs of one target differ in `allow` only (a change that applies without re-binding). */
function onlyAllowDiffers(a: BindTarget, b: BindTarget): boolean {
  const { allow: _a, ...ra } = a;
  const { allow: _b, ...rb } = b;
  return JSON.stringify(ra) === JSON.stringify(rb);
}
