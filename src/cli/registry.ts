import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { collectOverrides, overrideOptions, type FlagValues, type OverrideSpec } from "../common/config/overrides.js";

/** One scrapez subcommand: each module exports `command`; the table of commands is in src/cli/main.ts. */
export interface Command {
  /** Runs the command; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

/**
 * Parses `--config F` / `--help` for a command that takes only a config file. Returns the config path, or the
 * exit code to return at once (0 after printing help, 2 on a usage error).
 */
export function configFlag(command: string, argv: string[], help: string): string | number {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: "string", short: "c" }, help: { type: "boolean", short: "h" } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(help);
    return 0;
  }
  if (!values.config) {
    process.stderr.write(`scrapez ${command}: --config is required\n\n${help}`);
    return 2;
  }
  return resolve(values.config);
}

/** A command line that cannot be run as given: `scrapez` prints it with a pointer to --help and exits 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A UsageError, or node:util parseArgs refusing the flags (unknown option, missing value, ...). */
export function isUsageError(err: unknown): err is Error {
  if (err instanceof UsageError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_");
}

/** One node:util parseArgs option. */
export type FlagOption = { type: "string" | "boolean"; short?: string; multiple?: boolean };

/**
 * Parses the flags of a long-running command (bind, proxy): `--config F` (or SCRAPEZ_CONFIG), `--help`, and one flag
 * per override (src/common/config/overrides.ts). Returns the config path and the flag values for the config loader, or the
 * exit code to return at once (0 after printing help, 2 on a usage error). `extra.options` adds flags (onboarding's
 * --jwt, ...); with `extra.configOptional` a missing --config is no error: configFile is then "".
 */
export function runFlags(
  command: string,
  argv: string[],
  help: string,
  specs: readonly OverrideSpec[],
  env: NodeJS.ProcessEnv = process.env,
  extra: { options?: Readonly<Record<string, FlagOption>>; configOptional?: boolean } = {},
): { configFile: string; flags: FlagValues } | number {
  const options: Record<string, FlagOption> = {
    config: { type: "string", short: "c" },
    help: { type: "boolean", short: "h" },
    ...extra.options,
  };
  Object.assign(options, overrideOptions(specs));
  const { values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  collectOverrides(specs, values as FlagValues, {}); // a flag given under two of its names: a usage error, now
  if (values.help) {
    process.stdout.write(help);
    return 0;
  }
  const config = (values.config as string | undefined) || env.SCRAPEZ_CONFIG;
  if (!config && extra.configOptional) return { configFile: "", flags: values as FlagValues };
  if (!config) {
    process.stderr.write(`scrapez ${command}: --config (or SCRAPEZ_CONFIG) is required\n\n${help}`);
    return 2;
  }
  return { configFile: resolve(config), flags: values as FlagValues };
}
