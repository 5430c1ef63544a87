/**
 * The dial side: an HTTP proxy a stock Prometheus uses through `proxy_url` (absolute-form requests and CONNECT),
 * plus path mode (`/scrape/<target>/<path>`), HTTP service discovery (`/sd`), health and self-metrics.
 * Only overlay services are reachable: a host that is not a dialable service is refused, and the proxy never opens a
 * TCP connection to a requested host (it has no code path that could: every upstream byte goes through
 * DialOverlay.dial()).
 *
 * ProxyServer routes each request (auth, the Host check, drain state) and holds what a reload changes. On a plain
 * listener, scrapes are read by ./front.ts before Node's server, which gets every other connection. The handlers
 * are elsewhere: forwarded scrapes in ./scrape.ts (forwarding itself in ./overlay-forward.ts, its failures in
 * ./upstream.ts, the pools in ./agent.ts and ./overlay-pool.ts), CONNECT tunnels in ./tunnel.ts, `/sd` in ./sd.ts,
 * `/status` in ./status/; request forms, the Host check and the deadline in ./request.ts; the `--web.config.file`
 * listener (its TLS, client certificates, headers, bcrypt users) in ./web-listener.ts.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import { answerPlain } from "../common/answer.js";
import { ProxyErrorCodes } from "../common/errors.js";
import type { RequestLike, ResponseLike } from "../common/http-like.js";
import type { Logger } from "../common/log.js";
import { parseTargetHost } from "../common/naming.js";
import type { DialOverlay } from "../overlay/types.js";
import { authenticatorFor, type Authenticator } from "./auth.js";
import { ServiceCatalog } from "./catalog.js";
import type { ProxyConfig } from "./config.js";
import { ProxyMetrics } from "./metrics.js";
import { ERROR_HEADER, hostAllowed, parseAbsolute, parsePathMode, printable } from "./request.js";
import { Scrapes } from "./scrape.js";
import { serveSd, type SdSource } from "./sd.js";
import { StatusService } from "./status/service.js";
import { installFront, type ScrapeFront } from "./front.js";
import { Tunnels } from "./tunnel.js";
import { WebListener } from "./web-listener.js";

export { ProxyMetrics } from "./metrics.js";
export type { DialOverlay } from "../overlay/types.js";

/** What a reload asked for over HTTP (`POST /-/reload`) came to. */
export type ReloadOutcome = { ok: true; changed?: string[] } | { ok: false; reason: string };

export class ProxyServer {
  readonly metrics = new ProxyMetrics();
  readonly server: http.Server;
  readonly catalog: ServiceCatalog;
  /** What /sd answers from: the catalog, or with --workers the first worker's (src/cli/workers/). */
  sdSource: SdSource;
  /** Scrape history and the /status page (src/proxy/status/). */
  readonly status: StatusService;
  #config: ProxyConfig;
  readonly #log: Logger;
  #auth: Authenticator;
  /** The `--web.config.file` (exporter-toolkit format), looked at again on each request and connection. */
  readonly #web: WebListener | undefined;
  /** `POST /-/reload`: what SIGHUP does (set by the CLI). */
  #reloader: (() => Promise<ReloadOutcome>) | undefined;
  /** Forwarded scrapes and their overlay agents. */
  readonly #scrapes: Scrapes;
  readonly #tunnels: Tunnels;
  /** Requests being answered (for a graceful stop). */
  readonly #inFlight = new Set<ResponseLike>();
  /** Set by drain(): no new requests; in-flight ones finish with `Connection: close`. */
  #draining = false;
  #drainCheck: (() => void) | undefined;
  /** Reads scrapes before Node's server does, on a plain listener without a web config (./front.ts). */
  readonly #front: ScrapeFront | undefined;

  /** Reads the credential and TLS files (throws ConfigError naming the field when one is empty or unreadable). */
  constructor(overlays: DialOverlay[], config: ProxyConfig, log: Logger) {
    this.#config = config;
    this.#log = log;
    if (config.webConfigFile) {
      // Throws the ConfigError of a web config that is invalid now: the proxy does not start with it.
      this.#web = new WebListener(config.webConfigFile, () => this.#config, log);
    }
    this.#auth = authenticatorFor(config, this.#web?.users);
    this.catalog = new ServiceCatalog(overlays, config.discovery, log, this.metrics);
    this.sdSource = this.catalog;
    this.metrics.watchCertExpiry(overlays);
    this.status = new StatusService(this.catalog, overlays);
    const shared = {
      config: () => this.#config,
      auth: () => this.#auth,
      catalog: this.catalog,
      metrics: this.metrics,
      log,
    };
    this.#scrapes = new Scrapes({ ...shared, status: this.status });
    this.#tunnels = new Tunnels({
      ...shared,
      guard: (what, fn, fallback) => this.#guard(what, fn, fallback),
      closed: () => this.#drainCheck?.(),
    });
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) =>
      this.#guard(
        "request",
        () => this.#onRequest(req, res),
        () => answerPlain(res, 500, "scrapez proxy: internal error"),
      );
    const opts: http.ServerOptions = { keepAliveTimeout: 75_000 };
    this.server =
      this.#web?.createServer(opts, handler) ??
      (config.tls
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
        : http.createServer(opts, handler));
    this.server.on("connect", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      this.metrics.countWorkerRequest();
      this.#guard(
        "CONNECT",
        () => {
          const warm = this.#web ? this.#web.warm(req) : undefined;
          if (warm === false) {
            socket.end("HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            return;
          }
          if (!warm) return this.#tunnels.connect(req, socket, head);
          socket.pause(); // the tunnel's pipe resumes it
          return warm.then(() => this.#tunnels.connect(req, socket, head));
        },
        () => socket.destroy(),
      );
    });
    this.server.on("clientError", (_e, socket: Duplex) => socket.destroy());
    // Not with TLS or a web config: their per-request rules are Node's server's.
    this.#front = this.#web || config.tls ? undefined : installFront(this.server, (req) => this.#frontRoute(req));
  }

  /** The front's scrapes: absolute-form requests whose credentials pass; anything else is Node's to answer. */
  #frontRoute(req: RequestLike): ((req: RequestLike, res: ResponseLike) => void) | undefined {
    if (this.#draining) return undefined;
    const abs = parseAbsolute(req.url ?? "");
    if (!abs) return undefined;
    const auth = this.#auth.check(req.headers);
    if (!auth.ok) return undefined;
    return (rq, res) => {
      this.metrics.countWorkerRequest();
      this.#track(res);
      this.#guard(
        "forward",
        () => this.#scrapes.forward(rq, res, parseTargetHost(abs.hostPort), abs.path, auth),
        () => answerPlain(res, 500, "scrapez proxy: internal error"),
      );
    };
  }

  /** An answer in flight, for a graceful stop. */
  #track(res: ResponseLike): void {
    this.#inFlight.add(res);
    res.once("close", () => {
      this.#inFlight.delete(res);
      this.#drainCheck?.();
    });
  }

  /** Whether requests must carry credentials now (bearer, basic, or a client certificate the handshake verified). */
  get #authenticated(): boolean {
    if (this.#auth.required || this.#config.tls?.clientCA) return true;
    return !!this.#web?.requiresClientCert;
  }

  /** Sets what `POST /-/reload` runs (the CLI's SIGHUP reload). */
  setReloader(fn: () => Promise<ReloadOutcome>): void {
    this.#reloader = fn;
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
    return this.#scrapes.poolCount;
  }

  /** Client connections the front still reads (not handed to Node's server): see ./front.ts. */
  get frontConnections(): number {
    return this.#front?.size ?? 0;
  }

  /** CONNECT tunnels open or being dialed (bounded by tunnels.maxConcurrent). */
  get tunnelCount(): number {
    return this.#tunnels.count;
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

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void | Promise<void> {
    this.metrics.countWorkerRequest();
    if (this.#draining) {
      // A new request on a kept-alive connection after SIGTERM: refused, and the connection closed after it.
      res.shouldKeepAlive = false;
      return answerPlain(res, 503, "scrapez proxy is shutting down", { [ERROR_HEADER]: ProxyErrorCodes.SHUTTING_DOWN });
    }
    this.#track(res);
    if (this.#web) {
      // As exporter-toolkit: the web config as it is now, for every request (headers, users).
      const warm = this.#web.warm(req);
      if (warm === false) {
        this.metrics.requests.inc({ service: "(web-config)", code: "500" });
        return answerPlain(
          res,
          500,
          "scrapez proxy: the web config (--web.config.file) is invalid; the proxy's log says why",
        );
      }
      this.#web.addHeaders(res);
      if (warm) return warm.then(() => this.#route(req, res));
    }
    return this.#route(req, res);
  }

  #route(req: http.IncomingMessage, res: http.ServerResponse): void | Promise<void> {
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
        () => this.#scrapes.forward(req, res, parseTargetHost(abs.hostPort), abs.path, auth),
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
    if (path === "/sd") {
      this.metrics.countAnswer(res, () => "/sd");
      return serveSd(req, res, this.sdSource);
    }
    if (path === "/metrics") return void this.#serveMetrics(res);
    if (path === "/-/reload") {
      this.metrics.countAnswer(res, () => "/-/reload");
      return void this.#lifecycleReload(req, res);
    }
    if (path === "/status" || path === "/status.json") {
      this.metrics.countAnswer(res, () => path);
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
        () => this.#scrapes.forward(req, res, pm.target, pm.path, auth),
        () => answerPlain(res, 500, "scrapez proxy: internal error"),
      );
    answerPlain(
      res,
      404,
      `scrapez proxy: no such endpoint ${printable(path)} (use proxy_url, /scrape/<service>/<path>, /sd, /metrics, /status)`,
    );
  }

  /**
   * `/-/reload` as Prometheus answers it: POST or PUT only (405 otherwise), only with --web.enable-lifecycle (403
   * otherwise); runs what SIGHUP runs and answers its outcome: 200, or 500 `failed to reload config: <why>` with the
   * running config kept.
   */
  async #lifecycleReload(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== "POST" && req.method !== "PUT") {
      return answerPlain(res, 405, "Only POST or PUT requests allowed", { allow: "POST, PUT" });
    }
    if (!this.#config.enableLifecycle || !this.#reloader) {
      return answerPlain(res, 403, "Lifecycle API is not enabled (start scrapez proxy with --web.enable-lifecycle)");
    }
    let outcome: ReloadOutcome;
    try {
      outcome = await this.#reloader();
    } catch (err) {
      // The reload could not be asked for (with --workers: the primary is still starting them); try again later.
      return answerPlain(res, 503, `failed to reload config: ${(err as Error).message}`);
    }
    if (outcome.ok) {
      const changed = outcome.changed ? `; changed: ${outcome.changed.join(", ") || "nothing"}` : "";
      return answerPlain(res, 200, `config reloaded${changed}`);
    }
    answerPlain(res, 500, `failed to reload config: ${outcome.reason}`);
  }

  async #serveMetrics(res: http.ServerResponse): Promise<void> {
    try {
      const text = await this.metrics.exposition();
      res.writeHead(200, { "content-type": this.metrics.registry.contentType });
      res.end(text);
    } catch (err) {
      answerPlain(res, 500, `scrapez proxy: ${(err as Error).message}`);
    }
  }

  /**
   * Applies a reloaded config (SIGHUP) to the running proxy and returns the top-level fields that changed.
   * Live: logLevel (the caller's logger), auth (the credential files are read again, so a rotated token applies
   * even when the config is unchanged), tls certificate, key and client CA (read again), discovery, timeouts, agent,
   * drainSeconds, insecureAllowUnauthenticated, allowedHosts, tunnels, logFormat, enableLifecycle. `listen`,
   * `identities`, `zitiAuth`, `renewCertBeforeDays`, `agent.maxPools`, `workers`, `webConfigFile` and turning TLS on
   * or off need a restart:
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
    if (next.egressProxy !== cur.egressProxy) restart.push("egressProxy");
    if (next.webConfigFile !== cur.webConfigFile) restart.push("webConfigFile");
    if (next.agent.maxPools !== cur.agent.maxPools) restart.push("agent.maxPools");
    if (next.workers !== cur.workers) restart.push("workers");
    if (restart.length) {
      throw new Error(`${restart.join(", ")} changed: restart scrapez proxy to apply that (nothing was changed)`);
    }
    // Everything that can fail first, then the switch.
    const auth = authenticatorFor(next, this.#web?.users);
    this.#web?.recheck(next);
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
        "logFormat",
        "enableLifecycle",
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
    if (secure) (this.server as https.Server).setSecureContext(secure);
    this.#config = next;
    this.catalog.setDiscovery(next.discovery);
    if (changed.includes("agent")) this.#scrapes.configure(next.agent);
    return changed;
  }

  /** Requests being answered plus open CONNECT tunnels. */
  get inFlight(): number {
    return this.#inFlight.size + this.#tunnels.open;
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
    this.#front?.closeIdle();
    await new Promise<void>((done) => {
      const timer = setTimeout(done, deadlineMs);
      timer.unref();
      this.#drainCheck = () => {
        this.server.closeIdleConnections();
        this.#front?.closeIdle();
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
    this.#scrapes.close();
    this.#tunnels.close();
    this.server.closeAllConnections();
    this.#front?.closeAll();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
