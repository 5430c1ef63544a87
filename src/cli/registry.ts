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
