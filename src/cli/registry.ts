import { resolve } from "node:path";
import { parseArgs } from "node:util";

/** The table of scrapez subcommands. Each command module adds itself; src/cli/commands.ts imports them all. */
export interface Command {
  summary: string;
  /** Runs the command; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

export const COMMANDS: Record<string, Command> = {};

export function register(name: string, cmd: Command): void {
  COMMANDS[name] = cmd;
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
