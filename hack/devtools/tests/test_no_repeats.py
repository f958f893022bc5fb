"""No block of six or more lines is repeated between the test bed's packages (the stand-in,
the process helper, the servers, the control plane, make run, the pytest plugins): what two
of them need lives once, in the lower one."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

HACK = Path(__file__).resolve().parents[2]
DEV = HACK / "devtools" / "src" / "tollgate_dev"
PACKAGES = {
    "tollgate_standin": HACK / "standin" / "src" / "tollgate_standin",
    "tollgate_dev.proc": DEV / "proc.py",
    "tollgate_dev.servers": DEV / "servers",
    "tollgate_dev.controlplane": DEV / "controlplane",
    "tollgate_dev.cli": DEV / "cli.py",
    "tollgate_dev.plugins": DEV / "plugins",
}
BLOCK = 6
# Lines that say nothing on their own: closing brackets, `else:`, `try:`, decorators' ends.
_TRIVIAL = re.compile(r"^([)\]}]+[,:]?|else:|try:|finally:|pass|return|\"\"\"|from __future__.*)$")


def _lines(path: Path) -> list[tuple[str, int]]:
    """(normalized line, line number) of a file, without blank, comment and trivial lines."""
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("  #", 1)[0].strip()
        if line and not line.startswith("#") and not _TRIVIAL.match(line):
            out.append((line, number))
    return out


def _files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


def repeats(packages: dict[str, Path] = PACKAGES, base: Path = HACK) -> list[str]:
    seen: dict[tuple[str, ...], set[tuple[str, str, int]]] = defaultdict(set)
    for package, root in packages.items():
        for path in _files(root):
            lines = _lines(path)
            for i in range(len(lines) - BLOCK + 1):
                block = tuple(line for line, _ in lines[i : i + BLOCK])
                seen[block].add((package, str(path.relative_to(base)), lines[i][1]))
    found = []
    for block, places in seen.items():
        if len({package for package, _, _ in places}) > 1:
            where = ", ".join(f"{file}:{line}" for _, file, line in sorted(places))
            found.append(f"{where}:\n    " + "\n    ".join(block))
    return sorted(found)


def test_no_block_is_repeated_between_the_test_bed_packages() -> None:
    found = repeats()
    assert not found, "repeated between packages:\n" + "\n".join(found)


def test_the_check_sees_a_repeat_between_packages_only(tmp_path: Path) -> None:
    """Not a blind spot: the same six lines in two packages are reported, in one are not."""
    body = "".join(f"value_{i} = compute({i})\n" for i in range(BLOCK))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "one.py").write_text("import os\n\n" + body)
    (tmp_path / "a" / "two.py").write_text(body)
    assert repeats({"a": tmp_path / "a"}, tmp_path) == []
    (tmp_path / "b" / "three.py").write_text("    # the same, indented and commented\n" + body)
    (found,) = repeats({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path)
    assert "a/one.py:3" in found and "b/three.py:2" in found
