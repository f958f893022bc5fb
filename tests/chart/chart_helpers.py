"""Helpers for the chart's tests: paths, helm invocations, and looking into rendered manifests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollgate_dev.proc import repo_root

ROOT = repo_root()
CHART = ROOT / "charts" / "tollgate"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "tollgate"
NAMESPACE = "tollgate"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}", pytrace=False)
    return result


def template_args(
    values: Iterable[Path] = (), sets: dict[str, str] | None = None, *extra: str
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    for path in values:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]
    if manifest["kind"] == "Pod":
        return spec
    template: dict[str, Any] = spec["template"]["spec"]
    return template


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(manifest)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Environment of a container: name -> value, or the valueFrom object."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def load_values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
# Parent charts may pass `global`; the chart itself has no global values.
SCHEMA_ONLY = {"global"}
# Kubernetes objects as values (checked by the schema, documented as one value).
OPAQUE = {"#/definitions/resources"}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        node = {**SCHEMA["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def structured_paths() -> tuple[set[str], set[str], list[str]]:
    """Walk values.yaml and the schema together.

    Returns the key paths of values.yaml, those of the schema (both descending only where the
    schema lists properties, i.e. not into free-form maps such as resources or a CRD spec), and
    the paths whose keys differ.
    """
    in_values: set[str] = set()
    in_schema: set[str] = set()
    mismatches: list[str] = []

    def walk(schema: dict[str, Any], value: Any, path: str) -> None:
        if schema.get("$ref") in OPAQUE:
            return
        schema = resolve(schema)
        props = schema.get("properties")
        if props is None or not isinstance(value, dict):
            return
        schema_keys = set(props) - SCHEMA_ONLY
        value_keys = set(value)
        if schema_keys != value_keys:
            mismatches.append(
                f"{path or '<root>'}: only in values.yaml {sorted(value_keys - schema_keys)}, "
                f"only in the schema {sorted(schema_keys - value_keys)}"
            )
        for key in schema_keys:
            in_schema.add(f"{path}{key}")
        for key in value_keys:
            in_values.add(f"{path}{key}")
        for key in schema_keys & value_keys:
            walk(props[key], value[key], f"{path}{key}.")

    walk(SCHEMA, load_values(), "")
    return in_values, in_schema, mismatches


def leaf_paths() -> set[str]:
    """Paths of values (scalars, lists, free-form maps): what needs a comment each."""
    leaves: set[str] = set()

    def walk(schema: dict[str, Any], value: Any, path: str) -> None:
        opaque = schema.get("$ref") in OPAQUE
        schema = resolve(schema)
        props = schema.get("properties")
        if opaque or props is None or not isinstance(value, dict):
            leaves.add(path.rstrip("."))
            return
        for key, sub in value.items():
            walk(props.get(key, {}), sub, f"{path}{key}.")

    walk(SCHEMA, load_values(), "")
    return leaves


def board(uid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "dashboards" / f"{uid}.json").read_text())
    return data


def panel_queries(uid: str) -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in board(uid)["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
