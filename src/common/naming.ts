/**
 * How overlay services are named as HTTP hosts (the scrape target Prometheus sends through proxy_url):
 *
 * - a service whose name is a usable host (letters, digits, `.`, `-`, `_`) is its own host: `node-exporter.cluster-a`;
 * - any other name is `x--<hex of its UTF-8 bytes>` (e.g. `My Service` -> `x--4d792053657276696365`);
 * - one replica bound by edge identity is `<identity host>~<service host>` (`~` is valid in a URL host and in no
 *   generated name, so it cannot collide with a service name).
 * The port is ignored. See docs/proxy.md "Names".
 */

/** What a request names: a service, or one replica of it (the terminator bound by `identity`). */
export interface TargetName {
  service: string;
  identity?: string;
}

const PLAIN = /^[A-Za-z0-9._-]+$/;
const HEX_PREFIX = "x--";

export function nameToHost(name: string): string {
  return PLAIN.test(name) && !name.startsWith(HEX_PREFIX)
    ? name
    : HEX_PREFIX + Buffer.from(name, "utf8").toString("hex");
}

export function hostToName(host: string): string {
  if (host.startsWith(HEX_PREFIX) && /^[0-9a-f]*$/i.test(host.slice(HEX_PREFIX.length)) && host.length % 2 === 1) {
    return Buffer.from(host.slice(HEX_PREFIX.length), "hex").toString("utf8");
  }
  return host;
}

/** Parses `host[:port]` (port ignored) into the service and, for a replica, the terminator identity. */
export function parseTargetHost(hostPort: string): TargetName {
  const host = hostPort.replace(/:\d+$/, "");
  const tilde = host.indexOf("~");
  if (tilde > 0) return { identity: hostToName(host.slice(0, tilde)), service: hostToName(host.slice(tilde + 1)) };
  return { service: hostToName(host) };
}

export function targetHost(t: TargetName): string {
  return t.identity ? `${nameToHost(t.identity)}~${nameToHost(t.service)}` : nameToHost(t.service);
}

/**
 * Shell-style glob: `*` any run, `?` one character; every other character is literal. Linear in the name for a
 * given glob: two pointers, and on a mismatch the last `*` takes one more character (earlier stars never need to
 * be revisited), so the work is at most (name length + 1) x (glob length + 1) steps, never exponential. `/sd`
 * caps the glob's length (see MAX_SD_GLOB in server.ts). Returns the match and the steps taken (for tests).
 */
export function globMatchSteps(glob: string, s: string): { match: boolean; steps: number } {
  let g = 0; // position in glob
  let i = 0; // position in s
  let star = -1; // glob position just after the last `*` seen
  let mark = 0; // where in s that `*` started matching
  let steps = 0;
  while (i < s.length) {
    steps++;
    const c = glob[g];
    if (c === "*") {
      star = ++g;
      mark = i;
    } else if (c !== undefined && (c === "?" || c === s[i])) {
      g++;
      i++;
    } else if (star >= 0) {
      g = star;
      i = ++mark;
    } else {
      return { match: false, steps };
    }
  }
  while (glob[g] === "*") {
    steps++;
    g++;
  }
  return { match: g === glob.length, steps };
}

export function globMatch(glob: string, s: string): boolean {
  return globMatchSteps(glob, s).match;
}

/** A discovery selector: `#attribute` matches a role attribute; anything else is a name glob. */
export function selectorMatch(selector: string, service: { name: string; roleAttributes: readonly string[] }): boolean {
  return selector.startsWith("#")
    ? service.roleAttributes.includes(selector.slice(1))
    : globMatch(selector, service.name);
}
