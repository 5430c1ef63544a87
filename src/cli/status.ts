/**
 * `scrapez status [--proxy URL]`: the proxy's /status.json as a table in a terminal (colour on a TTY, plain when
 * piped) for operators and scripts. Exit codes: 0 no target failing, 1 a target (of those matching --filter and
 * --state) is failing, 2 usage error,
 * 3 the proxy could not be asked (unreachable, refused our credentials, or answered something else).
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { parseArgs } from "node:util";
import type { StatusDocument, TargetRow } from "../proxy/status/json.js";
import { cleanText, formatAge, formatBytes, formatMs } from "../common/format.js";
import { type Command } from "./registry.js";
import { DEFAULT_PROXY_URL } from "../proxy/config.js";

const HELP = `Usage: scrapez status [--proxy URL] [--token-file F] [options]

Shows every overlay target of a running scrapez proxy (its /status.json): state, last scrape, status and
error, p50/p99 latency and size over the last 5 minutes, and who scraped it.

Options:
  --proxy URL         the proxy (default ${DEFAULT_PROXY_URL}); http://user:password@host:port for basic auth
  --token-file F      send the bearer token in F (auth.bearerTokenFile of the proxy)
  --ca-file F         CA bundle for an https:// proxy
  --cert-file F, --key-file F
                      client certificate for a proxy with tls.clientCA
  --filter TEXT       only targets whose service, replica or host contains TEXT
  --state S           only targets in state S: failing, ok or never (repeatable)
  --json              print the status document as JSON (docs/status.md) instead of a table
  --timeout SECONDS   give up after this long (default 10)
  -h, --help          show this help

Exit status: 0 no target is failing, 1 at least one (matching) target is failing, 2 usage error,
3 the proxy could not be asked (unreachable, refused the credentials, or not a scrapez proxy).
`;

export interface StatusIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
  /** Colour and width only on a terminal. */
  isTTY: boolean;
  columns?: number | undefined;
  env: NodeJS.ProcessEnv;
}

class UsageError extends Error {}
class FetchError extends Error {}

const ANSI = { red: "\x1b[31m", green: "\x1b[32m", dim: "\x1b[2m", bold: "\x1b[1m", reset: "\x1b[0m" };

/** Peer-controlled text without control characters (no terminal escapes from a service name). */
const clean = (s: string | null | undefined, max = 1_000) => cleanText(s ?? "", max);

interface Column {
  title: string;
  get(r: TargetRow, now: number): string;
  right?: boolean;
}

const COLUMNS: Column[] = [
  { title: "STATE", get: (r) => (r.state === "never" ? "never" : r.state) },
  { title: "SERVICE", get: (r) => clean(r.service, 80) },
  { title: "REPLICA", get: (r) => (r.replica === null ? "-" : clean(r.replica, 60)) },
  {
    title: "LAST",
    get: (r, now) =>
      r.lastScrape === null ? "-" : formatAge(Math.max(0, Math.round((now - Date.parse(r.lastScrape)) / 1000))),
  },
  { title: "STATUS", get: (r) => (r.lastStatus === null ? "-" : String(r.lastStatus)), right: true },
  { title: "P50", get: (r) => formatMs(r.window.p50Ms).replace("–", "-"), right: true },
  { title: "P99", get: (r) => formatMs(r.window.p99Ms).replace("–", "-"), right: true },
  { title: "SIZE", get: (r) => formatBytes(r.window.avgBytes).replace("–", "-"), right: true },
  { title: "SCRAPED BY", get: (r) => (r.scrapedBy ? clean(r.scrapedBy.principal, 60) : "-") },
  { title: "ERROR", get: (r) => clean(r.lastError) },
];

/** The table as text; `color` adds ANSI colours, `width` cuts the last column to fit a terminal. */
export function formatTable(doc: StatusDocument, opts: { color: boolean; width?: number | undefined }): string {
  const now = Date.parse(doc.generatedAt);
  const c = (code: keyof typeof ANSI, s: string) => (opts.color ? `${ANSI[code]}${s}${ANSI.reset}` : s);
  const lines: string[] = [];
  for (const id of doc.proxy.identities) {
    const routers = id.routers.length
      ? id.routers
          .map(
            (r) =>
              `${clean(r.routerId || "?", 60)} ${r.state}${r.latencyMs === null ? "" : ` ${formatMs(r.latencyMs)}`}`,
          )
          .join(", ")
      : "none connected yet";
    lines.push(`identity ${clean(id.name, 80)}  controller ${clean(id.controller ?? "-", 200)}  routers: ${routers}`);
  }
  const sl = doc.proxy.serviceList;
  lines.push(
    sl.loaded
      ? `service list refreshed ${formatAge(sl.ageSeconds)}${sl.error ? ` (last refresh failed: ${clean(sl.error)})` : ""}`
      : `service list not loaded: ${clean(sl.error ?? "not loaded yet")}`,
  );
  const s = doc.summary;
  lines.push(
    `${s.targets} targets: ${c(s.failing ? "red" : "dim", `${s.failing} failing`)}, ${c("green", `${s.ok} ok`)}, ` +
      `${s.never} never scraped${s.shown < s.matched || s.matched < s.targets ? ` (showing ${s.shown} of ${s.matched} matching)` : ""}`,
  );
  lines.push("");
  const cells = doc.targets.map((r) => COLUMNS.map((col) => col.get(r, now)));
  const widths = COLUMNS.map((col, i) => Math.max(col.title.length, ...cells.map((row) => row[i]!.length)));
  const last = COLUMNS.length - 1;
  const render = (vals: string[], colorFor?: TargetRow) => {
    const used = widths.slice(0, last).reduce((a, w) => a + w + 2, 0);
    return vals
      .map((v, i) => {
        let t = v;
        if (i === last) {
          if (opts.width && opts.width > used + 10 && t.length > opts.width - used) {
            t = `${t.slice(0, opts.width - used - 1)}…`;
          }
          return t;
        }
        t = COLUMNS[i]!.right ? t.padStart(widths[i]!) : t.padEnd(widths[i]!);
        if (i === 0 && colorFor)
          t = c(colorFor.state === "failing" ? "red" : colorFor.state === "ok" ? "green" : "dim", t);
        return t;
      })
      .join("  ")
      .trimEnd();
  };
  lines.push(opts.color ? c("bold", render(COLUMNS.map((col) => col.title))) : render(COLUMNS.map((col) => col.title)));
  doc.targets.forEach((r, i) => lines.push(render(cells[i]!, r)));
  if (doc.targets.length === 0) lines.push(s.targets ? "(no target matches)" : "(no targets discovered yet)");
  return `${lines.join("\n")}\n`;
}

interface Options {
  url: URL;
  headers: Record<string, string>;
  tls: https.RequestOptions;
  timeoutMs: number;
}

function fetchStatus(o: Options): Promise<StatusDocument> {
  const mod = o.url.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(o.url, { headers: o.headers, timeout: o.timeoutMs, ...o.tls }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (d: Buffer) => {
        size += d.length;
        if (size > 64 * 1024 * 1024) return req.destroy(new FetchError("the answer is larger than 64 MiB"));
        chunks.push(d);
      });
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode === 401 || res.statusCode === 407) {
          return reject(
            new FetchError(
              `the proxy refused our credentials (HTTP ${res.statusCode}): give --token-file, or user:password@ in --proxy`,
            ),
          );
        }
        if (res.statusCode !== 200) {
          return reject(new FetchError(`the proxy answered HTTP ${res.statusCode}: ${clean(text, 300)}`));
        }
        try {
          const doc = JSON.parse(text) as StatusDocument;
          if (typeof doc !== "object" || doc === null || !Array.isArray(doc.targets) || !doc.summary) {
            throw new Error("not a status document");
          }
          resolve(doc);
        } catch (err) {
          reject(
            new FetchError(
              `the answer is not scrapez's status JSON (${clean((err as Error).message, 200)}); is it a scrapez proxy?`,
            ),
          );
        }
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new FetchError(`no answer within ${o.timeoutMs / 1000} s`)));
    req.on("error", reject);
  });
}

function parse(argv: string[]): (Options & { json: boolean }) | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        proxy: { type: "string", short: "p" },
        "token-file": { type: "string" },
        "ca-file": { type: "string" },
        "cert-file": { type: "string" },
        "key-file": { type: "string" },
        filter: { type: "string" },
        state: { type: "string", multiple: true },
        json: { type: "boolean" },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) return "help";
  let url: URL;
  const raw = values.proxy ?? DEFAULT_PROXY_URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`);
  } catch {
    throw new UsageError(`--proxy ${JSON.stringify(raw)} is not a URL (e.g. http://127.0.0.1:9480)`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new UsageError("--proxy must be http:// or https://");
  const headers: Record<string, string> = { accept: "application/json" };
  if (url.username || url.password) {
    const user = decodeURIComponent(url.username);
    const pass = decodeURIComponent(url.password);
    headers.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString("base64")}`;
    url.username = "";
    url.password = "";
  }
  const read = (flag: string, f: string | undefined) => {
    if (f === undefined) return undefined;
    try {
      return readFileSync(f);
    } catch (err) {
      throw new UsageError(`--${flag}: cannot read ${f}: ${(err as Error).message}`);
    }
  };
  const token = read("token-file", values["token-file"])?.toString("utf8").trim();
  if (values["token-file"] !== undefined && !token)
    throw new UsageError(`--token-file: ${values["token-file"]} is empty`);
  if (token) headers.authorization = `Bearer ${token}`;
  if (!!values["cert-file"] !== !!values["key-file"])
    throw new UsageError("give both --cert-file and --key-file, or neither");
  const tls: https.RequestOptions = {};
  const ca = read("ca-file", values["ca-file"]);
  const cert = read("cert-file", values["cert-file"]);
  const key = read("key-file", values["key-file"]);
  if (ca) tls.ca = ca;
  if (cert && key) Object.assign(tls, { cert, key });
  const timeout = values.timeout === undefined ? 10 : Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 600)
    throw new UsageError("--timeout must be 0-600 seconds");
  const states = (values.state ?? []).flatMap((s) => s.split(","));
  for (const s of states) {
    if (!["failing", "ok", "never"].includes(s))
      throw new UsageError(`--state ${JSON.stringify(s)}: expected failing, ok or never`);
  }
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/status.json`;
  url.search = "";
  if (values.filter) url.searchParams.set("q", values.filter);
  for (const s of states) url.searchParams.append("state", s);
  return { url, headers, tls, timeoutMs: timeout * 1000, json: !!values.json };
}

/** The command, with its input and output passed in (tests run it in-process). Resolves to the exit code. */
export async function runStatus(argv: string[], io: StatusIo): Promise<number> {
  let o;
  try {
    o = parse(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    io.stderr.write(`scrapez status: ${err.message}\n\n${HELP}`);
    return 2;
  }
  if (o === "help") {
    io.stdout.write(HELP);
    return 0;
  }
  const where = `${o.url.protocol}//${o.url.host}`;
  let doc: StatusDocument;
  try {
    doc = await fetchStatus(o);
  } catch (err) {
    const e = err as Error & { code?: string };
    const why =
      e instanceof FetchError
        ? e.message
        : e.code === "ECONNREFUSED"
          ? "connection refused: is scrapez proxy running there? (--proxy URL)"
          : e.code === "ENOTFOUND"
            ? "no such host"
            : `${e.code ? `${e.code}: ` : ""}${e.message}`;
    io.stderr.write(`scrapez status: cannot get the status from ${where}: ${why}\n`);
    return 3;
  }
  if (o.json) io.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  else {
    const color = io.isTTY && io.env.NO_COLOR === undefined && io.env.TERM !== "dumb";
    io.stdout.write(formatTable(doc, { color, width: io.isTTY ? io.columns : undefined }));
  }
  // Failing rows sort first, so a failing target that matches the filters is always in `targets`.
  return doc.targets.some((r) => r.state === "failing") ? 1 : 0;
}

export const command: Command = {
  run: (argv) =>
    runStatus(argv, {
      stdout: process.stdout,
      stderr: process.stderr,
      isTTY: process.stdout.isTTY === true,
      columns: process.stdout.columns,
      env: process.env,
    }),
};
