#!/usr/bin/env bash
# Fetches the prometheus-operator CRDs the chart's monitoring objects need (ServiceMonitor,
# PrometheusRule) from the prometheus-operator Go module, at a pinned version, into the cache,
# and prints the folder that holds them. Nothing is fetched when they are already there.
#   kubectl apply --server-side -f "$(hack/chart/prometheus-crds.sh)"
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
MODULE=github.com/prometheus-operator/prometheus-operator
CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
OUT="$CACHE/prometheus-operator-crds-$VERSION"
CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

complete=1
for crd in "${CRDS[@]}"; do [ -s "$OUT/$crd" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "$OUT"
  exit 0
fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || { echo "prometheus-crds: no Go toolchain (set GO=/path/to/go)" >&2; exit 1; }
export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOFLAGS=-mod=mod GOTOOLCHAIN=local
unset GOWORK
# Outside any module, `go mod download` fetches the module into the module cache and reports
# where it is (the module cache is read-only, hence the copy).
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dir="$(cd "$work" && "$GO" mod download -json "$MODULE@$VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -n "$dir" ] && [ -d "$dir/example/prometheus-operator-crd" ] \
  || { echo "prometheus-crds: $MODULE@$VERSION has no example/prometheus-operator-crd" >&2; exit 1; }
tmp="$(mktemp -d "$CACHE/.prometheus-crds.XXXXXX")"
chmod 0755 "$tmp"
for crd in "${CRDS[@]}"; do
  install -m 0644 "$dir/example/prometheus-operator-crd/$crd" "$tmp/$crd"
done
rm -rf "$OUT"
mv "$tmp" "$OUT"
echo "$OUT"
