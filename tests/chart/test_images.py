"""The gateway and operator Dockerfiles, checked without Docker: what they copy is in the build
context (.dockerignore), they run as the user the chart expects, their base images are pinned,
and their `uv sync` steps, run here on exactly the files the context holds, give a working
gateway (migrations included) and operator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from chart_helpers import CHART, ROOT

from tollgate_dev.k8s_binaries import cache_root
from tollgate_dev.services import LocalPostgres

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
    assert "gateway/alembic.ini" in files
    assert any(f.startswith("gateway/alembic/versions/") for f in files)
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


@pytest.fixture(scope="module")
def uv() -> str:
    assert UV_VERSION
    binary = cache_root() / f"uv-{UV_VERSION.group(1)}" / "bin" / "uv"
    if not binary.is_file():
        pytest.fail(f"uv is not installed at {binary}: run `make venv`", pytrace=False)
    return str(binary)


def build(uv: str, name: str, workdir: Path) -> Path:
    """The Dockerfile's `uv sync` steps on a copy of the build context; returns the venv."""
    for relative in context_files():
        target = workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    venv = workdir / ".venv"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))},
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": "python3.11",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_LINK_MODE": "copy",
    }
    for command in uv_commands(DOCKERFILES[name]):
        result = subprocess.run(
            [uv, *command[1:]], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    return venv


@pytest.fixture
def fresh_dsn(postgres: LocalPostgres) -> Iterator[str]:
    name = f"image_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_gateway_image_steps_give_a_gateway_that_migrates(
    uv: str, tmp_path: Path, fresh_dsn: str
) -> None:
    venv = build(uv, "gateway", tmp_path)
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from tollgate_gateway.storage.db import ALEMBIC_INI; print(ALEMBIC_INI)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(located) == tmp_path / "gateway" / "alembic.ini"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "POSTGRES_DSN": fresh_dsn}
    migrate = subprocess.run(
        [str(venv / "bin" / "tollgate-gateway"), "migrate"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
    # What the image does not carry: the dev tools and the test dependencies.
    assert not list((venv / "lib").glob("python3.11/site-packages/pytest"))
    assert not list((venv / "lib").glob("python3.11/site-packages/tollgate_dev*"))


def test_operator_image_steps_give_an_operator(uv: str, tmp_path: Path) -> None:
    venv = build(uv, "operator", tmp_path)
    result = subprocess.run(
        [str(venv / "bin" / "tollgate-operator"), "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--namespace" in result.stdout
    # The operator pod's init container runs the chart's wait-for-schema script with it.
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import tollgate_operator.handlers, tollgate_gateway.storage.db"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
