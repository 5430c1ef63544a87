/**
 * Layer 3: ZitiContext, the public entry of the SDK. One context per identity; any number per process.
 *
 * It authenticates to the controller, keeps the service list (polling the controller's change marker), caches
 * Dial/Bind sessions, keeps one channel per edge router URL, and offers dial(), listen(), an http.Agent and a way
 * to serve an http.Server on a service.
 */
import { EventEmitter } from "node:events";
import http from "node:http";
import type { Duplex } from "node:stream";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError, isZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import { Channel } from "../protocol/channel.js";
import type { ZitiConnection } from "../protocol/conn.js";
import { dialOnChannel } from "../protocol/edge.js";
import { ControllerClient, type ServiceInfo, type SessionInfo } from "./controller.js";
import { loadIdentity, type Identity } from "./identity.js";
import { ZitiListener, type ListenOptions, type ListenerHost } from "./listener.js";

const log = debug("context");

export interface ContextOptions {
  /** Default time for a dial to complete (ms). */
  dialTimeoutMs?: number;
  /** Time for a router to answer a Bind (ms). */
  bindTimeoutMs?: number;
  /** How often to ask the controller whether the service list changed (ms; 0 disables). */
  servicePollMs?: number;
  /** TLS connect + hello time for a router channel (ms). */
  connectTimeoutMs?: number;
}

export interface DialOptions {
  /** Dial the terminator bound with this identity (a replica bound by edge identity). */
  identity?: string;
  timeoutMs?: number;
  /** Sent to the hosting side as AppData (objects are JSON-encoded). */
  appData?: unknown;
}

/** One router channel as `routerStatus()` reports it. */
export interface RouterStatus {
  /** The router's edge URL, e.g. `tls://127.0.0.1:3022`. */
  url: string;
  /** The router's id from its hello; "" while connecting. */
  routerId: string;
  /** "connecting", "hello", "open" (a closed channel is dropped from the list). */
  state: string;
  /** Last latency-probe round trip (the hello's until the first probe), ms; undefined while connecting. */
  latencyMs: number | undefined;
}

enum ContextState {
  Open = "open",
  Closed = "closed",
}

export class ZitiContext extends EventEmitter implements ListenerHost {
  readonly identity: Identity;
  readonly controller: ControllerClient;
  readonly bindTimeoutMs: number;
  readonly #opts: Required<ContextOptions>;
  readonly #sm: StateMachine<ContextState>;
  #services = new Map<string, ServiceInfo>();
  #servicesLoadedAt = 0;
  #lastChangeAt: string | undefined;
  readonly #sessions = new Map<string, Promise<SessionInfo>>();
  readonly #channels = new Map<string, Promise<Channel>>();
  /** The channels of #channels that completed their hello, for routerStatus(). */
  readonly #openChannels = new Map<string, Channel>();
  readonly #listeners = new Set<ZitiListener>();
  readonly #conns = new Set<ZitiConnection>();
  #pollTimer: NodeJS.Timeout | undefined;
  #suspectSession = false;
  /** Dials made, for tests and metrics. */
  dials = 0;

  private constructor(identity: Identity, opts: ContextOptions) {
    super();
    this.identity = identity;
    this.controller = new ControllerClient(identity);
    this.#opts = {
      dialTimeoutMs: 15_000,
      bindTimeoutMs: 10_000,
      servicePollMs: 10_000,
      connectTimeoutMs: 10_000,
      ...opts,
    };
    this.bindTimeoutMs = this.#opts.bindTimeoutMs;
    this.#sm = new StateMachine(
      "context",
      identity.name,
      ContextState.Open,
      {
        [ContextState.Open]: [ContextState.Closed],
        [ContextState.Closed]: [],
      },
      log,
    );
  }

  static async fromIdentityFile(path: string, opts: ContextOptions = {}): Promise<ZitiContext> {
    return ZitiContext.fromIdentity(await loadIdentity(path), opts);
  }

  static async fromIdentity(identity: Identity, opts: ContextOptions = {}): Promise<ZitiContext> {
    const ctx = new ZitiContext(identity, opts);
    try {
      await ctx.controller.authenticate();
      await ctx.#refreshServices();
    } catch (err) {
      ctx.destroy();
      throw err;
    }
    ctx.#schedulePoll();
    return ctx;
  }

  /** Our identity's name as the controller knows it. */
  get identityName(): string {
    return this.controller.identityName ?? this.identity.name;
  }

  get closed(): boolean {
    return this.#sm.is(ContextState.Closed);
  }

  /** The controller's client API URL this context talks to. */
  get controllerUrl(): string {
    return this.identity.ztAPI;
  }

  /** The edge routers this context has a channel to (or is connecting to), with state and latency. Read-only. */
  routerStatus(): RouterStatus[] {
    return [...this.#channels.keys()].sort().map((url) => {
      const ch = this.#openChannels.get(url);
      return ch
        ? { url, routerId: ch.routerId, state: ch.state, latencyMs: ch.lastLatencyMs }
        : { url, routerId: "", state: "connecting", latencyMs: undefined };
    });
  }

  /** Every service this identity can see, with its permissions and configs. */
  async services(): Promise<ServiceInfo[]> {
    this.#assertOpen();
    if (Date.now() - this.#servicesLoadedAt > this.#opts.servicePollMs) await this.#refreshServices();
    return [...this.#services.values()];
  }

  async #refreshServices(): Promise<void> {
    const list = await this.controller.listServices();
    const next = new Map(list.map((s) => [s.name, s]));
    const changed =
      next.size !== this.#services.size ||
      list.some((s) => JSON.stringify(s) !== JSON.stringify(this.#services.get(s.name)));
    this.#services = next;
    this.#servicesLoadedAt = Date.now();
    if (changed) this.emit("servicesChanged", list);
  }

  #schedulePoll(): void {
    if (this.#opts.servicePollMs <= 0) return;
    this.#pollTimer = setTimeout(() => {
      this.#poll().finally(() => {
        if (!this.closed) this.#schedulePoll();
      });
    }, this.#opts.servicePollMs);
    this.#pollTimer.unref();
  }

  async #poll(): Promise<void> {
    try {
      const at = await this.controller.serviceUpdates();
      if (at !== this.#lastChangeAt || Date.now() - this.#servicesLoadedAt > 5 * 60_000) {
        this.#lastChangeAt = at;
        await this.#refreshServices();
      }
    } catch (err) {
      log("service poll failed: %s", (err as Error).message);
    }
  }

  /** Identities of the replicas that bound `service` by edge identity (each dialable with `{ identity }`). */
  async replicas(service: string): Promise<string[]> {
    const svc = await this.#service(service, "Dial");
    return this.controller.listTerminatorIdentities(svc.id);
  }

  async #service(name: string, permission: "Dial" | "Bind"): Promise<ServiceInfo> {
    let svc = this.#services.get(name);
    if (!svc || !svc.permissions.includes(permission)) {
      await this.#refreshServices();
      svc = this.#services.get(name);
    }
    if (!svc) {
      throw new ZitiError(
        ErrorCodes.SERVICE_NOT_FOUND,
        `service "${name}" is not visible to identity "${this.identityName}" (no such service, or no service policy grants it)`,
      );
    }
    if (!svc.permissions.includes(permission)) {
      throw new ZitiError(
        ErrorCodes.NOT_AUTHORIZED,
        `identity "${this.identityName}" may not ${permission} service "${name}" (permissions: ${svc.permissions.join(", ") || "none"})`,
      );
    }
    return svc;
  }

  #session(svc: ServiceInfo, type: "Dial" | "Bind"): Promise<SessionInfo> {
    const key = `${type}:${svc.name}`;
    let p = this.#sessions.get(key);
    if (!p) {
      p = this.controller.createSession(svc.id, type);
      this.#sessions.set(key, p);
      p.catch(() => this.#sessions.delete(key));
    }
    return p;
  }

  dropSession(service: string, type: "Bind" | "Dial"): void {
    this.#sessions.delete(`${type}:${service}`);
  }

  async bindSession(service: string): Promise<{ token: string; encrypt: boolean; routerUrls: string[] }> {
    this.#assertOpen();
    const svc = await this.#service(service, "Bind");
    const s = await this.#session(svc, "Bind");
    return { token: s.token, encrypt: svc.encryptionRequired, routerUrls: this.#routerUrls(s) };
  }

  #routerUrls(s: SessionInfo): string[] {
    const urls = s.edgeRouters.map((r) => r.urls.tls).filter((u): u is string => typeof u === "string");
    // Prefer routers we already have a channel to.
    return urls.sort((a, b) => Number(this.#channels.has(b)) - Number(this.#channels.has(a)));
  }

  /** The channel to a router URL, opened on first use and shared by every connection and bind. */
  channel(url: string): Promise<Channel> {
    this.#assertOpen();
    let p = this.#channels.get(url);
    if (!p) {
      p = this.#openChannel(url);
      this.#channels.set(url, p);
      p.then(
        (ch) => {
          if (this.#channels.get(url) === p) this.#openChannels.set(url, ch);
          ch.once("closed", (err: ZitiError) => {
            if (this.#channels.get(url) === p) this.#channels.delete(url);
            if (this.#openChannels.get(url) === ch) this.#openChannels.delete(url);
            // Closed right after a good hello with no traffic: the router likely rejected our API session.
            if (ch.messagesAfterHello === 0 && Date.now() - ch.openedAt < 2_000) this.#suspectSession = true;
            log("channel %s closed: %s", url, err.message);
          });
        },
        () => {
          if (this.#channels.get(url) === p) this.#channels.delete(url);
        },
      );
    }
    return p;
  }

  async #openChannel(url: string): Promise<Channel> {
    if (this.#suspectSession) {
      this.#suspectSession = false;
      await this.controller.authenticate();
      this.#sessions.clear();
    }
    const token = this.controller.sessionToken;
    if (!token) throw new ZitiError(ErrorCodes.AUTH_FAILED, "not authenticated to the controller");
    return Channel.open(url, {
      identityName: this.identity.name,
      sessionToken: token,
      credentials: { certPem: this.identity.certPem, keyPem: this.identity.keyPem, caPem: this.identity.caPem },
      connectTimeoutMs: this.#opts.connectTimeoutMs,
    });
  }

  /** Dials a service; resolves to a Duplex once the circuit is up. */
  async dial(service: string, opts: DialOptions = {}): Promise<ZitiConnection> {
    this.#assertOpen();
    const timeoutMs = opts.timeoutMs ?? this.#opts.dialTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    this.dials++;
    const attempt = async (): Promise<ZitiConnection> => {
      const svc = await this.#service(service, "Dial");
      const s = await this.#session(svc, "Dial");
      const urls = this.#routerUrls(s);
      if (urls.length === 0) {
        throw new ZitiError(
          ErrorCodes.NO_EDGE_ROUTERS,
          `no online edge router can serve "${service}" for "${this.identityName}"`,
        );
      }
      let lastErr: unknown;
      for (const url of urls) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        try {
          const ch = await withTimeout(this.channel(url), left, service);
          const conn = await dialOnChannel(ch, {
            service,
            sessionToken: s.token,
            encrypt: svc.encryptionRequired,
            callerId: this.identityName,
            terminatorIdentity: opts.identity,
            appData: encodeAppData(opts.appData),
            timeoutMs: Math.max(1, deadline - Date.now()),
          });
          this.#track(conn);
          return conn;
        } catch (err) {
          lastErr = err;
          // A refusal from the router (no terminator, ...) is the service's answer, not this router's fault.
          if (isZitiError(err, ErrorCodes.DIAL_FAILED) || isZitiError(err, ErrorCodes.DIAL_TIMEOUT)) throw err;
        }
      }
      if (Date.now() >= deadline) {
        throw new ZitiError(ErrorCodes.DIAL_TIMEOUT, `dial ${service}: not connected within ${timeoutMs} ms`, {
          cause: lastErr,
        });
      }
      throw lastErr;
    };
    try {
      return await attempt();
    } catch (err) {
      // One retry with a fresh session when the router says the session is no good.
      if (isZitiError(err, ErrorCodes.DIAL_FAILED) && /session/i.test(err.message) && Date.now() < deadline) {
        this.dropSession(service, "Dial");
        return attempt();
      }
      throw err;
    }
  }

  #track(conn: ZitiConnection): void {
    this.#conns.add(conn);
    conn.once("close", () => this.#conns.delete(conn));
  }

  /** Binds a service; the listener emits "connection" for each caller and re-binds by itself after failures. */
  async listen(service: string, opts: ListenOptions = {}): Promise<ZitiListener> {
    this.#assertOpen();
    const l = new ZitiListener(this, service, opts);
    l.on("connection", (c: ZitiConnection) => this.#track(c));
    l.once("close", () => this.#listeners.delete(l));
    this.#listeners.add(l);
    try {
      await l.start();
    } catch (err) {
      await l.close();
      throw err;
    }
    return l;
  }

  /** Serves an http.Server (or express app wrapped in one) on a service, without listening on any port. */
  async serve(service: string, server: http.Server, opts: ListenOptions = {}): Promise<ZitiListener> {
    const l = await this.listen(service, opts);
    l.on("connection", (c: ZitiConnection) => server.emit("connection", c));
    return l;
  }

  /** An http.Agent whose connections dial services: the request's host names the service. Never plain TCP. */
  httpAgent(
    opts: http.AgentOptions & { resolve?: (host: string) => { service: string; identity?: string } } = {},
  ): http.Agent {
    return new ZitiAgent(this, opts);
  }

  #assertOpen(): void {
    if (this.closed) throw new ZitiError(ErrorCodes.CLOSED, `context for "${this.identity.name}" is closed`);
  }

  /** Graceful: unbinds listeners, ends connections, closes channels and logs out. Idempotent. */
  async close(): Promise<void> {
    if (!this.#sm.to(ContextState.Closed, "close")) return;
    clearTimeout(this.#pollTimer);
    await Promise.all([...this.#listeners].map((l) => l.close()));
    await Promise.all(
      [...this.#conns].map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.destroyed) return resolve();
            const t = setTimeout(() => {
              c.destroy();
              resolve();
            }, 2_000);
            c.once("close", () => {
              clearTimeout(t);
              resolve();
            });
            c.end();
          }),
      ),
    );
    await this.#closeChannels();
    await this.controller.logout().catch(() => undefined);
    this.controller.close();
  }

  /** Immediate: drops every channel and connection. Idempotent. */
  destroy(err?: Error): void {
    if (this.#sm.to(ContextState.Closed, err?.message ?? "destroy")) clearTimeout(this.#pollTimer);
    for (const l of this.#listeners) void l.close();
    for (const c of this.#conns) c.destroy(err);
    void this.#closeChannels();
    this.controller.close();
  }

  async #closeChannels(): Promise<void> {
    const chans = [...this.#channels.values()];
    this.#channels.clear();
    this.#openChannels.clear();
    for (const p of chans) {
      try {
        (await p).close("context closed");
      } catch {
        /* it never opened */
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function encodeAppData(v: unknown): Buffer | undefined {
  if (v === undefined) return undefined;
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === "string") return Buffer.from(v);
  return Buffer.from(JSON.stringify(v));
}

function withTimeout<T>(p: Promise<T>, ms: number, service: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(
      () => reject(new ZitiError(ErrorCodes.DIAL_TIMEOUT, `dial ${service}: no router channel within ${ms} ms`)),
      ms,
    );
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e as Error);
      },
    );
  });
}

/** http.Agent over the overlay. Keep-alive pooling works as usual; each new socket is a dial. */
export class ZitiAgent extends http.Agent {
  readonly #ctx: ZitiContext;
  readonly #resolve: (host: string) => { service: string; identity?: string };

  constructor(
    ctx: ZitiContext,
    opts: http.AgentOptions & { resolve?: (host: string) => { service: string; identity?: string } },
  ) {
    const { resolve, ...agentOpts } = opts;
    super({ keepAlive: true, maxSockets: 8, ...agentOpts });
    this.#ctx = ctx;
    this.#resolve = resolve ?? ((host) => ({ service: host }));
  }

  override createConnection(
    options: http.ClientRequestArgs,
    cb?: (err: Error | null, socket: Duplex) => void,
  ): undefined {
    const host = String(options.host ?? options.hostname ?? "");
    const target = this.#resolve(host);
    this.#ctx
      .dial(target.service, {
        ...(target.identity ? { identity: target.identity } : {}),
        ...(options.timeout ? { timeoutMs: options.timeout } : {}),
      })
      .then(
        (c) => cb?.(null, c),
        (err: Error) => cb?.(err, undefined as unknown as Duplex),
      );
    return undefined;
  }
}
