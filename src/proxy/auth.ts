/**
 * Credentials on the proxy's listener. A stock Prometheus sends the job's `authorization`/`basic_auth` as
 * `Authorization` on absolute-form requests, and the proxy URL's userinfo as `Proxy-Authorization: Basic` (the only
 * credentials a CONNECT carries), so both headers are accepted, and every one that carries the proxy's credentials
 * is stripped before forwarding (credentialHeaders); a target's own `Authorization` passes. Comparisons are
 * constant-time. Client certificates are enforced by the TLS handshake.
 */
import { timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type http from "node:http";
import { ConfigError } from "../common/config/errors.js";
import type { ProxyConfig } from "./config.js";

export interface Credentials {
  /** The bearer token; also accepted as the password of Basic credentials (proxy URL userinfo `user:<token>@`). */
  bearer?: Buffer;
  /** `username:password` as Basic sends it. */
  basic?: Buffer;
}

function secret(field: string, file: string): string {
  let v: string;
  try {
    v = readFileSync(file, "utf8").trim();
  } catch (err) {
    throw new ConfigError(`${field}: cannot read ${file}: ${(err as Error).message}`);
  }
  if (!v) throw new ConfigError(`${field}: ${file} is empty`);
  return v;
}

export function loadCredentials(config: Pick<ProxyConfig, "auth">): Credentials {
  const c: Credentials = {};
  if (config.auth?.bearerTokenFile) c.bearer = Buffer.from(secret("auth.bearerTokenFile", config.auth.bearerTokenFile));
  if (config.auth?.basic) {
    const pw = secret("auth.basic.passwordFile", config.auth.basic.passwordFile);
    c.basic = Buffer.from(`${config.auth.basic.username}:${pw}`);
  }
  return c;
}

function same(given: Buffer, want: Buffer | undefined): boolean {
  if (want === undefined) return false;
  // Compare equal-length buffers always, so the time taken does not reveal the secret's length either.
  const a = Buffer.alloc(want.length);
  given.copy(a, 0, 0, Math.min(given.length, want.length));
  return timingSafeEqual(a, want) && given.length === want.length;
}

export type AuthResult =
  /** No credentials are configured: everyone passes (a client CA, if any, was checked by TLS). */
  | { ok: true; header?: undefined; principal?: undefined }
  /**
   * Passed; `header` carried the proxy's credentials and must not be forwarded. `principal` says who, for the status
   * page: `basic:<user>`, `bearer`, or `bearer:<user>` (the token as the password of Basic credentials; the user
   * name is the client's own choice).
   */
  | { ok: true; header: "authorization" | "proxy-authorization"; principal: string }
  | { ok: false; header?: undefined; principal?: undefined };

/** Whether one header value carries the configured bearer token or basic credentials. */
function carries(creds: Credentials, v: string | string[] | undefined): boolean {
  if (typeof v !== "string") return false;
  const m = /^(Bearer|Basic)\s+(\S+)\s*$/i.exec(v.trim());
  if (!m) return false;
  if (m[1]!.toLowerCase() === "bearer") return same(Buffer.from(m[2]!), creds.bearer);
  const given = Buffer.from(m[2]!, "base64");
  if (same(given, creds.basic)) return true;
  // Basic credentials whose password is the bearer token: what Go sends for proxy_url userinfo.
  const colon = given.indexOf(":");
  return !!creds.bearer && colon >= 0 && same(given.subarray(colon + 1), creds.bearer);
}

/** Checks `Proxy-Authorization`, then `Authorization`, for the configured bearer token or basic credentials. */
export function checkAuth(creds: Credentials, headers: http.IncomingHttpHeaders): AuthResult {
  if (!creds.bearer && !creds.basic) return { ok: true };
  for (const h of ["proxy-authorization", "authorization"] as const) {
    const v = headers[h];
    if (typeof v !== "string") continue;
    const m = /^(Bearer|Basic)\s+(\S+)\s*$/i.exec(v.trim());
    if (!m) continue;
    if (m[1]!.toLowerCase() === "bearer") {
      if (same(Buffer.from(m[2]!), creds.bearer)) return { ok: true, header: h, principal: "bearer" };
      continue;
    }
    const given = Buffer.from(m[2]!, "base64");
    const colon = given.indexOf(":");
    const user = colon >= 0 ? given.subarray(0, colon).toString("utf8") : "";
    if (same(given, creds.basic)) return { ok: true, header: h, principal: `basic:${user}` };
    // Basic credentials whose password is the bearer token: what Go sends for proxy_url userinfo.
    if (creds.bearer && colon >= 0 && same(given.subarray(colon + 1), creds.bearer))
      return { ok: true, header: h, principal: user ? `bearer:${user}` : "bearer" };
  }
  return { ok: false };
}

/**
 * Every header that carries the proxy's own credentials, so none of them reaches the exporter. Prometheus can send
 * them twice: proxy_url userinfo as `Proxy-Authorization` and the job's `authorization` as `Authorization`. An
 * `Authorization` that is not the proxy's credentials (the target's own bearer token) is not listed: it must pass.
 */
export function credentialHeaders(creds: Credentials, headers: http.IncomingHttpHeaders): string[] {
  if (!creds.bearer && !creds.basic) return [];
  return (["proxy-authorization", "authorization"] as const).filter((h) => carries(creds, headers[h]));
}

/** The challenge for a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate). */
export function challenge(creds: Credentials): string {
  return creds.bearer ? 'Bearer realm="scrapez"' : 'Basic realm="scrapez"';
}
