/**
 * Layer 3: the controller's client REST API (edge/client/v1) with certificate authentication.
 * Legacy API sessions (`zt-session` header) are accepted by every v1.x and v2.0 controller.
 */
import https from "node:https";
import os from "node:os";
import { debug } from "../debug.js";
import { ControllerError, ErrorCodes, type ErrorCode } from "../errors.js";
import type { Identity } from "./identity.js";

const log = debug("ctrl");
const MAX_BODY_BYTES = 16 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 15_000;
const PAGE = 500;

export interface ServiceInfo {
  id: string;
  name: string;
  permissions: ("Dial" | "Bind")[];
  encryptionRequired: boolean;
  roleAttributes: string[];
  /** Config data keyed by config type name (e.g. "host.v1"). */
  configs: Record<string, unknown>;
}

export interface EdgeRouterInfo {
  name: string;
  hostname: string;
  isOnline: boolean;
  urls: { tls?: string; [proto: string]: string | undefined };
}

export interface SessionInfo {
  id: string;
  token: string;
  type: "Dial" | "Bind";
  edgeRouters: EdgeRouterInfo[];
}

interface Envelope {
  data?: unknown;
  meta?: { pagination?: { totalCount?: number } };
  error?: { code?: string; message?: string; requestId?: string; cause?: { message?: string }; causeMessage?: string };
}

export class ControllerClient {
  readonly #identity: Identity;
  readonly #base: URL;
  readonly #agent: https.Agent;
  #token: string | undefined;
  #expiresAt = 0;
  #refreshTimer: NodeJS.Timeout | undefined;
  #authenticating: Promise<void> | undefined;
  identityId: string | undefined;
  identityName: string | undefined;

  constructor(identity: Identity) {
    this.#identity = identity;
    this.#base = new URL(identity.ztAPI.replace(/\/+$/, "") + "/");
    this.#agent = new https.Agent({
      keepAlive: true,
      maxSockets: 4,
      cert: identity.certPem,
      key: identity.keyPem,
      ca: identity.caPem,
    });
  }

  get sessionToken(): string | undefined {
    return this.#token;
  }

  /** Certificate authentication; stores the API-session token and schedules its refresh. */
  authenticate(): Promise<void> {
    this.#authenticating ??= this.#authenticate().finally(() => {
      this.#authenticating = undefined;
    });
    return this.#authenticating;
  }

  async #authenticate(): Promise<void> {
    const body = {
      configTypes: ["all"],
      sdkInfo: { type: "scrapez", version: "0.1.0", appId: "scrapez" },
      envInfo: { os: os.platform(), arch: os.arch(), osRelease: os.release(), hostname: os.hostname() },
    };
    const env = await this.#raw("POST", "authenticate?method=cert", body, false);
    const d = env.data as {
      token?: string;
      identity?: { id?: string; name?: string };
      expiresAt?: string;
      expirationSeconds?: number;
    };
    if (!d?.token) throw new ControllerError(ErrorCodes.AUTH_FAILED, "the controller returned no session token", 200);
    this.#token = d.token;
    this.identityId = d.identity?.id;
    this.identityName = d.identity?.name;
    this.#setExpiry(d.expiresAt, d.expirationSeconds);
    log("authenticated as %s", this.identityName);
  }

  #setExpiry(expiresAt?: string, seconds?: number): void {
    this.#expiresAt = expiresAt ? Date.parse(expiresAt) : Date.now() + (seconds ?? 1800) * 1000;
    clearTimeout(this.#refreshTimer);
    const left = Math.max(5_000, this.#expiresAt - Date.now());
    // Refresh at a random point between 1/2 and 5/6 of the remaining lifetime.
    const at = left * (0.5 + Math.random() / 3);
    this.#refreshTimer = setTimeout(() => void this.#refresh(), at);
    this.#refreshTimer.unref();
  }

  async #refresh(): Promise<void> {
    try {
      const env = await this.request("GET", "current-api-session");
      const d = env.data as { expiresAt?: string; expirationSeconds?: number };
      this.#setExpiry(d?.expiresAt, d?.expirationSeconds);
    } catch (err) {
      log("session refresh failed: %s; retrying", (err as Error).message);
      this.#refreshTimer = setTimeout(() => void this.#refresh(), 5_000);
      this.#refreshTimer.unref();
    }
  }

  /** An authenticated request; re-authenticates once on 401. */
  async request(method: string, path: string, body?: unknown): Promise<Envelope> {
    if (!this.#token) await this.authenticate();
    try {
      return await this.#raw(method, path, body, true);
    } catch (err) {
      if (err instanceof ControllerError && err.status === 401) {
        log("401 on %s %s: re-authenticating", method, path);
        await this.authenticate();
        return this.#raw(method, path, body, true);
      }
      throw err;
    }
  }

  async listServices(): Promise<ServiceInfo[]> {
    const out: ServiceInfo[] = [];
    for (let offset = 0; ; offset += PAGE) {
      const env = await this.request("GET", `services?limit=${PAGE}&offset=${offset}&configTypes=all`);
      const page = (env.data as RawService[] | undefined) ?? [];
      out.push(...page.map(toServiceInfo));
      const total = env.meta?.pagination?.totalCount ?? out.length;
      if (page.length === 0 || out.length >= total) break;
    }
    return out;
  }

  async getServiceByName(name: string): Promise<ServiceInfo | undefined> {
    const filter = encodeURIComponent(`name="${name.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`);
    const env = await this.request("GET", `services?filter=${filter}&configTypes=all`);
    const page = (env.data as RawService[] | undefined) ?? [];
    return page.map(toServiceInfo).find((s) => s.name === name);
  }

  /** The controller's marker of the last change to this identity's services. */
  async serviceUpdates(): Promise<string | undefined> {
    const env = await this.request("GET", "current-api-session/service-updates");
    return (env.data as { lastChangeAt?: string } | undefined)?.lastChangeAt;
  }

  /** Identities of the terminators bound for a service (replicas bound by edge identity), deduplicated. */
  async listTerminatorIdentities(serviceId: string): Promise<string[]> {
    const ids = new Set<string>();
    for (let offset = 0; ; offset += PAGE) {
      const env = await this.request(
        "GET",
        `services/${encodeURIComponent(serviceId)}/terminators?limit=${PAGE}&offset=${offset}`,
      );
      const page = (env.data as { identity?: string }[] | undefined) ?? [];
      for (const t of page) if (t.identity) ids.add(t.identity);
      const total = env.meta?.pagination?.totalCount ?? 0;
      if (page.length === 0 || offset + page.length >= total) break;
    }
    return [...ids].sort();
  }

  async createSession(serviceId: string, type: "Dial" | "Bind"): Promise<SessionInfo> {
    const env = await this.request("POST", "sessions", { serviceId, type });
    const d = env.data as { id: string; token: string; edgeRouters?: RawRouter[] };
    const edgeRouters = (d.edgeRouters ?? [])
      .filter((r) => r.isOnline !== false && r.disabled !== true)
      .map((r) => ({
        name: r.name ?? "",
        hostname: r.hostname ?? "",
        isOnline: r.isOnline !== false,
        urls: { ...(r.urls ?? {}), ...(r.supportedProtocols ?? {}) },
      }));
    return { id: d.id, token: d.token, type, edgeRouters };
  }

  async logout(): Promise<void> {
    if (!this.#token) return;
    try {
      await this.#raw("DELETE", "current-api-session", undefined, true);
    } finally {
      this.#token = undefined;
    }
  }

  close(): void {
    clearTimeout(this.#refreshTimer);
    this.#agent.destroy();
  }

  #raw(method: string, path: string, body: unknown, auth: boolean, retried = false): Promise<Envelope> {
    const url = new URL(path, this.#base);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { accept: "application/json" };
    if (payload) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(payload.length);
    }
    if (auth && this.#token) headers["zt-session"] = this.#token;
    return new Promise((resolve, reject) => {
      let answered = false;
      const req = https.request(url, { method, headers, agent: this.#agent, timeout: REQUEST_TIMEOUT_MS }, (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) {
            req.destroy(new Error(`response larger than ${MAX_BODY_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          let env: Envelope = {};
          const text = Buffer.concat(chunks).toString("utf8");
          try {
            env = text ? (JSON.parse(text) as Envelope) : {};
          } catch {
            if (status < 300)
              return reject(
                this.#error(ErrorCodes.CONTROLLER_ERROR, `${method} ${url.pathname}: response is not JSON`, status),
              );
          }
          if (status >= 200 && status < 300) return resolve(env);
          const apiCode = env.error?.code;
          const msg = [env.error?.message, env.error?.cause?.message ?? env.error?.causeMessage]
            .filter(Boolean)
            .join(": ");
          let code: ErrorCode = ErrorCodes.CONTROLLER_ERROR;
          if (status === 401 && !auth) code = ErrorCodes.AUTH_FAILED;
          else if (apiCode === "NO_EDGE_ROUTERS_AVAILABLE") code = ErrorCodes.NO_EDGE_ROUTERS;
          else if (status === 404 || apiCode === "NOT_FOUND") code = ErrorCodes.SERVICE_NOT_FOUND;
          reject(
            this.#error(
              code,
              `${method} ${url.pathname}: ${status} ${apiCode ?? ""} ${msg || text.slice(0, 200)}${env.error?.requestId ? ` (request ${env.error.requestId})` : ""}`,
              status,
              apiCode,
            ),
          );
        });
        res.on("error", (err) =>
          reject(this.#error(ErrorCodes.CONTROLLER_UNREACHABLE, err.message, 0, undefined, err)),
        );
      });
      req.on("timeout", () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
      req.on("error", (err) => {
        // A pooled keep-alive socket the controller closed while idle fails before any answer: send once more.
        if (req.reusedSocket && !retried && !answered) {
          resolve(this.#raw(method, path, body, auth, true));
          return;
        }
        reject(
          this.#error(
            ErrorCodes.CONTROLLER_UNREACHABLE,
            `cannot reach the controller at ${url.origin}: ${err.message}`,
            0,
            undefined,
            err,
          ),
        );
      });
      req.end(payload);
    });
  }

  #error(code: ErrorCode, msg: string, status: number, apiCode?: string, cause?: unknown): ControllerError {
    return new ControllerError(
      code,
      `controller: ${msg.replace(/\s+/g, " ").trim()}`,
      status,
      apiCode,
      cause ? { cause } : undefined,
    );
  }
}

interface RawService {
  id: string;
  name: string;
  permissions?: string[];
  encryptionRequired?: boolean;
  roleAttributes?: string[] | null;
  config?: Record<string, unknown> | null;
}

interface RawRouter {
  name?: string;
  hostname?: string;
  isOnline?: boolean;
  disabled?: boolean;
  urls?: Record<string, string>;
  supportedProtocols?: Record<string, string>;
}

function toServiceInfo(s: RawService): ServiceInfo {
  return {
    id: s.id,
    name: s.name,
    permissions: (s.permissions ?? []).filter((p): p is "Dial" | "Bind" => p === "Dial" || p === "Bind"),
    encryptionRequired: s.encryptionRequired !== false,
    roleAttributes: s.roleAttributes ?? [],
    configs: s.config ?? {},
  };
}
