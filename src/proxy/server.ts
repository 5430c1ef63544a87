/**
 * The dial side: an HTTP proxy a stock Prometheus uses through `proxy_url` (absolute-form requests and CONNECT),
 * plus path mode (`/scrape/<service>/<path>`), HTTP service discovery (`/sd`), health and self-metrics.
 * Only overlay services are reachable: a host that is not a dialable service is refused; nothing is ever
 * forwarded over plain TCP.
 */
import { timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Logger } from "../cli/log.js";
import type { DialOptions, ServiceInfo, ZitiConnection } from "../ziti/index.js";
import type { ProxyConfig } from "./config.js";
import { globMatch, nameToHost, parseTargetHost, targetHost, type TargetName } from "./naming.js";

/** What the proxy needs from an overlay identity; ZitiContext provides it. */
export interface DialOverlay {
  readonly identityName: string;
  services(): Promise<ServiceInfo[]>;
  replicas(service: string): Promise<string[]>;
  dial(service: string, opts?: DialOptions): Promise<ZitiConnection>;
  on(event: "servicesChanged", fn: (s: ServiceInfo[]) => void): unknown;
}

export class ProxyMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "scrapez_proxy_requests_total",
    help: "Requests answered, by overlay service (or endpoint) and HTTP status.",
    labelNames: ["service", "code"] as const,
    registers: [this.registry],
  });
  readonly dials = new Counter({
    name: "scrapez_proxy_dials_total",
    help: "Overlay dials, by service and result (ok or an error code).",
    labelNames: ["service", "result"] as const,
    registers: [this.registry],
  });
  readonly dialDuration = new Histogram({
    name: "scrapez_proxy_dial_duration_seconds",
    help: "Time to dial an overlay service.",
    labelNames: ["service"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly active = new Gauge({
    name: "scrapez_proxy_active_connections",
    help: "Open overlay connections (pooled keep-alive connections and CONNECT tunnels).",
    registers: [this.registry],
  });
  readonly sdTargets = new Gauge({
    name: "scrapez_proxy_sd_targets",
    help: "Targets in the last HTTP service discovery answer.",
    registers: [this.registry],
  });
}

interface SdGroup {
  targets: string[];
  labels: Record<string, string>;
}

interface SdState {
  at: number;
  groups: SdGroup[];
  /** Every dialable service and the identity that dials it (discovery filters do not apply here). */
  byName: Map<string, DialOverlay>;
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** http.Agent whose sockets are overlay dials for one (service, replica) through one identity. */
class OverlayAgent extends http.Agent {
  constructor(
    readonly ctx: DialOverlay,
    readonly target: TargetName,
    readonly metrics: ProxyMetrics,
    opts: http.AgentOptions,
  ) {
    super(opts);
  }

  override createConnection(
    options: http.ClientRequestArgs,
    cb?: (err: Error | null, socket: Duplex) => void,
  ): undefined {
    const started = process.hrtime.bigint();
    const timeoutMs = Number((options as { dialTimeoutMs?: number }).dialTimeoutMs ?? 10_000);
    this.ctx
      .dial(this.target.service, { timeoutMs, ...(this.target.identity ? { identity: this.target.identity } : {}) })
      .then(
        (c) => {
          this.metrics.dials.inc({ service: this.target.service, result: "ok" });
          this.metrics.dialDuration.observe(
            { service: this.target.service },
            Number(process.hrtime.bigint() - started) / 1e9,
          );
          this.metrics.active.inc();
          c.once("close", () => this.metrics.active.dec());
          cb?.(null, c);
        },
        (err: Error & { code?: string }) => {
          this.metrics.dials.inc({ service: this.target.service, result: err.code ?? "error" });
          cb?.(err, undefined as unknown as Duplex);
        },
      );
    return undefined;
  }
}

function same(a: Buffer, b: Buffer | undefined): boolean {
  return b !== undefined && a.length === b.length && timingSafeEqual(a, b);
}

function oneLine(res: http.ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = text.replace(/\s+/g, " ").trim() + "\n";
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    ...extra,
  });
  res.end(body);
}

function scrapeTimeoutMs(req: http.IncomingMessage, fallbackSeconds: number): number {
  const v = Number(req.headers["x-prometheus-scrape-timeout-seconds"]);
  return (Number.isFinite(v) && v > 0 ? Math.min(v, 600) : fallbackSeconds) * 1000;
}

export class ProxyServer {
  readonly metrics = new ProxyMetrics();
  readonly server: http.Server;
  readonly #contexts: DialOverlay[];
  readonly #config: ProxyConfig;
  readonly #log: Logger;
  readonly #agents = new Map<string, OverlayAgent>();
  readonly #bearer: Buffer | undefined;
  readonly #basic: Buffer | undefined;
  #sd: SdState | undefined;
  #sdBuilding: Promise<void> | undefined;
  #ready = false;

  constructor(contexts: DialOverlay[], config: ProxyConfig, log: Logger) {
    this.#contexts = contexts;
    this.#config = config;
    this.#log = log;
    if (config.auth?.bearerTokenFile)
      this.#bearer = Buffer.from(readFileSync(config.auth.bearerTokenFile, "utf8").trim());
    if (config.auth?.basic) {
      const pw = readFileSync(config.auth.basic.passwordFile, "utf8").trim();
      this.#basic = Buffer.from(`${config.auth.basic.username}:${pw}`);
    }
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.#onRequest(req, res);
    this.server = config.tls
      ? https.createServer(
          {
            cert: readFileSync(config.tls.cert),
            key: readFileSync(config.tls.key),
            ...(config.tls.clientCA
              ? { ca: readFileSync(config.tls.clientCA), requestCert: true, rejectUnauthorized: true }
              : {}),
          },
          handler,
        )
      : http.createServer(handler);
    this.server.on("connect", (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.#onConnect(req, socket, head),
    );
    this.server.on("clientError", (_e, socket) => socket.destroy());
    for (const ctx of contexts) ctx.on("servicesChanged", () => (this.#sd = undefined));
  }

  /** Loads the service list, then listens. Resolves to the bound address. */
  async start(): Promise<{ host: string; port: number }> {
    await this.#buildSd();
    this.#ready = true;
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.#config.listenPort, this.#config.listenHost, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    const a = this.server.address() as { address: string; port: number };
    return { host: a.address, port: a.port };
  }

  // --- auth ---------------------------------------------------------------------------------------------------

  /** Checks proxy credentials; returns the header that carried them (to strip before forwarding), or false. */
  #authorized(req: http.IncomingMessage): string | true | false {
    if (!this.#bearer && !this.#basic) return true; // mTLS (if configured) was enforced by the TLS handshake
    for (const h of ["proxy-authorization", "authorization"]) {
      const v = req.headers[h];
      if (typeof v !== "string") continue;
      const m = /^(Bearer|Basic)\s+(.+)$/i.exec(v.trim());
      if (!m) continue;
      const scheme = m[1]!.toLowerCase();
      const given = scheme === "bearer" ? Buffer.from(m[2]!) : Buffer.from(m[2]!, "base64");
      if (scheme === "bearer" ? same(given, this.#bearer) : same(given, this.#basic)) return h;
      // Basic credentials whose password is the bearer token: what Go sends for proxy_url userinfo
      // (http://user:<token>@proxy), the only way a stock Prometheus authenticates a CONNECT.
      if (scheme === "basic" && this.#bearer) {
        const colon = given.indexOf(":");
        if (colon >= 0 && same(given.subarray(colon + 1), this.#bearer)) return h;
      }
    }
    return false;
  }

  #deny(res: http.ServerResponse, label: string): void {
    this.metrics.requests.inc({ service: label, code: "401" });
    const challenge = this.#bearer ? 'Bearer realm="scrapez"' : 'Basic realm="scrapez"';
    oneLine(res, 401, "scrapez proxy: authentication required (bearer token or basic auth)", {
      "www-authenticate": challenge,
      "proxy-authenticate": challenge,
    });
  }

  // --- routing ------------------------------------------------------------------------------------------------

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? "/";
    if (/^https?:\/\//i.test(url)) return void this.#forwardAbsolute(req, res, url);
    const path = url.split("?")[0]!;
    if (path === "/-/healthy") return oneLine(res, 200, "scrapez proxy is healthy");
    if (path === "/-/ready")
      return oneLine(
        res,
        this.#ready ? 200 : 503,
        this.#ready ? "scrapez proxy is ready" : "scrapez proxy is starting",
      );
    const auth = this.#authorized(req);
    if (auth === false) return this.#deny(res, path.startsWith("/scrape/") ? "scrape" : path);
    if (path === "/sd") return void this.#serveSd(req, res);
    if (path === "/metrics") {
      this.metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": this.metrics.registry.contentType });
          res.end(text);
        },
        (err: Error) => oneLine(res, 500, err.message),
      );
      return;
    }
    const m = /^\/scrape\/([^/]+)(\/.*)?$/.exec(url);
    if (m) {
      let host: string;
      try {
        host = decodeURIComponent(m[1]!);
      } catch {
        return oneLine(res, 400, "scrapez proxy: bad service name in path");
      }
      return void this.#forward(req, res, parseTargetHost(host), m[2] ?? "/", auth);
    }
    this.metrics.requests.inc({ service: "(none)", code: "404" });
    oneLine(
      res,
      404,
      `scrapez proxy: no such endpoint ${path} (use proxy_url, /scrape/<service>/<path>, /sd, /metrics)`,
    );
  }

  #forwardAbsolute(req: http.IncomingMessage, res: http.ServerResponse, raw: string): void {
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      return oneLine(res, 400, "scrapez proxy: malformed request URL");
    }
    if (u.protocol !== "http:") return oneLine(res, 400, "scrapez proxy: use CONNECT for https targets");
    const auth = this.#authorized(req);
    if (auth === false) return this.#deny(res, u.hostname);
    void this.#forward(req, res, parseTargetHost(u.host), `${u.pathname}${u.search}`, auth);
  }

  /** The identity that may dial `service`, or a one-line reason why none may. */
  async #resolve(t: TargetName): Promise<DialOverlay | string> {
    let sd = await this.#sdState();
    let ctx = sd.byName.get(t.service);
    if (!ctx) {
      this.#sd = undefined; // maybe it is new: look again once
      sd = await this.#sdState();
      ctx = sd.byName.get(t.service);
    }
    if (ctx) return ctx;
    const ids = this.#contexts.map((c) => `"${c.identityName}"`).join(", ");
    return `scrapez proxy: service "${t.service}" is not dialable by identity ${ids} (no such service, or no Dial policy grants it); only overlay services are reachable`;
  }

  #agent(ctx: DialOverlay, t: TargetName): OverlayAgent {
    const key = `${ctx.identityName}\u0000${t.service}\u0000${t.identity ?? ""}`;
    let a = this.#agents.get(key);
    if (!a) {
      a = new OverlayAgent(ctx, t, this.metrics, {
        keepAlive: true,
        maxSockets: this.#config.agent.maxSocketsPerService,
        maxFreeSockets: this.#config.agent.maxSocketsPerService,
        timeout: this.#config.agent.keepAliveSeconds * 1000,
      });
      this.#agents.set(key, a);
    }
    return a;
  }

  async #forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    t: TargetName,
    path: string,
    auth: string | true,
  ): Promise<void> {
    const label = t.service;
    res.once("finish", () => this.metrics.requests.inc({ service: label, code: String(res.statusCode) }));
    if (req.method !== "GET" && req.method !== "HEAD") {
      return oneLine(res, 405, `scrapez proxy: only GET and HEAD are forwarded, not ${req.method}`);
    }
    const ctx = await this.#resolve(t);
    if (typeof ctx === "string") {
      this.metrics.requests.inc({ service: "(refused)", code: "502" });
      return oneLine(res, 502, ctx);
    }
    const timeoutMs = scrapeTimeoutMs(req, this.#config.timeouts.defaultScrapeSeconds);
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (HOP_BY_HOP.has(k) || k === auth || v === undefined) continue;
      headers[k] = v;
    }
    headers.host = targetHost(t);
    const started = Date.now();
    const upstream = http.request({
      agent: this.#agent(ctx, t),
      host: targetHost(t),
      path,
      method: req.method,
      headers,
      dialTimeoutMs: Math.min(this.#config.timeouts.dialSeconds * 1000, timeoutMs),
    } as http.RequestOptions);
    const timer = setTimeout(() => {
      upstream.destroy(Object.assign(new Error("scrape timeout"), { code: "SCRAPE_TIMEOUT" }));
    }, timeoutMs);
    upstream.on("response", (ur) => {
      const out: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(ur.headers)) if (!HOP_BY_HOP.has(k) && v !== undefined) out[k] = v;
      res.writeHead(ur.statusCode ?? 502, ur.statusMessage, out);
      ur.pipe(res);
      ur.on("end", () => clearTimeout(timer));
      ur.on("error", () => res.destroy());
    });
    upstream.on("error", (err: Error & { code?: string }) => {
      clearTimeout(timer);
      const who = `service "${t.service}"${t.identity ? ` (replica "${t.identity}")` : ""} via identity "${ctx.identityName}"`;
      switch (err.code) {
        case "SCRAPE_TIMEOUT":
          return oneLine(res, 504, `scrapez proxy: ${who} did not answer within ${(timeoutMs / 1000).toFixed(1)}s`);
        case "ZITI_DIAL_TIMEOUT":
          return oneLine(res, 504, `scrapez proxy: dialing ${who} timed out after ${Date.now() - started} ms`);
        case "ZITI_SERVICE_NOT_FOUND":
        case "ZITI_NOT_AUTHORIZED":
          return oneLine(res, 502, `scrapez proxy: ${who}: ${err.message}`);
        default:
          return oneLine(res, 502, `scrapez proxy: ${who} is unreachable: ${err.message}`);
      }
    });
    req.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    upstream.end();
  }

  #onConnect(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const reply = (status: string, text: string, extra = "") => {
      const body = `${text}\n`;
      socket.end(
        `HTTP/1.1 ${status}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`,
      );
    };
    if (this.#authorized(req) === false) {
      this.metrics.requests.inc({ service: "connect", code: "401" });
      return reply(
        "407 Proxy Authentication Required",
        "scrapez proxy: authentication required",
        'proxy-authenticate: Bearer realm="scrapez"\r\n',
      );
    }
    const t = parseTargetHost(req.url ?? "");
    void this.#resolve(t).then(async (ctx) => {
      if (typeof ctx === "string") {
        this.metrics.requests.inc({ service: "(refused)", code: "502" });
        return reply("502 Bad Gateway", ctx);
      }
      let conn: ZitiConnection;
      const started = process.hrtime.bigint();
      try {
        conn = await ctx.dial(t.service, {
          timeoutMs: this.#config.timeouts.dialSeconds * 1000,
          ...(t.identity ? { identity: t.identity } : {}),
        });
      } catch (err) {
        const e = err as Error & { code?: string };
        this.metrics.dials.inc({ service: t.service, result: e.code ?? "error" });
        this.metrics.requests.inc({ service: t.service, code: e.code === "ZITI_DIAL_TIMEOUT" ? "504" : "502" });
        return reply(
          e.code === "ZITI_DIAL_TIMEOUT" ? "504 Gateway Timeout" : "502 Bad Gateway",
          `scrapez proxy: ${e.message}`,
        );
      }
      this.metrics.dials.inc({ service: t.service, result: "ok" });
      this.metrics.dialDuration.observe({ service: t.service }, Number(process.hrtime.bigint() - started) / 1e9);
      this.metrics.requests.inc({ service: t.service, code: "200" });
      this.metrics.active.inc();
      conn.once("close", () => this.metrics.active.dec());
      conn.on("error", () => socket.destroy());
      socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) conn.write(head);
      socket.pipe(conn);
      conn.pipe(socket);
      socket.once("close", () => conn.destroy());
      conn.once("close", () => socket.destroy());
    });
  }

  // --- service discovery --------------------------------------------------------------------------------------

  async #sdState(): Promise<SdState> {
    if (!this.#sd || Date.now() - this.#sd.at > this.#config.discovery.refreshSeconds * 1000) await this.#buildSd();
    return this.#sd!;
  }

  #buildSd(): Promise<void> {
    this.#sdBuilding ??= (async () => {
      const byName = new Map<string, DialOverlay>();
      const groups: SdGroup[] = [];
      const d = this.#config.discovery;
      for (const ctx of this.#contexts) {
        for (const s of await ctx.services()) {
          if (!s.permissions.includes("Dial") || byName.has(s.name)) continue;
          byName.set(s.name, ctx);
          if (d.include && !d.include.some((g) => globMatch(g, s.name))) continue;
          if (d.exclude?.some((g) => globMatch(g, s.name))) continue;
          if (d.attributes && !d.attributes.some((a) => s.roleAttributes.includes(a))) continue;
          const labels = {
            __meta_ziti_service: s.name,
            __meta_ziti_service_id: s.id,
            __meta_ziti_service_attributes: s.roleAttributes.length
              ? `,${[...s.roleAttributes].sort().join(",")},`
              : "",
            __meta_ziti_identity: ctx.identityName,
          };
          let replicas: string[] = [];
          try {
            replicas = await ctx.replicas(s.name);
          } catch (err) {
            this.#log.debug("cannot list replicas", { service: s.name, reason: (err as Error).message });
          }
          if (replicas.length === 0) groups.push({ targets: [`${nameToHost(s.name)}:80`], labels });
          for (const r of replicas) {
            groups.push({
              targets: [`${targetHost({ service: s.name, identity: r })}:80`],
              labels: { ...labels, __meta_ziti_replica: r },
            });
          }
        }
      }
      this.#sd = { at: Date.now(), groups, byName };
    })().finally(() => {
      this.#sdBuilding = undefined;
    });
    return this.#sdBuilding;
  }

  async #serveSd(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let sd;
    try {
      sd = await this.#sdState();
    } catch (err) {
      this.metrics.requests.inc({ service: "/sd", code: "503" });
      return oneLine(res, 503, `scrapez proxy: cannot list services: ${(err as Error).message}`);
    }
    const q = new URL(req.url ?? "/", "http://x").searchParams;
    const svcGlob = q.getAll("service");
    const attrs = q.getAll("attribute");
    const groups = sd.groups.filter(
      (g) =>
        (svcGlob.length === 0 || svcGlob.some((p) => globMatch(p, g.labels.__meta_ziti_service!))) &&
        (attrs.length === 0 || attrs.some((a) => g.labels.__meta_ziti_service_attributes!.includes(`,${a},`))),
    );
    this.metrics.sdTargets.set(groups.length);
    this.metrics.requests.inc({ service: "/sd", code: "200" });
    const body = JSON.stringify(groups);
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  }

  async close(): Promise<void> {
    for (const a of this.#agents.values()) a.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
