/**
 * Layer 3: a listener keeps a service bound. It binds on up to `maxRouters` edge routers and, whenever a bind
 * ends (router restarted, channel lost, session removed), binds again by itself with back-off until closed.
 */
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { Backoff } from "../backoff.js";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Channel } from "../protocol/channel.js";
import type { ZitiConnection } from "../protocol/conn.js";
import type { ZitiConnection as PublicConnection } from "./public.js";
import { generateKeyPair, initCrypto, type KeyPair } from "../protocol/crypto.js";
import { BindHandle, BindState } from "../protocol/edge.js";

const log = debug("listener");

/**
 * Longest wait between two re-bind attempts while the routers are only unreachable (before ±25 % jitter). A retry
 * then costs one connection attempt, shared by the context's listeners, and no controller request; capped at 1 s
 * so that a restarted router is bound again within about a second of accepting connections.
 */
export const REBIND_MAX_MS = 1_000;
/**
 * Longest wait between two re-bind attempts after a router refused the bind (or the attempt needed the controller:
 * no session, or one listing no router), before ±25 % jitter. Such a retry may cost a new Bind session, so a
 * persistent refusal must not mean one controller request per second per service: 0.25 s doubling up to 60 s.
 */
export const REBIND_REFUSED_MAX_MS = 60_000;
/** A bind that stayed up this long held: the back-off starts from the beginning after it ends. */
export const BIND_HOLDS_MS = 10_000;
/**
 * A refusal about the Bind session itself (v1.6 routers: "invalid session", "session ended", "rejecting bind,
 * invalid session type", an expired or unverifiable session token): only a new session can help. Any other refusal
 * (no controller, no access, terminator creation failed, no answer) keeps the session and only backs off.
 */
const SESSION_REFUSAL = /session|token|expired/i;
/**
 * Accepted connections that announced a caller proof and are still waiting for it (up to 15 s each,
 * caller-handshake.ts) before anyone sees them: they hold no connection slot of the application yet, so without a
 * bound a Dial-permitted caller could keep any number of them open. Over the bound the one that has waited longest
 * is closed. It is a hard bound on memory, not a fairness rule, so it sits well above honest bursts: a scrapez
 * process opening 100-200 connections at once waits here for several seconds under load (each proof is an RSA or
 * ECDSA signature on the dialer and a verification here), and a bound of 64 closed such honest connections.
 */
export const MAX_PENDING_PROOFS = 1024;

export interface ListenOptions {
  /** Terminator identity = our identity's name, so each replica can be dialed on its own. */
  bindUsingEdgeIdentity?: boolean;
  /** An explicit terminator identity. */
  identity?: string;
  cost?: number;
  precedence?: "default" | "required" | "failed";
  /** How many routers to bind on at once (default 2). */
  maxRouters?: number;
}

export enum ListenerState {
  Binding = "binding",
  Bound = "bound",
  Rebinding = "rebinding",
  Closed = "closed",
}

const TRANSITIONS: Record<ListenerState, readonly ListenerState[]> = {
  [ListenerState.Binding]: [ListenerState.Bound, ListenerState.Rebinding, ListenerState.Closed],
  [ListenerState.Bound]: [ListenerState.Rebinding, ListenerState.Closed],
  [ListenerState.Rebinding]: [ListenerState.Bound, ListenerState.Closed],
  [ListenerState.Closed]: [],
};

/** What a listener needs from its context. */
export interface ListenerHost {
  readonly identityName: string;
  /** The Bind session for a service: its token, encryption requirement and router URLs. */
  bindSession(service: string): Promise<{ token: string; encrypt: boolean; routerUrls: string[] }>;
  /** Forgets a cached Bind session so the next call creates a new one. */
  dropSession(service: string, type: "Bind" | "Dial"): void;
  /** The channel to a router for binds (kept apart from the one for dials). */
  channel(url: string, role: "bind"): Promise<Channel>;
  readonly bindTimeoutMs: number;
  /** Before an accepted connection starts: arms its caller-proof exchange (caller-handshake.ts); must not throw. */
  prepareCaller?(conn: ZitiConnection): void;
  /**
   * Establishes who an accepted connection's caller is (router assertion, caller proof: the dialer's first message);
   * the connection is handed on once it settles. Must not throw or reject.
   */
  verifyCaller?(conn: ZitiConnection): void | Promise<void>;
}

/** The events a ZitiListener emits, with their arguments (docs/architecture.md, "Events"). */
export interface ZitiListenerEvents {
  /** A dialer connected (its caller proof, if any, already checked: see ZitiConnection.callerKey). */
  connection: [PublicConnection];
  /** Bound on at least one router (again after an unbound spell). */
  bound: [];
  /** Bound on one more router (its id). */
  terminator: [string];
  /** No router holds a bind any more (the reason); it re-binds by itself. */
  unbound: [string];
  /** A re-bind attempt failed; another follows. */
  rebindError: [Error];
  /** Closed (close() or its context closed). */
  close: [];
}

export class ZitiListener extends EventEmitter<ZitiListenerEvents> {
  readonly service: string;
  readonly #host: ListenerHost;
  readonly #opts: ListenOptions;
  readonly #sm: StateMachine<ListenerState>;
  readonly #handles = new Set<BindHandle>();
  /** Connections waiting for their caller proof, oldest first (MAX_PENDING_PROOFS). */
  readonly #pendingProofs = new Set<ZitiConnection>();
  /**
   * Sent with every Bind. A v1.6 router replaces a terminator that has the same listener id (ziti@v1.6.3
   * router/xgress_edge/hosted.go checkForExistingListenerId): right for a re-bind after a lost channel, wrong when
   * old and new binds must coexist (renew), which therefore takes a new one.
   */
  #listenerId = randomUUID();
  #keys: KeyPair | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  readonly #unreachableBackoff = new Backoff({ initialMs: 250, maxMs: REBIND_MAX_MS });
  readonly #refusedBackoff = new Backoff({ initialMs: 250, maxMs: REBIND_REFUSED_MAX_MS });
  /** The last #bindMore failed only because routers were unreachable (no refusal, no controller trouble). */
  #unreachableOnly = false;
  /** When each bind was established (to tell a bind that held from one the router closed at once). */
  readonly #boundAt = new WeakMap<BindHandle, number>();
  #ensuring: Promise<void> | undefined;
  /** Binds being replaced by renew(). */
  #retiring = new Set<BindHandle>();
  /** Times this listener bound again after losing all its binds. */
  rebinds = 0;

  constructor(host: ListenerHost, service: string, opts: ListenOptions = {}) {
    super();
    this.#host = host;
    this.service = service;
    this.#opts = opts;
    this.#sm = new StateMachine("listener", service, ListenerState.Binding, TRANSITIONS, log);
  }

  get state(): ListenerState {
    return this.#sm.state;
  }

  get terminatorIdentity(): string | undefined {
    return this.#opts.identity ?? (this.#opts.bindUsingEdgeIdentity ? this.#host.identityName : undefined);
  }

  /** Routers this listener is bound on right now. */
  get boundRouters(): string[] {
    return [...this.#handles].filter((h) => h.state !== BindState.Closed).map((h) => h.channel.routerId);
  }

  /** First bind; rejects if it cannot bind at all (not authorized, no routers, ...). */
  async start(): Promise<void> {
    await this.#ensure();
  }

  #ensure(): Promise<void> {
    this.#ensuring ??= this.#bindMore().finally(() => {
      this.#ensuring = undefined;
    });
    return this.#ensuring;
  }

  async #bindMore(): Promise<void> {
    if (this.#sm.is(ListenerState.Closed)) return;
    this.#unreachableOnly = false;
    const s = await this.#host.bindSession(this.service);
    if (s.encrypt && !this.#keys) {
      await initCrypto();
      this.#keys = generateKeyPair();
    }
    const want = Math.max(1, this.#opts.maxRouters ?? 2) + this.#retiring.size;
    const have = new Set([...this.#handles].filter((h) => !this.#retiring.has(h)).map((h) => h.channel.url));
    const errors: string[] = [];
    /** A router answered and refused (or the session lists none): the session may be stale. */
    let refused = s.routerUrls.length === 0;
    for (const url of s.routerUrls) {
      if (this.#handles.size >= want || this.#sm.is(ListenerState.Closed)) break;
      if (have.has(url)) continue;
      let ch: Channel;
      try {
        ch = await this.#host.channel(url, "bind");
      } catch (err) {
        // The router is not reachable (restarting, network): the session is fine, keep it for the next try.
        errors.push(`${url}: ${(err as Error).message}`);
        continue;
      }
      try {
        const h = new BindHandle(ch, {
          service: this.service,
          sessionToken: s.token,
          keys: s.encrypt ? this.#keys : undefined,
          terminatorIdentity: this.terminatorIdentity,
          cost: this.#opts.cost,
          precedence: this.#opts.precedence,
          listenerId: this.#listenerId,
          timeoutMs: this.#host.bindTimeoutMs,
        });
        h.on("accepting", (c: ZitiConnection) => this.#host.prepareCaller?.(c));
        h.on("connection", (c: ZitiConnection) => {
          // The caller fields are settled before anyone sees the connection (the bind server reads them then).
          const verified = this.#host.verifyCaller?.(c);
          if (!verified) this.emit("connection", c);
          else {
            this.#waitForProof(c);
            void verified.then(() => {
              this.#pendingProofs.delete(c);
              if (!c.destroyed) this.emit("connection", c);
            });
          }
        });
        h.on("bound", () => this.emit("terminator", ch.routerId));
        h.on("closed", (reason: string) => this.#onHandleClosed(h, reason));
        this.#handles.add(h);
        await h.bind();
        this.#boundAt.set(h, Date.now());
        have.add(url);
      } catch (err) {
        refused = true;
        errors.push(`${url}: ${(err as Error).message}`);
      }
    }
    if (this.#sm.is(ListenerState.Closed)) return;
    if (this.#handles.size === 0) {
      // A session that lists no router: a new one next time. A refusal drops the session only when it is about the
      // session (#onHandleClosed). Only unreachable routers: the same session, and the short back-off.
      if (s.routerUrls.length === 0) this.#host.dropSession(this.service, "Bind");
      this.#unreachableOnly = !refused;
      throw new ZitiError(
        ErrorCodes.BIND_FAILED,
        `cannot bind service "${this.service}" on any edge router: ${errors.join("; ") || "the session lists no online routers"}`,
      );
    }
    this.#unreachableBackoff.reset();
    if (this.#sm.to(ListenerState.Bound, `on ${this.boundRouters.join(", ")}`)) this.emit("bound");
  }

  /**
   * Make-before-break: binds again with a new Bind session on the channels the host hands out now (after a new
   * API session, e.g. once the certificate was renewed), then unbinds the old binds. Connections already accepted
   * stay open. If no new bind succeeds, the old ones are kept.
   */
  async renew(): Promise<void> {
    if (this.#sm.is(ListenerState.Closed)) return;
    const old = [...this.#handles];
    if (old.length === 0) return;
    await this.#ensuring?.catch(() => undefined);
    this.#retiring = new Set(old);
    // A new listener id: with the old one the router would let the new terminator replace the old one, and closing
    // the old bind afterwards would then leave the service with no terminator at all.
    this.#listenerId = randomUUID();
    try {
      await this.#ensure();
    } finally {
      const fresh = [...this.#handles].filter((h) => !this.#retiring.has(h));
      const retiring = this.#retiring;
      this.#retiring = new Set();
      if (fresh.length > 0) {
        for (const h of retiring) {
          this.#handles.delete(h);
          h.close();
        }
        log(
          "listener %s: bound anew on %d router(s); %d old bind(s) closed",
          this.service,
          fresh.length,
          retiring.size,
        );
      }
    }
  }

  #onHandleClosed(h: BindHandle, reason: string): void {
    if (!this.#handles.delete(h)) return; // closed on purpose (renew)
    if (this.#sm.is(ListenerState.Closed)) return;
    log("listener %s: bind on %s ended: %s", this.service, h.channel.url, reason);
    const boundAt = this.#boundAt.get(h);
    const held = boundAt !== undefined && Date.now() - boundAt >= BIND_HOLDS_MS;
    if (held) {
      this.#unreachableBackoff.reset();
      this.#refusedBackoff.reset();
    }
    // The channel still open: the router itself refused or ended the bind (a lost channel is only unreachable).
    const byRouter = h.channel.isOpen;
    if (byRouter && SESSION_REFUSAL.test(reason)) this.#host.dropSession(this.service, "Bind");
    if (this.#handles.size === 0 && this.#sm.to(ListenerState.Rebinding, reason)) this.emit("unbound", reason);
    this.#scheduleRebind(byRouter && !held);
  }

  /** `refused`: the router said no (or the controller was needed), so the long back-off; else the 1 s one. */
  #scheduleRebind(refused: boolean): void {
    if (this.#retryTimer || this.#sm.is(ListenerState.Closed)) return;
    const delay = refused ? this.#refusedBackoff.next() : this.#unreachableBackoff.next();
    log("listener %s: re-bind in %d ms (%s)", this.service, delay, refused ? "refused" : "routers unreachable");
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      const wasRebinding = this.#sm.is(ListenerState.Rebinding);
      this.#ensure().then(
        () => {
          if (wasRebinding) this.rebinds++;
        },
        (err: Error) => {
          log("listener %s: rebind failed: %s", this.service, err.message);
          this.emit("rebindError", err);
          this.#scheduleRebind(!this.#unreachableOnly);
        },
      );
    }, delay);
  }

  /** Unbinds from every router. Connections already accepted stay open. Idempotent. */
  #waitForProof(c: ZitiConnection): void {
    this.#pendingProofs.add(c);
    c.once("close", () => this.#pendingProofs.delete(c));
    if (this.#pendingProofs.size <= MAX_PENDING_PROOFS) return;
    const oldest = this.#pendingProofs.values().next().value!;
    this.#pendingProofs.delete(oldest);
    log(
      "%s: %d connections wait for their caller proof; closing the one waiting longest",
      this.service,
      MAX_PENDING_PROOFS,
    );
    oldest.destroy(
      new ZitiError(
        ErrorCodes.CONNECTION_CLOSED,
        `${this.service}: closed while waiting for its caller proof, to make room: ${MAX_PENDING_PROOFS} connections ` +
          "were already waiting for theirs",
      ),
    );
  }

  async close(): Promise<void> {
    if (!this.#sm.to(ListenerState.Closed, "closed")) return;
    clearTimeout(this.#retryTimer);
    for (const h of this.#handles) h.close();
    this.#handles.clear();
    this.emit("close");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
