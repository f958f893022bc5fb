"""Label and annotation keys the operator puts on what it creates."""

from __future__ import annotations

MANAGED_BY = {"app.kubernetes.io/managed-by": "tollgate-operator"}
POOL_LABEL = "tollgate.dev/pool"
APIKEY_LABEL = "tollgate.dev/apikey"
KEY_ID_ANNOTATION = "tollgate.dev/key-id"
ROTATION_TOKEN_ANNOTATION = "tollgate.dev/rotation-token"


def pool_selector(pool: str) -> dict[str, str]:
    """Selects a pool's Pods; never changes for a pool (StatefulSet selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "ollama",
        "app.kubernetes.io/instance": pool,
        POOL_LABEL: pool,
    }


def pool_labels(pool: str) -> dict[str, str]:
    return {
        **pool_selector(pool),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "tollgate",
        **MANAGED_BY,
    }


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
