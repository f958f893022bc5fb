"""What the built images hold and say about themselves: their size (reported, with a ceiling
that catches a stray cache or toolchain), no build tools or caches in the final stage, OCI
labels, the chart's user, an entrypoint that answers --help on a read-only root, and the package
list and SBOM written next to them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from image_helpers import OUT, ROOT, Manifest, chart_container, image_values, workload

from tollgate_dev.servers.images import BuiltImages, Container

pytestmark = pytest.mark.timeout(900)  # the first test builds the images

# Ceilings, well above today's sizes (about 240, 290 and 170 MB): only a mistake crosses them.
MAX_MB = {"gateway": 350, "operator": 400, "ollama": 350}
# Nothing that builds software or fetches packages for Python stays in the final stage.
BUILD_TOOLS = ("uv", "uvx", "pip", "pip3", "gcc", "cc", "c++", "make", "git", "go")
LEFTOVERS = ("/root/.cache", "/root/.cache/uv", "/usr/local/bin/uv", "/app/.venv/bin/pip")
# The console is built with Node.js in a stage of its own; only its static export is copied.
CONSOLE_LEFTOVERS = (
    "/root/.npm",
    "/app/gateway/console/node_modules",
    "/app/gateway/console/.next",
    "/app/gateway/console/package.json",
)


def findings(image: str, script: str) -> list[str]:
    """Lines a shell script prints inside ``image`` (as root, to see every file)."""
    result = Container(image, ["-c", script], entrypoint="sh", flags=["--user", "0"]).run()
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def leftovers(
    image: str, extra_tools: tuple[str, ...] = (), extra_paths: tuple[str, ...] = ()
) -> list[str]:
    tools = " ".join((*BUILD_TOOLS, *extra_tools))
    paths = " ".join((*LEFTOVERS, *extra_paths))
    return findings(
        image,
        f"for t in {tools}; do command -v $t; done; "
        f"for p in {paths}; do [ -e $p ] && echo $p; done; "
        "ls -A /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$' | sed 's|^|list: |'; "
        "ls /var/cache/apt/*.bin /var/cache/apt/archives/*.deb 2>/dev/null; "
        r"find / -xdev \( -name '*.whl' -o -path '*/site-packages/pytest' "
        r"-o -path '*/site-packages/tollgate_dev' -o -path '/app/[a-z]*/tests' \) -print "
        "2>/dev/null; true",
    )


@pytest.mark.parametrize("name", ["gateway", "operator"])
def test_python_images_hold_no_build_tools_caches_or_tests(images: BuiltImages, name: str) -> None:
    size = images.size(name)
    print(f"{images.ref(name)}: {size / 1e6:.0f} MB")
    assert size < MAX_MB[name] * 1e6, f"{name} grew to {size / 1e6:.0f} MB"
    assert (
        leftovers(images.ref(name), ("curl", "wget", "node", "npm", "npx"), CONSOLE_LEFTOVERS) == []
    )


def test_ollama_image_holds_no_build_tools_or_caches(ollama_image: BuiltImages) -> None:
    size = ollama_image.size("ollama")
    print(f"{ollama_image.ref('ollama')}: {size / 1e6:.0f} MB")
    assert size < MAX_MB["ollama"] * 1e6, f"ollama grew to {size / 1e6:.0f} MB"
    assert leftovers(ollama_image.ref("ollama"), ("python3",)) == []


def revision() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("name", ["gateway", "operator"])
def test_python_images_label_themselves_and_run_as_the_charts_user(
    images: BuiltImages, render_chart: Callable[..., list[Manifest]], name: str
) -> None:
    config = images.inspect(name)["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == f"tollgate-{name}"
    assert labels["org.opencontainers.image.version"] == images.tag
    assert labels["org.opencontainers.image.revision"] == revision()
    assert labels["org.opencontainers.image.created"].startswith("20")
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.description"]
    assert config["Entrypoint"] == [f"tollgate-{name}"]
    pod = workload(render_chart(image_values(images)), "Deployment", name)
    context = pod["spec"]["template"]["spec"]["securityContext"]
    assert config["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"

    # --help, as the chart runs the container (read-only root, its emptyDirs only).
    run = chart_container(pod, name)
    result = Container(run["image"], ["--help"], flags=run["flags"]).run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: tollgate-{name}")


def test_ollama_image_labels_itself_and_its_entrypoint_answers_help(
    ollama_image: BuiltImages,
) -> None:
    config = ollama_image.inspect("ollama")["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "tollgate-ollama"
    assert labels["org.opencontainers.image.version"] == ollama_image.tag
    assert labels["org.opencontainers.image.revision"] == revision()
    assert config["Entrypoint"] == ["/usr/local/bin/tollgate-ollama-bootstrap"]
    result = Container(ollama_image.ref("ollama"), ["--help"], flags=["--read-only"]).run()
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "debian", "python"),
    [
        ("gateway", "python3.11", ("fastapi", "uvicorn", "tollgate-gateway", "tollgate-schema")),
        ("operator", "python3.11", ("kopf", "tollgate-operator", "tollgate-schema")),
    ],
)
def test_package_list_and_sbom_are_written_next_to_the_images(
    images: BuiltImages, name: str, debian: str, python: tuple[str, ...]
) -> None:
    listed = (OUT / f"tollgate-{name}.packages.txt").read_text().splitlines()
    assert listed[0].startswith(f"# {images.ref(name)} ({images.inspect(name)['Id'][:19]}")
    entries = {tuple(line.split("\t")[:2]) for line in listed[1:]}
    assert ("deb", debian) in entries
    assert {("pypi", p) for p in python} <= entries
    assert ("pypi", "pytest") not in entries
    sbom = json.loads((OUT / f"tollgate-{name}.spdx.json").read_text())
    assert sbom["spdxVersion"] == "SPDX-2.3"
    described = [r for r in sbom["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert described == [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Image",
        }
    ]
    purls = {ref["referenceLocator"] for p in sbom["packages"] for ref in p.get("externalRefs", [])}
    assert len(purls) == len(listed) - 1
    assert f"pkg:pypi/tollgate-{name}@0.1.0" in purls


def test_operator_image_holds_none_of_the_gateway(images: BuiltImages) -> None:
    """The operator shares tollgate-schema with the gateway, not the gateway itself."""
    listed = (OUT / "tollgate-operator.packages.txt").read_text().splitlines()[1:]
    python = {line.split("\t")[1] for line in listed if line.startswith("pypi\t")}
    # (redis is the operator's own: it reads the gateways' demand for autoscaling)
    assert not python & {"tollgate-gateway", "fastapi", "uvicorn", "argon2-cffi"}
    assert "redis" in python
    result = Container(
        images.ref("operator"),
        ["-c", "test ! -e /app/gateway/src && ls /app/gateway"],
        entrypoint="/bin/sh",
    ).run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pyproject.toml", "schema"]  # no gateway sources
