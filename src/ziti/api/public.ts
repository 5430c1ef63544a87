/**
 * Layer 3: what applications see of a connection and of a listener (docs/architecture.md, "The SDK's public API").
 * The classes behind them (protocol/conn.ts, api/listener.ts) carry more: the handshake's hooks into a connection
 * (`useXgress`, `start`, `setFirstMessages`, `e2e`), the caller-proof fields the listener sets, the listener's
 * `start` and `renew` (a connection's message dispatch and channel-loss hooks are #private: the channel gets them
 * as a sink when the connection registers). Those are for the SDK's own layers (and its tests, through
 * src/ziti/internal.ts), not for applications, so ZitiContext hands out these views (its return types are the
 * compile-time check that the classes fit them).
 */
import type { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { ConnState } from "../protocol/conn.js";
import type { ListenerState, ZitiListenerEvents } from "./listener.js";

/** One virtual connection over the overlay: a Node Duplex (and enough of net.Socket for http). */
export interface ZitiConnection extends Duplex {
  readonly service: string;
  readonly connId: number;
  /** "dial" (ours) or "accepted" (a listener's). */
  readonly role: "dial" | "accepted";
  /** The dialer's identity name as it declared it (self-asserted before OpenZiti 2.0: proves nothing). */
  readonly callerId: string | undefined;
  /** The dialer's identity name as a v2.0+ router asserts it. */
  readonly dialerIdentityName: string | undefined;
  /** Accepted connections: sha256:<pin> of the key whose caller proof verified against our CA bundle. */
  readonly callerKey: string | undefined;
  /** Accepted connections: "router" (v2.0+ router-asserted name) or "proof" (a verified caller proof). */
  readonly callerVerifiedBy: "router" | "proof" | undefined;
  /** Accepted connections: why no caller proof verified. */
  readonly callerProofError: string | undefined;
  /** The router-asserted name, or the name an application mapped a pinned key to (it may set it). */
  verifiedCaller: string | undefined;
  readonly circuitId: string | undefined;
  /** "connecting" until the circuit is up (dial resolves and "connection" fires after that), then "connected"; "closed". */
  readonly state: ConnState;
  /** End-to-end encrypted (the service requires it). */
  readonly encrypted: boolean;
  /** "sdk": the circuit's flow control runs here (routers v1.6+); "legacy": the router's. */
  readonly flowControl: "sdk" | "legacy";
  /** Unread inbound bytes this connection may hold (legacy flow control: past it, ZITI_READER_TOO_SLOW). */
  maxBufferedBytes: number;
  /** Unread inbound bytes held now. */
  readonly bufferedBytes: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly remoteAddress: string | undefined;
  /** As net.Socket: a "timeout" event after `ms` without reads or writes (0 disables). */
  setTimeout(ms: number, cb?: () => void): this;
  setNoDelay(noDelay?: boolean): this;
  setKeepAlive(enable?: boolean, delay?: number): this;
  ref(): this;
  unref(): this;
}

/** One bound service: it emits a "connection" per dialer and re-binds by itself after failures. */
export interface ZitiListener extends EventEmitter<ZitiListenerEvents> {
  readonly service: string;
  readonly state: ListenerState;
  /** The terminator identity it binds with (bindUsingEdgeIdentity or `identity`), if any. */
  readonly terminatorIdentity: string | undefined;
  /** The routers holding a bind now. */
  readonly boundRouters: string[];
  /** Times it bound again after losing all its binds. */
  readonly rebinds: number;
  /** Unbinds; connections already accepted stay open. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}
