/**
 * Request paths on the bind side: one normal form, decided here, that is both matched against a target's `paths`
 * and forwarded to the exporter, so what is checked is what is fetched.
 *
 * - Only origin-form (`/path?query`) is accepted.
 * - Percent-encoded unreserved characters (RFC 3986 2.3) are decoded; other escapes keep their bytes, with upper-case
 *   hex (RFC 3986 6.2.2.1).
 * - Dot segments (`.`, `..`) are removed (RFC 3986 5.2.4).
 * - Ambiguous paths are refused (400), because servers disagree on what they mean: a backslash, an encoded `/` or
 *   `\` (`%2F`, `%5C`), a dot segment spelled with `%2E`, an encoded control byte (`%00`-`%1F`, `%7F`), an empty
 *   segment (`//`), a malformed escape, a fragment, or a character outside RFC 3986's `pchar`.
 * - A `;` or `%3B` anywhere in the path is refused too. Tomcat (Spring Boot's default server) cuts `;parameters`
 *   off each segment before it resolves dot segments, so `/a/b/..;/c` is `/a/c` to it and `/a/b/x/;/../..` is `/a/`
 *   (the emptied segment is merged away), while here both stay under `/a/b`. See docs/bind.md for other servers.
 * - So is a double-encoded `.`, `/`, `\`, `;` or `%` (`%252E`, `%252F`, `%255C`, `%253B`, `%2525`): whatever
 *   decodes the path a second time (a proxy in front of the exporter, an application) would see the separator.
 * - A rule with a trailing `*` matches on segment boundaries: `/probe*` matches `/probe` and `/probe/x`, never
 *   `/probex` or `/probe-x`. A rule without `*` matches exactly one path.
 */

export type NormalizedTarget = { ok: true; path: string; query: string } | { ok: false; reason: string };

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;
const PARAMS = "a ; or %3B (path parameters) in the path is ambiguous: Tomcat reads /a/..;/b as /b";
/** After `%25`: the hex of `.`, `/`, `\`, `;` or `%`, which a second decoding would turn into a separator. */
const DOUBLE_ENCODED = /^(2[EeFf5]|5[Cc]|3[Bb])$/;
/** RFC 3986 pchar without pct-encoded (checked separately), plus "/". */
const PATH_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$/;

/** Normalizes a request target (`req.url`). The query is kept verbatim (the exporter's to interpret). */
export function normalizeRequestTarget(url: string): NormalizedTarget {
  if (!url.startsWith("/")) {
    return { ok: false, reason: "the request target must be a path starting with / (origin-form)" };
  }
  if (url.includes("#")) return { ok: false, reason: "a fragment (#) has no place in a request" };
  const q = url.indexOf("?");
  const rawPath = q < 0 ? url : url.slice(0, q);
  const query = q < 0 ? "" : url.slice(q);
  const p = normalizePath(rawPath);
  return "reason" in p ? { ok: false, reason: p.reason } : { ok: true, path: p.path, query };
}

/** Normalizes a path (no query). */
export function normalizePath(raw: string): { path: string } | { reason: string } {
  if (!raw.startsWith("/")) return { reason: "a path starts with /" };
  if (raw.includes("\\")) return { reason: "a backslash in the path is ambiguous" };
  if (raw.includes(";")) return { reason: PARAMS };
  if (!PATH_CHARS.test(raw)) return { reason: "the path has characters outside RFC 3986 (escape them with %XX)" };
  const segments = raw.slice(1).split("/");
  const out: string[] = [];
  for (let i = 0; i < segments.length; i++) {
    const raw = segments[i]!;
    const last = i === segments.length - 1;
    if (raw === "" && !last) return { reason: "an empty path segment (//) is ambiguous" };
    const seg = decodeSegment(raw);
    if ("reason" in seg) return seg;
    if (seg.text === "." || seg.text === "..") {
      if (raw !== seg.text) return { reason: "a dot segment spelled with %2E is ambiguous" };
      if (seg.text === "..") out.pop();
      // A trailing dot segment leaves a directory path ("/a/b/.." is "/a/"), as RFC 3986 5.2.4 does.
      if (last) out.push("");
      continue;
    }
    out.push(seg.text);
  }
  return { path: "/" + out.join("/") };
}

function decodeSegment(raw: string): { text: string } | { reason: string } {
  if (!raw.includes("%")) return { text: raw };
  let text = "";
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c !== "%") {
      text += c;
      continue;
    }
    const hex = raw.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return { reason: "a malformed percent-escape in the path" };
    const code = parseInt(hex, 16);
    if (code === 0x2f || code === 0x5c) return { reason: "an encoded / or \\ (%2F, %5C) in the path is ambiguous" };
    if (code === 0x3b) return { reason: PARAMS };
    if (code === 0x25 && DOUBLE_ENCODED.test(raw.slice(i + 3, i + 5))) {
      return { reason: "a double-encoded . / \\ ; or % (%252E, %252F, %255C, %253B, %2525) in the path is ambiguous" };
    }
    if (code < 0x20 || code === 0x7f) return { reason: "an encoded control byte (%00-%1F, %7F) in the path" };
    const ch = String.fromCharCode(code);
    text += UNRESERVED.test(ch) ? ch : "%" + hex.toUpperCase();
    i += 2;
  }
  return { text };
}

/** Whether a normalized path is allowed by a target's `paths` (exact, or trailing `*` on a segment boundary). */
export function pathAllowed(rules: readonly string[], path: string): boolean {
  return rules.some((rule) => {
    if (!rule.endsWith("*")) return path === rule;
    const prefix = rule.slice(0, -1);
    if (prefix.endsWith("/")) return path.startsWith(prefix);
    return path === prefix || path.startsWith(prefix + "/");
  });
}
