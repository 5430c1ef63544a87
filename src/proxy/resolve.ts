/**
 * Which identity may dial a requested target, or the proxy's refusal (a replica the catalog does not list, a list not
 * loaded yet, a service no identity may dial): one rule for forwarded scrapes and CONNECT tunnels.
 */
import { ProxyErrorCodes } from "../common/errors.js";
import type { TargetName } from "../overlay/types.js";
import type { Resolved, ServiceCatalog } from "./catalog.js";
import { unknownReplicaText } from "./request.js";
import type { Failure } from "./upstream.js";

/** The identity that may dial `t`, or the refusal to answer (status, X-Scrapez-Proxy-Error code and text). */
export async function resolveTarget(catalog: ServiceCatalog, t: TargetName): Promise<Resolved | Failure> {
  const r = await catalog.resolve(t);
  if (r) return r;
  // A service the catalog knows, a replica it does not list: answered from the list (see ServiceCatalog.resolve).
  const known = t.identity !== undefined ? catalog.known(t.service) : undefined;
  if (known?.replicas) {
    return {
      status: 502,
      code: ProxyErrorCodes.NOT_DIALABLE,
      text: unknownReplicaText(known.service, t.identity!, known.replicas),
    };
  }
  // Not loaded, or an identity that might dial it has not authenticated yet: 503 with the reason, not 502.
  const pending = catalog.loaded ? catalog.pendingReason : undefined;
  if (!catalog.loaded || pending) {
    return {
      status: 503,
      code: ProxyErrorCodes.NOT_READY,
      text: `scrapez proxy: cannot reach service "${t.service}" yet: ${pending ?? catalog.notReadyReason ?? "the service list is not loaded"}`,
    };
  }
  const ids = catalog
    .identityNames()
    .map((n) => `"${n}"`)
    .join(", ");
  const replica = t.identity !== undefined ? ` (replica "${t.identity}")` : "";
  return {
    status: 502,
    code: ProxyErrorCodes.NOT_DIALABLE,
    text:
      `scrapez proxy: service "${t.service}"${replica} is not dialable by identity ${ids} (no such ` +
      `${t.identity !== undefined ? "replica" : "service"}, or no Dial policy grants it); only overlay services ` +
      "are reachable",
  };
}
