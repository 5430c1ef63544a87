/**
 * Credentials on the proxy's listener. A stock Prometheus sends the job's `authorization`/`basic_auth` as
 * `Authorization` on absolute-form requests, and the proxy URL's userinfo as `Proxy-Authorization: Basic` (the only
 * credentials a CONNECT carries), so both headers are accepted, and every one that carries the proxy's credentials
 * is stripped before forwarding (credentialHeaders); a target's own `Authorization` passes. Comparisons are
 * constant-time. Client certificates are enforced by the TLS handshake. The web config's bcrypt `basic_auth_users`
 * are one more scheme (WebUsersScheme).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type http from "node:http";
import { ConfigError } from "../common/config/errors.js";
import type { ProxyConfig } from "./config.js";
import { BcryptCache, type BcryptCacheOptions } from "./bcrypt.js";
import type { WebConfigFile } from "./web-config.js";

/**
 * Credentials as one header presents them, parsed once: `Bearer <token>`, or `Basic <base64 user:password>`.
 * `raw` is the decoded `user:password` as sent.
 */
export type Presented =
  { scheme: "bearer"; token: Buffer } | { scheme: "basic"; user: string; password: Buffer; raw: Buffer };

/** Parses one Authorization / Proxy-Authorization value; undefined for anything else. */
export function parseCredentials(v: string | string[] | undefined): Presented | undefined {
  if (typeof v !== "string") return undefined;
  const m = /^(Bearer|Basic)\s+(\S+)\s*$/i.exec(v.trim());
  if (!m) return undefined;
  if (m[1]!.toLowerCase() === "bearer") return { scheme: "bearer", token: Buffer.from(m[2]!) };
  const raw = Buffer.from(m[2]!, "base64");
  const colon = raw.indexOf(":");
  if (colon < 0) return undefined;
  return { scheme: "basic", user: raw.subarray(0, colon).toString("utf8"), password: raw.subarray(colon + 1), raw };
}

/**
 * One kind of credentials the proxy accepts. A new auth mode is one of these, plus its config field and one line in
 * `authenticatorFor`: the server, the stripping of credential headers and the status page's principal follow.
 */
export interface AuthScheme {
  /** The challenge to send when this scheme is the one asked for (WWW-Authenticate / Proxy-Authenticate). */
  readonly challenge: string;
  /**
   * Who the presented credentials prove (the status page's principal), or undefined if they prove nothing here.
   * `headers` are the request's (where a scheme may keep what it worked out before, as WebUsersScheme.warm does).
   */
  verify(presented: Presented, headers?: http.IncomingHttpHeaders): string | undefined;
  /** Whether the scheme asks for credentials now (a web config without basic_auth_users does not); default yes. */
  active?(): boolean;
}

function same(given: Buffer, want: Buffer): boolean {
  // Compare equal-length buffers always, so the time taken does not reveal the secret's length either.
  const a = Buffer.alloc(want.length);
  given.copy(a, 0, 0, Math.min(given.length, want.length));
  return timingSafeEqual(a, want) && given.length === want.length;
}

/** A bearer token; also accepted as the password of Basic credentials (what Go sends for proxy_url userinfo). */
export class BearerTokenScheme implements AuthScheme {
  readonly challenge = 'Bearer realm="scrapez"';
  readonly #token: Buffer;
  constructor(token: string) {
    this.#token = Buffer.from(token);
  }
  verify(p: Presented): string | undefined {
    if (p.scheme === "bearer") return same(p.token, this.#token) ? "bearer" : undefined;
    // The user name is the client's own choice: shown, never checked.
    return same(p.password, this.#token) ? (p.user ? `bearer:${p.user}` : "bearer") : undefined;
  }
}

/** One user name and password, as Basic sends them. */
export class BasicUserScheme implements AuthScheme {
  readonly challenge = 'Basic realm="scrapez"';
  readonly #pair: Buffer;
  constructor(username: string, password: string) {
    this.#pair = Buffer.from(`${username}:${password}`);
  }
  verify(p: Presented): string | undefined {
    return p.scheme === "basic" && same(p.raw, this.#pair) ? `basic:${p.user}` : undefined;
  }
}

/**
 * exporter-toolkit's `basic_auth_users` from the web config (src/proxy/web-config.ts; bcrypt in src/proxy/bcrypt.ts):
 * users and bcrypt hashes as the file says now, results cached as the toolkit caches them. The server awaits warm() before a request's check:
 * bcrypt runs in a worker thread (BcryptCache), never on the event loop, and warm() keeps the request's answers with
 * its headers. verify() answers from those, else from the cache; it never runs bcrypt itself, and credentials that
 * neither holds (not warmed, or refused because too many checks were waiting) are refused.
 */
export class WebUsersScheme implements AuthScheme {
  readonly challenge = 'Basic realm="scrapez"';
  readonly #web: WebConfigFile;
  readonly cache: BcryptCache;
  /** Each warmed request's answers, by its headers object, so a cache eviction in between cannot lose them. */
  readonly #answers = new WeakMap<http.IncomingHttpHeaders, Map<string, boolean>>();
  constructor(web: WebConfigFile, options: BcryptCacheOptions = {}) {
    this.#web = web;
    this.cache = new BcryptCache(options);
  }
  #users(): ReadonlyMap<string, string> | undefined {
    const s = this.#web.last;
    return s.ok && s.config.users.size > 0 ? s.config.users : undefined;
  }
  active(): boolean {
    return this.#users() !== undefined;
  }
  verify(p: Presented, headers?: http.IncomingHttpHeaders): string | undefined {
    const users = this.#users();
    if (!users || p.scheme !== "basic") return undefined;
    const password = p.password.toString("utf8");
    const ok =
      (headers && this.#answers.get(headers)?.get(answerKey(p.user, password))) ??
      this.cache.cached(users, p.user, password);
    return ok ? `basic:${p.user}` : undefined;
  }
  /**
   * Checks Basic credentials in these headers that the cache has no answer for yet, in the bcrypt worker, and keeps
   * every answer with the headers for verify(). Undefined when there is nothing to wait for.
   */
  warm(headers: http.IncomingHttpHeaders): Promise<unknown> | undefined {
    const users = this.#users();
    if (!users) return undefined;
    const todo: Promise<void>[] = [];
    let answers = this.#answers.get(headers);
    for (const h of HEADERS) {
      const p = parseCredentials(headers[h]);
      if (p?.scheme !== "basic") continue;
      const password = p.password.toString("utf8");
      const key = answerKey(p.user, password);
      if (!answers) this.#answers.set(headers, (answers = new Map()));
      const cached = this.cache.cached(users, p.user, password);
      if (cached !== undefined) answers.set(key, cached);
      else {
        const a = answers;
        todo.push(this.cache.check(users, p.user, password).then((ok) => void a.set(key, ok)));
      }
    }
    return todo.length ? Promise.all(todo) : undefined;
  }
}

/** A request's answer by user and password (hashed, as the cache's keys are: no password kept as sent). */
function answerKey(user: string, password: string): string {
  return createHash("sha256").update(`${user}\0${password}`).digest("hex");
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

const HEADERS = ["proxy-authorization", "authorization"] as const;

/** The proxy listener's credential check: the configured schemes, tried in order, on either header. */
export class Authenticator {
  readonly #schemes: readonly AuthScheme[];
  /** The challenge of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate). */
  readonly challenge: string;
  constructor(schemes: readonly AuthScheme[], challenge = schemes[0]?.challenge ?? 'Basic realm="scrapez"') {
    this.#schemes = schemes;
    this.challenge = challenge;
  }

  /** Whether requests must carry credentials (false: none configured, or none active now). */
  get required(): boolean {
    return this.#schemes.some((s) => s.active?.() ?? true);
  }

  #verify(headers: http.IncomingHttpHeaders, h: (typeof HEADERS)[number]): string | undefined {
    const p = parseCredentials(headers[h]);
    if (!p) return undefined;
    for (const s of this.#schemes) {
      const who = s.verify(p, headers);
      if (who !== undefined) return who;
    }
    return undefined;
  }

  /** Checks `Proxy-Authorization`, then `Authorization`. */
  check(headers: http.IncomingHttpHeaders): AuthResult {
    if (!this.required) return { ok: true };
    for (const h of HEADERS) {
      const principal = this.#verify(headers, h);
      if (principal !== undefined) return { ok: true, header: h, principal };
    }
    return { ok: false };
  }

  /**
   * Every header that carries the proxy's own credentials, so none of them reaches the exporter. Prometheus can send
   * them twice: proxy_url userinfo as `Proxy-Authorization` and the job's `authorization` as `Authorization`. An
   * `Authorization` that is not the proxy's credentials (the target's own bearer token) is not listed: it must pass.
   */
  credentialHeaders(headers: http.IncomingHttpHeaders): string[] {
    if (!this.required) return [];
    return HEADERS.filter((h) => this.#verify(headers, h) !== undefined);
  }
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

/**
 * The authenticator a proxy config asks for, its secret files read now (a ConfigError names the field of one that
 * cannot be read or is empty). Basic users (the config's, then the web config's `basic_auth_users`) are tried before
 * the bearer token, whose challenge is the one sent when both are set.
 */
export function authenticatorFor(config: Pick<ProxyConfig, "auth">, web?: WebUsersScheme): Authenticator {
  const schemes: AuthScheme[] = [];
  const a = config.auth;
  if (web) schemes.push(web);
  if (a?.basic)
    schemes.push(new BasicUserScheme(a.basic.username, secret("auth.basic.passwordFile", a.basic.passwordFile)));
  const bearer = a?.bearerTokenFile
    ? new BearerTokenScheme(secret("auth.bearerTokenFile", a.bearerTokenFile))
    : undefined;
  if (bearer) schemes.push(bearer);
  return new Authenticator(schemes, bearer?.challenge);
}
