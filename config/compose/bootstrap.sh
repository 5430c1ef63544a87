#!/usr/bin/env bash
# Builds the test model on the compose overlay and enrolls the two identities into identities/ (mode 0600).
set -euo pipefail
cd "$(dirname "$0")/../.."
z() { docker compose exec -T ziti ziti "$@"; }
z edge login ziti:1280 -u admin -p admin -y
z edge create service node -a metrics
z edge create identity compose-bind -a exporters -o /tmp/compose-bind.jwt
z edge create identity compose-prometheus -a prometheus -o /tmp/compose-prometheus.jwt
z edge create service-policy node-bind Bind --service-roles '#metrics' --identity-roles '#exporters'
z edge create service-policy node-dial Dial --service-roles '#metrics' --identity-roles '#prometheus'
for id in compose-bind compose-prometheus; do
  docker compose exec -T ziti cat "/tmp/$id.jwt" > "identities/$id.jwt"
  docker compose run --rm --no-deps -v "$PWD/identities:/identities" --entrypoint node scrapez-bind \
    /app/dist/src/cli/main.js enroll --jwt "/identities/$id.jwt" --out "/identities/$id.json"
done
