#!/usr/bin/env bash
# Builds (or reuses) the real Ollama server and a local OCI registry from
# source, at the versions pinned in hack/ollama-versions.env, into
#   $TOLLGATE_CACHE/ollama/ollama-<version>/ollama
#   $TOLLGATE_CACHE/ollama/registry-<version>/registry
# Only what is missing is built; when both are cached the script prints nothing.
#
# Ollama is built from its Go module: the module carries llama.cpp and ggml,
# which cgo compiles into the binary together with ggml's CPU backend, so the
# one file runs models on the CPU with no libraries beside it. Two things the
# module does not carry are supplied here:
#   * Go module archives leave out every folder named `vendor`, and llama.cpp
#     keeps three header-only libraries there. nlohmann/json and stb_image come
#     from the system (Debian: nlohmann-json3-dev, libstb-dev; installed with
#     apt-get when missing and we are root). miniaudio is used only to decode
#     audio input, which our tests never send: a small header written below
#     answers every decode with an error.
#   * The version string, set with -ldflags as Ollama's release build does.
#
# The registry is CNCF distribution's `registry` command.
#
# Environment: TOLLGATE_CACHE (cache root), GO (the go command to use),
# TOLLGATE_OLLAMA_BUILD_VERBOSE=1 (show go's own output),
# TOLLGATE_OLLAMA_BUILD_NICE (niceness of the compilers, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ollama-versions.env
source hack/ollama-versions.env

CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
OLLAMA_CACHE="$CACHE/ollama"
VERBOSE="${TOLLGATE_OLLAMA_BUILD_VERBOSE:-0}"
NICE="${TOLLGATE_OLLAMA_BUILD_NICE:-10}"

OLLAMA_DIR="$OLLAMA_CACHE/ollama-$OLLAMA_VERSION"
REGISTRY_DIR="$OLLAMA_CACHE/registry-$DISTRIBUTION_VERSION"

log() { echo "build-ollama: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_ollama=0; need_registry=0
[ -x "$OLLAMA_DIR/ollama" ] || need_ollama=1
[ -x "$REGISTRY_DIR/registry" ] || need_registry=1
if [ $((need_ollama + need_registry)) -eq 0 ]; then
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

export GOPATH="$OLLAMA_CACHE/go"
export GOMODCACHE="$GOPATH/pkg/mod"
export GOCACHE="$OLLAMA_CACHE/go-build"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
export GO111MODULE=on
unset GOOS GOARCH GOWORK

# Runs a command quietly unless verbose; shows its output on failure.
run_quiet() {
  local out
  if [ "$VERBOSE" = 1 ]; then
    "$@"
    return
  fi
  out="$(mktemp)"
  if ! "$@" >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    rm -f "$out"
    die "$* failed"
  fi
  rm -f "$out"
}

niced() { nice -n "$NICE" "$@"; }

report() {
  local file="$1" started="$2"
  log "  done in $(($(date +%s) - started))s: $(du -h "$file" | cut -f1) $file"
}

trap 'rm -rf "$OLLAMA_CACHE"/*.tmp.$$' EXIT
total_start=$(date +%s)
log "building into $OLLAMA_CACHE (go: $("$GO" env GOVERSION)); the first build takes a while"

# --- the C/C++ headers llama.cpp expects in its vendor/ folder --------------
# Prints the folders of the compiler's default include path.
include_dirs() {
  echo | "${CXX:-c++}" -x c++ -E -v - 2>&1 >/dev/null |
    sed -n '/^#include <\.\.\.> search starts here:/,/^End of search list\./p' |
    sed '1d;$d;s/^ *//'
}
have_header() {
  local dir
  while read -r dir; do
    [ -f "$dir/$1" ] && return 0
  done < <(include_dirs)
  return 1
}
ensure_headers() {
  local missing=()
  have_header nlohmann/json.hpp || missing+=(nlohmann-json3-dev)
  have_header stb/stb_image.h || missing+=(libstb-dev)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]}"
    run_quiet apt-get install -y -q "${missing[@]}" ||
      { run_quiet apt-get update -q && run_quiet apt-get install -y -q "${missing[@]}"; }
  else
    die "missing C++ headers: install ${missing[*]} (or the same headers another way)"
  fi
}

# The subset of miniaudio's API that llama.cpp's mtmd helper calls, failing.
write_miniaudio_stub() {
  mkdir -p "$1/miniaudio"
  cat >"$1/miniaudio/miniaudio.h" <<'EOF'
/* Written by Tollgate's build: stands in for miniaudio.h, which the Go module
   archive leaves out. Decoding audio always fails; nothing else is used. */
#ifndef TOLLGATE_MINIAUDIO_STUB_H
#define TOLLGATE_MINIAUDIO_STUB_H
#include <stddef.h>
#include <stdint.h>
#ifndef MA_API
#define MA_API static
#endif
typedef uint64_t ma_uint64;
typedef uint32_t ma_uint32;
typedef int ma_result;
#define MA_SUCCESS 0
#define MA_ERROR (-1)
typedef enum { ma_format_unknown = 0, ma_format_f32 = 5 } ma_format;
typedef enum { ma_encoding_format_unknown = 0, ma_encoding_format_wav = 1 } ma_encoding_format;
typedef struct { ma_format format; ma_uint32 channels; ma_uint32 sampleRate; } ma_decoder_config;
typedef struct { int unused; } ma_decoder;
typedef struct { ma_encoding_format encodingFormat; ma_format format; ma_uint32 channels; ma_uint32 sampleRate; } ma_encoder_config;
typedef struct { int unused; } ma_encoder;
MA_API ma_decoder_config ma_decoder_config_init(ma_format f, ma_uint32 ch, ma_uint32 sr) { ma_decoder_config c = {f, ch, sr}; return c; }
MA_API ma_result ma_decoder_init_memory(const void *d, size_t n, const ma_decoder_config *c, ma_decoder *o) { (void)d; (void)n; (void)c; (void)o; return MA_ERROR; }
MA_API ma_result ma_decoder_get_length_in_pcm_frames(ma_decoder *d, ma_uint64 *n) { (void)d; *n = 0; return MA_ERROR; }
MA_API ma_result ma_decoder_read_pcm_frames(ma_decoder *d, void *o, ma_uint64 n, ma_uint64 *r) { (void)d; (void)o; (void)n; *r = 0; return MA_ERROR; }
MA_API ma_result ma_decoder_uninit(ma_decoder *d) { (void)d; return MA_SUCCESS; }
MA_API ma_encoder_config ma_encoder_config_init(ma_encoding_format e, ma_format f, ma_uint32 ch, ma_uint32 sr) { ma_encoder_config c = {e, f, ch, sr}; return c; }
MA_API ma_result ma_encoder_init_file(const char *p, const ma_encoder_config *c, ma_encoder *o) { (void)p; (void)c; (void)o; return MA_ERROR; }
MA_API ma_result ma_encoder_write_pcm_frames(ma_encoder *e, const void *f, ma_uint64 n, ma_uint64 *w) { (void)e; (void)f; (void)n; *w = 0; return MA_ERROR; }
MA_API void ma_encoder_uninit(ma_encoder *e) { (void)e; }
#endif
EOF
}

# Prints field $2 ("Dir", "GoMod") of `go mod download -json $1`.
mod_field() {
  local json
  json="$("$GO" mod download -json "$1")" || die "cannot download $1"
  sed -n "s/^[[:space:]]*\"$2\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" <<<"$json"
}

# --- Ollama ------------------------------------------------------------------
if [ "$need_ollama" = 1 ]; then
  started=$(date +%s)
  log "ollama $OLLAMA_VERSION (cgo: llama.cpp, ggml and its CPU backend)"
  ensure_headers
  mkdir -p "$OLLAMA_CACHE"
  modsrc="$(cd "$OLLAMA_CACHE" && mod_field "github.com/ollama/ollama@$OLLAMA_VERSION" Dir)"
  [ -f "$modsrc/main.go" ] || die "no source for github.com/ollama/ollama@$OLLAMA_VERSION"
  [ -d "$modsrc/llama/llama.cpp" ] ||
    die "github.com/ollama/ollama@$OLLAMA_VERSION carries no llama.cpp source (releases from v0.30 fetch it at build time)"
  # The module cache is read-only; build in a writable copy.
  src="$OLLAMA_CACHE/src/ollama-$OLLAMA_VERSION"
  rm -rf "$src"
  mkdir -p "$(dirname "$src")"
  cp -r "$modsrc" "$src"
  chmod -R u+w "$src"
  write_miniaudio_stub "$src/llama/llama.cpp/vendor"
  tmp="$OLLAMA_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$src" && CGO_ENABLED=1 run_quiet niced "$GO" build -trimpath \
    -ldflags "-s -w -X github.com/ollama/ollama/version.Version=${OLLAMA_VERSION#v}" \
    -o "$tmp/ollama" .)
  rm -rf "$OLLAMA_DIR"
  mv "$tmp" "$OLLAMA_DIR"
  # The copy is only needed while building (the go build cache keeps the rest).
  rm -rf "$src"
  report "$OLLAMA_DIR/ollama" "$started"
fi

# --- the registry ------------------------------------------------------------
if [ "$need_registry" = 1 ]; then
  started=$(date +%s)
  log "registry (distribution) $DISTRIBUTION_VERSION"
  tmp="$REGISTRY_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mkdir -p "$OLLAMA_CACHE"
  (cd "$OLLAMA_CACHE" && CGO_ENABLED=0 GOBIN="$tmp" run_quiet niced "$GO" install -trimpath \
    -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION" \
    "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION")
  rm -rf "$REGISTRY_DIR"
  mv "$tmp" "$REGISTRY_DIR"
  report "$REGISTRY_DIR/registry" "$started"
fi

log "all built in $(($(date +%s) - total_start))s"
