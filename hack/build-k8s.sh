#!/usr/bin/env bash
# Builds (or reuses) the local control plane's binaries from source, at the
# versions pinned in hack/versions.env, into
#   $TOLLGATE_CACHE/k8s/<component>-<version>/
# (kubernetes-vX.Y.Z: kube-apiserver kube-controller-manager kube-scheduler
# kubectl; etcd-vX.Y.Z: etcd; kwok-vX.Y.Z: kwok and stages/, the default
# Stage objects kwokctl would give it; helm-vX.Y.Z: helm).
#
# Only what is missing is built, one component at a time; when everything is
# cached the script prints nothing. Each component is built from a small
# wrapper Go module generated under the cache (never committed): upstream's
# go.mod files point their own sub-modules at local paths, which a dependent
# module cannot use, so the wrapper pins every such module to its published
# version instead.
#
# If KUBEBUILDER_ASSETS names a folder that already holds envtest's etcd,
# kube-apiserver and kubectl, those are used and not rebuilt; the other
# binaries are still built here. The Python side (tollgate_dev.controlplane.binaries)
# resolves binaries the same way.
#
# Environment: TOLLGATE_CACHE (cache root), GO (the go command to use),
# TOLLGATE_K8S_BUILD_VERBOSE=1 (show go's own output).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=versions.env
source hack/versions.env

CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
K8S_CACHE="$CACHE/k8s"
VERBOSE="${TOLLGATE_K8S_BUILD_VERBOSE:-0}"

log() { echo "build-k8s: $*" >&2; }
die() { log "error: $*"; exit 1; }

# True when every named binary is present and executable in folder $1.
have_all() {
  local dir="$1"; shift
  local bin
  for bin in "$@"; do
    [ -x "$dir/$bin" ] || return 1
  done
}

# The binaries envtest ships; used instead of ours when present.
ASSETS="${KUBEBUILDER_ASSETS:-}"
from_assets() { [ -n "$ASSETS" ] && have_all "$ASSETS" "$@"; }

K8S_DIR="$K8S_CACHE/kubernetes-$KUBERNETES_VERSION"
ETCD_DIR="$K8S_CACHE/etcd-$ETCD_VERSION"
KWOK_DIR="$K8S_CACHE/kwok-$KWOK_VERSION"
HELM_DIR="$K8S_CACHE/helm-$HELM_VERSION"

K8S_BINS=(kube-controller-manager kube-scheduler)
from_assets kube-apiserver || K8S_BINS+=(kube-apiserver)
from_assets kubectl || K8S_BINS+=(kubectl)

need_k8s=0; need_etcd=0; need_kwok=0; need_helm=0
have_all "$K8S_DIR" "${K8S_BINS[@]}" || need_k8s=1
from_assets etcd || have_all "$ETCD_DIR" etcd || need_etcd=1
have_all "$KWOK_DIR" kwok && [ -f "$KWOK_DIR/stages/pod-ready.yaml" ] || need_kwok=1
have_all "$HELM_DIR" helm || need_helm=1

if [ $((need_k8s + need_etcd + need_kwok + need_helm)) -eq 0 ]; then
  exit 0
fi

# --- the Go toolchain -------------------------------------------------------
GO="${GO:-}"
if [ -z "$GO" ]; then
  if command -v go >/dev/null 2>&1; then
    GO="$(command -v go)"
  elif [ -x /usr/local/go/bin/go ]; then
    GO=/usr/local/go/bin/go
  else
    die "no Go toolchain found (install Go >= 1.26 or set GO=/path/to/go)"
  fi
fi

# Module downloads and build results live in the cache, so a second run (or a
# rebuild after a version bump) reuses everything it can.
export GOPATH="$K8S_CACHE/go"
export GOMODCACHE="$GOPATH/pkg/mod"
export GOCACHE="$K8S_CACHE/go-build"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GO111MODULE=on
unset GOOS GOARCH GOWORK

# Runs go, quietly unless TOLLGATE_K8S_BUILD_VERBOSE=1; shows the output on failure.
run_go() {
  local out
  if [ "$VERBOSE" = 1 ]; then
    "$GO" "$@"
    return
  fi
  out="$(mktemp)"
  if ! "$GO" "$@" >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "go $* failed"
  fi
  rm -f "$out"
}

# Creates a fresh wrapper module in $1 named $2 and prints nothing.
new_wrapper() {
  local dir="$1" name="$2"
  rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && run_go mod init "tollgate.build/$name")
}

# Prints the path of module $1@$2's go.mod file in the module cache.
mod_file() {
  local json
  json="$("$GO" mod download -json "$1@$2")" || die "cannot download $1@$2"
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

# Builds binaries ($4...: NAME=PACKAGE) into $2 (via a temporary folder, so an
# interrupted build never looks cached), from wrapper module $1 with ldflags $3.
build_into() {
  local wrapper="$1" dest="$2" ldflags="$3"; shift 3
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local spec
  for spec in "$@"; do
    log "  go build ${spec#*=}"
    (cd "$wrapper" && run_go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/${spec%%=*}" "${spec#*=}")
  done
  if [ -d "$dest" ]; then
    # Keep binaries already there (a partial earlier set); add the new ones.
    cp -f "$tmp"/* "$dest"/
    rm -rf "$tmp"
  else
    mv "$tmp" "$dest"
  fi
}

report() {
  local dir="$1" started="$2"
  local secs=$(($(date +%s) - started))
  log "  done in ${secs}s: $(cd "$dir" && du -h -- * | awk '{printf "%s %s  ", $2, $1}')"
}

# An interrupted build leaves no half-filled folder behind.
trap 'rm -rf "$K8S_CACHE"/*.tmp.$$' EXIT
total_start=$(date +%s)
log "building into $K8S_CACHE (go: $("$GO" env GOVERSION)); the first build takes a while"

# --- Kubernetes --------------------------------------------------------------
if [ "$need_k8s" = 1 ]; then
  started=$(date +%s)
  log "kubernetes $KUBERNETES_VERSION: ${K8S_BINS[*]}"
  w="$K8S_CACHE/src/kubernetes-$KUBERNETES_VERSION"
  new_wrapper "$w" kubernetes
  gomod="$(cd "$w" && mod_file k8s.io/kubernetes "$KUBERNETES_VERSION")"
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION"
  # Staging modules are required at v0.0.0 and replaced with ./staging/...;
  # each is published as v0.<minor>.<patch> of the same release.
  staging_version="v0.${KUBERNETES_VERSION#v1.}"
  mapfile -t staging < <(awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod" | sort -u)
  [ "${#staging[@]}" -gt 0 ] || die "found no staging modules in $gomod"
  edits=(-require "k8s.io/kubernetes@$KUBERNETES_VERSION")
  for m in "${staging[@]}"; do
    edits+=(-replace "$m=$m@$staging_version")
  done
  (cd "$w" && run_go mod edit "${edits[@]}")
  pkgs=()
  for bin in "${K8S_BINS[@]}"; do pkgs+=("$bin=k8s.io/kubernetes/cmd/$bin"); done
  ver="${KUBERNETES_VERSION#v}"
  major="${ver%%.*}"; rest="${ver#*.}"; minor="${rest%%.*}"
  ldflags=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major"
    ldflags+=" -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldflags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  build_into "$w" "$K8S_DIR" "$ldflags" "${pkgs[@]}"
  report "$K8S_DIR" "$started"
fi

# --- etcd --------------------------------------------------------------------
if [ "$need_etcd" = 1 ]; then
  started=$(date +%s)
  log "etcd $ETCD_VERSION"
  w="$K8S_CACHE/src/etcd-$ETCD_VERSION"
  new_wrapper "$w" etcd
  # etcd's server module replaces its sibling modules (api, client, pkg) with
  # local paths; pin each to the same published release instead.
  edits=(-require "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  for m in go.etcd.io/etcd/api/v3 go.etcd.io/etcd/client/pkg/v3 \
           go.etcd.io/etcd/client/v3 go.etcd.io/etcd/pkg/v3; do
    edits+=(-replace "$m=$m@$ETCD_VERSION")
  done
  (cd "$w" && run_go mod edit "${edits[@]}")
  build_into "$w" "$ETCD_DIR" "" etcd=go.etcd.io/etcd/server/v3
  report "$ETCD_DIR" "$started"
fi

# --- kwok --------------------------------------------------------------------
if [ "$need_kwok" = 1 ]; then
  started=$(date +%s)
  log "kwok $KWOK_VERSION"
  w="$K8S_CACHE/src/kwok-$KWOK_VERSION"
  new_wrapper "$w" kwok
  (cd "$w" && run_go mod edit -require "sigs.k8s.io/kwok@$KWOK_VERSION")
  build_into "$w" "$KWOK_DIR" "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    kwok=sigs.k8s.io/kwok/cmd/kwok
  # Standalone kwok needs Stage objects (how nodes and pods move through their
  # lifecycle); keep the ones kwokctl uses by default next to the binary.
  kwok_src="$(cd "$w" && "$GO" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  mkdir -p "$KWOK_DIR/stages"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cp "$kwok_src/kustomize/stage/$f" "$KWOK_DIR/stages/"
  done
  chmod -R u+w "$KWOK_DIR/stages"
  report "$KWOK_DIR" "$started"
fi

# --- helm --------------------------------------------------------------------
if [ "$need_helm" = 1 ]; then
  started=$(date +%s)
  log "helm $HELM_VERSION"
  helm_major="${HELM_VERSION%%.*}"   # v3 or v4: part of the module path
  w="$K8S_CACHE/src/helm-$HELM_VERSION"
  new_wrapper "$w" helm
  (cd "$w" && run_go mod edit -require "helm.sh/helm/$helm_major@$HELM_VERSION")
  gomod="$(cd "$w" && mod_file "helm.sh/helm/$helm_major" "$HELM_VERSION")"
  # Helm reports the Kubernetes version its client libraries were built for.
  kminor="$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]}' "$gomod")"
  hp="helm.sh/helm/$helm_major"
  ldflags="-X $hp/internal/version.version=$HELM_VERSION -X $hp/internal/version.gitTreeState=clean"
  if [ -n "$kminor" ]; then
    ldflags+=" -X $hp/pkg/lint/rules.k8sVersionMajor=1 -X $hp/pkg/lint/rules.k8sVersionMinor=$kminor"
    ldflags+=" -X $hp/pkg/chartutil.k8sVersionMajor=1 -X $hp/pkg/chartutil.k8sVersionMinor=$kminor"
  fi
  build_into "$w" "$HELM_DIR" "$ldflags" "helm=$hp/cmd/helm"
  report "$HELM_DIR" "$started"
fi

log "all built in $(($(date +%s) - total_start))s"
