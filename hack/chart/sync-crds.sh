#!/usr/bin/env bash
# Copies the canonical CRDs (crds/*.yaml) into the chart (charts/tollgate/crds/), byte for byte,
# and removes chart CRDs that no longer exist at the top level.
#   hack/chart/sync-crds.sh          sync
#   hack/chart/sync-crds.sh --check  exit 1 (and list the differences) when they differ
set -euo pipefail
cd "$(dirname "$0")/../.."
src=crds
dst=charts/tollgate/crds
check=0
[ "${1:-}" = "--check" ] && check=1

shopt -s nullglob
sources=("$src"/*.yaml)
if [ ${#sources[@]} -eq 0 ]; then
  echo "sync-crds: no CRDs in $src/" >&2
  exit 1
fi

differ=0
for file in "${sources[@]}"; do
  target="$dst/$(basename "$file")"
  if ! cmp -s "$file" "$target"; then
    differ=1
    if [ "$check" = 1 ]; then
      echo "sync-crds: $target differs from $file" >&2
    else
      mkdir -p "$dst"
      cp "$file" "$target"
      echo "sync-crds: updated $target" >&2
    fi
  fi
done
for target in "$dst"/*.yaml; do
  if [ ! -e "$src/$(basename "$target")" ]; then
    differ=1
    if [ "$check" = 1 ]; then
      echo "sync-crds: $target has no counterpart in $src/" >&2
    else
      rm "$target"
      echo "sync-crds: removed $target" >&2
    fi
  fi
done
if [ "$check" = 1 ] && [ "$differ" = 1 ]; then
  echo "sync-crds: run hack/chart/sync-crds.sh (make sync-crds)" >&2
  exit 1
fi
