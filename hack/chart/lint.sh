#!/usr/bin/env bash
# `helm lint --strict` of charts/tollgate with its defaults and with each scenario in
# charts/tollgate/ci/. Uses the helm pinned in hack/versions.env (make k8s-binaries), or $HELM.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../versions.env
source hack/versions.env
CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
HELM="${HELM:-$CACHE/k8s/helm-$HELM_VERSION/helm}"
[ -x "$HELM" ] || { echo "chart-lint: no helm at $HELM (make k8s-binaries)" >&2; exit 1; }
hack/chart/sync-crds.sh --check
failed=0
for values in "" charts/tollgate/ci/*.yaml; do
  label="${values:-defaults}"
  if out="$("$HELM" lint --strict charts/tollgate ${values:+-f "$values"} 2>&1)"; then
    echo "chart-lint: ok      $label"
  else
    echo "chart-lint: FAILED  $label" >&2
    echo "$out" >&2
    failed=1
  fi
done
exit "$failed"
