/**
 * Random and mutated HTTP/1.x requests as raw bytes, and a runner that sends one over a Duplex (a TCP connection
 * to a real process, or one end of an in-memory pair) and classifies what came back. Shared by
 * test/unit/http-fuzz.test.ts, test/integration/http-fuzz.test.ts and bench/fuzz.ts.
 *
 * The property checked for every case: the server answers with a well-formed HTTP status line and header block,
 * or closes the connection, within a time limit after the client finished sending (FIN), and never answers with
 * anything else. Cases the client abandons half-way (destroyed mid-request) only check that the server lives on.
 */
import type { Duplex } from "node:stream";

export type Rng = () => number;

export const int = (r: Rng, n: number): number => Math.floor(r() * n);
export const pick = <T>(r: Rng, xs: readonly T[]): T => xs[int(r, xs.length)]!;

export interface FuzzCase {
  kind: string;
  /** Written in this order, one write per chunk (so the server may see them in separate reads). */
  chunks: Buffer[];
  /** "end": expect an answer, or a close after the client half-closes; "abort": destroy right after the chunks. */
  finish: "end" | "abort";
}

export type Outcome = "answered" | "closed" | "aborted" | "hung" | "malformed";

export interface CaseResult {
  outcome: Outcome;
  /** The status code of a well-formed answer. */
  status?: number;
  /** The first bytes received (for failure reports). */
  head: string;
}

const METHODS = ["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"];
const ODD_METHODS = ["get", "G ET", "", "PRI", "BREW", "GET\x00", "M".repeat(300), "SEARCH", "PROPFIND", "\u00e9T"];
const VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", "HTTP/9.9", ""];
const PATHS = [
  "/metrics",
  "/",
  "/metrics?x=1&y=%zz",
  "/probe/../admin",
  "/probe/..%2f..%2fadmin",
  "/probe\\..\\admin",
  "/%00",
  "/%",
  "//double//slash",
  "/" + "a".repeat(300),
  "/?" + "q=".repeat(500),
  "/sd",
  "/sd?service=node",
  "/sd?service=*?*?*?*?*?*?*?*!",
  "/sd?service=" + "*".repeat(400),
  "/-/healthy",
  "/-/ready",
  "/scrape/node/metrics",
  "/scrape/nosuch/metrics",
  "/scrape/%zz/metrics",
  "/scrape/bind-a~node/metrics",
  "/scrape/" + "x".repeat(200) + "/m",
  "*",
  "",
  "metrics",
  "/\r",
  "/\u00fc\u00f1\u00ee",
];
const HEADERS: (() => string)[] = [
  () => "Accept: */*",
  () => "Accept-Encoding: gzip",
  () => "User-Agent: Prometheus/2.42.0",
  () => "Connection: close",
  () => "Connection: keep-alive, Upgrade",
  () => "Connection: x-hop, te",
  () => "Upgrade: websocket",
  () => "Expect: 100-continue",
  () => "Expect: bogus",
  () => "Content-Length: 0",
  () => "Content-Length: 5",
  () => "Content-Length: -1",
  () => "Content-Length: 99999999999999999999",
  () => "Content-Length: 1, 2",
  () => "Content-Length: abc",
  () => "Transfer-Encoding: chunked",
  () => "Transfer-Encoding: gzip, chunked",
  () => "Transfer-Encoding: chunked, identity",
  () => "Transfer-Encoding: x",
  () => "X-Prometheus-Scrape-Timeout-Seconds: 1",
  () => "X-Prometheus-Scrape-Timeout-Seconds: -5",
  () => "X-Prometheus-Scrape-Timeout-Seconds: 1e308",
  () => "X-Prometheus-Scrape-Timeout-Seconds: NaN",
  () => "Proxy-Authorization: Bearer nope",
  () => "Proxy-Authorization: Basic !!!",
  () => "Authorization: Basic " + "A".repeat(2000),
  () => "Proxy-Connection: keep-alive",
  () => "Host: node",
  () => "Host: ",
  () => "Host: evil.example:80",
  () => "Host: 127.0.0.1",
  () => "CallerId: prometheus-central",
  () => "X-Forwarded-For: 1.2.3.4",
  () => "NoColonHere",
  () => "Bad Name: value",
  () => " leading-space: value",
  () => "X-Fold: a\r\n  folded continuation",
  () => "X-Ctl: a\x01b",
  () => "X-Nul: a\x00b",
  () => "X-Utf8: \u00e9\u00e8",
  () => ": empty-name",
  () => "X-Long: " + "v".repeat(9000),
  () => "X-Huge: " + "h".repeat(70_000),
];

function requestLine(r: Rng, surface: "proxy" | "bind", hosts: readonly string[]): { line: string; method: string } {
  const method = r() < 0.9 ? pick(r, METHODS) : pick(r, ODD_METHODS);
  const host = pick(r, hosts);
  let target: string;
  if (method === "CONNECT") {
    target = pick(r, [`${host}:80`, `${host}:443`, host, `${host}:99999`, `${host}:-1`, "[::1]:80", "", "/path"]);
  } else {
    const path = pick(r, PATHS);
    const form = surface === "proxy" ? int(r, 6) : int(r, 10);
    target =
      form === 0
        ? `http://${host}${path.startsWith("/") ? path : `/${path}`}`
        : form === 1
          ? `http://${host}:${pick(r, ["80", "9100", "0", "65536", "x"])}${path}`
          : form === 2 && surface === "proxy"
            ? pick(r, [
                `https://${host}/metrics`,
                `ftp://${host}/`,
                `http://user:pw@${host}/`,
                `http://${host}`,
                "http://",
              ])
            : path;
  }
  const version = pick(r, VERSIONS);
  const sep = r() < 0.95 ? " " : pick(r, ["  ", "\t", ""]);
  return { line: `${method}${sep}${target}${version ? `${sep}${version}` : ""}`, method };
}

function chunkedBody(r: Rng): string {
  const parts: string[] = [];
  const n = int(r, 4);
  for (let i = 0; i < n; i++) {
    const len = int(r, 20);
    const size = r() < 0.8 ? len.toString(16) : pick(r, ["zz", "-1", "ffffffffffffffff", "", "1;ext=1", " 5"]);
    parts.push(`${size}\r\n${"b".repeat(len)}${r() < 0.9 ? "\r\n" : ""}`);
  }
  parts.push(r() < 0.8 ? "0\r\n\r\n" : pick(r, ["0\r\n", "0\r\nX-Trailer: 1\r\n\r\n", "", "0\r\n\r\nextra"]));
  return parts.join("");
}

/** A request built from parts, each possibly odd; `valid` leans towards well-formed requests. */
function generated(r: Rng, surface: "proxy" | "bind", hosts: readonly string[], valid: boolean): string {
  const { line, method } = valid
    ? {
        line:
          surface === "proxy"
            ? `GET http://${pick(r, hosts)}${pick(r, ["/metrics", "/", "/x?y=1"])} HTTP/1.1`
            : `GET ${pick(r, ["/metrics", "/", "/x?y=1"])} HTTP/1.1`,
        method: "GET",
      }
    : requestLine(r, surface, hosts);
  const headers: string[] = [];
  if (r() < 0.9) headers.push(`Host: ${pick(r, hosts)}`);
  const n = valid ? int(r, 3) : int(r, 8);
  for (let i = 0; i < n; i++) headers.push(pick(r, HEADERS)());
  if (!valid && r() < 0.03) for (let i = 0; i < 150; i++) headers.push(`X-Many-${i}: ${i}`);
  let body = "";
  const chunked = headers.some((h) => /^transfer-encoding:.*chunked/i.test(h));
  if (chunked && !valid) body = chunkedBody(r);
  else if (!valid && method !== "GET" && r() < 0.5) body = "x".repeat(int(r, 40));
  const eol = valid || r() < 0.9 ? "\r\n" : pick(r, ["\n", "\r", "\r\r\n"]);
  return `${line}${eol}${headers.join(eol)}${headers.length ? eol : ""}${eol}${body}`;
}

/** Byte-level damage to a request: flips, inserts, deletes, duplicates, truncation. */
function mutate(r: Rng, s: Buffer): Buffer {
  let b = Buffer.from(s);
  const n = 1 + int(r, 4);
  for (let i = 0; i < n && b.length > 0; i++) {
    const at = int(r, b.length);
    switch (int(r, 6)) {
      case 0:
        b[at] = int(r, 256);
        break;
      case 1:
        b = Buffer.concat([b.subarray(0, at), Buffer.from([int(r, 256)]), b.subarray(at)]);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + int(r, 8)))]);
        break;
      case 3: {
        const len = Math.min(b.length - at, 1 + int(r, 40));
        b = Buffer.concat([b.subarray(0, at + len), b.subarray(at, at + len), b.subarray(at + len)]);
        break;
      }
      case 4:
        b = Buffer.concat([
          b.subarray(0, at),
          Buffer.from(pick(r, ["\r\n", "\r\n\r\n", ":", " ", "\x00", "%"])),
          b.subarray(at),
        ]);
        break;
      default:
        b = b.subarray(0, at);
    }
  }
  return b;
}

function split(r: Rng, b: Buffer): Buffer[] {
  if (b.length < 2 || r() < 0.6) return [b];
  const out: Buffer[] = [];
  let off = 0;
  while (off < b.length) {
    const n = 1 + int(r, Math.max(1, Math.ceil(b.length / 3)));
    out.push(b.subarray(off, off + n));
    off += n;
  }
  return out;
}

/**
 * One fuzz case. `hosts` are names the request may address (service names, unknown names, addresses).
 * Mix: ~15 % well-formed, ~40 % generated from odd parts, ~25 % mutated, ~8 % pipelined pairs, ~7 % random bytes,
 * ~5 % half-sent and abandoned.
 */
export function httpCase(r: Rng, surface: "proxy" | "bind", hosts: readonly string[]): FuzzCase {
  const x = r();
  let kind: string;
  let bytes: Buffer;
  let finish: FuzzCase["finish"] = "end";
  if (x < 0.15) {
    kind = "valid";
    bytes = Buffer.from(generated(r, surface, hosts, true), "latin1");
  } else if (x < 0.55) {
    kind = "generated";
    bytes = Buffer.from(generated(r, surface, hosts, false), "utf8");
  } else if (x < 0.8) {
    kind = "mutated";
    bytes = mutate(r, Buffer.from(generated(r, surface, hosts, r() < 0.5), "utf8"));
  } else if (x < 0.88) {
    kind = "pipelined";
    bytes = Buffer.from(generated(r, surface, hosts, true) + generated(r, surface, hosts, r() < 0.5), "utf8");
  } else if (x < 0.95) {
    kind = "random-bytes";
    bytes = Buffer.alloc(1 + int(r, 600));
    for (let i = 0; i < bytes.length; i++) bytes[i] = int(r, 256);
  } else {
    kind = "half-sent";
    const full = Buffer.from(generated(r, surface, hosts, r() < 0.5), "utf8");
    bytes = full.subarray(0, int(r, full.length));
    finish = "abort";
  }
  return { kind, chunks: split(r, bytes), finish };
}

const STATUS_LINE = /^HTTP\/1\.[01] [1-5]\d\d(?: [^\r\n]*)?\r\n/;

/**
 * Sends one case over `s` and classifies the answer. "answered": a well-formed status line and a complete header
 * block (1xx interim answers are skipped); "closed": closed with no bytes; "hung": neither within `timeoutMs` of
 * the client's FIN, which it sends `graceMs` after the request if no answer came by then; "malformed": bytes that
 * are not an HTTP answer. Always destroys `s` before resolving.
 */
export function runCase(s: Duplex, c: FuzzCase, timeoutMs: number, graceMs = 300): Promise<CaseResult> {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (outcome: Outcome, status?: number) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ outcome, ...(status !== undefined ? { status } : {}), head: got.subarray(0, 120).toString("latin1") });
    };
    const check = () => {
      let text = got.toString("latin1");
      for (;;) {
        if (text.length >= 9 && !/^HTTP\/1\.[01] /.test(text.slice(0, 9))) return finish("malformed");
        const end = text.indexOf("\r\n\r\n");
        if (end < 0) {
          if (text.length > 256 * 1024) finish("malformed");
          return;
        }
        if (!STATUS_LINE.test(text)) return finish("malformed");
        const status = Number(text.slice(9, 12));
        if (status >= 200) return finish("answered", status);
        text = text.slice(end + 4); // an interim 1xx: the real answer follows
        if (text.length === 0) return;
      }
    };
    s.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d]);
      check();
    });
    s.on("error", () => undefined);
    s.on("close", () => {
      if (done) return;
      if (c.finish === "abort") return finish("aborted");
      if (got.length === 0) return finish("closed");
      check();
      if (!done) finish(got.toString("latin1").startsWith("HTTP/1.") ? "closed" : "malformed");
    });
    s.on("end", () => {
      if (!done && got.length === 0 && c.finish === "end") finish("closed");
    });
    const write = (i: number) => {
      if (done) return;
      if (i >= c.chunks.length) {
        if (c.finish === "abort") return finish("aborted");
        // Like a real client, keep the connection open for the answer; if none comes soon (the request may be
        // incomplete), half-close, after which the server must answer or close within timeoutMs.
        timer = setTimeout(() => {
          s.end();
          timer = setTimeout(() => finish("hung"), timeoutMs);
        }, graceMs);
        return;
      }
      s.write(c.chunks[i]!, () => setImmediate(() => write(i + 1)));
    };
    write(0);
  });
}

/** Counts per outcome and per kind, and the failures (hung or malformed), for reports. */
export class FuzzTally {
  readonly outcomes: Record<string, number> = {};
  readonly statuses: Record<string, number> = {};
  readonly failures: { kind: string; outcome: Outcome; request: string; head: string }[] = [];
  total = 0;

  add(c: FuzzCase, r: CaseResult): void {
    this.total++;
    this.outcomes[r.outcome] = (this.outcomes[r.outcome] ?? 0) + 1;
    if (r.status !== undefined) this.statuses[r.status] = (this.statuses[r.status] ?? 0) + 1;
    if ((r.outcome === "hung" || r.outcome === "malformed") && this.failures.length < 20) {
      this.failures.push({
        kind: c.kind,
        outcome: r.outcome,
        request: JSON.stringify(Buffer.concat(c.chunks).subarray(0, 300).toString("latin1")),
        head: JSON.stringify(r.head),
      });
    }
  }

  get failed(): number {
    return (this.outcomes.hung ?? 0) + (this.outcomes.malformed ?? 0);
  }

  summary(): string {
    const o = Object.entries(this.outcomes)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ");
    const st = Object.entries(this.statuses)
      .sort()
      .map(([k, v]) => `${k}:${v}`)
      .join(" ");
    return `${this.total} requests: ${o}; statuses ${st}`;
  }
}

/** Runs `count` cases with `concurrency` in flight; `connect` opens a fresh connection per case. */
export async function runFuzz(opts: {
  count: number;
  concurrency: number;
  rngFor: (i: number) => Rng;
  surface: "proxy" | "bind";
  hosts: readonly string[];
  connect: () => Duplex;
  timeoutMs: number;
  /** Stop early once this many cases failed (a server that stopped answering would otherwise take count x timeout). */
  maxFailures?: number;
  onProgress?: (done: number) => void;
}): Promise<FuzzTally> {
  const tally = new FuzzTally();
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= opts.count || tally.failed >= (opts.maxFailures ?? Infinity)) return;
      const c = httpCase(opts.rngFor(i), opts.surface, opts.hosts);
      tally.add(c, await runCase(opts.connect(), c, opts.timeoutMs));
      if (opts.onProgress && tally.total % 1000 === 0) opts.onProgress(tally.total);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  return tally;
}
