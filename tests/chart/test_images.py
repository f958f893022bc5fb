"""What building the images does not show: the build context (.dockerignore) keeps tests, state
and caches out, the Dockerfiles' default bases are pinned (the tests build on local ones), their
`uv sync` steps install from the lock only, and the chart's `image.registry` rewrites image
references. The images themselves are built and run in tests/images/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, ROOT, Render, containers

DOCKERFILES = {
    "gateway": ROOT / "gateway" / "Dockerfile",
    "operator": ROOT / "operator" / "Dockerfile",
}
UV_VERSION = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "hack" / "bootstrap.sh").read_text(), re.M)


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (include?, regex) in order; the last match decides, as in Docker."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        patterns.append((include, re.compile(f"^{regex}$")))
    return patterns


def in_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for include, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            included = include
    return included


def context_files() -> list[str]:
    patterns = ignore_patterns()
    files = []
    for path in ROOT.rglob("*"):
        if path.is_file() and not any(p in path.parts for p in (".git", ".venv", ".state")):
            relative = path.relative_to(ROOT).as_posix()
            if in_context(relative, patterns):
                files.append(relative)
    return files


def copies(dockerfile: Path) -> list[str]:
    """Sources of the COPY instructions that read the build context."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def uv_commands(dockerfile: Path) -> list[list[str]]:
    """The `uv sync` commands of the RUN instructions, in order."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [m.group(0).split() for m in re.finditer(r"uv sync [^&\n]*?(?=\s*(?:&&|$))", text, re.M)]


def test_build_context_holds_what_the_images_need_and_nothing_else() -> None:
    files = context_files()
    assert "gateway/schema/src/tollgate_schema/alembic.ini" in files
    assert any(
        f.startswith("gateway/schema/src/tollgate_schema/migrations/versions/") for f in files
    )
    assert "uv.lock" in files and "hack/devtools/pyproject.toml" in files
    for unwanted in ("tests/", "gateway/tests/", ".state/", "charts/", "bench/", ".venv/"):
        assert not [f for f in files if f.startswith(unwanted)], unwanted
    assert not [f for f in files if "__pycache__" in f]
    for name, dockerfile in DOCKERFILES.items():
        for source in copies(dockerfile):
            prefix = source.rstrip("/")
            assert [f for f in files if f == prefix or f.startswith(prefix + "/")], (
                f"{name}: COPY {source} finds nothing in the build context"
            )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pins_its_bases_and_runs_as_the_charts_user(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    python_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert python_image and re.search(r"@sha256:[0-9a-f]{64}$", python_image.group(1))
    assert python_image.group(1).split("@")[0].endswith(":3.11-slim-bookworm")
    uv_image = re.search(r"^ARG UV_IMAGE=\S+:(\S+)$", text, re.M)
    assert UV_VERSION and uv_image and uv_image.group(1) == UV_VERSION.group(1)
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages[-1] == "${PYTHON_IMAGE}"
    final = text.split("\nFROM ${PYTHON_IMAGE}\n")[-1]
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user, "the final stage must switch to a numeric non-root user"
    values = yaml.safe_load((CHART / "values.yaml").read_text())[name]["podSecurityContext"]
    assert (int(user.group(1)), int(user.group(2))) == (values["runAsUser"], values["runAsGroup"])
    assert "pip install" not in text
    for command in uv_commands(DOCKERFILES[name]):
        assert {"--frozen", "--no-dev"} <= set(command)
        assert command[command.index("--package") + 1] == f"tollgate-{name}"
    entrypoint = re.search(r'^ENTRYPOINT \["(\S+)"\]$', final, re.M)
    assert entrypoint and entrypoint.group(1) == f"tollgate-{name}"


@pytest.mark.parametrize(
    ("registry", "gateway", "postgres"),
    [
        ("", "ghcr.io/tollgate-dev/tollgate-gateway", "postgres"),
        ("127.0.0.1:5000", "127.0.0.1:5000/tollgate-dev/tollgate-gateway",
         "127.0.0.1:5000/postgres"),
        ("mirror.example/cache/", "mirror.example/cache/tollgate-dev/tollgate-gateway",
         "mirror.example/cache/postgres"),
    ],
)  # fmt: skip
def test_image_registry_replaces_the_registry_of_an_image(
    render: Render, registry: str, gateway: str, postgres: str
) -> None:
    manifests = render(
        sets={
            "gateway.image.registry": registry,
            "gateway.image.tag": "1.2.3",
            "postgresql.enabled": "true",
            "redis.enabled": "true",
            "secrets.create": "true",
            "postgresql.image.registry": registry,
            # Without a registry of its own, the registry goes before the repository.
            "postgresql.image.repository": "postgres",
            "postgresql.image.tag": "17.6-bookworm",
        }
    )
    refs = {c["image"] for m in manifests if m["kind"] in ("Deployment", "Job", "StatefulSet")
            for c in containers(m)}  # fmt: skip
    assert {f"{gateway}:1.2.3", f"{postgres}:17.6-bookworm"} <= refs
