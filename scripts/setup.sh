#!/usr/bin/env bash
# Installs everything scrapez's demo and tests need on a fresh machine, idempotently:
#   1. npm packages (npm ci, skipped when node_modules matches package-lock.json)
#   2. Debian packages: prometheus (with promtool), prometheus-node-exporter, chromium with a font
#      (fonts-dejavu-core) for the status page's browser test (test/integration/status.test.ts), and
#      docker-compose, only to validate docker-compose.yml (`docker-compose config -q` in
#      test/unit/compose-file.test.ts; no Docker engine is installed or needed)
#   3. the OpenZiti `ziti` CLI, built from its Go module (pinned in tools/ziti/go.mod) into a cache outside the checkout
# Prints what it does; fails with a message naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

ZITI_VERSION="$(awk '$1=="require" && $2=="github.com/openziti/ziti" {print $3}' tools/ziti/go.mod)"
[ -n "$ZITI_VERSION" ] || die "tools/ziti/go.mod names no github.com/openziti/ziti version"
CACHE_ROOT="${SCRAPEZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scrapez}"
# The cache key covers the version and the exact module graph, so a change to go.mod/go.sum rebuilds.
MOD_HASH="$(cat tools/ziti/go.mod tools/ziti/go.sum | sha256sum | cut -c1-12)"
ZITI_DIR="$CACHE_ROOT/ziti-$ZITI_VERSION-$MOD_HASH"
ZITI_BIN="$ZITI_DIR/ziti"

# --- 1. npm ---------------------------------------------------------------------------------------
command -v node >/dev/null || die "node is not installed (Node 20 or later is required)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || die "Node $(node --version) is too old: scrapez needs Node 20 or later"
LOCK_HASH="$(sha256sum package-lock.json | cut -c1-16)"
if [ -f node_modules/.scrapez-lock-hash ] && [ "$(cat node_modules/.scrapez-lock-hash)" = "$LOCK_HASH" ]; then
  say "npm packages: up to date"
elif [ -L node_modules ]; then
  # npm ci starts by deleting node_modules: never through a symlink into an install other checkouts share.
  say "npm packages: node_modules is a symlink (a shared install): left alone; run npm ci where it points"
else
  say "npm packages: installing exactly the tree in package-lock.json (npm ci)"
  # The lock records every platform's optional packages (test/unit/dockerfile.test.ts checks it), so `npm ci`
  # accepts it here and in the image's Alpine build alike. (npm 11 regenerating the lock from an existing
  # node_modules drops other platforms' optional packages, npm/cli#4828: regenerate it with
  # `npm install --package-lock-only` in a checkout without node_modules: locked versions stay as they are.)
  npm ci --no-audit --no-fund --loglevel=error
  echo "$LOCK_HASH" > node_modules/.scrapez-lock-hash
fi

# --- 2. Debian packages ---------------------------------------------------------------------------
need_pkgs=()
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need_pkgs+=(prometheus-node-exporter)
# Headless Chromium loads the proxy's /status page in test/integration/status.test.ts (never a downloaded browser).
command -v chromium >/dev/null || need_pkgs+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_pkgs+=(fonts-dejavu-core)
# docker-compose (Compose v1, Python) only parses and validates docker-compose.yml in a test; it starts nothing.
command -v docker-compose >/dev/null || need_pkgs+=(docker-compose)
if [ ${#need_pkgs[@]} -eq 0 ]; then
  say "Debian packages: prometheus, promtool, prometheus-node-exporter, chromium, fonts-dejavu-core, docker-compose present"
else
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
  [ "$(id -u)" = 0 ] || die "missing ${need_pkgs[*]}: run as root, or install them with apt-get"
  say "Debian packages: installing ${need_pkgs[*]} (the system services are not started; chromium is the headless browser of the status page test; docker-compose only validates docker-compose.yml)"
  # Never start the packaged services: tests run the binaries themselves on loopback ports.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; fi
  trap '[ $had_policy = 0 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null || die "apt-get install ${need_pkgs[*]} failed"
fi

# --- 3. ziti --------------------------------------------------------------------------------------
if [ -x "$ZITI_BIN" ] && [ "$("$ZITI_BIN" version 2>/dev/null | tail -1)" = "$ZITI_VERSION" ]; then
  say "ziti $ZITI_VERSION: cached at $ZITI_BIN"
else
  command -v go >/dev/null || die "go is not installed: it is needed once to build the ziti CLI $ZITI_VERSION"
  say "ziti $ZITI_VERSION: building from its Go module into $ZITI_DIR (the first build takes several minutes)"
  mkdir -p "$ZITI_DIR"
  tmp_bin="$ZITI_DIR/ziti.partial.$$"
  # go.sum in tools/ziti pins every module hash; the checksum database is not reachable for the openziti modules here.
  ( cd tools/ziti && GOFLAGS=-mod=readonly GONOSUMDB=github.com/openziti \
      go build -trimpath -ldflags "-X github.com/openziti/ziti/common/version.Version=$ZITI_VERSION" \
        -o "$tmp_bin" github.com/openziti/ziti/ziti ) \
    || { rm -f "$tmp_bin"; die "building ziti $ZITI_VERSION failed (see the go output above)"; }
  mv -f "$tmp_bin" "$ZITI_BIN"
  say "ziti $ZITI_VERSION: built"
fi
mkdir -p .cache
ln -sfn "$ZITI_BIN" .cache/ziti
say "ready: ziti at .cache/ziti -> $ZITI_BIN"
