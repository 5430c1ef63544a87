#!/usr/bin/env bash
# `npm run bench`: build, then run the benchmarks (results as ratios against references measured in the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
npx tsc -p tsconfig.json
node dist/bench/bench.js "$@"
