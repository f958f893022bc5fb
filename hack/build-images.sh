#!/usr/bin/env bash
# Builds the gateway, operator and Ollama images from their Dockerfiles (what `make images`
# runs), then writes next to them, in $IMAGE_OUT, each image's package list
# (<image>.packages.txt, headed by its reference, id and size) and an SPDX 2.3 SBOM
# (<image>.spdx.json).
#
# Usage: hack/build-images.sh [gateway] [operator] [ollama]          (default: all three)
#
# Environment:
#   CONTAINER_ENGINE  podman (default) or docker
#   IMAGE_BASES       local (default): base images made here by hack/build-base-images.sh
#                     (Debian packages, uv's PyPI wheel, Ollama built from source);
#                     official: the Dockerfiles' own defaults (python:3.11-slim-bookworm,
#                     ghcr.io/astral-sh/uv, node:20-bookworm-slim, ollama/ollama), which
#                     need their registries
#   IMAGE_REGISTRY    repository prefix of the images (default ghcr.io/tollgate-dev)
#   IMAGE_TAG         their tag (default: git describe --tags --always --dirty)
#   IMAGE_OUT         where the lists, SBOMs and build logs go (default .state/images)
#   PYTHON_IMAGE, UV_IMAGE, NODE_IMAGE, OLLAMA_IMAGE
#                     other bases (build arguments), whatever IMAGE_BASES says
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=container-engine.sh
source hack/container-engine.sh

BASES="${IMAGE_BASES:-local}"
REGISTRY="${IMAGE_REGISTRY:-ghcr.io/tollgate-dev}"
TAG="${IMAGE_TAG:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
OUT="${IMAGE_OUT:-.state/images}"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
CREATED="$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"

log() { echo "images: $*" >&2; }
die() { log "error: $*"; exit 1; }

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(gateway operator ollama)
for name in "${names[@]}"; do
  case "$name" in gateway | operator | ollama) ;; *) die "unknown image $name" ;; esac
done
has() { [[ " ${names[*]} " == *" $1 "* ]]; }
case "$BASES" in local | official) ;; *) die "IMAGE_BASES must be local or official" ;; esac

ensure_engine
mkdir -p "$OUT/logs"

# --- base images ----------------------------------------------------------------------------
declare -A base=()
if [ "$BASES" = local ]; then
  wanted=()
  { has gateway || has operator; } && wanted+=(python uv)
  has gateway && wanted+=(node)
  has ollama && wanted+=(ollama)
  while IFS='=' read -r key value; do
    base[$key]="$value"
  done < <(hack/build-base-images.sh "${wanted[@]}")
fi
for key in PYTHON_IMAGE UV_IMAGE NODE_IMAGE OLLAMA_IMAGE; do
  [ -n "${!key:-}" ] && base[$key]="${!key}"
done
base_args() {
  local key
  for key in "$@"; do
    [ -n "${base[$key]:-}" ] && printf -- '--build-arg\n%s=%s\n' "$key" "${base[$key]}"
  done
  return 0
}

# --- the images -----------------------------------------------------------------------------
ref() { echo "$REGISTRY/tollgate-$1:$TAG"; }

build() {
  local name="$1" context="$2" dockerfile="$3"
  shift 3
  local image logfile started
  image="$(ref "$name")"
  logfile="$OUT/logs/$name.build.log"
  started=$SECONDS
  log "building $image"
  local -a args
  mapfile -t args < <(base_args "$@")
  if ! "${ENGINE[@]}" build "${ENGINE_BUILD_FLAGS[@]}" -f "$dockerfile" -t "$image" \
    "${args[@]}" --label "org.opencontainers.image.version=$TAG" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.created=$CREATED" "$context" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    die "building $image failed (log: $logfile)"
  fi
  log "built $image in $((SECONDS - started))s"
}

has gateway && build gateway . gateway/Dockerfile PYTHON_IMAGE UV_IMAGE NODE_IMAGE
has operator && build operator . operator/Dockerfile PYTHON_IMAGE UV_IMAGE
has ollama && build ollama ollama ollama/Dockerfile OLLAMA_IMAGE

# --- package lists and SBOMs ----------------------------------------------------------------
# What each image holds, read from the image itself: Debian packages from dpkg's database and,
# in the Python images, the distributions installed in the application's environment.
inventory() {
  local name="$1" image
  image="$(ref "$name")"
  local -a run=("${ENGINE[@]}" run --rm "${ENGINE_RUN_FLAGS[@]}" --network none --read-only)
  {
    "${run[@]}" --entrypoint dpkg-query "$image" -W -f 'deb\t${Package}\t${Version}\t${Architecture}\n'
    if [ "$name" != ollama ]; then
      "${run[@]}" --entrypoint python "$image" -c 'import importlib.metadata as m
for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"].lower()):
    print("pypi", d.metadata["Name"], d.version, "", sep="\t")'
    else
      "${run[@]}" --entrypoint /usr/bin/ollama "$image" --version 2>&1 |
        sed -n 's/.*version is \([^ ]*\).*/binary\tollama\t\1\t/p'
    fi
  } >"$OUT/tollgate-$name.inventory.tsv"
}

sbom() {
  local name="$1" image id size
  image="$(ref "$name")"
  id="$("${ENGINE[@]}" image inspect --format '{{.Id}}' "$image")"
  size="$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$image")"
  python3 - "$OUT" "tollgate-$name" "$image" "$id" "$size" "$CREATED" <<'EOF'
import json, sys, uuid
from pathlib import Path
out, name, image, image_id, size, created = sys.argv[1:]
rows = [line.split("\t") for line in (Path(out) / f"{name}.inventory.tsv").read_text().splitlines() if line]
(Path(out) / f"{name}.packages.txt").write_text(
    f"# {image} ({image_id[:19]}, {int(size) // 1_000_000} MB)\n"
    + "".join(f"{kind}\t{pkg}\t{version}\n" for kind, pkg, version, _ in rows)
)
def purl(kind, pkg, version, arch):
    if kind == "deb":
        return f"pkg:deb/debian/{pkg}@{version}?arch={arch}&distro=debian-12"
    if kind == "pypi":
        return f"pkg:pypi/{pkg.lower().replace('_', '-')}@{version}"
    return f"pkg:generic/{pkg}@{version}"
packages = [
    {
        "SPDXID": f"SPDXRef-Package-{i}",
        "name": pkg,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": purl(kind, pkg, version, arch)}],
    }
    for i, (kind, pkg, version, arch) in enumerate(rows)
]
document = {
    "spdxVersion": "SPDX-2.3",
    "dataLicense": "CC0-1.0",
    "SPDXID": "SPDXRef-DOCUMENT",
    "name": image,
    "documentNamespace": f"https://tollgate.dev/spdx/{name}/{uuid.uuid5(uuid.NAMESPACE_URL, image_id)}",
    "creationInfo": {"created": created, "creators": ["Tool: tollgate-build-images"]},
    "packages": [
        {"SPDXID": "SPDXRef-Image", "name": image, "versionInfo": image_id,
         "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER"},
        *packages,
    ],
    "relationships": [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"},
        *({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": p["SPDXID"]}
          for p in packages),
    ],
}
(Path(out) / f"{name}.spdx.json").write_text(json.dumps(document, indent=1) + "\n")
print(f"{image}\t{image_id}\t{size}")
EOF
}

for name in "${names[@]}"; do
  # An image already listed (same id) is not read again.
  id="$("${ENGINE[@]}" image inspect --format '{{.Id}}' "$(ref "$name")")"
  if ! head -n 1 "$OUT/tollgate-$name.packages.txt" 2>/dev/null | grep -q "(${id:0:19},"; then
    inventory "$name"
  fi
  IFS=$'\t' read -r image id size < <(sbom "$name")
  log "$(printf '%-56s %5d MB  %s' "$image" $((size / 1000000)) "${id:0:12}")"
done
