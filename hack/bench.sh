#!/usr/bin/env bash
# `make bench`: the gateway against the upstream itself, Caddy, a minimal FastAPI+aiohttp
# proxy and LiteLLM, in one run on this machine; results in bench/results/ (see
# bench/README.md). Installs what it needs: wrk (Debian), LiteLLM and the report's tools in
# their own environments under the cache folder, the Go streaming load generator.
#
#   BENCH_SOAK_SECONDS=60 make bench      # shorter soak (default 600)
#   BENCH_PROFILE=0 make bench            # skip the py-spy profiles of the gateway
#   BENCH_USAGE_QUERY=0 make bench        # skip the 10M-row usage-explorer query
#   other knobs: BENCH_ROUNDS, BENCH_SECONDS, BENCH_STREAMS, BENCH_SYSTEMS, BENCH_PHASES …
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
BENCH_CACHE="$CACHE/bench"
LITELLM_VERSION=1.106.12 # newer releases need packages PyPI does not serve (litellm-proxy …)
MATPLOTLIB_VERSION=3.11.2
PYSPY_VERSION=0.4.3

hack/bootstrap.sh
hack/ensure-debs.sh wrk
UV_VERSION="$(sed -n 's/^UV_VERSION=//p' hack/bootstrap.sh)"
UV="$CACHE/uv-$UV_VERSION/bin/uv"
mkdir -p "$BENCH_CACHE"

venv_with() { # venv_with DIR STAMP PACKAGE...: create DIR with exactly these pins, once
  local dir="$1" stamp="$2"
  shift 2
  if [ "$(cat "$dir/.bench-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "bench: installing $* into $dir" >&2
    rm -rf "$dir"
    "$UV" venv -q --python python3.11 "$dir"
    VIRTUAL_ENV="$dir" "$UV" pip install -q "$@"
    echo "$stamp" >"$dir/.bench-stamp"
  fi
}
# extra_proxy brings Prisma, which LiteLLM's virtual keys (its database) need
venv_with "$BENCH_CACHE/litellm-venv" "litellm $LITELLM_VERSION proxy,extra_proxy" \
  "litellm[proxy,extra_proxy]==$LITELLM_VERSION"
venv_with "$BENCH_CACHE/tools-venv" "matplotlib $MATPLOTLIB_VERSION py-spy $PYSPY_VERSION" \
  "matplotlib==$MATPLOTLIB_VERSION" "py-spy==$PYSPY_VERSION"

echo "bench: building the streaming load generator" >&2
(cd bench/load/streamload && go build -trimpath -o "$BENCH_CACHE/streamload" .)

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export BENCH_SOAK_SECONDS="${BENCH_SOAK_SECONDS:-600}"
export BENCH_LITELLM_VENV="$BENCH_CACHE/litellm-venv"
.venv/bin/python bench/run.py --streamload "$BENCH_CACHE/streamload" --out bench/results
"$BENCH_CACHE/tools-venv/bin/python" bench/report.py bench/results/results.json

# The console's usage explorer over 10 million usage rows (BENCH_USAGE_QUERY=0 skips it).
if [ "${BENCH_USAGE_QUERY:-1}" = "1" ]; then
  .venv/bin/python bench/usage_query.py --rows "${BENCH_USAGE_ROWS:-10000000}" \
    --out bench/results/usage-query.json
fi

if [ "${BENCH_PROFILE:-1}" = "1" ]; then
  for workload in chat-c1 chat-c32 stream-c100; do
    .venv/bin/python bench/profile.py --py-spy "$BENCH_CACHE/tools-venv/bin/py-spy" \
      --streamload "$BENCH_CACHE/streamload" --workload "$workload" --seconds 15 \
      --out bench/results/profiles >/dev/null
  done
  echo "bench: profiles in bench/results/profiles/" >&2
fi
