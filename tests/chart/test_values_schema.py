"""values.yaml and values.schema.json agree, every value is documented, bad values are refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_helpers import (
    CHART,
    CI_VALUES,
    SCHEMA,
    leaf_paths,
    load_values,
    resolve,
    run_helm,
    structured_paths,
    template_args,
)


def commented_keys() -> dict[str, str]:
    """Key path -> the `# --` comment right above it in values.yaml."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([k for _, k in stack] + [key])
            if previous.strip().startswith("# -- "):
                found[path] = previous.strip().removeprefix("# -- ")
            stack.append((indent, key))
        if line.strip():
            previous = line
    return found


def test_values_and_schema_have_the_same_keys() -> None:
    in_values, in_schema, mismatches = structured_paths()
    assert not mismatches, "\n".join(mismatches)
    assert in_values == in_schema
    assert len(in_values) > 150  # the walk really went through the whole file


def test_every_value_has_a_one_sentence_comment() -> None:
    comments = commented_keys()
    missing = sorted(leaf_paths() - set(comments))
    assert not missing, f"values without a `# --` comment right above them: {missing}"
    for path, comment in comments.items():
        assert comment.endswith("."), f"{path}: the comment is not a sentence: {comment!r}"
        assert len(comment) <= 240, f"{path}: the comment is longer than a sentence"


def test_every_schema_property_has_a_type_and_objects_are_closed() -> None:
    """Structured objects refuse unknown keys, so a typo in a values file is an error."""

    def walk(schema: dict[str, Any], path: str) -> None:
        schema = resolve(schema)
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path}: open object"
            for key, sub in schema["properties"].items():
                walk(sub, f"{path}.{key}")
        else:
            assert "type" in schema or "oneOf" in schema or "anyOf" in schema, path

    walk(SCHEMA, "")


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_ci_values_and_defaults_validate(values_file: Path) -> None:
    values = load_values()
    override = yaml.safe_load(values_file.read_text()) or {}

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    jsonschema.validate(merge(values, override), SCHEMA)


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key", {"gateway": {"replicas": 3}}, "additional properties 'replicas'"),
    ("typo at the top", {"ingres": {"enabled": True}}, "additional properties 'ingres'"),
    ("no workers", {"gateway": {"workers": 0}}, "/gateway/workers"),
    (
        "1 s probe timeout",
        {"gateway": {"livenessProbe": {"timeoutSeconds": 1}}},
        "/gateway/livenessProbe/timeoutSeconds",
    ),
    (
        "grace period shorter than the drain",
        {"gateway": {"terminationGracePeriodSeconds": 10}},
        "/gateway/terminationGracePeriodSeconds",
    ),
    ("unknown failure policy", {"gateway": {"redisFailurePolicy": "maybe"}}, "redisFailurePolicy"),
    ("tag as digest", {"gateway": {"image": {"digest": "latest"}}}, "/gateway/image/digest"),
    ("weak JWT secret", {"secrets": {"jwtSecret": "changeme"}}, "/secrets/jwtSecret"),
    ("DSN of another database", {"secrets": {"postgresDsn": "mysql://x"}}, "/secrets/postgresDsn"),
    ("string for a number", {"gateway": {"replicaCount": "two"}}, "/gateway/replicaCount"),
    ("path without slash", {"ingress": {"hosts": [{"host": "a.b", "paths": ["v1"]}]}}, "paths"),
    ("large backoff", {"migration": {"backoffLimit": 10}}, "/migration/backoffLimit"),
    (
        "ratio above 1",
        {"metrics": {"prometheusRule": {"errorRatio": 5}}},
        "/metrics/prometheusRule/errorRatio",
    ),
    ("bad namespace", {"operator": {"watchNamespaces": ["Apps_1"]}}, "/operator/watchNamespaces"),
    ("no Ollama port", {"networkPolicy": {"ollamaPorts": []}}, "/networkPolicy/ollamaPorts"),
    (
        "alias without model",
        {"modelAliases": [{"name": "a", "spec": {"alias": "a", "poolRef": {"name": "p"}}}]},
        "model",
    ),
    ("lower-case setting", {"gateway": {"settings": {"tollgate_x": "1"}}}, "tollgate_x"),
]

# Checks across values, made by the templates: `helm template` and installs refuse these;
# `helm lint` only logs template failures (its lint mode), so it is not asked.
BAD_COMBINATIONS: list[tuple[str, dict[str, Any], str]] = [
    (
        "chart-made Secret without a DSN",
        {"secrets": {"create": True, "redisUrl": "redis://r:6379/0"}},
        "secrets.postgresDsn is required",
    ),
    (
        "autoscaler maximum below minimum",
        {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}}},
        "maxReplicas (2) is below minReplicas (4)",
    ),
    (
        "TLS for an unrouted host",
        {"ingress": {"enabled": True, "tls": [{"secretName": "t", "hosts": ["other.example"]}]}},
        "not in ingress.hosts",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [pytest.param(v, m, id=name) for name, v, m in BAD_VALUES],
)
def test_bad_values_are_refused_by_lint_and_template(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    for args in (["lint", "--strict", str(CHART), "-f", str(path)], template_args([path])):
        result = run_helm(helm, *args, check=False)
        assert result.returncode != 0, f"helm {args[0]} accepted {values}"
        assert message in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [pytest.param(v, m, id=name) for name, v, m in BAD_COMBINATIONS],
)
def test_bad_combinations_are_refused_by_template(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm(helm, *template_args([path]), check=False)
    assert result.returncode != 0, f"helm template accepted {values}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(helm: Path, values_file: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
