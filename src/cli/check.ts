/**
 * `scrapez check --config F`: validates bind, proxy and federation configs with the same loaders the commands use,
 * without starting anything (no identity is opened, no socket, no controller). For CI pipelines and the chart tests.
 * A proxy config's web config (`webConfigFile`, or `--web.config.file` as the proxy takes it) is checked as the proxy
 * checks it at start: the exporter-toolkit format, the TLS files it names, and the proxy's own rules with its config.
 */
import { existsSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import YAML from "yaml";
import { loadBindConfig, unpinnedCallers, unpinnedWarning } from "../bind/config.js";
import type { LoadOptions } from "../common/config/errors.js";
import { loadFederationConfig } from "../generate/config.js";
import { createLogger } from "../common/log.js";
import { loadProxyConfig, type ProxyConfig } from "../proxy/config.js";
import { loadWebConfig, type WebConfig } from "../proxy/web-config.js";
import { WebListener } from "../proxy/web-listener.js";
import { type Command } from "./registry.js";

const HELP = `Usage: scrapez check --config <file> [--config <file> ...] [--kind bind|proxy|federation] [--no-files]
                     [--web.config.file <file>]
       scrapez check --web.config.file <file>

Validates scrapez configs without starting anything: the same checks \`scrapez bind\`, \`scrapez proxy\` and
\`scrapez generate\` make at start, each error naming the field (targets[1].upstream: not an http(s) URL).

  --kind K      bind, proxy or federation. Default: told from the content (targets: bind, identities: proxy,
                clusters: federation).
  --no-files    do not require the files a config names (identity, TLS, token and password files) to exist:
                for CI, or a rendered ConfigMap checked where its Secret is not mounted. Their fields are still
                checked. A web config that is not there is then not checked either (one that is there is
                checked whole, the TLS files it names included).
  --web.config.file F
                the exporter-toolkit web config scrapez proxy would get with this flag (tls_server_config,
                basic_auth_users, http_server_config): each proxy config is checked with it, as
                \`scrapez proxy --config C --web.config.file F\` would start, and it is checked the same way when
                a proxy config names it (webConfigFile). Without a proxy config it is checked alone: its format
                and files, not the rules that need the proxy config (auth on a non-loopback listen address).

The SCRAPEZ_IDENTITY and SCRAPEZ_LOG_LEVEL overrides of scrapez bind apply, as they would at start (and
SCRAPEZ_WEB_CONFIG_FILE of scrapez proxy).
Exit status: 0 every config is valid, 1 one is not (or cannot be read), 2 usage error.
`;

export const KINDS = ["bind", "proxy", "federation"] as const;
export type Kind = (typeof KINDS)[number];

/** The top-level key that marks each kind. */
const MARKER: Record<Kind, string> = { bind: "targets", proxy: "identities", federation: "clusters" };

export interface CheckIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
  env: NodeJS.ProcessEnv;
}

/** The kind of a parsed config, told from its top-level keys; a string saying why not when it cannot be told. */
export function detectKind(raw: unknown): Kind | { reason: string } {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    return { reason: "it is not a YAML mapping (a config is key: value pairs at the top level)" };
  }
  const found = KINDS.filter((k) => MARKER[k] in raw);
  if (found.length === 1) return found[0]!;
  const keys = KINDS.map((k) => `${MARKER[k]} (${k})`).join(", ");
  if (found.length === 0) return { reason: `it has none of the keys ${keys}: give --kind` };
  return { reason: `it has the keys of several kinds (${found.map((k) => MARKER[k]).join(", ")}): give --kind` };
}

/** What a parsed web config asks of the listener, for the summary line. */
function describeWeb(w: WebConfig): string {
  const users = w.users.size;
  return [
    w.tls ? `TLS, client auth ${w.tls.clientAuth}` : "plain HTTP",
    ...(w.tls?.allowedSans ? [`${w.tls.allowedSans.length} allowed SAN(s)`] : []),
    ...(users ? [`${users} basic auth user(s)`] : []),
    ...(Object.keys(w.headers).length ? [`${Object.keys(w.headers).length} header(s)`] : []),
  ].join(", ");
}

/** Nothing a check logs is wanted: its verdict is the error it throws. */
const silent = createLogger("error", {}, () => undefined);

/**
 * A proxy's web config as `scrapez proxy` checks it at start (src/proxy/web-listener.ts, with `config`): throws the
 * same error, which the proxy would log as the reason it cannot start. Without `config`, the file alone (its
 * format and the TLS files it names). Returns the summary of a valid one.
 */
export function checkWebConfig(file: string, config?: ProxyConfig): string {
  if (config) new WebListener(file, () => config, silent);
  return `web config ${file}: ${describeWeb(loadWebConfig(file))}`;
}

/** The kind of a config file as checkFile tells it, or undefined when it cannot be told (checkFile says why). */
function kindOf(file: string): Kind | undefined {
  try {
    const d = detectKind(YAML.parse(readFileSync(file, "utf8")));
    return typeof d === "string" ? d : undefined;
  } catch {
    return undefined;
  }
}

/** Validates one file; returns the one-line summary of a valid config, and throws a ConfigError otherwise. */
export function checkFile(
  file: string,
  kind: Kind | undefined,
  opts: LoadOptions,
  env: NodeJS.ProcessEnv,
  proxyFlags: Readonly<Record<string, string>> = {},
): { kind: Kind; summary: string; warnings: string[] } {
  let k = kind;
  if (!k) {
    let raw: unknown;
    try {
      raw = YAML.parse(readFileSync(file, "utf8"));
    } catch (err) {
      throw new Error(`cannot read config ${file}: ${(err as Error).message}`);
    }
    const d = detectKind(raw);
    if (typeof d !== "string") throw new Error(`cannot tell which scrapez config ${file} is: ${d.reason}`);
    k = d;
  }
  switch (k) {
    case "bind": {
      const c = loadBindConfig(file, env, {}, opts);
      const warnings = unpinnedCallers(c).map(unpinnedWarning);
      return {
        kind: k,
        summary: `${c.targets.length} target(s): ${c.targets.map((t) => t.service).join(", ")}`,
        warnings,
      };
    }
    case "proxy": {
      const c = loadProxyConfig(file, env, proxyFlags, opts);
      const summary = [`${c.identities.length} identity file(s), listen ${c.listen}`];
      if (c.webConfigFile) {
        summary.push(
          opts.checkFiles === false && !existsSync(c.webConfigFile)
            ? `web config ${c.webConfigFile} not checked: it is not there (--no-files)`
            : checkWebConfig(c.webConfigFile, c),
        );
      }
      return { kind: k, summary: summary.join("; "), warnings: [] };
    }
    case "federation": {
      const c = loadFederationConfig(file);
      return {
        kind: k,
        summary: `${c.clusters.length} cluster(s): ${c.clusters.map((x) => x.name).join(", ")}`,
        warnings: [],
      };
    }
  }
}

/** The command, with its output streams and environment given (for tests). Resolves to the exit code. */
export async function runCheck(argv: string[], io: CheckIo): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        config: { type: "string", short: "c", multiple: true },
        kind: { type: "string", short: "k" },
        "no-files": { type: "boolean" },
        "web.config.file": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    io.stderr.write(`scrapez check: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const files = values.config ?? [];
  const web = values["web.config.file"];
  if (web === "") {
    io.stderr.write("scrapez check: --web.config.file needs a file name\n");
    return 2;
  }
  if (files.length === 0 && web === undefined) {
    io.stderr.write(`scrapez check: --config is required\n\n${HELP}`);
    return 2;
  }
  if (values.kind !== undefined && !(KINDS as readonly string[]).includes(values.kind)) {
    io.stderr.write(`scrapez check: --kind must be bind, proxy or federation, not "${values.kind}"\n`);
    return 2;
  }
  const opts: LoadOptions = { checkFiles: !values["no-files"] };
  const proxyFlags: Record<string, string> = web !== undefined ? { "web.config.file": web } : {};
  let rc = 0;
  let proxySeen = false;
  for (const file of files) {
    try {
      if (web !== undefined) proxySeen ||= (values.kind ?? kindOf(file)) === "proxy";
      const r = checkFile(file, values.kind as Kind | undefined, opts, io.env, proxyFlags);
      for (const w of r.warnings) io.stderr.write(`${file}: warning: ${w}\n`);
      io.stdout.write(`${file}: valid ${r.kind} config (${r.summary})\n`);
    } catch (err) {
      io.stderr.write(`${(err as Error).message}\n`);
      rc = 1;
    }
  }
  // No proxy config took it (none given, or only other kinds): the web config alone, so it is never left unchecked.
  if (web !== undefined && !proxySeen) {
    try {
      io.stdout.write(`${web}: valid ${checkWebConfig(web).replace(/^web config \S+: /, "web config (")})\n`);
    } catch (err) {
      io.stderr.write(`${(err as Error).message}\n`);
      rc = 1;
    }
  }
  return rc;
}

export const command: Command = {
  run: (argv) => runCheck(argv, { stdout: process.stdout, stderr: process.stderr, env: process.env }),
};
