"""The shell build script and the Python side agree on versions and paths."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tollgate_dev.controlplane.binaries import Binaries, Versions
from tollgate_dev.proc import repo_root


def test_versions_match_what_the_build_script_reads() -> None:
    root = repo_root()
    script = (
        "source hack/versions.env; "
        'echo "$KUBERNETES_VERSION $ETCD_VERSION $KWOK_VERSION $HELM_VERSION"'
    )
    out = subprocess.run(
        ["bash", "-c", script], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    versions = Versions.load()
    assert out == [versions.kubernetes, versions.etcd, versions.kwok, versions.helm]
    assert versions.kubernetes.startswith("v1.")


def test_binaries_live_in_one_folder_per_component_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLGATE_CACHE", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    versions = Versions("v1.2.3", "v3.4.5", "v0.6.7", "v3.8.9")
    binaries = Binaries.resolve(versions)
    k8s = tmp_path / "k8s"
    assert binaries.kube_apiserver == k8s / "kubernetes-v1.2.3" / "kube-apiserver"
    assert binaries.kubectl == k8s / "kubernetes-v1.2.3" / "kubectl"
    assert binaries.etcd == k8s / "etcd-v3.4.5" / "etcd"
    assert binaries.kwok == k8s / "kwok-v0.6.7" / "kwok"
    assert binaries.helm == k8s / "helm-v3.8.9" / "helm"
    assert len(binaries.missing()) == 8  # seven binaries and kwok's stages


def test_envtest_assets_are_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = tmp_path / "envtest"
    assets.mkdir()
    for name in ("etcd", "kube-apiserver", "kubectl"):
        path = assets / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    monkeypatch.setenv("TOLLGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    binaries = Binaries.resolve(Versions("v1.2.3", "v3.4.5", "v0.6.7", "v3.8.9"))
    assert binaries.etcd == assets / "etcd"
    assert binaries.kube_apiserver == assets / "kube-apiserver"
    assert binaries.kubectl == assets / "kubectl"
    # envtest has no controller-manager or scheduler: those always come from the cache.
    assert binaries.kube_scheduler.parent.name == "kubernetes-v1.2.3"


def test_link_into_makes_a_path_ready_folder(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    paths = {}
    for name in (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kwok",
        "helm",
    ):
        paths[name.replace("-", "_")] = targets / name
        (targets / name).write_text("#!/bin/sh\n")
    binaries = Binaries(**paths, kwok_stages=targets / "stages")
    folder = binaries.link_into(tmp_path / "bin")
    assert sorted(os.listdir(folder)) == sorted(p.name for p in binaries.executables())
    assert (folder / "kubectl").resolve() == targets / "kubectl"
    binaries.link_into(folder)  # idempotent
