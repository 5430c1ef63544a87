/**
 * The controller client's wire shapes: what the SDK hands on (ServiceInfo, SessionInfo, ApiSessionInfo) and the zod
 * schemas of the controller's answers they are read from (edge/client/v1), and the SDK version it announces
 * (read once from package.json).
 */
import { readFileSync } from "node:fs";
import os from "node:os";
import { z } from "zod";

export interface ServiceInfo {
  id: string;
  name: string;
  permissions: ("Dial" | "Bind")[];
  encryptionRequired: boolean;
  roleAttributes: string[];
  /** Config data keyed by config type name (e.g. "host.v1"). */
  configs: Record<string, unknown>;
  /** The controller's serviceDetail as received. */
  raw: Record<string, unknown>;
}

export interface EdgeRouterInfo {
  name: string;
  hostname: string;
  isOnline: boolean;
  /** Protocol -> URL, e.g. `{ tls: "tls://127.0.0.1:3022" }`. */
  urls: { tls?: string; [proto: string]: string | undefined };
}

export interface SessionInfo {
  id: string;
  token: string;
  type: "Dial" | "Bind";
  /** Online, enabled routers only. */
  edgeRouters: EdgeRouterInfo[];
}

/** The current API session, without its token. */
export interface ApiSessionInfo {
  id: string;
  identityId: string | undefined;
  identityName: string | undefined;
  /** When the controller will expire the session if nothing happens, by the controller's clock. */
  expiresAt: Date | undefined;
  /** The controller's inactivity timeout for the session (OIDC: the access token's lifetime). */
  expirationSeconds: number | undefined;
  /** How this session was made: OIDC tokens or a legacy API session. */
  mode: "oidc" | "legacy";
  /** The certificate authenticator the identity used (for the extend endpoints). */
  authenticatorId: string | undefined;
  /** The controller issued the certificate and can extend it. */
  certExtendable: boolean;
  /** An administrator asked this identity to extend its certificate (read at authentication). */
  certExtendRequested: boolean;
  /** ... and to use a new key for it. */
  certKeyRollRequested: boolean;
}

/** How to authenticate: OIDC when the controller supports it (auto), or forced. */
export type AuthMode = "auto" | "oidc" | "legacy";
export const AUTH_MODES: readonly AuthMode[] = ["auto", "oidc", "legacy"];

export const ApiSessionBase = z.object({
  id: z.string(),
  identityId: z.string().nullish(),
  identity: z.object({ id: z.string().nullish(), name: z.string().nullish() }).nullish(),
  expiresAt: z.string().nullish(),
  expirationSeconds: z.number().nullish(),
  lastActivityAt: z.string().nullish(),
  authQueries: z.array(z.object({ typeId: z.string().nullish() }).loose()).nullish(),
  authenticatorId: z.string().nullish(),
  isCertExtendable: z.boolean().nullish(),
  isCertExtendRequested: z.boolean().nullish(),
  isCertKeyRollRequested: z.boolean().nullish(),
});
export const ApiSessionDetail = ApiSessionBase.extend({ token: z.string().min(1) });
export type ApiSessionBase = z.infer<typeof ApiSessionBase>;

export const RawService = z.object({
  id: z.string(),
  name: z.string(),
  permissions: z.array(z.string()).nullish(),
  encryptionRequired: z.boolean().nullish(),
  roleAttributes: z.array(z.string()).nullish(),
  config: z.record(z.string(), z.unknown()).nullish(),
});

const RawRouter = z.object({
  name: z.string().nullish(),
  hostname: z.string().nullish(),
  isOnline: z.boolean().nullish(),
  disabled: z.boolean().nullish(),
  urls: z.record(z.string(), z.string()).nullish(),
  supportedProtocols: z.record(z.string(), z.string()).nullish(),
});

export const RawSession = z.object({
  id: z.string(),
  token: z.string().min(1),
  edgeRouters: z.array(RawRouter).nullish(),
});

export const Pagination = z.object({ totalCount: z.number() }).loose();

export interface Envelope {
  data?: unknown;
  meta?: { pagination?: unknown };
  error?: ApiError;
}

export interface ApiError {
  code?: string;
  message?: string;
  requestId?: string;
  causeMessage?: string;
  cause?: { code?: string; message?: string; field?: string; reason?: string; value?: unknown };
}

/** GET /controllers (HA): each member's API addresses. */
export const ControllerList = z.array(
  z
    .object({
      name: z.string().nullish(),
      isOnline: z.boolean().nullish(),
      apiAddresses: z
        .record(z.string(), z.array(z.object({ url: z.string(), version: z.string().nullish() }).loose()).nullish())
        .nullish(),
    })
    .loose(),
);

let sdkVersionCache: string | undefined;
/** Our package version, from package.json next to src/ or dist/src/. */
function sdkVersion(): string {
  if (sdkVersionCache) return sdkVersionCache;
  sdkVersionCache = "unknown";
  for (const rel of ["../../../package.json", "../../../../package.json"]) {
    try {
      const p = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as { name?: string; version?: string };
      if (p.name === "scrapez" && p.version) {
        sdkVersionCache = p.version;
        break;
      }
    } catch {
      /* try the next layout */
    }
  }
  return sdkVersionCache;
}

/** The body of an authentication (legacy POST /authenticate, OIDC /oidc/login/cert): who we are. */
export function authenticateBody(): Record<string, unknown> {
  return {
    configTypes: ["all"],
    sdkInfo: { type: "scrapez", version: sdkVersion(), appId: "scrapez", appVersion: sdkVersion() },
    envInfo: {
      os: os.platform(),
      arch: os.arch(),
      osRelease: os.release(),
      osVersion: os.version(),
      hostname: os.hostname(),
    },
  };
}
