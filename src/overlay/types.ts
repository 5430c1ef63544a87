/**
 * The seam between the applications and the SDK: the narrow views of the overlay that `scrapez proxy`
 * (DialOverlay) and `scrapez bind` (BindOverlay) are written against, with their own listener and connection
 * interfaces. The SDK's ZitiContext (src/ziti, see docs/architecture.md "The SDK's public API") satisfies both
 * structurally (src/overlay/open.ts proves it at compile time and is the one place that creates real contexts).
 * Unit tests plug in stand-ins (test/harness/proxy-standin.ts, test/harness/bind-standin.ts).
 */
import type { Duplex } from "node:stream";
import type { ListenOptions } from "../ziti/index.js";

/** The fields of the SDK's ServiceInfo that the proxy reads. */
export interface OverlayService {
  id: string;
  name: string;
  /** "Dial" and/or "Bind": only services with "Dial" are reachable and discovered. */
  permissions: readonly string[];
  roleAttributes: readonly string[];
}

export interface OverlayDialOptions {
  /** Dial the terminator bound by this identity (a replica bound with bindUsingEdgeIdentity). */
  identity?: string;
  timeoutMs?: number;
}

/**
 * One enrolled identity on the overlay. Errors from `services()` and `dial()` carry the SDK's `code`
 * (ErrorCodes in src/ziti/errors.ts: ZITI_SERVICE_NOT_FOUND, ZITI_NOT_AUTHORIZED, ZITI_DIAL_TIMEOUT,
 * ZITI_NO_EDGE_ROUTERS, ZITI_DIAL_FAILED, ...); the proxy maps them to HTTP answers.
 */
export interface DialOverlay {
  /** This identity's name as the controller knows it (shown in error bodies and `__meta_ziti_identity`). */
  readonly identityName: string;
  /**
   * Optional: false while the identity has not authenticated to the controller yet (the SDK keeps trying in the
   * background); the catalog then leaves it out and says why. Absent means always ready.
   */
  readonly ready?: boolean;
  /** Optional: why it is not ready (the last authentication failure), for /-/ready and 503 bodies. */
  readonly notReadyReason?: string | undefined;
  /** Every service this identity sees (including ones it may only Bind). */
  services(): Promise<OverlayService[]>;
  /** A connected byte stream to the service (to one replica with `identity`). */
  dial(service: string, opts?: OverlayDialOptions): Promise<Duplex>;
  /**
   * Optional: identities of the replicas that bound `service` by edge identity, each dialable with `{ identity }`.
   * Without it (or when it lists none) discovery offers one target per service.
   */
  replicas?(service: string): Promise<string[]>;
  /** Optional: when the identity's certificate expires (for scrapez_identity_cert_expiry_timestamp_seconds). */
  readonly certExpiresAt?: Date;
  /**
   * Optional: false keeps the proxy from dialing this identity's targets ahead of their first scrape (stand-ins
   * whose tests count dials); absent or true, it does unless the config's discovery.warmUp is false.
   */
  readonly dialAhead?: boolean;
  /** Optional: Dial and Bind sessions asked of the controller so far (for scrapez_proxy_sessions_created_total). */
  readonly sessionsCreated?: number;
  /** Optional, for the status page: the controller URL this identity talks to. */
  readonly controllerUrl?: string;
  /** Optional, for the status page: the edge routers this identity has channels to (read-only snapshot). */
  routerStatus?(): OverlayRouterStatus[];
  /** Emitted when the service list changes; the proxy then rebuilds its catalog at once. */
  on(event: "servicesChanged", listener: (services: OverlayService[]) => void): unknown;
  /** Emitted once the identity authenticated (after starting without the controller); the catalog then reloads. */
  on(event: "authenticated", listener: () => void): unknown;
  off?(event: "servicesChanged", listener: (services: OverlayService[]) => void): unknown;
  off?(event: "authenticated", listener: () => void): unknown;
  /** Graceful and idempotent. */
  close(): Promise<void>;
}

/** One router channel of an identity, as the status page shows it (the SDK's RouterStatus). */
export interface OverlayRouterStatus {
  url: string;
  routerId: string;
  state: string;
  latencyMs: number | undefined;
}

export type { TargetName } from "../common/naming.js";
/** The SDK's stable error codes, for applications that map overlay failures to answers and metric labels. */
export { ErrorCodes } from "../ziti/errors.js";

/** Adds the few net.Socket methods Node's HTTP code calls to a byte stream (the proxy's CONNECT tunnels use it). */
export { asSocket } from "../ziti/index.js";

/** How a service is bound (the SDK's ListenOptions: terminator identity, cost, precedence). */
export type OverlayListenOptions = ListenOptions;

/**
 * One accepted overlay connection as the bind side sees it: a byte stream plus what the SDK verified about the
 * dialer (never trust `callerId` alone: it is self-declared before OpenZiti 2.0).
 */
export interface OverlayConnection extends Duplex {
  /** The dialer's identity name as it declared it (proves nothing on v1.x routers). */
  readonly callerId?: string | undefined;
  /** The dialer's identity as a v2.0+ router asserts it. */
  readonly dialerIdentityName?: string | undefined;
  /** sha256:<pin> of the key whose caller proof verified. */
  readonly callerKey?: string | undefined;
  /** Why no caller proof verified. */
  readonly callerProofError?: string | undefined;
  /** Set by the bind side to the name its allow-list admitted. */
  verifiedCaller?: string | undefined;
  /** Bytes written to the dialer (as net.Socket). */
  readonly bytesWritten: number;
}

/** One bound service: it emits each dialer's connection and tells when it is bound on a router or not. */
export interface OverlayListener {
  /** "bound" once at least one router holds the bind. */
  readonly state: string;
  on(event: "connection", listener: (c: OverlayConnection) => void): unknown;
  on(event: "bound", listener: () => void): unknown;
  on(event: "unbound", listener: (reason: string) => void): unknown;
  /** A re-bind attempt failed (another follows): why, e.g. the egress proxy cannot be reached. */
  on(event: "rebindError", listener: (err: Error) => void): unknown;
  /** Unbinds; connections already accepted stay open. Idempotent. */
  close(): Promise<void>;
}

/** One enrolled identity binding services. */
export interface BindOverlay {
  readonly identityName: string;
  /** When the identity's certificate expires (optional; for scrapez_identity_cert_expiry_timestamp_seconds). */
  readonly certExpiresAt?: Date;
  listen(service: string, opts?: OverlayListenOptions): Promise<OverlayListener>;
}
