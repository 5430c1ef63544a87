#!/usr/bin/env bash
# The README's test command (`npm test`): setup, type-check, lint, unit and integration tests against real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n[test] == %s ==\n' "$*" >&2; }
step "setup"; bash scripts/setup.sh
step "build + type-check"; npx tsc -p tsconfig.json
step "lint + format check + no circular imports + layers"
# One command per line: under `set -e` a failure on the left of `&&` does not stop the script (a format error
# once went through that way, and the circular-import check after it never ran).
npx eslint .
npx prettier --check . --log-level warn
npx madge --circular --extensions js dist/src
node scripts/layers.mjs
step "unit and integration tests"
mkdir -p .cache && rm -f .cache/vitest-results.json
rc=0
# SCRAPEZ_DOCKER_PREBUILD: the scrapez image's docker build starts with the run (test/harness/docker-prebuild.ts).
SCRAPEZ_DOCKER_PREBUILD=1 npx vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest-results.json "$@" || rc=$?
# A CI log is often read from its end: every failed file is named there with its failed tests or its suite error.
node -e 'const r = JSON.parse(require("fs").readFileSync(".cache/vitest-results.json", "utf8"));
  const cut = (s) => String(s ?? "").replace(/\x1b\[[0-9;]*m/g, "").split("\n").slice(0, 3).join(" | ").slice(0, 400);
  for (const f of r.testResults.filter((f) => f.status === "failed")) {
    const failed = f.assertionResults.filter((a) => a.status === "failed");
    process.stdout.write(`failed: ${f.name.replace(process.cwd() + "/", "")}\n`);
    if (failed.length === 0) process.stdout.write(`  suite error: ${cut(f.message)}\n`);
    for (const a of failed) process.stdout.write(`  - ${a.fullName}: ${cut(a.failureMessages[0])}\n`);
  }
  process.stdout.write(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped\n`);' || true
exit $rc
