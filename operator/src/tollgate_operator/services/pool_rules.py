"""What the platform lets an OllamaPool ask for, beyond what the CRD schema checks.

Creating an OllamaPool makes Pods, so without rules it would be as strong as creating Pods:
any image, and env read from any Secret of the namespace. The image must come from an
allowed repository, and env may read Secrets or ConfigMaps only where the operator's
settings allow it. A refused spec gets Ready=False with the reason and an Event; nothing
is applied for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from tollgate_operator.resources import OllamaPoolSpec
from tollgate_operator.services.errors import InvalidSpec

DOCKER_HUB = "docker.io"


def image_repository(reference: str) -> str:
    """The repository of an image reference, normalized as container runtimes do:
    "ollama/ollama:0.5" and "docker.io/ollama/ollama@sha256:…" are both
    "docker.io/ollama/ollama"; "busybox" is "docker.io/library/busybox"."""
    name = reference.strip().split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    first, sep, rest = name.partition("/")
    if not sep:
        return f"{DOCKER_HUB}/library/{name}".lower()
    if "." not in first and ":" not in first and first != "localhost":
        return f"{DOCKER_HUB}/{name}".lower()
    if first in ("index.docker.io", "registry-1.docker.io"):
        first = DOCKER_HUB
    if first == DOCKER_HUB and "/" not in rest:
        rest = f"library/{rest}"
    return f"{first.lower()}/{rest.lower()}"


def _pattern(entry: str) -> str:
    entry = entry.strip()
    if entry == "*":
        return entry
    return image_repository(entry) if "*" not in entry else entry.lower()


@dataclass(frozen=True)
class PoolRules:
    allowed_images: tuple[str, ...]
    env_from_secrets: bool = False
    env_from_config_maps: bool = False

    @classmethod
    def of(
        cls,
        allowed: Sequence[str],
        default_image: str,
        env_from_secrets: bool = False,
        env_from_config_maps: bool = False,
    ) -> PoolRules:
        patterns = [_pattern(a) for a in allowed if a.strip()]
        patterns.append(image_repository(default_image))
        return cls(tuple(dict.fromkeys(patterns)), env_from_secrets, env_from_config_maps)

    def image_allowed(self, reference: str) -> bool:
        repository = image_repository(reference)
        return any(fnmatchcase(repository, p) for p in self.allowed_images)

    def check(self, spec: OllamaPoolSpec) -> None:
        """InvalidSpec naming the first thing the platform does not allow."""
        if spec.image is not None and not self.image_allowed(spec.image):
            raise InvalidSpec(
                "ImageNotAllowed",
                f"spec.image {spec.image} is not allowed here; allowed repositories: "
                f"{', '.join(self.allowed_images)}",
            )
        for var in spec.env:
            source = var.value_from or {}
            if "secretKeyRef" in source and not self.env_from_secrets:
                raise InvalidSpec(
                    "EnvFromSecretNotAllowed",
                    f"spec.env {var.name} reads a Secret (valueFrom.secretKeyRef), "
                    "which this platform does not allow for pools",
                )
            if "configMapKeyRef" in source and not self.env_from_config_maps:
                raise InvalidSpec(
                    "EnvFromConfigMapNotAllowed",
                    f"spec.env {var.name} reads a ConfigMap (valueFrom.configMapKeyRef), "
                    "which this platform does not allow for pools",
                )
