"""Fixtures of the image tests: the three images built with podman from their Dockerfiles,
and the chart rendered, so that each container runs as the chart's (or the operator's) Pod
would. Where podman cannot run containers, every test here fails with the reason."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from image_helpers import CHART, OUT, Manifest

from tollgate_dev.controlplane.binaries import Binaries
from tollgate_dev.servers.images import (
    BuiltImages,
    Container,
    ImageError,
    build_images,
    podman_problem,
)


def _build(*names: str) -> BuiltImages:
    problem = podman_problem()
    if problem:
        pytest.fail(f"podman cannot run containers here: {problem}", pytrace=False)
    try:
        return build_images(OUT, names)
    except ImageError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def images() -> BuiltImages:
    """The gateway and operator images, built (or found up to date) by hack/build-images.sh
    on the local base images."""
    return _build("gateway", "operator")


@pytest.fixture(scope="session")
def ollama_image(images: BuiltImages) -> BuiltImages:
    """The Ollama image, on the local base that carries the Ollama built from source."""
    return _build("ollama")


@pytest.fixture(scope="session")
def render_chart() -> Callable[..., list[Manifest]]:
    """``render_chart({"key": "value"})``: ``helm template`` of the chart, as manifests."""
    helm = Binaries.resolve().helm
    if not helm.is_file():
        pytest.fail(f"helm is not built ({helm}); run `make k8s-binaries`", pytrace=False)

    def render(sets: dict[str, str] | None = None) -> list[Manifest]:
        args = [str(helm), "template", "tollgate", str(CHART), "--namespace", "tollgate"]
        for key, value in (sets or {}).items():
            args += ["--set", f"{key}={value}"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            pytest.fail(f"helm template failed:\n{result.stderr}", pytrace=False)
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return render


@pytest.fixture
def containers() -> Iterator[Callable[..., Container]]:
    """``containers(image, ...)`` starts a Container (see tollgate_dev.servers.images) and
    removes it after the test; its logs are printed when the test fails."""
    started: list[Container] = []

    def start(*args: Any, **kwargs: Any) -> Container:
        container = Container(*args, **kwargs)
        started.append(container)
        try:
            return container.start()
        except ImageError as exc:
            pytest.fail(f"the container did not start: {exc}", pytrace=False)

    yield start
    for container in started:
        if container.started:
            print(f"--- logs of {container.name} ({container.image})\n{container.logs()[-4000:]}")
        container.stop()
