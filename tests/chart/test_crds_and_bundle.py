"""The chart's CRDs are the top-level CRDs, byte for byte; the committed install bundle is a
fresh render of the chart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from chart_helpers import CHART, ROOT

TOP_LEVEL = ROOT / "crds"
IN_CHART = CHART / "crds"
BUNDLE = ROOT / "manifests" / "install" / "tollgate.yaml"


def test_chart_crds_are_the_top_level_crds_byte_for_byte() -> None:
    top = {p.name: p.read_bytes() for p in TOP_LEVEL.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in IN_CHART.glob("*.yaml")}
    assert top, "no CRDs in crds/"
    assert sorted(chart) == sorted(top), "run hack/chart/sync-crds.sh"
    for name, content in top.items():
        assert chart[name] == content, f"charts/tollgate/crds/{name} differs: run sync-crds.sh"


def test_sync_script_check_mode_agrees() -> None:
    result = subprocess.run(
        [str(ROOT / "hack" / "chart" / "sync-crds.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_sync_script_restores_a_changed_copy(tmp_path: Path) -> None:
    """In a scratch copy of the repository layout: a drifted chart CRD is put back."""
    (tmp_path / "hack" / "chart").mkdir(parents=True)
    script = tmp_path / "hack" / "chart" / "sync-crds.sh"
    script.write_bytes((ROOT / "hack" / "chart" / "sync-crds.sh").read_bytes())
    script.chmod(0o755)
    (tmp_path / "crds").mkdir()
    (tmp_path / "charts" / "tollgate" / "crds").mkdir(parents=True)
    for crd in TOP_LEVEL.glob("*.yaml"):
        (tmp_path / "crds" / crd.name).write_bytes(crd.read_bytes())
    stale = tmp_path / "charts" / "tollgate" / "crds" / "gone.yaml"
    stale.write_text("kind: CustomResourceDefinition\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=60, check=False
        )

    check = run("--check")
    assert check.returncode == 1
    assert "gone.yaml" in check.stderr
    assert run().returncode == 0
    assert run("--check").returncode == 0
    assert not stale.exists()


def test_bundle_is_a_fresh_render() -> None:
    fresh = subprocess.run(
        [str(ROOT / "hack" / "chart" / "render.sh"), "--stdout"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert BUNDLE.read_text() == fresh, "manifests/install/tollgate.yaml is stale: make manifests"


def test_bundle_holds_the_namespace_crds_and_the_chart() -> None:
    docs = [d for d in yaml.safe_load_all(BUNDLE.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace"
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} == {
        "apikeys.tollgate.dev",
        "modelaliases.tollgate.dev",
        "ollamapools.tollgate.dev",
    }
    # CRDs come before anything that could use them.
    last_crd = max(i for i, kind in enumerate(kinds) if kind == "CustomResourceDefinition")
    assert last_crd < kinds.index("Deployment")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "tollgate-gateway") in names
    assert ("Deployment", "tollgate-operator") in names
    assert ("Job", "tollgate-migrate") in names
    assert not [d for d in docs if d["kind"] == "Secret"], "the bundle must carry no secrets"
