/**
 * Layer 3: ZitiContext, the public entry of the SDK. One context per identity; any number per process.
 *
 * It authenticates to the controller, keeps the service list (polling the controller's change marker), caches
 * Dial/Bind sessions, keeps one channel per edge router URL for dials and one for binds, and offers dial(), listen(), an http.Agent and a way
 * to serve an http.Server on a service.
 *
 * Start-up: `fromIdentityFile`/`fromIdentity` (and `open` by default) resolve once authenticated and reject if the
 * first authentication fails. `open(identity, { waitForController: false })` resolves at once (an invalid identity
 * file still rejects at once: that is a configuration error) and authenticates in the background with back-off
 * until it succeeds or the context is closed: `ready`, `notReadyReason` and the "authenticated" / "authFailed"
 * events tell where it stands. Until then services(), dial(), listen() and replicas() fail with ZITI_NOT_READY.
 *
 * Size: over 350 lines because the context is the one owner of the state its jobs share: the authentication loop
 * and certificate renewal both swap the API session that the channel pool (per router and role), the session cache,
 * dial and listen read. Listeners reach it only through the internal ListenerHost interface. Next to move out: the
 * certificate-renewal driver (it needs the identity, the controller client and a "retire channels" hook).
 */
import { EventEmitter } from "node:events";
import http from "node:http";
import type { Duplex } from "node:stream";
import { Backoff, type BackoffOptions } from "../backoff.js";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError, isZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import { Channel } from "../protocol/channel.js";
import type { ZitiConnection } from "../protocol/conn.js";
import { dialOnChannel } from "../protocol/edge.js";
import { ZitiAgent, type ZitiAgentOptions } from "./agent.js";
import { acceptProof, armProofExchange, proveToHost } from "./caller-handshake.js";
import { CallerProofVerifier, CallerProver, proofMarker } from "./caller-proof.js";
import { ControllerClient, type AuthMode, type ServiceInfo, type SessionInfo } from "./controller.js";
import { loadIdentity, saveIdentity, type Identity } from "./identity.js";
import { certTimes, makeCsr, renewalDueAt } from "./renew.js";
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
  /** Back-off between failed authentications before the first success (default 0.5 s doubling to 30 s, ±25 %). */
  authBackoff?: BackoffOptions;
  /**
   * Unread bytes a connection may hold before it is closed with ZITI_READER_TOO_SLOW (default 4 MiB); each
   * connection can change its own (`conn.maxBufferedBytes`). A lagging reader never pauses its router channel.
   */
  maxBufferedBytes?: number;
  /** Unread bytes the lagging connections of one router channel may hold together (default 64 MiB). */
  maxChannelBufferedBytes?: number;
  /**
   * Ask routers for SDK flow control, a window per connection (default true; routers v1.6.0+ grant it, older ones
   * answer in legacy mode). false forces legacy flow control, where `maxBufferedBytes` bounds a lagging reader.
   */
  sdkFlowControl?: boolean;
  /** "auto" (default): OIDC when the controller advertises it (HA clusters require it), else legacy; or force one. */
  auth?: AuthMode;
  /**
   * Renew the identity's certificate this long before it expires (default: when a third of its lifetime is left).
   * 0 disables renewal.
   */
  renewCertBeforeMs?: number;
  /** How often to check whether the certificate is due (default 1 h). */
  certCheckMs?: number;
  /**
   * Opens the byte stream to a router, given its URL from the session (`tls://host:port`), instead of the default
   * TLS connection with the identity's certificate. The channel's hello, its frames and every virtual connection
   * run over what it returns. For tests (a scripted router, no real one) and for custom transports.
   */
  connectRouter?: (routerUrl: string) => Promise<Duplex>;
}

export interface OpenOptions extends ContextOptions {
  /**
   * true (default): resolve once authenticated; reject (and close) if the controller cannot be reached or refuses
   * the identity. false: resolve at once and keep authenticating in the background with back-off.
   */
  waitForController?: boolean;
}

/** The "authenticated" event's argument. */
export interface AuthenticatedEvent {
  identityName: string;
  /** Attempts it took, this one included. */
  attempts: number;
}

/** The "authFailed" event's argument: one failed background attempt; another follows after `retryInMs`. */
export interface AuthFailedEvent {
  error: Error & { code?: string };
  attempts: number;
  retryInMs: number;
  /**
   * The controller answered and refused this identity (ZITI_AUTH_FAILED: deleted, re-enrolled, enrolled with
   * another controller, or MFA required). Retrying goes on (the identity may be restored), but this needs a human.
   */
  rejected: boolean;
  /** The same text as `notReadyReason`. */
  reason: string;
}

export interface DialOptions {
  /** Dial the terminator bound with this identity (a replica bound by edge identity). */
  identity?: string;
  timeoutMs?: number;
  /**
   * Sent to the hosting side as AppData. A plain object is JSON-encoded; on services that require encryption it
   * also carries the marker of our caller proof under the "scrapez" key, and a scrapez host then gets the proof as
   * our first encrypted message (see caller-proof.ts). A Buffer or string is sent as is, without a proof.
   */
  appData?: unknown;
}

/** The "certRenewed" event's argument. */
export interface CertRenewedEvent {
  previousNotAfter: Date;
  notAfter: Date;
  /** The identity file was rewritten (atomically, mode 0600). */
  written: boolean;
  /** Why the file was not rewritten (read-only, e.g. a Kubernetes Secret; or loaded without a file). */
  notWrittenReason?: string;
  path?: string;
  /** A new key was made (an administrator asked for a key roll): key pins (`allow.keys`) change. */
  keyRolled: boolean;
}

/** The "certRenewalFailed" event's argument. */
export interface CertRenewalFailedEvent {
  error: Error & { code?: string };
  notAfter: Date;
  retryInMs: number;
}

/** One router channel as `routerStatus()` reports it. */
export interface RouterStatus {
  /** The router's edge URL, e.g. `tls://127.0.0.1:3022`. */
  url: string;
  /** What the channel carries: "dial" (our dials) or "bind" (our listeners' binds and the circuits they accept). */
  role: ChannelRole;
  /** The router's id from its hello; "" while connecting. */
  routerId: string;
  /** "connecting", "hello", "open" (a closed channel is dropped from the list). */
  state: string;
  /** Last latency-probe round trip (the hello's until the first probe), ms; undefined while connecting. */
  latencyMs: number | undefined;
}

/**
 * Dials and binds use separate channels to a router. With SDK flow control a v1.6 router keys the circuits of one
 * SDK connection by circuit id alone (ziti@v1.6.3 router/xgress_edge/listener.go `xgCircuits`), so when a context
 * dials a service it also hosts, both ends of that circuit on one channel would collide there.
 */
export type ChannelRole = "dial" | "bind";

/** How long a failed channel open is remembered (and answered from) before the next attempt may connect. */
const FAILED_CHANNEL_MEMORY_MS = 250;

function channelKey(role: ChannelRole, url: string): string {
  return `${role} ${url}`;
}

enum ContextState {
  /** Not authenticated yet (only before the first success: a ready context stays ready while it is open). */
  Authenticating = "authenticating",
  Ready = "ready",
  Closed = "closed",
}

/** The events a ZitiContext emits, with their arguments (docs/architecture.md, "Events"). */
export interface ZitiContextEvents {
  /** Authenticated with the controller (at open, and again after a lost session), service list loaded. */
  authenticated: [AuthenticatedEvent];
  /** An authentication attempt failed; another follows after `retryInMs`. */
  authFailed: [AuthFailedEvent];
  /** The identity's certificate was renewed. */
  certRenewed: [CertRenewedEvent];
  /** A certificate renewal failed; retried after `retryInMs`. */
  certRenewalFailed: [CertRenewalFailedEvent];
  /** The services this identity sees changed (names, permissions or configs). */
  servicesChanged: [ServiceInfo[]];
  /** The context was closed or destroyed. */
  closed: [];
}

export class ZitiContext extends EventEmitter<ZitiContextEvents> implements ListenerHost {
  readonly identity: Identity;
  readonly controller: ControllerClient;
  readonly bindTimeoutMs: number;
  readonly #opts: Required<
    Omit<ContextOptions, "maxBufferedBytes" | "maxChannelBufferedBytes" | "sdkFlowControl" | "connectRouter">
  > &
    ContextOptions;
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
  readonly #pollBackoff: Backoff;
  readonly #authBackoff: Backoff;
  #authTimer: NodeJS.Timeout | undefined;
  #authAttempts = 0;
  #authReason: string;
  #suspectSession = false;
  #prover: CallerProver | null | undefined;
  #certTimer: NodeJS.Timeout | undefined;
  readonly #certBackoff = new Backoff({ initialMs: 60_000, maxMs: 60 * 60_000 });
  #lastRenewalAt = 0;
  #renewing: Promise<void> | undefined;
  #apiSessionId: string | undefined;
  #verifier: CallerProofVerifier | undefined;
  /** Dials made, for tests and metrics. */
  dials = 0;

  private constructor(identity: Identity, opts: ContextOptions) {
    super();
    this.identity = identity;
    this.controller = new ControllerClient(identity, opts.auth ? { auth: opts.auth } : {});
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
    this.bindTimeoutMs = this.#opts.bindTimeoutMs;
    this.#authBackoff = new Backoff({ initialMs: 500, maxMs: 30_000, ...this.#opts.authBackoff });
    // A failing service poll backs off from twice the interval, doubling, to 2 minutes (or the interval if longer).
    const poll = Math.max(1, this.#opts.servicePollMs);
    this.#pollBackoff = new Backoff({ initialMs: 2 * poll, maxMs: Math.max(poll, 120_000) });
    this.#authReason = `authenticating to the controller at ${originOf(identity.ztAPI)}`;
    // OIDC: every new access token goes to the routers (UpdateToken), or their channels go.
    this.controller.onTokenChange(() => this.#pushToken());
    this.#sm = new StateMachine(
      "context",
      identity.name,
      ContextState.Authenticating,
      {
        [ContextState.Authenticating]: [ContextState.Ready, ContextState.Closed],
        [ContextState.Ready]: [ContextState.Closed],
        [ContextState.Closed]: [],
      },
      log,
    );
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
    if (this.closed) return `the context for "${this.identity.name}" is closed`;
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
    if (!this.controller.sessionToken) await this.controller.authenticate();
    await this.#refreshServices();
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
      ? `the controller refused identity "${this.identity.name}" (${next}; it may have been deleted or ` +
        `re-enrolled: re-enroll it or restore it): ${failure.message}`
      : `cannot authenticate to the controller (${next}): ${failure.message}`;
    log("context %s: %s", this.identity.name, this.#authReason);
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
    this.#schedulePoll();
    this.#scheduleCertCheck(1_000);
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
      log("context %s: a %s listener threw: %s", this.identity.name, event, (err as Error).stack ?? err);
    }
  }

  #closedError(): ZitiError {
    return new ZitiError(ErrorCodes.CLOSED, `context for "${this.identity.name}" is closed`);
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

  /** How this context authenticated ("oidc" or "legacy"); undefined before the first authentication. */
  get authMode(): "oidc" | "legacy" | undefined {
    return this.controller.authMode;
  }

  /** When the identity's certificate expires (it changes when the certificate is renewed). */
  get certExpiresAt(): Date {
    return certTimes(this.identity.certPem).notAfter;
  }

  /** OIDC: hands the new access token to every open router channel; a channel that refuses it is closed. */
  #pushToken(): void {
    if (this.controller.authMode !== "oidc") return;
    // A new login is a new API session: routers refuse to move a channel to another API session (UpdateToken:
    // "api session ids did not match"), so new channels are opened with the new token (and certificate), the
    // listeners bind on them before leaving the old ones, and the old channels close once idle.
    const asid = this.controller.session?.id;
    const previous = this.#apiSessionId;
    this.#apiSessionId = asid;
    if (previous !== undefined && asid !== previous) {
      this.#retireChannels();
      return;
    }
    const token = this.controller.sessionToken;
    if (!token) return;
    for (const [url, ch] of this.#openChannels) {
      ch.updateToken(token).then(
        () => log("channel %s: access token updated", url),
        (err: Error) => {
          log("channel %s: token update failed (%s); closing it (it reconnects on next use)", url, err.message);
          ch.close("the router refused the new access token");
        },
      );
    }
  }

  /** Moves every channel out of use (new dials and binds open new ones) and renews the listeners' binds. */
  #retireChannels(): void {
    this.#sessions.clear();
    const old = [...this.#openChannels.values()];
    this.#channels.clear();
    this.#openChannels.clear();
    log("context %s: new API session: %d channel(s) retired", this.identity.name, old.length);
    void Promise.allSettled([...this.#listeners].map((l) => l.renew())).then(() => {
      const deadline = Date.now() + 10 * 60_000;
      const sweep = () => {
        const left = old.filter((ch) => ch.isOpen);
        for (const ch of left) {
          if (ch.connectionCount === 0 || Date.now() > deadline || this.closed) ch.close("retired (new API session)");
        }
        if (left.some((ch) => ch.isOpen)) setTimeout(sweep, 5_000).unref();
      };
      sweep();
    });
  }

  // ---- certificate renewal --------------------------------------------------------------------------------------

  #scheduleCertCheck(ms: number): void {
    clearTimeout(this.#certTimer);
    if (this.closed || this.#opts.renewCertBeforeMs === 0) return;
    this.#certTimer = setTimeout(() => void this.#certCheck(), Math.min(ms, 2 ** 31 - 1));
    this.#certTimer.unref();
  }

  /** A timer callback: catches everything. Renews when due (or when the controller asked for it). */
  async #certCheck(): Promise<void> {
    const t = certTimes(this.identity.certPem);
    const before = this.#opts.renewCertBeforeMs >= 0 ? this.#opts.renewCertBeforeMs : undefined;
    const due = renewalDueAt(t, before).getTime();
    const session = this.controller.session;
    const requested = session?.certExtendRequested === true || session?.certKeyRollRequested === true;
    const now = Date.now();
    // Not twice within an hour: a renewBefore longer than the lifetime the controller issues must not loop.
    const recently = now - this.#lastRenewalAt < 60 * 60_000;
    if ((now < due && !requested) || recently) {
      if (recently && now >= due) {
        log("certificate renewed less than an hour ago and due again: renewBefore exceeds the issued lifetime");
      }
      this.#scheduleCertCheck(Math.max(1_000, Math.min(this.#opts.certCheckMs, due - now)));
      return;
    }
    try {
      await this.renewCertificate();
      this.#certBackoff.reset();
      this.#scheduleCertCheck(this.#opts.certCheckMs);
    } catch (err) {
      const retryInMs = this.#certBackoff.next();
      log("certificate renewal failed: %s; retrying in %d ms", (err as Error).message, retryInMs);
      this.#safeEmit("certRenewalFailed", {
        error: err as Error,
        notAfter: t.notAfter,
        retryInMs,
      } satisfies CertRenewalFailedEvent);
      this.#scheduleCertCheck(retryInMs);
    }
  }

  /**
   * Extends the identity's certificate now (the controller's extend + extend-verify endpoints), keeping the key
   * unless an administrator asked for a key roll. The renewed identity is written back to its file (atomically,
   * 0600) when there is one and it is writable; otherwise it is kept in memory and the "certRenewed" event says
   * why the file was not written (it then holds the old certificate, which stops working once it expires).
   */
  renewCertificate(): Promise<void> {
    this.#assertReady();
    this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
    return this.#renewing;
  }

  async #renew(): Promise<void> {
    const previous = certTimes(this.identity.certPem);
    const session = this.controller.session ?? (await this.controller.authenticate());
    if (!session.certExtendable) {
      throw new ZitiError(
        ErrorCodes.AUTH_FAILED,
        `identity "${this.identityName}": the controller cannot extend this certificate (not issued by the ` +
          "network, e.g. a third-party CA): renew it with its issuer",
      );
    }
    const rollKey = session.certKeyRollRequested;
    const { csrPem, keyPem } = await makeCsr(this.identity.name, this.identity.keyPem, rollKey);
    const { certPem } = await this.controller.renewCertificate(csrPem, keyPem);
    this.identity.certPem = certPem;
    this.identity.keyPem = keyPem;
    this.#prover = undefined; // caller proofs carry the certificate
    this.#lastRenewalAt = Date.now();
    const now = certTimes(certPem);
    let written = false;
    let notWrittenReason: string | undefined;
    if (this.identity.path) {
      try {
        await saveIdentity(this.identity.path, this.identity);
        written = true;
      } catch (err) {
        notWrittenReason = (err as Error).message;
      }
    } else {
      notWrittenReason = "the identity was not loaded from a file";
    }
    log(
      "certificate renewed: expires %s (was %s)%s",
      now.notAfter.toISOString(),
      previous.notAfter.toISOString(),
      written ? `; ${this.identity.path} rewritten` : `; file NOT rewritten: ${notWrittenReason}`,
    );
    this.#safeEmit("certRenewed", {
      previousNotAfter: previous.notAfter,
      notAfter: now.notAfter,
      written,
      ...(notWrittenReason ? { notWrittenReason } : {}),
      ...(this.identity.path ? { path: this.identity.path } : {}),
      keyRolled: rollKey,
    } satisfies CertRenewedEvent);
  }

  /** The edge routers this context has a channel to (or is connecting to), with state and latency. Read-only. */
  routerStatus(): RouterStatus[] {
    return [...this.#channels.keys()].sort().map((key) => {
      const ch = this.#openChannels.get(key);
      const [role, url] = key.split(" ", 2) as [ChannelRole, string];
      return ch
        ? { url, role, routerId: ch.routerId, state: ch.state, latencyMs: ch.lastLatencyMs }
        : { url, role, routerId: "", state: "connecting", latencyMs: undefined };
    });
  }

  /** Every service this identity can see, with its permissions and configs. */
  async services(): Promise<ServiceInfo[]> {
    this.#assertReady();
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

  /** Polls every servicePollMs while the controller answers; backs off (jittered, capped) while it fails. */
  #schedulePoll(delayMs = this.#opts.servicePollMs): void {
    if (this.#opts.servicePollMs <= 0 || this.closed) return;
    clearTimeout(this.#pollTimer);
    this.#pollTimer = setTimeout(() => void this.#poll(), delayMs);
    this.#pollTimer.unref();
  }

  /** A timer callback: catches everything. */
  async #poll(): Promise<void> {
    let delayMs = this.#opts.servicePollMs;
    try {
      const at = await this.controller.serviceUpdates();
      if (at !== this.#lastChangeAt || Date.now() - this.#servicesLoadedAt > 5 * 60_000) {
        this.#lastChangeAt = at;
        await this.#refreshServices();
      }
      this.#pollBackoff.reset();
    } catch (err) {
      delayMs = this.#pollBackoff.next();
      log(
        "service poll failed (%d in a row): %s; next in %d ms",
        this.#pollBackoff.failures,
        (err as Error).message,
        delayMs,
      );
    }
    this.#schedulePoll(delayMs);
  }

  /** Identities of the replicas that bound `service` by edge identity (each dialable with `{ identity }`). */
  async replicas(service: string): Promise<string[]> {
    const svc = await this.#service(service, "Dial");
    return this.controller.listTerminatorIdentities(svc.id);
  }

  async #service(name: string, permission: "Dial" | "Bind"): Promise<ServiceInfo> {
    this.#assertReady();
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
    // Prefer routers we already have a dial channel to.
    const has = (u: string) => Number(this.#channels.has(channelKey("dial", u)));
    return urls.sort((a, b) => has(b) - has(a));
  }

  /**
   * The channel to a router URL for dials or for binds, opened on first use and shared by every connection (or
   * bind) of that role. See ChannelRole for why the two are kept apart.
   */
  channel(url: string, role: ChannelRole = "dial"): Promise<Channel> {
    this.#assertOpen();
    const key = channelKey(role, url);
    let p = this.#channels.get(key);
    if (!p) {
      p = this.#openChannel(url);
      this.#channels.set(key, p);
      p.then(
        (ch) => {
          if (this.#channels.get(key) === p) this.#openChannels.set(key, ch);
          ch.once("closed", (err: ZitiError) => {
            if (this.#channels.get(key) === p) this.#channels.delete(key);
            if (this.#openChannels.get(key) === ch) this.#openChannels.delete(key);
            // Closed right after a good hello with no traffic: the router likely rejected our API session.
            if (ch.messagesAfterHello === 0 && Date.now() - ch.openedAt < 2_000) this.#suspectSession = true;
            log("channel %s closed: %s", key, err.message);
          });
        },
        () => {
          // Kept for a moment, so the listeners and dials retrying together share one failed attempt instead of
          // each opening a connection to a router that is down.
          setTimeout(() => {
            if (this.#channels.get(key) === p) this.#channels.delete(key);
          }, FAILED_CHANNEL_MEMORY_MS).unref();
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
      ...(this.#opts.maxBufferedBytes ? { maxConnBufferedBytes: this.#opts.maxBufferedBytes } : {}),
      ...(this.#opts.maxChannelBufferedBytes ? { maxChannelBufferedBytes: this.#opts.maxChannelBufferedBytes } : {}),
      sdkFlowControl: this.#opts.sdkFlowControl !== false,
      ...(this.#opts.connectRouter ? { connect: () => this.#opts.connectRouter!(url) } : {}),
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
        // A session's router list is the controller's view when it was made: one made while routers were
        // restarting lists none online for ever. Forget it, so the next attempt asks again.
        this.dropSession(service, "Dial");
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
          // Services that require encryption: we announce a caller proof, sent once the host showed it is scrapez.
          const prover = svc.encryptionRequired ? this.#proverFor(opts.appData) : undefined;
          const conn = await dialOnChannel(ch, {
            service,
            sessionToken: s.token,
            encrypt: svc.encryptionRequired,
            callerId: this.identityName,
            terminatorIdentity: opts.identity,
            appData: prover ? proofMarker(opts.appData as object | undefined) : encodeAppData(opts.appData),
            acceptHello: prover !== undefined,
            timeoutMs: Math.max(1, deadline - Date.now()),
          });
          // Our writes wait until the proof went out (or the host proved to be no scrapez host); a failure there
          // (no stream header within the dial timeout, an unknown greeting) destroys the connection with its error.
          if (prover) conn.holdWrites(proveToHost(conn, prover, service, Date.now() + timeoutMs));
          this.#track(conn);
          return conn;
        } catch (err) {
          lastErr = err;
          // A refusal from the router (no terminator, ...) is the service's answer, not this router's fault.
          if (isZitiError(err, ErrorCodes.DIAL_FAILED) || isZitiError(err, ErrorCodes.DIAL_TIMEOUT)) throw err;
        }
      }
      // No listed router could be reached: the list may be stale too (routers moved or came back elsewhere).
      this.dropSession(service, "Dial");
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
      // One retry with a fresh session, as the Go SDK does, when the router refused the dial (the session is no
      // good, or the circuit went to a terminator that was just going away: a host re-binding after a new API
      // session or a restart) or the session listed no online router (a fresh one may: routers came back).
      const retriable = isZitiError(err, ErrorCodes.DIAL_FAILED) || isZitiError(err, ErrorCodes.NO_EDGE_ROUTERS);
      if (retriable && Date.now() < deadline) {
        // "no terminators" while a host switches its binds over (a renewal, a restart) lasts a moment: wait a
        // little (bounded by the deadline) so the one retry does not land in the same gap.
        if (/no terminators/i.test((err as Error).message)) {
          await new Promise((r) => setTimeout(r, Math.min(500, Math.max(0, deadline - Date.now() - 1))));
        }
        this.dropSession(service, "Dial");
        return attempt();
      }
      throw err;
    }
  }

  /**
   * Our prover when this dial can carry a caller proof: the AppData marker merges into a plain-object `appData`
   * under the "scrapez" key; a Buffer/string (or any non-object) `appData` is the caller's own bytes, sent as is.
   */
  #proverFor(appData: unknown): CallerProver | undefined {
    if (appData !== undefined && !isPlainObject(appData)) return undefined;
    return this.#callerProver();
  }

  #callerProver(): CallerProver | undefined {
    if (this.#prover === undefined) {
      try {
        this.#prover = new CallerProver(this.identity);
      } catch (err) {
        log("no caller proofs: cannot use the identity's certificate and key: %s", (err as Error).message);
        this.#prover = null;
      }
    }
    return this.#prover ?? undefined;
  }

  /** Before an accepted connection starts: arms the caller-proof exchange if the dialer announced a proof. */
  prepareCaller(conn: ZitiConnection): void {
    armProofExchange(conn);
  }

  /**
   * Who is calling on an accepted connection: the router-asserted DialerIdentityName (v2.0+ routers only) and/or
   * the pin of a key whose caller proof (the dialer's first encrypted message, bound to this connection's keys and
   * stream headers: caller-proof.ts) verified against our CA bundle. Resolves once known, before the connection
   * is handed on; never rejects: failures leave the caller unverified with `callerProofError` saying why.
   */
  async verifyCaller(conn: ZitiConnection): Promise<void> {
    if (conn.dialerIdentityName) {
      conn.verifiedCaller = conn.dialerIdentityName;
      conn.callerVerifiedBy = "router";
    }
    try {
      this.#verifier ??= new CallerProofVerifier(this.identity.caPem);
      await acceptProof(conn, this.#verifier);
    } catch (err) {
      conn.callerProofError = `the caller proof could not be checked: ${(err as Error).message}`;
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
        `identity "${this.identity.name}" is not authenticated to the controller yet: ${this.#authReason}`,
      );
    }
  }

  /** Graceful: unbinds listeners, ends connections, closes channels and logs out. Idempotent. */
  async close(): Promise<void> {
    if (!this.#sm.to(ContextState.Closed, "close")) return;
    this.#stopTimers();
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
    if (this.#sm.to(ContextState.Closed, err?.message ?? "destroy")) this.#stopTimers();
    for (const l of this.#listeners) void l.close();
    for (const c of this.#conns) c.destroy(err);
    void this.#closeChannels();
    this.controller.close();
  }

  /** Clears the poll and background-authentication timers and tells whenReady() waiters. */
  #stopTimers(): void {
    clearTimeout(this.#certTimer);
    clearTimeout(this.#pollTimer);
    clearTimeout(this.#authTimer);
    this.#pollTimer = undefined;
    this.#authTimer = undefined;
    this.#safeEmit("closed");
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

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && !ArrayBuffer.isView(v);
}

function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return url;
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
