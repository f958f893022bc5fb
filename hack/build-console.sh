#!/usr/bin/env bash
# Builds the web console (gateway/console, a Next.js static export) into gateway/console/out,
# which the gateway serves under /console. Cached by a hash of the console's sources under
# $TOLLGATE_CACHE/console/<hash>: an unchanged console is copied from there, not rebuilt.
# Needs Node.js >= 20 and npm (dependencies come from the committed package-lock.json).
#   --with-deps   also make sure node_modules matches the lockfile when the build is cached
#                 (the browser tests take axe-core from there)
set -euo pipefail
cd "$(dirname "$0")/../gateway/console"
CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}/console"

deps() {
  command -v npm >/dev/null || { echo "build-console: npm (Node.js >= 20) is needed" >&2; exit 1; }
  local lock
  lock=$(sha256sum < package-lock.json | cut -c1-64)
  if [ "$(cat node_modules/.lock-hash 2>/dev/null)" != "$lock" ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
    echo "$lock" > node_modules/.lock-hash
  fi
}
if [ "${1:-}" = "--with-deps" ]; then deps; fi

sources() {
  git ls-files --cached --others --exclude-standard -- . 2>/dev/null \
    || find . -path ./node_modules -prune -o -path ./out -prune -o -path ./.next -prune -o -type f -print
}
hash=$( { node --version; sources | LC_ALL=C sort | while read -r f; do
  [ -f "$f" ] && printf '%s %s\n' "$f" "$(sha256sum < "$f" | cut -c1-64)"; done; } \
  | sha256sum | cut -c1-16)

if [ -f out/.source-hash ] && [ "$(cat out/.source-hash)" = "$hash" ]; then
  exit 0
fi
if [ ! -f "$CACHE/$hash/out/index.html" ]; then
  echo "build-console: building the console ($hash)" >&2
  deps
  NEXT_TELEMETRY_DISABLED=1 npx --no-install next build >&2
  mkdir -p "$CACHE/$hash.tmp"
  rm -rf "$CACHE/$hash.tmp/out" && cp -a out "$CACHE/$hash.tmp/out"
  rm -rf "$CACHE/$hash" && mv "$CACHE/$hash.tmp" "$CACHE/$hash"
fi
rm -rf out.tmp && cp -a "$CACHE/$hash/out" out.tmp && echo "$hash" > out.tmp/.source-hash
rm -rf out && mv out.tmp out
