/**
 * Forwarded scrapes: a GET for `<service>` (absolute-form or path mode) resolved to the identity that may dial it and
 * sent over that target's pooled overlay connections (./overlay-forward.ts forwards it under the scrape deadline).
 * Owns the pools (one per identity, service and replica, bounded by agent.maxPools).
 */
import { answerPlain } from "../common/answer.js";
import { SCRAPE_TIMEOUT_HEADER } from "../common/deadline.js";
import { ProxyErrorCodes } from "../common/errors.js";
import { requestHead } from "../common/forward.js";
import type { RequestLike, ResponseLike } from "../common/http-like.js";
import type { Logger } from "../common/log.js";
import { targetHost } from "../common/naming.js";
import type { TargetName } from "../overlay/types.js";
import { AgentCache, OverlayAgent } from "./agent.js";
import type { AuthResult, Authenticator } from "./auth.js";
import type { Resolved, ServiceCatalog } from "./catalog.js";
import type { ProxyConfig } from "./config.js";
import type { ProxyMetrics } from "./metrics.js";
import { Forward } from "./overlay-forward.js";
import { ERROR_HEADER, printable, scrapeDeadlineMs } from "./request.js";
import { resolveTarget } from "./resolve.js";
import type { StatusService } from "./status/service.js";
import { STALE_OVERLAY_CODES, forwardFailure } from "./upstream.js";
import { keyOf } from "./warmup.js";

/** What scrapes share with the rest of the proxy; `config` and `auth` are read per scrape (a reload swaps them). */
export interface ScrapeDeps {
  config: () => ProxyConfig;
  auth: () => Authenticator;
  catalog: ServiceCatalog;
  status: StatusService;
  metrics: ProxyMetrics;
  log: Logger;
}

export class Scrapes {
  readonly #deps: ScrapeDeps;
  readonly #agents: AgentCache;
  /** When the last "pool evicted" warning was logged. */
  #evictionWarnedAt = 0;

  constructor(deps: ScrapeDeps) {
    this.#deps = deps;
    const { config, metrics, log } = deps;
    const agent = config().agent;
    this.#agents = new AgentCache({
      max: agent.maxPools,
      idleMs: agent.keepAliveSeconds * 1000,
      onSize: (n) => metrics.pools.set(n),
      onEvict: () => {
        metrics.poolEvictions.inc();
        // Once a minute at most: under churn this runs on every scrape.
        if (Date.now() - this.#evictionWarnedAt < 60_000) return;
        this.#evictionWarnedAt = Date.now();
        log.warn("keep-alive pool evicted: more targets than agent.maxPools, so scrapes dial anew", {
          maxPools: agent.maxPools,
          fix: "raise agent.maxPools above the number of targets this proxy scrapes",
        });
      },
    });
  }

  /** Open pooled-connection agents (bounded by agent.maxPools). */
  get poolCount(): number {
    return this.#agents.size;
  }

  /** A reloaded config's pool settings, for every agent (see OverlayAgent.configure). */
  configure(agent: ProxyConfig["agent"]): void {
    for (const a of this.#agents.values()) {
      a.configure({ maxSockets: agent.maxSocketsPerService, keepAliveMs: agent.keepAliveSeconds * 1000 });
    }
  }

  /** Closes every pool and its connections. */
  close(): void {
    this.#agents.close();
  }

  /** The pooled agent of a resolved target (only ever called after the catalog resolved it). */
  #agent(r: Resolved): OverlayAgent {
    const key = keyOf(r.ctx.identityName, r.service, r.identity);
    const config = this.#deps.config();
    return this.#agents.get(
      key,
      () =>
        new OverlayAgent(
          r.ctx,
          { service: r.service, ...(r.identity !== undefined ? { identity: r.identity } : {}) },
          this.#deps.metrics,
          { maxSockets: config.agent.maxSocketsPerService, keepAliveMs: config.agent.keepAliveSeconds * 1000 },
        ),
    );
  }

  /** Forwards one scrape of `t` (`path` with its query); `auth` is whom the request's credentials proved. */
  async forward(req: RequestLike, res: ResponseLike, t: TargetName, path: string, auth: AuthResult): Promise<void> {
    const { metrics, log } = this.#deps;
    const started = Date.now();
    let label = "(refused)";
    metrics.countAnswer(res, () => label);
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
    const config = this.#deps.config();
    const deadlineMs = scrapeDeadlineMs(req.headers[SCRAPE_TIMEOUT_HEADER], config.timeouts.defaultScrapeSeconds);
    const r = await resolveTarget(this.#deps.catalog, t);
    if ("status" in r) {
      log.debug("refused", { host: targetHost(t), status: r.status });
      return answerPlain(res, r.status, r.text, { [ERROR_HEADER]: r.code });
    }
    label = r.service;
    const scrape = this.#deps.status.track(req, res, r, auth, started);
    const host = targetHost(r);
    const dialMs = config.timeouts.dialSeconds * 1000;
    const fail = (status: number, text: string, code: string) => {
      scrape.failed(text);
      answerPlain(res, status, text, { [ERROR_HEADER]: code });
    };
    let request: Buffer;
    try {
      // Every header that carries the proxy's own credentials (Prometheus may send them twice); a target's own
      // Authorization passes.
      request = requestHead(req.method, path, host, req.rawHeaders, this.#deps.auth().credentialHeaders(req.headers));
    } catch (err) {
      const out = forwardFailure({ kind: "request", err: err as Error }, r, 0, deadlineMs);
      return fail(out.status, out.text, out.code);
    }
    const forward = new Forward(
      req,
      res,
      this.#agent(r),
      request,
      { deadlineMs, started, dialTimeoutMs: dialMs, staleCodes: STALE_OVERLAY_CODES, log },
      {
        fail: (f, elapsedMs) => {
          if (res.destroyed) return;
          const out = forwardFailure(f, r, elapsedMs, deadlineMs);
          log.warn("scrape failed", { service: r.service, replica: r.identity, status: out.status, code: out.code });
          fail(out.status, out.text, out.code);
        },
        passing: (head) => {
          log.debug("forwarded", { service: r.service, replica: r.identity, status: head.status });
          return scrape.upstream(head.status, head.headers);
        },
        retrying: () =>
          log.debug("pooled overlay connection was closed; retrying on a fresh one", { service: r.service }),
      },
    );
    forward.start();
  }
}
