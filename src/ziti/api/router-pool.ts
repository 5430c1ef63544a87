/**
 * Layer 3: a context's router channels: one per edge router URL and role (dials, binds), opened on first use and
 * shared by every connection (or bind) of that role. It hands OIDC access-token refreshes to the open channels
 * (UpdateToken), retires them all when the API session changes, and reports their state (routerStatus). Through an
 * egress proxy, its channels connect with egressRouterConnect.
 */
import type { Duplex } from "node:stream";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { Channel } from "../protocol/channel.js";
import type { EgressRoute } from "../transport/egress-proxy.js";
import { connectTls, parseRouterUrl } from "../transport/tls.js";
import type { ControllerClient } from "./controller.js";
import type { Identity } from "./identity.js";

const log = debug("context");

/**
 * Dials and binds use separate channels to a router. With SDK flow control a v1.6 router keys the circuits of one
 * SDK connection by circuit id alone (ziti@v1.6.3 router/xgress_edge/listener.go `xgCircuits`), so when a context
 * dials a service it also hosts, both ends of that circuit on one channel would collide there.
 */
export type ChannelRole = "dial" | "bind";

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

/** What a channel is opened with (the context's options). */
export interface RouterPoolOptions {
  connectTimeoutMs: number;
  maxBufferedBytes?: number | undefined;
  maxChannelBufferedBytes?: number | undefined;
  sdkFlowControl: boolean;
  connectRouter?: ((routerUrl: string) => Promise<Duplex>) | undefined;
  /** The API session changed under the channels: cached Dial/Bind sessions are no good any more. */
  onNewApiSession: () => void;
  /** After the channels were retired: the listeners bind on new ones (resolves when they did). */
  renewBinds: () => Promise<unknown>;
  /** The context is closed (retired channels then close at once). */
  closed: () => boolean;
  /** Throws (ZITI_CLOSED) once the context is closed: no channel opens after that. */
  assertOpen: () => void;
}

/**
 * How router channels connect when the context goes out through an egress proxy: TLS with the identity's
 * certificate inside the proxy's tunnel. Undefined when it goes direct (the channel's own TLS connect).
 */
export function egressRouterConnect(
  identity: Identity,
  egress: EgressRoute,
  connectTimeoutMs: number,
): ((routerUrl: string) => Promise<Duplex>) | undefined {
  if (!egress.proxy) return undefined;
  return (url: string) =>
    connectTls(
      parseRouterUrl(url),
      { certPem: identity.certPem, keyPem: identity.keyPem, caPem: identity.caPem },
      connectTimeoutMs,
      egress,
    );
}

/** How long a failed channel open is remembered (and answered from) before the next attempt may connect. */
const FAILED_CHANNEL_MEMORY_MS = 250;

function channelKey(role: ChannelRole, url: string): string {
  return `${role} ${url}`;
}

export class RouterPool {
  readonly #identity: Identity;
  readonly #controller: ControllerClient;
  readonly #opts: RouterPoolOptions;
  readonly #channels = new Map<string, Promise<Channel>>();
  /** The channels of #channels that completed their hello, for routerStatus(). */
  readonly #openChannels = new Map<string, Channel>();
  #suspectSession = false;
  #apiSessionId: string | undefined;

  constructor(identity: Identity, controller: ControllerClient, opts: RouterPoolOptions) {
    this.#identity = identity;
    this.#controller = controller;
    this.#opts = opts;
  }

  /** Whether a channel of `role` to `url` is open or opening (dials prefer such routers). */
  has(url: string, role: ChannelRole): boolean {
    return this.#channels.has(channelKey(role, url));
  }

  /**
   * The channel to a router URL for dials or for binds, opened on first use and shared by every connection (or
   * bind) of that role. See ChannelRole for why the two are kept apart.
   */
  channel(url: string, role: ChannelRole): Promise<Channel> {
    this.#opts.assertOpen();
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
      await this.#controller.authenticate();
      this.#opts.onNewApiSession();
    }
    const token = this.#controller.sessionToken;
    if (!token) throw new ZitiError(ErrorCodes.AUTH_FAILED, "not authenticated to the controller");
    const o = this.#opts;
    const id = this.#identity;
    return Channel.open(url, {
      identityName: id.name,
      sessionToken: token,
      credentials: { certPem: id.certPem, keyPem: id.keyPem, caPem: id.caPem },
      connectTimeoutMs: o.connectTimeoutMs,
      ...(o.maxBufferedBytes ? { maxConnBufferedBytes: o.maxBufferedBytes } : {}),
      ...(o.maxChannelBufferedBytes ? { maxChannelBufferedBytes: o.maxChannelBufferedBytes } : {}),
      sdkFlowControl: o.sdkFlowControl,
      ...(o.connectRouter ? { connect: () => o.connectRouter!(url) } : {}),
    });
  }

  /** The edge routers this context has a channel to (or is connecting to), with state and latency. Read-only. */
  status(): RouterStatus[] {
    return [...this.#channels.keys()].sort().map((key) => {
      const ch = this.#openChannels.get(key);
      const [role, url] = key.split(" ", 2) as [ChannelRole, string];
      return ch
        ? { url, role, routerId: ch.routerId, state: ch.state, latencyMs: ch.lastLatencyMs }
        : { url, role, routerId: "", state: "connecting", latencyMs: undefined };
    });
  }

  /** OIDC: hands the new access token to every open router channel; a channel that refuses it is closed. */
  pushToken(): void {
    if (this.#controller.authMode !== "oidc") return;
    // A new login is a new API session: routers refuse to move a channel to another API session (UpdateToken:
    // "api session ids did not match"), so new channels are opened with the new token (and certificate), the
    // listeners bind on them before leaving the old ones, and the old channels close once idle.
    const asid = this.#controller.session?.id;
    const previous = this.#apiSessionId;
    this.#apiSessionId = asid;
    if (previous !== undefined && asid !== previous) {
      this.#retire();
      return;
    }
    const token = this.#controller.sessionToken;
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
  #retire(): void {
    this.#opts.onNewApiSession();
    const old = [...this.#openChannels.values()];
    this.#channels.clear();
    this.#openChannels.clear();
    log("context %s: new API session: %d channel(s) retired", this.#identity.name, old.length);
    void this.#opts.renewBinds().then(() => {
      const deadline = Date.now() + 10 * 60_000;
      const sweep = () => {
        const left = old.filter((ch) => ch.isOpen);
        for (const ch of left) {
          if (ch.connectionCount === 0 || Date.now() > deadline || this.#opts.closed()) {
            ch.close("retired (new API session)");
          }
        }
        if (left.some((ch) => ch.isOpen)) setTimeout(sweep, 5_000).unref();
      };
      sweep();
    });
  }

  /** Closes every channel (the context is closing). */
  async closeAll(): Promise<void> {
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
}
