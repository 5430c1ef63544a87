/**
 * Layer 3: what a ZitiContext is opened with (ContextOptions, OpenOptions) and the events it emits with their
 * arguments (docs/architecture.md, "Events"). Types only.
 */
import type { Duplex } from "node:stream";
import type { BackoffOptions } from "../backoff.js";
import type { CertRenewalFailedEvent, CertRenewedEvent } from "./cert-renewer.js";
import type { AuthMode, ServiceInfo } from "./controller-wire.js";

export type { CertRenewalFailedEvent, CertRenewedEvent } from "./cert-renewer.js";

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
  /**
   * The egress proxy for controller and router connections: `http://[user:password@]host:port` (HTTP CONNECT,
   * Basic auth when credentials are given), or `direct`. Unset: `https_proxy` / `HTTPS_PROXY` from the environment.
   * `no_proxy` / `NO_PROXY` exempts destinations either way. TLS with the identity's certificate runs inside the
   * tunnel, to the same server name. See docs/openziti.md, "Behind a corporate proxy".
   */
  egressProxy?: string;
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
