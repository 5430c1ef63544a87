/**
 * Layer 3: the controller's client REST API (edge/client/v1) with certificate authentication.
 * Legacy API sessions (`zt-session` header) are accepted by every v1.x and v2.0 controller.
 *
 * Every answer is bounded (size, time); every error is a ControllerError carrying the controller's code, message
 * and request id. Tokens are never logged nor put in error messages.
 */
import { readFileSync } from "node:fs";
import https from "node:https";
import os from "node:os";
import { z } from "zod";
import { Backoff, type BackoffOptions } from "../backoff.js";
import { debug } from "../debug.js";
import { ControllerError, ErrorCodes, ZitiError, type ErrorCode } from "../errors.js";
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
  /** The controller's inactivity timeout for the session. */
  expirationSeconds: number | undefined;
}

export interface ControllerClientOptions {
  /** Deadline for one request, connect to last byte (default 15 s). */
  timeoutMs?: number;
  /** Largest response body read (default 16 MiB). */
  maxBodyBytes?: number;
  /** Back-off between failed session refreshes (default 1 s doubling to 30 s, ±25 %). */
  refreshBackoff?: BackoffOptions;
}

const ApiSessionBase = z.object({
  id: z.string(),
  identityId: z.string().nullish(),
  identity: z.object({ id: z.string().nullish(), name: z.string().nullish() }).nullish(),
  expiresAt: z.string().nullish(),
  expirationSeconds: z.number().nullish(),
  lastActivityAt: z.string().nullish(),
  authQueries: z.array(z.object({ typeId: z.string().nullish() }).loose()).nullish(),
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

export class ControllerClient {
  readonly #base: URL;
  readonly #agent: https.Agent;
  readonly #timeoutMs: number;
  readonly #maxBody: number;
  #token: string | undefined;
  #session: ApiSessionInfo | undefined;
  #refreshTimer: NodeJS.Timeout | undefined;
  #authenticating: Promise<ApiSessionInfo> | undefined;
  readonly #refreshBackoff: Backoff;
  #closed = false;

  constructor(identity: Identity, opts: ControllerClientOptions = {}) {
    this.#base = new URL(identity.ztAPI.replace(/\/+$/, "") + "/");
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.#refreshBackoff = new Backoff({ initialMs: 1_000, maxMs: 30_000, ...opts.refreshBackoff });
    // mTLS with the identity; trust its CA bundle only (`ca` replaces Node's default roots).
    this.#agent = new https.Agent({ keepAlive: true, maxSockets: 4, ...tlsOptions(identity) });
  }

  /** The API-session token, for the router hello. Never log it. */
  get sessionToken(): string | undefined {
    return this.#token;
  }

  get identityId(): string | undefined {
    return this.#session?.identityId;
  }

  get identityName(): string | undefined {
    return this.#session?.identityName;
  }

  /** When the current API session expires (controller's clock), if authenticated. */
  get expiresAt(): Date | undefined {
    return this.#session?.expiresAt;
  }

  /** Certificate authentication; stores the API-session token and schedules its refresh. Concurrent calls share. */
  authenticate(): Promise<ApiSessionInfo> {
    this.#assertOpen();
    this.#authenticating ??= this.#authenticate().finally(() => {
      this.#authenticating = undefined;
    });
    return this.#authenticating;
  }

  async #authenticate(): Promise<ApiSessionInfo> {
    const body = {
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
    const env = await this.#send("POST", "authenticate?method=cert", body, undefined);
    const d = this.#shape(ApiSessionDetail, env.data, "POST /authenticate");
    const pending = (d.authQueries ?? []).map((q) => q.typeId ?? "?");
    if (pending.length > 0) {
      throw new ControllerError(
        ErrorCodes.AUTH_FAILED,
        `controller: authentication needs more than a certificate (${pending.join(", ")}: MFA or posture), ` +
          "which scrapez does not support; use an identity whose auth policy requires the certificate only",
        200,
      );
    }
    this.#token = d.token;
    const session = this.#adopt(d);
    log("authenticated as %s (%s), session %s", session.identityName, session.identityId, session.id);
    return session;
  }

  /** Takes the session detail's identity and expiry; (re)schedules the refresh. */
  #adopt(d: ApiSessionBase): ApiSessionInfo {
    const expiresAt = d.expiresAt ? new Date(d.expiresAt) : undefined;
    const session: ApiSessionInfo = {
      id: d.id,
      identityId: d.identityId ?? d.identity?.id ?? this.#session?.identityId,
      identityName: d.identity?.name ?? this.#session?.identityName,
      expiresAt: expiresAt && !Number.isNaN(expiresAt.getTime()) ? expiresAt : undefined,
      expirationSeconds: d.expirationSeconds ?? undefined,
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
    if (this.#closed || !this.#token) return;
    try {
      await this.currentApiSession();
      log("session refreshed; expires at %s", this.#session?.expiresAt?.toISOString());
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

  /** GET current-api-session: the session as the controller sees it. Extends it (any request does). */
  async currentApiSession(): Promise<ApiSessionInfo> {
    const env = await this.request("GET", "current-api-session");
    return this.#adopt(this.#shape(ApiSessionBase, env.data, "GET /current-api-session"));
  }

  /** An authenticated request (authenticates first if needed); on 401, re-authenticates once and retries. */
  async request(method: string, path: string, body?: unknown): Promise<Envelope> {
    this.#assertOpen();
    if (!this.#token) await this.authenticate();
    const used = this.#token;
    try {
      return await this.#send(method, path, body, used);
    } catch (err) {
      if (!(err instanceof ControllerError) || err.status !== 401) throw err;
      log("401 on %s %s: re-authenticating", method, path.split("?")[0]);
      // Another request may have re-authenticated meanwhile: then only retry with the new token.
      if (this.#token === used) await this.authenticate();
      return this.#send(method, path, body, this.#token);
    }
  }

  /** Every service this identity sees (paged by 500), configs keyed by config type name. */
  async listServices(): Promise<ServiceInfo[]> {
    const out: ServiceInfo[] = [];
    for (let offset = 0; ;) {
      const env = await this.request("GET", `services?limit=${PAGE}&offset=${offset}&configTypes=all`);
      const page = this.#page(env, "GET /services");
      out.push(...page.map((s) => this.#service(s)));
      offset += page.length;
      const total = Pagination.safeParse(env.meta?.pagination).data?.totalCount ?? offset;
      if (page.length === 0 || offset >= total) break;
    }
    return out;
  }

  /** The service of that exact name, or undefined when this identity cannot see it. */
  async getServiceByName(name: string): Promise<ServiceInfo | undefined> {
    const filter = encodeURIComponent(`name=${zitiQlString(name)}`);
    const env = await this.request("GET", `services?filter=${filter}&limit=${PAGE}&configTypes=all`);
    return this.#page(env, "GET /services")
      .map((s) => this.#service(s))
      .find((s) => s.name === name);
  }

  /** The controller's marker of the last change to this identity's services (compare, do not parse). */
  async serviceUpdates(): Promise<string | undefined> {
    const env = await this.request("GET", "current-api-session/service-updates");
    const d = this.#shape(z.object({ lastChangeAt: z.string().nullish() }), env.data, "GET /service-updates");
    return d.lastChangeAt ?? undefined;
  }

  /** Identities of the terminators bound for a service (replicas bound by edge identity), deduplicated. */
  async listTerminatorIdentities(serviceId: string): Promise<string[]> {
    const ids = new Set<string>();
    for (let offset = 0; ;) {
      const env = await this.request(
        "GET",
        `services/${encodeURIComponent(serviceId)}/terminators?limit=${PAGE}&offset=${offset}`,
      );
      const page = this.#page(env, "GET /terminators");
      for (const t of page) if (typeof t.identity === "string" && t.identity) ids.add(t.identity);
      offset += page.length;
      const total = Pagination.safeParse(env.meta?.pagination).data?.totalCount ?? offset;
      if (page.length === 0 || offset >= total) break;
    }
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

  /** Ends the API session at the controller (DELETE current-api-session). */
  async logout(): Promise<void> {
    const token = this.#token;
    this.#token = undefined;
    clearTimeout(this.#refreshTimer);
    if (!token || this.#closed) return;
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

  /** One HTTP exchange. `token` undefined = unauthenticated. A keep-alive socket that died idle is retried once. */
  #send(method: string, path: string, body: unknown, token: string | undefined, retried = false): Promise<Envelope> {
    const url = new URL(path, this.#base);
    const what = `${method} ${url.pathname}`;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { accept: "application/json" };
    if (payload) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(payload.length);
    }
    if (token) headers["zt-session"] = token;
    return new Promise((resolve, reject) => {
      let answered = false;
      let settled = false;
      const done = (fn: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        fn();
      };
      const req = https.request(url, { method, headers, agent: this.#agent }, (res) => {
        answered = true;
        const status = res.statusCode ?? 0;
        const declared = Number(res.headers["content-length"] ?? 0);
        if (declared > this.#maxBody) {
          req.destroy(new Error(`answer of ${declared} bytes is larger than the ${this.#maxBody}-byte limit`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > this.#maxBody) {
            req.destroy(new Error(`answer is larger than the ${this.#maxBody}-byte limit`));
            return;
          }
          chunks.push(c);
        });
        res.on("end", () =>
          done(() => this.#answer(what, path, status, Buffer.concat(chunks), !token, resolve, reject)),
        );
        res.on("error", (err) => req.destroy(err));
      });
      const deadline = setTimeout(
        () => req.destroy(new Error(`no complete answer within ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
      req.on("error", (err) => {
        // A pooled keep-alive socket the controller closed while idle fails before any answer: send once more.
        if (req.reusedSocket && !retried && !answered && !settled) {
          done(() => resolve(this.#send(method, path, body, token, true)));
          return;
        }
        done(() =>
          reject(
            new ControllerError(
              ErrorCodes.CONTROLLER_UNREACHABLE,
              `controller: ${what}: cannot reach the controller at ${url.origin}: ${describeNetError(err)}`,
              0,
              undefined,
              { cause: err },
            ),
          ),
        );
      });
      req.end(payload);
    });
  }

  #answer(
    what: string,
    path: string,
    status: number,
    bytes: Buffer,
    isAuthenticate: boolean,
    resolve: (env: Envelope) => void,
    reject: (err: Error) => void,
  ): void {
    const text = bytes.toString("utf8");
    let env: Envelope | undefined;
    try {
      env = text ? (JSON.parse(text) as Envelope) : {};
      if (typeof env !== "object" || env === null) env = undefined;
    } catch {
      env = undefined;
    }
    if (status >= 200 && status < 300) {
      if (env) return resolve(env);
      return reject(
        new ControllerError(
          ErrorCodes.CONTROLLER_ERROR,
          `controller: ${what}: ${status} answer is not JSON (${snippet(text)}); is ztAPI the client API of a Ziti controller?`,
          status,
        ),
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
    reject(
      new ControllerError(
        code,
        `controller: ${what}: ${status}${apiCode ? ` ${apiCode}` : ""}: ${msg}${hint}${rid}`,
        status,
        apiCode,
      ),
    );
  }
}

/** A ZitiQL string literal: double quotes, with backslash and quote escaped. */
export function zitiQlString(s: string): string {
  return `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
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
