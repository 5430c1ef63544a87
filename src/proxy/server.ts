/**
 * The dial side: an HTTP proxy a stock Prometheus uses through `proxy_url` (absolute-form requests and CONNECT),
 * plus path mode (`/scrape/<target>/<path>`), HTTP service discovery (`/sd`), health and self-metrics.
 * Only overlay services are reachable: a host that is not a dialable service is refused, and the proxy never opens a
 * TCP connection to a requested host (it has no code path that could: every upstream byte goes through
 * DialOverlay.dial()).
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import type { Logger } from "../common/log.js";
import { ErrorCodes } from "../ziti/errors.js";
import { isIP } from "node:net";
import { AgentCache, OverlayAgent, asSocket, type OverlayRequestOptions } from "./agent.js";
import { onClientGone } from "../common/client-gone.js";
import { answerPlain, rawAnswer } from "../common/answer.js";
import { AppErrorCodes, ProxyErrorCodes, ScrapezError } from "../common/errors.js";
import { RESERVE_SHARE, SCRAPE_TIMEOUT_HEADER, scrapeDeadlineMs as deadlineMs } from "../common/deadline.js";
import { challenge, checkAuth, credentialHeaders, loadCredentials, type AuthResult, type Credentials } from "./auth.js";
import { ServiceCatalog, type Resolved } from "./catalog.js";
import type { ProxyConfig } from "./config.js";
import { ProxyMetrics, codeLabel, resultLabel } from "./metrics.js";
import { parseTargetHost, targetHost } from "../common/naming.js";
import { StatusService } from "./status/service.js";
import type { DialOverlay, TargetName } from "./types.js";

export { ProxyMetrics } from "./metrics.js";
export type { DialOverlay } from "./types.js";

/** Set on answers the proxy makes itself (not the bind side's), with a short reason. */
export const ERROR_HEADER = "x-scrapez-proxy-error";

/** `/sd` query limits: parameters, characters of the whole query, characters of one value. */
export const MAX_SD_PARAMS = 32;
export const MAX_SD_QUERY = 4096;
export const MAX_SD_GLOB = 256;

/** A peer's bytes made safe for a one-line message: printable ASCII kept, anything else as \xNN, at most `max`. */
export function printable(s: string, max = 64): string {
  const cut = s.length > max ? `${s.slice(0, max)}...` : s;
  return cut.replace(/[^\x20-\x7e]|\\/g, (c) =>
    c === "\\" ? "\\\\" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

/**
 * Why an upstream answer cannot be passed on as it is, or undefined. Node's HTTP client accepts status lines and
 * headers that its server side refuses to write (`HTTP/1.1 000`, `099`, a control byte in the reason phrase), and a
 * 1xx status is never a final answer. Checked before anything is written, so the 502 carries none of it.
 */
export function unpassable(
  status: number | undefined,
  reason: string | undefined,
  rawHeaders: string[],
): string | undefined {
  if (status === undefined || !Number.isInteger(status) || status < 200 || status > 999) {
    return `status ${String(status ?? "none").padStart(3, "0")} is not a final HTTP status`;
  }
  if (reason !== undefined && /[^\t\x20-\x7e\x80-\xff]/.test(reason)) {
    return `the reason phrase "${printable(reason)}" has a control character`;
  }
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const k = rawHeaders[i]!;
    try {
      http.validateHeaderName(k);
    } catch {
      return `the header name "${printable(k)}" is not a valid token`;
    }
    try {
      http.validateHeaderValue(k, rawHeaders[i + 1]!);
    } catch {
      return `the value of header "${printable(k)}" has a character HTTP does not allow`;
    }
  }
  return undefined;
}

/** `host[:port]` or `[v6][:port]` -> the host, lower-case, without brackets or a trailing dot. */
function hostOnly(hostHeader: string): string {
  const h = hostHeader.trim().toLowerCase();
  const v6 = /^\[([^\]]*)\](?::\d*)?$/.exec(h);
  return (v6 ? v6[1]! : h.replace(/:\d*$/, "")).replace(/\.$/, "");
}

/**
 * The DNS-rebinding guard for origin-form requests when no credentials are required: a web page can make a browser
 * send requests to the proxy under the page's own host name, and read the answers. Such a request carries that name
 * in Host; so only `localhost`, IP literals (a page served from an IP literal is the proxy itself), the listen host
 * and `allowedHosts` are served. No Host at all (HTTP/1.0) is not a browser's and passes.
 */
export function hostAllowed(
  hostHeader: string | undefined,
  listenHost: string,
  allowedHosts: readonly string[],
): boolean {
  if (hostHeader === undefined || hostHeader.trim() === "") return true;
  const h = hostOnly(hostHeader);
  if (h === "localhost" || isIP(h) !== 0) return true;
  if (h === listenHost.toLowerCase().replace(/\.$/, "")) return true;
  return allowedHosts.some((a) => a.toLowerCase().replace(/\.$/, "") === h);
}

/** How long a late answer (after the proxy answered 504) may take to finish before its connection is closed. */
export const LATE_ANSWER_MS = 10_000;

/**
 * The scrape deadline passed while `upstream` waits for its answer on an overlay connection: the client gets its
 * 504 now, but the connection is not torn down. Its late answer is read and discarded, and the connection returns
 * to the keep-alive pool, as long as that happens within LATE_ANSWER_MS (then it is closed). Connections are
 * shared by every job scraping the service, and while the controller is unreachable no new circuit can be made:
 * closing one because a 1 s job timed out would fail the 5 s job's next scrape too (the Go tunnelers give each
 * Prometheus connection its own circuit, so one job's timeout never costs another job its connection).
 */
function spareLateAnswer(upstream: http.ClientRequest, err: Error): void {
  const late = setTimeout(() => upstream.destroy(err), LATE_ANSWER_MS);
  late.unref();
  upstream.once("close", () => clearTimeout(late));
  upstream.once("response", (ur) => {
    ur.resume();
    ur.once("end", () => clearTimeout(late));
  });
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

/** Hop-by-hop headers: the fixed set plus any the Connection header names. */
function hopByHop(headers: http.IncomingHttpHeaders): Set<string> {
  const drop = new Set(HOP_BY_HOP);
  const c = headers.connection;
  for (const t of (Array.isArray(c) ? c.join(",") : (c ?? "")).split(",")) {
    if (t.trim()) drop.add(t.trim().toLowerCase());
  }
  return drop;
}

/**
 * How long the proxy may take to dial and answer: the common scrape-deadline rule (src/common/deadline.ts) with the
 * proxy's reserve; without the header, `timeouts.defaultScrapeSeconds`.
 */
export function scrapeDeadlineMs(header: string | string[] | undefined, fallbackSeconds: number): number {
  return deadlineMs(header, fallbackSeconds, RESERVE_SHARE.proxy);
}

/** `http://host[:port]/path?query` -> host and path; undefined unless it is an absolute http URL. */
export function parseAbsolute(url: string): { hostPort: string; path: string } | undefined {
  // Parsed by hand: WHATWG URL lower-cases hosts and rejects hosts whose last label is numeric (`svc.1`).
  const m = /^http:\/\/([^/?#]+)([^#]*)/i.exec(url);
  if (!m || m[1]!.includes("@")) return undefined;
  const rest = m[2]!;
  return { hostPort: m[1]!, path: rest.startsWith("/") ? rest : `/${rest}` };
}

/** `/scrape/<target>/<path>?q` -> target and `/<path>?q`. */
export function parsePathMode(url: string): { target: TargetName; path: string } | "bad" | undefined {
  const m = /^\/scrape\/([^/?#]+)([^?#]*)(\?[^#]*)?/.exec(url);
  if (!m) return undefined;
  let host: string;
  try {
    host = decodeURIComponent(m[1]!);
  } catch {
    return "bad";
  }
  return { target: parseTargetHost(host), path: `${m[2] || "/"}${m[3] ?? ""}` };
}

interface Failure {
  status: number;
  /** The X-Scrapez-Proxy-Error value: one of ProxyErrorCodes, or the SDK's ZITI_* code of a failed dial. */
  code: string;
  text: string;
}

function describeTarget(r: Resolved): string {
  return `service "${r.service}"${r.identity !== undefined ? ` (replica "${r.identity}")` : ""} via identity "${r.ctx.identityName}"`;
}

/** Maps a dial or request error to the proxy's answer. */
export function failure(err: Error & { code?: string }, r: Resolved, elapsedMs: number, deadlineMs: number): Failure {
  const who = describeTarget(r);
  switch (err.code) {
    case AppErrorCodes.SCRAPE_TIMEOUT:
      return {
        status: 504,
        code: ProxyErrorCodes.SCRAPE_TIMEOUT,
        text: `scrapez proxy: ${who} did not answer within ${(deadlineMs / 1000).toFixed(1)}s`,
      };
    case ErrorCodes.DIAL_TIMEOUT:
      return {
        status: 504,
        code: err.code,
        text: `scrapez proxy: dialing ${who} timed out after ${elapsedMs} ms`,
      };
    case ErrorCodes.SERVICE_NOT_FOUND:
    case ErrorCodes.NOT_AUTHORIZED:
      return { status: 502, code: err.code, text: `scrapez proxy: ${who} is not dialable: ${err.message}` };
    case ErrorCodes.NO_EDGE_ROUTERS:
      return { status: 502, code: err.code, text: `scrapez proxy: ${who}: no online edge router: ${err.message}` };
    default:
      if (err.code?.startsWith("HPE_")) return badUpstream(r, `not valid HTTP: ${err.message} (${err.code})`);
      return {
        status: 502,
        code: resultLabel(err.code),
        text: `scrapez proxy: ${who} is unreachable: ${err.message}`,
      };
  }
}

/** An answer the proxy cannot pass on: 502 naming the service and why. */
export function badUpstream(r: Resolved, why: string): Failure {
  return {
    status: 502,
    code: ProxyErrorCodes.BAD_UPSTREAM,
    text: `scrapez proxy: ${describeTarget(r)} answered with a response that cannot be passed on: ${why}`,
  };
}

/** A pooled keep-alive socket the far end closed while idle: safe to retry an idempotent request once. */
function isStaleSocket(err: Error & { code?: string }): boolean {
  return (
    err.code === "ECONNRESET" ||
    err.code === "EPIPE" ||
    err.code === ErrorCodes.CONNECTION_CLOSED ||
    err.code === ErrorCodes.CHANNEL_CLOSED
  );
}

export class ProxyServer {
  readonly metrics = new ProxyMetrics();
  readonly server: http.Server;
  readonly catalog: ServiceCatalog;
  /** Scrape history and the /status page (src/proxy/status/). */
  readonly status: StatusService;
  #config: ProxyConfig;
  readonly #log: Logger;
  #creds: Credentials;
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
  #drainCheck: (() => void) | undefined;

  /** Reads the credential and TLS files (throws ConfigError naming the field when one is empty or unreadable). */
  constructor(overlays: DialOverlay[], config: ProxyConfig, log: Logger) {
    this.#config = config;
    this.#log = log;
    this.#creds = loadCredentials(config);
    this.#authenticated = !!(this.#creds.bearer || this.#creds.basic || config.tls?.clientCA);
    this.#agents = new AgentCache({
      max: config.agent.maxPools,
      idleMs: config.agent.keepAliveSeconds * 1000,
      onSize: (n) => this.metrics.pools.set(n),
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
    const c = challenge(this.#creds);
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
      const auth = checkAuth(this.#creds, req.headers);
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
    const auth = checkAuth(this.#creds, req.headers);
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
            log: this.#log,
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
    // The client may leave at any point, also while the target is being resolved (a pipelined request whose
    // successor broke the parser closes the socket then): from then on no upstream request may start, and one
    // already started is destroyed so its pooled overlay connection is freed.
    let gone = false;
    let current: http.ClientRequest | undefined;
    let timer: NodeJS.Timeout | undefined;
    onClientGone(req, res, () => {
      gone = true;
      clearTimeout(timer);
      timer = undefined;
      current?.destroy();
    });
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
    if (gone || res.destroyed) return;
    const drop = hopByHop(req.headers);
    // Every header that carries the proxy's own credentials (Prometheus may send them twice); a target's own
    // Authorization passes.
    for (const h of credentialHeaders(this.#creds, req.headers)) drop.add(h);
    drop.add("content-length"); // GET/HEAD: no body is forwarded
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (!drop.has(k) && v !== undefined) headers[k] = v;
    const host = targetHost(r);
    headers.host = host;
    const agent = this.#agent(r);
    /** An answer (the upstream's or the proxy's) has begun: nothing else may be written. */
    let settled = false;
    const remaining = () => deadlineMs - (Date.now() - started);
    const answer = (f: Failure) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (res.destroyed) return;
      this.#log.warn("scrape failed", { service: r.service, replica: r.identity, status: f.status, code: f.code });
      scrape.failed(f.text);
      answerPlain(res, f.status, f.text, { [ERROR_HEADER]: f.code });
    };
    timer = setTimeout(() => {
      const err = new ScrapezError(AppErrorCodes.SCRAPE_TIMEOUT, "scrape timeout");
      // A request already written on an overlay connection is left to finish and its late answer drained, so the
      // connection goes back to the pool (see spareLateAnswer); one still waiting for a connection is dropped.
      if (current && !settled && current.socket && !current.destroyed) spareLateAnswer(current, err);
      else current?.destroy(err);
      answer(failure(err, r, Date.now() - started, deadlineMs));
    }, remaining());
    res.once("close", () => clearTimeout(timer));

    const send = (attempt: number) => {
      if (gone) return; // a retry after the client left: nothing to answer, nothing to hold
      const opts: OverlayRequestOptions = {
        agent,
        host,
        path,
        method: req.method,
        headers,
        dialTimeoutMs: Math.max(1, Math.min(this.#config.timeouts.dialSeconds * 1000, remaining())),
      };
      let upstream: http.ClientRequest;
      try {
        upstream = http.request(opts);
      } catch (err) {
        // Node refused to write this request (a header value or path it does not allow).
        return answer({
          status: 400,
          code: ProxyErrorCodes.BAD_REQUEST,
          text: `scrapez proxy: cannot forward this request to service "${r.service}": ${(err as Error).message}`,
        });
      }
      current = upstream;
      let retrying = false;
      upstream.on("response", (ur) => {
        // Cut short mid-body: the client must see the answer was incomplete. (Not after our own 502 ended.)
        const cut = () => void (res.writableEnded || res.destroy());
        ur.on("error", cut);
        ur.on("aborted", cut);
        if (settled) return; // a late answer after our 504: spareLateAnswer drains it
        const why = unpassable(ur.statusCode, ur.statusMessage, ur.rawHeaders);
        if (why !== undefined) {
          answer(badUpstream(r, why));
          return void upstream.destroy(); // never back into the pool: what follows is not HTTP we understand
        }
        const dropRes = hopByHop(ur.headers);
        const out: string[] = [];
        for (let i = 0; i + 1 < ur.rawHeaders.length; i += 2) {
          if (!dropRes.has(ur.rawHeaders[i]!.toLowerCase())) out.push(ur.rawHeaders[i]!, ur.rawHeaders[i + 1]!);
        }
        try {
          res.writeHead(ur.statusCode!, ur.statusMessage, out);
        } catch (err) {
          // unpassable() should have caught it; if Node still refuses, answer 502 without any of it.
          for (const h of res.getHeaderNames()) res.removeHeader(h);
          answer(badUpstream(r, (err as Error).message));
          return void upstream.destroy();
        }
        settled = true; // the deadline still runs: a body that trickles past it is cut (the client sees a reset)
        scrape.upstream(ur);
        ur.pipe(res);
        this.#log.debug("forwarded", { service: r.service, replica: r.identity, status: ur.statusCode });
      });
      // We never ask for an upgrade: a 101 with Upgrade is not an answer to a scrape (Node would just close).
      upstream.on("upgrade", (_ur, socket: Duplex) => {
        socket.destroy();
        answer(badUpstream(r, "101 Switching Protocols to a GET that asked for no upgrade"));
      });
      upstream.on("error", (err: Error & { code?: string }) => {
        if (!settled && attempt === 0 && upstream.reusedSocket && isStaleSocket(err) && remaining() > 0) {
          this.#log.debug("pooled overlay connection was closed; retrying on a fresh one", { service: r.service });
          retrying = true;
          return send(1);
        }
        if (settled) {
          if (!res.writableEnded) res.destroy();
          return;
        }
        answer(failure(err, r, Date.now() - started, deadlineMs));
      });
      upstream.on("close", () => {
        // Closed with neither an answer nor an error (Node does that after an unexpected upgrade): never hang.
        if (!settled && !retrying && current === upstream) {
          answer(badUpstream(r, "the connection closed without an answer"));
        }
      });
      upstream.end();
    };
    send(0);
  }

  #onConnect(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const reply = (status: number, text: string, extra: Record<string, string> = {}) =>
      void socket.end(rawAnswer(status, text, extra));
    const auth = checkAuth(this.#creds, req.headers);
    if (!auth.ok) {
      this.metrics.requests.inc({ service: "(auth)", code: "407" });
      return reply(407, "scrapez proxy: authentication required", {
        "proxy-authenticate": challenge(this.#creds),
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
    const query = url.includes("?") ? url.slice(url.indexOf("?") + 1) : "";
    const tooLarge = (what: string) =>
      answerPlain(res, 400, `scrapez proxy: /sd query too large: ${what}`, {
        [ERROR_HEADER]: ProxyErrorCodes.SD_QUERY_TOO_LARGE,
      });
    if (query.length > MAX_SD_QUERY) return tooLarge(`${query.length} characters (at most ${MAX_SD_QUERY})`);
    const q = new URLSearchParams(query);
    let n = 0;
    for (const [k, v] of q) {
      if (++n > MAX_SD_PARAMS) return tooLarge(`more than ${MAX_SD_PARAMS} parameters`);
      if (v.length > MAX_SD_GLOB)
        return tooLarge(`${printable(k, 16)}= is ${v.length} characters (at most ${MAX_SD_GLOB})`);
    }
    const body = JSON.stringify(
      this.catalog.groups({ service: q.getAll("service"), attribute: q.getAll("attribute") }),
    );
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
    const creds = loadCredentials(next);
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
    this.#creds = creds;
    this.#authenticated = !!(creds.bearer || creds.basic || next.tls?.clientCA);
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
