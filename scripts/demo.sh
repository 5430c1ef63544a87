#!/usr/bin/env bash
# The README's main command (`npm run demo`): install what is missing, build, run the demo on a local overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[demo] building" >&2
npx tsc -p tsconfig.json
exec node dist/scripts/demo.js "$@"
