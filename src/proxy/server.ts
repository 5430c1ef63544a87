/**
 * The dial side: an HTTP proxy a stock Prometheus uses through `proxy_url` (absolute-form requests and CONNECT),
 * plus path mode (`/scrape/<target>/<path>`), HTTP service discovery (`/sd`), health and self-metrics.
 * Only overlay services are reachable: a host that is not a dialable service is refused, and the proxy never opens a
 * TCP connection to a requested host (it has no code path that could: every upstream byte goes through
 * DialOverlay.dial()).
 *
 * Routing (request forms, Host check, deadline) is in ./request.ts, forwarding's failures and late answers in
 * ./upstream.ts, the connection pools in ./agent.ts. Size: over 350 lines because the ProxyServer class holds the
 * request handlers (forward, CONNECT tunnel, /sd, health, metrics, status) that share its auth, catalog, agents,
 * metrics and drain state; the tunnel handler is the next candidate to leave (a TunnelHandler given those five).
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import type { Logger } from "../common/log.js";
import { AgentCache, OverlayAgent, asSocket, type OverlayRequestOptions } from "./agent.js";
import { Forward, upstreamHeaders } from "../common/forward.js";
import { answerPlain, rawAnswer } from "../common/answer.js";
import { ProxyErrorCodes } from "../common/errors.js";
import { SCRAPE_TIMEOUT_HEADER } from "../common/deadline.js";
import { authenticatorFor, type AuthResult, type Authenticator } from "./auth.js";
import { ServiceCatalog, type Resolved } from "./catalog.js";
import type { ProxyConfig } from "./config.js";
import { ProxyMetrics, codeLabel } from "./metrics.js";
import { parseTargetHost, targetHost } from "../common/naming.js";
import { StatusService } from "./status/service.js";
import type { DialOverlay, TargetName } from "../overlay/types.js";
import {
  ERROR_HEADER,
  hostAllowed,
  parseAbsolute,
  parsePathMode,
  parseSdQuery,
  printable,
  scrapeDeadlineMs,
  unknownReplicaText,
} from "./request.js";
import { STALE_OVERLAY_CODES, failure, forwardFailure, type Failure } from "./upstream.js";

export { ProxyMetrics } from "./metrics.js";
export type { DialOverlay } from "../overlay/types.js";

export class ProxyServer {
  readonly metrics = new ProxyMetrics();
  readonly server: http.Server;
  readonly catalog: ServiceCatalog;
  /** Scrape history and the /status page (src/proxy/status/). */
  readonly status: StatusService;
  #config: ProxyConfig;
  readonly #log: Logger;
  #auth: Authenticator;
  /** Whether requests must carry credentials (bearer, basic or a client certificate). */
  #authenticated: boolean;
  readonly #agents: AgentCache;
  readonly #tunnels = new Set<Duplex>();
  /** Tunnels open or being dialed: what tunnels.maxConcurrent counts. */
  #tunnelSlots = 0;
  /** Requests being answered (for a graceful stop). */
  readonly #inFlight = new Set<http.ServerResponse>();
  /** Set by drain(): no new requests; in-flight ones finish with `Connection: close`. */
  #draining = false;
  /** When the last "pool evicted" warning was logged. */
  #evictionWarnedAt = 0;
  #drainCheck: (() => void) | undefined;

  /** Reads the credential and TLS files (throws ConfigError naming the field when one is empty or unreadable). */
  constructor(overlays: DialOverlay[], config: ProxyConfig, log: Logger) {
    this.#config = config;
    this.#log = log;
    this.#auth = authenticatorFor(config);
    this.#authenticated = this.#auth.required || !!config.tls?.clientCA;
    this.#agents = new AgentCache({
      max: config.agent.maxPools,
      idleMs: config.agent.keepAliveSeconds * 1000,
      onSize: (n) => this.metrics.pools.set(n),
      onEvict: () => {
        this.metrics.poolEvictions.inc();
        // Once a minute at most: under churn this runs on every scrape.
        if (Date.now() - this.#evictionWarnedAt < 60_000) return;
        this.#evictionWarnedAt = Date.now();
        this.#log.warn("keep-alive pool evicted: more targets than agent.maxPools, so scrapes dial anew", {
          maxPools: config.agent.maxPools,
          fix: "raise agent.maxPools above the number of targets this proxy scrapes",
        });
      },
    });
    this.catalog = new ServiceCatalog(overlays, config.discovery, log, this.metrics);
    this.metrics.watchCertExpiry(overlays);
    this.status = new StatusService(this.catalog, overlays);
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) =>
      this.#guard(
        "request",
        () => this.#onRequest(req, res),
        () => answerPlain(res, 500, "scrapez proxy: internal error"),
      );
    const opts: http.ServerOptions = { keepAliveTimeout: 75_000 };
    this.server = config.tls
      ? https.createServer(
          {
            ...opts,
            cert: readFileSync(config.tls.cert),
            key: readFileSync(config.tls.key),
            ...(config.tls.clientCA
              ? { ca: readFileSync(config.tls.clientCA), requestCert: true, rejectUnauthorized: true }
              : {}),
          },
          handler,
        )
      : http.createServer(opts, handler);
    this.server.on("connect", (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.#guard(
        "CONNECT",
        () => this.#onConnect(req, socket, head),
        () => socket.destroy(),
      ),
    );
    this.server.on("clientError", (_e, socket: Duplex) => socket.destroy());
  }

  /**
   * Runs an event handler (or the rest of an async one) so that nothing escapes it: a throw is logged with
   * context and ends only this request (`fallback`); the process keeps serving everyone else.
   */
  #guard(what: string, fn: () => void | Promise<void>, fallback: () => void): void {
    const caught = (err: unknown) => {
      this.#log.error("internal error handling a request", {
        what,
        reason: err instanceof Error ? err.message : String(err),
        stack: err instanceof Error ? err.stack : undefined,
      });
      try {
        fallback();
      } catch {
        /* the fallback only ends this request; nothing more to do */
      }
    };
    try {
      const p = fn();
      if (p) p.catch(caught);
    } catch (err) {
      caught(err);
    }
  }

  /** Open pooled-connection agents (bounded by agent.maxPools). */
  get poolCount(): number {
    return this.#agents.size;
  }

  /** CONNECT tunnels open or being dialed (bounded by tunnels.maxConcurrent). */
  get tunnelCount(): number {
    return this.#tunnelSlots;
  }

  /**
   * Loads the service list (a failure is logged, not fatal: /-/ready says why and the list is retried), then listens.
   * Resolves to the bound address.
   */
  async start(): Promise<{ host: string; port: number }> {
    await this.catalog.start().catch(() => undefined);
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

  #deny(res: http.ServerResponse): void {
    this.metrics.requests.inc({ service: "(auth)", code: "401" });
    const c = this.#auth.challenge;
    answerPlain(res, 401, "scrapez proxy: authentication required (bearer token or basic auth)", {
      "www-authenticate": c,
      "proxy-authenticate": c,
      [ERROR_HEADER]: ProxyErrorCodes.UNAUTHENTICATED,
    });
  }

  // --- routing ------------------------------------------------------------------------------------------------

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.#draining) {
      // A new request on a kept-alive connection after SIGTERM: refused, and the connection closed after it.
      res.shouldKeepAlive = false;
      return answerPlain(res, 503, "scrapez proxy is shutting down", { [ERROR_HEADER]: ProxyErrorCodes.SHUTTING_DOWN });
    }
    this.#inFlight.add(res);
    res.once("close", () => {
      this.#inFlight.delete(res);
      this.#drainCheck?.();
    });
    const url = req.url ?? "/";
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
      const abs = parseAbsolute(url);
      if (!abs) {
        return answerPlain(res, 400, "scrapez proxy: only http://<service>/<path> is proxied; use CONNECT for https", {
          [ERROR_HEADER]: ProxyErrorCodes.BAD_REQUEST,
        });
      }
      const auth = this.#auth.check(req.headers);
      if (!auth.ok) return this.#deny(res);
      return this.#guard(
        "forward",
        () => this.#forward(req, res, parseTargetHost(abs.hostPort), abs.path, auth),
        () => answerPlain(res, 500, "scrapez proxy: internal error"),
      );
    }
    const path = url.split("?")[0]!;
    if (path === "/-/healthy") return answerPlain(res, 200, "scrapez proxy is healthy");
    if (path === "/-/ready") {
      const why = this.catalog.notReadyReason;
      const ids = `identities: ${this.catalog.identityStates()}`;
      const stale = this.catalog.staleReason;
      if (why !== undefined) return answerPlain(res, 503, `scrapez proxy is not ready: ${why}; ${ids}`);
      return answerPlain(
        res,
        200,
        stale === undefined
          ? `scrapez proxy is ready; ${ids}`
          : `scrapez proxy is ready, serving the last service list (${stale}); ${ids}`,
      );
    }
    // Origin-form: the Host must be one of ours unless credentials protect the endpoints (docs/proxy.md "Host").
    if (!this.#authenticated && !hostAllowed(req.headers.host, this.#config.listenHost, this.#config.allowedHosts)) {
      this.metrics.requests.inc({ service: "(host)", code: "421" });
      return answerPlain(
        res,
        421,
        `scrapez proxy: Host "${printable(req.headers.host ?? "")}" is not allowed for ${printable(path)}: use ` +
          "127.0.0.1, localhost or the listen address, or add the name to allowedHosts in the proxy config",
        { [ERROR_HEADER]: ProxyErrorCodes.HOST_NOT_ALLOWED },
      );
    }
    const auth = this.#auth.check(req.headers);
    if (!auth.ok) return this.#deny(res);
    if (path === "/sd") return this.#serveSd(req, res);
    if (path === "/metrics") return void this.#serveMetrics(res);
    if (path === "/status" || path === "/status.json") {
      this.#count(res, () => path);
      return this.status.serve(req, res, path === "/status.json");
    }
    const pm = parsePathMode(url);
    if (pm === "bad")
      return answerPlain(res, 400, "scrapez proxy: bad service name in path", {
        [ERROR_HEADER]: ProxyErrorCodes.BAD_REQUEST,
      });
    if (pm)
      return this.#guard(
        "forward",
        () => this.#forward(req, res, pm.target, pm.path, auth),
        () => answerPlain(res, 500, "scrapez proxy: internal error"),
      );
    answerPlain(
      res,
      404,
      `scrapez proxy: no such endpoint ${printable(path)} (use proxy_url, /scrape/<service>/<path>, /sd, /metrics, /status)`,
    );
  }

  async #serveMetrics(res: http.ServerResponse): Promise<void> {
    try {
      const text = await this.metrics.registry.metrics();
      res.writeHead(200, { "content-type": this.metrics.registry.contentType });
      res.end(text);
    } catch (err) {
      answerPlain(res, 500, `scrapez proxy: ${(err as Error).message}`);
    }
  }

  /** Counts the request once, when the answer is finished or the client went away (499). */
  #count(res: http.ServerResponse, label: () => string): void {
    res.once("close", () =>
      this.metrics.requests.inc({ service: label(), code: res.writableFinished ? codeLabel(res.statusCode) : "499" }),
    );
  }

  /** The identity that may dial `t`, or the refusal already answered. */
  async #resolve(t: TargetName): Promise<Resolved | Failure> {
    const r = await this.catalog.resolve(t);
    if (r) return r;
    // A service the catalog knows, a replica it does not list: answered from the list (see ServiceCatalog.resolve).
    const known = t.identity !== undefined ? this.catalog.known(t.service) : undefined;
    if (known?.replicas) {
      return {
        status: 502,
        code: ProxyErrorCodes.NOT_DIALABLE,
        text: unknownReplicaText(known.service, t.identity!, known.replicas),
      };
    }
    // Not loaded, or an identity that might dial it has not authenticated yet: 503 with the reason, not 502.
    const pending = this.catalog.loaded ? this.catalog.pendingReason : undefined;
    if (!this.catalog.loaded || pending) {
      return {
        status: 503,
        code: ProxyErrorCodes.NOT_READY,
        text: `scrapez proxy: cannot reach service "${t.service}" yet: ${pending ?? this.catalog.notReadyReason ?? "the service list is not loaded"}`,
      };
    }
    const ids = this.catalog
      .identityNames()
      .map((n) => `"${n}"`)
      .join(", ");
    const replica = t.identity !== undefined ? ` (replica "${t.identity}")` : "";
    return {
      status: 502,
      code: ProxyErrorCodes.NOT_DIALABLE,
      text:
        `scrapez proxy: service "${t.service}"${replica} is not dialable by identity ${ids} (no such ` +
        `${t.identity !== undefined ? "replica" : "service"}, or no Dial policy grants it); only overlay services ` +
        "are reachable",
    };
  }

  /** The pooled agent of a resolved target (only ever called after the catalog resolved it). */
  #agent(r: Resolved): OverlayAgent {
    const key = `${r.ctx.identityName}\u0000${r.service}\u0000${r.identity ?? ""}`;
    return this.#agents.get(
      key,
      () =>
        new OverlayAgent(
          r.ctx,
          { service: r.service, ...(r.identity !== undefined ? { identity: r.identity } : {}) },
          this.metrics,
          {
            maxSockets: this.#config.agent.maxSocketsPerService,
            keepAliveMs: this.#config.agent.keepAliveSeconds * 1000,
            dialTimeoutMs: this.#config.timeouts.dialSeconds * 1000,
          },
        ),
    );
  }

  async #forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    t: TargetName,
    path: string,
    auth: AuthResult,
  ): Promise<void> {
    const started = Date.now();
    let label = "(refused)";
    this.#count(res, () => label);
    if (req.method !== "GET" && req.method !== "HEAD") {
      return answerPlain(
        res,
        405,
        `scrapez proxy: only GET and HEAD are forwarded, not ${printable(req.method ?? "")}`,
        {
          allow: "GET, HEAD",
          [ERROR_HEADER]: ProxyErrorCodes.METHOD,
        },
      );
    }
    const deadlineMs = scrapeDeadlineMs(req.headers[SCRAPE_TIMEOUT_HEADER], this.#config.timeouts.defaultScrapeSeconds);
    const r = await this.#resolve(t);
    if ("status" in r) {
      this.#log.debug("refused", { host: targetHost(t), status: r.status });
      return answerPlain(res, r.status, r.text, { [ERROR_HEADER]: r.code });
    }
    label = r.service;
    const scrape = this.status.track(req, res, r, auth, started);
    const host = targetHost(r);
    // Every header that carries the proxy's own credentials (Prometheus may send them twice); a target's own
    // Authorization passes.
    const headers = upstreamHeaders(req.headers, host, this.#auth.credentialHeaders(req.headers));
    const agent = this.#agent(r);
    const dialMs = this.#config.timeouts.dialSeconds * 1000;
    const forward = new Forward(
      req,
      res,
      { deadlineMs, started, abandon: "spare", staleCodes: STALE_OVERLAY_CODES, log: this.#log },
      {
        open: (_attempt, remainingMs) => {
          const opts: OverlayRequestOptions = {
            agent,
            host,
            path,
            method: req.method,
            headers,
            dialTimeoutMs: Math.max(1, Math.min(dialMs, remainingMs)),
          };
          return http.request(opts);
        },
        fail: (f, elapsedMs) => {
          if (res.destroyed) return;
          const out = forwardFailure(f, r, elapsedMs, deadlineMs);
          this.#log.warn("scrape failed", {
            service: r.service,
            replica: r.identity,
            status: out.status,
            code: out.code,
          });
          scrape.failed(out.text);
          answerPlain(res, out.status, out.text, { [ERROR_HEADER]: out.code });
        },
        passing: (ur) => {
          scrape.upstream(ur);
          this.#log.debug("forwarded", { service: r.service, replica: r.identity, status: ur.statusCode });
        },
        retrying: () =>
          this.#log.debug("pooled overlay connection was closed; retrying on a fresh one", { service: r.service }),
      },
    );
    forward.start();
  }

  #onConnect(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const reply = (status: number, text: string, extra: Record<string, string> = {}) =>
      void socket.end(rawAnswer(status, text, extra));
    const auth = this.#auth.check(req.headers);
    if (!auth.ok) {
      this.metrics.requests.inc({ service: "(auth)", code: "407" });
      return reply(407, "scrapez proxy: authentication required", {
        "proxy-authenticate": this.#auth.challenge,
        [ERROR_HEADER]: ProxyErrorCodes.UNAUTHENTICATED,
      });
    }
    const max = this.#config.tunnels.maxConcurrent;
    if (this.#tunnelSlots >= max) {
      this.metrics.requests.inc({ service: "(limit)", code: "503" });
      this.metrics.tunnelEvents.inc({ event: "over-limit" });
      this.#log.warn("tunnel refused: too many open", { max });
      return reply(
        503,
        `scrapez proxy: too many CONNECT tunnels open (${max}, tunnels.maxConcurrent); try again later`,
        { [ERROR_HEADER]: ProxyErrorCodes.TOO_MANY_TUNNELS, "retry-after": "1" },
      );
    }
    this.#tunnelSlots++;
    this.metrics.tunnels.set(this.#tunnelSlots);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.#tunnelSlots--;
      this.metrics.tunnels.set(this.#tunnelSlots);
    };
    socket.once("close", release);
    const t = parseTargetHost(req.url ?? "");
    this.#guard(
      "CONNECT",
      () => this.#tunnel(t, socket, head, reply, release),
      () => socket.destroy(),
    );
  }

  async #tunnel(
    t: TargetName,
    socket: Duplex,
    head: Buffer,
    reply: (status: number, text: string, extra?: Record<string, string>) => void,
    release: () => void,
  ): Promise<void> {
    const r = await this.#resolve(t);
    if ("status" in r) {
      this.metrics.requests.inc({ service: "(refused)", code: String(r.status) });
      return reply(r.status, r.text, { [ERROR_HEADER]: r.code });
    }
    const started = Date.now();
    const timeoutMs = this.#config.timeouts.dialSeconds * 1000;
    let conn: Duplex;
    try {
      conn = await this.metrics.timeDial(r.service, () =>
        r.ctx.dial(r.service, { timeoutMs, ...(r.identity !== undefined ? { identity: r.identity } : {}) }),
      );
    } catch (err) {
      const f = failure(err as Error, r, Date.now() - started, timeoutMs);
      this.metrics.requests.inc({ service: r.service, code: String(f.status) });
      this.#log.warn("tunnel failed", { service: r.service, replica: r.identity, status: f.status, code: f.code });
      return reply(f.status, f.text, { [ERROR_HEADER]: f.code });
    }
    conn.on("error", () => conn.destroy());
    asSocket(conn);
    if (socket.destroyed) return void conn.destroy();
    this.metrics.requests.inc({ service: r.service, code: "200" });
    this.metrics.active.inc();
    this.#tunnels.add(conn);
    // Idle: no byte either way for tunnels.idleSeconds.
    const idleMs = this.#config.tunnels.idleSeconds * 1000;
    let last = Date.now();
    const touch = () => void (last = Date.now());
    let idleTimer: NodeJS.Timeout | undefined;
    const checkIdle = () => {
      const quiet = Date.now() - last;
      if (quiet < idleMs) {
        idleTimer = setTimeout(checkIdle, idleMs - quiet);
        return;
      }
      this.metrics.tunnelEvents.inc({ event: "idle-timeout" });
      this.#log.debug("tunnel idle: closing", { service: r.service, replica: r.identity, idleMs });
      conn.destroy();
      socket.destroy();
    };
    idleTimer = setTimeout(checkIdle, idleMs);
    conn.once("close", () => {
      clearTimeout(idleTimer);
      this.metrics.active.dec();
      this.#tunnels.delete(conn);
      release();
      socket.destroy();
      this.#drainCheck?.();
    });
    socket.once("close", () => conn.destroy());
    socket.on("data", touch);
    conn.on("data", touch);
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length) conn.write(head);
    socket.pipe(conn);
    conn.pipe(socket);
    this.#log.debug("tunnel open", { service: r.service, replica: r.identity });
  }

  // --- service discovery --------------------------------------------------------------------------------------

  #serveSd(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.#count(res, () => "/sd");
    if (!this.catalog.loaded) {
      return answerPlain(
        res,
        503,
        `scrapez proxy: ${this.catalog.notReadyReason ?? "the service list is not loaded"}`,
        {
          [ERROR_HEADER]: ProxyErrorCodes.NOT_READY,
        },
      );
    }
    const url = req.url ?? "/sd";
    const filter = parseSdQuery(url.includes("?") ? url.slice(url.indexOf("?") + 1) : "");
    if ("tooLarge" in filter) {
      return answerPlain(res, 400, `scrapez proxy: /sd query too large: ${filter.tooLarge}`, {
        [ERROR_HEADER]: ProxyErrorCodes.SD_QUERY_TOO_LARGE,
      });
    }
    const body = JSON.stringify(this.catalog.groups(filter));
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  }

  /**
   * Applies a reloaded config (SIGHUP) to the running proxy and returns the top-level fields that changed.
   * Live: logLevel (the caller's logger), auth (the credential files are read again, so a rotated token applies
   * even when the config is unchanged), tls certificate, key and client CA (read again), discovery, timeouts, agent,
   * drainSeconds, insecureAllowUnauthenticated, allowedHosts, tunnels. `listen`, `identities`, `zitiAuth`,
   * `renewCertBeforeDays`, `agent.maxPools` and turning TLS on or off need a restart:
   * such a config is refused as a whole (throws; the running config stays), as is one whose files cannot be read.
   */
  reconfigure(next: ProxyConfig): string[] {
    const cur = this.#config;
    const restart: string[] = [];
    if (next.listen !== cur.listen) restart.push("listen");
    if (JSON.stringify(next.identities) !== JSON.stringify(cur.identities)) restart.push("identities");
    if (!next.tls !== !cur.tls) restart.push("tls (on/off)");
    if (!next.tls?.clientCA !== !cur.tls?.clientCA) restart.push("tls.clientCA (on/off)");
    if (next.zitiAuth !== cur.zitiAuth) restart.push("zitiAuth");
    if (next.renewCertBeforeDays !== cur.renewCertBeforeDays) restart.push("renewCertBeforeDays");
    if (next.agent.maxPools !== cur.agent.maxPools) restart.push("agent.maxPools");
    if (restart.length) {
      throw new Error(`${restart.join(", ")} changed: restart scrapez proxy to apply that (nothing was changed)`);
    }
    // Everything that can fail first, then the switch.
    const auth = authenticatorFor(next);
    let secure: tls.SecureContextOptions | undefined;
    if (next.tls) {
      try {
        secure = {
          cert: readFileSync(next.tls.cert),
          key: readFileSync(next.tls.key),
          ...(next.tls.clientCA ? { ca: readFileSync(next.tls.clientCA) } : {}),
        };
        tls.createSecureContext(secure); // a key that does not match its certificate fails here, not in setSecureContext
      } catch (err) {
        throw new Error(`tls: cannot load the certificate, key or client CA: ${(err as Error).message}`);
      }
    }
    const changed = (
      [
        "logLevel",
        "drainSeconds",
        "auth",
        "tls",
        "insecureAllowUnauthenticated",
        "discovery",
        "timeouts",
        "agent",
        "allowedHosts",
        "tunnels",
      ] as const
    ).filter((k) => JSON.stringify(next[k]) !== JSON.stringify(cur[k]));
    this.#auth = auth;
    this.#authenticated = auth.required || !!next.tls?.clientCA;
    if (secure) (this.server as https.Server).setSecureContext(secure);
    this.#config = next;
    this.catalog.setDiscovery(next.discovery);
    if (changed.includes("agent")) {
      for (const a of this.#agents.values()) {
        a.configure({ maxSockets: next.agent.maxSocketsPerService, keepAliveMs: next.agent.keepAliveSeconds * 1000 });
      }
    }
    return changed;
  }

  /** Requests being answered plus open CONNECT tunnels. */
  get inFlight(): number {
    return this.#inFlight.size + this.#tunnels.size;
  }

  /**
   * A graceful stop (SIGTERM): stops listening and closes idle keep-alive connections at once; requests in flight
   * and CONNECT tunnels get until `deadlineMs` to finish (responses then carry `Connection: close`; a new request
   * on a connection still open is answered 503). Resolves with how many were still open at the deadline (0 when
   * all finished); call close() afterwards.
   */
  async drain(deadlineMs: number): Promise<{ unfinished: number }> {
    this.#draining = true;
    this.catalog.close();
    for (const res of this.#inFlight) if (!res.headersSent) res.shouldKeepAlive = false;
    this.server.close();
    this.server.closeIdleConnections();
    await new Promise<void>((done) => {
      const timer = setTimeout(done, deadlineMs);
      timer.unref();
      this.#drainCheck = () => {
        this.server.closeIdleConnections();
        if (this.inFlight === 0) {
          clearTimeout(timer);
          done();
        }
      };
      this.#drainCheck();
    });
    this.#drainCheck = undefined;
    return { unfinished: this.inFlight };
  }

  /** Stops listening and closes pooled connections and tunnels. The overlays are the caller's to close. */
  async close(): Promise<void> {
    this.catalog.close();
    this.#drainCheck = undefined;
    this.#agents.close();
    for (const c of this.#tunnels) c.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
