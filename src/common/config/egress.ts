/**
 * The `egressProxy` field of bind.yaml and proxy.yaml: the HTTP proxy the identity's controller and router
 * connections go out through (HTTP CONNECT, with Basic auth when the URL carries user:password), or `direct`.
 * Unset: the SDK reads https_proxy / HTTPS_PROXY (and no_proxy / NO_PROXY) from the environment
 * (docs/configuration.md, "Egress proxy"). The value may hold a password: no message ever repeats it.
 */
import { z } from "zod";

const MESSAGE =
  "expected http://[user:password@]host:port (an HTTP proxy that supports CONNECT; https:// and socks proxies are " +
  "not supported) or direct";

/** True for `direct`, `http://[user:password@]host[:port]` or `host:port`. */
export function validEgressProxy(value: string): boolean {
  const v = value.trim();
  if (v.toLowerCase() === "direct") return true;
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(v) ? v : `http://${v}`;
  try {
    const u = new URL(withScheme);
    // As the SDK's parseProxyUrl decodes them: percent-encoded credentials, no ':' in the user name.
    if (decodeURIComponent(u.username).includes(":")) return false;
    decodeURIComponent(u.password);
    return u.protocol === "http:" && u.hostname !== "";
  } catch {
    return false;
  }
}

export const EgressProxyField = z.string().refine(validEgressProxy, MESSAGE).optional();

/**
 * With `egressProxy` unset, the SDK takes the proxy from https_proxy / HTTPS_PROXY: a malformed one is a config
 * error too (naming the variable, not its value), before anything starts. Undefined when it is fine or unset.
 */
export function egressEnvProblem(env: NodeJS.ProcessEnv): string | undefined {
  for (const name of ["https_proxy", "HTTPS_PROXY"]) {
    const v = env[name]?.trim();
    if (!v) continue;
    if (v.toLowerCase() !== "direct" && validEgressProxy(v)) return undefined;
    return `${name} (the egress proxy while egressProxy is unset): ${MESSAGE}; or set egressProxy: direct to ignore it`;
  }
  return undefined;
}
