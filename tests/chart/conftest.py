"""Fixtures of the chart's tests: the pinned helm and rendering the chart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_helpers import Manifest, Render, run_helm, template_args

from tollgate_dev.controlplane.binaries import Binaries


@pytest.fixture(scope="session")
def helm() -> Path:
    binary = Binaries.resolve().helm
    if not binary.is_file():
        pytest.fail(f"helm is not built ({binary}); run `make k8s-binaries`", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """Render the chart (hooks included) into a list of manifests."""

    def _render(
        *values: Path, sets: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> list[Manifest]:
        out = run_helm(helm, *template_args(values, sets, *extra)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render
