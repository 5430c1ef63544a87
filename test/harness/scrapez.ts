/** scrapez's own CLI as a real process (from dist/, built by `npm test` before the tests run). */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { repoRoot } from "./binaries.js";
import type { Netns } from "./netns.js";
import { ManagedProcess, tempDir } from "./process.js";

export const cliPath = join(repoRoot, "dist", "src", "cli", "main.js");

export class ScrapezProcess extends ManagedProcess {
  readonly configFile: string;

  /**
   * `extra.args` go after `--config F`; `extra.env` is added to the environment; `extra.netns` runs it inside
   * that network namespace (its 127.0.0.1 is the namespace's loopback).
   */
  constructor(
    name: string,
    command: "bind" | "proxy",
    config: object,
    dir = tempDir(name),
    extra: { args?: string[]; env?: NodeJS.ProcessEnv; netns?: Netns } = {},
  ) {
    const configFile = join(dir, `${command}.yaml`);
    // `dir` (the config's dir) becomes the process's own dir: its cwd and TMPDIR, removed by close().
    super({
      name,
      command: process.execPath,
      // SCRAPEZ_NODE_ARGS: extra node flags for profiling in the bench, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
      // (node refuses --cpu-prof in NODE_OPTIONS).
      args: [
        ...(process.env.SCRAPEZ_NODE_ARGS?.split(" ").filter(Boolean) ?? []),
        cliPath,
        command,
        "--config",
        configFile,
        ...(extra.args ?? []),
      ],
      ownDir: dir,
      // One proxy process unless the test asks for workers (SCRAPEZ_WORKERS, --workers): the tests that assume one
      // process (its pid, its log, its RSS) keep it; test/integration/proxy-workers.test.ts runs several.
      env: { ...(command === "proxy" ? { SCRAPEZ_WORKERS: "1" } : {}), ...extra.env },
      netns: extra.netns?.name,
    });
    this.configFile = configFile;
    this.writeConfig(config);
  }

  writeConfig(config: object | string): void {
    writeFileSync(this.configFile, typeof config === "string" ? config : YAML.stringify(config));
  }

  /** Structured log lines (JSON) written so far. */
  logLines(): Record<string, unknown>[] {
    return this.logTail()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          return {};
        }
      });
  }
}
