/** Shared by every config parser: one error type, and messages that name the field path. */
import type { z } from "zod";
import { AppErrorCodes, ScrapezError } from "../errors.js";

/** A ScrapezError with code SCRAPEZ_CONFIG_INVALID. */
export class ConfigError extends ScrapezError {
  /** True when a command-line flag's value is what is wrong (the CLI then exits 2, a usage error). */
  readonly fromFlag: boolean;
  constructor(message: string, fromFlag = false) {
    super(AppErrorCodes.CONFIG_INVALID, message);
    this.name = "ConfigError";
    this.fromFlag = fromFlag;
  }
}

/** `targets[1].upstream` from ["targets", 1, "upstream"]. */
export function fieldPath(p: readonly PropertyKey[]): string {
  return p.map((k, i) => (typeof k === "number" ? `[${k}]` : `${i ? "." : ""}${String(k)}`)).join("") || "(top level)";
}

/**
 * One ConfigError listing every problem, each line `  <field path>: <message>`. `sources` names where an
 * overridden top-level field came from (`{ logLevel: "--log-level" }`): `  logLevel (from --log-level): ...`.
 */
export function invalidConfig(
  where: string,
  issues: readonly (z.core.$ZodIssue | string)[],
  sources: Readonly<Record<string, string>> = {},
): ConfigError {
  let fromFlag = false;
  const label = (line: string) => {
    const key = /^[A-Za-z]+/.exec(line)?.[0];
    const source = key !== undefined ? sources[key] : undefined;
    if (key === undefined || source === undefined || !/^[:.[]/.test(line.slice(key.length))) return line;
    if (source.startsWith("--")) fromFlag = true;
    return `${key} (from ${source})${line.slice(key.length)}`;
  };
  const lines = issues.map((i) => `  ${label(typeof i === "string" ? i : `${fieldPath(i.path)}: ${i.message}`)}`);
  return new ConfigError(`${where} is invalid:\n${lines.join("\n")}`, fromFlag);
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
