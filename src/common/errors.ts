/**
 * The application's errors (config, generate, overlay opening, the proxy's answers), told the same way as the SDK's
 * (src/ziti/errors.ts): one class, a stable string `code` to match on, the underlying `cause`. docs/errors.md has
 * both tables. The SDK's own errors stay ZitiErrors with ZITI_* codes; the application passes them on unchanged.
 */
export const AppErrorCodes = {
  /** A config file, environment variable or flag is invalid; the message names each field path. */
  CONFIG_INVALID: "SCRAPEZ_CONFIG_INVALID",
  /** `scrapez generate` was asked for something federation.yaml cannot give (a missing field, a bad shard count). */
  GENERATE_INVALID: "SCRAPEZ_GENERATE_INVALID",
  /** An identity file named by the config cannot be used (unreadable, invalid); `cause` is the SDK's error. */
  IDENTITY_UNUSABLE: "SCRAPEZ_IDENTITY_UNUSABLE",
  /** `--jwt`: the state directory (or the identity file's directory) cannot be created or written to. */
  STATE_DIR_UNUSABLE: "SCRAPEZ_STATE_DIR_UNUSABLE",
  /** A reloaded config changes fields that apply only at start (`fields`); it was refused, the running one kept. */
  RELOAD_NEEDS_RESTART: "SCRAPEZ_RELOAD_NEEDS_RESTART",
  /** A scrape passed its deadline (Prometheus's scrape timeout, less the hop's reserve: src/common/deadline.ts). */
  SCRAPE_TIMEOUT: "SCRAPEZ_SCRAPE_TIMEOUT",
} as const;
export type AppErrorCode = (typeof AppErrorCodes)[keyof typeof AppErrorCodes];

/**
 * Values of the proxy's `X-Scrapez-Proxy-Error` response header: why the proxy itself answered instead of the
 * target. A failed dial passes the SDK's code instead (`ZITI_DIAL_TIMEOUT`, `ZITI_NOT_AUTHORIZED`, ...).
 */
export const ProxyErrorCodes = {
  SCRAPE_TIMEOUT: "scrape-timeout",
  BAD_UPSTREAM: "bad-upstream-response",
  NOT_DIALABLE: "not-dialable",
  NOT_READY: "not-ready",
  BAD_REQUEST: "bad-request",
  HOST_NOT_ALLOWED: "host-not-allowed",
  METHOD: "method",
  SD_QUERY_TOO_LARGE: "sd-query-too-large",
  SHUTTING_DOWN: "shutting-down",
  TOO_MANY_TUNNELS: "too-many-tunnels",
  UNAUTHENTICATED: "unauthenticated",
} as const;
export type ProxyErrorCode = (typeof ProxyErrorCodes)[keyof typeof ProxyErrorCodes];

export class ScrapezError extends Error {
  constructor(
    readonly code: AppErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ScrapezError";
  }
}
