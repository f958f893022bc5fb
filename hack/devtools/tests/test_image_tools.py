"""tollgate_dev.servers.images without running containers: a Pod's security context and volumes as
podman flags, and the reason given when podman cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate_dev.servers.images import pod_flags, podman_problem, prepare_volume

POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10002,
                        "fsGroup": 10003},
    "volumes": [
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "metrics", "emptyDir": {"medium": "Memory"}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "m"}},
    ],
}  # fmt: skip
CONTAINER = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    },
    "volumeMounts": [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "metrics", "mountPath": "/var/run/metrics", "readOnly": True},
    ],
}


def test_a_pods_security_context_and_emptydirs_become_podman_flags() -> None:
    assert pod_flags(POD, CONTAINER) == [
        "--user", "10001:10002",
        "--group-add", "10003",
        "--read-only", "--read-only-tmpfs=false",  # only what the Pod mounts is writable
        "--security-opt", "no-new-privileges",
        "--cap-drop", "ALL",
        "--cap-add", "NET_BIND_SERVICE",
        "--tmpfs", f"/tmp:rw,mode=1777,size={256 * 1024 * 1024}",
        "--tmpfs", "/var/run/metrics:rw,mode=1777,ro",
    ]  # fmt: skip


def test_other_volumes_need_a_host_folder(tmp_path: Path) -> None:
    container = {"volumeMounts": [{"name": "models", "mountPath": "/var/lib/ollama"}]}
    with pytest.raises(ValueError, match="models"):
        pod_flags(POD, container)
    folder = prepare_volume(tmp_path / "models", POD)
    assert folder.stat().st_gid == 10003 and folder.stat().st_mode & 0o2070 == 0o2070
    flags = pod_flags(POD, container, {"models": folder})
    assert flags[-2:] == ["--volume", f"{folder}:/var/lib/ollama:rw"]


def test_non_root_without_a_user_is_refused() -> None:
    with pytest.raises(ValueError, match="runAsUser"):
        pod_flags({"securityContext": {"runAsNonRoot": True}}, {})
    with pytest.raises(ValueError, match="runAsUser 0"):
        pod_flags({"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}, {})


def test_without_podman_the_reason_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    problem = podman_problem()
    assert problem and "podman is not installed" in problem and "ensure-debs.sh" in problem
