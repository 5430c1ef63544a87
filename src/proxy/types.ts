/**
 * The narrow view of the overlay that `scrapez proxy` is written against. The SDK's ZitiContext (src/ziti, see
 * docs/architecture.md "The SDK's public API") satisfies it structurally; src/proxy/overlay.ts is the one place
 * that creates real contexts. Unit tests plug in a stand-in (test/unit/proxy-server.test.ts).
 */
import type { Duplex } from "node:stream";

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
