#!/usr/bin/env node
// Writes build-info.json (the revision and branch this package is built from) beside package.json, for
// scrapez_build_info in a packed or installed scrapez, which has no .git to read (src/cli/build-info.ts).
// Run by `npm pack` (prepack). SCRAPEZ_BUILD_REVISION / SCRAPEZ_BUILD_BRANCH win over git (a CI building a tag).
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const git = (...args) => {
  try {
    return execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "";
  }
};
const revision = process.env.SCRAPEZ_BUILD_REVISION || git("rev-parse", "HEAD") || "unknown";
const branch = process.env.SCRAPEZ_BUILD_BRANCH || git("rev-parse", "--abbrev-ref", "HEAD") || "unknown";
writeFileSync(join(root, "build-info.json"), JSON.stringify({ revision, branch }, null, 2) + "\n");
process.stdout.write(`build-info.json: revision ${revision}, branch ${branch}\n`);
