/**
 * Layer 3: ZitiContext, the public entry of the SDK. One context per identity; any number per process.
 *
 * It authenticates to the controller (./controller.ts) and, once ready, keeps the parts that do the work: the
 * services and sessions the controller grants (./service-directory.ts), the router channels (./router-pool.ts), the
 * dials (./dialer.ts), the listeners (./listener.ts) and certificate renewal (./cert-renewer.ts). This file is the
 * authentication loop, the context's state and events, and the wiring of those parts.
 *
 * Start-up: `fromIdentityFile`/`fromIdentity` (and `open` by default) resolve once authenticated and reject if the
 * first authentication fails. `open(identity, { waitForController: false })` resolves at once (an invalid identity
 * file still rejects at once: that is a configuration error) and authenticates in the background with back-off
 * until it succeeds or the context is closed: `ready`, `notReadyReason` and the "authenticated" / "authFailed"
 * events tell where it stands. Until then services(), dial(), listen() and replicas() fail with ZITI_NOT_READY.
 */
import { EventEmitter } from "node:events";
import http from "node:http";
import { Backoff } from "../backoff.js";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError, isZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import { egressRoute, type EgressRoute } from "../transport/egress-proxy.js";
import { ZitiAgent, type ZitiAgentOptions } from "./agent.js";
import { armProofExchange, verifyCaller } from "./caller-handshake.js";
import { CallerProofVerifier } from "./caller-proof.js";
import { CertRenewer } from "./cert-renewer.js";
import type {
  AuthFailedEvent,
  AuthenticatedEvent,
  ContextOptions,
  OpenOptions,
  ZitiContextEvents,
} from "./context-options.js";
import { ControllerClient } from "./controller.js";
import type { ServiceInfo } from "./controller-wire.js";
import { CONTEXT_TRANSITIONS, ContextState, endConnections } from "./context-lifecycle.js";
import { Dialer, type DialOptions } from "./dialer.js";
import { loadIdentity, type Identity } from "./identity.js";
import { certTimes } from "./renew.js";
import { RouterPool, egressRouterConnect, type RouterStatus } from "./router-pool.js";
import { ServiceDirectory } from "./service-directory.js";
import { registerInternals } from "./context-internals.js";
import { ZitiListener as Listener, type ListenOptions, type ListenerHost } from "./listener.js";
import type { ZitiConnection, ZitiListener } from "./public.js";

export type {
  AuthenticatedEvent,
  AuthFailedEvent,
  CertRenewalFailedEvent,
  CertRenewedEvent,
  ContextOptions,
  OpenOptions,
  ZitiContextEvents,
} from "./context-options.js";
export type { DialOptions } from "./dialer.js";
export { contextInternals, type ContextInternals } from "./context-internals.js";
export type { ChannelRole, RouterStatus } from "./router-pool.js";

const log = debug("context");

export class ZitiContext extends EventEmitter<ZitiContextEvents> {
  readonly #identity: Identity;
  readonly #controller: ControllerClient;
  readonly #egress: EgressRoute;
  readonly #opts: Required<
    Omit<
      ContextOptions,
      "maxBufferedBytes" | "maxChannelBufferedBytes" | "sdkFlowControl" | "connectRouter" | "egressProxy"
    >
  > &
    ContextOptions;
  readonly #sm: StateMachine<ContextState>;
  readonly #directory: ServiceDirectory;
  readonly #pool: RouterPool;
  readonly #dialer: Dialer;
  readonly #renewer: CertRenewer;
  /** What this context's listeners use of it (bind sessions, bind channels, caller checks). */
  readonly #host: ListenerHost;
  readonly #listeners = new Set<Listener>();
  readonly #conns = new Set<ZitiConnection>();
  readonly #authBackoff: Backoff;
  #authTimer: NodeJS.Timeout | undefined;
  #authAttempts = 0;
  #authReason: string;
  #verifier: CallerProofVerifier | undefined;

  private constructor(identity: Identity, opts: ContextOptions) {
    super();
    this.#identity = identity;
    // Throws ZITI_EGRESS_PROXY_INVALID for a malformed egressProxy or HTTPS_PROXY: before anything connects.
    const egress = egressRoute(opts.egressProxy);
    this.#egress = egress;
    const controller = new ControllerClient(identity, { ...(opts.auth ? { auth: opts.auth } : {}), egress });
    this.#controller = controller;
    this.#opts = {
      dialTimeoutMs: 15_000,
      bindTimeoutMs: 10_000,
      servicePollMs: 10_000,
      connectTimeoutMs: 10_000,
      authBackoff: {},
      auth: "auto",
      renewCertBeforeMs: -1,
      certCheckMs: 60 * 60_000,
      ...opts,
    };
    this.#authBackoff = new Backoff({ initialMs: 500, maxMs: 30_000, ...this.#opts.authBackoff });
    this.#authReason = `authenticating to the controller at ${originOf(identity.ztAPI)}`;
    const identityName = () => this.identityName;
    this.#directory = new ServiceDirectory(this.#controller, {
      servicePollMs: this.#opts.servicePollMs,
      identityName,
      changed: (list) => this.emit("servicesChanged", list),
    });
    this.#pool = new RouterPool(identity, this.#controller, {
      connectTimeoutMs: this.#opts.connectTimeoutMs,
      maxBufferedBytes: this.#opts.maxBufferedBytes,
      maxChannelBufferedBytes: this.#opts.maxChannelBufferedBytes,
      sdkFlowControl: this.#opts.sdkFlowControl !== false,
      connectRouter: this.#opts.connectRouter ?? egressRouterConnect(identity, egress, this.#opts.connectTimeoutMs),
      onNewApiSession: () => this.#directory.clearSessions(),
      renewBinds: () => Promise.allSettled([...this.#listeners].map((l) => l.renew())),
      closed: () => this.closed,
      assertOpen: () => this.#assertOpen(),
    });
    this.#dialer = new Dialer(identity, this.#directory, this.#pool, {
      dialTimeoutMs: this.#opts.dialTimeoutMs,
      identityName,
    });
    this.#renewer = new CertRenewer(identity, this.#controller, {
      renewCertBeforeMs: this.#opts.renewCertBeforeMs,
      certCheckMs: this.#opts.certCheckMs,
      identityName,
      credentialsChanged: () => this.#dialer.forgetProver(),
      renewed: (e) => this.#safeEmit("certRenewed", e),
      failed: (e) => this.#safeEmit("certRenewalFailed", e),
    });
    // OIDC: every new access token goes to the routers (UpdateToken), or their channels go.
    this.#controller.onTokenChange(() => this.#pool.pushToken());
    this.#host = {
      get identityName() {
        return identityName();
      },
      bindTimeoutMs: this.#opts.bindTimeoutMs,
      bindSession: (service) => this.#bindSession(service),
      dropSession: (service, type) => this.#directory.dropSession(service, type),
      channel: (url, role) => this.#pool.channel(url, role),
      prepareCaller: (conn) => armProofExchange(conn),
      verifyCaller: (conn) => verifyCaller(conn, () => (this.#verifier ??= new CallerProofVerifier(identity.caPem))),
    };
    const pool = this.#pool;
    const dialer = this.#dialer;
    registerInternals(this, {
      identity,
      controller,
      channel: (url, role = "dial") => pool.channel(url, role),
      get dials() {
        return dialer.dials;
      },
      listenerHost: this.#host,
    });
    this.#sm = new StateMachine("context", identity.name, ContextState.Authenticating, CONTEXT_TRANSITIONS, log);
  }

  /** Loads the identity file and authenticates; rejects if either fails (see `open` to start without a controller). */
  static async fromIdentityFile(path: string, opts: ContextOptions = {}): Promise<ZitiContext> {
    return ZitiContext.open(path, { ...opts, waitForController: true });
  }

  /** Authenticates; rejects if that fails (see `open` to start without a controller). */
  static async fromIdentity(identity: Identity, opts: ContextOptions = {}): Promise<ZitiContext> {
    return ZitiContext.open(identity, { ...opts, waitForController: true });
  }

  /**
   * A context for an identity (a file path or a loaded Identity). An identity file that cannot be read or is
   * invalid rejects at once (ZITI_IDENTITY_INVALID) either way. With `waitForController: false` it resolves at
   * once and authenticates in the background (back-off with jitter, never throwing); see `ready`.
   */
  static async open(identity: string | Identity, opts: OpenOptions = {}): Promise<ZitiContext> {
    const { waitForController = true, ...ctxOpts } = opts;
    const id = typeof identity === "string" ? await loadIdentity(identity) : identity;
    const ctx = new ZitiContext(id, ctxOpts);
    if (!waitForController) {
      ctx.#authTimer = setTimeout(() => void ctx.#authenticateInBackground(), 0);
      return ctx;
    }
    try {
      ctx.#authAttempts++;
      await ctx.#authenticateOnce();
    } catch (err) {
      ctx.destroy();
      throw err;
    }
    ctx.#becomeReady();
    return ctx;
  }

  /** True once authenticated (and the service list loaded), until closed. */
  get ready(): boolean {
    return this.#sm.is(ContextState.Ready);
  }

  /** Why the context is not ready (undefined when it is): the last authentication failure, or that it is closed. */
  get notReadyReason(): string | undefined {
    if (this.#sm.is(ContextState.Ready)) return undefined;
    if (this.closed) return `the context for "${this.#identity.name}" is closed`;
    return this.#authReason;
  }

  /** Resolves once ready; rejects (ZITI_CLOSED) if the context is closed first. */
  whenReady(): Promise<void> {
    if (this.ready) return Promise.resolve();
    if (this.closed) return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => {
      const onReady = () => {
        this.off("closed", onClosed);
        resolve();
      };
      const onClosed = () => {
        this.off("authenticated", onReady);
        reject(this.#closedError());
      };
      this.once("authenticated", onReady);
      this.once("closed", onClosed);
    });
  }

  /** One attempt: authenticate (unless a previous attempt already did) and load the service list. */
  async #authenticateOnce(): Promise<void> {
    if (!this.#controller.sessionToken) await this.#controller.authenticate();
    await this.#directory.refresh();
  }

  /** A timer callback: catches everything, and reschedules itself with back-off until ready or closed. */
  async #authenticateInBackground(): Promise<void> {
    this.#authTimer = undefined;
    if (!this.#sm.is(ContextState.Authenticating)) return;
    const attempts = ++this.#authAttempts;
    let failure: (Error & { code?: string }) | undefined;
    try {
      await this.#authenticateOnce();
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
    }
    if (!this.#sm.is(ContextState.Authenticating)) return; // closed while the attempt was in flight
    if (!failure) {
      this.#becomeReady();
      return;
    }
    const retryInMs = this.#authBackoff.next();
    const rejected = isZitiError(failure, ErrorCodes.AUTH_FAILED);
    const next = `attempt ${attempts}, next in ${(retryInMs / 1000).toFixed(1)} s`;
    this.#authReason = rejected
      ? `the controller refused identity "${this.#identity.name}" (${next}; it may have been deleted or ` +
        `re-enrolled: re-enroll it or restore it): ${failure.message}`
      : `cannot authenticate to the controller (${next}): ${failure.message}`;
    log("context %s: %s", this.#identity.name, this.#authReason);
    this.#authTimer = setTimeout(() => void this.#authenticateInBackground(), retryInMs);
    this.#safeEmit("authFailed", {
      error: failure,
      attempts,
      retryInMs,
      rejected,
      reason: this.#authReason,
    } satisfies AuthFailedEvent);
  }

  #becomeReady(): void {
    if (!this.#sm.to(ContextState.Ready, `authenticated as ${this.identityName}`)) return;
    this.#authBackoff.reset();
    this.#directory.startPolling();
    this.#renewer.schedule(1_000);
    this.#safeEmit("authenticated", {
      identityName: this.identityName,
      attempts: this.#authAttempts,
    } satisfies AuthenticatedEvent);
  }

  /** Emits from a timer's continuation: a listener that throws must not escape (it is logged). */
  #safeEmit<K extends keyof ZitiContextEvents>(event: K, ...args: ZitiContextEvents[K]): void {
    try {
      (this.emit as (e: K, ...a: ZitiContextEvents[K]) => boolean)(event, ...args);
    } catch (err) {
      log("context %s: a %s listener threw: %s", this.#identity.name, event, (err as Error).stack ?? err);
    }
  }

  #closedError(): ZitiError {
    return new ZitiError(ErrorCodes.CLOSED, `context for "${this.#identity.name}" is closed`);
  }

  /** Our identity's name as the controller knows it. */
  get identityName(): string {
    return this.#controller.identityName ?? this.#identity.name;
  }

  get closed(): boolean {
    return this.#sm.is(ContextState.Closed);
  }

  /** The controller's client API URL this context talks to. */
  get controllerUrl(): string {
    return this.#identity.ztAPI;
  }

  /** How this context authenticated ("oidc" or "legacy"); undefined before the first authentication. */
  get authMode(): "oidc" | "legacy" | undefined {
    return this.#controller.authMode;
  }

  /** Our identity's id as the controller knows it; undefined before the first authentication. */
  get identityId(): string | undefined {
    return this.#controller.identityId;
  }

  /** The version the controller gave (e.g. "v2.0.3"); undefined before the first authentication, or if it gave none. */
  get controllerVersion(): string | undefined {
    return this.#controller.controllerVersion;
  }

  /** A legacy API session on an OpenZiti 2.x+ controller: deprecated there, gone in v3 (use auth "auto"). */
  get legacyDeprecated(): boolean {
    return this.#controller.legacyDeprecated;
  }

  /**
   * How this context reaches the controller and routers: `direct`, or the egress proxy and where it was set, as
   * `http://proxy:3128 (from HTTPS_PROXY; NO_PROXY: ...)`. Never its credentials.
   */
  get egressProxy(): string {
    return this.#egress.description;
  }

  /** What loading the identity found wrong but not fatal (e.g. a private key file readable by others). */
  get identityWarnings(): readonly string[] {
    return this.#identity.warnings ?? [];
  }

  /** When the identity's certificate expires (it changes when the certificate is renewed). */
  get certExpiresAt(): Date {
    return certTimes(this.#identity.certPem).notAfter;
  }

  /**
   * Extends the identity's certificate now (the controller's extend + extend-verify endpoints), keeping the key
   * unless an administrator asked for a key roll. The renewed identity is written back to its file (atomically,
   * 0600) when there is one and it is writable; otherwise it is kept in memory and the "certRenewed" event says
   * why the file was not written (it then holds the old certificate, which stops working once it expires).
   */
  renewCertificate(): Promise<void> {
    this.#assertReady();
    return this.#renewer.renew();
  }

  /** The edge routers this context has a channel to (or is connecting to), with state and latency. Read-only. */
  routerStatus(): RouterStatus[] {
    return this.#pool.status();
  }

  /** Every service this identity can see, with its permissions and configs. */
  async services(): Promise<ServiceInfo[]> {
    this.#assertReady();
    return this.#directory.list();
  }

  /** Identities of the replicas that bound `service` by edge identity (each dialable with `{ identity }`). */
  async replicas(service: string): Promise<string[]> {
    this.#assertReady();
    return this.#directory.replicas(await this.#directory.service(service, "Dial"));
  }

  /** Dial and Bind sessions asked of the controller so far (one per service and type, kept while they work). */
  get sessionsCreated(): number {
    return this.#directory.sessionsCreated;
  }

  async #bindSession(service: string): Promise<{ token: string; encrypt: boolean; routerUrls: string[] }> {
    this.#assertReady();
    const svc = await this.#directory.service(service, "Bind");
    const s = await this.#directory.session(svc, "Bind");
    return { token: s.token, encrypt: svc.encryptionRequired, routerUrls: this.#dialer.routerUrls(s) };
  }

  /** Dials a service; resolves to a Duplex once the circuit is up. */
  async dial(service: string, opts: DialOptions = {}): Promise<ZitiConnection> {
    this.#assertOpen();
    const conn = await this.#dialer.dial(service, opts, () => this.#assertReady());
    this.#track(conn);
    return conn;
  }

  #track(conn: ZitiConnection): void {
    this.#conns.add(conn);
    conn.once("close", () => this.#conns.delete(conn));
  }

  /** Binds a service; the listener emits "connection" for each caller and re-binds by itself after failures. */
  async listen(service: string, opts: ListenOptions = {}): Promise<ZitiListener> {
    this.#assertOpen();
    const l = new Listener(this.#host, service, opts);
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
  httpAgent(opts: ZitiAgentOptions = {}): ZitiAgent {
    return new ZitiAgent(this, opts);
  }

  #assertOpen(): void {
    if (this.closed) throw this.#closedError();
  }

  #assertReady(): void {
    this.#assertOpen();
    if (!this.ready) {
      throw new ZitiError(
        ErrorCodes.NOT_READY,
        `identity "${this.#identity.name}" is not authenticated to the controller yet: ${this.#authReason}`,
      );
    }
  }

  /** Graceful: unbinds listeners, ends connections, closes channels and logs out. Idempotent. */
  async close(): Promise<void> {
    if (!this.#sm.to(ContextState.Closed, "close")) return;
    this.#stopTimers();
    await Promise.all([...this.#listeners].map((l) => l.close()));
    await endConnections(this.#conns);
    await this.#pool.closeAll();
    await this.#controller.logout().catch(() => undefined);
    this.#controller.close();
  }

  /** Immediate: drops every channel and connection. Idempotent. */
  destroy(err?: Error): void {
    if (this.#sm.to(ContextState.Closed, err?.message ?? "destroy")) this.#stopTimers();
    for (const l of this.#listeners) void l.close();
    for (const c of this.#conns) c.destroy(err);
    void this.#pool.closeAll();
    this.#controller.close();
  }

  /** Stops the timers of the context and its parts and tells whenReady() waiters. */
  #stopTimers(): void {
    this.#renewer.stop();
    this.#directory.stop();
    clearTimeout(this.#authTimer);
    this.#authTimer = undefined;
    this.#safeEmit("closed");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return url;
  }
}
