/**
 * What `/sd` offers: the http_sd target groups of the catalog's services (one per service, or one per replica bound
 * by edge identity; the config's discovery selectors applied), the filters of an `/sd` query over them, and the
 * answer to `GET /sd`.
 */
import type http from "node:http";
import { answerPlain } from "../common/answer.js";
import { ProxyErrorCodes } from "../common/errors.js";
import { nameToHost, selectorMatch, targetHost } from "../common/naming.js";
import type { OverlayService } from "../overlay/types.js";
import type { ProxyConfig } from "./config.js";
import { compileGlob } from "./glob.js";
import { ERROR_HEADER, parseSdQuery } from "./request.js";

/** One http_sd target group. */
export interface SdGroup {
  targets: string[];
  labels: Record<string, string>;
}

/** An `/sd` query's filters (see parseSdQuery in ./request.ts for their limits). */
export interface SdFilter {
  service?: string[];
  attribute?: string[];
}

export function attributesLabel(attrs: readonly string[]): string {
  return attrs.length ? `,${[...attrs].sort().join(",")},` : "";
}

/** The target groups of the services in `byName` (discovery selectors applied), sorted by service name. */
export function sdGroups(
  byName: ReadonlyMap<
    string,
    { ctx: { identityName: string }; service: OverlayService; replicas: readonly string[] | undefined }
  >,
  d: ProxyConfig["discovery"],
): SdGroup[] {
  const groups: SdGroup[] = [];
  for (const name of [...byName.keys()].sort()) {
    const { ctx, service: s, replicas = [] } = byName.get(name)!;
    if (d.include && !d.include.some((sel) => selectorMatch(sel, s))) continue;
    if (d.exclude?.some((sel) => selectorMatch(sel, s))) continue;
    const labels = {
      __meta_ziti_service: s.name,
      __meta_ziti_service_id: s.id,
      __meta_ziti_service_attributes: attributesLabel(s.roleAttributes),
      __meta_ziti_identity: ctx.identityName,
    };
    // No port: the proxy ignores it, Prometheus 3 keeps the target as `instance` (`node`), and 2.x adds the
    // scheme's (`node:80`, or `node:443` with scheme: https, which then goes through CONNECT).
    if (replicas.length === 0) groups.push({ targets: [nameToHost(s.name)], labels });
    for (const r of replicas) {
      groups.push({
        targets: [targetHost({ service: s.name, identity: r })],
        labels: { ...labels, __meta_ziti_replica: r },
      });
    }
  }
  return groups;
}

/**
 * The groups an `/sd` query asks for: `service` globs and `attribute`s (any of each, both when both are given).
 * Each glob is compiled once (./glob.ts: linear in the name, no backtracking) and matched once per service, not
 * once per replica group (a service's groups are adjacent).
 */
export function filterGroups(groups: readonly SdGroup[], filter: SdFilter): SdGroup[] {
  const globs = [...new Set(filter.service ?? [])].map(compileGlob);
  const attrs = (filter.attribute ?? []).map((a) => `,${a},`);
  let lastName: string | undefined;
  let lastOk = false;
  const nameOk = (name: string) => {
    if (name !== lastName) {
      lastName = name;
      lastOk = globs.some((g) => g.test(name));
    }
    return lastOk;
  };
  return groups.filter(
    (g) =>
      (globs.length === 0 || nameOk(g.labels.__meta_ziti_service!)) &&
      (attrs.length === 0 || attrs.some((a) => g.labels.__meta_ziti_service_attributes!.includes(a))),
  );
}

/** What `GET /sd` reads of the catalog (ServiceCatalog). */
export interface SdSource {
  readonly loaded: boolean;
  readonly notReadyReason: string | undefined;
  groups(filter: SdFilter): SdGroup[];
}

/** Answers `GET /sd[?service=<glob>&attribute=<attr>]`: the groups as JSON, 503 before the list is loaded. */
export function serveSd(req: http.IncomingMessage, res: http.ServerResponse, catalog: SdSource): void {
  if (!catalog.loaded) {
    return answerPlain(res, 503, `scrapez proxy: ${catalog.notReadyReason ?? "the service list is not loaded"}`, {
      [ERROR_HEADER]: ProxyErrorCodes.NOT_READY,
    });
  }
  const url = req.url ?? "/sd";
  const filter = parseSdQuery(url.includes("?") ? url.slice(url.indexOf("?") + 1) : "");
  if ("tooLarge" in filter) {
    return answerPlain(res, 400, `scrapez proxy: /sd query too large: ${filter.tooLarge}`, {
      [ERROR_HEADER]: ProxyErrorCodes.SD_QUERY_TOO_LARGE,
    });
  }
  const body = JSON.stringify(catalog.groups(filter));
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}
