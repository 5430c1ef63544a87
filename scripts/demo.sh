#!/usr/bin/env bash
# The README's main command (`npm run demo`): install what is missing, build, run the demo on a local overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what the demo needs: the chart tools, the container engine and the registry are the tests' (setup.sh --demo).
bash scripts/setup.sh --demo
echo "[demo] building" >&2
npx tsc -p tsconfig.json
exec node dist/scripts/demo.js "$@"
