"""Helpers of the image tests: the chart's workloads as podman containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollgate_dev.proc import repo_root
from tollgate_dev.servers.images import TEST_OUT, BuiltImages, pod_flags

ROOT = repo_root()
CHART = ROOT / "charts" / "tollgate"
OUT = ROOT / TEST_OUT
"""Where the tests' builds write their package lists, SBOMs and logs."""

Manifest = dict[str, Any]


def workload(manifests: list[Manifest], kind: str, component: str) -> Manifest:
    """The one ``kind`` whose ``app.kubernetes.io/component`` label is ``component``."""
    found = [
        m
        for m in manifests
        if m["kind"] == kind
        and m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} of {component}, found {len(found)}"
    return found[0]


def pod_of(manifest: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def container_of(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        if container["name"] == name:
            return dict(container)
    raise AssertionError(f"no container {name} in {[c['name'] for c in pod['containers']]}")


def image_values(images: BuiltImages) -> dict[str, str]:
    """Chart values that make it name the images built here."""
    sets = {}
    for name in ("gateway", "operator"):
        repository, tag = images.ref(name).rsplit(":", 1)
        sets[f"{name}.image.repository"] = repository
        sets[f"{name}.image.tag"] = tag
    return sets


def chart_container(
    manifest: Manifest,
    name: str,
    env: dict[str, str] | None = None,
    volumes: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """``Container`` arguments for the container ``name`` of a workload as the chart renders it:
    its image, command and args, the values of its environment (``env`` adds to and overrides
    them; ``valueFrom`` entries are left to ``env``), and its Pod's user, read-only root,
    capabilities and emptyDirs (see ``pod_flags``)."""
    pod = pod_of(manifest)
    spec = container_of(pod, name)
    plain = {e["name"]: str(e["value"]) for e in spec.get("env", []) if "value" in e}
    command = list(spec.get("command", []))
    return {
        "image": spec["image"],
        "entrypoint": command[0] if command else None,
        "args": [*command[1:], *spec.get("args", [])],
        "env": {**plain, **(env or {})},
        "flags": pod_flags(pod, spec, volumes),
    }
