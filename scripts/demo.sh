#!/usr/bin/env bash
# The README's main command (`npm run demo`): install what is missing, build, run the demo on a local overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo runs no containers: the engine, the base image and docker compose are the tests' (setup.sh 6).
bash scripts/setup.sh --without-containers
echo "[demo] building" >&2
npx tsc -p tsconfig.json
exec node dist/scripts/demo.js "$@"
