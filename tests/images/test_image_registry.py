"""The images pushed to a local registry (CNCF distribution, built from source by the test
bed), and the chart pointed at it with `image.registry`: every image reference it renders, by
tag and by digest, is one that `podman pull` resolves to the image built here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from image_helpers import Manifest, pod_of

from tollgate_dev.proc import ServiceError
from tollgate_dev.servers.images import BuiltImages, podman
from tollgate_dev.servers.realollama import LocalRegistry, RealOllamaMissingError, registry_binary

pytestmark = pytest.mark.timeout(900)  # the first test builds the images

NAMES = ("gateway", "operator")  # the images the chart installs


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    server = LocalRegistry(root=tmp_path / "registry", binary=registry_binary())
    try:
        server.start()
    except (ServiceError, RealOllamaMissingError, OSError) as exc:
        pytest.fail(f"the local registry could not start: {exc}", pytrace=False)
    yield server
    server.stop()


def rendered_refs(manifests: list[Manifest]) -> set[str]:
    refs = set()
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Job"):
            pod = pod_of(manifest)
            refs |= {c["image"] for c in [*pod.get("initContainers", []), *pod["containers"]]}
    return refs


def test_chart_pointed_at_the_registry_renders_references_podman_pulls(
    images: BuiltImages,
    registry: LocalRegistry,
    render_chart: Callable[..., list[Manifest]],
    tmp_path: Path,
) -> None:
    # Pushed under the chart's default repositories, with the local registry in front.
    digests = {}
    for name in NAMES:
        target = f"{registry.address}/tollgate-dev/tollgate-{name}:{images.tag}"
        digest_file = tmp_path / f"{name}.digest"
        podman(
            "push", "--tls-verify=false", "--digestfile", str(digest_file),
            images.ref(name), target, timeout=600,
        )  # fmt: skip
        digests[name] = digest_file.read_text().strip()

    sets = {f"{name}.image.registry": registry.address for name in NAMES}
    sets |= {f"{name}.image.tag": images.tag for name in NAMES}
    by_tag = rendered_refs(render_chart(sets))
    assert by_tag == {f"{registry.address}/tollgate-dev/tollgate-{n}:{images.tag}" for n in NAMES}
    pinned = sets | {f"{name}.image.digest": digests[name] for name in NAMES}
    by_digest = rendered_refs(render_chart(pinned))
    assert by_digest == {
        f"{registry.address}/tollgate-dev/tollgate-{n}:{images.tag}@{digests[n]}" for n in NAMES
    }

    built = {images.inspect(name)["Id"] for name in NAMES}
    for ref in sorted(by_tag):
        # Unknown here before the pull (a push tags nothing): the pull resolves it remotely.
        assert podman("image", "exists", ref, check=False).returncode == 1
    try:
        for ref in sorted(by_tag | by_digest):
            pulled = podman("pull", "--tls-verify=false", "--quiet", ref, timeout=300)
            assert pulled.stdout.strip() in built, f"{ref} pulled {pulled.stdout}"
    finally:
        for ref in by_tag:
            podman("rmi", ref, check=False)
