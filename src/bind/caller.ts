/**
 * Who is calling a bound service, and whether its allow-list admits it. Pure: the SDK has already established
 * what can be trusted about the connection (a router-asserted name on v2.0+ routers, the pin of a key whose caller
 * proof verified); the self-declared CallerId is only ever reported as `claimed`.
 */
import type { BindAllow } from "./config.js";

/** What the SDK established about an accepted connection. */
export interface CallerFacts {
  /** The CallerId the dialer chose (or the router-asserted name on v2.0+ routers). Proves nothing. */
  claimed: string | undefined;
  /** DialerIdentityName asserted by a v2.0+ router. */
  routerName?: string | undefined;
  /** Pin of the key whose caller proof verified. */
  key?: string | undefined;
  /** Why no proof verified. */
  proofError?: string | undefined;
}

export interface Caller {
  /** For the audit line: the verified name, the verified key's pin when no name is pinned to it, or "unverified". */
  caller: string;
  /** The verified allow-list name when admitted by an allow-list. */
  name?: string | undefined;
  /** Bounded metric label: an allow-list name, "unverified", "not-allowed" (verified, not listed) or "any". */
  label: string;
  /** The self-declared caller id, shortened. */
  claimed: string | undefined;
  verifiedBy: "router" | "proof" | "none";
  /** Present when refused: the one-line 403 body. */
  refusal?: string | undefined;
}

const clip = (s: string | undefined, n: number) =>
  s === undefined ? undefined : s.length > n ? `${s.slice(0, n)}...` : s;

/**
 * Who is calling, and whether `allow` admits it. Where both a router-asserted name (v2.0+ routers) and a verified
 * proof are present, the proof decides (end to end: it does not trust the routers on the path), and the two must
 * agree: a key pinned for one name, proven by a dialer the router names otherwise, is refused. A name with a pinned
 * key must prove that key: the router's word alone admits only names listed without a pin.
 */
export function resolveCaller(service: string, allow: BindAllow | undefined, f: CallerFacts): Caller {
  const claimed = clip(f.claimed, 128);
  const routerName = f.routerName || undefined;
  const keyName = f.key ? Object.entries(allow?.keys ?? {}).find(([, pin]) => pin === f.key)?.[0] : undefined;
  const verifiedBy = f.key ? "proof" : routerName ? "router" : "none";
  if (!allow) {
    return { caller: routerName ?? f.key ?? "unverified", label: "any", claimed, verifiedBy };
  }
  const claims = claimed === undefined ? "" : ` (claims "${claimed}")`;
  const refused = (caller: string, refusal: string): Caller => ({
    caller,
    label: "not-allowed",
    claimed,
    verifiedBy,
    refusal: `scrapez bind: ${refusal}`,
  });
  if (keyName) {
    if (routerName && routerName !== keyName) {
      return refused(
        routerName,
        `caller key ${f.key} is pinned for "${keyName}" but the router names the dialer "${routerName}"${claims}: ` +
          `refused to scrape service "${service}" (one of the two is not who it says)`,
      );
    }
    return { caller: keyName, name: keyName, label: keyName, claimed, verifiedBy: "proof" };
  }
  if (routerName && allow.identities.includes(routerName)) {
    const pinned = allow.keys?.[routerName];
    if (!pinned) return { caller: routerName, name: routerName, label: routerName, claimed, verifiedBy: "router" };
    const proved = f.key ? `proved key ${f.key}` : `sent no valid caller proof (${clip(f.proofError, 300) ?? "none"})`;
    return refused(
      routerName,
      `caller identity "${routerName}"${claims} is named by the router, but allow.keys pins a key for it and the ` +
        `caller ${proved}: refused to scrape service "${service}". To admit it on the router's word alone, remove its ` +
        "pin from allow.keys",
    );
  }
  if (routerName || f.key) {
    const who = routerName ? `identity "${routerName}"` : `key ${f.key}`;
    return refused(
      (routerName ?? f.key)!,
      `caller ${who}${claims} is verified but not allowed to scrape service "${service}"` +
        (routerName ? "" : "; to admit it, list its name in allow.identities and this key under allow.keys"),
    );
  }
  return {
    caller: "unverified",
    label: "unverified",
    claimed,
    verifiedBy,
    refusal:
      `scrapez bind: service "${service}" admits only verified callers and this caller${claims} is unverified: ` +
      `${clip(f.proofError, 300) ?? "no caller proof"}. The dialer must be scrapez (or the SDK) on an end-to-end ` +
      "encrypted service, with its key pinned in allow.keys (`scrapez identity key --identity <file>` prints it), " +
      "or OpenZiti v2.0+ routers must name it (then list its name without a pin)",
  };
}
