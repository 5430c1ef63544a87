/**
 * One exchange on a bound target's overlay connection: an HTTP request checked (caller, method, path) and forwarded
 * to the exporter under the scrape deadline (src/common/forward.ts), or, for a passthrough target, a raw byte pipe
 * to the exporter. Each is counted, timed and logged as a scrape with its caller.
 */
import http from "node:http";
import https from "node:https";
import net from "node:net";
import type { Duplex } from "node:stream";
import { SCRAPE_TIMEOUT_HEADER } from "../common/deadline.js";
import { Forward, upstreamHeaders } from "../common/forward.js";
import type { Logger } from "../common/log.js";
import type { OverlayConnection } from "../overlay/types.js";
import { callerOf } from "./admission.js";
import { pathAllowed } from "./config.js";
import { statusLabel, type BindMetrics } from "./metrics.js";
import { normalizeRequestTarget } from "./paths.js";
import { audit, forwardFailure, send, upstreamTimeoutMs } from "./respond.js";
import type { ServiceRuntime } from "./runtime.js";

export interface ExchangeDeps {
  metrics: BindMetrics;
  log: Logger;
  /** A graceful stop has begun: new requests are refused. */
  draining: () => boolean;
  /** Counts `key` (a response, a relay exchange, or a passthrough connection) as in flight on `conn` until it closes. */
  track: (key: InFlight, conn: Duplex) => void;
}

/** What is counted as in flight: anything that says when it is over. */
export interface InFlight {
  once(event: "close", listener: () => void): unknown;
}

export class Exchanges {
  readonly #deps: ExchangeDeps;

  constructor(deps: ExchangeDeps) {
    this.#deps = deps;
  }

  /** Counts a relay exchange (./relay.ts) as in flight on `conn` until it closes. */
  track(key: InFlight, conn: Duplex): void {
    this.#deps.track(key, conn);
  }

  /** Raw byte pipe to the upstream (the scraper's TLS runs end to end); the caller allow-list still applies. */
  passthrough(rt: ServiceRuntime, c: OverlayConnection): void {
    const t = rt.target;
    const who = callerOf(c, t.service, t.allow);
    const caller = who.caller;
    const started = Date.now();
    if (who.refusal) {
      this.#deps.log.info("connection refused", { ...audit(who), service: t.service, reason: who.refusal });
      this.#deps.metrics.scrapes.inc({ service: t.service, caller: who.label, status: "403" });
      c.destroy();
      return;
    }
    this.#deps.track(c, c);
    const up = net.connect({ host: rt.upstream.hostname, port: rt.upstream.port });
    up.setTimeout(t.timeoutSeconds * 1000, () => up.destroy(new Error("idle timeout")));
    up.on("error", (err: NodeJS.ErrnoException) => {
      this.#deps.metrics.upstreamErrors.inc({
        service: t.service,
        kind: err.code === "ECONNREFUSED" ? "refused" : "other",
      });
      this.#deps.log.warn("passthrough upstream error", { caller, service: t.service, reason: err.message });
      c.destroy();
    });
    c.pipe(up);
    up.pipe(c);
    c.once("close", () => up.destroy());
    up.once("close", () => {
      c.destroy();
      this.#deps.metrics.scrapes.inc({ service: t.service, caller: who.label, status: "tunnel" });
      this.#deps.log.info("scrape", {
        ...audit(who),
        service: t.service,
        mode: "passthrough",
        bytes: c.bytesWritten,
        duration_ms: Date.now() - started,
      });
    });
  }

  handle(rt: ServiceRuntime, req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.#deps.draining()) {
      // A new request on a connection that was busy when the stop began: refused, and the connection closed.
      res.shouldKeepAlive = false;
      return send(res, 503, `scrapez bind: service "${rt.target.service}": shutting down`);
    }
    this.#deps.track(res, req.socket);
    const started = process.hrtime.bigint();
    const t = rt.target;
    const who = callerOf(req.socket, t.service, t.allow);
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    const rawPath = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const target = normalizeRequestTarget(rawUrl);
    const path = target.ok ? target.path : rawPath;
    let bytes = 0;
    let upstreamErrorKind: string | undefined;
    res.once("close", () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const status = res.statusCode;
      this.#deps.metrics.scrapes.inc({ service: t.service, caller: who.label, status: statusLabel(status) });
      this.#deps.metrics.duration.observe({ service: t.service }, seconds);
      if (upstreamErrorKind) this.#deps.metrics.upstreamErrors.inc({ service: t.service, kind: upstreamErrorKind });
      if (!this.#deps.log.enabled("info")) return;
      this.#deps.log.info("scrape", {
        ...audit(who),
        service: t.service,
        method: req.method,
        path,
        ...(rawPath !== path ? { raw_path: rawPath } : {}),
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
    const u = rt.upstream;
    const headers = upstreamHeaders(req.headers, u.host);
    const forward = new Forward(
      req,
      res,
      { deadlineMs: timeoutMs, abandon: "destroy", log: this.#deps.log },
      {
        open: () =>
          (u.tls ? https : http).request({
            agent: rt.agent,
            hostname: u.hostname,
            port: u.port,
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
}
