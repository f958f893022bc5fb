"""Where the local control plane's binaries live.

``hack/build-k8s.sh`` builds them from source into
``$TOLLGATE_CACHE/k8s/<component>-<version>/`` at the versions pinned in
``hack/versions.env``; this module reads the same file and resolves the same
paths, so the shell script and the Python side always agree. When
``KUBEBUILDER_ASSETS`` names a folder holding envtest's ``etcd``,
``kube-apiserver`` or ``kubectl``, those are used instead, exactly as the build
script skips building them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from tollgate_dev.proc import cache_root, read_env_file, repo_root

VERSIONS_FILE = Path("hack") / "versions.env"

# Binaries that an envtest install (KUBEBUILDER_ASSETS) may provide.
ENVTEST_BINARIES = ("etcd", "kube-apiserver", "kubectl")


class BinariesMissingError(RuntimeError):
    """Raised when a pinned binary has not been built yet."""


@dataclass(frozen=True)
class Versions:
    """The pinned versions from ``hack/versions.env``."""

    kubernetes: str
    etcd: str
    kwok: str
    helm: str

    @classmethod
    def load(cls, path: Path | None = None) -> Versions:
        """Parse ``KEY=value`` lines; ``#`` starts a comment."""
        path = path or repo_root() / VERSIONS_FILE
        values = read_env_file(path)
        try:
            return cls(
                kubernetes=values["KUBERNETES_VERSION"],
                etcd=values["ETCD_VERSION"],
                kwok=values["KWOK_VERSION"],
                helm=values["HELM_VERSION"],
            )
        except KeyError as exc:
            msg = f"{path}: missing {exc.args[0]}"
            raise ValueError(msg) from exc


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the local cluster and its users need."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    kwok_stages: Path
    """Folder of kwok Stage YAML files (node and pod lifecycles)."""

    @classmethod
    def resolve(cls, versions: Versions | None = None, cache: Path | None = None) -> Binaries:
        """Where each binary is (or would be once built); nothing is checked here."""
        versions = versions or Versions.load()
        k8s = (cache or cache_root()) / "k8s"
        kubernetes = k8s / f"kubernetes-{versions.kubernetes}"
        kwok = k8s / f"kwok-{versions.kwok}"
        found = {
            "etcd": k8s / f"etcd-{versions.etcd}" / "etcd",
            "kube-apiserver": kubernetes / "kube-apiserver",
            "kubectl": kubernetes / "kubectl",
        }
        if assets := os.environ.get("KUBEBUILDER_ASSETS"):
            for name in ENVTEST_BINARIES:
                candidate = Path(assets) / name
                if _is_executable(candidate):
                    found[name] = candidate
        return cls(
            etcd=found["etcd"],
            kube_apiserver=found["kube-apiserver"],
            kube_controller_manager=kubernetes / "kube-controller-manager",
            kube_scheduler=kubernetes / "kube-scheduler",
            kubectl=found["kubectl"],
            kwok=kwok / "kwok",
            helm=k8s / f"helm-{versions.helm}" / "helm",
            kwok_stages=kwok / "stages",
        )

    def executables(self) -> list[Path]:
        """Every binary (not the stages folder)."""
        return [getattr(self, f.name) for f in fields(self) if f.name != "kwok_stages"]

    def missing(self) -> list[Path]:
        """Binaries (and the stages folder) that are not there yet."""
        gone = [path for path in self.executables() if not _is_executable(path)]
        if not (self.kwok_stages / "pod-ready.yaml").is_file():
            gone.append(self.kwok_stages)
        return gone

    def require(self) -> None:
        """Raise :class:`BinariesMissingError` naming what to build, if anything is missing."""
        if gone := self.missing():
            listed = ", ".join(str(path) for path in gone)
            msg = f"missing Kubernetes binaries ({listed}); build them with `make k8s-binaries`"
            raise BinariesMissingError(msg)

    def link_into(self, folder: Path) -> Path:
        """Make ``folder`` a PATH-ready directory of symlinks to every binary."""
        folder.mkdir(parents=True, exist_ok=True)
        for target in self.executables():
            link = folder / target.name
            if link.is_symlink() or link.exists():
                if link.is_symlink() and link.readlink() == target:
                    continue
                link.unlink()
            link.symlink_to(target)
        return folder


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
