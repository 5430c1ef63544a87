/**
 * Layer 1: out through a corporate proxy. Which proxy a connection to the controller or an edge router takes
 * (`egressRoute`: an explicit setting, else `HTTPS_PROXY` / `https_proxy`, minus what `NO_PROXY` / `no_proxy`
 * exempts) and the HTTP CONNECT tunnel through it (`openTunnel`), with optional Basic proxy authentication. TLS
 * with the identity's certificate then runs inside the tunnel, to the same host name (SNI unchanged): the proxy sees
 * only the destination's host and port.
 *
 * The proxy is a peer like any other: its answer is bounded (16 KiB head), checked (an HTTP/1.x status line),
 * and bytes it sends after the 200 belong to the TLS stream and are handed on. A proxy URL's credentials are never
 * part of a message, a log line or `description`.
 */
import { BlockList, isIP } from "node:net";
import net from "node:net";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";

const log = debug("egress");

/** Largest CONNECT answer head read (status line and headers). */
const MAX_HEAD_BYTES = 16 * 1024;

/** One egress proxy: where it is, its credentials (if any), and a display form that never carries them. */
export interface EgressProxy {
  host: string;
  port: number;
  /** Basic proxy authentication (from the URL's user:password, percent-decoded). */
  auth: { user: string; password: string } | undefined;
  /** `http://host:port`, without credentials: what messages and logs show. */
  display: string;
  /** Where the setting came from: `egressProxy`, `HTTPS_PROXY` or `https_proxy`. */
  source: string;
}

/** Where connections go: through a proxy or direct, per destination. */
export interface EgressRoute {
  /** The proxy a connection to host:port takes, or undefined: direct. */
  proxyFor(host: string, port: number): EgressProxy | undefined;
  /** The proxy in force (before NO_PROXY), if any. */
  readonly proxy: EgressProxy | undefined;
  /** `direct`, or `http://proxy:3128 (from HTTPS_PROXY; NO_PROXY: .internal,10.0.0.0/8)`; never credentials. */
  readonly description: string;
}

const invalid = (source: string, why: string) => new ZitiError(ErrorCodes.EGRESS_PROXY_INVALID, `${source}: ${why}`);

/**
 * Parses a proxy URL: `http://[user:password@]host[:port]` (port 80 when absent, as in any http URL), or
 * `host:port` without a scheme (read as http://). Only HTTP CONNECT proxies reached over plain TCP are supported.
 */
export function parseProxyUrl(value: string, source: string): EgressProxy {
  const v = value.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(v) ? v : `http://${v}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    // The value is not repeated: a password in it is not always where a pattern could find it (`u:p/w@host`).
    throw invalid(source, "not a proxy URL (expected http://[user:password@]host:port)");
  }
  if (url.protocol !== "http:") {
    throw invalid(
      source,
      `${url.protocol.replace(/:$/, "")}:// proxies are not supported: give an HTTP proxy that supports CONNECT, ` +
        "as http://host:port (TLS to the controller and routers runs inside its tunnel)",
    );
  }
  if (!url.hostname) throw invalid(source, "the proxy URL has no host");
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = url.port ? Number(url.port) : 80;
  let auth: EgressProxy["auth"];
  if (url.username || url.password) {
    try {
      auth = { user: decodeURIComponent(url.username), password: decodeURIComponent(url.password) };
    } catch {
      throw invalid(source, "the proxy URL's user:password is not valid percent-encoding");
    }
    if (auth.user.includes(":")) throw invalid(source, "the proxy user name cannot contain ':'");
  }
  return { host, port, auth, display: `http://${hostPort(host, port)}`, source };
}

/** `host:port`, IPv6 literals in brackets. */
export function hostPort(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

/**
 * NO_PROXY: comma- (or space-) separated entries; a connection whose destination matches one goes direct.
 * - `*` matches everything;
 * - `example.com`, `.example.com` and `*.example.com` match example.com and every name under it (case-insensitive);
 * - an IP address matches that address; a CIDR block (`10.0.0.0/8`, `fd00::/8`) the IP addresses in it (names
 *   are not resolved to match a block);
 * - any of these with `:port` (`[v6]:port` for IPv6) matches only connections to that port.
 */
export class NoProxy {
  readonly entries: readonly string[];
  #all = false;
  readonly #names: { name: string; port: number | undefined }[] = [];
  readonly #ips: { ip: string; port: number | undefined }[] = [];
  readonly #blocks: { list: BlockList; port: number | undefined }[] = [];

  constructor(list: string) {
    this.entries = list
      .split(/[\s,]+/)
      .map((s) => s.trim())
      .filter(Boolean);
    for (const raw of this.entries) this.#add(raw.toLowerCase());
  }

  #add(e: string): void {
    if (e === "*") {
      this.#all = true;
      return;
    }
    let port: number | undefined;
    let host = e;
    const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(e);
    if (v6) {
      host = v6[1]!;
      port = v6[2] ? Number(v6[2]) : undefined;
    } else if (isIP(e) !== 6 && !/^[0-9a-f:]+\/\d+$/.test(e)) {
      const m = /^(.*):(\d+)$/.exec(e);
      if (m) {
        host = m[1]!;
        port = Number(m[2]);
      }
    }
    const cidr = /^(.+)\/(\d{1,3})$/.exec(host);
    if (cidr && isIP(cidr[1]!)) {
      const fam = isIP(cidr[1]!) === 6 ? "ipv6" : "ipv4";
      const bits = Number(cidr[2]);
      if (bits > (fam === "ipv6" ? 128 : 32)) return; // not a block: ignored, like any entry that matches nothing
      const list = new BlockList();
      list.addSubnet(cidr[1]!, bits, fam);
      this.#blocks.push({ list, port });
      return;
    }
    if (isIP(host)) {
      this.#ips.push({ ip: normalizeIp(host), port });
      return;
    }
    const name = host.replace(/^\*?\./, "").replace(/\.$/, "");
    if (name) this.#names.push({ name, port });
  }

  /** True when a connection to host:port must not use the proxy. */
  matches(host: string, port: number): boolean {
    if (this.#all) return true;
    const h = host
      .replace(/^\[|\]$/g, "")
      .toLowerCase()
      .replace(/\.$/, "");
    const portOk = (p: number | undefined) => p === undefined || p === port;
    const fam = isIP(h);
    if (fam) {
      const ip = normalizeIp(h);
      if (this.#ips.some((e) => e.ip === ip && portOk(e.port))) return true;
      const type = fam === 6 ? "ipv6" : "ipv4";
      return this.#blocks.some((b) => portOk(b.port) && b.list.check(h, type));
    }
    return this.#names.some((e) => portOk(e.port) && (h === e.name || h.endsWith(`.${e.name}`)));
  }
}

function normalizeIp(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  // One spelling per address: let URL canonicalize it (::0001 -> ::1).
  return new URL(`http://[${ip}]/`).hostname.replace(/^\[|\]$/g, "");
}

/** The first of `names` set (and not empty) in `env`, with its name. */
function envAny(env: NodeJS.ProcessEnv, names: string[]): { name: string; value: string } | undefined {
  for (const name of names) {
    const value = env[name]?.trim();
    if (value) return { name, value };
  }
  return undefined;
}

/** The setting that turns the proxy off even when HTTPS_PROXY is set. */
export const DIRECT = "direct";

/**
 * The route for this context's controller and router connections. `setting`: a proxy URL (see parseProxyUrl),
 * `direct` (no proxy, whatever the environment says), or undefined: `https_proxy` / `HTTPS_PROXY` from `env` (the
 * lower-case form first, as curl reads it). NO_PROXY (`no_proxy` first, then `NO_PROXY`) exempts destinations in
 * both cases. A malformed setting or variable throws ZITI_EGRESS_PROXY_INVALID naming where it came from.
 */
export function egressRoute(setting: string | undefined, env: NodeJS.ProcessEnv = process.env): EgressRoute {
  let proxy: EgressProxy | undefined;
  const s = setting?.trim();
  if (s && s.toLowerCase() !== DIRECT) proxy = parseProxyUrl(s, "egressProxy");
  else if (!s) {
    const e = envAny(env, ["https_proxy", "HTTPS_PROXY"]);
    if (e) proxy = parseProxyUrl(e.value, e.name);
  }
  if (!proxy) return { proxy: undefined, proxyFor: () => undefined, description: DIRECT };
  const np = envAny(env, ["no_proxy", "NO_PROXY"]);
  const noProxy = new NoProxy(np?.value ?? "");
  const p = proxy;
  return {
    proxy: p,
    proxyFor: (host, port) => (noProxy.matches(host, port) ? undefined : p),
    description:
      `${p.display} (from ${p.source}` +
      (noProxy.entries.length ? `; ${np!.name}: ${noProxy.entries.join(",")}` : "") +
      ")",
  };
}

const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: ([^\r\n]*))?$/;

/**
 * What the proxy answered to CONNECT: status, reason, headers (lower-case names, every value of a repeated one in
 * order), and the bytes after the head (the tunnel's first bytes).
 */
export interface ConnectAnswer {
  status: number;
  reason: string;
  headers: Map<string, string[]>;
  rest: Buffer;
}

/**
 * Reads a CONNECT answer's head from `buf`: undefined while incomplete, else the parsed answer. Throws on bytes
 * that are not an HTTP/1.x answer head.
 */
export function parseConnectAnswer(buf: Buffer): ConnectAnswer | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) {
    // A status line must start the answer: say so as soon as what has come cannot begin one.
    const eol = buf.indexOf("\r\n");
    const first = buf.subarray(0, eol >= 0 ? eol : Math.min(buf.length, 64)).toString("latin1");
    const ok = eol >= 0 ? STATUS_LINE.test(first) : /^(H(T(T(P(\/(1(\.([01]( .*)?)?)?)?)?)?)?)?)?$/s.test(first);
    if (!ok) throw new Error(`not an HTTP answer: "${printable(first)}"`);
    return undefined;
  }
  const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
  const m = STATUS_LINE.exec(lines[0]!);
  if (!m) throw new Error(`not an HTTP answer: "${printable(lines[0]!)}"`);
  const headers = new Map<string, string[]>();
  for (const line of lines.slice(1)) {
    const i = line.indexOf(":");
    if (i <= 0) throw new Error(`malformed header line in the answer: "${printable(line)}"`);
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    const seen = headers.get(name);
    if (seen) seen.push(value);
    else headers.set(name, [value]);
  }
  return { status: Number(m[1]), reason: printable(m[2] ?? ""), headers, rest: buf.subarray(end + 4) };
}

/** At most 120 characters, printable ASCII only: a peer's text as it may appear in a message. */
function printable(s: string): string {
  const t = s.replace(/[^\x20-\x7e]/g, "?");
  return t.length > 120 ? `${t.slice(0, 120)}...` : t;
}

/**
 * The authentication schemes a 407's Proxy-Authenticate (or a 401's WWW-Authenticate) offers, as sent: each
 * challenge starts with its scheme, a token not followed by "=" (which would make it a parameter of the challenge
 * before it, RFC 9110 11.6.1). Empty when the answer names none.
 */
export function challengeSchemes(answer: ConnectAnswer): string[] {
  const values = answer.headers.get(answer.status === 401 ? "www-authenticate" : "proxy-authenticate") ?? [];
  const out: string[] = [];
  for (const v of values) {
    for (const m of v.matchAll(/(?:^|,)\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?=\s|,|$)(?!\s*=)/g)) {
      if (!out.some((s) => s.toLowerCase() === m[1]!.toLowerCase())) out.push(m[1]!);
    }
  }
  return out;
}

/** Where a proxy's credentials are set, for the 407 message. */
function credentialsHint(p: EgressProxy): string {
  const where =
    p.source === "egressProxy"
      ? "egressProxy (the config field, --egress-proxy or SCRAPEZ_EGRESS_PROXY)"
      : `the ${p.source} environment variable`;
  return `set credentials in ${where} as http://user:password@${hostPort(p.host, p.port)}`;
}

/**
 * Opens a TCP connection to `proxy` and asks it to CONNECT to host:port. Resolves with the socket once the proxy
 * answered 2xx, not flowing, with any bytes the proxy sent after its answer put back to be read first (they are the
 * destination's). Rejects with a ZitiError naming the proxy (never its credentials) and what to do:
 * ZITI_EGRESS_PROXY_UNREACHABLE (no TCP connection, or no answer in time), ZITI_EGRESS_PROXY_AUTH (407, or 401),
 * ZITI_EGRESS_PROXY_REFUSED (403 or another refusal), ZITI_EGRESS_PROXY_BAD_ANSWER (not an HTTP answer).
 */
export function openTunnel(
  proxy: EgressProxy,
  target: { host: string; port: number },
  timeoutMs: number,
): Promise<net.Socket> {
  const dest = hostPort(target.host, target.port);
  const via = `egress proxy ${proxy.display} (from ${proxy.source})`;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: proxy.host, port: proxy.port });
    let connected = false;
    let head = Buffer.alloc(0);
    let settled = false;
    const finish = (err: ZitiError | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off("readable", onReadable);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) {
        socket.destroy();
        log("CONNECT %s via %s: %s", dest, proxy.display, err.message);
        reject(err);
      } else {
        log("CONNECT %s via %s: tunnel open", dest, proxy.display);
        resolve(socket);
      }
    };
    const fail = (code: (typeof ErrorCodes)[keyof typeof ErrorCodes], msg: string, cause?: unknown) =>
      finish(new ZitiError(code, msg, cause ? { cause } : undefined));
    const timer = setTimeout(
      () =>
        fail(
          ErrorCodes.EGRESS_PROXY_UNREACHABLE,
          connected
            ? `${via} did not answer CONNECT ${dest} within ${timeoutMs} ms: check the proxy's health`
            : `cannot reach ${via}: no TCP connection within ${timeoutMs} ms: check the proxy's address and that ` +
                "this host may reach it",
        ),
      timeoutMs,
    );
    const onError = (err: NodeJS.ErrnoException) =>
      fail(
        ErrorCodes.EGRESS_PROXY_UNREACHABLE,
        connected
          ? `${via} closed the connection while answering CONNECT ${dest}: ${err.code ?? err.message}`
          : `cannot reach ${via}: ${err.code ? `${err.code}: ` : ""}${err.message}: check that the proxy runs and ` +
              "its address in the setting is right",
        err,
      );
    const onClose = () =>
      fail(
        ErrorCodes.EGRESS_PROXY_BAD_ANSWER,
        `${via} closed the connection without answering CONNECT ${dest}` +
          (head.length ? ` (after ${head.length} bytes of an incomplete answer)` : ""),
      );
    // Paused mode (read() on 'readable'), never flowing: nothing the destination sends after the answer can be
    // emitted to nobody before the caller (TLS) reads the socket.
    const onReadable = () => {
      if (settled) return;
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) {
        head = Buffer.concat([head, chunk]);
        if (onHead()) return;
      }
    };
    /** Judges what came so far; true once settled. */
    const onHead = (): boolean => {
      let ans: ConnectAnswer | undefined;
      try {
        ans = parseConnectAnswer(head);
      } catch (err) {
        fail(
          ErrorCodes.EGRESS_PROXY_BAD_ANSWER,
          `${via} answered CONNECT ${dest} with ${(err as Error).message}: is it an HTTP proxy?`,
        );
        return true;
      }
      if (!ans) {
        if (head.length > MAX_HEAD_BYTES) {
          fail(
            ErrorCodes.EGRESS_PROXY_BAD_ANSWER,
            `${via} answered CONNECT ${dest} with a head larger than ${MAX_HEAD_BYTES} bytes`,
          );
          return true;
        }
        return false;
      }
      const status = `${ans.status}${ans.reason ? ` ${ans.reason}` : ""}`;
      if (ans.status >= 200 && ans.status < 300) {
        if (ans.rest.length) socket.unshift(ans.rest);
        finish(undefined);
        return true;
      }
      // 407 is the standard answer; some proxies (tinyproxy) answer a CONNECT without valid credentials with 401.
      if (ans.status === 407 || ans.status === 401) {
        const schemes = challengeSchemes(ans);
        if (schemes.length > 0 && !schemes.some((s) => s.toLowerCase() === "basic")) {
          fail(
            ErrorCodes.EGRESS_PROXY_AUTH,
            `${via} answered CONNECT ${dest} with ${status}: it asks for ${printable(schemes.join(", "))} ` +
              "authentication, and scrapez speaks only Basic to an egress proxy: allow Basic for this client on " +
              "the proxy, or go through a local relay that speaks the proxy's scheme (for NTLM, cntlm)",
          );
          return true;
        }
        fail(
          ErrorCodes.EGRESS_PROXY_AUTH,
          proxy.auth
            ? `${via} refused the credentials for CONNECT ${dest} (${status}): proxy authentication required: ` +
                `check the user and password (${credentialsHint(proxy)})`
            : `${via} answered CONNECT ${dest} with ${status}: proxy authentication required: ${credentialsHint(proxy)}`,
        );
        return true;
      }
      if (ans.status === 403) {
        fail(
          ErrorCodes.EGRESS_PROXY_REFUSED,
          `${via} denied CONNECT ${dest} (${status}): the proxy's rules do not allow this destination or port; ask ` +
            `its administrator to allow CONNECT to ${dest}, or list the host in NO_PROXY if it is reachable directly`,
        );
        return true;
      }
      fail(
        ErrorCodes.EGRESS_PROXY_REFUSED,
        `${via} refused CONNECT ${dest} (${status})` +
          (ans.status >= 500
            ? ": the proxy could not reach the destination (is it up, and its name resolvable there?)"
            : ""),
      );
      return true;
    };
    socket.on("readable", onReadable);
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.once("connect", () => {
      connected = true;
      socket.setNoDelay(true);
      const lines = [`CONNECT ${dest} HTTP/1.1`, `Host: ${dest}`];
      if (proxy.auth) {
        const token = Buffer.from(`${proxy.auth.user}:${proxy.auth.password}`).toString("base64");
        lines.push(`Proxy-Authorization: Basic ${token}`);
      }
      socket.write(`${lines.join("\r\n")}\r\n\r\n`);
    });
  });
}

/**
 * The socket to run TLS over for a connection to host:port: a CONNECT tunnel when `route` sends it through a
 * proxy, undefined when it goes direct (the caller then connects itself).
 */
export async function egressSocket(
  route: EgressRoute | undefined,
  host: string,
  port: number,
  timeoutMs: number,
): Promise<net.Socket | undefined> {
  const proxy = route?.proxyFor(host, port);
  return proxy ? openTunnel(proxy, { host, port }, timeoutMs) : undefined;
}
