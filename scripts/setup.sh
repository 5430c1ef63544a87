#!/usr/bin/env bash
# Installs everything scrapez's demo and tests need on a fresh machine, idempotently:
#   1. npm packages (npm ci, skipped when node_modules matches package-lock.json)
#   2. Debian packages: prometheus (with promtool), prometheus-node-exporter, chromium with a font
#      (fonts-dejavu-core) for the status page's browser test (test/integration/status.test.ts),
#      docker-compose (Compose v1.29: validates docker-compose.yml in a unit test), and iproute2 and procps
#      (ip, sysctl) for the dark-cluster test's network namespaces, and etcd-server (the store of the API server in 5)
#   3. the OpenZiti `ziti` CLI of both tested lines, each built from its Go module into a cache outside the checkout:
#      v2.0.3 (the current LTS line, the default overlay of the tests, the demo and the benches; `go install
#      github.com/openziti/ziti/v2/ziti@v2.0.3`) and v1.6.3 (the compatibility line, pinned in tools/ziti/go.mod)
#   4. Prometheus 3 (the version most users run; Debian's is 2.42), built the same way from its Go module (pinned in
#      tools/prometheus3/go.mod): the proxy, federation and dark-cluster tests run against both
#   5. Helm (pinned in tools/helm/go.mod), built the same way, for the chart tests (test/integration/helm.test.ts)
#      and Docker Compose v5 (pinned in tools/compose/go.mod), linked as the `docker compose` CLI plugin;
#      kube-apiserver (k8s.io/kubernetes, pinned in tools/kube-apiserver/go.mod) and the Prometheus Operator's CRDs
#      (from its Go module, hash pinned), for the chart test that a real API server judges (test/integration/kube.test.ts)
#   6. a Docker engine (Debian's docker.io; storage driver vfs, bridge and address pools in 198.18.0.0/15), started
#      when it is not running, and the local base image the container tests build on (no registry is reachable
#      here): Debian 12 minbase from mmdebstrap, with this machine's Node 20, npm and CA bundle, and for the exporters
#      a busybox one (Debian's busybox-static and this machine's glibc, as prom/* images are made) (docs/container.md)
#   7. an OCI registry (CNCF Distribution, pinned in tools/registry/go.mod), built the same way as 3-5, that the
#      publishing test pushes the chart and the scrapez image to (docs/kubernetes.md, test/integration/k8s-docs.test.ts)
#   8. the format exporter (tools/format-exporter: client_golang's promhttp, pinned in its go.mod), built the same way,
#      that the scrape-format conformance test scrapes directly and through scrapez (test/integration/conformance.test.ts)
#   9. kube-state-metrics (pinned in tools/kube-state-metrics/go.mod), built the same way, that the Helm test runs in
#      kube-prometheus-stack's kube-state-metrics pod against its real API server (test/integration/helm.test.ts)
# The Go builds (3-5, 7-9) run in the background while the Debian packages install. Prints what it does; fails with a
# message naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# --demo (scripts/demo.sh): only what the demo needs. Skips what only the tests use: Helm, kube-apiserver, kubectl,
# the Operator CRDs and etcd-server (5), the container engine and base image (6), Compose, the registry (7) and the
# format exporter (8) and kube-state-metrics (9).
WITH_CONTAINERS=1
FOR_TESTS=1
case "${1:-}" in
  "") ;;
  --demo) WITH_CONTAINERS=0 FOR_TESTS=0 ;;
  *) printf '[setup] ERROR: unknown option %s (the only one is --demo)\n' "$1" >&2; exit 2 ;;
esac

say() { printf '[setup] %s\n' "$*" >&2; }
# A failure also stops the Go builds still running in the background (section 2).
die() { printf '[setup] ERROR: %s\n' "$*" >&2; jobs -p | xargs -r kill 2>/dev/null; exit 1; }

# build_go_tool LABEL DIR NAME MODDIR PACKAGE NOTE [go build flags...]: builds PACKAGE with the module graph pinned
# in MODDIR (go.mod + go.sum; GOFLAGS=-mod=readonly, so a missing or changed hash fails instead of being looked up)
# into DIR/NAME, through a partial file, so an interrupted build never leaves a binary that looks cached.
build_go_tool() {
  local label=$1 dir=$2 name=$3 moddir=$4 pkg=$5 note=$6
  shift 6
  command -v go >/dev/null || die "go is not installed: it is needed once to build $label"
  say "$label: building from its Go module into $dir ($note)"
  mkdir -p "$dir"
  local tmp="$dir/$name.partial.$$" log="$dir/$name.build.log" t0=$SECONDS
  if ! ( cd "$moddir" && GOFLAGS=-mod=readonly go build -trimpath "$@" -o "$tmp" "$pkg" ) >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$tmp"
    die "building $label failed: the last lines of its go output are above, all of it in $log"
  fi
  mv -f "$tmp" "$dir/$name"
  say "$label: built in $((SECONDS - t0)) s"
}

ZITI_VERSION="$(awk '$1=="require" && $2=="github.com/openziti/ziti" {print $3}' tools/ziti/go.mod)"
[ -n "$ZITI_VERSION" ] || die "tools/ziti/go.mod names no github.com/openziti/ziti version"
CACHE_ROOT="${SCRAPEZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scrapez}"
# The cache key covers the version and the exact module graph, so a change to go.mod/go.sum rebuilds.
MOD_HASH="$(cat tools/ziti/go.mod tools/ziti/go.sum | sha256sum | cut -c1-12)"
ZITI_DIR="$CACHE_ROOT/ziti-$ZITI_VERSION-$MOD_HASH"
ZITI_BIN="$ZITI_DIR/ziti"
# Prometheus publishes release 3.MM.P as Go module version v0.3MM.P (v0.316.0 is 3.16.0).
PROM3_MODVER="$(awk '$1=="require" && $2=="github.com/prometheus/prometheus" {print $3}' tools/prometheus3/go.mod)"
[ -n "$PROM3_MODVER" ] || die "tools/prometheus3/go.mod names no github.com/prometheus/prometheus version"
PROM3_VERSION="$(echo "$PROM3_MODVER" | sed -E 's/^v0\.3([0-9][0-9])\.([0-9]+)$/3.\1.\2/; s/^3\.0([0-9])/3.\1/')"
[[ "$PROM3_VERSION" =~ ^3\.[0-9]+\.[0-9]+$ ]] || die "cannot map Prometheus module version $PROM3_MODVER to a 3.x release"
# The build tags are part of the key: they change the binary.
PROM3_TAGS="netgo,remove_all_sd"
PROM3_HASH="$( (cat tools/prometheus3/go.mod tools/prometheus3/go.sum; echo "$PROM3_TAGS") | sha256sum | cut -c1-12)"
PROM3_DIR="$CACHE_ROOT/prometheus-$PROM3_MODVER-$PROM3_HASH"
PROM3_BIN="$PROM3_DIR/prometheus"
HELM_VERSION="$(awk '$1=="require" && $2=="helm.sh/helm/v3" {print $3}' tools/helm/go.mod)"
[ -n "$HELM_VERSION" ] || die "tools/helm/go.mod names no helm.sh/helm/v3 version"
# Helm's release builds stamp the Kubernetes minor of their client libraries (k8s.io/client-go v0.MM: 1.MM), which
# helm template and lint take as the cluster's version (Chart.yaml's kubeVersion is checked against it); unstamped,
# they take v1.20.0. Helm's Makefile sets the same four variables. The flags are part of the key.
HELM_K8S_MINOR="$(awk '$1=="k8s.io/client-go" {print $2}' tools/helm/go.mod | sed -E 's/^v0\.([0-9]+)\..*$/\1/')"
[[ "$HELM_K8S_MINOR" =~ ^[0-9]+$ ]] || die "tools/helm/go.mod names no k8s.io/client-go v0.x version"
HELM_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  HELM_LDFLAGS+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$HELM_K8S_MINOR"
done
HELM_DIR="$CACHE_ROOT/helm-$HELM_VERSION-$( (cat tools/helm/go.mod tools/helm/go.sum; echo "$HELM_LDFLAGS") | sha256sum | cut -c1-12)"
HELM_BIN="$HELM_DIR/helm"
# kube-apiserver, built from k8s.io/kubernetes (pinned in tools/kube-apiserver: its 31 staging modules replaced with the
# same release's v0.x tags), on Debian's etcd: the chart test's objects are judged by a real API server. The key
# covers main.go too, and the version stamped into the binary (what the server reports, and Helm's kubeVersion reads).
KAS_VERSION="$(awk '$1=="k8s.io/kubernetes" {print $2} $1=="require" && $2=="k8s.io/kubernetes" {print $3}' tools/kube-apiserver/go.mod | head -1)"
[ -n "$KAS_VERSION" ] || die "tools/kube-apiserver/go.mod names no k8s.io/kubernetes version"
KAS_DIR="$CACHE_ROOT/kube-apiserver-$KAS_VERSION-$(cat tools/kube-apiserver/go.mod tools/kube-apiserver/go.sum tools/kube-apiserver/main.go | sha256sum | cut -c1-12)"
KAS_BIN="$KAS_DIR/kube-apiserver"
KUBECTL_BIN="$KAS_DIR/kubectl"
KAS_MINOR="$(echo "$KAS_VERSION" | cut -d. -f2)"
KAS_LDFLAGS="-X k8s.io/component-base/version.gitVersion=$KAS_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$KAS_MINOR -X k8s.io/component-base/version.gitTreeState=clean"
# The Prometheus Operator's CRDs, installed into that server: example/prometheus-operator-crd/*.yaml of the operator's
# own Go module, at the release whose API types the chart targets, its module hash pinned here (go mod download checks
# it against the checksum database as well).
OPERATOR_VERSION=v0.94.1
OPERATOR_SUM="h1:QEIb2wenPH+SdMN1xMf8l4Pmj00YYXXI6HlbLlQWkww="
OPERATOR_CRDS_DIR="$CACHE_ROOT/operator-crds-$OPERATOR_VERSION-$(echo "$OPERATOR_SUM" | sha256sum | cut -c1-12)"
# Docker Compose v5, the `docker compose` CLI plugin users have (pinned in tools/compose/go.mod; `go install
# ...@v5.6.0` is refused because compose's go.mod has an exclude block, which only a main module may carry).
COMPOSE_VERSION="$(awk '$1=="require" && $2=="github.com/docker/compose/v5" {print $3}' tools/compose/go.mod)"
[ -n "$COMPOSE_VERSION" ] || die "tools/compose/go.mod names no github.com/docker/compose/v5 version"
COMPOSE_DIR="$CACHE_ROOT/compose-$COMPOSE_VERSION-$(cat tools/compose/go.mod tools/compose/go.sum | sha256sum | cut -c1-12)"
COMPOSE_BIN="$COMPOSE_DIR/docker-compose"
# The OCI registry (7): its own main.go links only the filesystem storage driver (upstream's cmd/registry adds the
# cloud drivers, most of the build). The key covers main.go too.
REGISTRY_VERSION="$(awk '$1=="require" && $2=="github.com/distribution/distribution/v3" {print $3}' tools/registry/go.mod)"
[ -n "$REGISTRY_VERSION" ] || die "tools/registry/go.mod names no github.com/distribution/distribution/v3 version"
REGISTRY_DIR="$CACHE_ROOT/registry-$REGISTRY_VERSION-$(cat tools/registry/go.mod tools/registry/go.sum tools/registry/main.go | sha256sum | cut -c1-12)"
REGISTRY_BIN="$REGISTRY_DIR/registry"
# The format exporter (8): client_golang's promhttp behind a recorder, for the scrape-format conformance test. Its own
# module (tools/format-exporter); the key covers main.go, so a change to it rebuilds.
FE_DIR="$CACHE_ROOT/format-exporter-$(cat tools/format-exporter/go.mod tools/format-exporter/go.sum tools/format-exporter/main.go | sha256sum | cut -c1-12)"
FE_BIN="$FE_DIR/format-exporter"
# kube-state-metrics (9): its main package (the module root of k8s.io/kube-state-metrics/v2), static (CGO_ENABLED=0,
# as upstream's release build: it runs in the test base image, whose glibc may be older than this machine's), stamped
# with the version as upstream's Makefile does. The key covers the module graph and the flags.
KSM_VERSION="$(awk '$1=="require" && $2=="k8s.io/kube-state-metrics/v2" {print $3}' tools/kube-state-metrics/go.mod)"
[ -n "$KSM_VERSION" ] || die "tools/kube-state-metrics/go.mod names no k8s.io/kube-state-metrics/v2 version"
KSM_CLIENT_GO="$(awk '$1=="k8s.io/client-go" {print $2}' tools/kube-state-metrics/go.mod)"
KSM_LDFLAGS="-X github.com/prometheus/common/version.Version=${KSM_VERSION#v} -X github.com/prometheus/common/version.Revision=$KSM_VERSION -X k8s.io/kube-state-metrics/v2/pkg/app.ClientGoVersion=$KSM_CLIENT_GO"
KSM_DIR="$CACHE_ROOT/kube-state-metrics-$KSM_VERSION-$( (cat tools/kube-state-metrics/go.mod tools/kube-state-metrics/go.sum; echo "CGO_ENABLED=0 $KSM_LDFLAGS") | sha256sum | cut -c1-12)"
KSM_BIN="$KSM_DIR/kube-state-metrics"
# OpenZiti 2.0 (ZITI2_*). Not pinned in a tools/ go.mod like v1.6.3: that needs go.sum lines for ziti/v2 and its
# openziti modules, which a module proxy that refuses them cannot give. `go install pkg@version` is pinned by the
# checksum database and ziti's own go.sum instead. Where the proxy refuses it (as on the machine this test bed was
# made on: 403 "This module version is not available"), it is built from source tarballs with their build.sh:
# $SCRAPEZ_ZITI2_SRC, by default ../shared/openziti-v2 beside the checkout (src/*.tar.gz + SHA256SUMS, build.sh).
# SCRAPEZ_ZITI2_BIN=/path/to/ziti (a v2.0.3 binary, e.g. OpenZiti's release) skips the build.
ZITI2_VERSION=v2.0.3
ZITI2_PKG=github.com/openziti/ziti/v2/ziti
ZITI2_LDFLAGS="-X github.com/openziti/ziti/v2/common/version.Version=$ZITI2_VERSION"
ZITI2_SRC="${SCRAPEZ_ZITI2_SRC:-../shared/openziti-v2}"
# One cache entry per way of building it, each keyed by what goes into it: the module version and flags, or the
# checksums of the source tarballs and the build script.
ZITI2_MOD_DIR="$CACHE_ROOT/ziti-$ZITI2_VERSION-$(echo "$ZITI2_PKG@$ZITI2_VERSION $ZITI2_LDFLAGS" | sha256sum | cut -c1-12)"
ZITI2_SRC_DIR=""
if [ -f "$ZITI2_SRC/src/SHA256SUMS" ] && [ -f "$ZITI2_SRC/build.sh" ]; then
  ZITI2_SRC_DIR="$CACHE_ROOT/ziti-$ZITI2_VERSION-src-$(cat "$ZITI2_SRC/src/SHA256SUMS" "$ZITI2_SRC/build.sh" | sha256sum | cut -c1-12)"
fi

# build_ziti2: v2.0.3 from its Go module if the module proxy serves it, else from $ZITI2_SRC; into ZITI2_BIN's dir
# through a partial file, as build_go_tool. Says which way it took.
build_ziti2() {
  local label="ziti $ZITI2_VERSION" t0=$SECONDS
  command -v go >/dev/null || die "go is not installed: it is needed once to build $label"
  mkdir -p "$ZITI2_MOD_DIR"
  local gobin="$ZITI2_MOD_DIR/gobin.partial.$$" log="$ZITI2_MOD_DIR/ziti.build.log"
  say "$label: building from its Go module ($ZITI2_PKG@$ZITI2_VERSION) into $ZITI2_MOD_DIR (the first build takes about 11 minutes on 2 cores)"
  if GOBIN="$gobin" go install -trimpath -ldflags "$ZITI2_LDFLAGS" "$ZITI2_PKG@$ZITI2_VERSION" >"$log" 2>&1; then
    mv -f "$gobin/ziti" "$ZITI2_MOD_DIR/ziti"
    rm -rf "$gobin"
    say "$label: built from its Go module in $((SECONDS - t0)) s"
    return 0
  fi
  rm -rf "$gobin"
  say "$label: the Go module could not be built here: $(grep -m1 -E 'Forbidden|not available|404|410|error|cannot' "$log" | cut -c1-200)"
  if [ -z "$ZITI2_SRC_DIR" ]; then
    rmdir "$ZITI2_MOD_DIR" 2>/dev/null || true
    die "$label: no way to build it: the Go module proxy ($(go env GOPROXY)) did not serve $ZITI2_PKG@$ZITI2_VERSION (its go output is in $log), and there are no source tarballs at $ZITI2_SRC (src/SHA256SUMS and build.sh; set SCRAPEZ_ZITI2_SRC to their folder), nor a binary: set SCRAPEZ_ZITI2_BIN to OpenZiti's release binary of $ZITI2_VERSION instead"
  fi
  mkdir -p "$ZITI2_SRC_DIR"
  local out="$ZITI2_SRC_DIR/out.partial.$$" work="$ZITI2_SRC_DIR/work.$$"
  log="$ZITI2_SRC_DIR/ziti.build.log"
  say "$label: building from the source tarballs in $ZITI2_SRC instead (its build.sh) into $ZITI2_SRC_DIR"
  if ! WORK_DIR="$work" bash "$ZITI2_SRC/build.sh" "$ZITI2_SRC/src" "$out" "$ZITI2_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -rf "$out" "$work"
    die "building $label from $ZITI2_SRC failed: the last lines of its output are above, all of it in $log"
  fi
  mv -f "$out/ziti" "$ZITI2_SRC_DIR/ziti"
  rm -rf "$out" "$work"
  say "$label: built from source tarballs in $((SECONDS - t0)) s"
}

# ziti_is VERSION BIN: BIN runs and `BIN version` prints VERSION (on its last line).
ziti_is() { [ -x "$2" ] && [ "$("$2" version 2>/dev/null | tail -1)" = "$1" ]; }

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

# --- 2. Go tools: ziti, Prometheus 3, helm, kube-apiserver -------------------------------------------
# Each is built from its Go module into the cache outside the checkout, keyed by version and module graph, and
# only when that cache has no working binary. Builds start in the background before the Debian packages install,
# so the downloads and the compiles overlap with apt (a fresh machine's setup is mostly these builds).
builds=()
start_build() { build_go_tool "$@" & builds+=("$!:$1"); }
if ziti_is "$ZITI_VERSION" "$ZITI_BIN"; then
  say "ziti $ZITI_VERSION: cached at $ZITI_BIN"
else
  # The checksum database is not reachable for the openziti modules here; go.sum pins every hash.
  GONOSUMDB=github.com/openziti start_build "ziti $ZITI_VERSION" "$ZITI_DIR" ziti tools/ziti \
    github.com/openziti/ziti/ziti "the first build takes several minutes" \
    -ldflags "-X github.com/openziti/ziti/common/version.Version=$ZITI_VERSION"
fi
# A binary of one's own (e.g. OpenZiti's release binary), else either cache entry; a fresh machine tries the module
# first (build_ziti2).
if [ -n "${SCRAPEZ_ZITI2_BIN:-}" ]; then
  ziti_is "$ZITI2_VERSION" "$SCRAPEZ_ZITI2_BIN" || die "SCRAPEZ_ZITI2_BIN=$SCRAPEZ_ZITI2_BIN is not a ziti $ZITI2_VERSION (\`ziti version\`)"
  ZITI2_BIN="$SCRAPEZ_ZITI2_BIN"
  say "ziti $ZITI2_VERSION: $ZITI2_BIN (SCRAPEZ_ZITI2_BIN)"
elif ziti_is "$ZITI2_VERSION" "$ZITI2_MOD_DIR/ziti"; then
  ZITI2_BIN="$ZITI2_MOD_DIR/ziti"
  say "ziti $ZITI2_VERSION: cached at $ZITI2_BIN (built from its Go module)"
elif [ -n "$ZITI2_SRC_DIR" ] && ziti_is "$ZITI2_VERSION" "$ZITI2_SRC_DIR/ziti"; then
  ZITI2_BIN="$ZITI2_SRC_DIR/ziti"
  say "ziti $ZITI2_VERSION: cached at $ZITI2_BIN (built from source tarballs)"
else
  ZITI2_BIN=""
  build_ziti2 & builds+=("$!:ziti $ZITI2_VERSION")
fi
# Tags: netgo (as upstream's release builds); remove_all_sd leaves out the cloud service-discovery plugins
# (Kubernetes, AWS, Azure, GCE, ...; upstream's own switch), which are most of the build and which scrapez never
# uses: static_configs, file_sd and http_sd stay. The module carries no web UI assets (upstream generates them with
# npm for its releases), so this binary serves the HTTP API but not the UI pages.
if [ -x "$PROM3_BIN" ] && "$PROM3_BIN" --version 2>/dev/null | head -1 | grep -q "version $PROM3_VERSION "; then
  say "Prometheus $PROM3_VERSION: cached at $PROM3_BIN"
else
  start_build "Prometheus $PROM3_VERSION" "$PROM3_DIR" prometheus tools/prometheus3 \
    github.com/prometheus/prometheus/cmd/prometheus "$PROM3_MODVER, tags $PROM3_TAGS; the first build takes several minutes" \
    -tags "$PROM3_TAGS" \
    -ldflags "-X github.com/prometheus/common/version.Version=$PROM3_VERSION -X github.com/prometheus/common/version.Revision=$PROM3_MODVER"
fi
if [ "$FOR_TESTS" = 0 ]; then
  :
elif [ -x "$HELM_BIN" ] && [ "$("$HELM_BIN" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
  say "helm $HELM_VERSION: cached at $HELM_BIN"
else
  start_build "helm $HELM_VERSION" "$HELM_DIR" helm tools/helm helm.sh/helm/v3/cmd/helm "the first build takes a few minutes" \
    -ldflags "$HELM_LDFLAGS"
fi
if [ "$WITH_CONTAINERS" = 0 ]; then
  :
elif [ -x "$COMPOSE_BIN" ] && "$COMPOSE_BIN" version --short 2>/dev/null | grep -qx "${COMPOSE_VERSION#v}"; then
  say "docker compose $COMPOSE_VERSION: cached at $COMPOSE_BIN"
else
  start_build "docker compose $COMPOSE_VERSION" "$COMPOSE_DIR" docker-compose tools/compose \
    github.com/docker/compose/v5/cmd "the CLI plugin; the first build takes a few minutes" \
    -ldflags "-w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION"
fi
if [ "$WITH_CONTAINERS" = 0 ]; then
  :
elif [ -x "$REGISTRY_BIN" ] && [ "$("$REGISTRY_BIN" --version 2>/dev/null | awk '{print $NF}')" = "$REGISTRY_VERSION" ]; then
  say "registry $REGISTRY_VERSION: cached at $REGISTRY_BIN"
else
  start_build "registry $REGISTRY_VERSION" "$REGISTRY_DIR" registry tools/registry . \
    "CNCF Distribution, filesystem storage only; the first build takes about 2 minutes" \
    -ldflags "-X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION"
fi
if [ "$FOR_TESTS" = 0 ]; then
  :
elif [ -x "$FE_BIN" ]; then
  say "format-exporter: cached at $FE_BIN"
else
  start_build "format-exporter" "$FE_DIR" format-exporter tools/format-exporter . \
    "client_golang's promhttp, for the scrape-format conformance test; about 20 s"
fi
if [ "$FOR_TESTS" = 0 ]; then
  :
elif [ -x "$KSM_BIN" ] && [ "$("$KSM_BIN" version 2>/dev/null | awk 'NR==1 {print $3}')" = "${KSM_VERSION#v}" ]; then
  say "kube-state-metrics $KSM_VERSION: cached at $KSM_BIN"
else
  CGO_ENABLED=0 start_build "kube-state-metrics $KSM_VERSION" "$KSM_DIR" kube-state-metrics tools/kube-state-metrics \
    k8s.io/kube-state-metrics/v2 "for the Helm test's kube-state-metrics pod; the first build takes several minutes (15 on a loaded 2-core machine)" \
    -ldflags "$KSM_LDFLAGS"
fi
# kube-apiserver, then kubectl from the same module graph: one after the other, so the packages they share compile
# once (two go builds at a time would each compile them).
# (Not `| grep -q`: grep leaving early can kill kubectl with SIGPIPE, which pipefail counts as a failure.)
if [ "$FOR_TESTS" = 0 ]; then
  :
elif [ -x "$KAS_BIN" ] && [ "$("$KAS_BIN" --version 2>/dev/null)" = "Kubernetes $KAS_VERSION" ] \
  && [ -x "$KUBECTL_BIN" ] && [ "$("$KUBECTL_BIN" version --client 2>/dev/null | head -1)" = "Client Version: $KAS_VERSION" ]; then
  say "kube-apiserver and kubectl $KAS_VERSION: cached in $KAS_DIR"
else
  (
    build_go_tool "kube-apiserver $KAS_VERSION" "$KAS_DIR" kube-apiserver tools/kube-apiserver . \
      "k8s.io/kubernetes $KAS_VERSION; the first build takes about 5 minutes on 2 cores" -ldflags "$KAS_LDFLAGS"
    build_go_tool "kubectl $KAS_VERSION" "$KAS_DIR" kubectl tools/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
      "the same module graph; about 45 s more" -ldflags "$KAS_LDFLAGS"
  ) &
  builds+=("$!:kube-apiserver and kubectl $KAS_VERSION")
fi

# The Operator CRDs: copied from the module (go mod download: from the module cache, else the module proxy) into
# the cache, through a partial dir, once the module's hash is the pinned one.
if [ "$FOR_TESTS" = 0 ]; then
  :
elif [ -f "$OPERATOR_CRDS_DIR/.complete" ]; then
  say "Prometheus Operator $OPERATOR_VERSION CRDs: cached in $OPERATOR_CRDS_DIR"
else
  command -v go >/dev/null || die "go is not installed: it is needed once to download the Prometheus Operator module"
  say "Prometheus Operator $OPERATOR_VERSION CRDs: from its Go module (github.com/prometheus-operator/prometheus-operator) into $OPERATOR_CRDS_DIR"
  op_json="$(cd / && GOFLAGS= go mod download -json "github.com/prometheus-operator/prometheus-operator@$OPERATOR_VERSION" 2>&1)" \
    || die "go mod download of the Prometheus Operator $OPERATOR_VERSION failed: $op_json"
  op_field() { printf '%s' "$op_json" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[process.argv[1]]??""))' "$1"; }
  op_sum="$(op_field Sum)"
  op_dir="$(op_field Dir)"
  [ "$op_sum" = "$OPERATOR_SUM" ] || die "the Prometheus Operator module $OPERATOR_VERSION has hash $op_sum, not the pinned $OPERATOR_SUM"
  ls "$op_dir"/example/prometheus-operator-crd/*.yaml >/dev/null 2>&1 || die "no CRDs in $op_dir/example/prometheus-operator-crd"
  mkdir -p "$CACHE_ROOT"
  op_tmp="$OPERATOR_CRDS_DIR.partial.$$"
  rm -rf "$op_tmp" && mkdir -p "$op_tmp"
  cp "$op_dir"/example/prometheus-operator-crd/*.yaml "$op_tmp"/
  chmod 0644 "$op_tmp"/*.yaml
  echo "github.com/prometheus-operator/prometheus-operator $OPERATOR_VERSION $OPERATOR_SUM" > "$op_tmp/.complete"
  rm -rf "$OPERATOR_CRDS_DIR" && mv "$op_tmp" "$OPERATOR_CRDS_DIR"
  say "Prometheus Operator $OPERATOR_VERSION CRDs: $(ls "$OPERATOR_CRDS_DIR"/*.yaml | wc -l) copied"
fi

# --- 3. Debian packages ---------------------------------------------------------------------------
need_pkgs=()
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need_pkgs+=(prometheus-node-exporter)
# Headless Chromium loads the proxy's /status page in test/integration/status.test.ts (never a downloaded browser).
command -v chromium >/dev/null || need_pkgs+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_pkgs+=(fonts-dejavu-core)
# The container engine and what the tests run it with: docker.io (dockerd, containerd, runc, and the docker client
# when none is on PATH), docker-compose (Compose v1.29, the file check in test/unit/compose-file.test.ts), mmdebstrap (the base image's root filesystem).
if [ "$WITH_CONTAINERS" = 1 ]; then
  command -v dockerd >/dev/null || need_pkgs+=(docker.io)
  command -v docker-compose >/dev/null || need_pkgs+=(docker-compose)
  command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
fi
# The dark-cluster test makes network namespaces and veths (ip) and sets sysctls inside them (sysctl).
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v sysctl >/dev/null || need_pkgs+=(procps)
# etcd: the store of the chart test's kube-apiserver (run by the test on loopback ports; its service is not started).
[ "$FOR_TESTS" = 0 ] || command -v etcd >/dev/null || need_pkgs+=(etcd-server)
# tinyproxy: the corporate CONNECT proxy of the egress-proxy test (run by the test in a namespace; its service is not started).
[ "$FOR_TESTS" = 0 ] || command -v tinyproxy >/dev/null || need_pkgs+=(tinyproxy)
# tcpdump: the e2e bench times each hop of a scrape from packet timestamps on loopback (bench/hops.ts).
[ "$FOR_TESTS" = 0 ] || command -v tcpdump >/dev/null || need_pkgs+=(tcpdump)
if [ ${#need_pkgs[@]} -eq 0 ]; then
  say "Debian packages: prometheus, promtool, prometheus-node-exporter, chromium, fonts-dejavu-core, iproute2, procps$([ "$FOR_TESTS" = 1 ] && echo ", etcd-server, tinyproxy, tcpdump")$([ "$WITH_CONTAINERS" = 1 ] && echo ", docker.io, docker-compose, mmdebstrap") present"
else
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
  [ "$(id -u)" = 0 ] || die "missing ${need_pkgs[*]}: run as root, or install them with apt-get"
  say "Debian packages: installing ${need_pkgs[*]} (the system services are not started: this script starts dockerd itself; chromium is the headless browser of the status page test)"
  # Never start the packaged services: tests run the binaries themselves on loopback ports.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; fi
  trap '[ $had_policy = 0 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null || die "apt-get install ${need_pkgs[*]} failed"
fi

# --- 4. the container engine and the test base image ----------------------------------------------
if [ "$WITH_CONTAINERS" = 1 ]; then
  # dockerd with its own containerd, when no engine answers. /etc/docker/daemon.json is written only when missing: an
  # engine configured by its owner is used as it is.
  if docker info >/dev/null 2>&1; then
    say "Docker engine: running ($(docker version --format '{{.Server.Version}}' 2>/dev/null), storage driver $(docker info --format '{{.Driver}}' 2>/dev/null))"
  else
    [ "$(id -u)" = 0 ] || die "no Docker engine answers (docker info) and this is not root: start dockerd, or run this as root"
    if [ ! -e /etc/docker/daemon.json ]; then
      mkdir -p /etc/docker
      # vfs: no overlay filesystem is needed (none inside this sandbox); the bridge and the pools of compose networks
      # stay in 198.18.0.0/15, the range the tests may use.
      printf '{\n  "storage-driver": "vfs",\n  "bip": "198.18.200.1/24",\n  "default-address-pools": [{ "base": "198.19.0.0/16", "size": 24 }]\n}\n' \
        > /etc/docker/daemon.json
      say "Docker engine: wrote /etc/docker/daemon.json (vfs; bridge 198.18.200.1/24, address pools in 198.19.0.0/16)"
    fi
    mkdir -p "$CACHE_ROOT"
    say "Docker engine: starting dockerd (log: $CACHE_ROOT/dockerd.log)"
    setsid nohup dockerd >>"$CACHE_ROOT/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -n 20 "$CACHE_ROOT/dockerd.log" >&2; die "dockerd did not answer within 60 s: its last log lines are above"; }
    say "Docker engine: ready ($(docker version --format '{{.Server.Version}}'))"
  fi
  # The base image: nothing can be pulled, so it is made here. Debian 12 minbase (mmdebstrap, from the Debian mirror in
  # this machine's apt sources) with ca-certificates and wget (the compose healthchecks use it), this machine's node and
  # npm, and its CA bundle for npm (NODE_EXTRA_CA_CERTS: the registry may be reached through a TLS-inspecting proxy, as
  # here). The tag's key covers all of that, so a new node or CA bundle makes a new image.
  # Trimmed where nothing reads it, as Debian's own slim images are: dpkg leaves out documentation (but the copyright
  # files), man and info pages and translations (path-exclude, kept in the image's dpkg config, so a later apt-get
  # install leaves them out too), and /usr is merged by mmdebstrap's merged-usr hook instead of the usrmerge package,
  # which would bring Perl (~50 MB). On the vfs storage driver every container and every build step on this base
  # copies its whole file system.
  NODE_BIN="$(readlink -f "$(command -v node)")"
  NPM_DIR="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
  HOST_CA=/etc/ssl/certs/ca-certificates.crt
  [ -f "$HOST_CA" ] || die "no CA bundle at $HOST_CA (the base image's npm needs it): install ca-certificates"
  BASE_KEY="$( (echo "bookworm minbase ca-certificates wget merged-usr-hook no-doc-man-info-locale v2"; node --version; npm --version; sha256sum "$HOST_CA") | sha256sum | cut -c1-12)"
  BASE_IMAGE="scrapez-test/base:$BASE_KEY"
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image: $BASE_IMAGE present"
  else
    say "base image: making $BASE_IMAGE (Debian 12 minbase with mmdebstrap, node $(node --version), npm $(npm --version); about a minute)"
    t0=$SECONDS
    tarball="$CACHE_ROOT/base-$BASE_KEY.partial.$$.tar"
    mkdir -p "$CACHE_ROOT"
    if ! mmdebstrap --quiet --variant=minbase --include=ca-certificates,wget \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --customize-hook='mkdir -p "$1/usr/local/lib/node_modules" "$1/usr/local/share"' \
      --customize-hook="copy-in $NODE_BIN /usr/local/bin" \
      --customize-hook="copy-in $NPM_DIR /usr/local/lib/node_modules" \
      --customize-hook="upload $HOST_CA /usr/local/share/scrapez-test-ca.crt" \
      --customize-hook='chroot "$1" sh -c "ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx && chmod 0644 /usr/local/share/scrapez-test-ca.crt"' \
      bookworm "$tarball" >"$CACHE_ROOT/base.build.log" 2>&1; then
      tail -n 20 "$CACHE_ROOT/base.build.log" >&2
      rm -f "$tarball"
      die "mmdebstrap failed: its last lines are above, all of it in $CACHE_ROOT/base.build.log"
    fi
    docker import --change 'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/scrapez-test-ca.crt' --change 'CMD ["bash"]' \
      "$tarball" "$BASE_IMAGE" >/dev/null || { rm -f "$tarball"; die "docker import of the base image failed"; }
    rm -f "$tarball"
    say "base image: $BASE_IMAGE made in $((SECONDS - t0)) s ($(docker image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
  fi
  # The busybox base image (docs/container.md), for the exporters' images (binaryImage in test/harness/docker.ts, base
  # "busybox") and the Helm test's pause and busybox containers: what the official prom/* images are built on
  # (quay.io/prometheus/busybox:glibc), made from parts this machine has. Debian's busybox-static (apt-get download;
  # its applets linked in /bin: sh, wget for the healthchecks, cp, chmod, chown, sleep, ...), the glibc loader and
  # libraries ldd says Debian's node_exporter and Prometheus need (this machine's, as the binaries put on it are),
  # /etc/passwd and /etc/group with root and nobody (65534), /etc/nsswitch.conf and the CA bundle: 4 MB, where the
  # Debian base is over 200. Its label scrapez-test.libs lists the libraries; binaryImage checks each binary's ldd
  # against it. The key covers busybox's version, the libraries (paths and content) and the CA bundle.
  SLIM_LIBS="$(ldd /usr/bin/prometheus-node-exporter /usr/bin/prometheus \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u | tr '\n' ' ')"
  SLIM_LIBS="${SLIM_LIBS% }"
  [ -n "$SLIM_LIBS" ] || die "ldd names no library of /usr/bin/prometheus-node-exporter and /usr/bin/prometheus: the busybox base image takes its glibc from what they link"
  BUSYBOX_VERSION="$(apt-cache policy busybox-static 2>/dev/null | awk '$1 == "Candidate:" {print $2}')"
  { [ -n "$BUSYBOX_VERSION" ] && [ "$BUSYBOX_VERSION" != "(none)" ]; } \
    || die "apt knows no busybox-static package (the busybox base image's sh and tools): run apt-get update"
  BUSYBOX_KEY="$( (echo "busybox-static glibc passwd group nsswitch.conf ca v1 $BUSYBOX_VERSION"
    for l in $SLIM_LIBS; do echo "$l $(sha256sum < "$l")"; done; sha256sum < "$HOST_CA") | sha256sum | cut -c1-12)"
  BUSYBOX_IMAGE="scrapez-test/busybox:$BUSYBOX_KEY"
  if docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    say "busybox base image: $BUSYBOX_IMAGE present"
  else
    say "busybox base image: making $BUSYBOX_IMAGE (busybox-static $BUSYBOX_VERSION from the Debian mirror; this machine's $SLIM_LIBS)"
    work="$CACHE_ROOT/busybox-$BUSYBOX_KEY.partial.$$"
    rm -rf "$work" && mkdir -p "$work/deb"
    (cd "$work/deb" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "busybox-static=$BUSYBOX_VERSION") \
      >"$work/download.log" 2>&1 && dpkg-deb -x "$work"/deb/busybox-static_*.deb "$work/deb/x" \
      || { cat "$work/download.log" >&2; rm -rf "$work"; die "apt-get download busybox-static=$BUSYBOX_VERSION failed (above)"; }
    r="$work/root"
    mkdir -p "$r"/{bin,dev,etc/ssl/certs,home,proc,root,sys,tmp,usr/local/bin,var}
    chmod 1777 "$r/tmp" && chmod 0700 "$r/root"
    install -m 0755 "$work/deb/x/bin/busybox" "$r/bin/busybox"
    for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
    for l in $SLIM_LIBS; do install -D -m 0755 "$(readlink -f "$l")" "$r$l"; done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' > "$r/etc/group"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
      > "$r/etc/nsswitch.conf"
    install -m 0644 "$HOST_CA" "$r/etc/ssl/certs/ca-certificates.crt"
    tar --numeric-owner --owner=0 --group=0 -C "$r" -cf "$work/root.tar" . \
      && docker import --change 'CMD ["sh"]' --change "LABEL scrapez-test.libs=\"$SLIM_LIBS\"" \
        "$work/root.tar" "$BUSYBOX_IMAGE" >/dev/null \
      || { rm -rf "$work"; die "docker import of the busybox base image failed"; }
    rm -rf "$work"
    say "busybox base image: $BUSYBOX_IMAGE made ($(docker image inspect --format '{{.Size}}' "$BUSYBOX_IMAGE" | awk '{printf "%.1f MB", $1/1e6}'))"
  fi
fi

# --- 5. wait for the Go builds, then link what the tests use ---------------------------------------
if [ ${#builds[@]} -gt 0 ]; then
  say "waiting for ${#builds[@]} Go build(s) to finish"
  failed=()
  for b in "${builds[@]}"; do wait "${b%%:*}" || failed+=("${b#*:}"); done
  [ ${#failed[@]} -eq 0 ] || die "building ${failed[*]} failed (see above)"
fi
mkdir -p .cache
ln -sfn "$ZITI_BIN" .cache/ziti
if [ -z "$ZITI2_BIN" ]; then
  # Built in the background just now: whichever way worked.
  for c in "$ZITI2_MOD_DIR/ziti" "$ZITI2_SRC_DIR/ziti"; do
    if [ -n "${c%/ziti}" ] && ziti_is "$ZITI2_VERSION" "$c"; then ZITI2_BIN=$c; break; fi
  done
  [ -n "$ZITI2_BIN" ] || die "ziti $ZITI2_VERSION was built but does not print $ZITI2_VERSION from \`ziti version\`"
fi
ln -sfn "$ZITI2_BIN" .cache/ziti-v2
ln -sfn "$PROM3_BIN" .cache/prometheus3
# tools/k8scheck is gone (the API server judges the chart's objects): its old link with it.
rm -f .cache/k8scheck
if [ "$FOR_TESTS" = 1 ]; then
  ln -sfn "$HELM_BIN" .cache/helm
  ln -sfn "$KAS_BIN" .cache/kube-apiserver
  ln -sfn "$KUBECTL_BIN" .cache/kubectl
  ln -sfn "$OPERATOR_CRDS_DIR" .cache/operator-crds
  ln -sfn "$FE_BIN" .cache/format-exporter
  ln -sfn "$KSM_BIN" .cache/kube-state-metrics
fi
if [ "$WITH_CONTAINERS" = 1 ]; then
  # `docker compose`: the CLI finds plugins in /usr/local/lib/docker/cli-plugins (among others).
  if [ "$(id -u)" = 0 ]; then
    mkdir -p /usr/local/lib/docker/cli-plugins
    ln -sfn "$COMPOSE_BIN" /usr/local/lib/docker/cli-plugins/docker-compose
  fi
  docker compose version --short 2>/dev/null | grep -qx "${COMPOSE_VERSION#v}" \
    || die "\`docker compose version\` is not ${COMPOSE_VERSION#v}: link $COMPOSE_BIN as a Docker CLI plugin (~/.docker/cli-plugins/docker-compose), or run this as root"
  echo "$BASE_IMAGE" > .cache/docker-base-image
  echo "$BUSYBOX_IMAGE" > .cache/docker-busybox-image
  ln -sfn "$REGISTRY_BIN" .cache/registry
fi
say "ready: ziti $ZITI2_VERSION at .cache/ziti-v2 -> $ZITI2_BIN (the default line), $ZITI_VERSION at .cache/ziti -> $ZITI_BIN"
say "ready: Prometheus $PROM3_VERSION at .cache/prometheus3 -> $PROM3_BIN"
if [ "$FOR_TESTS" = 1 ]; then
  say "ready: helm at .cache/helm -> $HELM_BIN"
  say "ready: format-exporter at .cache/format-exporter -> $FE_BIN"
  say "ready: kube-state-metrics $KSM_VERSION at .cache/kube-state-metrics -> $KSM_BIN"
  say "ready: kube-apiserver $KAS_VERSION at .cache/kube-apiserver -> $KAS_BIN, kubectl at .cache/kubectl (on etcd $(etcd --version 2>/dev/null | awk '/^etcd Version/ {print $3}')), Operator $OPERATOR_VERSION CRDs at .cache/operator-crds"
else
  say "chart tools: skipped (--demo): no Helm, kube-apiserver, kubectl, Operator CRDs or kube-state-metrics (only the tests need them)"
fi
if [ "$WITH_CONTAINERS" = 1 ]; then
  say "ready: Docker engine, base images $BASE_IMAGE (in .cache/docker-base-image) and $BUSYBOX_IMAGE (in .cache/docker-busybox-image), docker compose $COMPOSE_VERSION -> $COMPOSE_BIN"
  say "ready: OCI registry $REGISTRY_VERSION at .cache/registry -> $REGISTRY_BIN"
else
  say "containers: skipped (--demo): no Docker engine, base image, docker compose or registry (only the tests need them)"
fi
