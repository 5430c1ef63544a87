/**
 * The one way scrapez reads a config file (bind, proxy and federation configs alike): read it, parse its YAML, and
 * resolve the files it names relative to the config's own directory, each checked to exist unless told not to.
 * Every error is a ConfigError naming the file, or the field path of the file that is missing.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import YAML from "yaml";
import { ConfigError } from "./errors.js";

/** The parsed YAML of `file` (not validated yet) and the directory its relative paths are resolved against. */
export function readConfigFile(file: string): { raw: unknown; baseDir: string } {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read config ${file}: ${(err as Error).message}`);
  }
  try {
    return { raw: YAML.parse(text), baseDir: dirname(resolve(file)) };
  } catch (err) {
    throw new ConfigError(`${file} is not valid YAML: ${(err as Error).message}`);
  }
}

/**
 * Resolves the paths a config names against `baseDir`. `file(field, p)` also checks the file exists (when
 * `checkFiles`), and reports a missing one as an issue of `field` through `fail`.
 */
export function pathResolver(
  baseDir: string,
  checkFiles: boolean,
  fail: (issue: string) => never,
): { abs: (p: string) => string; file: (field: string, p: string, hint?: string) => string } {
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  return {
    abs,
    file: (field, p, hint) => {
      const full = abs(p);
      if (checkFiles && !existsSync(full)) fail(`${field}: file ${full} does not exist${hint ? ` (${hint})` : ""}`);
      return full;
    },
  };
}
