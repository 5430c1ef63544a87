/** Shared by every config parser: one error type, and messages that name the field path. */
import type { z } from "zod";

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** `targets[1].upstream` from ["targets", 1, "upstream"]. */
export function fieldPath(p: readonly PropertyKey[]): string {
  return p.map((k, i) => (typeof k === "number" ? `[${k}]` : `${i ? "." : ""}${String(k)}`)).join("") || "(top level)";
}

/** One ConfigError listing every problem, each line `  <field path>: <message>`. */
export function invalidConfig(where: string, issues: readonly (z.core.$ZodIssue | string)[]): ConfigError {
  const lines = issues.map((i) => (typeof i === "string" ? `  ${i}` : `  ${fieldPath(i.path)}: ${i.message}`));
  return new ConfigError(`${where} is invalid:\n${lines.join("\n")}`);
}

/** How a config file is loaded. */
export interface LoadOptions {
  /**
   * Whether the files a config names (identity files, TLS files, token files) must exist; default true.
   * `scrapez check --no-files` sets false to validate a config where those files are not (CI, before a Secret
   * is mounted).
   */
  checkFiles?: boolean;
}
