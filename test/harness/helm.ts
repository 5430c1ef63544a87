/**
 * The pinned Helm (tools/helm, built by scripts/setup.sh) as the tests run it: with a HOME and config, cache and data
 * dirs of its own under the test's work dir, so the user's repositories, registry logins and plugins take no part
 * and nothing is written to ~.
 */
import { join } from "node:path";
import { helmBin } from "./binaries.js";
import { runCommand, type CommandResult } from "./process.js";

/** process.env with HOME at `home` and HELM_CACHE_HOME, HELM_CONFIG_HOME and HELM_DATA_HOME under it. */
export function helmEnv(home: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    HOME: home,
    HELM_CACHE_HOME: join(home, "helm-cache"),
    HELM_CONFIG_HOME: join(home, "helm-config"),
    HELM_DATA_HOME: join(home, "helm-data"),
  };
}

/**
 * Runs the pinned Helm with helmEnv(home) and `env` over it: `helm(args)` (cwd and time limit for every call; 120 s
 * by default).
 */
export function helmRunner(
  home: string,
  opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): (args: string[]) => Promise<CommandResult> {
  const env = { ...helmEnv(home), ...opts.env };
  return (args) => runCommand(helmBin(), args, { env, cwd: opts.cwd, timeoutMs: opts.timeoutMs ?? 120_000 });
}
