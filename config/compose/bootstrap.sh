#!/usr/bin/env bash
# The overlay model scrapez needs on the compose overlay, made idempotently: whatever exists is left alone, so a
# second run changes nothing (it prints "exists" for each item and exits 0).
#
#   service            node            (attribute metrics): node_exporter, bound by scrapez bind
#   identity           compose-bind    (attribute exporters) -> $IDENTITY_DIR/compose-bind.json
#   identity           compose-prometheus (attribute prometheus) -> $IDENTITY_DIR/compose-prometheus.json
#   service policies   node-bind (Bind: #exporters -> #metrics), node-dial (Dial: #prometheus -> #metrics)
#   router policies    scrapez-identities-all-routers, scrapez-services-all-routers (#all -> #all)
#
# Uses only the `ziti` CLI and the shell, so it runs the same in the compose `bootstrap` service (the official
# openziti/ziti-cli image) and on a host against any controller (test/integration/compose.test.ts runs it twice
# against the test overlay). An identity whose file is missing is enrolled again: if it exists on the controller
# (enrolled, but the file is gone), it is deleted and re-created, since an enrollment token is single-use.
#
# Environment: ZITI_CTRL (host:port, default ziti:1280), ZITI_USER / ZITI_PWD (default admin / admin),
# IDENTITY_DIR (default /identities). The ziti CLI keeps its login under $HOME/.config/ziti.
set -euo pipefail

ctrl="${ZITI_CTRL:-ziti:1280}"
dir="${IDENTITY_DIR:-/identities}"
say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

[ -d "$dir" ] && [ -w "$dir" ] || die "IDENTITY_DIR $dir is not a writable directory"
umask 077

# The controller may still be starting: retry the login for up to a minute.
for i in $(seq 1 30); do
  if ziti edge login "$ctrl" -u "${ZITI_USER:-admin}" -p "${ZITI_PWD:-admin}" -y >/dev/null 2>&1; then break; fi
  [ "$i" = 30 ] && die "cannot log in to the controller at $ctrl as ${ZITI_USER:-admin}"
  sleep 2
done

# The id of the one entity of a type with this name, or nothing. `ziti edge list <type> 'name="x"' --csv` prints a
# header line and one line per match, id first.
id_of() {
  ziti edge list "$1" "name=\"$2\"" --csv | tail -n +2 | cut -d, -f1 | tr -d '"' | head -n 1
}

ensure() { # ensure <type> <name> <ziti edge create ... arguments>
  local type="$1" name="$2"
  shift 2
  if [ -n "$(id_of "$type" "$name")" ]; then
    say "exists: $type $name"
  else
    ziti edge create "$@" >/dev/null
    say "created: $type $name"
  fi
}

ensure services node service node -a metrics
ensure service-policies node-bind service-policy node-bind Bind --service-roles '#metrics' --identity-roles '#exporters'
ensure service-policies node-dial service-policy node-dial Dial --service-roles '#metrics' --identity-roles '#prometheus'
ensure edge-router-policies scrapez-identities-all-routers \
  edge-router-policy scrapez-identities-all-routers --identity-roles '#all' --edge-router-roles '#all'
ensure service-edge-router-policies scrapez-services-all-routers \
  service-edge-router-policy scrapez-services-all-routers --service-roles '#all' --edge-router-roles '#all'

identity() { # identity <name> <attribute>
  local name="$1" attr="$2" file="$dir/$1.json" jwt="$dir/.$1.jwt"
  if [ -s "$file" ]; then
    say "exists: identity $name ($file)"
    return
  fi
  local id
  id="$(id_of identities "$name")"
  if [ -n "$id" ]; then
    say "identity $name exists but $file does not: re-creating it (an enrollment token is single-use)"
    ziti edge delete identity "$name" >/dev/null
  fi
  ziti edge create identity "$name" -a "$attr" -o "$jwt" >/dev/null
  ziti edge enroll "$jwt" -o "$file" >/dev/null
  rm -f "$jwt"
  chmod 0600 "$file"
  say "created: identity $name, enrolled into $file"
}

identity compose-bind exporters
identity compose-prometheus prometheus
say "done"
