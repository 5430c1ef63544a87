/**
 * Layer 3: the controller's client REST API (edge/client/v1) with certificate authentication, either
 *  - OIDC (the Go SDK's flow: authorization code + PKCE at /oidc/authorize, the certificate presented to
 *    /oidc/login/cert, the code exchanged at /oidc/oauth/token; the access token is sent as `Authorization:
 *    Bearer` and to routers; refreshed by RFC 8693 token exchange before it expires, and a new login when the
 *    refresh is refused). Required by HA clusters, where legacy sessions exist on one member only.
 *  - legacy API sessions (`zt-session` header), accepted by every v1.x and v2.0 controller.
 * `auth: "auto"` (default) uses OIDC when the controller's /version advertises OIDC_AUTH, else legacy.
 *
 * HA: the identity's ztAPI/ztAPIs and, once authenticated, the client APIs the cluster lists (GET /controllers)
 * form the member list; a member that cannot be reached (or answers 502/503/504) is skipped for the next one,
 * which then stays the current one.
 *
 * Every answer is bounded (size, time); every error is a ControllerError carrying the controller's code, message
 * and request id. Tokens are never logged nor put in error messages.
 *
 * The HTTPS exchange itself is ./https.ts (shared with enrollment). Size: over 350 lines because legacy and OIDC
 * authentication, HA member failover and the REST calls share one session state (token, its expiry, the member in
 * use); the OIDC flow (PKCE, token exchange, refresh) is the next part to leave, given that state.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type http from "node:http";
import https from "node:https";
import os from "node:os";
import { z } from "zod";
import { Backoff, type BackoffOptions } from "../backoff.js";
import { debug } from "../debug.js";
import { httpsExchange, type ExchangeError } from "./https.js";
import { ControllerError, ErrorCodes, ZitiError, isZitiError, type ErrorCode } from "../errors.js";
import { tlsOptions, type Identity } from "./identity.js";

const log = debug("ctrl");
const DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 15_000;
const PAGE = 500;
const DEFAULT_SESSION_SECONDS = 30 * 60;

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

export interface ControllerClientOptions {
  /** Deadline for one request, connect to last byte (default 15 s). */
  timeoutMs?: number;
  /** Largest response body read (default 16 MiB). */
  maxBodyBytes?: number;
  /** Back-off between failed session refreshes (default 1 s doubling to 30 s, ±25 %). */
  refreshBackoff?: BackoffOptions;
  /** "auto" (default): OIDC when the controller advertises OIDC_AUTH, else legacy; or force one. */
  auth?: AuthMode;
}

const ApiSessionBase = z.object({
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
const ApiSessionDetail = ApiSessionBase.extend({ token: z.string().min(1) });
type ApiSessionBase = z.infer<typeof ApiSessionBase>;

const RawService = z.object({
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

const RawSession = z.object({
  id: z.string(),
  token: z.string().min(1),
  edgeRouters: z.array(RawRouter).nullish(),
});

const Pagination = z.object({ totalCount: z.number() }).loose();

export interface Envelope {
  data?: unknown;
  meta?: { pagination?: unknown };
  error?: ApiError;
}

interface ApiError {
  code?: string;
  message?: string;
  requestId?: string;
  causeMessage?: string;
  cause?: { code?: string; message?: string; field?: string; reason?: string; value?: unknown };
}

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

/** The controllers of an HA cluster answer with these while a member is restarting or has no leader: try another. */
const FAILOVER_STATUSES = new Set([502, 503, 504]);

/**
 * The OIDC redirect URI we ask for. It is never contacted: the flow stops at the controller's redirect to it and
 * reads the code from that Location. The controller's default allow-list has `http://127.0.0.1:*\/auth/callback`
 * (controller/webapis/oidc-api.go@v1.6.3).
 */
const OIDC_REDIRECT_URI = "http://127.0.0.1:8080/auth/callback";
const OIDC_CLIENT_ID = "native";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token";

interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface OidcTokens {
  access: string;
  refresh: string | undefined;
  /** Local clock: when the access token expires (issued-at + lifetime, measured here). */
  expiresAtMs: number;
  lifetimeMs: number;
  claims: AccessClaims;
}

/** The access-token claims we read (the controller's TLS certificate vouches for the token; it is not verified). */
const AccessClaims = z
  .object({
    sub: z.string().nullish(),
    exp: z.number().nullish(),
    iat: z.number().nullish(),
    z_asid: z.string().nullish(),
    z_authid: z.string().nullish(),
    z_ice: z.boolean().nullish(),
    z_cer: z.boolean().nullish(),
    z_ckrr: z.boolean().nullish(),
  })
  .loose();
type AccessClaims = z.infer<typeof AccessClaims>;

const TokenAnswer = z
  .object({
    access_token: z.string().min(1),
    refresh_token: z.string().nullish(),
    expires_in: z.number().nullish(),
    id_token: z.string().nullish(),
  })
  .loose();

const ControllerList = z.array(
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

export class ControllerClient {
  /** Client API base URLs of every known controller (the identity's ztAPI/ztAPIs, then what the cluster lists). */
  readonly #urls: URL[] = [];
  #current = 0;
  #agent: https.Agent;
  readonly #timeoutMs: number;
  readonly #maxBody: number;
  readonly #authOption: AuthMode;
  #mode: "oidc" | "legacy" | undefined;
  #controllerVersion: string | undefined;
  #capabilities: string[] = [];
  /** Legacy: the zt-session token. */
  #token: string | undefined;
  /** OIDC: the tokens. */
  #oidc: OidcTokens | undefined;
  #session: ApiSessionInfo | undefined;
  #refreshTimer: NodeJS.Timeout | undefined;
  #authenticating: Promise<ApiSessionInfo> | undefined;
  readonly #refreshBackoff: Backoff;
  readonly #tokenListeners = new Set<() => void>();
  #closed = false;

  constructor(identity: Identity, opts: ControllerClientOptions = {}) {
    for (const u of [identity.ztAPI, ...(identity.ztAPIs ?? [])]) this.#addUrl(u);
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.#authOption = opts.auth ?? "auto";
    this.#refreshBackoff = new Backoff({ initialMs: 1_000, maxMs: 30_000, ...opts.refreshBackoff });
    // mTLS with the identity; trust its CA bundle only (`ca` replaces Node's default roots).
    this.#agent = newAgent(tlsOptions(identity));
  }

  /** The token for the router hello: the OIDC access token or the legacy API-session token. Never log it. */
  get sessionToken(): string | undefined {
    return this.#mode === "oidc" ? this.#oidc?.access : this.#token;
  }

  /** "oidc" or "legacy" once authenticated (the mode of the current session); undefined before. */
  get authMode(): "oidc" | "legacy" | undefined {
    return this.#session?.mode;
  }

  get identityId(): string | undefined {
    return this.#session?.identityId;
  }

  get identityName(): string | undefined {
    return this.#session?.identityName;
  }

  /** When the current API session (OIDC: access token) expires, if authenticated. */
  get expiresAt(): Date | undefined {
    return this.#session?.expiresAt;
  }

  /** The current API session without its token (undefined before the first authentication). */
  get session(): ApiSessionInfo | undefined {
    return this.#session;
  }

  /** The client API URL requests go to now (it changes when a cluster member is down). */
  get currentUrl(): string {
    return this.#urls[this.#current]!.href.replace(/\/$/, "");
  }

  /** Every controller client API URL known (the identity's, then those the cluster advertises). */
  get controllerUrls(): string[] {
    return this.#urls.map((u) => u.href.replace(/\/$/, ""));
  }

  /** The capabilities the controller advertised on /version (e.g. OIDC_AUTH, HA_CONTROLLER). */
  get capabilities(): readonly string[] {
    return this.#capabilities;
  }

  /** The version the controller gave on /version (e.g. "v2.0.3"); undefined before, or if it gave none. */
  get controllerVersion(): string | undefined {
    return this.#controllerVersion;
  }

  /**
   * True when this session is a legacy API session on an OpenZiti 2.x (or later) controller: legacy sessions are
   * deprecated in 2.0 and go away in v3 (OpenZiti's CHANGELOG for 2.0). OIDC (`auth: auto`) is the way on.
   */
  get legacyDeprecated(): boolean {
    const major = /^v?(\d+)\./.exec(this.#controllerVersion ?? "")?.[1];
    return this.#mode === "legacy" && major !== undefined && Number(major) >= 2;
  }

  /**
   * Calls `fn` whenever the OIDC access token changes (refresh or new login), so router channels can be given
   * the new one (UpdateToken). Returns a function that removes the listener.
   */
  onTokenChange(fn: () => void): () => void {
    this.#tokenListeners.add(fn);
    return () => this.#tokenListeners.delete(fn);
  }

  #addUrl(u: string): void {
    let url: URL;
    try {
      url = new URL(u.replace(/\/+$/, "") + "/");
    } catch {
      return;
    }
    if (url.protocol !== "https:") return;
    if (!this.#urls.some((x) => x.href === url.href)) this.#urls.push(url);
  }

  /** Certificate authentication (OIDC or legacy, see `auth`); schedules the refresh. Concurrent calls share. */
  authenticate(): Promise<ApiSessionInfo> {
    this.#assertOpen();
    this.#authenticating ??= this.#authenticate().finally(() => {
      this.#authenticating = undefined;
    });
    return this.#authenticating;
  }

  async #authenticate(): Promise<ApiSessionInfo> {
    const mode = await this.#chooseMode();
    const session = mode === "oidc" ? await this.#oidcAuthenticate() : await this.#legacyAuthenticate();
    if (this.#capabilities.includes("HA_CONTROLLER") || this.#urls.length > 1) await this.#learnControllers();
    return session;
  }

  /** auto: OIDC when /version advertises OIDC_AUTH (required by HA clusters), else legacy. */
  async #chooseMode(): Promise<"oidc" | "legacy"> {
    let caps: string[] | undefined;
    try {
      const env = await this.#send("GET", "version", undefined, undefined);
      const d = z
        .object({ capabilities: z.array(z.string()).nullish(), version: z.string().nullish() })
        .loose()
        .safeParse(env.data);
      caps = d.success ? (d.data.capabilities ?? []) : [];
      this.#controllerVersion = (d.success ? d.data.version : undefined) ?? undefined;
    } catch (err) {
      // A controller that cannot be reached fails the attempt; one without /version (very old) is legacy.
      if (isZitiError(err, ErrorCodes.CONTROLLER_UNREACHABLE)) throw err;
      caps = [];
    }
    this.#capabilities = caps;
    const oidc = caps.includes("OIDC_AUTH");
    let mode: "oidc" | "legacy";
    if (this.#authOption === "oidc") {
      if (!oidc) {
        log("auth=oidc but the controller does not advertise OIDC_AUTH; trying OIDC anyway");
      }
      mode = "oidc";
    } else if (this.#authOption === "legacy") {
      if (caps.includes("HA_CONTROLLER")) {
        log("auth=legacy on an HA cluster: legacy API sessions are per member and do not fail over; use auth=auto");
      }
      mode = "legacy";
    } else {
      mode = oidc ? "oidc" : "legacy";
    }
    if (mode !== this.#mode) {
      log(
        "authentication mode: %s (controller %s, capabilities: %s)",
        mode,
        this.#controllerVersion ?? "of unknown version",
        caps.join(",") || "-",
      );
    }
    this.#mode = mode;
    if (this.legacyDeprecated) {
      log(
        "auth=legacy on a %s controller: legacy API sessions are deprecated since 2.0 (gone in v3)",
        this.#controllerVersion,
      );
    }
    return mode;
  }

  #authBody(): Record<string, unknown> {
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

  async #legacyAuthenticate(): Promise<ApiSessionInfo> {
    const env = await this.#send("POST", "authenticate?method=cert", this.#authBody(), undefined);
    const d = this.#shape(ApiSessionDetail, env.data, "POST /authenticate");
    const pending = (d.authQueries ?? []).map((q) => q.typeId ?? "?");
    if (pending.length > 0) throw needsMore(pending.join(", "));
    this.#oidc = undefined;
    this.#token = d.token;
    const session = this.#adopt(d);
    log("authenticated (legacy) as %s (%s), session %s", session.identityName, session.identityId, session.id);
    return session;
  }

  // ---- OIDC ---------------------------------------------------------------------------------------------------

  /** The authorization-code flow with PKCE, authenticating with the client certificate, at the first member that answers. */
  async #oidcAuthenticate(): Promise<ApiSessionInfo> {
    const tokens = await this.#eachMember("OIDC login", (base) => this.#oidcLoginAt(base));
    this.#token = undefined;
    const session = this.#adoptTokens(tokens);
    log("authenticated (OIDC) as %s (%s), session %s", session.identityName, session.identityId, session.id);
    this.#tokenChanged();
    return session;
  }

  async #oidcLoginAt(base: URL): Promise<OidcTokens> {
    const origin = base.origin;
    const verifier = b64url(randomBytes(32));
    const state = b64url(randomBytes(16));
    const query = new URLSearchParams({
      client_id: OIDC_CLIENT_ID,
      response_type: "code",
      scope: "openid offline_access",
      state,
      nonce: b64url(randomBytes(16)),
      code_challenge: b64url(createHash("sha256").update(verifier).digest()),
      code_challenge_method: "S256",
      redirect_uri: OIDC_REDIRECT_URI,
      method: "cert",
    });
    // 1. authorize: redirects to the login page of the auth request; its id is in the Location (and a header).
    const authorize = await this.#http("GET", new URL(`/oidc/authorize?${query}`, origin), { accept: "text/html" });
    let authRequestId = header(authorize, "auth-request-id");
    if (!authRequestId && isRedirect(authorize.status)) {
      const next = this.#sameOrigin(authorize, origin, "GET /oidc/authorize");
      authRequestId = next.searchParams.get("authRequestID") ?? undefined;
      if (!authRequestId)
        authRequestId = header(await this.#http("GET", next, { accept: "text/html" }), "auth-request-id");
    }
    if (!authRequestId) throw oidcError("GET /oidc/authorize", authorize, "no auth request id");
    // 2. login with the certificate on this TLS connection.
    const login = await this.#http(
      "POST",
      new URL("/oidc/login/cert", origin),
      { "content-type": "application/json", accept: "application/json" },
      Buffer.from(JSON.stringify({ id: authRequestId, ...this.#authBody() })),
    );
    if (login.status === 200) {
      let queries = "";
      try {
        const j = JSON.parse(login.body.toString("utf8")) as { authQueries?: { typeId?: string }[] };
        queries = (j.authQueries ?? []).map((q) => q.typeId ?? "?").join(", ");
      } catch {
        /* an HTML page */
      }
      throw needsMore(header(login, "totp-required") ? "TOTP" : queries || "a second factor");
    }
    if (login.status === 400 || login.status === 401 || login.status === 403) {
      throw new ControllerError(
        ErrorCodes.AUTH_FAILED,
        `controller: POST /oidc/login/cert: ${login.status}: ${snippet(login.body.toString("utf8"))}; the controller ` +
          "does not accept this identity's certificate (identity deleted, re-enrolled, or enrolled with another " +
          "controller): re-enroll it",
        login.status,
      );
    }
    if (!isRedirect(login.status)) throw oidcError("POST /oidc/login/cert", login, "expected a redirect");
    // 3. follow the controller's redirects (same origin only) until it sends us to the redirect URI with a code.
    let loc = this.#sameOrigin(login, origin, "POST /oidc/login/cert");
    for (let hop = 0; !loc.href.startsWith(OIDC_REDIRECT_URI); hop++) {
      const r = await this.#http("GET", loc, { accept: "text/html" });
      if (!isRedirect(r.status) || hop >= 5) throw oidcError(`GET ${loc.pathname}`, r, "expected a redirect");
      const target = new URL(header(r, "location") ?? "", loc);
      loc = target.href.startsWith(OIDC_REDIRECT_URI) ? target : this.#sameOrigin(r, origin, `GET ${loc.pathname}`);
    }
    const code = loc.searchParams.get("code");
    if (!code || loc.searchParams.get("state") !== state) {
      throw new ControllerError(
        ErrorCodes.CONTROLLER_ERROR,
        `controller: OIDC login at ${origin}: the final redirect carries no code or a wrong state`,
        0,
      );
    }
    // 4. the code (with the PKCE verifier) for tokens.
    const answer = await this.#http(
      "POST",
      new URL("/oidc/oauth/token", origin),
      { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
      Buffer.from(
        new URLSearchParams({
          grant_type: "authorization_code",
          client_id: OIDC_CLIENT_ID,
          code_verifier: verifier,
          code,
          redirect_uri: OIDC_REDIRECT_URI,
        }).toString(),
      ),
    );
    return this.#parseTokens(answer, "POST /oidc/oauth/token", undefined);
  }

  /** RFC 8693 token exchange of the refresh token, at the first member that answers. */
  async #exchange(refresh: string): Promise<OidcTokens> {
    return this.#eachMember("token refresh", async (base) => {
      const answer = await this.#http(
        "POST",
        new URL("/oidc/oauth/token", base.origin),
        {
          "content-type": "application/x-www-form-urlencoded",
          accept: "application/json",
          authorization: `Basic ${Buffer.from(`${OIDC_CLIENT_ID}:`).toString("base64")}`,
        },
        Buffer.from(
          new URLSearchParams({
            grant_type: TOKEN_EXCHANGE,
            subject_token: refresh,
            subject_token_type: REFRESH_TOKEN_TYPE,
            requested_token_type: REFRESH_TOKEN_TYPE,
          }).toString(),
        ),
      );
      return this.#parseTokens(answer, "token exchange", refresh);
    });
  }

  #parseTokens(answer: RawAnswer, what: string, previousRefresh: string | undefined): OidcTokens {
    if (answer.status < 200 || answer.status >= 300) {
      // 400 invalid_grant / invalid_request: the refresh token or code is no good (expired, revoked). A refresh for
      // an identity deleted meanwhile is that too, but v2.0.3 answers it with 500 server_error "identity with id X
      // not found" (v1.6.3: 400): both are a refusal (AUTH_FAILED), after which the caller logs in again.
      const why = oauthError(answer.body);
      const refused =
        (answer.status >= 400 && answer.status < 500) ||
        (answer.status === 500 && /^server_error: identity with id \S+ not found/.test(why));
      throw new ControllerError(
        refused ? ErrorCodes.AUTH_FAILED : ErrorCodes.CONTROLLER_ERROR,
        `controller: ${what}: ${answer.status}: ${why}`,
        answer.status,
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(answer.body.toString("utf8"));
    } catch {
      json = undefined;
    }
    const t = TokenAnswer.safeParse(json);
    if (!t.success) {
      throw new ControllerError(
        ErrorCodes.CONTROLLER_ERROR,
        `controller: ${what}: the answer holds no access token`,
        200,
      );
    }
    const claims = AccessClaims.safeParse(jwtPayload(t.data.access_token)).data ?? {};
    const lifetimeS =
      claims.exp && claims.iat && claims.exp > claims.iat ? claims.exp - claims.iat : (t.data.expires_in ?? 0);
    const lifetimeMs = Math.max(60, lifetimeS || 30 * 60) * 1000;
    const name = t.data.id_token
      ? z.object({ name: z.string().nullish() }).loose().safeParse(jwtPayload(t.data.id_token)).data?.name
      : undefined;
    if (name) claims.name = name;
    return {
      access: t.data.access_token,
      refresh: t.data.refresh_token || previousRefresh,
      expiresAtMs: Date.now() + lifetimeMs,
      lifetimeMs,
      claims,
    };
  }

  #adoptTokens(tokens: OidcTokens): ApiSessionInfo {
    this.#oidc = tokens;
    const c = tokens.claims;
    const session: ApiSessionInfo = {
      id: c.z_asid ?? "",
      identityId: c.sub ?? this.#session?.identityId,
      identityName: (typeof c.name === "string" ? c.name : undefined) ?? this.#session?.identityName,
      expiresAt: new Date(tokens.expiresAtMs),
      expirationSeconds: Math.round(tokens.lifetimeMs / 1000),
      mode: "oidc",
      authenticatorId: c.z_authid ?? undefined,
      certExtendable: c.z_ice === true,
      certExtendRequested: c.z_cer === true,
      certKeyRollRequested: c.z_ckrr === true,
    };
    this.#session = session;
    this.#refreshBackoff.reset();
    // Refresh at a random point between 1/2 and 5/6 of the lifetime (as the Go SDK does).
    this.#scheduleRefresh(Math.max(1_000, tokens.lifetimeMs * (0.5 + Math.random() / 3)));
    return session;
  }

  #tokenChanged(): void {
    for (const fn of this.#tokenListeners) {
      try {
        fn();
      } catch (err) {
        log("a token listener threw: %s", (err as Error).message);
      }
    }
  }

  /** Runs `fn` against each member in turn (the current one first) until one answers; switches to that one. */
  async #eachMember<T>(what: string, fn: (base: URL) => Promise<T>): Promise<T> {
    let lastErr: unknown;
    for (const i of this.#order()) {
      try {
        const v = await fn(this.#urls[i]!);
        this.#switchTo(i, what);
        return v;
      } catch (err) {
        if (!isZitiError(err, ErrorCodes.CONTROLLER_UNREACHABLE)) throw err;
        lastErr = err;
      }
    }
    throw lastErr as Error;
  }

  #order(): number[] {
    const n = this.#urls.length;
    return Array.from({ length: n }, (_, k) => (this.#current + k) % n);
  }

  #switchTo(i: number, what: string): void {
    if (i === this.#current) return;
    log("%s: controller %s does not answer; using %s", what, this.#urls[this.#current]!.origin, this.#urls[i]!.origin);
    this.#current = i;
  }

  /** HA: adds the client API URLs the cluster advertises (GET /controllers). Best effort. */
  async #learnControllers(): Promise<void> {
    try {
      const env = await this.request("GET", "controllers?limit=100");
      const list = ControllerList.safeParse(env.data);
      if (!list.success) return;
      const before = this.#urls.length;
      for (const c of list.data) {
        for (const a of c.apiAddresses?.["edge-client"] ?? [])
          if (!a.version || a.version === "v1") this.#addUrl(a.url);
      }
      if (this.#urls.length !== before) log("cluster members' client APIs: %s", this.controllerUrls.join(", "));
    } catch (err) {
      log("cannot list the cluster's controllers: %s", (err as Error).message);
    }
  }

  // ---- session lifetime ---------------------------------------------------------------------------------------

  /** Takes the session detail's identity and expiry; (re)schedules the refresh. */
  #adopt(d: ApiSessionBase): ApiSessionInfo {
    const expiresAt = d.expiresAt ? new Date(d.expiresAt) : undefined;
    const session: ApiSessionInfo = {
      id: d.id,
      identityId: d.identityId ?? d.identity?.id ?? this.#session?.identityId,
      identityName: d.identity?.name ?? this.#session?.identityName,
      expiresAt: expiresAt && !Number.isNaN(expiresAt.getTime()) ? expiresAt : undefined,
      expirationSeconds: d.expirationSeconds ?? undefined,
      mode: "legacy",
      authenticatorId: d.authenticatorId ?? undefined,
      certExtendable: d.isCertExtendable === true,
      certExtendRequested: d.isCertExtendRequested === true,
      certKeyRollRequested: d.isCertKeyRollRequested === true,
    };
    this.#session = session;
    this.#refreshBackoff.reset();
    // Remaining lifetime, measured on the controller's clock only (immune to skew between the two hosts).
    const last = d.lastActivityAt ? Date.parse(d.lastActivityAt) : NaN;
    let leftMs = session.expiresAt && !Number.isNaN(last) ? session.expiresAt.getTime() - last : NaN;
    if (!(leftMs > 0)) leftMs = (session.expirationSeconds ?? DEFAULT_SESSION_SECONDS) * 1000;
    // Refresh at a random point between 1/2 and 5/6 of the remaining lifetime (as the Go SDK does).
    this.#scheduleRefresh(Math.max(1_000, leftMs * (0.5 + Math.random() / 3)));
    return session;
  }

  #scheduleRefresh(ms: number): void {
    clearTimeout(this.#refreshTimer);
    if (this.#closed) return;
    // #refresh catches everything: nothing escapes from this timer.
    this.#refreshTimer = setTimeout(() => void this.#refresh(), ms);
    this.#refreshTimer.unref();
  }

  async #refresh(): Promise<void> {
    if (this.#closed) return;
    try {
      if (this.#mode === "oidc" && this.#oidc) {
        await this.#refreshOidc();
      } else if (this.#token) {
        await this.currentApiSession();
        log("session refreshed; expires at %s", this.#session?.expiresAt?.toISOString());
      }
    } catch (err) {
      if (this.#closed) return;
      // A controller that is down must not be asked again at a fixed rate: back off (1 s doubling to 30 s,
      // jittered). If the session expires meanwhile, the next request re-authenticates.
      const ms = this.#refreshBackoff.next();
      log(
        "session refresh failed (%d in a row): %s; retrying in %d ms",
        this.#refreshBackoff.failures,
        (err as Error).message,
        ms,
      );
      this.#scheduleRefresh(ms);
    }
  }

  /**
   * Refreshes now (OIDC: token exchange, or a new login if the refresh token is refused; legacy: GET
   * current-api-session) and reschedules. Rejects if the controller cannot be reached.
   */
  async refresh(): Promise<ApiSessionInfo> {
    this.#assertOpen();
    if (!this.sessionToken) return this.authenticate();
    if (this.#mode === "oidc") await this.#refreshOidc();
    else await this.currentApiSession();
    return this.#session!;
  }

  /** Exchanges the refresh token; if the controller refuses it (expired, revoked), logs in again. */
  async #refreshOidc(): Promise<void> {
    const refresh = this.#oidc?.refresh;
    if (refresh) {
      try {
        const tokens = await this.#exchange(refresh);
        this.#adoptTokens(tokens);
        log("access token refreshed; expires at %s", new Date(tokens.expiresAtMs).toISOString());
        this.#tokenChanged();
        return;
      } catch (err) {
        if (!isZitiError(err, ErrorCodes.AUTH_FAILED)) throw err;
        log("the controller refused the refresh token (%s): logging in again", (err as Error).message);
      }
    }
    await this.authenticate();
  }

  /** GET current-api-session: the session as the controller sees it. Legacy: extends it (any request does). */
  async currentApiSession(): Promise<ApiSessionInfo> {
    const env = await this.request("GET", "current-api-session");
    const d = this.#shape(ApiSessionBase, env.data, "GET /current-api-session");
    if (this.#mode === "oidc") return this.#session!;
    return this.#adopt(d);
  }

  /** An authenticated request (authenticates first if needed); on 401, re-authenticates once and retries. */
  async request(method: string, path: string, body?: unknown): Promise<Envelope> {
    this.#assertOpen();
    if (!this.sessionToken) await this.authenticate();
    const used = this.sessionToken;
    try {
      return await this.#send(method, path, body, used);
    } catch (err) {
      if (!(err instanceof ControllerError) || err.status !== 401) throw err;
      log("401 on %s %s: re-authenticating", method, path.split("?")[0]);
      // Another request may have re-authenticated meanwhile: then only retry with the new token.
      if (this.sessionToken === used) await this.authenticate();
      return this.#send(method, path, body, this.sessionToken);
    }
  }

  /** Every service this identity sees (paged by 500), configs keyed by config type name. */
  async listServices(): Promise<ServiceInfo[]> {
    return (await this.#listAll("services?configTypes=all", "GET /services")).map((s) => this.#service(s));
  }

  /** The controller's marker of the last change to this identity's services (compare, do not parse). */
  async serviceUpdates(): Promise<string | undefined> {
    const env = await this.request("GET", "current-api-session/service-updates");
    const d = this.#shape(z.object({ lastChangeAt: z.string().nullish() }), env.data, "GET /service-updates");
    return d.lastChangeAt ?? undefined;
  }

  /** Identities of the terminators bound for a service (replicas bound by edge identity), deduplicated. */
  async listTerminatorIdentities(serviceId: string): Promise<string[]> {
    const all = await this.#listAll(`services/${encodeURIComponent(serviceId)}/terminators`, "GET /terminators");
    const ids = new Set<string>();
    for (const t of all) if (typeof t.identity === "string" && t.identity) ids.add(t.identity);
    return [...ids].sort();
  }

  /** A Dial or Bind session for a service: its token and the online, enabled edge routers that can serve it. */
  async createSession(serviceId: string, type: "Dial" | "Bind"): Promise<SessionInfo> {
    const env = await this.request("POST", "sessions", { serviceId, type });
    const d = this.#shape(RawSession, env.data, "POST /sessions");
    const edgeRouters: EdgeRouterInfo[] = [];
    for (const r of d.edgeRouters ?? []) {
      if (r.isOnline === false || r.disabled === true) continue;
      const protocols =
        r.supportedProtocols && Object.keys(r.supportedProtocols).length ? r.supportedProtocols : r.urls;
      edgeRouters.push({
        name: r.name ?? "",
        hostname: r.hostname ?? "",
        isOnline: true,
        urls: { ...(protocols ?? {}) },
      });
    }
    log("%s session %s for service %s: %d online router(s)", type, d.id, serviceId, edgeRouters.length);
    return { id: d.id, token: d.token, type, edgeRouters };
  }

  // ---- certificate renewal ------------------------------------------------------------------------------------

  /**
   * Asks the controller to sign `csrPem` as this identity's new certificate (POST
   * current-identity/authenticators/{id}/extend, authenticated and presenting the current certificate), then
   * confirms it (extend-verify). Until verified the old certificate stays the valid one; after, only the new one
   * is. Then switches this client to the new certificate and key and authenticates again (OIDC tokens name the
   * certificate's fingerprint, which routers check). Returns the new certificate chain and the controller's CA
   * bundle.
   */
  async renewCertificate(csrPem: string, keyPem: string): Promise<{ certPem: string; caPem: string }> {
    if (!this.#session) await this.authenticate();
    const authId = this.#session?.authenticatorId;
    if (!authId) {
      throw new ControllerError(
        ErrorCodes.CONTROLLER_ERROR,
        "controller: the API session names no certificate authenticator; the certificate cannot be extended",
        0,
      );
    }
    const path = `current-identity/authenticators/${encodeURIComponent(authId)}`;
    const env = await this.request("POST", `${path}/extend`, { clientCertCsr: csrPem });
    const d = this.#shape(
      z.object({ clientCert: z.string().min(1), ca: z.string().nullish() }).loose(),
      env.data,
      "POST /extend",
    );
    await this.request("POST", `${path}/extend-verify`, { clientCert: d.clientCert });
    this.setCredentials(d.clientCert, keyPem);
    // OIDC tokens name the certificates they are valid with (z_cfs, checked by routers): log in again. A legacy
    // session already accepts the new certificate (extend-verify attached it to the session).
    if (this.#mode === "oidc") {
      log("certificate extended and verified; logging in with the new one");
      await this.authenticate();
    } else {
      log("certificate extended and verified");
    }
    return { certPem: d.clientCert, caPem: d.ca ?? "" };
  }

  /** Presents another certificate and key from now on (new TLS connections; pooled ones are closed soon). */
  setCredentials(certPem: string, keyPem: string, caPem?: string): void {
    const old = this.#agent;
    const opts = old.options as https.AgentOptions;
    this.#agent = newAgent({ cert: certPem, key: keyPem, ca: caPem ?? (opts.ca as string) });
    // Requests in flight on the old agent finish; its idle sockets go now, the rest within a minute.
    setTimeout(() => old.destroy(), 60_000).unref();
  }

  /** Ends the session: legacy DELETE current-api-session; OIDC tokens are dropped (they expire by themselves). */
  async logout(): Promise<void> {
    const token = this.#token;
    const mode = this.#mode;
    this.#token = undefined;
    this.#oidc = undefined;
    clearTimeout(this.#refreshTimer);
    if (mode === "oidc" || !token || this.#closed) return;
    await this.#send("DELETE", "current-api-session", undefined, token);
    log("logged out");
  }

  /** Stops the refresh timer and closes pooled sockets. Idempotent; later calls fail with CLOSED. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#refreshTimer);
    this.#agent.destroy();
  }

  #assertOpen(): void {
    if (this.#closed) throw new ZitiError(ErrorCodes.CLOSED, "the controller client is closed");
  }

  #service(raw: Record<string, unknown>): ServiceInfo {
    const s = this.#shape(RawService, raw, "service");
    return {
      id: s.id,
      name: s.name,
      permissions: (s.permissions ?? []).filter((p): p is "Dial" | "Bind" => p === "Dial" || p === "Bind"),
      encryptionRequired: s.encryptionRequired !== false,
      roleAttributes: s.roleAttributes ?? [],
      configs: s.config ?? {},
      raw,
    };
  }

  /** Every item of a paged list (`limit`/`offset`, PAGE at a time, until the controller's totalCount). */
  async #listAll(path: string, what: string): Promise<Record<string, unknown>[]> {
    const out: Record<string, unknown>[] = [];
    const sep = path.includes("?") ? "&" : "?";
    for (let offset = 0; ;) {
      const env = await this.request("GET", `${path}${sep}limit=${PAGE}&offset=${offset}`);
      const page = this.#page(env, what);
      out.push(...page);
      offset += page.length;
      const total = Pagination.safeParse(env.meta?.pagination).data?.totalCount ?? offset;
      if (page.length === 0 || offset >= total) return out;
    }
  }

  #page(env: Envelope, what: string): Record<string, unknown>[] {
    return this.#shape(z.array(z.record(z.string(), z.unknown())).nullish(), env.data, what) ?? [];
  }

  #shape<T extends z.ZodType>(schema: T, data: unknown, what: string): z.infer<T> {
    const r = schema.safeParse(data);
    if (r.success) return r.data;
    const issue = r.error.issues[0]!;
    throw new ControllerError(
      ErrorCodes.CONTROLLER_ERROR,
      `controller: ${what}: unexpected answer (data.${issue.path.join(".")}: ${issue.message}); ` +
        "is ztAPI the client API of a Ziti controller?",
      200,
    );
  }

  /**
   * One JSON API exchange with failover: the current member first; if it cannot be reached (or answers 502/503/504)
   * the next members in turn, and the first that answers becomes the current one. `token` undefined =
   * unauthenticated; sent as `Authorization: Bearer` (OIDC) or `zt-session` (legacy).
   */
  async #send(method: string, path: string, body: unknown, token: string | undefined): Promise<Envelope> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { accept: "application/json" };
    if (payload) headers["content-type"] = "application/json";
    if (token) {
      if (this.#mode === "oidc") headers.authorization = `Bearer ${token}`;
      else headers["zt-session"] = token;
    }
    const order = this.#order();
    let lastErr: unknown;
    for (const [k, i] of order.entries()) {
      const url = new URL(path, this.#urls[i]);
      const what = `${method} ${url.pathname}`;
      let ans: RawAnswer;
      try {
        ans = await this.#http(method, url, headers, payload);
      } catch (err) {
        lastErr = err;
        continue;
      }
      if (FAILOVER_STATUSES.has(ans.status) && k < order.length - 1) {
        lastErr = new ControllerError(ErrorCodes.CONTROLLER_ERROR, `controller: ${what}: ${ans.status}`, ans.status);
        continue;
      }
      this.#switchTo(i, what);
      return this.#answer(what, path, ans.status, ans.body, !token);
    }
    throw lastErr as Error;
  }

  /** One bounded HTTP exchange with one member. A keep-alive socket that died idle is retried once. */
  async #http(method: string, url: URL, headers: Record<string, string>, payload?: Buffer): Promise<RawAnswer> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await httpsExchange(url, {
          method,
          headers,
          body: payload,
          tls: { agent: this.#agent },
          timeoutMs: this.#timeoutMs,
          maxBodyBytes: this.#maxBody,
        });
      } catch (e) {
        const err = e as ExchangeError;
        // A pooled keep-alive socket the controller closed while idle fails before any answer: send once more.
        if (err.reusedSocket && !err.answered && attempt === 0) continue;
        throw new ControllerError(
          ErrorCodes.CONTROLLER_UNREACHABLE,
          `controller: ${method} ${url.pathname}: cannot reach the controller at ${url.origin}: ${describeNetError(err.cause)}`,
          0,
          undefined,
          { cause: err.cause },
        );
      }
    }
  }

  /** The Location of a redirect, which must stay on `origin` (our client certificate goes nowhere else). */
  #sameOrigin(r: RawAnswer, origin: string, what: string): URL {
    const loc = new URL(header(r, "location") ?? "", origin);
    if (loc.origin !== origin) {
      throw new ControllerError(
        ErrorCodes.CONTROLLER_ERROR,
        `controller: ${what}: redirected to another origin (${loc.origin}); not following`,
        r.status,
      );
    }
    return loc;
  }

  #answer(what: string, path: string, status: number, bytes: Buffer, isAuthenticate: boolean): Envelope {
    const text = bytes.toString("utf8");
    let env: Envelope | undefined;
    try {
      env = text ? (JSON.parse(text) as Envelope) : {};
      if (typeof env !== "object" || env === null) env = undefined;
    } catch {
      env = undefined;
    }
    if (status >= 200 && status < 300) {
      if (env) return env;
      throw new ControllerError(
        ErrorCodes.CONTROLLER_ERROR,
        `controller: ${what}: ${status} answer is not JSON (${snippet(text)}); is ztAPI the client API of a Ziti controller?`,
        status,
      );
    }
    const e = env?.error;
    const apiCode = typeof e?.code === "string" ? e.code : undefined;
    let code: ErrorCode = ErrorCodes.CONTROLLER_ERROR;
    let hint = "";
    if ((status === 401 || status === 403) && isAuthenticate) {
      code = ErrorCodes.AUTH_FAILED;
      hint =
        "; the controller does not accept this identity's certificate (identity deleted, re-enrolled, " +
        "or enrolled with another controller): re-enroll it";
    } else if (apiCode === "NO_EDGE_ROUTERS_AVAILABLE") {
      code = ErrorCodes.NO_EDGE_ROUTERS;
      hint = "; check the edge routers are online and an edge-router policy and a service-edge-router policy apply";
    } else if (apiCode === "COULD_NOT_VALIDATE" && e?.cause?.field === "ServiceId") {
      // The identity sees the service but holds no policy of the requested type (Dial or Bind).
      code = ErrorCodes.NOT_AUTHORIZED;
      hint = "; no service policy grants this identity that permission";
    } else if ((status === 404 || apiCode === "NOT_FOUND") && /^(services|sessions)\b/.test(path)) {
      code = ErrorCodes.SERVICE_NOT_FOUND;
    }
    const parts = [e?.message, causeText(e)].filter((s): s is string => !!s);
    const msg = parts.length ? parts.join(": ") : snippet(text) || "(no body)";
    const rid = e?.requestId ? ` (requestId ${e.requestId})` : "";
    throw new ControllerError(
      code,
      `controller: ${what}: ${status}${apiCode ? ` ${apiCode}` : ""}: ${msg}${hint}${rid}`,
      status,
      apiCode,
    );
  }
}

function causeText(e: ApiError | undefined): string | undefined {
  const c = e?.cause;
  if (c?.message) return c.message;
  if (c?.field) return `${c.field}: ${c.reason ?? "invalid"}${c.value !== undefined ? ` (${String(c.value)})` : ""}`;
  return e?.causeMessage || undefined;
}

function snippet(text: string): string {
  return text.replace(/\s+/g, " ").trim().slice(0, 200);
}

function describeNetError(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code ?? "";
  if (/CERT|SELF_SIGNED|UNABLE_TO|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH|HOSTNAME_MISMATCH/.test(code)) {
    return `the controller's certificate does not verify with the identity's id.ca (${code}: ${err.message})`;
  }
  return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
}

function newAgent(creds: { cert: string; key: string; ca: string }): https.Agent {
  return new https.Agent({ keepAlive: true, maxSockets: 4, ...creds });
}

function b64url(b: Buffer): string {
  return b.toString("base64url");
}

function header(r: RawAnswer, name: string): string | undefined {
  const v = r.headers[name];
  return (Array.isArray(v) ? v[0] : v) || undefined;
}

function isRedirect(status: number): boolean {
  return status >= 300 && status < 400;
}

function oidcError(what: string, r: RawAnswer, expected: string): ControllerError {
  return new ControllerError(
    ErrorCodes.CONTROLLER_ERROR,
    `controller: ${what}: ${r.status} (${expected}): ${snippet(r.body.toString("utf8")) || "(no body)"}; ` +
      "does this controller serve OIDC (edge-oidc binding)? Set auth to legacy otherwise",
    r.status,
  );
}

/** An OAuth error answer as `error: description`, without echoing anything else. */
function oauthError(body: Buffer): string {
  try {
    const j = JSON.parse(body.toString("utf8")) as { error?: unknown; error_description?: unknown };
    if (typeof j.error === "string") {
      return `${j.error}${typeof j.error_description === "string" ? `: ${j.error_description.slice(0, 200)}` : ""}`;
    }
  } catch {
    /* not JSON */
  }
  return snippet(body.toString("utf8")) || "(no body)";
}

function needsMore(what: string): ControllerError {
  return new ControllerError(
    ErrorCodes.AUTH_FAILED,
    `controller: authentication needs more than a certificate (${what}: MFA or posture), ` +
      "which scrapez does not support; use an identity whose auth policy requires the certificate only",
    200,
  );
}

/** The payload of a JWT, decoded and NOT verified (for the claims we schedule by), or undefined. */
export function jwtPayload(token: string): unknown {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as unknown;
  } catch {
    return undefined;
  }
}
