#!/usr/bin/env bash
# Ollama with models pulled at start: serves Ollama, pulls every model named in
# OLLAMA_PULL_MODELS (comma-separated, e.g. "llama3.1:8b, nomic-embed-text") through its HTTP
# API (/api/pull), then keeps serving. For running Ollama without the Tollgate operator (which
# pulls models itself): docker compose, a plain Deployment, a VM.
#
#   tollgate-ollama-bootstrap           serve and pull (the image's entrypoint)
#   tollgate-ollama-bootstrap pull      only pull, into an Ollama that is already running
#
# Environment:
#   OLLAMA_PULL_MODELS            models to pull; ones already present are skipped
#   OLLAMA_HOST                   where Ollama listens (Ollama's own setting; default 127.0.0.1:11434)
#   OLLAMA_PULL_RETRIES           attempts per model (default 3), with a growing pause between
#   OLLAMA_PULL_STALL_SECONDS     abort an attempt when nothing arrives for this long (default 300)
#   OLLAMA_PULL_INSECURE_REGISTRIES  registries (host[:port], shell patterns such as "127.0.0.1:*",
#                                 comma-separated) pulled from over plain HTTP, e.g. a local
#                                 registry; models of other registries are pulled over HTTPS
#   OLLAMA_PULL_FAILURE           exit (default): stop with status 1 when a model cannot be pulled;
#                                 serve: log it and serve the models that are there
#   OLLAMA_READY_FILE             created once every pull is done (default /tmp/ollama-models-ready),
#                                 for a readiness probe: `test -f /tmp/ollama-models-ready`
#   OLLAMA_BIN                    the ollama executable (default: ollama on PATH)
#   OLLAMA_STARTUP_SECONDS        how long to wait for Ollama to answer (default 120)
#
# The model list is deliberately not OLLAMA_MODELS: that is Ollama's own setting for the folder
# that holds the models.
set -euo pipefail

mode="${1:-serve}"
models="${OLLAMA_PULL_MODELS:-}"
retries="${OLLAMA_PULL_RETRIES:-3}"
stall="${OLLAMA_PULL_STALL_SECONDS:-300}"
on_failure="${OLLAMA_PULL_FAILURE:-exit}"
ready_file="${OLLAMA_READY_FILE:-/tmp/ollama-models-ready}"
ollama_bin="${OLLAMA_BIN:-ollama}"
startup="${OLLAMA_STARTUP_SECONDS:-120}"
insecure_registries="${OLLAMA_PULL_INSECURE_REGISTRIES:-}"

# OLLAMA_HOST is "host:port", "scheme://host:port" or just "host"; talk to it on loopback when
# it listens on every address.
listen="${OLLAMA_HOST:-127.0.0.1:11434}"
listen="${listen#http://}"
listen="${listen#https://}"
if [[ "$listen" == *:* ]]; then host="${listen%:*}" port="${listen##*:}"; else host="$listen" port=11434; fi
case "$host" in "" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;; esac
url="http://$host:$port"

log() { printf 'ollama-bootstrap: %s\n' "$*" >&2; }

case "$on_failure" in exit | serve) ;; *) log "OLLAMA_PULL_FAILURE must be exit or serve"; exit 2 ;; esac
usage() {
  echo "usage: tollgate-ollama-bootstrap [serve|pull]"
  echo "  serve (default): serve Ollama, pull OLLAMA_PULL_MODELS, keep serving"
  echo "  pull: only pull, into an Ollama that is already running at OLLAMA_HOST"
}
case "$mode" in
  serve | pull) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

wait_for_ollama() {
  local deadline=$((SECONDS + startup))
  until curl -fsS -o /dev/null "$url/api/version" 2>/dev/null; do
    if [ -n "${server_pid:-}" ] && ! kill -0 "$server_pid" 2>/dev/null; then
      log "ollama exited before it answered"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "ollama did not answer at $url within ${startup}s"
      return 1
    fi
    sleep 0.5
  done
}

present() {
  local code
  code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$url/api/show" \
    -H 'Content-Type: application/json' -d "{\"model\": \"$1\"}" 2>/dev/null || true)"
  [ "$code" = 200 ]
}

# "true" when the model's registry (the part before the first "/", when it names a host) is
# one of OLLAMA_PULL_INSECURE_REGISTRIES; "false" otherwise.
insecure() {
  local registry="${1%%/*}" pattern
  local -a patterns
  if [[ "$1" != */* ]] || [[ "$registry" != *[.:]* && "$registry" != localhost ]]; then
    echo false
    return
  fi
  IFS=',' read -r -a patterns <<<"$insecure_registries"
  for pattern in "${patterns[@]}"; do
    pattern="${pattern//[[:space:]]/}"
    # shellcheck disable=SC2053  # a pattern, deliberately unquoted
    if [ -n "$pattern" ] && [[ "$registry" == $pattern ]]; then
      echo true
      return
    fi
  done
  echo false
}

# One attempt: stream the progress, log each new status, succeed only on "success".
pull_once() {
  local model="$1" line status last="" error="" ok=0
  # A JSON string's content, escaped quotes and backslashes included.
  local error_re='"error"[[:space:]]*:[[:space:]]*"(([^"\\]|\\.)*)"'
  while IFS= read -r line; do
    if [[ "$line" =~ $error_re ]]; then
      error="${BASH_REMATCH[1]//\\\"/\"}"
    elif [[ "$line" =~ \"status\"[[:space:]]*:[[:space:]]*\"([^\"]*)\" ]]; then
      status="${BASH_REMATCH[1]}"
      if [ "$status" != "$last" ]; then
        log "$model: $status"
        last="$status"
      fi
      [ "$status" = success ] && ok=1
    fi
  done < <(curl -sS -N -X POST "$url/api/pull" -H 'Content-Type: application/json' \
    --speed-limit 1 --speed-time "$stall" \
    -d "{\"model\": \"$model\", \"stream\": true, \"insecure\": $(insecure "$model")}" 2>&1 || echo "{\"error\": \"connection to ollama failed or stalled\"}")
  if [ "$ok" = 1 ]; then
    return 0
  fi
  log "$model: pull failed: ${error:-the stream ended without success}"
  return 1
}

pull_model() {
  local model="$1" attempt=1
  if ! [[ "$model" =~ ^[A-Za-z0-9][A-Za-z0-9._:/@-]*$ ]]; then
    log "\"$model\" is not a model name"
    return 1
  fi
  if present "$model"; then
    log "$model: already present"
    return 0
  fi
  while true; do
    pull_once "$model" && return 0
    if [ "$attempt" -ge "$retries" ]; then
      log "$model: giving up after $attempt attempts"
      return 1
    fi
    sleep $((attempt * 5))
    attempt=$((attempt + 1))
  done
}

pull_all() {
  local failed=0 model
  local -a names
  IFS=',' read -r -a names <<<"$models"
  for model in "${names[@]}"; do
    model="${model//[[:space:]]/}"
    [ -z "$model" ] && continue
    pull_model "$model" || failed=1
  done
  return "$failed"
}

if [ "$mode" = pull ]; then
  wait_for_ollama
  pull_all
  exit $?
fi

rm -f "$ready_file"
"$ollama_bin" serve &
server_pid=$!
# Kubernetes stops the pod with SIGTERM: hand it to Ollama and wait for it.
trap 'kill -TERM "$server_pid" 2>/dev/null || true' TERM INT

if ! wait_for_ollama; then
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" || true
  exit 1
fi
if pull_all; then
  log "every model is present"
  touch "$ready_file"
elif [ "$on_failure" = exit ]; then
  log "stopping: a model could not be pulled (OLLAMA_PULL_FAILURE=serve keeps serving)"
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" || true
  exit 1
else
  log "serving without the models that failed"
  touch "$ready_file"
fi

# `wait` returns early when a trapped signal arrives; keep waiting until Ollama has exited.
status=0
while kill -0 "$server_pid" 2>/dev/null; do
  wait "$server_pid" && status=0 || status=$?
done
exit "$status"
