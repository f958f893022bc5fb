"""The CRD schemas, the Pydantic models and the samples agree."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from tollgate_operator.resources import (
    API_VERSION,
    ApiKeySpec,
    ApiKeyStatus,
    ModelAliasSpec,
    ModelAliasStatus,
    OllamaPoolSpec,
    OllamaPoolStatus,
    set_condition,
)

REPO = Path(__file__).resolve().parents[2]
CRDS = {
    doc["spec"]["names"]["kind"]: doc
    for doc in (yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml")))
}
MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "ApiKey": (ApiKeySpec, ApiKeyStatus),
    "ModelAlias": (ModelAliasSpec, ModelAliasStatus),
    "OllamaPool": (OllamaPoolSpec, OllamaPoolStatus),
}
SAMPLES = [
    (path.name, index, doc)
    for path in sorted((REPO / "manifests" / "samples").glob("*.yaml"))
    for index, doc in enumerate(yaml.safe_load_all(path.read_text()))
    if doc
]


def schema_of(kind: str) -> dict[str, Any]:
    versions = CRDS[kind]["spec"]["versions"]
    (version,) = [v for v in versions if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def closed(schema: Any) -> Any:
    """The schema as the API server applies it: unknown fields are not kept (pruning), so a
    sample with a misspelt field must fail here rather than lose the field silently."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def test_there_is_one_crd_per_kind_with_the_expected_basics() -> None:
    assert set(CRDS) == set(MODELS)
    for kind, crd in CRDS.items():
        spec = crd["spec"]
        assert spec["group"] == "tollgate.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["shortNames"], kind
        assert "tollgate" in spec["names"]["categories"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1"
        assert version["subresources"]["status"] == {}
        assert version["additionalPrinterColumns"], kind


def test_the_schemas_are_structural() -> None:
    """Every node has a type (or is int-or-string / preserve-unknown-fields)."""

    def walk(node: dict[str, Any], where: str) -> None:
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), where
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}{{}}")

    for kind in CRDS:
        walk(schema_of(kind), kind)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The Pydantic model inside `X`, `X | None`, `list[X]`, `Annotated[...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def assert_agree(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    properties = schema.get("properties") or {}
    assert set(fields) == set(properties), where
    for name, info in fields.items():
        child_model = _model_in(info.annotation)
        if child_model is None:
            continue
        child = properties[name]
        if child.get("type") == "array":
            child = child["items"]
        assert_agree(child_model, child, f"{where}.{name}")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pydantic_models_have_exactly_the_schema_fields(kind: str) -> None:
    spec_model, status_model = MODELS[kind]
    schema = schema_of(kind)["properties"]
    assert_agree(spec_model, schema["spec"], f"{kind}.spec")
    assert_agree(status_model, schema["status"], f"{kind}.status")


def test_there_are_samples_of_every_kind() -> None:
    kinds = {doc["kind"] for _, _, doc in SAMPLES}
    assert set(MODELS) <= kinds


@pytest.mark.parametrize(("name", "index", "doc"), SAMPLES, ids=[f"{n}#{i}" for n, i, _ in SAMPLES])
def test_each_sample_validates_against_schema_and_model(
    name: str, index: int, doc: dict[str, Any]
) -> None:
    if doc["kind"] not in MODELS:
        assert doc["kind"] == "Namespace"
        return
    assert doc["apiVersion"] == API_VERSION
    assert doc["metadata"]["namespace"] == "tollgate-demo"
    jsonschema.validate(doc, closed(schema_of(doc["kind"])))
    spec_model, _ = MODELS[doc["kind"]]
    parsed = spec_model.model_validate(doc["spec"])
    # What the model writes back is still valid for the schema.
    jsonschema.validate(
        {**doc, "spec": parsed.model_dump(mode="json", by_alias=True, exclude_none=True)},
        closed(schema_of(doc["kind"])),
    )


def test_statuses_written_by_the_operator_validate() -> None:
    status = ModelAliasStatus.model_validate(
        {
            "pulled": "1/2",
            "servingModel": "llama3:8b",
            "backendURL": "http://p.ns.svc.cluster.local:11434",
            "pods": [
                {"name": "p-0", "state": "Present", "percent": 100},
                {"name": "p-1", "state": "Pulling", "completed": 5, "total": 10, "percent": 50},
            ],
        }
    )
    status = status.model_copy(
        update={"conditions": set_condition([], "Ready", False, "Pulling", "1 of 2", 3)}
    )
    doc = {
        "apiVersion": API_VERSION,
        "kind": "ModelAlias",
        "metadata": {"name": "x"},
        "spec": {"alias": "a", "model": "m", "poolRef": {"name": "p"}},
        "status": status.to_wire(),
    }
    jsonschema.validate(doc, closed(schema_of("ModelAlias")))
    assert doc["status"]["conditions"][0]["lastTransitionTime"].endswith("Z")


def test_set_condition_keeps_the_transition_time_while_the_status_holds() -> None:
    first = set_condition([], "Ready", True, "A", "a", 1)
    again = set_condition(first, "Ready", True, "B", "b", 2)
    assert again[0].last_transition_time == first[0].last_transition_time
    assert (again[0].reason, again[0].observed_generation) == ("B", 2)
    flipped = set_condition(again, "Ready", False, "C", "c", 2)
    assert flipped[0].status == "False"
    assert len(set_condition(flipped, "Pulled", True, "D", "d", 2)) == 2
