#!/usr/bin/env bash
# Builds the base images the Dockerfiles take as build arguments from Debian's packages and
# what this repository builds itself, for machines that cannot reach an image registry:
#
#   PYTHON_IMAGE  localhost/tollgate-base/python:3.11-bookworm
#                 Debian bookworm (debootstrap --variant=minbase) with python3 and
#                 ca-certificates, laid out like the official python image: python3.11,
#                 python3 and python in /usr/local/bin.
#   UV_IMAGE      localhost/tollgate-base/uv:<version>
#                 /uv from uv's PyPI wheel, at the version hack/bootstrap.sh pins.
#   OLLAMA_IMAGE  localhost/tollgate-base/ollama:<version>
#                 Debian bookworm minbase with the ollama binary that hack/build-ollama.sh
#                 builds from source, at /usr/bin/ollama as in the official image.
#   NODE_IMAGE    localhost/tollgate-base/node:20-trixie
#                 Debian trixie minbase with Debian's nodejs (20.19) and npm, for the
#                 gateway's console stage: the console needs Node.js >= 20, which bookworm
#                 lacks (18.19). Only the console's static files leave that stage.
#
# Prints the build arguments (NAME=image, one a line) on stdout; everything else goes to
# stderr. The root filesystems are kept as tarballs in $TOLLGATE_CACHE/images/ and imported
# again only when the engine lacks them, so a rerun takes seconds; delete the tarballs to pick
# up newer Debian packages.
#
# The images trust the certificate authorities Debian ships plus any this machine adds to
# /etc/ssl/certs/ca-certificates.crt (e.g. a proxy's), so that builds reach the package
# indexes the way this machine does; uv is told to use that store (UV_SYSTEM_CERTS), and so is
# Node.js (NODE_EXTRA_CA_CERTS), for npm.
#
# Usage: hack/build-base-images.sh [python] [uv] [ollama] [node]      (default: all four)
# Environment: TOLLGATE_CACHE, CONTAINER_ENGINE (podman or docker), DEBIAN_MIRROR
# (default http://deb.debian.org/debian), HOST_CA_BUNDLE (default
# /etc/ssl/certs/ca-certificates.crt; empty: Debian's authorities only).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=container-engine.sh
source hack/container-engine.sh
# shellcheck source=ollama-versions.env
source hack/ollama-versions.env

CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
IMAGES_CACHE="$CACHE/images"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
SUITE=bookworm
NODE_SUITE=trixie
UV_VERSION="$(sed -n 's/^UV_VERSION=//p' hack/bootstrap.sh)"
PREFIX=localhost/tollgate-base

# Bump when what goes into the root filesystems changes: the tarballs are made again.
ROOTFS_REVISION=2
MINBASE_TAR="debian-$SUITE-minbase-r$ROOTFS_REVISION.tar"
PYTHON_TAR="python-3.11-$SUITE-r$ROOTFS_REVISION.tar"
NODE_TAR="node-20-$NODE_SUITE-r$ROOTFS_REVISION.tar"

PYTHON_IMAGE="$PREFIX/python:3.11-$SUITE"
UV_IMAGE="$PREFIX/uv:$UV_VERSION"
OLLAMA_IMAGE="$PREFIX/ollama:$OLLAMA_VERSION"
NODE_IMAGE="$PREFIX/node:20-$NODE_SUITE"

log() { echo "base-images: $*" >&2; }
temporary=()
trap 'rm -rf "${temporary[@]}"' EXIT
# A new folder in the cache (the tarballs' file system) as $scratch_dir, removed at exit.
scratch() {
  scratch_dir="$(mktemp -d "$IMAGES_CACHE/.$1.XXXXXX")"
  temporary+=("$scratch_dir")
}
die() { log "error: $*"; exit 1; }

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(python uv ollama node)
for name in "${wanted[@]}"; do
  case "$name" in python | uv | ollama | node) ;; *) die "unknown base image $name" ;; esac
done
want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

need=()
{ want python || want ollama || want node; } && need+=(debootstrap)
ensure_engine "${need[@]}"
mkdir -p "$IMAGES_CACHE"

# The label of an image, or nothing when the engine does not have it.
image_label() {
  "${ENGINE[@]}" image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# Imports tarball $1 as image $2 (with --change instructions $3...) unless the engine already
# holds that image made from that tarball.
import_tarball() {
  local tarball="$1" image="$2" sum
  shift 2
  # The tarball's checksum and the instructions: either changing makes a new import.
  sum="$(printf '%s\n' "$(cut -d' ' -f1 "$tarball.sha256")" "$@" | sha256sum | cut -c1-32)"
  if [ "$(image_label "$image" dev.tollgate.rootfs)" = "$sum" ]; then
    return
  fi
  log "importing $image"
  local changes=()
  for change in "$@" "LABEL dev.tollgate.rootfs=$sum"; do changes+=(--change "$change"); done
  local out
  out="$("${ENGINE[@]}" import "${changes[@]}" "$tarball" "$image" 2>&1)" || die "import of $tarball failed: $out"
}

# --- the Debian root filesystems ------------------------------------------------------------

# What Debian's container images configure: documentation (but the copyright files), manual
# pages and translations are left out, and apt keeps neither downloaded packages nor its
# package caches (a later `apt-get install` in a Dockerfile leaves none behind).
slim() {
  local root="$1"
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  cat >"$root/etc/dpkg/dpkg.cfg.d/tollgate-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/*
}

# The authorities of HOST_CA_BUNDLE that Debian's bundle in $1 lacks, added the Debian way.
add_host_authorities() {
  local root="$1"
  [ -n "$HOST_CA_BUNDLE" ] && [ -f "$HOST_CA_BUNDLE" ] || return 0
  python3 - "$HOST_CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt" \
    "$root/usr/local/share/ca-certificates" <<'EOF'
import re, sys
from pathlib import Path
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
host, debian, target = (Path(p) for p in sys.argv[1:])
known = {m.group(0) for m in pem.finditer(debian.read_text())}
extra = [m.group(0) for m in pem.finditer(host.read_text()) if m.group(0) not in known]
for i, cert in enumerate(extra):
    (target / f"host-{i}.crt").write_text(cert + "\n")
print(len(extra))
EOF
}

# Leaves no package lists, no downloaded packages and nothing of this machine in $1.
scrub() {
  local root="$1"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
  : >"$root/etc/resolv.conf"
  rm -f "$root/etc/hostname"
}

# tar $1 into $2 (numeric owners, no timestamps of this run) and record its checksum.
pack() {
  local root="$1" tarball="$2"
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  sha256sum "$tarball" >"$tarball.sha256"
}

# A slimmed Debian $1 minbase (with ca-certificates and this machine's extra authorities) in $2.
minbase_rootfs() {
  local suite="$1" root="$2"
  log "debootstrap --variant=minbase $suite from $MIRROR (the first time takes a few minutes)"
  mkdir -p "$IMAGES_CACHE/debs" "$root"
  if ! nice -n 10 debootstrap --variant=minbase --include=ca-certificates \
    --cache-dir="$IMAGES_CACHE/debs" "$suite" "$root" "$MIRROR" >"$root.debootstrap.log" 2>&1; then
    tail -n 30 "$root.debootstrap.log" >&2
    die "debootstrap of $suite failed"
  fi
  slim "$root"
  local added
  added="$(add_host_authorities "$root")"
  if [ "$added" != 0 ]; then
    log "adding $added certificate authorities of this machine"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
  fi
}

# Debian packages $2... into root filesystem $1, with the package lists debootstrap left there.
apt_install() {
  local root="$1"
  shift
  log "installing $* into $(basename "$root")"
  if ! chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    nice -n 10 apt-get install -y -qq --no-install-recommends "$@" >"$root.apt.log" 2>&1; then
    tail -n 30 "$root.apt.log" >&2
    die "apt-get install $* failed"
  fi
}

build_rootfs() {
  local minbase="$IMAGES_CACHE/$MINBASE_TAR" python="$IMAGES_CACHE/$PYTHON_TAR"
  local work
  { [ -f "$minbase.sha256" ] && [ -f "$python.sha256" ]; } && return
  scratch rootfs
  work="$scratch_dir"
  minbase_rootfs "$SUITE" "$work/minbase"
  # python3 into a copy.
  cp -a "$work/minbase" "$work/python"
  apt_install "$work/python" python3
  ln -sf /usr/bin/python3.11 "$work/python/usr/local/bin/python3.11"
  ln -sf python3.11 "$work/python/usr/local/bin/python3"
  ln -sf python3 "$work/python/usr/local/bin/python"
  scrub "$work/minbase"
  scrub "$work/python"
  pack "$work/minbase" "$minbase"
  pack "$work/python" "$python"
}

node_rootfs() {
  local tarball="$IMAGES_CACHE/$NODE_TAR" work
  [ -f "$tarball.sha256" ] && return
  scratch node
  work="$scratch_dir"
  minbase_rootfs "$NODE_SUITE" "$work/node"
  apt_install "$work/node" nodejs npm
  local version
  version="$(chroot "$work/node" node --version)"
  [[ "$version" == v20.* ]] || die "$NODE_SUITE's nodejs is $version, not 20"
  scrub "$work/node"
  pack "$work/node" "$tarball"
}

# --- the images -----------------------------------------------------------------------------

ENV_BASE=("ENV LANG=C.UTF-8" "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

python_base() {
  build_rootfs
  import_tarball "$IMAGES_CACHE/$PYTHON_TAR" "$PYTHON_IMAGE" "${ENV_BASE[@]}" \
    "ENV UV_SYSTEM_CERTS=true" 'CMD ["python3"]'
  echo "PYTHON_IMAGE=$PYTHON_IMAGE"
}

uv_base() {
  local uv="$CACHE/uv-$UV_VERSION/bin/uv" tarball="$IMAGES_CACHE/uv-$UV_VERSION.tar"
  if [ ! -x "$uv" ]; then
    log "installing uv $UV_VERSION (its PyPI wheel) into $CACHE"
    python3 -m venv "$CACHE/uv-$UV_VERSION"
    "$CACHE/uv-$UV_VERSION/bin/pip" install -q "uv==$UV_VERSION"
  fi
  if [ ! -f "$tarball.sha256" ]; then
    local work
    scratch uv
    work="$scratch_dir"
    install -m 0755 "$uv" "$work/uv"
    tar --numeric-owner --owner=0 --group=0 -C "$work" -cf "$tarball" uv
    sha256sum "$tarball" >"$tarball.sha256"
  fi
  import_tarball "$tarball" "$UV_IMAGE" 'CMD ["/uv"]'
  echo "UV_IMAGE=$UV_IMAGE"
}

ollama_base() {
  local binary="$CACHE/ollama/ollama-$OLLAMA_VERSION/ollama" minbase="$PREFIX/debian:$SUITE-minbase"
  [ -x "$binary" ] || hack/build-ollama.sh
  [ -x "$binary" ] || die "hack/build-ollama.sh did not leave $binary"
  build_rootfs
  import_tarball "$IMAGES_CACHE/$MINBASE_TAR" "$minbase" "${ENV_BASE[@]}" 'CMD ["bash"]'
  local context
  scratch ollama
  context="$scratch_dir"
  ln "$binary" "$context/ollama" 2>/dev/null || cp "$binary" "$context/ollama"
  # What the official image sets: where Ollama listens, its entrypoint and command.
  "${ENGINE[@]}" build "${ENGINE_BUILD_FLAGS[@]}" -q -t "$OLLAMA_IMAGE" -f - "$context" >/dev/null <<EOF
FROM $minbase
COPY ollama /usr/bin/ollama
ENV OLLAMA_HOST=0.0.0.0:11434
LABEL org.opencontainers.image.title="ollama" org.opencontainers.image.version="$OLLAMA_VERSION"
EXPOSE 11434
ENTRYPOINT ["/usr/bin/ollama"]
CMD ["serve"]
EOF
  echo "OLLAMA_IMAGE=$OLLAMA_IMAGE"
}

node_base() {
  node_rootfs
  import_tarball "$IMAGES_CACHE/$NODE_TAR" "$NODE_IMAGE" "${ENV_BASE[@]}" \
    "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt" 'CMD ["node"]'
  echo "NODE_IMAGE=$NODE_IMAGE"
}

for name in "${wanted[@]}"; do
  "${name}_base"
done
