"""The README's layout section matches the tree: every folder and file it names exists where
it says (a name under a distribution's folder may live in its ``src/<package>/``), and every
top-level folder of the repository is named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[\w.-]+(/|\.\w+)$")  # a folder/ or a file.ext
DESCRIPTIONS = 16  # the column where descriptions start: lines indented so far continue one


def layout_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1].strip("\n").splitlines()


def named_paths() -> list[tuple[str, Path]]:
    """(README line, where its name must exist) for every name the block lists."""
    parents: dict[int, Path] = {-1: REPO}
    found = []
    for line in layout_block():
        indent = len(line) - len(line.lstrip())
        if indent >= DESCRIPTIONS or not line.strip():
            continue
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split()
        parent = parents[max(i for i in parents if i < indent)]
        for name in names:
            if not NAME.match(name):
                continue
            found.append((line.strip(), _resolve(parent, name.rstrip("/"))))
        first = names[0]
        if first.endswith("/") and len(names) == 1:
            parents = {i: p for i, p in parents.items() if i < indent}
            parents[indent] = _resolve(parent, first.rstrip("/"))
    return found


def _resolve(parent: Path, name: str) -> Path:
    direct = parent / name
    if direct.exists():
        return direct
    inside = sorted(parent.glob(f"src/*/{name}"))
    return inside[0] if inside else direct


def test_every_name_in_the_layout_section_exists() -> None:
    missing = [
        f"{line!r}: {path.relative_to(REPO)}" for line, path in named_paths() if not path.exists()
    ]
    assert not missing, "the README's layout names what is not there:\n" + "\n".join(missing)


def test_every_top_level_folder_is_in_the_layout_section() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/", 1)[0] for path in tracked if "/" in path and path[0] != "."}
    listed = {line.split()[0].rstrip("/") for line in layout_block() if line[:1].strip()}
    assert folders <= listed, sorted(folders - listed)


def test_a_missing_name_is_seen() -> None:
    assert not _resolve(REPO / "gateway", "no-such-folder").exists()
    assert _resolve(REPO / "hack" / "devtools", "proc.py").exists()  # src/tollgate_dev/proc.py
