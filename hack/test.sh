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
echo "== pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
