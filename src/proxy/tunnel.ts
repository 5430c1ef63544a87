/**
 * CONNECT tunnels: `CONNECT <service>:<port>` (Prometheus with `scheme: https` through `proxy_url`) gets a raw byte
 * pipe to one overlay dial, so the scraper's TLS runs end to end. Authenticated like every request; at most
 * `tunnels.maxConcurrent` open or being dialed; closed after `tunnels.idleSeconds` with no byte either way.
 */
import type http from "node:http";
import type { Duplex } from "node:stream";
import { rawAnswer } from "../common/answer.js";
import { ProxyErrorCodes } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { parseTargetHost } from "../common/naming.js";
import type { TargetName } from "../overlay/types.js";
import { asSocket } from "../overlay/types.js";
import type { Authenticator } from "./auth.js";
import type { ServiceCatalog } from "./catalog.js";
import type { ProxyConfig } from "./config.js";
import type { ProxyMetrics } from "./metrics.js";
import { ERROR_HEADER } from "./request.js";
import { resolveTarget } from "./resolve.js";
import { failure } from "./upstream.js";

type Reply = (status: number, text: string, extra?: Record<string, string>) => void;

/** What the tunnels share with the rest of the proxy; `config` and `auth` are read per tunnel (a reload swaps them). */
export interface TunnelDeps {
  config: () => ProxyConfig;
  auth: () => Authenticator;
  catalog: ServiceCatalog;
  metrics: ProxyMetrics;
  log: Logger;
  /** Runs the rest of an async handler so that a throw ends only this tunnel (ProxyServer's guard). */
  guard: (what: string, fn: () => Promise<void>, fallback: () => void) => void;
  /** A tunnel closed (a graceful stop waits for them). */
  closed: () => void;
}

export class Tunnels {
  readonly #deps: TunnelDeps;
  /** Overlay connections of open tunnels. */
  readonly #open = new Set<Duplex>();
  /** Tunnels open or being dialed: what tunnels.maxConcurrent counts. */
  #slots = 0;

  constructor(deps: TunnelDeps) {
    this.#deps = deps;
  }

  /** Tunnels open or being dialed (bounded by tunnels.maxConcurrent). */
  get count(): number {
    return this.#slots;
  }

  /** Tunnels open (what a graceful stop waits for). */
  get open(): number {
    return this.#open.size;
  }

  /** The server's 'connect' event: checks credentials and the limit, then dials (see #tunnel). */
  connect(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const { metrics, log } = this.#deps;
    socket.on("error", () => socket.destroy());
    const reply: Reply = (status, text, extra = {}) => void socket.end(rawAnswer(status, text, extra));
    const auth = this.#deps.auth();
    if (!auth.check(req.headers).ok) {
      metrics.requests.inc({ service: "(auth)", code: "407" });
      return reply(407, "scrapez proxy: authentication required", {
        "proxy-authenticate": auth.challenge,
        [ERROR_HEADER]: ProxyErrorCodes.UNAUTHENTICATED,
      });
    }
    const max = this.#deps.config().tunnels.maxConcurrent;
    if (this.#slots >= max) {
      metrics.requests.inc({ service: "(limit)", code: "503" });
      metrics.tunnelEvents.inc({ event: "over-limit" });
      log.warn("tunnel refused: too many open", { max });
      return reply(
        503,
        `scrapez proxy: too many CONNECT tunnels open (${max}, tunnels.maxConcurrent); try again later`,
        { [ERROR_HEADER]: ProxyErrorCodes.TOO_MANY_TUNNELS, "retry-after": "1" },
      );
    }
    this.#slots++;
    metrics.tunnels.set(this.#slots);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.#slots--;
      metrics.tunnels.set(this.#slots);
    };
    socket.once("close", release);
    const t = parseTargetHost(req.url ?? "");
    this.#deps.guard(
      "CONNECT",
      () => this.#tunnel(t, socket, head, reply, release),
      () => socket.destroy(),
    );
  }

  async #tunnel(t: TargetName, socket: Duplex, head: Buffer, reply: Reply, release: () => void): Promise<void> {
    const { metrics, log } = this.#deps;
    const r = await resolveTarget(this.#deps.catalog, t);
    if ("status" in r) {
      metrics.requests.inc({ service: "(refused)", code: String(r.status) });
      return reply(r.status, r.text, { [ERROR_HEADER]: r.code });
    }
    const started = Date.now();
    const timeoutMs = this.#deps.config().timeouts.dialSeconds * 1000;
    let conn: Duplex;
    try {
      conn = await metrics.timeDial(r.service, () =>
        r.ctx.dial(r.service, { timeoutMs, ...(r.identity !== undefined ? { identity: r.identity } : {}) }),
      );
    } catch (err) {
      const f = failure(err as Error, r, Date.now() - started, timeoutMs);
      metrics.requests.inc({ service: r.service, code: String(f.status) });
      log.warn("tunnel failed", { service: r.service, replica: r.identity, status: f.status, code: f.code });
      return reply(f.status, f.text, { [ERROR_HEADER]: f.code });
    }
    conn.on("error", () => conn.destroy());
    asSocket(conn);
    if (socket.destroyed) return void conn.destroy();
    metrics.requests.inc({ service: r.service, code: "200" });
    metrics.active.inc();
    this.#open.add(conn);
    // Idle: no byte either way for tunnels.idleSeconds.
    const idleMs = this.#deps.config().tunnels.idleSeconds * 1000;
    let last = Date.now();
    const touch = () => void (last = Date.now());
    let idleTimer: NodeJS.Timeout | undefined;
    const checkIdle = () => {
      const quiet = Date.now() - last;
      if (quiet < idleMs) {
        idleTimer = setTimeout(checkIdle, idleMs - quiet);
        return;
      }
      metrics.tunnelEvents.inc({ event: "idle-timeout" });
      log.debug("tunnel idle: closing", { service: r.service, replica: r.identity, idleMs });
      conn.destroy();
      socket.destroy();
    };
    idleTimer = setTimeout(checkIdle, idleMs);
    conn.once("close", () => {
      clearTimeout(idleTimer);
      metrics.active.dec();
      this.#open.delete(conn);
      release();
      socket.destroy();
      this.#deps.closed();
    });
    socket.once("close", () => conn.destroy());
    socket.on("data", touch);
    conn.on("data", touch);
    socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length) conn.write(head);
    socket.pipe(conn);
    conn.pipe(socket);
    log.debug("tunnel open", { service: r.service, replica: r.identity });
  }

  /** Closes every open tunnel (the proxy is closing). */
  close(): void {
    for (const c of this.#open) c.destroy();
  }
}
