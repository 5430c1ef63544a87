/**
 * One error hierarchy for the SDK. Every error carries a stable string `code` (documented in docs/errors.md)
 * and, where there is one, the underlying `cause`.
 */
export const ErrorCodes = {
  /** The identity file is missing, unreadable or malformed. */
  IDENTITY_INVALID: "ZITI_IDENTITY_INVALID",
  /** Enrollment failed (token expired, reused, tampered, controller refused the CSR). */
  ENROLLMENT_FAILED: "ZITI_ENROLLMENT_FAILED",
  /** The enrollment JWT is malformed or its signature does not verify. */
  JWT_INVALID: "ZITI_JWT_INVALID",
  /** The controller rejected our credentials. */
  AUTH_FAILED: "ZITI_AUTH_FAILED",
  /** The controller answered with an error we do not map to something more specific. */
  CONTROLLER_ERROR: "ZITI_CONTROLLER_ERROR",
  /** The controller could not be reached. */
  CONTROLLER_UNREACHABLE: "ZITI_CONTROLLER_UNREACHABLE",
  /** The context has not authenticated to the controller yet (started without waiting for it); it keeps trying. */
  NOT_READY: "ZITI_NOT_READY",
  /** No service of that name is visible to this identity. */
  SERVICE_NOT_FOUND: "ZITI_SERVICE_NOT_FOUND",
  /** The service exists but this identity may not Dial (or Bind) it. */
  NOT_AUTHORIZED: "ZITI_NOT_AUTHORIZED",
  /** No online edge router can serve this service for this identity. */
  NO_EDGE_ROUTERS: "ZITI_NO_EDGE_ROUTERS",
  /** The dial did not complete in time. */
  DIAL_TIMEOUT: "ZITI_DIAL_TIMEOUT",
  /** The router refused the dial (no terminator, circuit failure, ...). */
  DIAL_FAILED: "ZITI_DIAL_FAILED",
  /** The router refused the bind. */
  BIND_FAILED: "ZITI_BIND_FAILED",
  /** A router channel could not be opened or was lost. */
  CHANNEL_CLOSED: "ZITI_CHANNEL_CLOSED",
  /** A request on a channel got no reply in time. */
  TIMEOUT: "ZITI_TIMEOUT",
  /** A peer sent bytes that break the wire protocol. */
  PROTOCOL_ERROR: "ZITI_PROTOCOL_ERROR",
  /** A frame is larger than the configured limit. */
  FRAME_TOO_LARGE: "ZITI_FRAME_TOO_LARGE",
  /** End-to-end encryption failed (missing key, bad header, authentication failure). */
  CRYPTO_FAILED: "ZITI_CRYPTO_FAILED",
  /** The connection was closed (locally or by the peer). */
  CONNECTION_CLOSED: "ZITI_CONNECTION_CLOSED",
  /** A connection's reader fell too far behind; it alone was closed so its router channel keeps flowing. */
  READER_TOO_SLOW: "ZITI_READER_TOO_SLOW",
  /**
   * SDK flow control (xgress to SDK) broke on one connection: the router sent a malformed payload or acknowledgement,
   * answered without the circuit data it needs, or the dialer's side never started the circuit.
   */
  FLOW_CONTROL: "ZITI_FLOW_CONTROL",
  /** An end-to-end encrypted stream ended without the FINAL message its peer promised: it may be cut short. */
  STREAM_TRUNCATED: "ZITI_STREAM_TRUNCATED",
  /** The egress proxy setting (egressProxy, HTTPS_PROXY) is not a usable proxy URL. */
  EGRESS_PROXY_INVALID: "ZITI_EGRESS_PROXY_INVALID",
  /** The egress proxy could not be reached (no TCP connection, or no answer to CONNECT in time). */
  EGRESS_PROXY_UNREACHABLE: "ZITI_EGRESS_PROXY_UNREACHABLE",
  /** The egress proxy wants (other) credentials: 407 (or 401) to CONNECT. */
  EGRESS_PROXY_AUTH: "ZITI_EGRESS_PROXY_AUTH",
  /** The egress proxy refused CONNECT to the controller or router (403, or another non-2xx status). */
  EGRESS_PROXY_REFUSED: "ZITI_EGRESS_PROXY_REFUSED",
  /** The egress proxy's answer to CONNECT is not an HTTP answer (or it closed without one). */
  EGRESS_PROXY_BAD_ANSWER: "ZITI_EGRESS_PROXY_BAD_ANSWER",
  /** The context, listener or connection is closed and cannot be used. */
  CLOSED: "ZITI_CLOSED",
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class ZitiError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = "ZitiError";
  }
}

/** Malformed bytes from the network; ends the channel that received them. */
export class ProtocolError extends ZitiError {
  constructor(message: string, options?: { cause?: unknown; code?: ErrorCode }) {
    super(options?.code ?? ErrorCodes.PROTOCOL_ERROR, message, options);
    this.name = "ProtocolError";
  }
}

/** An error answer from the controller's REST API. */
export class ControllerError extends ZitiError {
  readonly status: number;
  readonly apiCode: string | undefined;
  constructor(code: ErrorCode, message: string, status: number, apiCode?: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "ControllerError";
    this.status = status;
    this.apiCode = apiCode;
  }
}

export function isZitiError(err: unknown, code?: ErrorCode): err is ZitiError {
  return err instanceof ZitiError && (code === undefined || err.code === code);
}
