#!/usr/bin/env bash
# Creates or refreshes the project environment (.venv) from uv.lock.
# Installs uv itself into the cache folder first; nothing is installed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
UV_VERSION=0.13.9
UV="$CACHE/uv-$UV_VERSION/bin/uv"
if [ ! -x "$UV" ]; then
  echo "bootstrap: installing uv $UV_VERSION into $CACHE" >&2
  python3 -m venv "$CACHE/uv-$UV_VERSION"
  "$CACHE/uv-$UV_VERSION/bin/pip" install -q "uv==$UV_VERSION"
fi
export UV_PYTHON="${UV_PYTHON:-python3.11}"
if [ "${1:-}" = "--lock" ]; then
  "$UV" lock
fi
stamp=.venv/.tollgate-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s uv.lock "$stamp"; then
  "$UV" sync --frozen --all-packages --group dev
  cp uv.lock "$stamp"
fi
