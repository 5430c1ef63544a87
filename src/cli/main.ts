#!/usr/bin/env node
/**
 * The scrapez command line: the table of commands below. Each command's module is loaded only when it runs (so a
 * Kubernetes exec probe, `scrapez probe` every few seconds, loads only its own module: ~0.06 s CPU and 46 MiB
 * instead of ~0.22 s and 67 MiB with every module; bench/resources.ts) and parses its own flags.
 */
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { version } from "./build-info.js";
import { installFatalHandlers } from "./fatal.js";
import { isUsageError, type Command } from "./registry.js";

/** The commands: name, one-line summary for --help, and the module that runs it (loaded on use). */
const COMMANDS: Record<string, { summary: string; load: () => Promise<{ command: Command }> }> = {
  bind: {
    summary: "bind exporters onto the overlay (the sidecar; no listening ports)",
    load: () => import("./bind.js"),
  },
  proxy: {
    summary: "HTTP proxy + service discovery for Prometheus (proxy_url, http_sd_configs)",
    load: () => import("./proxy.js"),
  },
  generate: {
    summary: "write federation configs (central Prometheus, cluster side) from federation.yaml",
    load: () => import("./generate.js"),
  },
  check: {
    summary: "validate bind, proxy and federation configs without starting anything (for CI)",
    load: () => import("./check.js"),
  },
  status: { summary: "the proxy's targets at a glance (exit 1 if any is failing)", load: () => import("./status.js") },
  probe: { summary: "exec probe for scrapez bind (--ready or --live)", load: () => import("./probe.js") },
  enroll: {
    summary: "enroll an identity from a one-time JWT and write its identity file",
    load: () => import("./enroll.js"),
  },
  identity: {
    summary: "identity tools: `identity key` prints the key pin for allow.keys",
    load: () => import("./identity.js"),
  },
};

/** The subcommand running, for the fatal handler's log line. */
let component = "scrapez";

const USAGE = `scrapez: let an unmodified Prometheus scrape exporters over an OpenZiti overlay

Usage: scrapez <command> [options]

Commands:
{commands}
Options:
  -h, --help     show this help
  -v, --version  print the version

Exit status: 0 success, 1 failure (bad config, unreadable identity, ...), 2 usage error (unknown command or
flag, missing argument), 70 an internal error (a bug: see docs/reliability.md). "scrapez <command> --help" for more.
`;

function usage(): string {
  const rows = Object.entries(COMMANDS)
    .map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}\n`)
    .join("");
  return USAGE.replace("{commands}", rows || "  (none yet)\n");
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined) {
    process.stderr.write(`scrapez: no command given\n\n${usage()}`);
    return 2;
  }
  if (cmd === "-h" || cmd === "--help" || cmd === "help") {
    process.stdout.write(usage());
    return 0;
  }
  if (cmd === "-v" || cmd === "--version") {
    process.stdout.write(`scrapez ${version()}\n`);
    return 0;
  }
  const entry = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
  if (!entry) {
    process.stderr.write(`scrapez: unknown command "${cmd}". Run "scrapez --help" for the list.\n`);
    return 2;
  }
  component = cmd;
  try {
    const { command } = await entry.load();
    return await command.run(rest);
  } catch (err) {
    // Every command parses its flags strictly: an unknown flag or a missing value is a usage error (exit 2).
    if (!isUsageError(err)) throw err;
    process.stderr.write(`scrapez ${cmd}: ${err.message}\nRun "scrapez ${cmd} --help" for its usage.\n`);
    return 2;
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === realpathSync(process.argv[1])) {
  // What escapes is a bug: one structured line, exit 70, the supervisor restarts us (src/cli/fatal.ts).
  installFatalHandlers(() => component);
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`scrapez: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
