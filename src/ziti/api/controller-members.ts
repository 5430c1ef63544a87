/**
 * The controller client's members: the client API URLs of every known controller (the identity's ztAPI/ztAPIs,
 * then what an HA cluster lists) and the mTLS agent that reaches them. One exchange goes to the current member
 * first; a member that cannot be reached (or answers 502/503/504) is skipped for the next one, which then stays the
 * current one. Every exchange is bounded (size, time) by ./https.ts.
 */
import type https from "node:https";
import type { EgressRoute } from "../transport/egress-proxy.js";
import { debug } from "../debug.js";
import { ControllerError, ErrorCodes, isZitiError } from "../errors.js";
import { answerEnvelope, describeNetError } from "./controller-answer.js";
import { ControllerList, type Envelope } from "./controller-wire.js";
import { EgressAgent, httpsExchange, type ExchangeAnswer, type ExchangeError } from "./https.js";
import { tlsOptions, type Identity } from "./identity.js";

const log = debug("ctrl");

/** The controllers of an HA cluster answer with these while a member is restarting or has no leader: try another. */
const FAILOVER_STATUSES = new Set([502, 503, 504]);

export class ControllerMembers {
  readonly #urls: URL[] = [];
  #current = 0;
  #agent: https.Agent;
  readonly #timeoutMs: number;
  readonly #maxBody: number;
  /** Through an egress proxy or direct, per controller (HTTPS_PROXY / NO_PROXY or egressProxy). */
  readonly #egress: EgressRoute | undefined;

  constructor(identity: Identity, timeoutMs: number, maxBodyBytes: number, egress?: EgressRoute) {
    for (const u of [identity.ztAPI, ...(identity.ztAPIs ?? [])]) this.add(u);
    this.#timeoutMs = timeoutMs;
    this.#maxBody = maxBodyBytes;
    this.#egress = egress;
    // mTLS with the identity; trust its CA bundle only (`ca` replaces Node's default roots).
    this.#agent = newAgent(tlsOptions(identity), egress);
  }

  /** The client API URL requests go to now (it changes when a cluster member is down). */
  get currentUrl(): string {
    return this.#urls[this.#current]!.href.replace(/\/$/, "");
  }

  /** Every controller client API URL known (the identity's, then those the cluster advertises). */
  get urls(): string[] {
    return this.#urls.map((u) => u.href.replace(/\/$/, ""));
  }

  /** Adds an https client API URL (ignored if invalid, not https or known already); true if it was new. */
  add(u: string): boolean {
    let url: URL;
    try {
      url = new URL(u.replace(/\/+$/, "") + "/");
    } catch {
      return false;
    }
    if (url.protocol !== "https:") return false;
    if (this.#urls.some((x) => x.href === url.href)) return false;
    this.#urls.push(url);
    return true;
  }

  /** HA: adds the edge-client v1 URLs of a GET /controllers answer's members; true if any was new. */
  addAdvertised(data: unknown): boolean {
    const list = ControllerList.safeParse(data);
    if (!list.success) return false;
    let added = false;
    for (const c of list.data) {
      for (const a of c.apiAddresses?.["edge-client"] ?? []) {
        if ((!a.version || a.version === "v1") && this.add(a.url)) added = true;
      }
    }
    return added;
  }

  /**
   * One JSON API exchange with failover: the current member first; if it cannot be reached (or answers 502/503/504)
   * the next members in turn, and the first that answers becomes the current one. `auth` undefined =
   * unauthenticated (a 401/403 then means the identity was refused); else the header carrying the token.
   */
  async send(method: string, path: string, body: unknown, auth: Record<string, string> | undefined): Promise<Envelope> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { accept: "application/json", ...auth };
    if (payload) headers["content-type"] = "application/json";
    const order = this.#order();
    let lastErr: unknown;
    for (const [k, i] of order.entries()) {
      const url = new URL(path, this.#urls[i]);
      const what = `${method} ${url.pathname}`;
      let ans: ExchangeAnswer;
      try {
        ans = await this.http(method, url, headers, payload);
      } catch (err) {
        lastErr = err;
        continue;
      }
      if (FAILOVER_STATUSES.has(ans.status) && k < order.length - 1) {
        lastErr = new ControllerError(ErrorCodes.CONTROLLER_ERROR, `controller: ${what}: ${ans.status}`, ans.status);
        continue;
      }
      this.#switchTo(i, what);
      return answerEnvelope(what, path, ans.status, ans.body, !auth);
    }
    throw lastErr as Error;
  }

  /** One bounded HTTP exchange with one member. A keep-alive socket that died idle is retried once. */
  async http(method: string, url: URL, headers: Record<string, string>, payload?: Buffer): Promise<ExchangeAnswer> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await httpsExchange(url, {
          method,
          headers,
          body: payload,
          tls: { agent: this.#agent },
          timeoutMs: this.#timeoutMs,
          maxBodyBytes: this.#maxBody,
        });
      } catch (e) {
        const err = e as ExchangeError;
        // A pooled keep-alive socket the controller closed while idle fails before any answer: send once more.
        if (err.reusedSocket && !err.answered && attempt === 0) continue;
        throw new ControllerError(
          ErrorCodes.CONTROLLER_UNREACHABLE,
          `controller: ${method} ${url.pathname}: cannot reach the controller at ${url.origin}: ${describeNetError(err.cause)}`,
          0,
          undefined,
          { cause: err.cause },
        );
      }
    }
  }

  /** Runs `fn` against each member in turn (the current one first) until one answers; switches to that one. */
  async eachMember<T>(what: string, fn: (base: URL) => Promise<T>): Promise<T> {
    let lastErr: unknown;
    for (const i of this.#order()) {
      try {
        const v = await fn(this.#urls[i]!);
        this.#switchTo(i, what);
        return v;
      } catch (err) {
        if (!isZitiError(err, ErrorCodes.CONTROLLER_UNREACHABLE)) throw err;
        lastErr = err;
      }
    }
    throw lastErr as Error;
  }

  #order(): number[] {
    const n = this.#urls.length;
    return Array.from({ length: n }, (_, k) => (this.#current + k) % n);
  }

  #switchTo(i: number, what: string): void {
    if (i === this.#current) return;
    log("%s: controller %s does not answer; using %s", what, this.#urls[this.#current]!.origin, this.#urls[i]!.origin);
    this.#current = i;
  }

  /** Presents another certificate and key from now on (new TLS connections; pooled ones are closed soon). */
  setCredentials(certPem: string, keyPem: string, caPem?: string): void {
    const old = this.#agent;
    const opts = old.options as https.AgentOptions;
    this.#agent = newAgent({ cert: certPem, key: keyPem, ca: caPem ?? (opts.ca as string) }, this.#egress);
    // Requests in flight on the old agent finish; its idle sockets go now, the rest within a minute.
    setTimeout(() => old.destroy(), 60_000).unref();
  }

  /** Closes pooled sockets. */
  close(): void {
    this.#agent.destroy();
  }
}

function newAgent(creds: { cert: string; key: string; ca: string }, egress: EgressRoute | undefined): https.Agent {
  return new EgressAgent(egress, { keepAlive: true, maxSockets: 4, ...creds });
}
