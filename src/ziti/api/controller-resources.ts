/**
 * The controller client's REST resources (edge/client/v1): services, their change marker and terminators, and
 * Dial/Bind sessions, read from the wire shapes (./controller-wire.ts) into what the SDK uses. Each call goes
 * through the client's authenticated `request` (re-authentication and member failover are the client's).
 */
import { z } from "zod";
import { debug } from "../debug.js";
import { shape } from "./controller-answer.js";
import {
  Pagination,
  RawService,
  RawSession,
  type EdgeRouterInfo,
  type Envelope,
  type ServiceInfo,
  type SessionInfo,
} from "./controller-wire.js";

const log = debug("ctrl");
const PAGE = 500;

/** An authenticated client-API request (the client's `request`). */
export type ControllerRequest = (method: string, path: string, body?: unknown) => Promise<Envelope>;

/** Every service this identity sees (paged by 500), configs keyed by config type name. */
export async function listServices(request: ControllerRequest): Promise<ServiceInfo[]> {
  return (await listAll(request, "services?configTypes=all", "GET /services")).map(toService);
}

/** The controller's marker of the last change to this identity's services (compare, do not parse). */
export async function serviceUpdates(request: ControllerRequest): Promise<string | undefined> {
  const env = await request("GET", "current-api-session/service-updates");
  const d = shape(z.object({ lastChangeAt: z.string().nullish() }), env.data, "GET /service-updates");
  return d.lastChangeAt ?? undefined;
}

/** Identities of the terminators bound for a service (replicas bound by edge identity), deduplicated. */
export async function listTerminatorIdentities(request: ControllerRequest, serviceId: string): Promise<string[]> {
  const all = await listAll(request, `services/${encodeURIComponent(serviceId)}/terminators`, "GET /terminators");
  const ids = new Set<string>();
  for (const t of all) if (typeof t.identity === "string" && t.identity) ids.add(t.identity);
  return [...ids].sort();
}

/** A Dial or Bind session for a service: its token and the online, enabled edge routers that can serve it. */
export async function createSession(
  request: ControllerRequest,
  serviceId: string,
  type: "Dial" | "Bind",
): Promise<SessionInfo> {
  const env = await request("POST", "sessions", { serviceId, type });
  const d = shape(RawSession, env.data, "POST /sessions");
  const edgeRouters: EdgeRouterInfo[] = [];
  for (const r of d.edgeRouters ?? []) {
    if (r.isOnline === false || r.disabled === true) continue;
    const protocols = r.supportedProtocols && Object.keys(r.supportedProtocols).length ? r.supportedProtocols : r.urls;
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

function toService(raw: Record<string, unknown>): ServiceInfo {
  const s = shape(RawService, raw, "service");
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
async function listAll(request: ControllerRequest, path: string, what: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  const sep = path.includes("?") ? "&" : "?";
  for (let offset = 0; ;) {
    const env = await request("GET", `${path}${sep}limit=${PAGE}&offset=${offset}`);
    const page = shape(z.array(z.record(z.string(), z.unknown())).nullish(), env.data, what) ?? [];
    out.push(...page);
    offset += page.length;
    const total = Pagination.safeParse(env.meta?.pagination).data?.totalCount ?? offset;
    if (page.length === 0 || offset >= total) return out;
  }
}
