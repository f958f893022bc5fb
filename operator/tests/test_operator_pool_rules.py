"""What a pool may ask for: images from allowed repositories, env from Secrets or ConfigMaps
only where allowed; and the pool isolation the settings describe."""

from __future__ import annotations

import pytest

from tollgate_operator.builders.pool import Peer
from tollgate_operator.resources import OllamaPoolSpec
from tollgate_operator.services.errors import InvalidSpec
from tollgate_operator.services.pool_rules import PoolRules, image_repository
from tollgate_operator.services.pools import pool_defaults
from tollgate_operator.settings import Settings

DEFAULT_IMAGE = "docker.io/ollama/ollama:0.33.0"


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("ollama/ollama", "docker.io/ollama/ollama"),
        ("ollama/ollama:0.5.1", "docker.io/ollama/ollama"),
        ("docker.io/ollama/ollama@sha256:" + "a" * 64, "docker.io/ollama/ollama"),
        ("index.docker.io/ollama/ollama:1", "docker.io/ollama/ollama"),
        ("busybox", "docker.io/library/busybox"),
        ("docker.io/busybox:1", "docker.io/library/busybox"),
        ("registry.internal:5000/ml/ollama:2", "registry.internal:5000/ml/ollama"),
        ("localhost/ollama:dev", "localhost/ollama"),
        ("Ghcr.io/Org/Ollama:1", "ghcr.io/org/ollama"),
    ],
)
def test_image_repository(reference: str, repository: str) -> None:
    assert image_repository(reference) == repository


def spec(**fields: object) -> OllamaPoolSpec:
    return OllamaPoolSpec.model_validate(fields)


def refusal(rules: PoolRules, pool: OllamaPoolSpec) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as err:
        rules.check(pool)
    return err.value


def test_only_the_official_image_by_default() -> None:
    rules = PoolRules.of(Settings().allowed_image_list, DEFAULT_IMAGE)
    rules.check(spec())  # the operator's default image
    for ok in ("ollama/ollama:0.6", "docker.io/ollama/ollama@sha256:" + "b" * 64):
        rules.check(spec(image=ok))
    for bad in (
        "evil.example/ollama/ollama:1",
        "docker.io/ollama/ollama-fork:1",
        "ollama/ollama2",
        "docker.io/library/ollama:1",
        "docker.io/ollama/ollama/extra:1",
    ):
        err = refusal(rules, spec(image=bad))
        assert err.reason == "ImageNotAllowed"
        assert bad in err.message and "docker.io/ollama/ollama" in err.message


def test_allowed_repositories_globs_and_the_default_image() -> None:
    rules = PoolRules.of(
        ["registry.internal/ml/*", " ghcr.io/acme/ollama "], "mirror.local/ollama:7"
    )
    rules.check(spec(image="registry.internal/ml/ollama:1"))
    rules.check(spec(image="registry.internal/ml/team/ollama:1"))
    rules.check(spec(image="ghcr.io/acme/ollama:3"))
    rules.check(spec(image="mirror.local/ollama:8"))  # the default image's repository
    assert refusal(rules, spec(image="registry.internal/other:1")).reason == "ImageNotAllowed"
    assert refusal(rules, spec(image="ollama/ollama:1")).reason == "ImageNotAllowed"
    PoolRules.of(["*"], DEFAULT_IMAGE).check(spec(image="anything.example/x:1"))


def test_env_from_secrets_and_config_maps_only_when_allowed() -> None:
    from_secret = spec(
        env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    )
    from_map = spec(
        env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    )
    downward = spec(
        env=[{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    )
    strict = PoolRules.of([], DEFAULT_IMAGE)
    err = refusal(strict, from_secret)
    assert err.reason == "EnvFromSecretNotAllowed" and "HF_TOKEN" in err.message
    assert refusal(strict, from_map).reason == "EnvFromConfigMapNotAllowed"
    strict.check(downward)
    strict.check(spec(env=[{"name": "OLLAMA_DEBUG", "value": "1"}]))
    PoolRules.of([], DEFAULT_IMAGE, env_from_secrets=True).check(from_secret)
    assert refusal(PoolRules.of([], DEFAULT_IMAGE, env_from_secrets=True), from_map)
    PoolRules.of([], DEFAULT_IMAGE, env_from_config_maps=True).check(from_map)


def test_isolation_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "platform")
    defaults = pool_defaults(Settings())
    gateway, operator = defaults.ingress_from or ()
    assert gateway == Peer(
        {"app.kubernetes.io/part-of": "tollgate", "app.kubernetes.io/component": "gateway"},
        "platform",
    )
    assert operator.namespace == "platform"
    assert operator.labels["app.kubernetes.io/component"] == "operator"
    custom = pool_defaults(
        Settings(gateway_pod_selector="app=gw, tier=edge", gateway_namespace="*")
    )
    assert (custom.ingress_from or ())[0] == Peer({"app": "gw", "tier": "edge"}, "*")
    assert pool_defaults(Settings(pool_network_policy=False)).ingress_from is None
    with pytest.raises(ValueError, match="key=value"):
        Settings(gateway_pod_selector="app")
