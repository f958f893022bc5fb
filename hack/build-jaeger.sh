#!/usr/bin/env bash
# Builds (or reuses) Jaeger, the trace backend of the tracing tests, from the Go module
# proxy at the version pinned below, into $TOLLGATE_CACHE/jaeger-<version>/jaeger.
# Jaeger's go.mod carries a replace directive, so `go install …@version` refuses it; a
# small wrapper module generated under the cache (never committed) repeats that replace.
set -euo pipefail
cd "$(dirname "$0")/.."
JAEGER_VERSION=v1.76.0
CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
OUT="$CACHE/jaeger-$JAEGER_VERSION"
GO="${GO:-go}"
[ -x "$OUT/jaeger" ] && exit 0
echo "build-jaeger: building Jaeger $JAEGER_VERSION into $OUT (first time only, a few minutes)" >&2
started=$(date +%s)
src="$CACHE/jaeger-src-$JAEGER_VERSION"
rm -rf "$src" && mkdir -p "$src" "$OUT"
cat >"$src/go.mod" <<MOD
module tollgate.local/jaeger-build

go 1.24.6

require github.com/jaegertracing/jaeger $JAEGER_VERSION

replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0
MOD
cd "$src"
GOFLAGS=-mod=mod "$GO" get "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >/dev/null 2>&1 ||
  GOFLAGS=-mod=mod "$GO" get "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 "$GO" build -trimpath -ldflags "-s -w" \
  -o "$OUT/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger
mv "$OUT/jaeger.tmp" "$OUT/jaeger"
echo "build-jaeger: done in $(($(date +%s) - started))s: $(du -h "$OUT/jaeger" | cut -f1)" >&2
