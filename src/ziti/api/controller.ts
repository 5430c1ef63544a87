/**
 * Layer 3: the controller's client REST API (edge/client/v1) with certificate authentication, either
 *  - OIDC (./controller-oidc.ts: authorization code + PKCE with the certificate; the access token is sent as
 *    `Authorization: Bearer` and to routers; refreshed by RFC 8693 token exchange before it expires, and a new login
 *    when the refresh is refused). Required by HA clusters, where legacy sessions exist on one member only.
 *  - legacy API sessions (`zt-session` header), accepted by every v1.x and v2.0 controller.
 * `auth: "auto"` (default) uses OIDC when the controller's /version advertises OIDC_AUTH, else legacy.
 *
 * This file is the session: which mode, the token and its expiry, the refresh timer, re-authentication on 401, and
 * certificate extension (which swaps the credentials under the session). The parts it drives: the HA members and
 * failover (./controller-members.ts), the REST resources (./controller-resources.ts), the answer mapping
 * (./controller-answer.ts) and the wire shapes (./controller-wire.ts).
 *
 * Every answer is bounded (size, time); every error is a ControllerError carrying the controller's code, message
 * and request id. Tokens are never logged nor put in error messages.
 */
import { z } from "zod";
import { Backoff, type BackoffOptions } from "../backoff.js";
import { debug } from "../debug.js";
import { ControllerError, ErrorCodes, ZitiError, isZitiError } from "../errors.js";
import type { EgressRoute } from "../transport/egress-proxy.js";
import { needsMore, shape } from "./controller-answer.js";
import { ControllerMembers } from "./controller-members.js";
import { oidcExchange, oidcLogin, type OidcTokens } from "./controller-oidc.js";
import * as resources from "./controller-resources.js";
import {
  ApiSessionBase,
  ApiSessionDetail,
  authenticateBody,
  type ApiSessionInfo,
  type AuthMode,
  type Envelope,
  type ServiceInfo,
  type SessionInfo,
} from "./controller-wire.js";
import type { Identity } from "./identity.js";

const log = debug("ctrl");
const DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 15_000;
const DEFAULT_SESSION_SECONDS = 30 * 60;

export interface ControllerClientOptions {
  /** Deadline for one request, connect to last byte (default 15 s). */
  timeoutMs?: number;
  /** Largest response body read (default 16 MiB). */
  maxBodyBytes?: number;
  /** Back-off between failed session refreshes (default 1 s doubling to 30 s, ±25 %). */
  refreshBackoff?: BackoffOptions;
  /** "auto" (default): OIDC when the controller advertises OIDC_AUTH, else legacy; or force one. */
  auth?: AuthMode;
  /** Through an egress proxy or direct, per controller (transport/egress-proxy.ts). */
  egress?: EgressRoute;
}

export class ControllerClient {
  /** The controllers of the identity (and of its cluster), and failover between them. */
  readonly #members: ControllerMembers;
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
    this.#members = new ControllerMembers(
      identity,
      opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
      opts.egress,
    );
    this.#authOption = opts.auth ?? "auto";
    this.#refreshBackoff = new Backoff({ initialMs: 1_000, maxMs: 30_000, ...opts.refreshBackoff });
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
    return this.#members.currentUrl;
  }

  /** Every controller client API URL known (the identity's, then those the cluster advertises). */
  get controllerUrls(): string[] {
    return this.#members.urls;
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
    if (this.#capabilities.includes("HA_CONTROLLER") || this.#members.urls.length > 1) await this.#learnControllers();
    return session;
  }

  /** auto: OIDC when /version advertises OIDC_AUTH (required by HA clusters), else legacy. */
  async #chooseMode(): Promise<"oidc" | "legacy"> {
    let caps: string[] | undefined;
    try {
      const env = await this.#members.send("GET", "version", undefined, undefined);
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

  async #legacyAuthenticate(): Promise<ApiSessionInfo> {
    const env = await this.#members.send("POST", "authenticate?method=cert", authenticateBody(), undefined);
    const d = shape(ApiSessionDetail, env.data, "POST /authenticate");
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
    const tokens = await this.#members.eachMember("OIDC login", (base) =>
      oidcLogin(this.#members, base, authenticateBody()),
    );
    this.#token = undefined;
    const session = this.#adoptTokens(tokens);
    log("authenticated (OIDC) as %s (%s), session %s", session.identityName, session.identityId, session.id);
    this.#tokenChanged();
    return session;
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

  /** HA: adds the client API URLs the cluster advertises (GET /controllers). Best effort. */
  async #learnControllers(): Promise<void> {
    try {
      const env = await this.request("GET", "controllers?limit=100");
      const added = this.#members.addAdvertised(env.data);
      if (added) log("cluster members' client APIs: %s", this.controllerUrls.join(", "));
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
        const tokens = await oidcExchange(this.#members, refresh);
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
    const d = shape(ApiSessionBase, env.data, "GET /current-api-session");
    if (this.#mode === "oidc") return this.#session!;
    return this.#adopt(d);
  }

  /** An authenticated request (authenticates first if needed); on 401, re-authenticates once and retries. */
  async request(method: string, path: string, body?: unknown): Promise<Envelope> {
    this.#assertOpen();
    if (!this.sessionToken) await this.authenticate();
    const used = this.sessionToken;
    try {
      return await this.#members.send(method, path, body, this.#authHeader(used));
    } catch (err) {
      if (!(err instanceof ControllerError) || err.status !== 401) throw err;
      log("401 on %s %s: re-authenticating", method, path.split("?")[0]);
      // Another request may have re-authenticated meanwhile: then only retry with the new token.
      if (this.sessionToken === used) await this.authenticate();
      return this.#members.send(method, path, body, this.#authHeader(this.sessionToken));
    }
  }

  /** Every service this identity sees (paged by 500), configs keyed by config type name. */
  listServices(): Promise<ServiceInfo[]> {
    return resources.listServices(this.#request);
  }

  /** The controller's marker of the last change to this identity's services (compare, do not parse). */
  serviceUpdates(): Promise<string | undefined> {
    return resources.serviceUpdates(this.#request);
  }

  /** Identities of the terminators bound for a service (replicas bound by edge identity), deduplicated. */
  listTerminatorIdentities(serviceId: string): Promise<string[]> {
    return resources.listTerminatorIdentities(this.#request, serviceId);
  }

  /** A Dial or Bind session for a service: its token and the online, enabled edge routers that can serve it. */
  createSession(serviceId: string, type: "Dial" | "Bind"): Promise<SessionInfo> {
    return resources.createSession(this.#request, serviceId, type);
  }

  readonly #request = (method: string, path: string, body?: unknown): Promise<Envelope> =>
    this.request(method, path, body);

  /** The header carrying `token` in this mode (undefined = an unauthenticated exchange). */
  #authHeader(token: string | undefined): Record<string, string> | undefined {
    if (!token) return undefined;
    return this.#mode === "oidc" ? { authorization: `Bearer ${token}` } : { "zt-session": token };
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
    const d = shape(
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
    this.#members.setCredentials(certPem, keyPem, caPem);
  }

  /** Ends the session: legacy DELETE current-api-session; OIDC tokens are dropped (they expire by themselves). */
  async logout(): Promise<void> {
    const token = this.#token;
    const mode = this.#mode;
    this.#token = undefined;
    this.#oidc = undefined;
    clearTimeout(this.#refreshTimer);
    if (mode === "oidc" || !token || this.#closed) return;
    await this.#members.send("DELETE", "current-api-session", undefined, this.#authHeader(token));
    log("logged out");
  }

  /** Stops the refresh timer and closes pooled sockets. Idempotent; later calls fail with CLOSED. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#refreshTimer);
    this.#members.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new ZitiError(ErrorCodes.CLOSED, "the controller client is closed");
  }
}
