#!/usr/bin/env bash
# The whole suite. Exits non-zero on any failure; a test whose real dependency
# cannot start fails (nothing is skipped silently).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/bootstrap.sh
echo "== ruff"; .venv/bin/ruff check . ; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== Debian packages"; hack/ensure-debs.sh prometheus chromium fonts-dejavu-core
echo "== console"; hack/build-console.sh --with-deps
echo "== k8s binaries"; hack/build-k8s.sh
echo "== Ollama (real, built from source)"; hack/build-ollama.sh
echo "== Jaeger (trace backend, built from source)"; hack/build-jaeger.sh
# The images need podman; where it cannot work the image tests fail and say why.
echo "== images (podman)"
if hack/ensure-debs.sh podman runc debootstrap; then
  if .venv/bin/python -m tollgate_dev.servers.images; then
    export TOLLGATE_IMAGES_PREBUILT=1  # the image tests use them as built here
  else
    echo "images: not built; tests/images will fail" >&2
  fi
else
  echo "images: podman, runc or debootstrap missing; tests/images will fail" >&2
fi
echo "== pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
