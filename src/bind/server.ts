/**
 * The bind side: each target's Ziti service is bound on the overlay and every overlay connection is handed to an
 * http.Server that never listens; allowed requests are forwarded to the upstream exporter with http-proxy.
 * Nothing here opens a listening socket.
 */
import http from "node:http";
import net from "node:net";
import https from "node:https";
import { readFileSync } from "node:fs";
import httpProxy from "http-proxy";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Logger } from "../cli/log.js";
import type { ListenOptions, ZitiConnection, ZitiListener } from "../ziti/index.js";
import { resolveCaller, type Caller } from "./caller.js";
import { pathAllowed, type BindAllow, type BindConfig, type BindTarget } from "./config.js";

/** What the bind side needs from the overlay; ZitiContext provides it. */
export interface BindOverlay {
  readonly identityName: string;
  listen(service: string, opts?: ListenOptions): Promise<ZitiListener>;
}

export class BindMetrics {
  readonly registry = new Registry();
  readonly scrapes = new Counter({
    name: "scrapez_bind_scrapes_total",
    help: "Scrapes answered, by service, caller identity and HTTP status.",
    labelNames: ["service", "caller", "status"] as const,
    registers: [this.registry],
  });
  readonly duration = new Histogram({
    name: "scrapez_bind_scrape_duration_seconds",
    help: "Time from request to the end of the response, by service.",
    labelNames: ["service"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly upstreamErrors = new Counter({
    name: "scrapez_bind_upstream_errors_total",
    help: "Failed upstream requests, by service and kind (refused, timeout, other).",
    labelNames: ["service", "kind"] as const,
    registers: [this.registry],
  });
  readonly bound = new Gauge({
    name: "scrapez_bind_bound",
    help: "1 while the service is bound on at least one edge router.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
  readonly rebinds = new Counter({
    name: "scrapez_bind_rebinds_total",
    help: "Times a service was bound again after losing every edge router.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
}

export type ServiceState = "binding" | "bound" | "rebinding" | "failed";

interface Runtime {
  target: BindTarget;
  key: string;
  /** The shared terminator, plus (bindUsingEdgeIdentity) one addressable as `<identity>@<service>`. */
  listeners: ZitiListener[];
  server: http.Server;
  /** Overlay connections handed to the server (a server that never listens does not track them itself). */
  conns: Set<ZitiConnection>;
  proxy: httpProxy;
  agent: http.Agent;
  /** The upstream request and response body size of each incoming request. */
  upstream: WeakMap<http.IncomingMessage, { req?: http.ClientRequest; bytes: number }>;
  state: ServiceState;
  lastError?: string | undefined;
  retry?: NodeJS.Timeout | undefined;
  closed: boolean;
}

const SCRAPE_TIMEOUT_HEADER = "x-prometheus-scrape-timeout-seconds";

/** Seconds to allow the upstream: a bit less than Prometheus's own timeout, so our 504 reaches it first. */
export function upstreamTimeoutMs(header: string | string[] | undefined, fallbackSeconds: number): number {
  const v = Number(Array.isArray(header) ? header[0] : header);
  if (!Number.isFinite(v) || v <= 0) return fallbackSeconds * 1000;
  const s = Math.min(v, 600);
  return Math.round(Math.max(s - 0.5, s * 0.5) * 1000);
}

function send(res: http.ServerResponse, status: number, text: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = text.replace(/\s+/g, " ").trim() + "\n";
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/** The audit fields for a caller: verified name (or "unverified"), the self-declared name, and how verified. */
function audit(who: Caller): Record<string, unknown> {
  return { caller: who.caller, claimed: who.claimed, verified_by: who.verifiedBy };
}

export class BindServer {
  readonly metrics = new BindMetrics();
  readonly #ctx: BindOverlay;
  readonly #log: Logger;
  #config: BindConfig;
  readonly #runtimes = new Map<string, Runtime>();
  #self: { listener?: ZitiListener; server: http.Server } | undefined;
  #onChange: () => void = () => undefined;

  constructor(ctx: BindOverlay, config: BindConfig, log: Logger) {
    this.#ctx = ctx;
    this.#config = config;
    this.#log = log;
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
    for (const [name, rt] of this.#runtimes)
      services[name] = { state: rt.state, ...(rt.lastError ? { lastError: rt.lastError } : {}) };
    const ready = [...this.#runtimes.values()].every((r) => r.state === "bound");
    return { ready, services };
  }

  /** Applies a new config: added targets bound, removed unbound, changed re-bound, unchanged untouched. */
  async apply(next: BindConfig): Promise<{ added: string[]; removed: string[]; changed: string[] }> {
    if (next.identity !== this.#config.identity) {
      throw new Error("identity changed: restart scrapez bind to use a different identity");
    }
    const nextByName = new Map(next.targets.map((t) => [t.service, t]));
    const added: string[] = [];
    const removed: string[] = [];
    const changed: string[] = [];
    for (const [name, rt] of this.#runtimes) {
      const t = nextByName.get(name);
      if (!t) removed.push(name);
      else if (JSON.stringify(t) !== rt.key) changed.push(name);
    }
    for (const t of next.targets) if (!this.#runtimes.has(t.service)) added.push(t.service);
    this.#config = next;
    for (const name of [...removed, ...changed]) await this.#remove(name);
    await Promise.all([...changed, ...added].map((n) => this.#add(nextByName.get(n)!)));
    this.#onChange();
    return { added, removed, changed };
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
    const proxy = httpProxy.createProxyServer({ target: target.upstream, agent, changeOrigin: true, xfwd: false });
    const rt: Runtime = {
      target,
      key: JSON.stringify(target),
      listeners: [],
      conns: new Set(),
      server: http.createServer({ keepAliveTimeout: 60_000 }),
      proxy,
      agent,
      upstream: new WeakMap(),
      state: "binding",
      closed: false,
    };
    proxy.on("proxyReq", (pr: http.ClientRequest, req: http.IncomingMessage) => {
      const u = rt.upstream.get(req);
      if (u) u.req = pr;
    });
    proxy.on("proxyRes", (pres: http.IncomingMessage, req: http.IncomingMessage) => {
      const u = rt.upstream.get(req);
      if (u) pres.on("data", (d: Buffer) => (u.bytes += d.length));
    });
    rt.server.on("request", (req, res) => this.#handle(rt, req, res));
    rt.server.on("clientError", (_err, socket) => socket.destroy());
    this.#runtimes.set(target.service, rt);
    this.metrics.bound.set({ service: target.service }, 0);
    await this.#bind(rt);
  }

  async #bind(rt: Runtime): Promise<void> {
    const t = rt.target;
    const base: ListenOptions = {
      ...(t.cost !== undefined ? { cost: t.cost } : {}),
      ...(t.precedence ? { precedence: t.precedence } : {}),
    };
    // OpenZiti routes a dial without an instance id only to terminators without one, so an addressable
    // replica needs both: the shared terminator and one bound with its edge identity.
    const variants: ListenOptions[] = t.bindUsingEdgeIdentity
      ? [base, { ...base, bindUsingEdgeIdentity: true }]
      : [base];
    try {
      const listeners: ZitiListener[] = [];
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
      for (const l of listeners) {
        l.on("connection", (c: ZitiConnection) => {
          c.on("error", () => c.destroy());
          rt.conns.add(c);
          c.once("close", () => rt.conns.delete(c));
          if (t.passthrough) this.#passthrough(rt, c);
          else rt.server.emit("connection", c);
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
      this.#setState(rt, "failed", msg);
      if (!rt.closed) {
        rt.retry = setTimeout(() => void this.#bind(rt), 5_000);
        rt.retry.unref();
      }
    }
  }

  #setState(rt: Runtime, state: ServiceState, reason?: string): void {
    if (rt.state === state && rt.lastError === reason) return;
    rt.state = state;
    rt.lastError = reason;
    this.metrics.bound.set({ service: rt.target.service }, state === "bound" ? 1 : 0);
    const fields = { service: rt.target.service, state, ...(reason ? { reason } : {}) };
    if (state === "failed") this.#log.error("service not bound; retrying in 5s", fields);
    else this.#log.info(`service ${state}`, fields);
    this.#onChange();
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
    rt.proxy.close();
    rt.agent.destroy();
    this.metrics.bound.remove({ service: name });
    this.#log.info("service unbound", { service: name });
  }

  /** Raw byte pipe to the upstream (the scraper's TLS runs end to end); the caller allow-list still applies. */
  #passthrough(rt: Runtime, c: ZitiConnection): void {
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

  #handle(rt: Runtime, req: http.IncomingMessage, res: http.ServerResponse): void {
    const started = process.hrtime.bigint();
    const t = rt.target;
    const who = this.#callerOf(req.socket, t.service, t.allow);
    const path = (req.url ?? "/").split("?")[0]!;
    const up = { bytes: 0 } as { req?: http.ClientRequest; bytes: number };
    rt.upstream.set(req, up);
    let upstreamErrorKind: string | undefined;
    res.once("close", () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const status = res.statusCode;
      this.metrics.scrapes.inc({ service: t.service, caller: who.label, status: String(status) });
      this.metrics.duration.observe({ service: t.service }, seconds);
      if (upstreamErrorKind) this.metrics.upstreamErrors.inc({ service: t.service, kind: upstreamErrorKind });
      this.#log.info("scrape", {
        ...audit(who),
        service: t.service,
        method: req.method,
        path,
        status,
        bytes: up.bytes,
        duration_ms: Math.round(seconds * 1000),
      });
    });
    if (who.refusal) return send(res, 403, who.refusal);
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(res, 405, `scrapez bind: service "${t.service}" answers only GET and HEAD, not ${req.method}`);
    }
    if (!pathAllowed(t.paths, path)) {
      return send(
        res,
        404,
        `scrapez bind: service "${t.service}" does not expose ${path} (allowed: ${t.paths.join(", ")})`,
      );
    }
    const timeoutMs = upstreamTimeoutMs(req.headers[SCRAPE_TIMEOUT_HEADER], t.timeoutSeconds);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      upstreamErrorKind = "timeout";
      send(
        res,
        504,
        `scrapez bind: service "${t.service}": upstream ${t.upstream} did not answer within ${(timeoutMs / 1000).toFixed(1)}s`,
      );
      up.req?.destroy();
    }, timeoutMs);
    res.once("close", () => clearTimeout(timer));
    let retried = false;
    const forward = () =>
      rt.proxy.web(req, res, {}, (err: NodeJS.ErrnoException) => {
        if (timedOut) return;
        const code = err.code ?? "error";
        // A pooled keep-alive connection the exporter had already closed: GET/HEAD are safe to send once more
        // on a fresh connection, which then tells the real state (answers, or refuses).
        if (code === "ECONNRESET" && up.req?.reusedSocket && !retried && !res.headersSent) {
          retried = true;
          up.req = undefined;
          return void forward();
        }
        clearTimeout(timer);
        upstreamErrorKind = code === "ECONNREFUSED" ? "refused" : "other";
        const what =
          code === "ECONNREFUSED"
            ? "refused the connection (is the exporter running?)"
            : code === "ECONNRESET"
              ? "closed the connection"
              : err.message;
        send(res, 502, `scrapez bind: service "${t.service}": upstream ${t.upstream} ${what} (${code})`);
      });
    forward();
  }

  /**
   * Who is calling on an overlay connection, from what the SDK verified (never from the self-declared CallerId),
   * and whether `allow` admits it. Sets the connection's `verifiedCaller` to the admitted name.
   */
  #callerOf(socket: unknown, service: string, allow: BindAllow | undefined): Caller {
    const c = socket as Partial<ZitiConnection>;
    const who = resolveCaller(service, allow, {
      claimed: c.callerId,
      routerName: c.dialerIdentityName,
      key: c.callerKey,
      proofError: c.callerProofError,
    });
    if (who.name) (socket as ZitiConnection).verifiedCaller = who.name;
    return who;
  }

  async #startSelf(): Promise<void> {
    const self = this.#config.self;
    if (!self) return;
    const server = http.createServer((req, res) => {
      const who = this.#callerOf(req.socket, self.service, self.allow);
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
    this.#self = { server };
    try {
      this.#self.listener = await this.#ctx.listen(self.service, { bindUsingEdgeIdentity: true });
      this.#self.listener.on("connection", (c: ZitiConnection) => {
        c.on("error", () => c.destroy());
        server.emit("connection", c);
      });
      this.#log.info("self-metrics bound", { service: self.service });
    } catch (err) {
      this.#log.error("self-metrics service not bound", { service: self.service, reason: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    for (const name of [...this.#runtimes.keys()]) await this.#remove(name);
    await this.#self?.listener?.close();
    this.#self?.server.closeAllConnections();
  }
}
